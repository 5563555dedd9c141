// Shared helpers of the CUDA sources (not installed).
#ifndef DQ_CUDA_COMMON_H
#define DQ_CUDA_COMMON_H

#include "decoquant_cuda.h"

#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdint.h>

// Records the CUDA error text for dq_cuda_last_error() and returns DQ_ERR_CUDA.
int dq_cuda_fail(cudaError_t err, const char * what);

#define DQ_CUDA_TRY(call, what)                         \
    do {                                                \
        cudaError_t dq_e_ = (call);                     \
        if (dq_e_ != cudaSuccess) {                     \
            return dq_cuda_fail(dq_e_, what);           \
        }                                               \
    } while (0)

static inline size_t dq_cuda_align(size_t n, size_t a) { return (n + a - 1) / a * a; }

static __host__ __device__ inline int dq_cuda_qmax(int bits) { return (1 << (bits - 1)) - 1; }

// The block format's bookkeeping, as dq_format.c (kept here so that libdecoquant_cuda needs
// no other library: it builds with nvcc alone).
static inline int dqc_check(const dq_config * c) {
    if (!c || c->n_kv_heads <= 0 || c->head_dim <= 0 || c->head_dim % 16 != 0) {
        return DQ_ERR_ARG;
    }
    if (c->bits != 2 && c->bits != 3 && c->bits != 4 && c->bits != 8) {
        return DQ_ERR_ARG;
    }
    if (c->scale_mode < DQ_SCALE_TOKEN || c->scale_mode > DQ_SCALE_CHANNEL) {
        return DQ_ERR_ARG;
    }
    if (c->scope != DQ_SCOPE_LAYER && c->scope != DQ_SCOPE_HEAD) {
        return DQ_ERR_ARG;
    }
    if (!(c->gauge >= 0.0f && c->gauge <= 1.0f) || (c->asym != 0 && c->asym != 1)) {
        return DQ_ERR_ARG;
    }
    return DQ_OK;
}

static inline int dqc_groups(const dq_config * c) { return c->scope == DQ_SCOPE_HEAD ? c->n_kv_heads : 1; }

// Token parameters per token (FORMAT.md): token mode G, row mode D/16, channel none.
static inline int dq_cuda_tparams(const dq_config * c) {
    switch (c->scale_mode) {
        case DQ_SCALE_TOKEN: return dqc_groups(c);
        case DQ_SCALE_ROW:   return c->n_kv_heads * c->head_dim / 16;
        default:             return 0;
    }
}

static inline dq_layout dqc_layout(const dq_config * c, int32_t n) {
    dq_layout l;
    const size_t d    = (size_t) c->n_kv_heads * c->head_dim;
    const size_t npar = c->asym ? 2 : 1;
    l.b      = 0;
    l.cparam = dq_cuda_align((size_t) dqc_groups(c) * 256 * 2, 16);
    l.tparam = l.cparam + (c->scale_mode == DQ_SCALE_CHANNEL ? dq_cuda_align(npar * d * 2, 16) : 0);
    l.codes  = l.tparam + dq_cuda_align(npar * (size_t) n * (size_t) dq_cuda_tparams(c) * 2, 16);
    l.size   = l.codes + dq_cuda_align((size_t) n * d * (size_t) c->bits / 8, 16);
    return l;
}

#endif // DQ_CUDA_COMMON_H
