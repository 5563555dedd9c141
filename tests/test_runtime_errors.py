"""Bad GGUF files and bad calls give clear errors, never a crash."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("gguf")

import _tiny_models as tm  # noqa: E402
from decoquant import Engine, EngineError  # noqa: E402


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    p = tmp_path_factory.mktemp("err") / "llama.gguf"
    tm.write_gguf(p, "llama")
    return p


def test_missing_file(tmp_path):
    with pytest.raises(EngineError, match="cannot open"):
        Engine(tmp_path / "nope.gguf")


def test_bad_magic(tmp_path, good):
    p = tmp_path / "bad.gguf"
    p.write_bytes(b"GGML" + good.read_bytes()[4:])
    with pytest.raises(EngineError, match="bad magic"):
        Engine(p)


@pytest.mark.parametrize("keep", [3, 20, 200, 1500])
def test_truncated_header(tmp_path, good, keep):
    p = tmp_path / "trunc.gguf"
    p.write_bytes(good.read_bytes()[:keep])
    with pytest.raises(EngineError, match="truncated|corrupt"):
        Engine(p)


def test_tensor_data_past_eof(tmp_path, good):
    data = good.read_bytes()
    p = tmp_path / "short.gguf"
    p.write_bytes(data[: len(data) - 100])
    with pytest.raises(EngineError, match="past the end of the file"):
        Engine(p)


def test_unknown_arch(tmp_path):
    p = tmp_path / "mamba.gguf"
    tm.write_gguf(p, "llama", arch_name="mamba")
    with pytest.raises(EngineError, match=r"architecture 'mamba' is not supported \(supported: llama, qwen2, gemma3\)"):
        Engine(p)


def test_missing_tensor(tmp_path):
    p = tmp_path / "missing.gguf"
    tm.write_gguf(p, "qwen2", drop=("blk.1.attn_k.bias",))
    with pytest.raises(EngineError, match="blk.1.attn_k.bias is missing"):
        Engine(p)


def test_context_overflow(good):
    with Engine(good, n_ctx=32, n_threads=1) as e:
        with pytest.raises(EngineError, match="context overflow"):
            e.eval(np.arange(40) % 100)
        e.eval(np.arange(20))
        with pytest.raises(EngineError, match="context overflow.*n_ctx = 32"):
            e.eval(np.arange(20))
        assert e.n_past == 20
        e.eval(np.arange(12))  # exactly full
        with pytest.raises(EngineError, match="context overflow"):
            e.eval([1])


def test_bad_arguments(good):
    with pytest.raises(ValueError, match="kv_cache"):
        Engine(good, kv_cache="q4_0")
    with pytest.raises(ValueError, match="kv_bits_k"):
        Engine(good, kv_cache="decoquant", kv_bits_k=5)
    with pytest.raises(ValueError, match="unknown option"):
        Engine(good, kv_cache="decoquant", bogus=1)
    with pytest.raises(EngineError, match="f16 cache"):
        Engine(good, kv_cache="decoquant", attn="ggml")
    with Engine(good, n_ctx=32, n_threads=1) as e:
        with pytest.raises(ValueError, match="token ids"):
            e.eval([100000])
        with pytest.raises(ValueError, match="no tokens"):
            e.eval([])
