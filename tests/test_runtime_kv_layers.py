"""Sliding-window rings and per-layer KV settings, on tiny random GGUF models.

Gemma-3's local layers (window 8 in the tiny model) keep a ring of window + n_ubatch tokens instead of
n_ctx. The ring must give exactly the logits of the full cache (swa_full=True), through prefill,
decode, truncation and saved states.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("gguf")

import _tiny_models as tm  # noqa: E402
from decoquant import Engine, EngineError, reference  # noqa: E402
from decoquant._lib import ffi, lib  # noqa: E402
from decoquant.engine import kv_bytes  # noqa: E402

N_CTX, UB, T = 1024, 16, 700  # f16 ring: 512 rows (< n_ctx); decoquant ring: 3 block slots of 16
DQ = dict(kv_cache="decoquant", chunk=16, sinks=2)
KVS = {"f16": dict(kv_cache="f16", attn="dq"), "dq8": dict(DQ, kv_bits_k=8, kv_bits_v=8),
       "dq4k2v": dict(DQ, kv_bits_k=4, kv_bits_v=2)}


@pytest.fixture(scope="module")
def gemma(tmp_path_factory):
    p = tmp_path_factory.mktemp("tiny") / "gemma3.gguf"
    tm.write_gguf(p, "gemma3")
    return p


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    p = tmp_path_factory.mktemp("tiny") / "llama.gguf"
    tm.write_gguf(p, "llama")
    return p


def toks(arch: str, n: int, seed: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, tm.SHAPES[arch]["vocab"], n)


def run(e: Engine, t: np.ndarray, start: int = 0) -> np.ndarray:
    """Prefill in ubatches up to 600, then decode one token at a time: all logits."""
    out = []
    for i in range(start, len(t), UB):
        if i >= 600:
            break
        out.append(e.eval(t[i:min(i + UB, 600, len(t))], logits_all=True))
    out += [e.eval(t[i:i + 1], logits_all=True) for i in range(max(start, 600), len(t))]
    return np.concatenate(out)


def engine(path, kv: str, **kw) -> Engine:
    return Engine(path, n_ctx=N_CTX, n_batch=UB, n_threads=2, **KVS[kv], **kw)


@pytest.mark.parametrize("kv", list(KVS))
def test_ring_equals_full_cache(gemma, kv):
    t = toks("gemma3", T)
    with engine(gemma, kv) as ring, engine(gemma, kv, swa_full=True) as full:
        assert ring.kv_bytes < full.kv_bytes
        np.testing.assert_array_equal(run(ring, t), run(full, t))


def test_ring_bytes_exact(gemma):
    s = tm.SHAPES["gemma3"]
    D, n_local = s["n_head_kv"] * s["head_dim"], s["n_layer"] - s["n_layer"] // 6
    cap = -(-(tm.GEMMA_WINDOW + UB + 255) // 256) * 256  # the window's first 256-row segment + one ubatch
    with engine(gemma, "f16") as e:
        assert cap == 512 and e.kv_bytes == 2 * 2 * D * (n_local * cap + (s["n_layer"] - n_local) * N_CTX)
    cfg = ffi.new("dq_config *", dict(n_kv_heads=s["n_head_kv"], head_dim=s["head_dim"], bits=8, scale_mode=2,
                                      asym=1, scope=0, gauge=0.5))
    block = lib.dq_block_size(cfg, 16)
    slots_local, slots_global = (tm.GEMMA_WINDOW + UB) // 16 + 2, (N_CTX - 2) // 16
    with engine(gemma, "dq8") as e:
        per_slot = 2 * (2 * 2 * D + 16 * 2 * D)  # K and V: sinks + residual, fp16
        assert e.kv_bytes == (n_local * (per_slot + 2 * slots_local * block)
                              + (s["n_layer"] - n_local) * (per_slot + 2 * slots_global * block))


def test_ggml_attention_over_the_ring(gemma):
    """llama.cpp's flash attention over the ring: the same keys in another order, so equal to rounding."""
    t = toks("gemma3", T)
    with engine(gemma, "f16") as dq, Engine(gemma, n_ctx=N_CTX, n_batch=UB, n_threads=2, attn="ggml") as gg:
        a, b = run(dq, t), run(gg, t)
    assert tm.kld(a, b).mean() < 1e-5


@pytest.mark.parametrize("kv", ["f16", "dq8"])
def test_ring_truncate(gemma, kv):
    t = toks("gemma3", T + 1)
    with engine(gemma, kv) as e, engine(gemma, kv, swa_full=True) as full:
        run(e, t[:T])
        run(full, t[:T])
        e.truncate(690)  # what positions >= 690 see is still in the ring
        full.truncate(690)
        np.testing.assert_array_equal(run(e, t[:T], 690), run(full, t[:T], 690))
        with pytest.raises(EngineError, match="sliding window"):
            e.truncate(100)  # overwritten long ago
        assert e.n_past == T  # a refused truncation changes nothing
        np.testing.assert_array_equal(e.eval(t[T:]), full.eval(t[T:]))
        full.truncate(300)  # the full cache can go back anywhere


@pytest.mark.parametrize("kv", ["f16", "dq4k2v"])
def test_ring_state_round_trip(gemma, kv):
    t = toks("gemma3", T)
    with engine(gemma, kv) as e:
        run(e, t[:650])
        blob = e.save_state()
        more = run(e, t, 650)
    with engine(gemma, kv) as f:
        f.load_state(blob)
        np.testing.assert_array_equal(run(f, t, 650), more)
    with engine(gemma, kv, swa_full=True) as f, pytest.raises(EngineError, match="settings differ"):
        f.load_state(blob)


def cache_roundtrip(x: np.ndarray, bits: int | None) -> np.ndarray:
    """What a one-batch prefill's attention reads: sinks, full chunks through the NumPy spec, fp16 rest."""
    x16 = reference.f16(x.astype(np.float32)).astype(np.float64)
    if bits is None:
        return x16
    opts = reference.options(bits, "default", chunk=16, sinks=2)
    nb = (len(x) - 2) // 16
    out = x16.copy()
    out[2:2 + 16 * nb] = reference.decompress(reference.compress(x[2:2 + 16 * nb].astype(np.float32), opts))
    return out


def test_per_layer_settings(llama):
    w = tm.make_weights("llama")
    t = toks("llama", 60)
    kw = dict(n_ctx=64, n_threads=2, chunk=16, sinks=2)
    with Engine(llama, kv_cache="f16", attn="dq", n_ctx=64, n_threads=2) as e:
        f16 = e.eval(t, logits_all=True)
    with Engine(llama, kv_cache="decoquant", kv_f16_layers=[0, 1], **kw) as e:  # every layer f16
        np.testing.assert_array_equal(e.eval(t, logits_all=True), f16)
    with Engine(llama, kv_cache="decoquant", kv_bits_k=8, kv_bits_v=8, **kw) as e:
        dq8, bytes8 = e.eval(t, logits_all=True), e.kv_bytes
    with Engine(llama, kv_cache="decoquant", kv_bits_k=[8, 8], kv_bits_v=[8, 8], **kw) as e:
        np.testing.assert_array_equal(e.eval(t, logits_all=True), dq8)
        assert e.kv_bytes == bytes8
    # layer 0: K 2 / V 4 bits, layer 1: f16 -- against the NumPy forward pass with that cache
    bits = {0: (2, 4), 1: (None, None)}
    ref = tm.forward("llama", w, t, lambda il, k, v: (cache_roundtrip(k, bits[il][0]), cache_roundtrip(v, bits[il][1])))
    with Engine(llama, kv_cache="decoquant", kv_bits_k=[2, 8], kv_bits_v=4, kv_f16_layers=[-1], **kw) as e:
        mixed = e.eval(t, logits_all=True)
        assert bytes8 / 2 < e.kv_bytes < bytes8 * 2
    assert tm.kld(ref, mixed).mean() < 0.02 * tm.kld(f16, mixed).mean()


@pytest.mark.parametrize("bad, match", [
    (dict(kv_bits_k=[4, 4, 4]), "3 entries; the model has 2 layers"),
    (dict(kv_bits_k=[4, 5]), "must be one of"),
    (dict(kv_f16_layers=[2]), "not a layer index"),
    (dict(kv_bits_k="four"), "must be one of"),
])
def test_per_layer_errors(llama, bad, match):
    with pytest.raises(ValueError, match=match):
        Engine(llama, n_ctx=64, kv_cache="decoquant", **bad)
    with pytest.raises(ValueError, match="need kv_cache='decoquant'"):
        Engine(llama, n_ctx=64, kv_f16_layers=[0])


@pytest.mark.parametrize("kv", list(KVS))
@pytest.mark.parametrize("swa_full", [False, True])
def test_kv_bytes_without_allocating(gemma, llama, kv, swa_full):
    kw = {k: v for k, v in KVS[kv].items() if k != "attn"}
    for path in (gemma, llama):
        for n_ctx in (100, 1024, 3000):
            with Engine(path, n_ctx=n_ctx, n_batch=UB, n_threads=1, swa_full=swa_full, **kw) as e:
                assert kv_bytes(path, n_ctx, n_batch=UB, swa_full=swa_full, **kw) == e.kv_bytes
    with pytest.raises(EngineError, match="chunk must be"):
        kv_bytes(llama, 100, kv_cache="decoquant", chunk=8)
