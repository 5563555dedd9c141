from __future__ import annotations

import numpy as np
import pytest

# option sets the C/CUDA-vs-reference tests run over (preset + overrides)
CONFIGS = [
    dict(preset="paper"),
    dict(preset="default"),
    dict(scale="row"),
    dict(scale="token", asym=True),
    dict(scale="channel", asym=False, scope="head"),
    dict(scope="head", gauge=1.0),
    dict(gauge=0.0, asym=True, scale="row", scope="head"),
]


def kv_like(rng: np.random.Generator, t: int, h: int, hd: int, outliers: bool = True) -> np.ndarray:
    """K-like data: correlated channels, a few large outlier channels, a slow drift over tokens."""
    base = rng.standard_normal((t, h * hd)).astype(np.float32)
    mix = np.eye(h * hd, dtype=np.float32) + 0.3 * rng.standard_normal((h * hd, h * hd)).astype(np.float32) / np.sqrt(
        h * hd)
    x = base @ mix
    if outliers:
        cols = rng.choice(h * hd, size=max(1, h * hd // 32), replace=False)
        x[:, cols] *= rng.uniform(8, 30, size=cols.size).astype(np.float32)
    x += np.linspace(0, 1, t, dtype=np.float32)[:, None] * rng.standard_normal(h * hd).astype(np.float32)
    return x.reshape(t, h, hd).astype(np.float32)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)
