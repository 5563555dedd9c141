"""The runtime on tiny random GGUF models (llama, qwen2, gemma3 shapes) against a NumPy forward pass."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("gguf")

import _tiny_models as tm  # noqa: E402
from decoquant import Engine, EngineError  # noqa: E402
from decoquant._lib import ffi, lib  # noqa: E402

ARCHS = ["llama", "qwen2", "gemma3"]
T = 40


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny")
    out = {}
    for arch in ARCHS:
        p = d / f"{arch}.gguf"
        out[arch] = (p, tm.write_gguf(p, arch))
    out["llama_other"] = (d / "llama_other.gguf", tm.write_gguf(d / "llama_other.gguf", "llama", seed=7))
    return out


def toks(arch: str, n: int = T, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, tm.SHAPES[arch]["vocab"], n)


def rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


DQ8 = dict(kv_cache="decoquant", kv_bits_k=8, kv_bits_v=8, chunk=16, sinks=2)


@pytest.mark.parametrize("attn", ["dq", "ggml"])
@pytest.mark.parametrize("arch", ARCHS)
def test_f16_matches_numpy(models, arch, attn):
    path, w = models[arch]
    t = toks(arch)
    ref = tm.forward(arch, w, t)
    with Engine(path, n_ctx=64, n_batch=16, n_threads=2, attn=attn) as e:  # 3 ubatches
        assert e.arch == arch and e.n_vocab == tm.SHAPES[arch]["vocab"] and e.n_layer == tm.SHAPES[arch]["n_layer"]
        out = e.eval(t, logits_all=True)
        last = None
        e.reset()
        last = e.eval(t)
    assert out.shape == ref.shape
    assert rel(out, ref) < 3e-3
    assert tm.kld(ref, out).mean() < 1e-5
    np.testing.assert_allclose(last, out[-1], rtol=0, atol=1e-5 * np.abs(out).max())


@pytest.mark.parametrize("kv", [dict(kv_cache="f16", attn="dq"), dict(kv_cache="f16", attn="ggml"), DQ8])
@pytest.mark.parametrize("arch", ARCHS)
def test_decode_one_by_one_equals_prefill(models, arch, kv):
    path, _ = models[arch]
    t = toks(arch)
    with Engine(path, n_ctx=64, n_batch=64, n_threads=2, **kv) as e:
        full = e.eval(t, logits_all=True)
        e.reset()
        part = [e.eval(t[:25], logits_all=True)] + [e.eval(t[i:i + 1], logits_all=True) for i in range(25, T)]
        assert e.n_past == T
    part = np.concatenate(part)
    if kv["kv_cache"] == "f16":  # ggml's flash attention rounds Q and the scores to fp16
        assert rel(part, full) < (5e-4 if kv["attn"] == "dq" else 2e-3)
    else:  # in a prefill, queries see their own chunk already compressed; one by one, still fp16
        assert rel(part[:18], full[:18]) < 5e-4  # before the first chunk fills
        assert tm.kld(full, part).mean() < 2e-3


@pytest.mark.parametrize("arch", ARCHS)
def test_decoquant_close_to_f16(models, arch):
    path, _ = models[arch]
    t = toks(arch)
    with Engine(path, n_ctx=64, n_threads=2, attn="dq") as e:  # the same fp32 attention as decoquant
        f16 = e.eval(t, logits_all=True)
    with Engine(path, n_ctx=64, n_threads=2, **DQ8) as e:
        dq8 = e.eval(t, logits_all=True)
    with Engine(path, n_ctx=64, n_threads=2, kv_cache="decoquant", chunk=16) as e:
        dq4 = e.eval(t, logits_all=True)
    # a chunk longer than the sequence: everything stays in the fp16 residual
    with Engine(path, n_ctx=64, n_threads=2, kv_cache="decoquant", chunk=64) as e:
        resid = e.eval(t, logits_all=True)
    assert rel(resid, f16) < 1e-5
    k8, k4 = tm.kld(f16, dq8).mean(), tm.kld(f16, dq4).mean()
    assert k8 < 2e-3, k8
    assert k4 < 5e-2, k4
    assert k8 < k4


def test_kv_bytes_exact(models):
    path, _ = models["llama"]
    s = tm.SHAPES["llama"]
    D = s["n_head_kv"] * s["head_dim"]
    with Engine(path, n_ctx=100, n_threads=1) as e:
        assert e.kv_bytes == s["n_layer"] * 2 * 100 * D * 2
        assert e.kv_bytes_per_token == 2 * s["n_layer"] * D * 2
    with Engine(path, n_ctx=100, n_threads=1, kv_cache="decoquant", kv_bits_k=4, kv_bits_v=2, chunk=32, sinks=4) as e:
        blocks = (100 - 4) // 32
        size = 0
        for bits in (4, 2):
            cfg = ffi.new("dq_config *", dict(n_kv_heads=s["n_head_kv"], head_dim=s["head_dim"], bits=bits,
                                              scale_mode=2, asym=1, scope=0, gauge=0.5))
            size += 4 * D * 2 + blocks * lib.dq_block_size(cfg, 32) + 32 * D * 2
        assert e.kv_bytes == s["n_layer"] * size
        assert e.kv_bytes_per_token == pytest.approx(e.kv_bytes / 100)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("kv", [dict(kv_cache="f16", attn="dq"), dict(kv_cache="f16", attn="ggml"), DQ8])
def test_truncate_then_eval_equals_fresh(models, arch, kv):
    path, _ = models[arch]
    t = toks(arch)
    with Engine(path, n_ctx=64, n_threads=2, **kv) as e:
        e.eval(t, logits_all=True)
        # 18 = sinks + one chunk: a block boundary, exact; 23 cuts a block in the middle
        for n in (18, 23, 0):
            e.truncate(n)
            assert e.n_past == n
            again = e.eval(t[n:], logits_all=True)
            with Engine(path, n_ctx=64, n_threads=2, **kv) as f:
                if n:
                    f.eval(t[:n])
                fresh = f.eval(t[n:], logits_all=True)
            if kv["kv_cache"] == "f16" or n in (0, 18):
                assert rel(again, fresh) < 1e-5
            else:  # the kept part of the cut block comes back decompressed
                assert tm.kld(fresh, again).mean() < 2e-3
        with pytest.raises(EngineError, match="truncate"):
            e.truncate(T + 1)


@pytest.mark.parametrize("kv", [dict(kv_cache="f16", attn="dq"), dict(kv_cache="f16", attn="ggml"), DQ8])
def test_state_round_trip(models, tmp_path, kv):
    path, _ = models["qwen2"]
    t = toks("qwen2")
    with Engine(path, n_ctx=64, n_threads=2, **kv) as e:
        e.eval(t[:30])
        blob = e.save_state()
        e.save_state(tmp_path / "state.bin")
        more = e.eval(t[30:], logits_all=True)
    for src in (blob, tmp_path / "state.bin"):
        with Engine(path, n_ctx=64, n_threads=2, **kv) as f:
            f.load_state(src)
            assert f.n_past == 30
            np.testing.assert_array_equal(f.eval(t[30:], logits_all=True), more)


def test_state_errors(models):
    path, _ = models["llama"]
    t = toks("llama")
    with Engine(path, n_ctx=64, n_threads=1, **DQ8) as e:
        e.eval(t[:30])
        blob = e.save_state()
    with Engine(path, n_ctx=64, n_threads=1, **DQ8) as f:
        bad = bytearray(blob)
        bad[-5] ^= 0xFF
        with pytest.raises(EngineError, match="checksum"):
            f.load_state(bytes(bad))
        with pytest.raises(EngineError, match="truncated"):
            f.load_state(blob[:-10])
        with pytest.raises(EngineError, match="magic"):
            f.load_state(b"GGUF" + blob[4:])
        v = bytearray(blob)
        v[8] = 99
        with pytest.raises(EngineError, match="version"):
            f.load_state(bytes(v))
        assert f.n_past == 0
    with Engine(path, n_ctx=64, n_threads=1, kv_cache="decoquant", kv_bits_k=4, kv_bits_v=8, chunk=16, sinks=2) as f:
        with pytest.raises(EngineError, match="settings differ"):
            f.load_state(blob)
    with Engine(path, n_ctx=16, n_threads=1, **DQ8) as f:
        with pytest.raises(EngineError, match="n_ctx"):
            f.load_state(blob)
    with Engine(models["llama_other"][0], n_ctx=64, n_threads=1, **DQ8) as f:
        with pytest.raises(EngineError, match="another model"):
            f.load_state(blob)
