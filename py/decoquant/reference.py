"""NumPy reference for DecoQuant: the readable spec that the C and CUDA code is tested against.

Shapes follow the runtime: a span of tokens is x[T, n_kv_heads, head_dim] (float32).
A chunk is decomposed as M = x.reshape(T * D / 16, 16) = A @ B, where A is the large
tensor (quantized) and B the small 16x16 tensor (kept in FP16). See docs/FORMAT.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

BITS = (2, 3, 4, 8)
SCALES = ("token", "row", "channel")
SCOPES = ("layer", "head")
RANK_EPS = 2.0**-20  # singular values below sigma_max * RANK_EPS are treated as zero


@dataclass(frozen=True)
class Options:
    """One K or V stream's compression settings (the knobs of docs/FORMAT.md)."""

    bits: int = 4
    # token: one scale per token and scope group; row: per 16 values; channel: per channel per chunk
    scale: str = "token"
    asym: bool = False  # asymmetric codes (scale + min) instead of symmetric absmax
    scope: str = "layer"  # layer: one B for all KV heads; head: one B per KV head
    gauge: float = 0.5  # A = U S^gauge, B = S^(1-gauge) V^T ; the paper splits S evenly
    chunk: int = 128  # tokens per compressed chunk
    sinks: int = 0  # first tokens kept in FP16

    def check(self, n_kv_heads: int, head_dim: int) -> None:
        if self.bits not in BITS:
            raise ValueError(f"bits must be one of {BITS}, got {self.bits!r}")
        if self.scale not in SCALES:
            raise ValueError(f"scale must be one of {SCALES}, got {self.scale!r}")
        if self.scope not in SCOPES:
            raise ValueError(f"scope must be one of {SCOPES}, got {self.scope!r}")
        if not 0.0 <= self.gauge <= 1.0:
            raise ValueError(f"gauge must be in [0, 1], got {self.gauge!r}")
        if self.chunk < 1 or self.sinks < 0:
            raise ValueError(f"chunk must be >= 1 and sinks >= 0, got {self.chunk}, {self.sinks}")
        if head_dim % 16 != 0 or head_dim <= 0 or n_kv_heads <= 0:
            raise ValueError(f"head_dim must be a positive multiple of 16, got {head_dim}")


PRESETS: dict[str, Options] = {
    # The paper (arXiv 2405.12591): per-token symmetric absmax, Sigma split evenly, one B per layer.
    "paper": Options(scale="token", asym=False, scope="layer", gauge=0.5),
    # Our default, chosen from the real-K/V study in docs/RESULTS.md: asymmetric scales per
    # channel of A over 256-token chunks (4.21 bits/value on SmolLM2's 3x64 KV heads).
    "default": Options(scale="channel", asym=True, scope="layer", gauge=0.5, chunk=256),
}


def options(bits: int = 4, preset: str = "default", **overrides: object) -> Options:
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {preset!r}")
    valid = set(Options.__dataclass_fields__)
    bad = sorted(set(overrides) - valid)
    if bad:
        raise ValueError(f"unknown option(s) {bad}; valid: {sorted(valid)}")
    return replace(PRESETS[preset], bits=bits, **overrides)  # type: ignore[arg-type]


def f16(x: np.ndarray) -> np.ndarray:
    """Round to FP16 and back, as the block stores it."""
    return np.asarray(x, np.float32).astype(np.float16).astype(np.float32)


def round_half_away(x: np.ndarray) -> np.ndarray:
    """C's roundf: ties go away from zero (np.round goes to even)."""
    return np.sign(x) * np.floor(np.abs(x) + 0.5)


# ---------------------------------------------------------------- decomposition


def svd_split(m: np.ndarray, gauge: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Exact split M[N, 16] = A[N, 16] @ B[16, 16] with A = U S^g, B = S^(1-g) V^T.

    Canonical form, so that every implementation gives the same A:
    singular values descending; each right singular vector's largest-|.| entry positive
    (first index on ties); directions with sigma <= sigma_max * RANK_EPS are zeroed.
    """
    m64 = np.asarray(m, np.float64)
    _, s, vt = np.linalg.svd(m64, full_matrices=False)
    v = vt.T.copy()
    for j in range(v.shape[1]):
        i = int(np.argmax(np.abs(v[:, j])))
        if v[i, j] < 0:
            v[:, j] = -v[:, j]
    keep = s > s[0] * RANK_EPS if s[0] > 0 else np.zeros_like(s, bool)
    s_safe = np.where(keep, s, 1.0)
    a = (m64 @ v) * np.where(keep, s_safe ** (gauge - 1.0), 0.0)
    b = (np.where(keep, s_safe ** (1.0 - gauge), 0.0)[:, None]) * v.T
    return a, b


def mpo_decompose(m: np.ndarray, in_shape: list[int], out_shape: list[int]) -> list[np.ndarray]:
    """General n-site MPO (TT-SVD) of m[prod(in), prod(out)], no truncation.

    Core k has shape [r_k, in_k, out_k, r_k+1]. Canonical gauge: at every bond the singular
    values are split as S^1/2 to each side (the paper's Matrix2MPO gauge; for n = 2 this is
    A = U S^1/2, B = S^1/2 V^T).
    """
    n = len(in_shape)
    t = np.asarray(m, np.float64).reshape(list(in_shape) + list(out_shape))
    t = t.transpose([i for k in range(n) for i in (k, n + k)])  # (i0, o0, i1, o1, ...)
    cores: list[np.ndarray] = []
    rank = 1
    rest = t.reshape(1, -1)
    inv_prev = np.ones(1)
    for k in range(n - 1):
        rest = rest.reshape(rank * in_shape[k] * out_shape[k], -1)
        u, s, vt = np.linalg.svd(rest, full_matrices=False)
        sq = np.sqrt(s)
        core = u.reshape(rank, in_shape[k], out_shape[k], len(s))
        # left-canonical core, then move sqrt(S) of both its bonds into it
        cores.append(inv_prev[:, None, None, None] * core * sq[None, None, None, :])
        inv_prev = np.where(sq > 0, 1.0 / np.where(sq > 0, sq, 1.0), 0.0)
        rest = s[:, None] * vt
        rank = len(s)
    cores.append(inv_prev[:, None, None, None] * rest.reshape(rank, in_shape[-1], out_shape[-1], 1))
    return cores


def mpo_contract(cores: list[np.ndarray]) -> np.ndarray:
    """Inverse of mpo_decompose."""
    t = cores[0]
    for c in cores[1:]:
        t = np.tensordot(t, c, axes=([t.ndim - 1], [0]))
    t = t[0, ..., 0]
    n = len(cores)
    t = t.transpose([2 * k for k in range(n)] + [2 * k + 1 for k in range(n)])
    rows = int(np.prod([c.shape[1] for c in cores]))
    return t.reshape(rows, -1)


# ---------------------------------------------------------------- quantization


def qmax(bits: int) -> int:
    return (1 << (bits - 1)) - 1


def quantize_groups(a: np.ndarray, bits: int, asym: bool,
                    axis: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Quantize a (float32) with one FP16 scale (and min) per group, reducing over `axis`.

    Returns (codes as unsigned ints, scale, min). Symmetric: u = q + qmax, q in [-qmax, qmax].
    Asymmetric: u in [0, 2^bits - 1], value = min + scale * u.
    """
    a = np.asarray(a, np.float32)
    if asym:
        lo = f16(a.min(axis=axis, keepdims=True))
        hi = a.max(axis=axis, keepdims=True)
        scale = f16((hi - lo) / np.float32((1 << bits) - 1))
        with np.errstate(divide="ignore", invalid="ignore"):
            u = np.where(scale > 0, round_half_away((a - lo) / scale), 0.0)
        return np.clip(u, 0, (1 << bits) - 1).astype(np.uint8), scale, lo
    qm = qmax(bits)
    scale = f16(np.abs(a).max(axis=axis, keepdims=True) / np.float32(qm))
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.where(scale > 0, round_half_away(a / scale), 0.0)
    return (np.clip(q, -qm, qm) + qm).astype(np.uint8), scale, np.zeros_like(scale)


def dequantize_groups(u: np.ndarray, scale: np.ndarray, lo: np.ndarray, bits: int, asym: bool) -> np.ndarray:
    zero = 0 if asym else qmax(bits)
    return lo + scale * (u.astype(np.float32) - zero)


# ---------------------------------------------------------------- the block


@dataclass
class Block:
    """One compressed chunk: n tokens of x[n, n_kv_heads, head_dim]."""

    opts: Options
    n_kv_heads: int
    head_dim: int
    b: np.ndarray  # [G, 16, 16] FP16 values (as float32)
    codes: np.ndarray  # [n, D/16, 16] unsigned codes
    scale: np.ndarray  # broadcastable to codes: token [n,G,1,1]->..., see _groups
    lo: np.ndarray
    n_tokens: int = field(init=False)

    def __post_init__(self) -> None:
        self.n_tokens = self.codes.shape[0]

    @property
    def groups(self) -> int:
        return self.n_kv_heads if self.opts.scope == "head" else 1

    def a(self) -> np.ndarray:
        """Dequantized A as [n, G, R, 16] (R = rows per token per group)."""
        g = self.groups
        u = self.codes.reshape(self.n_tokens, g, -1, 16)
        return dequantize_groups(u, self.scale, self.lo, self.opts.bits, self.opts.asym)

    def decompress(self) -> np.ndarray:
        a = self.a()
        x = np.einsum("tgrj,gjk->tgrk", a, self.b)
        return x.reshape(self.n_tokens, self.n_kv_heads, self.head_dim).astype(np.float32)


def _quant_axes(scale: str) -> tuple[int, ...]:
    # A is viewed as [n, G, R, 16]
    return {"token": (2, 3), "row": (3,), "channel": (0,)}[scale]


def compress_chunk(x: np.ndarray, opts: Options) -> Block:
    """Decompose-on-append for one chunk x[n, n_kv_heads, head_dim]."""
    n, h, hd = x.shape
    opts.check(h, hd)
    g = h if opts.scope == "head" else 1
    xg = np.asarray(x, np.float32).reshape(n, g, -1, 16)  # [n, G, R, 16]
    a = np.empty(xg.shape, np.float32)
    b = np.empty((g, 16, 16), np.float32)
    for gi in range(g):
        m = xg[:, gi].reshape(-1, 16)
        ag, bg = svd_split(m, opts.gauge)
        a[:, gi] = ag.astype(np.float32).reshape(n, -1, 16)
        b[gi] = f16(bg)
    codes, scale, lo = quantize_groups(a, opts.bits, opts.asym, _quant_axes(opts.scale))
    return Block(opts, h, hd, b, codes.reshape(n, -1, 16), scale, lo)


def compress(x: np.ndarray, opts: Options) -> list[Block]:
    """Split x[T, H, hd] into chunks of opts.chunk tokens (the last may be short)."""
    return [compress_chunk(x[i : i + opts.chunk], opts) for i in range(0, x.shape[0], opts.chunk)]


def decompress(blocks: list[Block]) -> np.ndarray:
    return np.concatenate([blk.decompress() for blk in blocks], axis=0)


def block_bytes(opts: Options, n_tokens: int, n_kv_heads: int, head_dim: int) -> int:
    """Exact bytes of one block as laid out in docs/FORMAT.md (sections padded to 16 bytes)."""
    d = n_kv_heads * head_dim
    g = n_kv_heads if opts.scope == "head" else 1
    per = {"token": g, "row": d // 16, "channel": 0}[opts.scale]
    npar = 2 if opts.asym else 1

    def pad(nbytes: int) -> int:
        return (nbytes + 15) // 16 * 16

    size = pad(g * 256 * 2)  # B
    if opts.scale == "channel":
        size += pad(npar * d * 2)
    size += pad(npar * n_tokens * per * 2)
    size += pad(n_tokens * d * opts.bits // 8)
    return size


# ---------------------------------------------------------------- code packing (FORMAT.md)


def pack_row(u: np.ndarray, bits: int) -> bytes:
    """16 codes -> 2*bits bytes, little-endian bit stream, code i at bit i*bits."""
    acc = 0
    for i, c in enumerate(np.asarray(u, np.uint64).tolist()):
        acc |= int(c) << (i * bits)
    return acc.to_bytes(2 * bits, "little")


def unpack_row(data: bytes, bits: int) -> np.ndarray:
    acc = int.from_bytes(data, "little")
    return np.array([(acc >> (i * bits)) & ((1 << bits) - 1) for i in range(16)], np.uint8)


# ---------------------------------------------------------------- RTN baselines


def hadamard(n: int) -> np.ndarray:
    h = np.ones((1, 1))
    while h.shape[0] < n:
        h = np.block([[h, h], [h, -h]])
    return h / np.sqrt(n)


def rtn(x: np.ndarray, bits: int, mode: str, asym: bool = False, group: int = 32, rotate: bool = False) -> np.ndarray:
    """Round-to-nearest baselines on x[T, H, hd]; returns the dequantized tensor.

    mode: "token" (one scale per token over all channels), "channel" (one per channel over
    the tokens), "group" (blocks of `group` channels, FP16 scale: llama.cpp's q4_0/q8_0 layout).
    rotate: a normalized 64-wide Hadamard rotation per head before quantizing (llama.cpp's
    attention rotation for quantized caches), undone after.
    """
    t, h, hd = x.shape
    y = np.asarray(x, np.float32)
    if rotate:
        hm = hadamard(64).astype(np.float32)
        y = (y.reshape(t, h, hd // 64, 64) @ hm).reshape(t, h, hd)
    if mode == "group" and not asym and bits in (4, 8):
        out = _q_llama(y.reshape(-1, group), bits).reshape(t, h, hd)
    else:
        flat = y.reshape(t, h * hd)
        if mode == "token":
            u, s, lo = quantize_groups(flat, bits, asym, (1,))
        elif mode == "channel":
            u, s, lo = quantize_groups(flat, bits, asym, (0,))
        elif mode == "group":
            gq = flat.reshape(t, -1, group)
            u, s, lo = quantize_groups(gq, bits, asym, (2,))
        else:
            raise ValueError(f"unknown RTN mode {mode!r}")
        out = dequantize_groups(u, s, lo, bits, asym).reshape(t, h, hd)
    if rotate:
        hm = hadamard(64).astype(np.float32)
        out = (out.reshape(t, h, hd // 64, 64) @ hm.T).reshape(t, h, hd)
    return out.astype(np.float32)


def _q_llama(blocks: np.ndarray, bits: int) -> np.ndarray:
    """llama.cpp's q4_0 (d = max/-8, codes 0..15 minus 8) and q8_0 (d = amax/127)."""
    if bits == 8:
        d = f16(np.abs(blocks).max(axis=1, keepdims=True) / 127.0)
        with np.errstate(divide="ignore", invalid="ignore"):
            q = np.where(d > 0, np.round(blocks / d), 0)
        return d * np.clip(q, -127, 127)
    if bits == 4:
        idx = np.argmax(np.abs(blocks), axis=1)
        mx = np.take_along_axis(blocks, idx[:, None], axis=1)
        d = mx / -8.0
        with np.errstate(divide="ignore", invalid="ignore"):
            inv = np.where(d != 0, 1.0 / d, 0.0)
        q = np.clip(np.trunc(blocks * inv + 8.5), 0, 15)
        return f16(d) * (q - 8)
    raise ValueError("llama.cpp group layout is defined here for 4 and 8 bits")


def rtn_bits_per_value(bits: int, mode: str, asym: bool, group: int, n_tokens: int, d: int) -> float:
    npar = 2 if asym else 1
    per_value = {"token": npar * 16 / d, "channel": npar * 16 / n_tokens, "group": npar * 16 / group}[mode]
    return bits + per_value


def kivi(k: np.ndarray, v: np.ndarray, bits: int, group: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """KIVI-style: K asymmetric per channel over groups of `group` tokens, V asymmetric per
    token over groups of `group` channels (the FP16 residual window is left out here)."""
    t, h, hd = k.shape
    kq = np.empty_like(k)
    for i in range(0, t, group):
        kq[i : i + group] = rtn(k[i : i + group], bits, "channel", asym=True)
    vq = rtn(v, bits, "group", asym=True, group=group)
    return kq, vq


# ---------------------------------------------------------------- attention


def attention_dense(q: np.ndarray, k: np.ndarray, v: np.ndarray, q_pos: np.ndarray | None = None,
                    k_pos: np.ndarray | None = None, scale: float | None = None) -> np.ndarray:
    """Plain softmax attention. q[Nq, Hq, hd], k/v[T, Hkv, hd]; GQA by head groups; causal when
    q_pos is given (a query at position p sees keys at positions <= p)."""
    nq, hq, hd = q.shape
    t, hkv, _ = k.shape
    grp = hq // hkv
    scale = 1.0 / np.sqrt(hd) if scale is None else scale
    k_pos = np.arange(t) if k_pos is None else k_pos
    kk = np.repeat(np.asarray(k, np.float64), grp, axis=1)  # [T, Hq, hd]
    vv = np.repeat(np.asarray(v, np.float64), grp, axis=1)
    s = np.einsum("qhd,thd->hqt", np.asarray(q, np.float64), kk) * scale
    if q_pos is not None:
        s = np.where(k_pos[None, None, :] <= np.asarray(q_pos)[None, :, None], s, -np.inf)
    s = s - s.max(axis=2, keepdims=True)
    p = np.exp(s)
    p /= p.sum(axis=2, keepdims=True)
    return np.einsum("hqt,thd->qhd", p, vv).astype(np.float32)


def attention_blocks(q: np.ndarray, kb: list[Block], vb: list[Block], k_res: np.ndarray, v_res: np.ndarray,
                     q_pos: np.ndarray | None = None, scale: float | None = None) -> np.ndarray:
    """Attention read from compressed blocks plus an FP16 residual, never rebuilding K or V.

    Per chunk and query head: q~ = B q (per 16-row), scores = q~ . A_t; values are summed in
    A-space and multiplied by B once per chunk. Online softmax over chunks, then the residual.
    """
    nq, hq, hd = q.shape
    hkv = k_res.shape[1] if k_res.size else kb[0].n_kv_heads
    grp = hq // hkv
    r = hd // 16
    scale = 1.0 / np.sqrt(hd) if scale is None else scale
    q64 = np.asarray(q, np.float64)
    out = np.zeros((nq, hq, hd))
    m = np.full((nq, hq), -np.inf)
    lsum = np.zeros((nq, hq))

    def absorb(s: np.ndarray, values: callable) -> None:  # s[Nq, Hq, n]
        nonlocal m, lsum, out
        m_new = np.maximum(m, s.max(axis=2))
        m_safe = np.where(np.isfinite(m_new), m_new, 0.0)
        p = np.exp(s - m_safe[:, :, None])
        corr = np.exp(np.where(np.isfinite(m), m - m_safe, -np.inf))
        out = out * corr[:, :, None] + values(p)
        lsum = lsum * corr + p.sum(axis=2)
        m = m_new

    pos = 0
    for kblk, vblk in zip(kb, vb):
        n = kblk.n_tokens
        ak = kblk.a().astype(np.float64).reshape(n, hkv, r, 16)  # groups tile the heads in order
        av = vblk.a().astype(np.float64).reshape(n, hkv, r, 16)
        bk = _b_per_head(kblk, hkv)  # [Hkv, 16, 16]
        bv = _b_per_head(vblk, hkv)
        qr = q64.reshape(nq, hkv, grp, r, 16)
        qt = np.einsum("hij,qhgrj->qhgri", bk, qr)  # q~ = B q
        s = np.einsum("qhgri,thri->qhgt", qt, ak).reshape(nq, hq, n) * scale
        s = _mask(s, q_pos, pos + np.arange(n))

        def vals(p: np.ndarray, av: np.ndarray = av, bv: np.ndarray = bv) -> np.ndarray:
            acc = np.einsum("qhgt,thri->qhgri", p.reshape(nq, hkv, grp, n), av)  # A-space
            return np.einsum("qhgri,hij->qhgrj", acc, bv).reshape(nq, hq, hd)

        absorb(s, vals)
        pos += n
    if k_res.shape[0]:
        n = k_res.shape[0]
        kk = np.repeat(np.asarray(k_res, np.float64), grp, axis=1)
        vv = np.repeat(np.asarray(v_res, np.float64), grp, axis=1)
        s = _mask(np.einsum("qhd,thd->qht", q64, kk) * scale, q_pos, pos + np.arange(n))
        absorb(s, lambda p: np.einsum("qht,thd->qhd", p, vv))
    return (out / lsum[:, :, None]).astype(np.float32)


def _b_per_head(blk: Block, hkv: int) -> np.ndarray:
    return blk.b if blk.groups == hkv else np.repeat(blk.b, hkv, axis=0)


def _mask(s: np.ndarray, q_pos: np.ndarray | None, k_pos: np.ndarray) -> np.ndarray:
    if q_pos is None:
        return s
    return np.where(k_pos[None, None, :] <= np.asarray(q_pos)[:, None, None], s, -np.inf)
