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
    int32_t n_split; float * out; float * work; int32_t window;
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

# the runtime (decoquant_model.h)
CDEF += """
typedef struct dq_model dq_model;
typedef struct dq_context dq_context;
typedef struct dq_kv_params { int32_t mode; dq_config cfg; int32_t chunk; int32_t sinks; } dq_kv_params;
typedef struct dq_context_params {
    int32_t n_ctx; int32_t n_batch; int32_t n_ubatch; int32_t n_threads; dq_kv_params k; dq_kv_params v;
    int32_t attn_impl;
    const dq_kv_params * layer_k; const dq_kv_params * layer_v; int32_t n_layer_kv; int32_t swa_full;
} dq_context_params;
typedef struct dq_model_info {
    char arch[32];
    int32_t n_vocab, n_ctx_train, n_embd, n_layer, n_head, n_head_kv, head_dim, n_ff;
    int32_t n_swa; uint64_t fingerprint;
} dq_model_info;
dq_context_params dq_context_default_params(void);
dq_kv_params dq_kv_default_params(int32_t mode, int32_t bits);
dq_model * dq_model_load(const char * path, char * err, size_t err_size);
void dq_model_free(dq_model * m);
int dq_model_get_info(const dq_model * m, dq_model_info * info);
int32_t dq_model_n_vocab(const dq_model * m);
const char * dq_model_supported_archs(void);
dq_context * dq_context_new(dq_model * m, const dq_context_params * p, char * err, size_t err_size);
void dq_context_free(dq_context * c);
size_t dq_kv_bytes(const dq_model * m, const dq_context_params * p, char * err, size_t err_size);
int dq_context_eval(dq_context * c, const int32_t * tokens, int32_t n, int logits_all, char * err, size_t err_size);
const float * dq_context_logits(const dq_context * c);
int32_t dq_context_n_outputs(const dq_context * c);
int32_t dq_context_n_past(const dq_context * c);
int32_t dq_context_n_ctx(const dq_context * c);
int dq_context_truncate(dq_context * c, int32_t n, char * err, size_t err_size);
void dq_context_reset(dq_context * c);
size_t dq_context_kv_bytes(const dq_context * c);
double dq_context_kv_bytes_per_token(const dq_context * c);
size_t dq_context_state_size(const dq_context * c);
int dq_context_state_save(const dq_context * c, void * dst, size_t size, size_t * written, char * err, size_t err_size);
int dq_context_state_load(dq_context * c, const void * src, size_t size, char * err, size_t err_size);
int dq_context_state_save_file(const dq_context * c, const char * path, char * err, size_t err_size);
int dq_context_state_load_file(dq_context * c, const char * path, char * err, size_t err_size);
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
