"""llama.cpp models and contexts through llama-cpp-python's C API (for eval and bench).

The low-level API, not `llama_cpp.Llama`: outputs are requested per token, so a 16K-token context
never needs Llama's n_ctx x n_vocab score matrix. `eval(tokens, logits_all)` mirrors
`decoquant.Engine.eval` (the same batches and the same output rows), so both compute the same
matmul shapes and an f16 cache gives bit-identical logits.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
from collections.abc import Sequence
from types import ModuleType
from typing import Any

import numpy as np

from ._llama import import_llama_cpp

_LOG: dict[str, Any] = {"cb": None, "capture": None}
_WARN = 3  # GGML_LOG_LEVEL_WARN


def llama_cpp() -> ModuleType:
    """llama_cpp on decoquant's ggml, with llama.cpp's info logs off (warnings and errors stay)."""
    lc = import_llama_cpp()
    if _LOG["cb"] is None:
        def _log(level: int, text: bytes | None, _ud: ctypes.c_void_p) -> None:
            if not text:
                return
            s = text.decode(errors="replace")
            if _LOG["capture"] is not None:
                _LOG["capture"].append(s)
            if level >= _WARN and level != 5:  # 5: GGML_LOG_LEVEL_CONT
                os.write(2, text)

        _LOG["cb"] = lc.llama_log_callback(_log)  # kept alive: llama.cpp holds the pointer
        lc.llama_log_set(_LOG["cb"], ctypes.c_void_p())
        lc.llama_backend_init()
    return lc


class LlamaModel:
    """A GGUF model loaded by llama.cpp (vocab_only: tokenizer and metadata only, ~0.1 s)."""

    def __init__(self, path: str | os.PathLike, vocab_only: bool = False) -> None:
        lc = self._lc = llama_cpp()
        self.path = str(path)
        mp = lc.llama_model_default_params()
        mp.n_gpu_layers = 0
        mp.vocab_only = vocab_only
        self._m = lc.llama_model_load_from_file(self.path.encode(), mp)
        if not self._m:
            raise ValueError(f"llama.cpp could not load {self.path!r} (not a GGUF model it supports?)")
        self.vocab = lc.llama_model_get_vocab(self._m)
        self.add_bos = bool(lc.llama_vocab_get_add_bos(self.vocab))
        self.bos = int(lc.llama_vocab_bos(self.vocab))
        self.n_vocab = int(lc.llama_vocab_n_tokens(self.vocab))
        # shapes from the GGUF metadata (a vocab_only model has no hparams: llama_model_n_head aborts)
        self.arch = self.meta("general.architecture") or "?"
        self.n_layer = self._meta_int("block_count")
        self.n_head = self._meta_int("attention.head_count")
        self.n_head_kv = self._meta_int("attention.head_count_kv", self.n_head)
        self.n_ctx_train = self._meta_int("context_length")
        self.head_dim = self._meta_int("attention.key_length",
                                       self._meta_int("embedding_length") // max(1, self.n_head))

    def _meta_int(self, key: str, default: int = 0) -> int:
        v = self.meta(f"{self.arch}.{key}")
        try:
            return int(v) if v is not None else default
        except ValueError:  # per-layer arrays: the first layer's value
            return int(v.strip("[]").split(",")[0]) if v else default

    def meta(self, key: str) -> str | None:
        buf = ctypes.create_string_buffer(256)
        n = self._lc.llama_model_meta_val_str(self._m, key.encode(), buf, len(buf))
        return buf.value.decode() if n >= 0 else None

    def tokenize(self, text: str, add_special: bool = True) -> list[int]:
        """llama_tokenize as llama-perplexity calls it (add_special: BOS where the vocab adds one)."""
        data = text.encode("utf-8")
        cap = len(data) + 16
        buf = (self._lc.llama_token * cap)()
        n = self._lc.llama_tokenize(self.vocab, data, len(data), buf, cap, add_special, False)
        if n < 0:
            raise ValueError(f"tokenization failed ({n})")
        return list(buf[:n])

    def close(self) -> None:
        if getattr(self, "_m", None):
            self._lc.llama_model_free(self._m)
            self._m = None

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()


class LlamaContext:
    """One llama.cpp context (KV cache of type_k/type_v, flash attention on) over a LlamaModel."""

    def __init__(self, model: LlamaModel, n_ctx: int, kv_type: str, n_threads: int, n_batch: int = 512,
                 rotation: bool = True, capture_log: list[str] | None = None) -> None:
        lc = self._lc = model._lc
        self.model = model
        ty = getattr(lc, f"GGML_TYPE_{kv_type.upper()}", None)
        if ty is None:
            raise ValueError(f"llama_cpp has no GGML_TYPE_{kv_type.upper()}")
        cp = lc.llama_context_default_params()
        cp.n_ctx = n_ctx
        cp.n_batch = cp.n_ubatch = n_batch
        cp.n_seq_max = 1
        cp.n_threads = cp.n_threads_batch = n_threads
        cp.flash_attn_type = lc.LLAMA_FLASH_ATTN_TYPE_ENABLED
        cp.type_k = cp.type_v = ty
        cp.no_perf = True
        # llama.cpp reads LLAMA_ATTN_ROT_DISABLE when it builds the KV cache
        old = os.environ.get("LLAMA_ATTN_ROT_DISABLE")
        if not rotation:
            os.environ["LLAMA_ATTN_ROT_DISABLE"] = "1"
        _LOG["capture"] = capture_log
        try:
            self._ctx = lc.llama_init_from_model(model._m, cp)
        finally:
            _LOG["capture"] = None
            if not rotation:
                if old is None:
                    os.environ.pop("LLAMA_ATTN_ROT_DISABLE", None)
                else:
                    os.environ["LLAMA_ATTN_ROT_DISABLE"] = old
        if not self._ctx:
            raise RuntimeError(f"llama.cpp could not create a context (n_ctx={n_ctx}, KV {kv_type}): out of memory?")
        self.n_ctx = int(lc.llama_n_ctx(self._ctx))
        self.n_batch = n_batch
        self.n_vocab = model.n_vocab
        self.n_past = 0
        self._mem = lc.llama_get_memory(self._ctx)
        self._batch = lc.llama_batch_init(n_batch, 0, 1)

    def reset(self) -> None:
        self._lc.llama_memory_clear(self._mem, True)
        self.n_past = 0

    def eval(self, tokens: Sequence[int], logits_all: bool = False) -> np.ndarray:
        """Logits [n_vocab] of the last token, or [len(tokens), n_vocab]; in pieces of n_batch tokens."""
        toks = [int(t) for t in tokens]
        if not toks:
            raise ValueError("eval: no tokens")
        if self.n_past + len(toks) > self.n_ctx:
            raise ValueError(f"context overflow: {self.n_past} + {len(toks)} tokens > n_ctx {self.n_ctx}")
        lc, b = self._lc, self._batch
        out = []
        for s in range(0, len(toks), self.n_batch):
            piece = toks[s:s + self.n_batch]
            last = s + len(piece) == len(toks)
            for i, t in enumerate(piece):
                b.token[i] = t
                b.pos[i] = self.n_past + i
                b.n_seq_id[i] = 1
                b.seq_id[i][0] = 0
                b.logits[i] = logits_all or (last and i == len(piece) - 1)
            b.n_tokens = len(piece)
            rc = lc.llama_decode(self._ctx, b)
            if rc != 0:
                raise RuntimeError(f"llama_decode returned {rc} at position {self.n_past}")
            self.n_past += len(piece)
            n_out = len(piece) if logits_all else int(last)
            if n_out:
                ptr = ctypes.cast(lc.llama_get_logits(self._ctx), ctypes.POINTER(ctypes.c_float))
                out.append(np.ctypeslib.as_array(ptr, shape=(n_out, self.n_vocab)).copy())
        lg = np.concatenate(out) if len(out) > 1 else out[0]
        return lg if logits_all else lg[-1]

    def close(self) -> None:
        if getattr(self, "_ctx", None):
            self._lc.llama_batch_free(self._batch)
            self._lc.llama_free(self._ctx)
            self._ctx = None

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()


def kv_bytes_from_log(lines: list[str]) -> int | None:
    """Sum of llama.cpp's 'KV buffer size = X MiB' lines (0.01 MiB resolution), in bytes."""
    total, seen = 0.0, False
    for line in lines:
        if "KV buffer size" in line:
            total += float(line.split("=")[1].split()[0])
            seen = True
    return round(total * 2**20) if seen else None
