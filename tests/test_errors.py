"""Bad arguments raise ValueError naming the problem; nothing crashes."""

from __future__ import annotations

import decoquant
import numpy as np
import pytest

X = np.ones((8, 2, 32), np.float32)


@pytest.mark.parametrize(
    ("x", "kw", "msg"),
    [
        (np.ones((8, 2, 24), np.float32), {}, "multiple of 16"),
        (np.ones((8, 64), np.float32), {}, "shape"),
        (np.ones((0, 2, 32), np.float32), {}, "empty"),
        (np.full((8, 2, 32), np.nan, np.float32), {}, "NaN"),
        (np.full((8, 2, 32), np.inf, np.float32), {}, "NaN or Inf"),
        (X, {"bits": 5}, "bits"),
        (X, {"preset": "nope"}, "preset"),
        (X, {"scale": "block"}, "scale"),
        (X, {"scope": "token"}, "scope"),
        (X, {"gauge": 1.5}, "gauge"),
        (X, {"chunk": 0}, "chunk"),
        (X, {"colour": 1}, "unknown option"),
    ],
)
def test_compress_rejects(x: np.ndarray, kw: dict, msg: str) -> None:
    with pytest.raises(ValueError, match=msg):
        decoquant.compress(x, **kw)


def test_attention_rejects_bad_shapes() -> None:
    kc = decoquant.compress(X)
    with pytest.raises(ValueError, match="n_head"):
        decoquant.attention(np.ones((1, 3, 32), np.float32), kc, kc)
    with pytest.raises(ValueError, match="NaN"):
        decoquant.attention(np.full((1, 2, 32), np.nan, np.float32), kc, kc)
    with pytest.raises(ValueError, match="both"):
        decoquant.attention(np.ones((1, 2, 32), np.float32), kc, kc, k_residual=X)
    with pytest.raises(ValueError, match="same tokens"):
        decoquant.attention(np.ones((1, 2, 32), np.float32), kc, decoquant.compress(X[:4]))
