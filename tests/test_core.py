"""libdecoquant (C) against the NumPy reference."""

from __future__ import annotations

import decoquant
import numpy as np
import pytest
from conftest import CONFIGS, kv_like
from decoquant import reference as R
from decoquant._lib import ffi, lib


@pytest.mark.parametrize("gauge", [0.0, 0.5, 1.0])
def test_factor_exact(rng: np.random.Generator, gauge: float) -> None:
    m = kv_like(rng, 128, 3, 64).reshape(-1, 16)
    a = np.empty_like(m)
    b = np.empty((16, 16), np.float32)
    assert lib.dq_factor(ffi.from_buffer("float[]", m), m.shape[0], gauge, ffi.from_buffer("float[]", a),
                         ffi.from_buffer("float[]", b)) == 0
    rel = np.linalg.norm(a.astype(np.float64) @ b - m) / np.linalg.norm(m)
    assert rel <= 1e-5
    ra, rb = R.svd_split(m, gauge)
    assert np.allclose(b, rb, atol=1e-5 * np.abs(rb).max())


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
def test_codes_and_reconstruction_match_reference(rng: np.random.Generator, bits: int, cfg: dict) -> None:
    x = kv_like(rng, 200, 3, 64)
    kw = dict(cfg)
    preset = kw.pop("preset", "paper")
    c = decoquant.compress(x, bits, preset, chunk=128, **kw)
    blocks = R.compress(x, R.options(bits, preset, chunk=128, **kw))
    ref_codes = np.concatenate([b.codes for b in blocks])
    got = c.codes()
    diff = ref_codes.astype(int) - got.astype(int)
    # identical apart from ties: a handful of codes, each off by one
    assert np.count_nonzero(diff) <= max(2, diff.size // 20000)
    assert np.abs(diff).max() <= 1
    y, yr = c.decompress(), R.decompress(blocks)
    assert np.linalg.norm(y - yr) <= 1e-3 * np.linalg.norm(yr)
    assert c.nbytes == sum(R.block_bytes(b.opts, b.n_tokens, 3, 64) for b in blocks)


def test_bits_per_value_target() -> None:
    x = np.random.default_rng(0).standard_normal((1024, 2, 128)).astype(np.float32)
    c = decoquant.compress(x, 4, "paper", chunk=128)
    assert c.bits_per_value == pytest.approx(4 + 16 / 256 + 4096 / (128 * 256))
    assert c.bits_per_value <= 4.25


def _dense(q, k, v, q_pos):  # noqa: ANN001, ANN202
    return R.attention_dense(q, k, v, q_pos)


@pytest.mark.parametrize("scalar", [False, True])
@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
def test_fused_attention_matches_dense(rng: np.random.Generator, cfg: dict, scalar: bool) -> None:
    lib.dq_force_scalar(int(scalar))
    try:
        kw = dict(cfg)
        preset = kw.pop("preset", "paper")
        k, v = kv_like(rng, 330, 2, 64), kv_like(rng, 330, 2, 64, outliers=False)
        kc = decoquant.compress(k[:300], 4, preset, chunk=64, sinks=4, **kw)
        vc = decoquant.compress(v[:300], 2, preset, chunk=64, sinks=4, **kw)  # K and V bits differ
        kr, vr = k[300:], v[300:]
        kk = np.concatenate([kc.decompress(), kr.astype(np.float16).astype(np.float32)])
        vv = np.concatenate([vc.decompress(), vr.astype(np.float16).astype(np.float32)])
        q = (0.2 * rng.standard_normal((6, 8, 64))).astype(np.float32)
        for q_pos in (np.array([0, 3, 4, 100, 299, 329]), None):
            for threads in (1, 2):
                out = decoquant.attention(q, kc, vc, kr, vr, q_pos=q_pos, n_threads=threads)
                ref = _dense(q, kk, vv, q_pos)
                assert np.linalg.norm(out - ref) <= 1e-4 * np.linalg.norm(ref)
    finally:
        lib.dq_force_scalar(0)


def test_decode_attention_many_chunks(rng: np.random.Generator) -> None:
    # one query row: flash-decoding splits over chunks, then the merge
    k, v = kv_like(rng, 2048 + 17, 3, 64), kv_like(rng, 2048 + 17, 3, 64)
    kc, vc = decoquant.compress(k[:2048], 4, "default"), decoquant.compress(v[:2048], 4, "default")
    q = rng.standard_normal((1, 9, 64)).astype(np.float32)
    kk = np.concatenate([kc.decompress(), k[2048:].astype(np.float16).astype(np.float32)])
    vv = np.concatenate([vc.decompress(), v[2048:].astype(np.float16).astype(np.float32)])
    ref = _dense(q, kk, vv, None)
    for threads in (1, 2, 3):
        out = decoquant.attention(q, kc, vc, k[2048:], v[2048:], n_threads=threads)
        assert np.linalg.norm(out - ref) <= 1e-4 * np.linalg.norm(ref)


def test_fused_matches_reference_blocked_attention(rng: np.random.Generator) -> None:
    k, v = kv_like(rng, 256, 2, 32), kv_like(rng, 256, 2, 32)
    o = R.options(4, "paper", chunk=64)
    q = rng.standard_normal((3, 4, 32)).astype(np.float32)
    q_pos = np.array([10, 130, 255])
    ref = R.attention_blocks(q, R.compress(k, o), R.compress(v, o), k[:0], v[:0], q_pos)
    kc, vc = decoquant.compress(k, 4, "paper", chunk=64), decoquant.compress(v, 4, "paper", chunk=64)
    out = decoquant.attention(q, kc, vc, q_pos=q_pos)
    assert np.linalg.norm(out - ref) <= 1e-4 * np.linalg.norm(ref)


def test_zero_and_rank_deficient_chunks() -> None:
    z = np.zeros((64, 2, 32), np.float32)
    assert not decoquant.compress(z, 4).decompress().any()
    r1 = np.ones((64, 2, 32), np.float32) * np.arange(64, dtype=np.float32)[:, None, None]
    c = decoquant.compress(r1, 8)
    assert np.linalg.norm(c.decompress() - r1) <= 1e-2 * np.linalg.norm(r1)
