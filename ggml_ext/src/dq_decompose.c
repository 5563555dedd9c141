// Decompose-on-append (x -> block), reconstruct and code extraction. Mirrors
// reference.compress_chunk; the comments name the steps of docs/FORMAT.md.
#include "dq_internal.h"

#include <math.h>
#include <stdlib.h>

void dq_factor_weights(const float * m, int64_t n_rows, int64_t row_stride, float gauge, double wm[16][16],
                       double bm[16][16]);

typedef struct { float scale, lo; } qparam;

// One FP16 scale (and min) for the values a[i * stride], i < n.
static qparam qparam_of(const float * a, int64_t n, int64_t stride, int bits, int asym) {
    qparam p = { 0.0f, 0.0f };
    if (asym) {
        float lo = a[0], hi = a[0];
        for (int64_t i = 1; i < n; i++) {
            const float x = a[i * stride];
            lo = x < lo ? x : lo;
            hi = x > hi ? x : hi;
        }
        p.lo    = dq_fp16_to_fp32(dq_fp32_to_fp16(lo));
        p.scale = dq_fp16_to_fp32(dq_fp32_to_fp16((hi - p.lo) / (float) ((1 << bits) - 1)));
    } else {
        float amax = 0.0f;
        for (int64_t i = 0; i < n; i++) {
            const float x = fabsf(a[i * stride]);
            amax = x > amax ? x : amax;
        }
        p.scale = dq_fp16_to_fp32(dq_fp32_to_fp16(amax / (float) dq_qmax(bits)));
    }
    return p;
}

static uint8_t quant1(float a, qparam p, int bits, int asym) {
    if (!(p.scale > 0.0f)) {
        return asym ? 0 : (uint8_t) dq_qmax(bits);
    }
    if (asym) {
        const float u = roundf((a - p.lo) / p.scale);
        const float top = (float) ((1 << bits) - 1);
        return (uint8_t) (u < 0.0f ? 0.0f : u > top ? top : u);
    }
    const int   qm = dq_qmax(bits);
    const float q  = roundf(a / p.scale);
    return (uint8_t) ((q < -qm ? -qm : q > qm ? qm : q) + qm);
}

static void put_param(uint16_t * base, int64_t n_per_par, int64_t i, qparam p, int asym) {
    base[i] = dq_fp32_to_fp16(p.scale);
    if (asym) {
        base[n_per_par + i] = dq_fp32_to_fp16(p.lo);
    }
}

// Byte address of the packed 16 codes of token t, row r (in D order).
static inline uint8_t * code_row(uint8_t * codes, const dq_config * c, int32_t n, int32_t t, int r) {
    const int rh = c->head_dim / 16;
    const int h = r / rh, rr = r % rh;
    return codes + ((((int64_t) h * n + t) * rh) + rr) * dq_row_bytes(c->bits);
}

int dq_decompose(const dq_config * c, const float * x, int32_t n, void * block) {
    if (dq_config_check(c) != DQ_OK || !x || !block || n <= 0) {
        return DQ_ERR_ARG;
    }
    const int     d  = dq_dim(c);
    const int64_t nv = (int64_t) n * d;
    for (int64_t i = 0; i < nv; i++) {
        if (!isfinite(x[i])) {
            return DQ_ERR_NONFINITE;
        }
    }
    float * a = malloc((size_t) nv * sizeof(float));
    if (!a) {
        return DQ_ERR_NOMEM;
    }
    const dq_layout L = dq_block_layout(c, n);
    uint8_t * blk = block;
    memset(blk, 0, L.size);
    uint16_t * bsec = (uint16_t *) (blk + L.b);
    const int G = dq_groups(c), rows = d / 16, rg = rows / G;

    // 1. per scope group: M_g = rows of the group, A = M_g W, B = S^(1-g) V^T
    for (int g = 0; g < G; g++) {
        double wm[16][16], bm[16][16];
        // the group's rows are rows g*rg .. g*rg+rg-1 of every token: gather them
        float * mg = malloc((size_t) n * rg * 16 * sizeof(float));
        if (!mg) {
            free(a);
            return DQ_ERR_NOMEM;
        }
        for (int32_t t = 0; t < n; t++) {
            memcpy(mg + (int64_t) t * rg * 16, x + (int64_t) t * d + g * rg * 16, (size_t) rg * 16 * sizeof(float));
        }
        dq_factor_weights(mg, (int64_t) n * rg, 16, c->gauge, wm, bm);
        for (int64_t r = 0; r < (int64_t) n * rg; r++) {
            const int32_t t = (int32_t) (r / rg);
            float * dst = a + (int64_t) t * d + (g * rg + r % rg) * 16;
            for (int j = 0; j < 16; j++) {
                double acc = 0.0;
                for (int i = 0; i < 16; i++) {
                    acc += (double) mg[r * 16 + i] * wm[i][j];
                }
                dst[j] = (float) acc;
            }
        }
        free(mg);
        for (int i = 0; i < 256; i++) {
            bsec[g * 256 + i] = dq_fp32_to_fp16((float) bm[i / 16][i % 16]);
        }
    }

    // 2. quantize A with the configured scale granularity
    uint8_t * codes = blk + L.codes;
    uint8_t   u[16];
    if (c->scale_mode == DQ_SCALE_CHANNEL) {
        uint16_t * cp = (uint16_t *) (blk + L.cparam);
        qparam   * pc = malloc((size_t) d * sizeof(qparam));
        if (!pc) {
            free(a);
            return DQ_ERR_NOMEM;
        }
        for (int ch = 0; ch < d; ch++) {
            pc[ch] = qparam_of(a + ch, n, d, c->bits, c->asym);
            put_param(cp, d, ch, pc[ch], c->asym);
        }
        for (int32_t t = 0; t < n; t++) {
            for (int r = 0; r < rows; r++) {
                for (int j = 0; j < 16; j++) {
                    u[j] = quant1(a[(int64_t) t * d + r * 16 + j], pc[r * 16 + j], c->bits, c->asym);
                }
                dq_pack_row(u, c->bits, code_row(codes, c, n, t, r));
            }
        }
        free(pc);
    } else {
        uint16_t * tp  = (uint16_t *) (blk + L.tparam);
        const int  per = dq_tparams_per_token(c);   // params per token
        const int  rpp = rows / per;                 // rows per param
        for (int32_t t = 0; t < n; t++) {
            for (int k = 0; k < per; k++) {
                const float * ak = a + (int64_t) t * d + k * rpp * 16;
                const qparam  p  = qparam_of(ak, rpp * 16, 1, c->bits, c->asym);
                put_param(tp, (int64_t) n * per, (int64_t) t * per + k, p, c->asym);
                for (int r = 0; r < rpp; r++) {
                    for (int j = 0; j < 16; j++) {
                        u[j] = quant1(ak[r * 16 + j], p, c->bits, c->asym);
                    }
                    dq_pack_row(u, c->bits, code_row(codes, c, n, t, k * rpp + r));
                }
            }
        }
    }
    free(a);
    return DQ_OK;
}

int dq_block_codes(const dq_config * c, const void * block, int32_t n, uint8_t * out) {
    if (dq_config_check(c) != DQ_OK || !block || !out || n <= 0) {
        return DQ_ERR_ARG;
    }
    const dq_layout L = dq_block_layout(c, n);
    uint8_t * codes = (uint8_t *) block + L.codes;
    const int rows = dq_dim(c) / 16;
    for (int32_t t = 0; t < n; t++) {
        for (int r = 0; r < rows; r++) {
            dq_unpack_row(code_row(codes, c, n, t, r), c->bits, out + ((int64_t) t * rows + r) * 16);
        }
    }
    return DQ_OK;
}

int dq_reconstruct(const dq_config * c, const void * block, int32_t n, float * x) {
    if (dq_config_check(c) != DQ_OK || !block || !x || n <= 0) {
        return DQ_ERR_ARG;
    }
    const dq_layout  L    = dq_block_layout(c, n);
    const uint8_t  * blk  = block;
    const uint16_t * bsec = (const uint16_t *) (blk + L.b);
    const uint16_t * cp   = (const uint16_t *) (blk + L.cparam);
    const uint16_t * tp   = (const uint16_t *) (blk + L.tparam);
    const int d = dq_dim(c), rows = d / 16, G = dq_groups(c), rg = rows / G;
    const int per = dq_tparams_per_token(c);
    const float zp = c->asym ? 0.0f : (float) dq_qmax(c->bits);
    uint8_t u[16];
    for (int32_t t = 0; t < n; t++) {
        for (int r = 0; r < rows; r++) {
            dq_unpack_row(code_row((uint8_t *) blk + L.codes, c, n, t, r), c->bits, u);
            float a[16];
            for (int j = 0; j < 16; j++) {
                float s, lo = 0.0f;
                if (c->scale_mode == DQ_SCALE_CHANNEL) {
                    s = dq_fp16_to_fp32(cp[r * 16 + j]);
                    if (c->asym) {
                        lo = dq_fp16_to_fp32(cp[d + r * 16 + j]);
                    }
                } else {
                    const int64_t k = (int64_t) t * per + r / (rows / per);
                    s = dq_fp16_to_fp32(tp[k]);
                    if (c->asym) {
                        lo = dq_fp16_to_fp32(tp[(int64_t) n * per + k]);
                    }
                }
                a[j] = lo + s * ((float) u[j] - zp);
            }
            const uint16_t * b = bsec + (r / rg) * 256;
            for (int k = 0; k < 16; k++) {
                float acc = 0.0f;
                for (int i = 0; i < 16; i++) {
                    acc += a[i] * dq_fp16_to_fp32(b[i * 16 + k]);
                }
                x[(int64_t) t * d + r * 16 + k] = acc;
            }
        }
    }
    return DQ_OK;
}
