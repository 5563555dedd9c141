// Per-segment attention kernels. This file is compiled once per ISA (scalar, AVX2+F16C,
// AVX-512) with DQ_KERNELS naming the table; plain loops that the compiler vectorizes,
// plus F16C for the FP16 rows. reference.attention_blocks is the readable version.
#include "dq_internal.h"

#include <math.h>

#if defined(__F16C__) || defined(__AVX2__)
#include <immintrin.h>
#endif

#ifndef DQ_KERNELS
#define DQ_KERNELS dq_kernels_scalar
#define DQ_KNAME   "scalar"
#endif
#define DQ_CAT2(a, b) a##b
#define DQ_CAT(a, b)  DQ_CAT2(a, b)
#define DQ_FN(name)   DQ_CAT(DQ_KERNELS, _##name)

static inline float DQ_FN(h2f)(uint16_t h) {
#if defined(__F16C__)
    return _cvtsh_ss(h);
#else
    return dq_fp16_to_fp32(h);
#endif
}

static void DQ_FN(f16_row)(const uint16_t * restrict src, float * restrict dst, int n) {
    int i = 0;
#if defined(__AVX512F__) // store as wide as the consumer loads: no store-forwarding stall
    for (; i + 16 <= n; i += 16) {
        _mm512_storeu_ps(dst + i, _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *) (src + i))));
    }
#endif
#if defined(__F16C__)
    for (; i + 8 <= n; i += 8) {
        _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *) (src + i))));
    }
#endif
    for (; i < n; i++) {
        dst[i] = DQ_FN(h2f)(src[i]);
    }
}

// expf for softmax weights (x <= 0): Cephes' polynomial, about 1 ulp, vectorizable; -inf -> 0.
static inline float DQ_FN(expf)(float x) {
    const float xc = x < -87.0f ? -87.0f : x;
    const float n  = floorf(xc * 1.44269504088896341f + 0.5f);
    const float r  = xc - n * 0.693359375f + n * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    union { uint32_t u; float f; } e = { (uint32_t) ((int32_t) n + 127) << 23 };
    return x < -87.0f ? 0.0f : p * e.f;
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

// Codes of one head of one token (n/16 rows of 16) -> floats, zero point not removed.
static inline void DQ_FN(unpack)(const uint8_t * restrict src, int bits, int n, float * restrict dst) {
    switch (bits) {
        case 4: {
            int i = 0;
#if defined(__AVX512F__)
            for (; i + 32 <= n; i += 32) {
                const __m128i v  = _mm_loadu_si128((const __m128i *) (src + i / 2));
                const __m128i m  = _mm_set1_epi8(15);
                const __m128i lo = _mm_and_si128(v, m), hi = _mm_and_si128(_mm_srli_epi16(v, 4), m);
                _mm512_storeu_ps(dst + i, _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_unpacklo_epi8(lo, hi))));
                _mm512_storeu_ps(dst + i + 16, _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_unpackhi_epi8(lo, hi))));
            }
#elif defined(__AVX2__)
            for (; i + 32 <= n; i += 32) {
                const __m128i v  = _mm_loadu_si128((const __m128i *) (src + i / 2));
                const __m128i m  = _mm_set1_epi8(15);
                const __m128i lo = _mm_and_si128(v, m), hi = _mm_and_si128(_mm_srli_epi16(v, 4), m);
                const __m128i a0 = _mm_unpacklo_epi8(lo, hi), a1 = _mm_unpackhi_epi8(lo, hi);
                _mm256_storeu_ps(dst + i, _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(a0)));
                _mm256_storeu_ps(dst + i + 8, _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(a0, 8))));
                _mm256_storeu_ps(dst + i + 16, _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(a1)));
                _mm256_storeu_ps(dst + i + 24, _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(a1, 8))));
            }
#endif
            for (; i < n; i += 2) {
                dst[i]     = (float) (src[i / 2] & 15);
                dst[i + 1] = (float) (src[i / 2] >> 4);
            }
            break;
        }
        case 8:
            for (int i = 0; i < n; i++) {
                dst[i] = (float) src[i];
            }
            break;
        case 2:
            for (int i = 0; i < n / 4; i++) {
                const uint8_t b = src[i];
                dst[4 * i]     = (float) (b & 3);
                dst[4 * i + 1] = (float) ((b >> 2) & 3);
                dst[4 * i + 2] = (float) ((b >> 4) & 3);
                dst[4 * i + 3] = (float) (b >> 6);
            }
            break;
        default: { // 3 bits: 16 codes in 6 bytes
            for (int r = 0; r < n / 16; r++) {
                const uint8_t * s = src + 6 * r;
                const uint64_t  w = (uint64_t) s[0] | (uint64_t) s[1] << 8 | (uint64_t) s[2] << 16 |
                                   (uint64_t) s[3] << 24 | (uint64_t) s[4] << 32 | (uint64_t) s[5] << 40;
                for (int j = 0; j < 16; j++) {
                    dst[16 * r + j] = (float) ((w >> (3 * j)) & 7);
                }
            }
        }
    }
}

// Softmax bookkeeping for one tile: new max, rescale acc/l, turn scores into weights.
static inline void DQ_FN(softmax_tile)(float * restrict sc, int n, int hd, float * m, float * l, float * acc) {
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
        const float corr = DQ_FN(expf)(*m - mx); // 0 when *m is -inf
        for (int i = 0; i < hd; i++) {
            acc[i] *= corr;
        }
        *l *= corr;
        *m = mx;
    }
    const float mm = *m;
    float sum = 0.0f;
    for (int t = 0; t < n; t++) {
        sc[t] = DQ_FN(expf)(sc[t] - mm);
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

// Tokens at the start of a tile (first at p0, n tokens) outside a sliding window: the key
// positions k <= qpos - window are masked (window 0: none).
static inline int n_skip(int n, int32_t p0, int32_t qpos, int32_t window) {
    if (window <= 0 || qpos == INT32_MAX) {
        return 0;
    }
    const int64_t v = (int64_t) qpos - window - p0 + 1;
    return v <= 0 ? 0 : v < n ? (int) v : n;
}

// The visible part [*t0, *t0 + *n) of the tile at token tt of a segment (first position pos0,
// n_all tokens) for a query at qpos: 1 to attend it, 0 to skip it (all before the window),
// -1 to stop (all after the query).
static inline int tile_span(int n_all, int tt, int32_t pos0, int32_t qpos, int32_t window, int * t0, int * n) {
    const int nt = n_all - tt < DQ_TILE ? n_all - tt : DQ_TILE;
    const int sk = n_skip(nt, pos0 + tt, qpos, window);
    if (sk == nt) {
        return 0;
    }
    *t0 = tt + sk;
    *n  = n_valid(nt - sk, pos0 + *t0, qpos);
    return *n == 0 ? -1 : 1;
}

// The shared core: rows kb[n][hd] and vb[n][hd] (FP16 rows, or dequantized A rows) against
// qg[grp][hd]. The online softmax rescales out[grp][hd]; weighted values go to vacc[grp][hd]
// (out itself for FP16, an A-space sum for blocks).
#if defined(__AVX512F__)
// Sixteen vectors -> one: lane t holds the sum of v[t] (a transpose-add tree, ~3 ops a sum).
static inline __m512 DQ_FN(reduce16)(__m512 v[16]) {
    __m512 a[8], b[4], c[2];
    for (int i = 0; i < 8; i++) {
        a[i] = _mm512_add_ps(_mm512_unpacklo_ps(v[2 * i], v[2 * i + 1]), _mm512_unpackhi_ps(v[2 * i], v[2 * i + 1]));
    }
    for (int i = 0; i < 4; i++) {
        const __m512d x = _mm512_castps_pd(a[2 * i]), y = _mm512_castps_pd(a[2 * i + 1]);
        b[i] = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(x, y)), _mm512_castpd_ps(_mm512_unpackhi_pd(x, y)));
    }
    for (int i = 0; i < 2; i++) {
        c[i] = _mm512_add_ps(_mm512_shuffle_f32x4(b[2 * i], b[2 * i + 1], 0x88),
                             _mm512_shuffle_f32x4(b[2 * i], b[2 * i + 1], 0xdd));
    }
    return _mm512_add_ps(_mm512_shuffle_f32x4(c[0], c[1], 0x88), _mm512_shuffle_f32x4(c[0], c[1], 0xdd));
}

// Scores of 16-token groups for one query row: no per-token horizontal sums.
static inline __attribute__((always_inline)) int DQ_FN(scores16)(const float * restrict kb, int n,
                                                                 const float * restrict qr, float scale,
                                                                 float * restrict sc, const int hd) {
    __m512 q[16];
    for (int i = 0; i < hd / 16; i++) {
        q[i] = _mm512_loadu_ps(qr + 16 * i);
    }
    int t = 0;
    for (; t + 16 <= n; t += 16) {
        __m512 v[16];
        for (int j = 0; j < 16; j++) {
            __m512 x = _mm512_mul_ps(q[0], _mm512_loadu_ps(kb + (t + j) * hd));
            for (int i = 1; i < hd / 16; i++) {
                x = _mm512_fmadd_ps(q[i], _mm512_loadu_ps(kb + (t + j) * hd + 16 * i), x);
            }
            v[j] = x;
        }
        _mm512_storeu_ps(sc + t, _mm512_mul_ps(DQ_FN(reduce16)(v), _mm512_set1_ps(scale)));
    }
    return t;
}
#endif

// Scores sc[g][DQ_TILE] of rows kb[n][hd] (FP16 rows or dequantized A rows) for qg[grp][hd].
static inline __attribute__((always_inline)) void DQ_FN(tile_scores)(
        const float * restrict kb, int n, const float * restrict qg, int grp, float scale, float * restrict sc,
        const int hd) {
    for (int g = 0; g < grp; g++) {
        const float * qr = qg + g * hd;
        float * sg = sc + g * DQ_TILE;
        int t0 = 0;
#if defined(__AVX512F__)
        if (hd % 16 == 0 && hd <= 256) {
            t0 = DQ_FN(scores16)(kb, n, qr, scale, sg, hd);
        }
#endif
        for (int t = t0; t < n; t++) {
            float x = 0.0f;
            for (int i = 0; i < hd; i++) {
                x += qr[i] * kb[t * hd + i];
            }
            sg[t] = x * scale;
        }
    }
}

// Online softmax over the tile's scores, then weighted rows vb[n][hd]: out[grp][hd] is
// rescaled, the weighted sum goes to vacc[grp][hd] (out itself for FP16, A-space for blocks).
static inline __attribute__((always_inline)) void DQ_FN(tile_values)(
        const float * restrict vb, int n, int grp, dq_state st, float * out, float * vacc, float * restrict sc,
        const int hd) {
    for (int g = 0; g < grp; g++) {
        float * sg = sc + g * DQ_TILE;
        DQ_FN(softmax_tile)(sg, n, hd, st.m + g, st.l + g, out + g * hd);
        float acc[hd];
        for (int i = 0; i < hd; i++) {
            acc[i] = vacc[g * hd + i];
        }
        for (int t = 0; t < n; t++) {
            const float p = sg[t];
            for (int i = 0; i < hd; i++) {
                acc[i] += p * vb[t * hd + i];
            }
        }
        for (int i = 0; i < hd; i++) {
            vacc[g * hd + i] = acc[i];
        }
    }
}

#if defined(__AVX512VNNI__)
// Integer K scores for 4-bit codes (token or channel scales): q^ is split into two int16
// parts once per block, q^ ~= s * (hi + lo / 65534) (error ~1e-9 of max|q^|), and each
// token's raw codes are multiplied in with vpdpwssd, never dequantized. A 64-code group is
// 32 bytes; low nibbles hold the even codes and high nibbles the odd ones, so q^ is stored
// split the same way: [group][32 even][32 odd].
static void DQ_FN(qint_make)(const float * qh, int grp, int hd, int16_t * q, float * scale) {
    for (int g = 0; g < grp; g++) {
        const float * x = qh + g * hd;
        float mx = 0.0f;
        for (int i = 0; i < hd; i++) {
            mx = fabsf(x[i]) > mx ? fabsf(x[i]) : mx;
        }
        const float s = mx > 0.0f ? mx / 32767.0f : 1.0f;
        scale[g] = s;
        int16_t * hi = q + 2 * g * hd, * lo = hi + hd;
        for (int k = 0; k < hd / 64; k++) {
            for (int m = 0; m < 64; m++) {
                const int   src = 64 * k + (m < 32 ? 2 * m : 2 * (m - 32) + 1);
                const float y   = x[src] / s;
                const float h   = rintf(y);
                hi[64 * k + m] = (int16_t) h;
                lo[64 * k + m] = (int16_t) rintf((y - h) * 65534.0f); // |y - h| <= 1/2: fits
            }
        }
    }
}

static inline __m512i DQ_FN(ireduce16)(__m512i v[16]) {
    __m512i a[8], b[4], c[2];
    for (int i = 0; i < 8; i++) {
        a[i] = _mm512_add_epi32(_mm512_unpacklo_epi32(v[2 * i], v[2 * i + 1]), _mm512_unpackhi_epi32(v[2 * i], v[2 * i + 1]));
    }
    for (int i = 0; i < 4; i++) {
        b[i] = _mm512_add_epi32(_mm512_unpacklo_epi64(a[2 * i], a[2 * i + 1]), _mm512_unpackhi_epi64(a[2 * i], a[2 * i + 1]));
    }
    for (int i = 0; i < 2; i++) {
        c[i] = _mm512_add_epi32(_mm512_shuffle_i32x4(b[2 * i], b[2 * i + 1], 0x88),
                                _mm512_shuffle_i32x4(b[2 * i], b[2 * i + 1], 0xdd));
    }
    return _mm512_add_epi32(_mm512_shuffle_i32x4(c[0], c[1], 0x88), _mm512_shuffle_i32x4(c[0], c[1], 0xdd));
}

// Integer dots of tokens 0..n-1 (codes at codes + t * rb) with q[grp][2][hd] into dot[g][DQ_TILE],
// in units of the q scale. grp <= 16. A token's codes are widened once for every query head.
static inline __attribute__((always_inline)) void DQ_FN(idots4)(const uint8_t * codes, int rb, int n,
                                                                const int16_t * q, int grp, float * dot,
                                                                const int hd) {
    const __m256i m4 = _mm256_set1_epi8(15);
    __m512i acc_hi[16][16], acc_lo[16][16]; // [g][token in the group of 16]
    for (int t = 0; t < n; t += 16) {
        const int nb = n - t < 16 ? n - t : 16;
        for (int j = 0; j < 16; j++) {
            if (j >= nb) {
                for (int g = 0; g < grp; g++) {
                    acc_hi[g][j] = acc_lo[g][j] = _mm512_setzero_si512();
                }
                continue;
            }
            const uint8_t * c = codes + (int64_t) (t + j) * rb;
            __m512i w[8];
            for (int k = 0; k < hd / 64; k++) {
                const __m256i v = _mm256_loadu_si256((const __m256i *) (c + 32 * k));
                w[2 * k]     = _mm512_cvtepu8_epi16(_mm256_and_si256(v, m4));
                w[2 * k + 1] = _mm512_cvtepu8_epi16(_mm256_and_si256(_mm256_srli_epi16(v, 4), m4));
            }
            for (int g = 0; g < grp; g++) {
                const int16_t * qh = q + 2 * g * hd, * ql = qh + hd;
                __m512i a = _mm512_setzero_si512(), b = _mm512_setzero_si512();
                for (int k = 0; k < hd / 32; k++) {
                    a = _mm512_dpwssd_epi32(a, w[k], _mm512_loadu_si512(qh + 32 * k));
                    b = _mm512_dpwssd_epi32(b, w[k], _mm512_loadu_si512(ql + 32 * k));
                }
                acc_hi[g][j] = a;
                acc_lo[g][j] = b;
            }
        }
        for (int g = 0; g < grp; g++) {
            const __m512 h = _mm512_cvtepi32_ps(DQ_FN(ireduce16)(acc_hi[g]));
            const __m512 l = _mm512_cvtepi32_ps(DQ_FN(ireduce16)(acc_lo[g]));
            float tmp[16];
            _mm512_storeu_ps(tmp, _mm512_fmadd_ps(l, _mm512_set1_ps(1.0f / 65534.0f), h));
            for (int j = 0; j < nb; j++) {
                dot[g * DQ_TILE + t + j] = tmp[j];
            }
        }
    }
}
#endif

static inline __attribute__((always_inline)) void DQ_FN(seg_f16_impl)(
        const dq_attn_shape * sh, const dq_segment * s, int kvh, const float * q, int32_t qpos, dq_state st,
        float * scratch, const int hd) {
    const int nkv = sh->ck->n_kv_heads;
    float * kb = scratch;               // [DQ_TILE][hd]
    float * vb = kb + DQ_TILE * hd;     // [DQ_TILE][hd]
    float * sc = vb + DQ_TILE * hd;     // [grp][DQ_TILE]
    const uint16_t * k = s->k;
    const uint16_t * v = s->v;
    for (int tt = 0; tt < s->n_tokens; tt += DQ_TILE) {
        int t0, n;
        const int go = tile_span(s->n_tokens, tt, s->pos0, qpos, sh->window, &t0, &n);
        if (go < 0) {
            break;
        }
        if (go == 0) {
            continue;
        }
        for (int t = 0; t < n; t++) {
            DQ_FN(f16_row)(k + ((int64_t) (t0 + t) * nkv + kvh) * hd, kb + t * hd, hd);
            DQ_FN(f16_row)(v + ((int64_t) (t0 + t) * nkv + kvh) * hd, vb + t * hd, hd);
        }
        DQ_FN(tile_scores)(kb, n, q, sh->grp, sh->scale, sc, hd);
        DQ_FN(tile_values)(vb, n, sh->grp, st, st.acc, st.acc, sc, hd);
    }
}

// Where one KV head's data sits in a block of n tokens.
typedef struct head_view {
    const uint16_t * b;      // the head's B (fp16 16x16)
    const uint16_t * cs;     // channel scales of the head (channel mode) or NULL
    const uint16_t * cm;     // channel mins (channel mode, asym) or NULL
    const uint16_t * ts;     // token params: param k of token t at ts[t * per + k]
    const uint16_t * tm;     // token mins (asym) or NULL
    const uint8_t  * codes;  // [n][R][2*bits]
    int per, k0;             // params per token and this head's first
    int bits, mode, rb;      // rb: code bytes per token of this head
    float zp;
} head_view;

static head_view head_of(const dq_config * c, const void * block, int n, int kvh) {
    const dq_layout L = dq_block_layout(c, n);
    const uint8_t * blk = block;
    const int hd = c->head_dim, d = dq_dim(c), R = hd / 16;
    head_view h;
    h.bits  = c->bits;
    h.mode  = c->scale_mode;
    h.zp    = c->asym ? 0.0f : (float) dq_qmax(c->bits);
    h.b     = (const uint16_t *) (blk + L.b) + (c->scope == DQ_SCOPE_HEAD ? kvh : 0) * 256;
    h.cs    = h.mode == DQ_SCALE_CHANNEL ? (const uint16_t *) (blk + L.cparam) + kvh * hd : NULL;
    h.cm    = h.cs && c->asym ? h.cs + d : NULL;
    h.per   = dq_tparams_per_token(c);
    h.k0    = h.mode == DQ_SCALE_ROW ? kvh * R : (c->scope == DQ_SCOPE_HEAD ? kvh : 0);
    h.ts    = (const uint16_t *) (blk + L.tparam);
    h.tm    = c->asym && h.per ? h.ts + (int64_t) n * h.per : NULL;
    h.rb    = R * dq_row_bytes(c->bits);
    h.codes = blk + L.codes + (int64_t) kvh * n * h.rb;
    return h;
}

// Channel mode: a = cscale[c] * u + coff[c] for the whole block.
static void DQ_FN(channel_params)(const head_view * h, int hd, float * cs, float * co) {
    for (int c = 0; c < hd; c++) {
        cs[c] = DQ_FN(h2f)(h->cs[c]);
        co[c] = (h->cm ? DQ_FN(h2f)(h->cm[c]) : 0.0f) - cs[c] * h->zp;
    }
}

// Dequantized A rows of tokens t0..t0+n-1 of one head: a = off + scale * u.
static inline __attribute__((always_inline)) void DQ_FN(dequant_tile)(
        const head_view * h, int t0, int n, const float * restrict cs, const float * restrict co,
        float * restrict a, const int hd) {
    for (int t = 0; t < n; t++) {
        const int tt = t0 + t;
        float * at = a + t * hd;
        DQ_FN(unpack)(h->codes + (int64_t) tt * h->rb, h->bits, hd, at);
        if (h->mode == DQ_SCALE_CHANNEL) {
            for (int c = 0; c < hd; c++) {
                at[c] = at[c] * cs[c] + co[c];
            }
        } else if (h->mode == DQ_SCALE_TOKEN) {
            const int64_t k = (int64_t) tt * h->per + h->k0;
            const float s = DQ_FN(h2f)(h->ts[k]);
            const float o = (h->tm ? DQ_FN(h2f)(h->tm[k]) : 0.0f) - s * h->zp;
            for (int c = 0; c < hd; c++) {
                at[c] = at[c] * s + o;
            }
        } else {
            for (int r = 0; r < hd / 16; r++) {
                const int64_t k = (int64_t) tt * h->per + h->k0 + r;
                const float s = DQ_FN(h2f)(h->ts[k]);
                const float o = (h->tm ? DQ_FN(h2f)(h->tm[k]) : 0.0f) - s * h->zp;
                for (int j = 0; j < 16; j++) {
                    at[r * 16 + j] = at[r * 16 + j] * s + o;
                }
            }
        }
    }
}

static inline __attribute__((always_inline)) void DQ_FN(seg_block_impl)(
        const dq_attn_shape * sh, const dq_segment * s, int kvh, const float * q, int32_t qpos, dq_state st,
        float * scratch, const int hd) {
    const int grp = sh->grp, R = hd / 16, n_all = s->n_tokens;
    const head_view hk = head_of(sh->ck, s->k, n_all, kvh);
    const head_view hv = head_of(sh->cv, s->v, n_all, kvh);
    float * kb  = scratch;               // [DQ_TILE][hd] A rows of K
    float * vb  = kb + DQ_TILE * hd;     // [DQ_TILE][hd] A rows of V
    float * sc  = vb + DQ_TILE * hd;     // [grp][DQ_TILE] scores, then weights
    float * qt  = sc + grp * DQ_TILE;    // [grp][hd] q~ = B q per 16-row
    float * acc = qt + grp * hd;         // [grp][hd] A-space value sums of a tile
    float * bf  = acc + grp * hd;        // [256] B as floats
    float * kcs = bf + 256;              // [hd] x 4: channel scales and offsets of K and V
    float * kco = kcs + hd;
    float * vcs = kco + hd;
    float * vco = vcs + hd;

    // q~_r = B q_r = sum_j q_r[j] * (column j of B): broadcast-FMAs over B's transpose
    DQ_FN(f16_row)(hk.b, kb, 256); // kb is free until the first tile
    for (int j = 0; j < 16; j++) {
        for (int i = 0; i < 16; i++) {
            bf[j * 16 + i] = kb[i * 16 + j];
        }
    }
    for (int g = 0; g < grp; g++) {
        for (int r = 0; r < R; r++) {
            const float * qr = q + g * hd + r * 16;
            float o[16] = { 0 };
            for (int j = 0; j < 16; j++) {
                for (int i = 0; i < 16; i++) {
                    o[i] += qr[j] * bf[j * 16 + i];
                }
            }
            for (int i = 0; i < 16; i++) {
                qt[g * hd + r * 16 + i] = o[i];
            }
        }
    }
    if (hk.mode == DQ_SCALE_CHANNEL) {
        DQ_FN(channel_params)(&hk, hd, kcs, kco);
    }
    if (hv.mode == DQ_SCALE_CHANNEL) {
        DQ_FN(channel_params)(&hv, hd, vcs, vco);
    }
#if defined(__AVX512VNNI__)
    // scores from raw codes: score = alpha_t * (q^ . u_t) + beta_t
    const int use_int = hk.bits == 4 && hk.mode != DQ_SCALE_ROW && hd % 64 == 0 && hd <= 256 && grp <= 16;
    int16_t qi[16 * 2 * 256];
    float   qsc[16], beta_c[16], qsum[16];
    if (use_int) {
        float * qh = kb; // q^ = q~ (token) or q~ * cscale (channel), staged in kb
        for (int g = 0; g < grp; g++) {
            beta_c[g] = 0.0f;
            qsum[g]   = 0.0f;
            for (int c = 0; c < hd; c++) {
                const float x = qt[g * hd + c];
                qsum[g] += x;
                if (hk.mode == DQ_SCALE_CHANNEL) {
                    qh[g * hd + c] = x * kcs[c];
                    beta_c[g] += x * kco[c];
                } else {
                    qh[g * hd + c] = x;
                }
            }
        }
        DQ_FN(qint_make)(qh, grp, hd, qi, qsc);
    }
#endif
    DQ_FN(f16_row)(hv.b, bf, 256); // from here on bf is V's B

    for (int tt = 0; tt < n_all; tt += DQ_TILE) {
        int t0, n;
        const int go = tile_span(n_all, tt, s->pos0, qpos, sh->window, &t0, &n);
        if (go < 0) {
            break;
        }
        if (go == 0) {
            continue;
        }
#if defined(__AVX512VNNI__)
        if (use_int) {
            DQ_FN(idots4)(hk.codes + (int64_t) t0 * hk.rb, hk.rb, n, qi, grp, sc, hd);
            for (int t = 0; t < n; t++) {
                float alpha = 1.0f, off = 0.0f;
                if (hk.mode == DQ_SCALE_TOKEN) {
                    const int64_t k = (int64_t) (t0 + t) * hk.per + hk.k0;
                    alpha = DQ_FN(h2f)(hk.ts[k]);
                    off   = (hk.tm ? DQ_FN(h2f)(hk.tm[k]) : 0.0f) - alpha * hk.zp;
                }
                for (int g = 0; g < grp; g++) {
                    const float beta = hk.mode == DQ_SCALE_TOKEN ? off * qsum[g] : beta_c[g];
                    sc[g * DQ_TILE + t] = (alpha * qsc[g] * sc[g * DQ_TILE + t] + beta) * sh->scale;
                }
            }
        } else
#endif
        {
            DQ_FN(dequant_tile)(&hk, t0, n, kcs, kco, kb, hd);
            DQ_FN(tile_scores)(kb, n, qt, grp, sh->scale, sc, hd);
        }
        DQ_FN(dequant_tile)(&hv, t0, n, vcs, vco, vb, hd);
        for (int i = 0; i < grp * hd; i++) {
            acc[i] = 0.0f;
        }
        DQ_FN(tile_values)(vb, n, grp, st, st.acc, acc, sc, hd);
        // values were summed in A-space: out_row += acc_row @ B, once per tile
        for (int g = 0; g < grp; g++) {
            for (int r = 0; r < R; r++) {
                const float * a = acc + g * hd + r * 16;
                float o[16];
                for (int k = 0; k < 16; k++) {
                    o[k] = st.acc[g * hd + r * 16 + k];
                }
                for (int i = 0; i < 16; i++) {
                    for (int k = 0; k < 16; k++) {
                        o[k] += a[i] * bf[i * 16 + k];
                    }
                }
                for (int k = 0; k < 16; k++) {
                    st.acc[g * hd + r * 16 + k] = o[k];
                }
            }
        }
    }
}

// hd as a compile-time constant for the common head sizes: unrolled inner loops
#define DQ_HD_DISPATCH(impl)                                                                  \
    static void DQ_FN(impl)(const dq_attn_shape * sh, const dq_segment * s, int kvh, const float * q, \
                            int32_t qpos, dq_state st, float * scratch) {                      \
        switch (sh->hd) {                                                                     \
            case 64:  DQ_FN(impl##_impl)(sh, s, kvh, q, qpos, st, scratch, 64); break;         \
            case 128: DQ_FN(impl##_impl)(sh, s, kvh, q, qpos, st, scratch, 128); break;        \
            case 256: DQ_FN(impl##_impl)(sh, s, kvh, q, qpos, st, scratch, 256); break;        \
            default:  DQ_FN(impl##_impl)(sh, s, kvh, q, qpos, st, scratch, sh->hd);            \
        }                                                                                     \
    }
DQ_HD_DISPATCH(seg_f16)
DQ_HD_DISPATCH(seg_block)

const dq_kernels DQ_KERNELS = { DQ_KNAME, DQ_FN(seg_f16), DQ_FN(seg_block) };
