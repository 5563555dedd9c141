"""DecoQuant on NVIDIA GPUs: libdecoquant_cuda through cffi (ABI mode), on torch CUDA tensors.

Importing this module never fails. Without torch, a CUDA GPU or the CUDA build
(``-DDQ_CUDA=ON`` / ``CMAKE_ARGS="-DGGML_CUDA=on"``), every call raises :class:`CudaUnavailable`
with the reason; :func:`available` says whether it would work.

    blocks = decompose(x, bits=4, preset="default")      # x [n_chunks, chunk, n_kv, hd] on the GPU
    out = attention(q, kb, vb, [[0, 1, 2], [3, 4]], opts_k, opts_v, k_res=[r0, r1], v_res=[s0, s1])

The library is looked up in DECOQUANT_CUDA_LIB, next to this file, then next to DECOQUANT_LIB.
Kernels are built for sm_90 (H100/H200).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import reference

CDEF = """
typedef struct dq_config {
    int32_t n_kv_heads; int32_t head_dim; int32_t bits; int32_t scale_mode;
    int32_t asym; int32_t scope; float gauge;
} dq_config;
typedef struct dq_cuda_decompose_params {
    const dq_config * cfg; int32_t n_tokens; int32_t n_chunks; int32_t x_f16;
    const void * x; int64_t x_stride; const void * const * x_ptrs;
    void * blocks; int64_t block_stride; void * const * block_ptrs; void * work;
} dq_cuda_decompose_params;
typedef struct dq_cuda_attn_params {
    const dq_config * cfg_k; const dq_config * cfg_v;
    int32_t n_head; int32_t n_seq; int32_t n_q; int32_t chunk;
    const float * q; const int32_t * q_pos; float scale;
    const void * const * k_blocks; const void * const * v_blocks; const int32_t * blk_start;
    const uint16_t * const * k_res; const uint16_t * const * v_res; const int32_t * res_len;
    int32_t max_blocks; int32_t max_res; int32_t n_split; int32_t path; int32_t variant;
    float * out; void * work;
} dq_cuda_attn_params;
const char * dq_cuda_version(void);
const char * dq_cuda_last_error(void);
int dq_cuda_device_info(char * name, int name_len, int * sm_count, int * cc_major, int * cc_minor);
size_t dq_cuda_decompose_work_size(const dq_cuda_decompose_params * p);
int dq_cuda_decompose(const dq_cuda_decompose_params * p, void * stream);
int dq_cuda_attn_path(const dq_cuda_attn_params * p);
int dq_cuda_attn_splits(const dq_cuda_attn_params * p);
size_t dq_cuda_attn_work_size(const dq_cuda_attn_params * p);
int dq_cuda_attn_work_init(const dq_cuda_attn_params * p, void * stream);
int dq_cuda_attn(const dq_cuda_attn_params * p, void * stream);
int dq_cuda_read_probe(const void * src, size_t bytes, int blocks, int threads, void * sink, void * stream);
"""

SCALE_MODE = {"token": 0, "row": 1, "channel": 2}
SCOPE = {"layer": 0, "head": 1}
STATUS = {1: "invalid argument", 2: "input contains NaN or Inf", 3: "out of memory", 10: "CUDA error",
          11: "unsupported shape"}
PATHS = {"auto": 0, "fast": 1, "generic": 2}
VARIANTS = {"default": 0, "int8": 1, "subnormal": 2}  # fast path: int8 tensor cores (GQA <= 4) or fp16 subnormals


class CudaUnavailable(RuntimeError):
    """The CUDA kernels cannot run here (no torch, no GPU, or no libdecoquant_cuda)."""


_state: dict[str, Any] = {}


def _find_lib() -> str:
    env = os.environ.get("DECOQUANT_CUDA_LIB")
    if env:
        return env
    here = Path(__file__).resolve().parent / "libdecoquant_cuda.so"
    if here.exists():
        return str(here)
    cpu = os.environ.get("DECOQUANT_LIB")
    if cpu and (Path(cpu).parent / "libdecoquant_cuda.so").exists():
        return str(Path(cpu).parent / "libdecoquant_cuda.so")
    raise CudaUnavailable(f"libdecoquant_cuda.so not found (next to {Path(__file__).parent}, or DECOQUANT_CUDA_LIB); "
                          "build with CMAKE_ARGS=\"-DGGML_CUDA=on\" pip install . or cmake -DDQ_CUDA=ON")


def _load() -> tuple[Any, Any, Any]:
    """(ffi, lib, torch), or CudaUnavailable with the reason."""
    if "err" in _state:
        raise CudaUnavailable(_state["err"])
    if "lib" in _state:
        return _state["ffi"], _state["lib"], _state["torch"]
    try:
        try:
            import torch
        except ImportError as e:
            raise CudaUnavailable(f"torch is not installed ({e})") from None
        if not torch.cuda.is_available():
            raise CudaUnavailable("torch sees no CUDA GPU")
        major, minor = torch.cuda.get_device_capability()
        if (major, minor) != (9, 0):
            raise CudaUnavailable(f"the kernels are built for sm_90 only; this GPU is sm_{major}{minor}")
        from cffi import FFI

        ffi = FFI()
        ffi.cdef(CDEF)
        path = _find_lib()
        try:
            lib = ffi.dlopen(path)
        except OSError as e:
            raise CudaUnavailable(f"cannot load {path}: {e}") from None
    except CudaUnavailable as e:
        _state["err"] = str(e)
        raise
    _state.update(ffi=ffi, lib=lib, torch=torch)
    return ffi, lib, torch


def available() -> tuple[bool, str]:
    """(True, device description) if the kernels can run here, else (False, the reason)."""
    try:
        ffi, lib, torch = _load()
    except CudaUnavailable as e:
        return False, str(e)
    return True, f"{torch.cuda.get_device_name()} ({ffi.string(lib.dq_cuda_version()).decode()})"


def _check(status: int, what: str) -> None:
    if status != 0:
        ffi, lib, _ = _load()
        msg = STATUS.get(status, f"status {status}")
        if status == 10:
            msg += ": " + ffi.string(lib.dq_cuda_last_error()).decode()
        raise RuntimeError(f"{what}: {msg}")


def _stream(torch: Any) -> Any:
    ffi = _state["ffi"]
    return ffi.cast("void *", torch.cuda.current_stream().cuda_stream)


def make_config(opts: reference.Options, n_kv_heads: int, head_dim: int) -> Any:
    ffi, _, _ = _load()
    opts.check(n_kv_heads, head_dim)
    cfg = ffi.new("dq_config *")
    cfg.n_kv_heads, cfg.head_dim, cfg.bits = n_kv_heads, head_dim, opts.bits
    cfg.scale_mode, cfg.asym, cfg.scope = SCALE_MODE[opts.scale], int(opts.asym), SCOPE[opts.scope]
    cfg.gauge = opts.gauge
    return cfg


def block_size(opts: reference.Options, n_tokens: int, n_kv_heads: int, head_dim: int) -> int:
    return reference.block_bytes(opts, n_tokens, n_kv_heads, head_dim)


def _ptr(ffi: Any, t: Any, ctype: str = "void *") -> Any:
    return ffi.cast(ctype, t.data_ptr())


def decompose(x: Any, bits: int = 4, preset: str = "paper", opts: reference.Options | None = None,
              **options: Any) -> Any:
    """Decompose-on-append on the GPU: x [n_chunks, n_tokens, n_kv, hd] (or [n_tokens, n_kv, hd]),
    float32 or float16, on a CUDA device -> uint8 blocks [n_chunks, block_size], byte-identical to
    the CPU's dq_decompose (ties in rounding aside)."""
    ffi, lib, torch = _load()
    if opts is None:
        opts = reference.options(bits, preset, **options)
    if not isinstance(x, torch.Tensor) or not x.is_cuda:
        raise ValueError("x must be a CUDA torch tensor")
    if x.dtype not in (torch.float32, torch.float16):
        raise ValueError(f"x must be float32 or float16, got {x.dtype}")
    if x.dim() == 3:
        x = x.unsqueeze(0)
    if x.dim() != 4 or x.shape[1] == 0:
        raise ValueError(f"x must be [n_chunks, n_tokens, n_kv_heads, head_dim], got {tuple(x.shape)}")
    x = x.contiguous()
    nc, n, h, hd = x.shape
    cfg = make_config(opts, h, hd)
    size = block_size(opts, n, h, hd)
    blocks = torch.empty((nc, size), dtype=torch.uint8, device=x.device)
    p = ffi.new("dq_cuda_decompose_params *")
    p.cfg, p.n_tokens, p.n_chunks, p.x_f16 = cfg, n, nc, int(x.dtype == torch.float16)
    p.x, p.x_stride = _ptr(ffi, x), n * h * hd
    p.blocks, p.block_stride = _ptr(ffi, blocks), size
    work = torch.empty(int(lib.dq_cuda_decompose_work_size(p)), dtype=torch.uint8, device=x.device)
    p.work = _ptr(ffi, work)
    _check(lib.dq_cuda_decompose(p, _stream(torch)), "dq_cuda_decompose")
    return blocks  # `work` goes back to torch's caching allocator, reused only after this stream's work


@dataclass
class AttnCall:
    """A prepared attention launch (block table, pointers and workspace built once): call() runs it."""

    params: Any
    keep: list
    out: Any

    def __call__(self) -> Any:
        _, lib, torch = _load()
        _check(lib.dq_cuda_attn(self.params, _stream(torch)), "dq_cuda_attn")
        return self.out

    @property
    def path(self) -> str:
        _, lib, _ = _load()
        return {1: "fast", 2: "generic"}.get(int(lib.dq_cuda_attn_path(self.params)), "?")

    @property
    def splits(self) -> int:
        _, lib, _ = _load()
        return int(lib.dq_cuda_attn_splits(self.params))


def prepare_attention(q: Any, k_blocks: Any, v_blocks: Any, block_table: Sequence[Sequence[int]],
                      opts_k: reference.Options, opts_v: reference.Options, chunk: int | None = None,
                      k_res: Sequence[Any] | None = None, v_res: Sequence[Any] | None = None,
                      q_pos: Any = None, scale: float | None = None, path: str = "auto", variant: str = "default",
                      n_split: int = 0) -> AttnCall:
    """Build one fused-attention launch.

    q: float32 [n_seq, n_head, hd] (decode) or [n_seq, n_q, n_head, hd] on the GPU.
    k_blocks, v_blocks: uint8 [n_blocks, stride] (rows are blocks of `chunk` tokens, stride a
    multiple of 16). block_table[s]: the row indices of sequence s's blocks, in position order.
    k_res, v_res: per sequence an fp16 [n_res, n_kv, hd] tensor (or None): the residual window,
    at the positions after the blocks. q_pos: int32 [n_seq, n_q] positions for a causal mask.
    """
    ffi, lib, torch = _load()
    if path not in PATHS or variant not in VARIANTS:
        raise ValueError(f"path must be one of {sorted(PATHS)} and variant one of {sorted(VARIANTS)}, "
                         f"got {path!r}, {variant!r}")
    dev = q.device
    if q.dim() == 3:
        q = q.unsqueeze(1)
    if q.dim() != 4 or q.dtype != torch.float32:
        raise ValueError("q must be float32 [n_seq, (n_q,) n_head, head_dim]")
    q = q.contiguous()
    n_seq, n_q, n_head, hd = q.shape
    if len(block_table) != n_seq:
        raise ValueError(f"block_table needs {n_seq} rows, got {len(block_table)}")
    if k_blocks.dtype != torch.uint8 or v_blocks.dtype != torch.uint8 or k_blocks.dim() != 2 or v_blocks.dim() != 2:
        raise ValueError("k_blocks and v_blocks must be uint8 [n_blocks, stride]")
    kres = list(k_res) if k_res is not None else [None] * n_seq
    vres = list(v_res) if v_res is not None else [None] * n_seq
    if len(kres) != n_seq or len(vres) != n_seq:
        raise ValueError("k_res and v_res need one entry per sequence")
    nkv = None
    for r in kres + vres:
        if r is not None and r.numel():
            nkv = r.shape[1]
    if chunk is None:
        chunk = opts_k.chunk
    flat = [int(i) for row in block_table for i in row]
    starts = [0]
    for row in block_table:
        starts.append(starts[-1] + len(row))
    if nkv is None:
        nkv = n_head  # resolved from the block size below when there are blocks
        for cand in range(1, n_head + 1):
            if n_head % cand == 0 and block_size(opts_k, chunk, cand, hd) == k_blocks.shape[1]:
                nkv = cand
                break
    cfg_k, cfg_v = make_config(opts_k, nkv, hd), make_config(opts_v, nkv, hd)
    if flat:
        for blocks, o in ((k_blocks, opts_k), (v_blocks, opts_v)):
            if blocks.stride(0) % 16 or blocks.stride(1) != 1 or blocks.shape[1] < block_size(o, chunk, nkv, hd):
                raise ValueError("block rows must be contiguous, at least block_size bytes, 16-byte aligned")
            if max(flat) >= blocks.shape[0]:
                raise ValueError("block_table refers to a missing block")
    idx = torch.tensor(flat if flat else [0], dtype=torch.int64)
    kp = (k_blocks.data_ptr() + idx * k_blocks.stride(0)).to(dev)
    vp = (v_blocks.data_ptr() + idx * v_blocks.stride(0)).to(dev)
    bs = torch.tensor(starts, dtype=torch.int32, device=dev)
    res_keep = []
    rl, rk, rv = [], [], []
    for a, b in zip(kres, vres):
        if a is None or a.numel() == 0:
            rl.append(0)
            rk.append(0)
            rv.append(0)
            continue
        if a.dtype != torch.float16 or b is None or b.shape != a.shape or a.shape[1:] != (nkv, hd):
            raise ValueError(f"residual windows must be fp16 [n, {nkv}, {hd}] pairs")
        a, b = a.contiguous(), b.contiguous()
        res_keep += [a, b]
        rl.append(a.shape[0])
        rk.append(a.data_ptr())
        rv.append(b.data_ptr())
    rlen = torch.tensor(rl, dtype=torch.int32, device=dev)
    rkp = torch.tensor(rk, dtype=torch.int64, device=dev)
    rvp = torch.tensor(rv, dtype=torch.int64, device=dev)
    out = torch.empty((n_seq, n_q, n_head, hd), dtype=torch.float32, device=dev)
    p = ffi.new("dq_cuda_attn_params *")
    p.cfg_k, p.cfg_v = cfg_k, cfg_v
    p.n_head, p.n_seq, p.n_q, p.chunk = n_head, n_seq, n_q, chunk
    p.q = _ptr(ffi, q, "float *")
    keep: list = [q, kp, vp, bs, rlen, rkp, rvp, out, cfg_k, cfg_v, k_blocks, v_blocks] + res_keep
    if q_pos is not None:
        qp = torch.as_tensor(q_pos, dtype=torch.int32).reshape(n_seq, n_q).to(dev).contiguous()
        keep.append(qp)
        p.q_pos = _ptr(ffi, qp, "int32_t *")
    p.scale = float(1.0 / hd**0.5 if scale is None else scale)
    p.k_blocks, p.v_blocks = _ptr(ffi, kp, "void **"), _ptr(ffi, vp, "void **")
    p.blk_start = _ptr(ffi, bs, "int32_t *")
    p.k_res, p.v_res = _ptr(ffi, rkp, "uint16_t **"), _ptr(ffi, rvp, "uint16_t **")
    p.res_len = _ptr(ffi, rlen, "int32_t *")
    p.max_blocks = max(len(r) for r in block_table)
    p.max_res = max(rl)
    p.n_split, p.path, p.variant = n_split, PATHS[path], VARIANTS[variant]
    p.out = _ptr(ffi, out, "float *")
    st = lib.dq_cuda_attn_path(p)
    if st < 0:
        _check(-st, "dq_cuda_attn_path")
    size = int(lib.dq_cuda_attn_work_size(p))
    if size == 0:
        _check(lib.dq_cuda_attn(p, _stream(torch)), "dq_cuda_attn_work_size")
    work = torch.zeros(size, dtype=torch.uint8, device=dev)
    keep.append(work)
    p.work = _ptr(ffi, work)
    keep.append(p)
    return AttnCall(p, keep, out)


def attention(*args: Any, **kwargs: Any) -> Any:
    """prepare_attention(...)() : float32 [n_seq, n_q, n_head, hd] (see prepare_attention)."""
    return prepare_attention(*args, **kwargs)()


def read_probe(src: Any, blocks: int, threads: int, sink: Any) -> None:
    """Benchmark helper: one launch that only reads the bytes of the CUDA tensor `src` (a multiple
    of 16); `sink` is a CUDA tensor of at least 4 bytes. See dq_cuda_read_probe."""
    ffi, lib, torch = _load()
    if not src.is_cuda or not src.is_contiguous() or not sink.is_cuda or sink.numel() * sink.element_size() < 4:
        raise ValueError("read_probe needs a contiguous CUDA tensor and a CUDA sink of at least 4 bytes")
    nbytes = src.numel() * src.element_size()
    _check(lib.dq_cuda_read_probe(_ptr(ffi, src), nbytes, blocks, threads, _ptr(ffi, sink), _stream(torch)),
           "dq_cuda_read_probe")
