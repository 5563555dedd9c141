"""Python API over libdecoquant: compress / decompress / fused attention."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import reference
from ._lib import check, ffi, lib

SCALE_MODE = {"token": 0, "row": 1, "channel": 2}
SCOPE = {"layer": 0, "head": 1}


def make_config(opts: reference.Options, n_kv_heads: int, head_dim: int) -> object:
    opts.check(n_kv_heads, head_dim)
    cfg = ffi.new("dq_config *")
    cfg.n_kv_heads, cfg.head_dim, cfg.bits = n_kv_heads, head_dim, opts.bits
    cfg.scale_mode, cfg.asym, cfg.scope = SCALE_MODE[opts.scale], int(opts.asym), SCOPE[opts.scope]
    cfg.gauge = opts.gauge
    check(lib.dq_config_check(cfg), "config")
    return cfg


def _as_kv(x: object, name: str) -> np.ndarray:
    a = np.asarray(x)
    if a.ndim != 3:
        raise ValueError(f"{name} must have shape [T, n_kv_heads, head_dim], got {a.shape}")
    if a.shape[0] == 0 or a.size == 0:
        raise ValueError(f"{name} is empty (shape {a.shape})")
    if a.shape[2] % 16 != 0:
        raise ValueError(f"{name}: head_dim must be a multiple of 16, got {a.shape[2]}")
    a = np.ascontiguousarray(a, dtype=np.float32)
    if not np.isfinite(a).all():
        raise ValueError(f"{name} contains NaN or Inf")
    return a


@dataclass
class Block:
    n_tokens: int
    pos0: int
    data: np.ndarray  # uint8, dq_block_size bytes


class Compressed:
    """A span of K or V tokens: optional FP16 sinks, then DecoQuant blocks of `chunk` tokens."""

    def __init__(self, x: np.ndarray, opts: reference.Options) -> None:
        t, self.n_kv_heads, self.head_dim = x.shape
        self.opts = opts
        self.cfg = make_config(opts, self.n_kv_heads, self.head_dim)
        self.n_tokens = t
        ns = min(opts.sinks, t)
        self.sinks = x[:ns].astype(np.float16)
        self.blocks: list[Block] = []
        for p in range(ns, t, opts.chunk):
            n = min(opts.chunk, t - p)
            data = np.zeros(lib.dq_block_size(self.cfg, n), np.uint8)
            xi = np.ascontiguousarray(x[p : p + n])
            check(lib.dq_decompose(self.cfg, ffi.from_buffer("float[]", xi), n, ffi.from_buffer(data)), "decompose")
            self.blocks.append(Block(n, p, data))

    @property
    def nbytes(self) -> int:
        return int(self.sinks.nbytes + sum(b.data.nbytes for b in self.blocks))

    @property
    def bits_per_value(self) -> float:
        return 8.0 * self.nbytes / (self.n_tokens * self.n_kv_heads * self.head_dim)

    def decompress(self) -> np.ndarray:
        out = np.empty((self.n_tokens, self.n_kv_heads, self.head_dim), np.float32)
        out[: len(self.sinks)] = self.sinks.astype(np.float32)
        for b in self.blocks:
            dst = np.empty((b.n_tokens, self.n_kv_heads, self.head_dim), np.float32)
            check(lib.dq_reconstruct(self.cfg, ffi.from_buffer(b.data), b.n_tokens, ffi.from_buffer("float[]", dst)),
                  "reconstruct")
            out[b.pos0 : b.pos0 + b.n_tokens] = dst
        return out

    def codes(self) -> np.ndarray:
        """Unsigned codes [T_compressed, D/16, 16] of all blocks (tests)."""
        rows = self.n_kv_heads * self.head_dim // 16
        parts = []
        for b in self.blocks:
            c = np.empty((b.n_tokens, rows, 16), np.uint8)
            check(lib.dq_block_codes(self.cfg, ffi.from_buffer(b.data), b.n_tokens, ffi.from_buffer(c)), "codes")
            parts.append(c)
        return np.concatenate(parts)


def compress(x: object, bits: int = 4, preset: str = "paper", **options: object) -> Compressed:
    """Compress x[T, n_kv_heads, head_dim] (float32) into DecoQuant blocks.

    options: scale ("token"|"row"|"channel"), asym, scope ("layer"|"head"), gauge, chunk, sinks.
    """
    opts = reference.options(bits, preset, **options)
    a = _as_kv(x, "x")
    opts.check(a.shape[1], a.shape[2])
    return Compressed(a, opts)


def _segments(k: Compressed, v: Compressed, k_res: np.ndarray | None, v_res: np.ndarray | None,
              keep: list[object]) -> tuple[object, int]:
    if k.n_tokens != v.n_tokens or len(k.sinks) != len(v.sinks) or [b.n_tokens for b in k.blocks] != [
            b.n_tokens for b in v.blocks]:
        raise ValueError("k and v must cover the same tokens with the same chunking")
    segs: list[tuple[object, object, int, int, int]] = []
    if len(k.sinks):
        ks, vs = np.ascontiguousarray(k.sinks), np.ascontiguousarray(v.sinks)
        keep += [ks, vs]
        segs.append((ffi.from_buffer(ks), ffi.from_buffer(vs), len(ks), 0, 0))
    for kb, vb in zip(k.blocks, v.blocks):
        segs.append((ffi.from_buffer(kb.data), ffi.from_buffer(vb.data), kb.n_tokens, kb.pos0, 1))
    if k_res is not None and len(k_res):
        kr, vr = np.ascontiguousarray(k_res, np.float16), np.ascontiguousarray(v_res, np.float16)
        keep += [kr, vr]
        segs.append((ffi.from_buffer(kr), ffi.from_buffer(vr), len(kr), k.n_tokens, 0))
    arr = ffi.new("dq_segment[]", max(1, len(segs)))
    for i, (kp, vp, n, p0, kind) in enumerate(segs):
        arr[i].k, arr[i].v, arr[i].n_tokens, arr[i].pos0, arr[i].kind = kp, vp, n, p0, kind
    return arr, len(segs)


def attention(q: object, k: Compressed, v: Compressed, k_residual: object | None = None,
              v_residual: object | None = None, q_pos: object | None = None, scale: float | None = None,
              n_threads: int = 1) -> np.ndarray:
    """Fused attention straight from the compressed blocks (plus an FP16 residual window).

    q[n_q, n_head, head_dim]; residual k/v[n_res, n_kv_heads, head_dim] follow the compressed
    tokens. q_pos[n_q]: the query positions for a causal mask (None: every key is visible).
    """
    qa = np.ascontiguousarray(q, np.float32)
    if qa.ndim != 3 or qa.shape[2] != k.head_dim or qa.shape[1] % k.n_kv_heads != 0:
        raise ValueError(f"q must be [n_q, n_head, {k.head_dim}] with n_head a multiple of {k.n_kv_heads}, "
                         f"got {qa.shape}")
    if not np.isfinite(qa).all():
        raise ValueError("q contains NaN or Inf")
    kr = vr = None
    if k_residual is not None or v_residual is not None:
        if k_residual is None or v_residual is None:
            raise ValueError("give both k_residual and v_residual, or neither")
        kr, vr = _as_kv(k_residual, "k_residual"), _as_kv(v_residual, "v_residual")
        if kr.shape != vr.shape or kr.shape[1:] != (k.n_kv_heads, k.head_dim):
            raise ValueError("residual k/v shapes do not match the cache")
    keep: list[object] = []
    segs, n_segs = _segments(k, v, kr, vr, keep)
    out = np.empty(qa.shape, np.float32)
    p = ffi.new("dq_attn_params *")
    p.cfg_k, p.cfg_v, p.n_head, p.n_q = k.cfg, v.cfg, qa.shape[1], qa.shape[0]
    p.q = ffi.from_buffer("float[]", qa)
    if q_pos is not None:
        pos = np.ascontiguousarray(q_pos, np.int32)
        if pos.shape != (qa.shape[0],):
            raise ValueError(f"q_pos must have shape [{qa.shape[0]}]")
        keep.append(pos)
        p.q_pos = ffi.from_buffer("int32_t[]", pos)
    p.scale = 1.0 / np.sqrt(k.head_dim) if scale is None else scale
    p.segs, p.n_segs = segs, n_segs
    p.out = ffi.from_buffer("float[]", out)
    check(lib.dq_attn_run(p, int(n_threads)), "attention")
    return out


def kernels() -> str:
    return ffi.string(lib.dq_cpu_kernels()).decode()
