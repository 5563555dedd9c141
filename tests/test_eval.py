"""decoquant eval: KLD / PPL / top-1 of KV caches on the same llama-perplexity chunks.

Tiny random llama (byte-level vocabulary, loads in llama.cpp too): f16 against itself is exactly 0,
llama.cpp's f16 cache gives the same logits as ours, 8-bit DecoQuant is closer than 2-bit, the JSON has
the issue's schema, the cache sizes match what the runtime allocates, bad cache names are refused.
SmolLM2-135M (when cached): llama:f16 vs our f16 is bit-identical, and eval's llama.cpp numbers (q8_0)
match an independent computation through llama_cpp.Llama with logits_all.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from _real_model import find_model
from _tiny_vocab import write_llama_with_vocab
from decoquant import eval as dq_eval
from decoquant import kvspec

ROOT = Path(__file__).resolve().parents[1]
TEXTS = [ROOT.parent / "shared/data/sotu.txt", ROOT / "docs/RESULTS.md", ROOT / "README.md"]
KEYS = {"kv", "ppl", "kld_mean", "kld_p99", "top1", "bits_per_value", "kv_bytes_per_token"}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("eval")
    model = write_llama_with_vocab(d / "tiny.gguf")
    text = d / "text.txt"
    text.write_text(next(p for p in TEXTS if p.exists()).read_text()[:20000])
    return model, text


@pytest.fixture(scope="module")
def tiny_report(tiny):
    model, text = tiny
    return dq_eval.run(model, text, ctx=512, chunks=2, kv="f16,llama:f16,dq8,dq4,dq2", ref="f16", threads=2,
                       progress=False)


def _row(rep, kv):
    return next(r for r in rep["results"] if r["kv"] == kv)


def test_f16_against_itself_is_zero(tiny_report):
    r = _row(tiny_report, "f16")
    assert r["kld_mean"] == 0.0 and r["kld_p99"] == 0.0 and r["top1"] == 1.0
    assert r["n_scored"] == 2 * (512 // 2 - 1)
    assert math.isfinite(r["ppl"]) and r["ppl"] > 1


def test_llama_f16_is_our_f16(tiny_report):
    # attn=None on our f16 cache is ggml's flash attention, the same arithmetic as llama.cpp's
    a, b = _row(tiny_report, "f16"), _row(tiny_report, "llama:f16")
    assert b["kld_mean"] < 1e-9 and b["top1"] == 1.0
    assert b["ppl"] == pytest.approx(a["ppl"], rel=1e-9)


def test_more_bits_less_kld(tiny_report):
    k8, k4, k2 = (_row(tiny_report, n)["kld_mean"] for n in ("dq8", "dq4", "dq2"))
    assert k8 < k4 < k2
    assert k2 > 1e-4  # the 2-bit cache really differs


def test_json_schema(tiny_report):
    rep = tiny_report
    assert [r["kv"] for r in rep["results"]] == ["f16", "llama:f16", "dq8", "dq4", "dq2"]
    for r in rep["results"]:
        assert KEYS <= set(r), KEYS - set(r)
    assert len(rep["model"]["sha256"]) == 64 and len(rep["text"]["sha256"]) == 64
    assert {"decoquant", "ggml", "llama_cpp_python"} <= set(rep["versions"])
    assert rep["config"]["ctx"] == 512 and rep["config"]["chunks"] == 2 and rep["config"]["ref"] == "f16"
    assert _row(rep, "dq4")["bits_per_value"] < 5 < _row(rep, "dq8")["bits_per_value"] < 16
    assert _row(rep, "f16")["bits_per_value"] == 16
    md = dq_eval.markdown(rep)
    assert md.count("\n| ") == 1 + len(rep["results"])


def test_reference_on_disk_gives_the_same_numbers(tiny, tiny_report, monkeypatch):
    # long contexts keep the reference logits in a temporary file instead of RAM
    monkeypatch.setattr(dq_eval, "_RAM_LIMIT", 0)
    rep = dq_eval.run(tiny[0], tiny[1], ctx=512, chunks=2, kv="dq4", ref="f16", threads=2, progress=False)
    assert _row(rep, "dq4")["kld_mean"] == _row(tiny_report, "dq4")["kld_mean"]


def test_one_document(tiny, tmp_path):
    text = tmp_path / "docs.txt"
    body = tiny[1].read_text().replace("\n", " ")
    text.write_text(f"{body[:3000]}\n\n{body[:9000]}\n\n{body[:2000]}\n")
    rep = dq_eval.run(tiny[0], text, ctx=256, chunks=2, kv="f16", doc="longest", progress=False)
    assert rep["text"]["doc"] == 1 and rep["text"]["n_docs"] == 3
    with pytest.raises(ValueError, match="out of range"):
        dq_eval.run(tiny[0], text, ctx=256, chunks=1, kv="f16", doc=3, progress=False)


@pytest.mark.parametrize("name", ["f16", "dq4", "k4v2", "paper2", "dq3+chunk=128+sinks=4"])
def test_kv_bytes_match_the_runtime(tiny, name):
    from decoquant import Engine

    spec = kvspec.parse(name)
    for n_ctx in (100, 512, 700):
        with Engine(tiny[0], n_ctx=n_ctx, n_threads=1, **spec.engine_kwargs()) as e:
            assert spec.kv_bytes(n_ctx, e.n_layer, e.n_head_kv, e.head_dim) == e.kv_bytes, (name, n_ctx)


@pytest.mark.parametrize("kv,msg", [
    ("dq5", "bits must be one of"),
    ("llama:q3_k", "unknown llama.cpp type"),
    ("fp8", "unknown KV cache 'fp8'"),
    ("dq4+bogus=1", "unknown option"),
    ("f16,f16", "listed twice"),
    ("dq4+chunk", "must be key=value"),
    ("llama:q8_0+chunk=64", "only the option rot"),
    (",", "no KV caches"),
])
def test_bad_kv_names(tiny, kv, msg):
    with pytest.raises(ValueError, match=msg):
        dq_eval.run(tiny[0], tiny[1], ctx=64, chunks=1, kv=kv, progress=False)


def test_bad_arguments(tiny):
    with pytest.raises(ValueError, match="only .* tokens"):
        dq_eval.run(tiny[0], tiny[1], ctx=1024, chunks=40, kv="f16", progress=False)
    with pytest.raises(ValueError, match="does not exist"):
        dq_eval.run(tiny[0], tiny[1].with_name("missing.txt"), ctx=64, chunks=1, kv="f16", progress=False)
    with pytest.raises(ValueError, match="doc must be"):
        dq_eval.run(tiny[0], tiny[1], ctx=64, chunks=1, kv="f16", doc="first", progress=False)


# ------------------------------------------------------------------------------------ SmolLM2

SMOL = "smollm2-135m-instruct"


def _log_softmax(x):
    x = x.astype(np.float64) - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


@pytest.fixture(scope="module")
def smol():
    path = find_model(SMOL)
    if path is None:
        pytest.skip(f"{SMOL} is not cached")
    return path, next(p for p in TEXTS if p.exists())


def test_smollm2_llama_cpp_numbers(smol):
    path, text = smol
    ctx = 256
    rep = dq_eval.run(path, text, ctx=ctx, chunks=1, kv="f16,llama:f16,llama:q8_0", ref="f16", threads=2,
                      progress=False)
    assert _row(rep, "llama:f16")["kld_mean"] < 1e-6  # bit-identical path
    assert _row(rep, "llama:f16")["top1"] == 1.0
    got = _row(rep, "llama:q8_0")
    assert got["kld_mean"] > 1e-5  # a quantized cache does change the logits

    # independently: llama_cpp.Llama (high-level API, logits_all) on the same tokens
    from decoquant._llama import import_llama_cpp

    lc = import_llama_cpp()
    body = text.read_text()
    logits = {}
    for t in ("F16", "Q8_0"):
        llm = lc.Llama(str(path), n_ctx=ctx, n_batch=512, n_ubatch=512, n_threads=2, n_threads_batch=2,
                       flash_attn=True, logits_all=True, verbose=False,
                       type_k=getattr(lc, f"GGML_TYPE_{t}"), type_v=getattr(lc, f"GGML_TYPE_{t}"))
        toks = llm.tokenize(body[:8 * ctx].encode(), add_bos=True)[:ctx]  # SmolLM2 adds no BOS
        llm.eval(toks)
        logits[t] = np.array(llm.scores[:ctx], dtype=np.float32)
        del llm
    first = ctx // 2
    lp, lq = _log_softmax(logits["F16"][first:ctx - 1]), _log_softmax(logits["Q8_0"][first:ctx - 1])
    targets = np.asarray(toks[first + 1:])
    ppl = math.exp(-lq[np.arange(len(targets)), targets].mean())
    kld = (np.exp(lp) * (lp - lq)).sum(-1)
    assert got["ppl"] == pytest.approx(ppl, rel=1e-5)
    assert got["kld_mean"] == pytest.approx(kld.mean(), rel=1e-4, abs=1e-7)
    assert got["top1"] == pytest.approx((lp.argmax(-1) == lq.argmax(-1)).mean())
