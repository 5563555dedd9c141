"""One interface over our Engine and llama.cpp's contexts: eval(tokens, logits_all), reset(), close().

Both run the same batches (n_batch = n_ubatch = 512 by default) and return the same output rows, so
their logits can be compared position by position.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .kvspec import KVSpec


def resolve_model(name_or_path: str | os.PathLike | None) -> Path:
    """A GGUF path: an existing file, or a registry name (fetched if needed); None: the default model."""
    from .registry import resolve_model as registry_resolve

    return Path(registry_resolve(name_or_path))


class EngineRunner:
    """Our runtime (decoquant.Engine) with an f16 or DecoQuant cache."""

    def __init__(self, spec: KVSpec, model_path: str | os.PathLike, n_ctx: int, n_threads: int,
                 n_batch: int = 512) -> None:
        from .engine import Engine

        self.spec = spec
        self.eng = Engine(model_path, n_ctx=n_ctx, n_batch=n_batch, n_ubatch=n_batch, n_threads=n_threads,
                          **spec.engine_kwargs())
        self.n_vocab = self.eng.n_vocab
        self.n_ctx = self.eng.n_ctx
        self.kv_bytes = self.eng.kv_bytes
        self.kv_bytes_per_token = self.eng.kv_bytes_per_token  # allocated bytes / n_ctx
        self.bits_per_value = spec.bits_per_value(self.eng.n_head_kv, self.eng.head_dim)

    def eval(self, tokens: list[int], logits_all: bool = False) -> np.ndarray:
        return self.eng.eval(tokens, logits_all=logits_all)

    def reset(self) -> None:
        self.eng.reset()

    def close(self) -> None:
        self.eng.close()


class LlamaRunner:
    """llama.cpp's cache of one ggml type, flash attention on, through llama-cpp-python."""

    def __init__(self, spec: KVSpec, model: object, n_ctx: int, n_threads: int, n_batch: int = 512,
                 capture_log: list[str] | None = None) -> None:
        from ._llamacpp import LlamaContext, LlamaModel

        assert isinstance(model, LlamaModel)
        self.spec = spec
        self.ctx = LlamaContext(model, n_ctx, spec.ggml_type, n_threads, n_batch, spec.rotation, capture_log)
        self.n_vocab = model.n_vocab
        self.n_ctx = self.ctx.n_ctx
        shape = (model.n_layer, model.n_head_kv, model.head_dim)
        self.kv_bytes = spec.kv_bytes(self.n_ctx, *shape)
        self.kv_bytes_per_token = spec.kv_bytes_per_token(*shape)
        self.bits_per_value = spec.bits_per_value(model.n_head_kv, model.head_dim)

    def eval(self, tokens: list[int], logits_all: bool = False) -> np.ndarray:
        return self.ctx.eval(tokens, logits_all=logits_all)

    def reset(self) -> None:
        self.ctx.reset()

    def close(self) -> None:
        self.ctx.close()


Runner = EngineRunner | LlamaRunner


def open_runner(spec: KVSpec, model_path: str | os.PathLike, n_ctx: int, n_threads: int,
                llama_model: object | None = None, n_batch: int = 512,
                capture_log: list[str] | None = None) -> Runner:
    if spec.is_llama:
        if llama_model is None:
            from ._llamacpp import LlamaModel

            llama_model = LlamaModel(model_path)
        return LlamaRunner(spec, llama_model, n_ctx, n_threads, n_batch, capture_log)
    return EngineRunner(spec, model_path, n_ctx, n_threads, n_batch)
