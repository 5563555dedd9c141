// Internal helpers shared by the CPU sources (not installed).
#ifndef DQ_INTERNAL_H
#define DQ_INTERNAL_H

#include "decoquant.h"

#include <string.h>

#define DQ_TILE 64 // tokens per online-softmax step (two tiles of rows stay in L1/L2)

static inline int dq_qmax(int bits) { return (1 << (bits - 1)) - 1; }
static inline int dq_row_bytes(int bits) { return 2 * bits; } // 16 codes
static inline int dq_npar(const dq_config * c) { return c->asym ? 2 : 1; }
static inline int dq_dim(const dq_config * c) { return c->n_kv_heads * c->head_dim; }

// Token parameters per token: token mode G, row mode D/16, channel mode none.
static inline int dq_tparams_per_token(const dq_config * c) {
    switch (c->scale_mode) {
        case DQ_SCALE_TOKEN: return dq_groups(c);
        case DQ_SCALE_ROW:   return dq_dim(c) / 16;
        default:             return 0;
    }
}

// 16 codes of one row, packed as a little-endian bit stream (code i at bit i*bits).
static inline void dq_pack_row(const uint8_t * u, int bits, uint8_t * dst) {
    uint64_t lo = 0, hi = 0; // 128 bits suffice for 8-bit codes
    for (int i = 0; i < 16; i++) {
        const int bit = i * bits;
        if (bit < 64) {
            lo |= (uint64_t) u[i] << bit;
            if (bit + bits > 64) {
                hi |= (uint64_t) u[i] >> (64 - bit);
            }
        } else {
            hi |= (uint64_t) u[i] << (bit - 64);
        }
    }
    const int nb = dq_row_bytes(bits);
    for (int i = 0; i < nb; i++) {
        dst[i] = (uint8_t) (i < 8 ? lo >> (8 * i) : hi >> (8 * (i - 8)));
    }
}

static inline void dq_unpack_row(const uint8_t * src, int bits, uint8_t * u) {
    uint64_t lo = 0, hi = 0;
    const int nb = dq_row_bytes(bits);
    for (int i = 0; i < nb; i++) {
        if (i < 8) {
            lo |= (uint64_t) src[i] << (8 * i);
        } else {
            hi |= (uint64_t) src[i] << (8 * (i - 8));
        }
    }
    const uint64_t mask = (1u << bits) - 1;
    for (int i = 0; i < 16; i++) {
        const int bit = i * bits;
        uint64_t v;
        if (bit + bits <= 64) {
            v = lo >> bit;
        } else if (bit >= 64) {
            v = hi >> (bit - 64);
        } else {
            v = (lo >> bit) | (hi << (64 - bit));
        }
        u[i] = (uint8_t) (v & mask);
    }
}

// Kernel set, compiled once per ISA from dq_attn_kernels.c.
typedef struct dq_attn_shape {
    const dq_config * ck;
    const dq_config * cv;
    int   grp;      // query heads per KV head
    int   hd;
    float scale;
    int32_t window; // sliding window (0: none): keys at positions <= qpos - window are masked
} dq_attn_shape;

// Running softmax state of grp query heads: acc[grp][hd], m[grp], l[grp].
typedef struct dq_state {
    float * acc;
    float * m;
    float * l;
} dq_state;

typedef void (*dq_seg_fn)(const dq_attn_shape * sh, const dq_segment * s, int kvh,
                          const float * q, int32_t qpos, dq_state st, float * scratch);

typedef struct dq_kernels {
    const char * name;
    dq_seg_fn seg_f16;
    dq_seg_fn seg_block;
} dq_kernels;

size_t dq_attn_scratch_floats(int grp, int hd);

extern const dq_kernels dq_kernels_scalar;
#if defined(__x86_64__)
extern const dq_kernels dq_kernels_avx2;
extern const dq_kernels dq_kernels_avx512;
#endif

#endif // DQ_INTERNAL_H
