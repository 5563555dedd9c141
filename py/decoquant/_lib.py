"""cffi (ABI mode) binding of libdecoquant, installed next to this file by the build."""

from __future__ import annotations

import os
from pathlib import Path

from cffi import FFI

CDEF = """
typedef struct dq_config {
    int32_t n_kv_heads; int32_t head_dim; int32_t bits; int32_t scale_mode;
    int32_t asym; int32_t scope; float gauge;
} dq_config;
typedef struct dq_layout { size_t b; size_t cparam; size_t tparam; size_t codes; size_t size; } dq_layout;
typedef struct dq_segment {
    const void * k; const void * v; int32_t n_tokens; int32_t pos0; int32_t kind; int32_t pad;
} dq_segment;
typedef struct dq_attn_params {
    const dq_config * cfg_k; const dq_config * cfg_v; int32_t n_head; int32_t n_q;
    const float * q; const int32_t * q_pos; float scale; const dq_segment * segs; int32_t n_segs;
    int32_t n_split; float * out; float * work;
} dq_attn_params;
const char * dq_version(void);
const char * dq_status_str(int status);
int dq_config_check(const dq_config * cfg);
dq_layout dq_block_layout(const dq_config * cfg, int32_t n_tokens);
size_t dq_block_size(const dq_config * cfg, int32_t n_tokens);
double dq_bits_per_value(const dq_config * cfg, int32_t n_tokens);
int dq_factor(const float * m, int64_t n_rows, float gauge, float * a, float * b);
int dq_decompose(const dq_config * cfg, const float * x, int32_t n_tokens, void * block);
int dq_reconstruct(const dq_config * cfg, const void * block, int32_t n_tokens, float * x);
int dq_block_codes(const dq_config * cfg, const void * block, int32_t n_tokens, uint8_t * codes);
size_t dq_attn_work_size(const dq_attn_params * p, int nth);
int dq_attn_run(dq_attn_params * p, int n_threads);
int dq_attn_bench(dq_attn_params * p, int n_threads, int iters, double * times);
const char * dq_cpu_kernels(void);
void dq_force_scalar(int on);
uint16_t dq_fp32_to_fp16(float f);
"""

ffi = FFI()
ffi.cdef(CDEF)


def _find() -> str:
    env = os.environ.get("DECOQUANT_LIB")
    if env:
        return env
    here = Path(__file__).resolve().parent / "libdecoquant.so"
    if here.exists():
        return str(here)
    raise ImportError(f"libdecoquant.so not found next to {__file__}; install the package with pip "
                      "(or set DECOQUANT_LIB to a built library)")


lib = ffi.dlopen(_find())


def check(status: int, what: str) -> None:
    if status != 0:
        raise ValueError(f"{what}: {ffi.string(lib.dq_status_str(status)).decode()}")
