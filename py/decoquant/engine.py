"""decoquant.Engine: a GGUF model on DecoQuant's own ggml graph (CPU), with an f16 or DecoQuant KV cache.

    eng = Engine("model.gguf", n_ctx=4096, n_threads=2, kv_cache="decoquant", kv_bits_k=4, kv_bits_v=4)
    logits = eng.eval(tokens)            # [n_vocab] for the last token
    logits = eng.eval(more, logits_all=True)  # [len(more), n_vocab]
    eng.truncate(n); eng.reset(); blob = eng.save_state(); eng.load_state(blob)
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence

import numpy as np

from . import reference
from ._lib import ffi, lib

_ERR = 1024
_SCALES = {"token": 0, "row": 1, "channel": 2}
_SCOPES = {"layer": 0, "head": 1}


class EngineError(RuntimeError):
    """An error reported by the runtime (bad file, context overflow, state mismatch, ...)."""


def _err() -> object:
    return ffi.new(f"char[{_ERR}]")


def _msg(buf: object) -> str:
    return ffi.string(buf).decode(errors="replace")


def _kv_params(mode: str, bits: int, opts: reference.Options) -> object:
    p = ffi.new("dq_kv_params *")
    p.mode = 0 if mode == "f16" else 1
    p.cfg.bits = bits
    p.cfg.scale_mode = _SCALES[opts.scale]
    p.cfg.asym = int(bool(opts.asym))
    p.cfg.scope = _SCOPES[opts.scope]
    p.cfg.gauge = float(opts.gauge)
    p.chunk = int(opts.chunk)
    p.sinks = int(opts.sinks)
    return p


def _per_layer_bits(name: str, bits: int | Sequence[int]) -> list[int]:
    if isinstance(bits, (int, np.integer)):
        return [int(bits)]
    if isinstance(bits, (str, bytes)):
        raise ValueError(f"{name} must be one of {reference.BITS} or a list of them (one per layer), got {bits!r}")
    try:
        out = [int(b) for b in bits]
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be an int or a list of ints (one per layer), got {bits!r}") from None
    if not out:
        raise ValueError(f"{name}: an empty list")
    return out


def _layer_params(n_layer: int, bits_k: list[int], bits_v: list[int], f16_layers: Sequence[int],
                  opts: reference.Options) -> tuple[object, object]:
    for name, bits in (("kv_bits_k", bits_k), ("kv_bits_v", bits_v)):
        if len(bits) not in (1, n_layer):
            raise ValueError(f"{name} has {len(bits)} entries; the model has {n_layer} layers (give one value or "
                             f"{n_layer})")
    f16 = set()
    for il in f16_layers:
        if not isinstance(il, (int, np.integer)) or not -n_layer <= il < n_layer:
            raise ValueError(f"kv_f16_layers: {il!r} is not a layer index of this model (0..{n_layer - 1})")
        f16.add(int(il) % n_layer)
    pk = ffi.new(f"dq_kv_params[{n_layer}]")
    pv = ffi.new(f"dq_kv_params[{n_layer}]")
    for il in range(n_layer):
        mode = "f16" if il in f16 else "decoquant"
        pk[il] = _kv_params(mode, bits_k[il if len(bits_k) > 1 else 0], opts)[0]
        pv[il] = _kv_params(mode, bits_v[il if len(bits_v) > 1 else 0], opts)[0]
    return pk, pv


class _KVArgs:
    """The KV kwargs of Engine, checked; params() builds the C context params."""

    def __init__(self, kv_cache: str, kv_bits_k: int | Sequence[int], kv_bits_v: int | Sequence[int], preset: str,
                 kv_f16_layers: Sequence[int], kv_options: dict[str, object]) -> None:
        if kv_cache not in ("f16", "decoquant"):
            raise ValueError(f"kv_cache must be 'f16' or 'decoquant', got {kv_cache!r}")
        self.kv_cache = kv_cache
        self.bits_k = _per_layer_bits("kv_bits_k", kv_bits_k)
        self.bits_v = _per_layer_bits("kv_bits_v", kv_bits_v)
        if kv_cache == "decoquant":
            for name, bits in (("kv_bits_k", self.bits_k), ("kv_bits_v", self.bits_v)):
                bad = [b for b in bits if b not in reference.BITS]
                if bad:
                    raise ValueError(f"{name} must be one of {reference.BITS} (or a list of them, one per layer), "
                                     f"got {bad[0]!r}")
        elif len(self.bits_k) > 1 or len(self.bits_v) > 1 or kv_f16_layers:
            raise ValueError("per-layer kv_bits_k/kv_bits_v and kv_f16_layers need kv_cache='decoquant'")
        self.f16_layers = kv_f16_layers
        self.opts = reference.options(4, preset, **kv_options)  # raises ValueError on unknown options
        if kv_cache == "decoquant":
            self.opts.check(16, 16)

    def params(self, n_layer: int, n_ctx: int, n_batch: int, n_ubatch: int | None,
               swa_full: bool) -> tuple[object, tuple[object, ...]]:
        """dq_context_params, and the per-layer arrays it points to (keep them alive until used)."""
        if n_ctx < 0 or n_batch <= 0:
            raise ValueError(f"n_ctx must be >= 0 and n_batch > 0, got {n_ctx}, {n_batch}")
        p = ffi.new("dq_context_params *", lib.dq_context_default_params())
        p.n_ctx = n_ctx
        p.n_batch = n_batch
        p.n_ubatch = n_ubatch or min(n_batch, 512)
        p.swa_full = int(bool(swa_full))
        p.k = _kv_params(self.kv_cache, self.bits_k[0], self.opts)[0]
        p.v = _kv_params(self.kv_cache, self.bits_v[0], self.opts)[0]
        keep: tuple[object, ...] = ()
        if len(self.bits_k) > 1 or len(self.bits_v) > 1 or self.f16_layers:
            keep = _layer_params(n_layer, self.bits_k, self.bits_v, self.f16_layers, self.opts)
            p.layer_k, p.layer_v, p.n_layer_kv = keep[0], keep[1], n_layer
        return p, keep


def _load(path: str) -> tuple[object, object]:
    err = _err()
    m = lib.dq_model_load(path.encode(), err, _ERR)
    if m == ffi.NULL:
        raise EngineError(_msg(err))
    info = ffi.new("dq_model_info *")
    lib.dq_model_get_info(m, info)
    return m, info


def kv_bytes(model_path: str | os.PathLike, n_ctx: int, n_batch: int = 512, n_ubatch: int | None = None,
             kv_cache: str = "f16", kv_bits_k: int | Sequence[int] = 4, kv_bits_v: int | Sequence[int] = 4,
             preset: str = "default", kv_f16_layers: Sequence[int] = (), swa_full: bool = False,
             **kv_options: object) -> int:
    """The KV bytes Engine(model_path, n_ctx, ...) would allocate, computed by the runtime without allocating
    (sliding-window rings included). Loads the GGUF without repacking its weights."""
    spec = _KVArgs(kv_cache, kv_bits_k, kv_bits_v, preset, kv_f16_layers, kv_options)
    m, info = _model_for_sizes(os.fspath(model_path))
    p, keep = spec.params(int(info.n_layer), n_ctx, n_batch, n_ubatch, swa_full)
    err = _err()
    n = int(lib.dq_kv_bytes(m, p, err, _ERR))
    del keep
    if n == 0:
        raise EngineError(_msg(err))
    return n


def model_info(model_path: str | os.PathLike) -> dict[str, object]:
    """The GGUF's architecture and shapes, as the runtime reads them (loaded without repacking)."""
    _, info = _model_for_sizes(os.fspath(model_path))
    return {"arch": ffi.string(info.arch).decode(), **{k: int(getattr(info, k)) for k in (
        "n_vocab", "n_ctx_train", "n_embd", "n_layer", "n_head", "n_head_kv", "head_dim", "n_ff", "n_swa")}}


@functools.cache
def _model_for_sizes(path: str) -> tuple[object, object]:
    # the weights stay in the mapping (no repacked copies): only the shapes are read
    old = os.environ.get("DQ_NO_REPACK")
    os.environ["DQ_NO_REPACK"] = "1"
    try:
        m, info = _load(path)
    finally:
        if old is None:
            del os.environ["DQ_NO_REPACK"]
        else:
            os.environ["DQ_NO_REPACK"] = old
    return ffi.gc(m, lib.dq_model_free), info


class Engine:
    """A model plus one context (its KV cache). Not thread-safe."""

    def __init__(self, model_path: str | os.PathLike, n_ctx: int = 4096, n_batch: int = 512,
                 n_ubatch: int | None = None, n_threads: int | None = None, kv_cache: str = "f16",
                 kv_bits_k: int | Sequence[int] = 4, kv_bits_v: int | Sequence[int] = 4,
                 preset: str = "default", attn: str | None = None, kv_f16_layers: Sequence[int] = (),
                 swa_full: bool = False, **kv_options: object) -> None:
        """kv_bits_k / kv_bits_v: one value, or one per layer. kv_f16_layers: layers whose cache stays
        f16 under kv_cache="decoquant". swa_full: sliding-window layers keep all n_ctx tokens instead
        of a ring of window + n_ubatch."""
        spec = _KVArgs(kv_cache, kv_bits_k, kv_bits_v, preset, kv_f16_layers, kv_options)
        if attn is None:  # f16: llama.cpp's own attention (bit-identical logits); decoquant: dq_attn
            attn = "ggml" if kv_cache == "f16" else "dq"
        if attn not in ("dq", "ggml"):
            raise ValueError(f"attn must be 'dq' (dq_attn custom ops) or 'ggml' (ggml_flash_attn_ext, f16 cache), "
                             f"got {attn!r}")
        self.model_path = str(model_path)
        self.kv_cache = kv_cache
        self._model = ffi.NULL
        self._ctx = ffi.NULL
        self._model, info = _load(self.model_path)
        try:
            p, keep = spec.params(int(info.n_layer), n_ctx, n_batch, n_ubatch, swa_full)
        except ValueError:
            self.close()
            raise
        p.n_threads = n_threads or max(1, (os.cpu_count() or 2))
        p.attn_impl = 0 if attn == "dq" else 1
        err = _err()
        c = lib.dq_context_new(self._model, p, err, _ERR)
        del keep
        if c == ffi.NULL:
            self.close()
            raise EngineError(_msg(err))
        self._ctx = c
        self.arch = ffi.string(info.arch).decode()
        self.n_vocab = int(info.n_vocab)
        self.n_ctx_train = int(info.n_ctx_train)
        self.n_layer = int(info.n_layer)
        self.n_head = int(info.n_head)
        self.n_head_kv = int(info.n_head_kv)
        self.head_dim = int(info.head_dim)
        self.n_embd = int(info.n_embd)
        self.n_swa = int(info.n_swa)
        self.fingerprint = int(info.fingerprint)
        self.n_ctx = int(lib.dq_context_n_ctx(c))
        self.n_threads = int(p.n_threads)

    # ------------------------------------------------------------------ inference

    @property
    def n_past(self) -> int:
        return int(lib.dq_context_n_past(self._ctx))

    def eval(self, tokens: Sequence[int] | np.ndarray, logits_all: bool = False) -> np.ndarray:
        """Evaluate tokens after the cached ones; logits [n_vocab] of the last token, or [n, n_vocab]."""
        t = np.ascontiguousarray(np.asarray(tokens, dtype=np.int64).reshape(-1))
        if t.size == 0:
            raise ValueError("eval: no tokens")
        if t.min() < 0 or t.max() >= self.n_vocab:
            raise ValueError(f"eval: token ids must be in [0, {self.n_vocab})")
        t32 = t.astype(np.int32)
        err = _err()
        rc = lib.dq_context_eval(self._ctx, ffi.cast("const int32_t *", ffi.from_buffer(t32)), int(t32.size),
                                 int(bool(logits_all)), err, _ERR)
        if rc != 0:
            raise EngineError(_msg(err))
        n_out = int(lib.dq_context_n_outputs(self._ctx))
        buf = ffi.buffer(lib.dq_context_logits(self._ctx), n_out * self.n_vocab * 4)
        out = np.frombuffer(buf, dtype=np.float32).reshape(n_out, self.n_vocab).copy()
        return out if logits_all else out[-1]

    def truncate(self, n: int) -> None:
        """Keep the first n cached tokens (prefix reuse)."""
        err = _err()
        if lib.dq_context_truncate(self._ctx, int(n), err, _ERR) != 0:
            raise EngineError(_msg(err))

    def reset(self) -> None:
        lib.dq_context_reset(self._ctx)

    # ------------------------------------------------------------------ state

    def save_state(self, path: str | os.PathLike | None = None) -> bytes | None:
        """The KV state as bytes, or written to path (then None)."""
        err = _err()
        if path is not None:
            if lib.dq_context_state_save_file(self._ctx, os.fspath(path).encode(), err, _ERR) != 0:
                raise EngineError(_msg(err))
            return None
        n = int(lib.dq_context_state_size(self._ctx))
        buf = ffi.new(f"uint8_t[{n}]")
        written = ffi.new("size_t *")
        if lib.dq_context_state_save(self._ctx, buf, n, written, err, _ERR) != 0:
            raise EngineError(_msg(err))
        return bytes(ffi.buffer(buf, int(written[0])))

    def load_state(self, state: bytes | str | os.PathLike) -> None:
        """Restore a state from save_state() bytes or a file path."""
        err = _err()
        if isinstance(state, (bytes, bytearray, memoryview)):
            data = bytes(state)
            rc = lib.dq_context_state_load(self._ctx, data, len(data), err, _ERR)
        else:
            rc = lib.dq_context_state_load_file(self._ctx, os.fspath(state).encode(), err, _ERR)
        if rc != 0:
            raise EngineError(_msg(err))

    # ------------------------------------------------------------------ memory

    @property
    def kv_bytes(self) -> int:
        """Bytes of the KV cache, allocated for n_ctx up front."""
        return int(lib.dq_context_kv_bytes(self._ctx))

    @property
    def kv_bytes_per_token(self) -> float:
        return float(lib.dq_context_kv_bytes_per_token(self._ctx))

    def close(self) -> None:
        if getattr(self, "_ctx", ffi.NULL) != ffi.NULL:
            lib.dq_context_free(self._ctx)
            self._ctx = ffi.NULL
        if getattr(self, "_model", ffi.NULL) != ffi.NULL:
            lib.dq_model_free(self._model)
            self._model = ffi.NULL

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
