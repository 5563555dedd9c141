"""The NumPy reference against itself: exact decompositions, blocked attention == dense."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import kv_like
from decoquant import reference as R


@pytest.mark.parametrize("gauge", [0.0, 0.5, 1.0])
def test_svd_split_is_exact_and_canonical(rng: np.random.Generator, gauge: float) -> None:
    m = rng.standard_normal((240, 16)) * np.linspace(0.1, 30, 16)
    a, b = R.svd_split(m, gauge)
    assert np.abs(a @ b - m).max() < 1e-10 * np.abs(m).max()
    s = np.linalg.svd(m, compute_uv=False)
    # A's column norms carry S^gauge, B's rows S^(1-gauge)
    assert np.allclose(np.linalg.norm(a, axis=0), s**gauge, rtol=1e-8)
    assert np.allclose(np.linalg.norm(b, axis=1), s ** (1 - gauge), rtol=1e-8)
    # sign convention: every right singular vector's largest entry is positive
    v = b.T / np.linalg.norm(b, axis=1)
    assert all(v[np.argmax(np.abs(v[:, j])), j] > 0 for j in range(16))


def test_svd_split_rank_deficient() -> None:
    m = np.outer(np.arange(1, 41, dtype=np.float64), np.ones(16))
    a, b = R.svd_split(m)
    assert np.abs(a @ b - m).max() < 1e-9
    assert np.count_nonzero(np.linalg.norm(b, axis=1)) == 1
    a0, b0 = R.svd_split(np.zeros((32, 16)))
    assert not a0.any() and not b0.any()


def test_paper_gauge_matches_mpo_two_sites(rng: np.random.Generator) -> None:
    m = rng.standard_normal((64, 16))
    cores = R.mpo_decompose(m, [64, 1], [1, 16])
    a, b = R.svd_split(m, 0.5)
    a2 = cores[0].reshape(64, 16)
    b2 = cores[1].reshape(16, 16)
    assert np.allclose(np.abs(a2), np.abs(a), atol=1e-10) and np.allclose(np.abs(b2), np.abs(b), atol=1e-10)


@pytest.mark.parametrize("shape", [([4, 48], [4, 4]), ([2, 4, 24], [2, 2, 4])])
def test_mpo_n_sites_exact(rng: np.random.Generator, shape: tuple[list[int], list[int]]) -> None:
    m = rng.standard_normal((192, 16))
    cores = R.mpo_decompose(m, *shape)
    assert np.abs(R.mpo_contract(cores) - m).max() < 1e-10


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_pack_roundtrip(rng: np.random.Generator, bits: int) -> None:
    u = rng.integers(0, 1 << bits, 16).astype(np.uint8)
    data = R.pack_row(u, bits)
    assert len(data) == 2 * bits
    assert (R.unpack_row(data, bits) == u).all()


def test_quantization_error_shrinks_with_bits(rng: np.random.Generator) -> None:
    x = kv_like(rng, 256, 2, 64)
    errs = [np.linalg.norm(R.decompress(R.compress(x, R.options(b, "paper"))) - x) for b in R.BITS]
    assert errs == sorted(errs, reverse=True)
    assert errs[-1] / np.linalg.norm(x) < 0.02


@pytest.mark.parametrize("preset", ["paper", "default"])
def test_blocked_attention_equals_dense(rng: np.random.Generator, preset: str) -> None:
    k, v = kv_like(rng, 300, 2, 32), kv_like(rng, 300, 2, 32, outliers=False)
    o = R.options(4, preset, chunk=64)
    kb, vb = R.compress(k[:256], o), R.compress(v[:256], o)
    q = rng.standard_normal((5, 6, 32)).astype(np.float32)
    q_pos = np.array([0, 63, 64, 200, 299])
    out = R.attention_blocks(q, kb, vb, k[256:], v[256:], q_pos)
    kk = np.concatenate([R.decompress(kb), k[256:]])
    vv = np.concatenate([R.decompress(vb), v[256:]])
    ref = R.attention_dense(q, kk, vv, q_pos)
    assert np.abs(out - ref).max() < 1e-5 * np.abs(ref).max()


def test_block_bytes_paper_4bit() -> None:
    # SmolLM2's layer (3 KV heads x 64), 128-token chunks: 4 + 16/192 + 256*16/(128*192)
    o = R.options(4, "paper", chunk=128)
    assert R.block_bytes(o, 128, 3, 64) * 8 / (128 * 192) == pytest.approx(4 + 16 / 192 + 4096 / (128 * 192))


def test_llama_q8_q4_baselines(rng: np.random.Generator) -> None:
    x = rng.standard_normal((64, 2, 64)).astype(np.float32)
    e8 = np.linalg.norm(R.rtn(x, 8, "group") - x) / np.linalg.norm(x)
    e4 = np.linalg.norm(R.rtn(x, 4, "group") - x) / np.linalg.norm(x)
    e4r = np.linalg.norm(R.rtn(x, 4, "group", rotate=True) - x) / np.linalg.norm(x)
    assert e8 < 0.01 < e4 < 0.2 and e4r < 0.2
