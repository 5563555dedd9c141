// The KV cache: per layer, a K and a V stream.
//   f16:       fp16 rows [n_ctx][D], token-major (llama.cpp's f16 cache).
//   decoquant: fp16 sinks [sinks][D], compressed blocks of `chunk` tokens for every full chunk,
//              and an fp16 residual [chunk][D] for the chunk still filling.
// Token i sits at position i. All memory for n_ctx is allocated up front.
#include "dq_model_internal.h"

#include <stdlib.h>
#include <string.h>

#define DQ_F16_SEG 256 // tokens per attention segment of the f16 cache (the flash-decoding split unit)

static size_t stream_bytes(const dq_kv_cache * kv, const dq_kv_stream * s) {
    if (kv->mode == DQ_KV_F16) {
        return (size_t) kv->n_ctx * kv->D * 2;
    }
    return (size_t) kv->sinks * kv->D * 2 + (size_t) kv->n_blocks * s->block_bytes + (size_t) kv->chunk * kv->D * 2;
}

static uint8_t * stream_place(const dq_kv_cache * kv, dq_kv_stream * s, uint8_t * p) {
    if (kv->mode == DQ_KV_F16) {
        s->rows = (uint16_t *) p;
        return p + (size_t) kv->n_ctx * kv->D * 2;
    }
    s->sink = (uint16_t *) p;
    p += (size_t) kv->sinks * kv->D * 2;
    s->blocks = p;
    p += (size_t) kv->n_blocks * s->block_bytes;
    s->resid = (uint16_t *) p;
    return p + (size_t) kv->chunk * kv->D * 2;
}

int dq_kv_init(dq_kv_cache * kv, const dq_model * m, int32_t n_ctx, const dq_kv_params * pk, const dq_kv_params * pv,
               char * err, size_t es) {
    memset(kv, 0, sizeof *kv);
    kv->n_layer = m->n_layer;
    kv->n_ctx   = n_ctx;
    kv->n_kv    = m->n_head_kv;
    kv->hd      = m->head_dim;
    kv->D       = m->n_head_kv * m->head_dim;
    if (pk->mode != pv->mode) {
        dq_set_err(err, es, "K and V caches must use the same mode (f16 or decoquant); per-stream bits/options may "
                   "differ");
        return -1;
    }
    if (pk->mode != DQ_KV_F16 && pk->mode != DQ_KV_DECOQUANT) {
        dq_set_err(err, es, "unknown KV cache mode %d (0: f16, 1: decoquant)", pk->mode);
        return -1;
    }
    kv->mode = pk->mode;
    dq_config ck = pk->cfg, cv = pv->cfg;
    ck.n_kv_heads = cv.n_kv_heads = kv->n_kv;
    ck.head_dim = cv.head_dim = kv->hd;
    if (kv->mode == DQ_KV_F16) {
        // a valid config with the shape, for dq_attn (f16 segments read no block)
        ck = (dq_config) { kv->n_kv, kv->hd, 4, DQ_SCALE_TOKEN, 0, DQ_SCOPE_LAYER, 0.5f };
        cv = ck;
    } else {
        if (pk->chunk != pv->chunk || pk->sinks != pv->sinks) {
            dq_set_err(err, es, "K and V must use the same chunk and sinks (K: %d/%d, V: %d/%d)", pk->chunk, pk->sinks,
                       pv->chunk, pv->sinks);
            return -1;
        }
        if (pk->chunk < 16 || pk->chunk > 65536 || pk->sinks < 0 || pk->sinks > 65536) {
            dq_set_err(err, es, "chunk must be in [16, 65536] and sinks in [0, 65536] (got %d, %d)", pk->chunk,
                       pk->sinks);
            return -1;
        }
        if (dq_config_check(&ck) != DQ_OK || dq_config_check(&cv) != DQ_OK) {
            dq_set_err(err, es, "invalid decoquant config (K bits %d, V bits %d; bits must be 2, 3, 4 or 8)", ck.bits,
                       cv.bits);
            return -1;
        }
        kv->chunk    = pk->chunk;
        kv->sinks    = pk->sinks < n_ctx ? pk->sinks : n_ctx;
        kv->n_blocks = (n_ctx - kv->sinks) / kv->chunk;
    }
    kv->cfg_k = ck;
    kv->cfg_v = cv;
    kv->k = calloc((size_t) kv->n_layer, sizeof(dq_kv_stream));
    kv->v = calloc((size_t) kv->n_layer, sizeof(dq_kv_stream));
    if (!kv->k || !kv->v) {
        dq_set_err(err, es, "out of memory");
        return -1;
    }
    size_t total = 0;
    for (int il = 0; il < kv->n_layer; il++) {
        kv->k[il].p = *pk;
        kv->v[il].p = *pv;
        kv->k[il].p.cfg = ck;
        kv->v[il].p.cfg = cv;
        if (kv->mode == DQ_KV_DECOQUANT) {
            kv->k[il].block_bytes = dq_block_size(&ck, kv->chunk);
            kv->v[il].block_bytes = dq_block_size(&cv, kv->chunk);
        }
        total += stream_bytes(kv, &kv->k[il]) + stream_bytes(kv, &kv->v[il]);
    }
    kv->mem = aligned_alloc(64, (total + 63) / 64 * 64);
    if (!kv->mem) {
        dq_set_err(err, es, "out of memory: the KV cache needs %zu bytes", total);
        return -1;
    }
    memset(kv->mem, 0, total);
    kv->bytes = total;
    uint8_t * p = kv->mem;
    for (int il = 0; il < kv->n_layer; il++) {
        p = stream_place(kv, &kv->k[il], p);
        p = stream_place(kv, &kv->v[il], p);
    }
    return 0;
}

void dq_kv_free(dq_kv_cache * kv) {
    free(kv->mem);
    free(kv->k);
    free(kv->v);
    memset(kv, 0, sizeof *kv);
}

// ---------------------------------------------------------------- append

static int32_t chunk_of(const dq_kv_cache * kv, int32_t pos) { return (pos - kv->sinks) / kv->chunk; }

typedef struct append_plan {
    int32_t c_first, c_last; // touched chunks (c_first > c_last: none)
    int     tail_partial;    // the last touched chunk is still filling afterwards
} append_plan;

static append_plan plan(const dq_kv_cache * kv, int32_t pos0, int32_t n) {
    append_plan pl = { 0, -1, 0 };
    const int32_t end = pos0 + n;
    if (end <= kv->sinks) {
        return pl;
    }
    const int32_t first = pos0 > kv->sinks ? pos0 : kv->sinks;
    pl.c_first      = chunk_of(kv, first);
    pl.c_last       = chunk_of(kv, end - 1);
    pl.tail_partial = (end - kv->sinks) % kv->chunk != 0;
    return pl;
}

int dq_kv_append_units(const dq_kv_cache * kv, int32_t pos0, int32_t n) {
    if (kv->mode == DQ_KV_F16) {
        return n < 8 ? 1 : 8;
    }
    const append_plan pl = plan(kv, pos0, n);
    if (pl.c_first > pl.c_last) {
        return 1;
    }
    int k = pl.c_last - pl.c_first;
    if (pl.tail_partial && k > 0) {
        k--; // a partial tail goes with unit 0 (both touch the residual)
    }
    return 1 + k;
}

static void put_f16(uint16_t * dst, const float * x, int64_t n) { dq_fp32_to_fp16_row(x, dst, n); }

// compresses chunk c: rows before pos0 from the residual, the rest from x (rows of pos0..)
static void compress_chunk(dq_kv_cache * kv, dq_kv_stream * s, int32_t c, const float * x, int32_t pos0) {
    const int32_t D = kv->D, C = kv->chunk, P = kv->sinks + c * C;
    float * buf = malloc((size_t) C * D * sizeof(float));
    if (!buf) {
        return;
    }
    int32_t t = 0;
    for (; P + t < pos0 && t < C; t++) {
        for (int32_t j = 0; j < D; j++) {
            buf[(size_t) t * D + j] = dq_fp16_to_fp32(s->resid[(size_t) t * D + j]);
        }
    }
    memcpy(buf + (size_t) t * D, x + (size_t) (P + t - pos0) * D, (size_t) (C - t) * D * sizeof(float));
    dq_decompose(&s->p.cfg, buf, C, s->blocks + (size_t) c * s->block_bytes);
    free(buf);
}

// writes x rows of positions [a, b) of chunk c (partial) into the residual
static void to_resid(dq_kv_cache * kv, dq_kv_stream * s, int32_t c, const float * x, int32_t pos0, int32_t a, int32_t b) {
    const int32_t D = kv->D, P = kv->sinks + c * kv->chunk;
    if (b > a) {
        put_f16(s->resid + (size_t) (a - P) * D, x + (size_t) (a - pos0) * D, (int64_t) (b - a) * D);
    }
}

void dq_kv_append_unit(dq_kv_cache * kv, int il, int is_v, const float * x, int32_t pos0, int32_t n, int unit) {
    dq_kv_stream * s = is_v ? &kv->v[il] : &kv->k[il];
    const int32_t D = kv->D;
    if (kv->mode == DQ_KV_F16) {
        const int U = dq_kv_append_units(kv, pos0, n);
        const int32_t r0 = (int32_t) ((int64_t) n * unit / U), r1 = (int32_t) ((int64_t) n * (unit + 1) / U);
        put_f16(s->rows + (size_t) (pos0 + r0) * D, x + (size_t) r0 * D, (int64_t) (r1 - r0) * D);
        return;
    }
    const int32_t end = pos0 + n, C = kv->chunk;
    const append_plan pl = plan(kv, pos0, n);
    if (unit == 0) {
        if (pos0 < kv->sinks) {
            const int32_t e = end < kv->sinks ? end : kv->sinks;
            put_f16(s->sink + (size_t) pos0 * D, x, (int64_t) (e - pos0) * D);
        }
        if (pl.c_first > pl.c_last) {
            return;
        }
        const int32_t P = kv->sinks + pl.c_first * C;
        if (end >= P + C) {
            compress_chunk(kv, s, pl.c_first, x, pos0);
        } else {
            to_resid(kv, s, pl.c_first, x, pos0, pos0 > P ? pos0 : P, end);
        }
        if (pl.tail_partial && pl.c_last != pl.c_first) {
            to_resid(kv, s, pl.c_last, x, pos0, kv->sinks + pl.c_last * C, end);
        }
        return;
    }
    compress_chunk(kv, s, pl.c_first + unit, x, pos0); // a chunk wholly inside this batch
}

// ---------------------------------------------------------------- segments

int dq_kv_max_segs(const dq_kv_cache * kv) {
    if (kv->mode == DQ_KV_F16) {
        return (kv->n_ctx + DQ_F16_SEG - 1) / DQ_F16_SEG + 1;
    }
    return kv->n_blocks + 2;
}

static int visible(int32_t pos0, int32_t n, int32_t min_pos, int32_t window) {
    return n > 0 && !(window > 0 && (int64_t) pos0 + n - 1 <= (int64_t) min_pos - window);
}

int dq_kv_segments(const dq_kv_cache * kv, int il, int32_t n_kv, int32_t min_pos, int32_t window, dq_segment * segs) {
    const dq_kv_stream * k = &kv->k[il], * v = &kv->v[il];
    const int32_t D = kv->D;
    int ns = 0;
    if (kv->mode == DQ_KV_F16) {
        for (int32_t p = 0; p < n_kv; p += DQ_F16_SEG) {
            const int32_t n = n_kv - p < DQ_F16_SEG ? n_kv - p : DQ_F16_SEG;
            if (visible(p, n, min_pos, window)) {
                segs[ns++] = (dq_segment) { k->rows + (size_t) p * D, v->rows + (size_t) p * D, n, p, DQ_SEG_F16, 0 };
            }
        }
        return ns;
    }
    const int32_t ns0 = n_kv < kv->sinks ? n_kv : kv->sinks;
    if (visible(0, ns0, min_pos, window)) {
        segs[ns++] = (dq_segment) { k->sink, v->sink, ns0, 0, DQ_SEG_F16, 0 };
    }
    if (n_kv <= kv->sinks) {
        return ns;
    }
    const int32_t nb = (n_kv - kv->sinks) / kv->chunk, r = (n_kv - kv->sinks) % kv->chunk;
    for (int32_t c = 0; c < nb; c++) {
        const int32_t p = kv->sinks + c * kv->chunk;
        if (visible(p, kv->chunk, min_pos, window)) {
            segs[ns++] = (dq_segment) { k->blocks + (size_t) c * k->block_bytes, v->blocks + (size_t) c * v->block_bytes,
                                        kv->chunk, p, DQ_SEG_BLOCK, 0 };
        }
    }
    if (visible(kv->sinks + nb * kv->chunk, r, min_pos, window)) {
        segs[ns++] = (dq_segment) { k->resid, v->resid, r, kv->sinks + nb * kv->chunk, DQ_SEG_F16, 0 };
    }
    return ns;
}

// ---------------------------------------------------------------- truncate, state

int dq_kv_truncate(dq_kv_cache * kv, int32_t n, char * err, size_t es) {
    if (n < 0 || n > kv->n_past) {
        dq_set_err(err, es, "truncate: n = %d is outside [0, %d] (the tokens in the cache)", n, kv->n_past);
        return -1;
    }
    if (kv->mode == DQ_KV_DECOQUANT && n > kv->sinks && n < kv->n_past) {
        const int32_t c = (n - kv->sinks) / kv->chunk, off = (n - kv->sinks) % kv->chunk;
        const int32_t full_before = (kv->n_past - kv->sinks) / kv->chunk; // blocks compressed now
        if (off > 0 && c < full_before) {
            // the block is cut in the middle: its kept tokens go back to the fp16 residual
            float * buf = malloc((size_t) kv->chunk * kv->D * sizeof(float));
            if (!buf) {
                dq_set_err(err, es, "out of memory");
                return -1;
            }
            for (int il = 0; il < kv->n_layer; il++) {
                for (int sv = 0; sv < 2; sv++) {
                    dq_kv_stream * s = sv ? &kv->v[il] : &kv->k[il];
                    dq_reconstruct(&s->p.cfg, s->blocks + (size_t) c * s->block_bytes, kv->chunk, buf);
                    put_f16(s->resid, buf, (int64_t) off * kv->D);
                }
            }
            free(buf);
        }
    }
    kv->n_past = n;
    return 0;
}

size_t dq_kv_state_payload(const dq_kv_cache * kv, int32_t n) {
    size_t per = 0;
    for (int il = 0; il < kv->n_layer; il++) {
        for (int sv = 0; sv < 2; sv++) {
            const dq_kv_stream * s = sv ? &kv->v[il] : &kv->k[il];
            if (kv->mode == DQ_KV_F16) {
                per += (size_t) n * kv->D * 2;
            } else {
                const int32_t ns = n < kv->sinks ? n : kv->sinks;
                const int32_t rest = n - ns, nb = rest / kv->chunk, r = rest % kv->chunk;
                per += (size_t) ns * kv->D * 2 + (size_t) nb * s->block_bytes + (size_t) r * kv->D * 2;
            }
        }
    }
    return per;
}

// copies the used parts of the cache to (dir 0) or from (dir 1) buf
static void state_copy(dq_kv_cache * kv, uint8_t * buf, int32_t n, int dir) {
#define CP(ptr, bytes)                          \
    do {                                        \
        if (dir == 0) memcpy(buf, (ptr), (bytes)); \
        else memcpy((ptr), buf, (bytes));       \
        buf += (bytes);                         \
    } while (0)
    for (int il = 0; il < kv->n_layer; il++) {
        for (int sv = 0; sv < 2; sv++) {
            dq_kv_stream * s = sv ? &kv->v[il] : &kv->k[il];
            if (kv->mode == DQ_KV_F16) {
                CP(s->rows, (size_t) n * kv->D * 2);
            } else {
                const int32_t ns = n < kv->sinks ? n : kv->sinks;
                const int32_t rest = n - ns, nb = rest / kv->chunk, r = rest % kv->chunk;
                CP(s->sink, (size_t) ns * kv->D * 2);
                CP(s->blocks, (size_t) nb * s->block_bytes);
                CP(s->resid, (size_t) r * kv->D * 2);
            }
        }
    }
#undef CP
}

void dq_kv_state_write(const dq_kv_cache * kv, uint8_t * dst) { state_copy((dq_kv_cache *) kv, dst, kv->n_past, 0); }

void dq_kv_state_read(dq_kv_cache * kv, const uint8_t * src, int32_t n) {
    state_copy(kv, (uint8_t *) src, n, 1);
    kv->n_past = n;
}
