"""decoquant.Llama: llama-cpp-python's ``Llama`` with the forward passes on DecoQuant's runtime.

    from decoquant import Llama
    llm = Llama("model.gguf", n_ctx=4096, kv_cache="decoquant", kv_bits_k=4, kv_bits_v=4)
    llm.create_chat_completion(messages=[{"role": "user", "content": "Hi"}])

llama.cpp is opened with ``vocab_only=True``: it gives the tokenizer, the GGUF chat template and the
sampler chain; :class:`decoquant.Engine` holds the weights and the KV cache. The overrides are the
minimal set that keeps every llama-cpp-python feature working (see docs in
shared/notes/llama-cpp-python.md): ``eval`` fills ``scores``/``input_ids``/``n_tokens``, ``sample``
runs the sampler chain on our logits (``llama_sampler_sample`` needs a context with logits),
``kv_cache_seq_rm`` truncates our cache, ``save_state``/``load_state`` carry our state.
"""

from __future__ import annotations

import ctypes
import inspect
import multiprocessing
import os
import sys
import weakref
from collections.abc import Sequence
from typing import Any

import numpy as np

from . import reference
from ._llama import import_llama_cpp
from .engine import Engine, EngineError

llama_cpp = import_llama_cpp()
from llama_cpp._utils import suppress_stdout_stderr  # noqa: E402 (after import_llama_cpp: it picks the library)

KV_CACHES = ("decoquant", "f16")
# Engine options (reference.Options) accepted as kwargs; bits come from kv_bits_k / kv_bits_v
OPTIONS = tuple(f for f in reference.Options.__dataclass_fields__ if f != "bits")
# the Engine's own keyword arguments (kv_cache, kv_bits_k, preset, attn, ...), as it defines them
_SIZES = ("self", "model_path", "n_ctx", "n_batch", "n_ubatch", "n_threads")
ENGINE_ARGS = tuple(n for n, p in inspect.signature(Engine.__init__).parameters.items()
                    if n not in _SIZES and p.kind is not p.VAR_KEYWORD)
KV_KWARGS = tuple(sorted({"kv_preset", *ENGINE_ARGS, *OPTIONS}))
_STOCK_ARGS = frozenset(inspect.signature(llama_cpp.Llama.__init__).parameters)
# llama-cpp-python features that need a llama.cpp context with weights, which we never create
_UNSUPPORTED = {"embedding": False, "lora_path": None, "lora_base": None}


class Llama(llama_cpp.Llama):  # type: ignore[misc,name-defined]
    """``llama_cpp.Llama`` on DecoQuant's runtime. Same kwargs, plus the KV cache ones:

    kv_cache: "decoquant" (default, compressed) or "f16" (llama.cpp's own cache and attention:
        token-identical to ``llama_cpp.Llama(flash_attn=True)``).
    kv_bits_k, kv_bits_v: 2, 3, 4 or 8 (default 4).
    kv_preset (or preset): "default" or "paper"; option overrides: scale, asym, scope, gauge, chunk,
        sinks (docs/FORMAT.md); and the other keyword arguments of :class:`decoquant.Engine` (attn, ...).
    n_ctx=0 takes the GGUF's ``<arch>.context_length``. The runtime runs with one thread count:
    n_threads if given, else n_threads_batch, else llama-cpp-python's default.
    """

    def __init__(self, model_path: str, *, kv_cache: str = "decoquant", kv_bits_k: int = 4, kv_bits_v: int = 4,
                 kv_preset: str | None = None, preset: str | None = None,
                 n_ctx: int = 512, n_batch: int = 512, n_ubatch: int = 512, n_threads: int | None = None,
                 n_threads_batch: int | None = None, **kwargs: Any) -> None:
        bad = sorted(k for k in kwargs if k.startswith("kv_") and k not in KV_KWARGS and k != "kv_overrides")
        if bad:
            raise ValueError(f"unknown KV option(s) {bad}; valid: {sorted(KV_KWARGS)}")
        if kv_cache not in KV_CACHES:
            raise ValueError(f"kv_cache must be one of {KV_CACHES}, got {kv_cache!r}")
        if kv_preset is not None and preset is not None and kv_preset != preset:
            raise ValueError(f"kv_preset={kv_preset!r} and preset={preset!r} disagree; give one")
        for name, default in _UNSUPPORTED.items():
            if kwargs.get(name, default) != default:
                raise ValueError(f"decoquant.Llama does not support {name}={kwargs[name]!r}")
        for name in ("type_k", "type_v"):  # llama.cpp's quantized caches: ours is chosen by kv_cache
            if kwargs.pop(name, None) not in (None, llama_cpp.GGML_TYPE_F16):
                raise ValueError(f"{name} selects llama.cpp's KV cache type; use kv_cache={KV_CACHES} "
                                 "with kv_bits_k / kv_bits_v")
        # options and further Engine kwargs (swa_full goes to both: llama-cpp-python has it too)
        extra = {k: kwargs[k] for k in (*OPTIONS, *ENGINE_ARGS) if kwargs.get(k) is not None}
        kwargs = {k: v for k, v in kwargs.items() if k in _STOCK_ARGS or k not in extra}
        kwargs.pop("vocab_only", None)
        if not isinstance(n_ctx, int) or n_ctx < 0:
            raise ValueError(f"n_ctx must be an int >= 0, got {n_ctx!r}")
        if not os.path.exists(model_path):
            raise ValueError(f"Model path does not exist: {model_path}")

        # the batch sizes and thread count llama-cpp-python would use, resolved the same way
        threads = n_threads or n_threads_batch or max(multiprocessing.cpu_count() // 2, 1)
        self._kv_kwargs: dict[str, Any] = dict(kv_cache=kv_cache, kv_bits_k=kv_bits_k, kv_bits_v=kv_bits_v,
                                               preset=kv_preset or preset or "default", **extra)

        def engine_for(ctx: int) -> Engine:
            batch = min(ctx, n_batch) if ctx else n_batch
            return Engine(model_path, n_ctx=_pad(ctx), n_batch=batch, n_ubatch=min(batch, n_ubatch),
                          n_threads=threads, **self._kv_kwargs)

        # the engine first: it validates the KV options, and it knows the GGUF's context length
        engine = engine_for(n_ctx)
        try:
            if n_ctx == 0:  # vocab-only llama.cpp has no n_ctx_train: give it the engine's (the GGUF's)
                n_ctx = engine.n_ctx_train
                if engine.n_ctx != _pad(n_ctx) or n_batch > n_ctx:
                    engine.close()
                    engine = engine_for(n_ctx)
            # quiet unless verbose: llama.cpp warns that a vocab-only model has no training context
            with suppress_stdout_stderr(disable=bool(kwargs.get("verbose", True))):
                super().__init__(model_path, vocab_only=True, n_ctx=n_ctx, n_batch=n_batch, n_ubatch=n_ubatch,
                                 n_threads=n_threads, n_threads_batch=n_threads_batch, **kwargs)
            if self._n_ctx != engine.n_ctx:
                raise RuntimeError(f"llama.cpp's n_ctx {self._n_ctx} differs from the runtime's {engine.n_ctx}")
        except BaseException:
            engine.close()
            raise
        self.engine = engine
        self._stack.callback(engine.close)
        if self._n_vocab != engine.n_vocab:
            raise ValueError(f"{model_path}: vocabulary of {self._n_vocab} tokens but {engine.n_vocab} logits")
        # generate() removes the cache tail through the context: route it to our cache
        self._ctx.kv_cache_seq_rm = _seq_rm(self)
        if self.verbose:
            bits = f", K {kv_bits_k} / V {kv_bits_v} bits" if kv_cache == "decoquant" else ""
            print(f"decoquant.Llama: kv_cache={kv_cache}{bits}, {engine.kv_bytes / 2**20:.1f} MiB for n_ctx = "
                  f"{engine.n_ctx}, {engine.n_threads} threads", file=sys.stderr)

    @classmethod
    def from_registry(cls, name: str, **kwargs: Any) -> Llama:
        """A model of the registry by name (fetched into the cache if needed), or a path."""
        from . import registry

        return cls(model_path=str(registry.resolve_model(name)), **kwargs)

    # ------------------------------------------------------------------ forward

    def _sync(self) -> None:
        """Drop cached tokens past n_tokens (reset() and generate() only move n_tokens)."""
        if self.engine.n_past != self.n_tokens:
            self.engine.truncate(self.n_tokens)

    def eval(self, tokens: Sequence[int]) -> None:
        self._sync()
        for i in range(0, len(tokens), self.n_batch):
            batch = list(tokens[i: i + self.n_batch])
            n_past, n = self.n_tokens, len(batch)
            out = self.engine.eval(batch, logits_all=self._logits_all)
            self.input_ids[n_past: n_past + n] = batch
            self.n_tokens += n
            if self._logits_all:
                self.scores[n_past: n_past + n, :] = out
            else:  # one row, where _scores[-1] finds it (stopping criteria, save_state)
                self.scores[self._last_row(), :] = out
            self._requires_eval = False

    def _last_row(self) -> int:
        return min(self.n_tokens, self.scores.shape[0]) - 1

    def sample(self, top_k: int = 40, top_p: float = 0.95, min_p: float = 0.05, typical_p: float = 1.0,
               temp: float = 0.80, repeat_penalty: float = 1.0, frequency_penalty: float = 0.0,
               presence_penalty: float = 0.0, tfs_z: float = 1.0, mirostat_mode: int = 0, mirostat_eta: float = 0.1,
               mirostat_tau: float = 5.0, penalize_nl: bool = True, logits_processor: Any = None,
               grammar: Any = None, idx: int | None = None) -> int:
        assert self.n_tokens > 0
        tmp_sampler = self._sampler is None
        if tmp_sampler:
            self._sampler = self._init_sampler(
                top_k=top_k, top_p=top_p, min_p=min_p, typical_p=typical_p, temp=temp, repeat_penalty=repeat_penalty,
                frequency_penalty=frequency_penalty, presence_penalty=presence_penalty, tfs_z=tfs_z,
                mirostat_mode=mirostat_mode, mirostat_tau=mirostat_tau, mirostat_eta=mirostat_eta,
                penalize_nl=penalize_nl, logits_processor=logits_processor, grammar=grammar)
        try:
            row = (idx if idx is not None else self.n_tokens - 1) if self._logits_all else self._last_row()
            return self._apply_sampler(self.scores[row])
        finally:
            if tmp_sampler:
                self._sampler = None

    def _apply_sampler(self, logits: np.ndarray) -> int:
        """What llama_sampler_sample does after reading the context's logits."""
        cand = self._candidates
        cand.copy_logits(logits)
        arr = cand.candidates
        arr.data = cand.candidates_data.ctypes.data_as(llama_cpp.llama_token_data_p)
        arr.selected = -1
        chain = self._sampler.sampler
        llama_cpp.llama_sampler_apply(chain, ctypes.byref(arr))
        if not 0 <= arr.selected < arr.size:
            raise RuntimeError(f"the sampler chain selected no token (selected={arr.selected})")
        token = int(arr.data[arr.selected].id)  # through the pointer: samplers may replace .data
        llama_cpp.llama_sampler_accept(chain, token)
        return token

    # ------------------------------------------------------------------ state

    def save_state(self) -> Any:
        self._sync()
        blob = self.engine.save_state()
        assert blob is not None
        return llama_cpp.LlamaState(scores=self._scores.copy(), input_ids=self.input_ids.copy(),
                                    n_tokens=self.n_tokens, llama_state=blob, llama_state_size=len(blob),
                                    seed=self._seed)

    def load_state(self, state: Any) -> None:
        self.engine.load_state(bytes(state.llama_state[: state.llama_state_size]))  # checks it first
        if self.engine.n_past != state.n_tokens:
            raise EngineError(f"state holds {self.engine.n_past} cached tokens but n_tokens = {state.n_tokens}")
        self.scores[: state.n_tokens, :] = state.scores.copy()
        rest = self.scores[state.n_tokens:, :]
        rest[rest > 0] = 0.0
        self.input_ids = state.input_ids.copy()
        self.n_tokens = state.n_tokens
        self._requires_eval = True
        self._seed = state.seed

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        for k in ("vocab_only", "type_k", "type_v"):
            state.pop(k, None)
        return {**state, **self._kv_kwargs}

    def close(self) -> None:
        if hasattr(self, "_stack"):  # not when __init__ failed before llama-cpp-python's part
            super().close()

    # ------------------------------------------------------------------ memory

    @property
    def kv_bytes(self) -> int:
        """Bytes of the KV cache (allocated for n_ctx)."""
        return self.engine.kv_bytes


def _pad(n_ctx: int) -> int:
    """llama.cpp rounds n_ctx up to a multiple of 256 (llama-context.cpp); the cache must hold as many."""
    return (n_ctx + 255) // 256 * 256


def _seq_rm(llm: Llama) -> Any:
    ref = weakref.ref(llm)  # no cycle through llm._ctx

    def kv_cache_seq_rm(seq_id: int, p0: int, p1: int) -> bool:
        """Remove cached positions [p0, p1): only a tail (p1 < 0) can go; False makes generate() re-eval."""
        m = ref()
        if m is None or p1 >= 0 or p0 < 0:
            return False
        if p0 >= m.engine.n_past:
            return True
        try:
            m.engine.truncate(p0)
        except EngineError:
            return False
        return True

    return kv_cache_seq_rm
