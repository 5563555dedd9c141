// Per-segment attention kernels. This file is compiled once per ISA (scalar, AVX2+F16C,
// AVX-512) with DQ_KERNELS naming the table; plain loops that the compiler vectorizes,
// plus F16C for the FP16 rows. reference.attention_blocks is the readable version.
#include "dq_internal.h"

#include <math.h>

#if defined(__F16C__)
#include <immintrin.h>
#endif

#ifndef DQ_KERNELS
#define DQ_KERNELS dq_kernels_scalar
#define DQ_KNAME   "scalar"
#endif
#define DQ_CAT2(a, b) a##b
#define DQ_CAT(a, b)  DQ_CAT2(a, b)
#define DQ_FN(name)   DQ_CAT(DQ_KERNELS, _##name)

static void DQ_FN(f16_row)(const uint16_t * restrict src, float * restrict dst, int n) {
    int i = 0;
#if defined(__F16C__)
    for (; i + 8 <= n; i += 8) {
        _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *) (src + i))));
    }
#endif
    for (; i < n; i++) {
        dst[i] = dq_fp16_to_fp32(src[i]);
    }
}

static inline float DQ_FN(dot)(const float * restrict a, const float * restrict b, int n) {
    float s = 0.0f;
    for (int i = 0; i < n; i++) {
        s += a[i] * b[i];
    }
    return s;
}

static inline void DQ_FN(axpy)(float a, const float * restrict x, float * restrict y, int n) {
    for (int i = 0; i < n; i++) {
        y[i] += a * x[i];
    }
}

// Codes of one head of one token (R rows of 16) -> floats minus the zero point.
static inline void DQ_FN(unpack)(const uint8_t * restrict src, int bits, int n, float zp, float * restrict dst) {
    switch (bits) {
        case 4:
            for (int i = 0; i < n / 2; i++) {
                dst[2 * i]     = (float) (src[i] & 15) - zp;
                dst[2 * i + 1] = (float) (src[i] >> 4) - zp;
            }
            break;
        case 8:
            for (int i = 0; i < n; i++) {
                dst[i] = (float) src[i] - zp;
            }
            break;
        case 2:
            for (int i = 0; i < n / 4; i++) {
                const uint8_t b = src[i];
                dst[4 * i]     = (float) (b & 3) - zp;
                dst[4 * i + 1] = (float) ((b >> 2) & 3) - zp;
                dst[4 * i + 2] = (float) ((b >> 4) & 3) - zp;
                dst[4 * i + 3] = (float) (b >> 6) - zp;
            }
            break;
        default: { // 3 bits: 16 codes in 6 bytes
            for (int r = 0; r < n / 16; r++) {
                const uint8_t * s = src + 6 * r;
                const uint64_t  w = (uint64_t) s[0] | (uint64_t) s[1] << 8 | (uint64_t) s[2] << 16 |
                                   (uint64_t) s[3] << 24 | (uint64_t) s[4] << 32 | (uint64_t) s[5] << 40;
                for (int j = 0; j < 16; j++) {
                    dst[16 * r + j] = (float) ((w >> (3 * j)) & 7) - zp;
                }
            }
        }
    }
}

// Softmax bookkeeping for one tile: new max, rescale acc/l, turn scores into weights.
static void DQ_FN(softmax_tile)(float * restrict sc, int n, int hd, float * m, float * l, float * acc) {
    float mx = -INFINITY;
    for (int t = 0; t < n; t++) {
        mx = sc[t] > mx ? sc[t] : mx;
    }
    if (mx == -INFINITY) {
        for (int t = 0; t < n; t++) {
            sc[t] = 0.0f;
        }
        return;
    }
    if (mx > *m) {
        const float corr = expf(*m - mx); // 0 when *m is -inf
        for (int i = 0; i < hd; i++) {
            acc[i] *= corr;
        }
        *l *= corr;
        *m = mx;
    }
    float sum = 0.0f;
    for (int t = 0; t < n; t++) {
        sc[t] = expf(sc[t] - *m);
        sum += sc[t];
    }
    *l += sum;
}

// Valid tokens of a tile starting at position p0 for a query at qpos (causal).
static inline int n_valid(int n, int32_t p0, int32_t qpos) {
    if (qpos == INT32_MAX) {
        return n;
    }
    const int64_t v = (int64_t) qpos - p0 + 1;
    return v <= 0 ? 0 : v < n ? (int) v : n;
}

static void DQ_FN(seg_f16)(const dq_attn_shape * sh, const dq_segment * s, int kvh, const float * q, int32_t qpos,
                           dq_state st, float * scratch) {
    const int hd = sh->hd, grp = sh->grp, nkv = sh->ck->n_kv_heads;
    float * sc  = scratch;               // [grp][DQ_TILE]
    float * row = sc + grp * DQ_TILE;    // [hd]
    const uint16_t * k = s->k;
    const uint16_t * v = s->v;
    for (int t0 = 0; t0 < s->n_tokens; t0 += DQ_TILE) {
        const int n = n_valid(s->n_tokens - t0 < DQ_TILE ? s->n_tokens - t0 : DQ_TILE, s->pos0 + t0, qpos);
        if (n == 0) {
            break;
        }
        for (int t = 0; t < n; t++) {
            DQ_FN(f16_row)(k + ((int64_t) (t0 + t) * nkv + kvh) * hd, row, hd);
            for (int g = 0; g < grp; g++) {
                sc[g * DQ_TILE + t] = DQ_FN(dot)(q + g * hd, row, hd) * sh->scale;
            }
        }
        for (int g = 0; g < grp; g++) {
            DQ_FN(softmax_tile)(sc + g * DQ_TILE, n, hd, st.m + g, st.l + g, st.acc + g * hd);
        }
        for (int t = 0; t < n; t++) {
            DQ_FN(f16_row)(v + ((int64_t) (t0 + t) * nkv + kvh) * hd, row, hd);
            for (int g = 0; g < grp; g++) {
                DQ_FN(axpy)(sc[g * DQ_TILE + t], row, st.acc + g * hd, hd);
            }
        }
    }
}

// Where one KV head's data sits in a block of n tokens.
typedef struct head_view {
    const uint16_t * b;      // the head's B (fp16 16x16)
    const uint16_t * cs;     // channel scales of the head (channel mode) or NULL
    const uint16_t * cm;     // channel mins (channel mode, asym) or NULL
    const uint16_t * ts;     // token params: scale of token t, param k at ts[t * per + k]
    const uint16_t * tm;     // token mins (asym) or NULL
    const uint8_t  * codes;  // [n][R][2*bits]
    int per, k0, rpp;        // params per token, first param of this head, rows per param
    int bits, asym, mode;
    float zp;
} head_view;

static head_view head_of(const dq_config * c, const void * block, int n, int kvh) {
    const dq_layout L = dq_block_layout(c, n);
    const uint8_t * blk = block;
    const int hd = c->head_dim, d = dq_dim(c), R = hd / 16;
    head_view h;
    h.bits  = c->bits;
    h.asym  = c->asym;
    h.mode  = c->scale_mode;
    h.zp    = c->asym ? 0.0f : (float) dq_qmax(c->bits);
    h.b     = (const uint16_t *) (blk + L.b) + (c->scope == DQ_SCOPE_HEAD ? kvh : 0) * 256;
    h.cs    = h.mode == DQ_SCALE_CHANNEL ? (const uint16_t *) (blk + L.cparam) + kvh * hd : NULL;
    h.cm    = h.cs && c->asym ? h.cs + d : NULL;
    h.per   = dq_tparams_per_token(c);
    h.rpp   = h.per ? (d / 16) / h.per : 0;
    h.k0    = h.per ? (kvh * R) / h.rpp : 0;
    h.ts    = (const uint16_t *) (blk + L.tparam);
    h.tm    = c->asym && h.per ? h.ts + (int64_t) n * h.per : NULL;
    h.codes = blk + L.codes + (int64_t) kvh * n * R * dq_row_bytes(c->bits);
    return h;
}

// Scale and offset of row rr of token t (token and row modes).
static inline void row_param(const head_view * h, int t, int rr, float * s, float * lo) {
    const int64_t k = (int64_t) t * h->per + h->k0 + (h->mode == DQ_SCALE_ROW ? rr : 0);
    *s  = dq_fp16_to_fp32(h->ts[k]);
    *lo = h->tm ? dq_fp16_to_fp32(h->tm[k]) : 0.0f;
}

static void DQ_FN(seg_block)(const dq_attn_shape * sh, const dq_segment * s, int kvh, const float * q, int32_t qpos,
                             dq_state st, float * scratch) {
    const int hd = sh->hd, grp = sh->grp, R = hd / 16, n_all = s->n_tokens;
    float * sc   = scratch;              // [grp][DQ_TILE]
    float * qt   = sc + grp * DQ_TILE;   // [grp][hd]   q~ = B q (times channel scales)
    float * acc  = qt + grp * hd;        // [grp][hd]   A-space value sums
    float * row  = acc + grp * hd;       // [hd]        unpacked codes
    float * bf   = row + hd;             // [256]       B as floats
    float * qs   = bf + 256;             // [grp][R]    sums of q~ per row (offset terms)
    float * rw   = qs + grp * R;         // [grp][R]    per-row weights of offsets (V)
    const head_view hk = head_of(sh->ck, s->k, n_all, kvh);
    const head_view hv = head_of(sh->cv, s->v, n_all, kvh);
    const int rbk = R * dq_row_bytes(hk.bits), rbv = R * dq_row_bytes(hv.bits);

    // q~ = B q per 16-row, then fold channel scales; offsets need sums of q~
    DQ_FN(f16_row)(hk.b, bf, 256);
    float coff[64]; // channel-mode asym: constant score offset per query head
    for (int g = 0; g < grp; g++) {
        coff[g] = 0.0f;
        for (int rr = 0; rr < R; rr++) {
            const float * qr = q + g * hd + rr * 16;
            float * o = qt + g * hd + rr * 16;
            float sum = 0.0f;
            for (int i = 0; i < 16; i++) {
                o[i] = DQ_FN(dot)(bf + i * 16, qr, 16);
                sum += o[i];
            }
            qs[g * R + rr] = sum;
            if (hk.cs) {
                for (int i = 0; i < 16; i++) {
                    if (hk.cm) {
                        coff[g] += o[i] * dq_fp16_to_fp32(hk.cm[rr * 16 + i]);
                    }
                    o[i] *= dq_fp16_to_fp32(hk.cs[rr * 16 + i]);
                }
            }
        }
    }
    DQ_FN(f16_row)(hv.b, bf, 256); // from here on bf is V's B

    for (int t0 = 0; t0 < n_all; t0 += DQ_TILE) {
        const int n = n_valid(n_all - t0 < DQ_TILE ? n_all - t0 : DQ_TILE, s->pos0 + t0, qpos);
        if (n == 0) {
            break;
        }
        // scores
        for (int t = 0; t < n; t++) {
            const int tt = t0 + t;
            DQ_FN(unpack)(hk.codes + (int64_t) tt * rbk, hk.bits, hd, hk.zp, row);
            if (hk.mode == DQ_SCALE_CHANNEL) {
                for (int g = 0; g < grp; g++) {
                    sc[g * DQ_TILE + t] = (DQ_FN(dot)(qt + g * hd, row, hd) + coff[g]) * sh->scale;
                }
            } else if (hk.mode == DQ_SCALE_TOKEN) {
                float ts, lo;
                row_param(&hk, tt, 0, &ts, &lo);
                for (int g = 0; g < grp; g++) {
                    float off = 0.0f;
                    if (hk.tm) {
                        for (int rr = 0; rr < R; rr++) {
                            off += qs[g * R + rr];
                        }
                    }
                    sc[g * DQ_TILE + t] = (ts * DQ_FN(dot)(qt + g * hd, row, hd) + lo * off) * sh->scale;
                }
            } else {
                for (int g = 0; g < grp; g++) {
                    float x = 0.0f;
                    for (int rr = 0; rr < R; rr++) {
                        float rs, lo;
                        row_param(&hk, tt, rr, &rs, &lo);
                        x += rs * DQ_FN(dot)(qt + g * hd + rr * 16, row + rr * 16, 16) + lo * qs[g * R + rr];
                    }
                    sc[g * DQ_TILE + t] = x * sh->scale;
                }
            }
        }
        for (int g = 0; g < grp; g++) {
            DQ_FN(softmax_tile)(sc + g * DQ_TILE, n, hd, st.m + g, st.l + g, st.acc + g * hd);
        }
        // values, summed in A-space
        for (int i = 0; i < grp * hd; i++) {
            acc[i] = 0.0f;
        }
        for (int i = 0; i < grp * R; i++) {
            rw[i] = 0.0f;
        }
        float psum[64];
        for (int g = 0; g < grp; g++) {
            psum[g] = 0.0f;
        }
        for (int t = 0; t < n; t++) {
            const int tt = t0 + t;
            DQ_FN(unpack)(hv.codes + (int64_t) tt * rbv, hv.bits, hd, hv.zp, row);
            if (hv.mode == DQ_SCALE_CHANNEL) {
                for (int g = 0; g < grp; g++) {
                    const float p = sc[g * DQ_TILE + t];
                    DQ_FN(axpy)(p, row, acc + g * hd, hd);
                    psum[g] += p;
                }
            } else if (hv.mode == DQ_SCALE_TOKEN) {
                float ts, lo;
                row_param(&hv, tt, 0, &ts, &lo);
                for (int g = 0; g < grp; g++) {
                    const float p = sc[g * DQ_TILE + t];
                    DQ_FN(axpy)(p * ts, row, acc + g * hd, hd);
                    psum[g] += p * lo;
                }
            } else {
                for (int rr = 0; rr < R; rr++) {
                    float rs, lo;
                    row_param(&hv, tt, rr, &rs, &lo);
                    for (int g = 0; g < grp; g++) {
                        const float p = sc[g * DQ_TILE + t];
                        DQ_FN(axpy)(p * rs, row + rr * 16, acc + g * hd + rr * 16, 16);
                        rw[g * R + rr] += p * lo;
                    }
                }
            }
        }
        // offsets and channel scales, then project through B: out_row += acc_row @ B
        for (int g = 0; g < grp; g++) {
            float * a = acc + g * hd;
            for (int c = 0; c < hd; c++) {
                if (hv.mode == DQ_SCALE_CHANNEL) {
                    a[c] = a[c] * dq_fp16_to_fp32(hv.cs[c]) + (hv.cm ? psum[g] * dq_fp16_to_fp32(hv.cm[c]) : 0.0f);
                } else if (hv.mode == DQ_SCALE_TOKEN) {
                    a[c] += psum[g];
                } else {
                    a[c] += rw[g * R + c / 16];
                }
            }
            for (int rr = 0; rr < R; rr++) {
                float * o = st.acc + g * hd + rr * 16;
                for (int i = 0; i < 16; i++) {
                    DQ_FN(axpy)(a[rr * 16 + i], bf + i * 16, o, 16);
                }
            }
        }
    }
}

const dq_kernels DQ_KERNELS = { DQ_KNAME, DQ_FN(seg_f16), DQ_FN(seg_block) };
