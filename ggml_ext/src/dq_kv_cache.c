// The KV cache: per layer, a K and a V stream, each layer with its own mode and options.
//   f16:       fp16 rows [cap][D], token-major (llama.cpp's f16 cache).
//   decoquant: fp16 sinks [sinks][D], compressed blocks of `chunk` tokens for every full chunk,
//              and an fp16 residual [chunk][D] for the chunk still filling.
// A sliding-window layer keeps only what its queries can still see: a ring of rows (f16) or of
// block slots (decoquant), sized for one ubatch plus the window. All memory for n_ctx is
// allocated up front.
#include "dq_model_internal.h"

#include <stdlib.h>
#include <string.h>

#define DQ_F16_SEG 256 // tokens per attention segment of the f16 cache (the flash-decoding split unit)

static int32_t min_i32(int32_t a, int32_t b) { return a < b ? a : b; }
static int32_t max_i32(int32_t a, int32_t b) { return a > b ? a : b; }

static size_t stream_bytes(const dq_kv_layer * L, const dq_kv_stream * s, int32_t D) {
    if (L->mode == DQ_KV_F16) {
        return (size_t) L->cap * D * 2;
    }
    return (size_t) L->sinks * D * 2 + (size_t) L->n_slots * s->block_bytes + (size_t) L->chunk * D * 2;
}

static uint8_t * stream_place(const dq_kv_layer * L, dq_kv_stream * s, int32_t D, uint8_t * p) {
    if (L->mode == DQ_KV_F16) {
        s->rows = (uint16_t *) p;
        return p + (size_t) L->cap * D * 2;
    }
    s->sink = (uint16_t *) p;
    p += (size_t) L->sinks * D * 2;
    s->blocks = p;
    p += (size_t) L->n_slots * s->block_bytes;
    s->resid = (uint16_t *) p;
    return p + (size_t) L->chunk * D * 2;
}

// checks one layer's K/V params and fills its geometry
static int layer_init(dq_kv_cache * kv, int il, const dq_kv_params * pk, const dq_kv_params * pv, int32_t n_ubatch,
                      int32_t window, int swa_full, char * err, size_t es) {
    dq_kv_layer * L = &kv->layers[il];
    if (pk->mode != pv->mode) {
        dq_set_err(err, es, "layer %d: K and V caches must use the same mode (f16 or decoquant); bits and options "
                   "may differ", il);
        return -1;
    }
    if (pk->mode != DQ_KV_F16 && pk->mode != DQ_KV_DECOQUANT) {
        dq_set_err(err, es, "layer %d: unknown KV cache mode %d (0: f16, 1: decoquant)", il, pk->mode);
        return -1;
    }
    L->mode   = pk->mode;
    L->window = window > 0 ? window : 0;
    const int ring = L->window > 0 && !swa_full;
    dq_config ck = pk->cfg, cv = pv->cfg;
    ck.n_kv_heads = cv.n_kv_heads = kv->n_kv;
    ck.head_dim = cv.head_dim = kv->hd;
    if (L->mode == DQ_KV_F16) {
        // a valid config with the shape, for dq_attn (f16 segments read no block)
        ck = (dq_config) { kv->n_kv, kv->hd, 4, DQ_SCALE_TOKEN, 0, DQ_SCOPE_LAYER, 0.5f };
        cv = ck;
        L->cap = kv->n_ctx;
        if (ring) {
            // a query at pos0 reads from the 256-row segment holding pos0 - window + 1 on: the
            // ring must hold that segment plus the ubatch being written
            const int64_t need = ((int64_t) L->window + n_ubatch + 255 + DQ_F16_SEG - 1) / DQ_F16_SEG * DQ_F16_SEG;
            if (need < kv->n_ctx) {
                L->cap = (int32_t) need;
            }
        }
    } else {
        if (pk->chunk != pv->chunk || pk->sinks != pv->sinks) {
            dq_set_err(err, es, "layer %d: K and V must use the same chunk and sinks (K: %d/%d, V: %d/%d)", il,
                       pk->chunk, pk->sinks, pv->chunk, pv->sinks);
            return -1;
        }
        if (pk->chunk < 16 || pk->chunk > 65536 || pk->sinks < 0 || pk->sinks > 65536) {
            dq_set_err(err, es, "chunk must be in [16, 65536] and sinks in [0, 65536] (got %d, %d)", pk->chunk,
                       pk->sinks);
            return -1;
        }
        if (dq_config_check(&ck) != DQ_OK || dq_config_check(&cv) != DQ_OK) {
            dq_set_err(err, es, "layer %d: invalid decoquant config (K bits %d, V bits %d; bits must be 2, 3, 4 or 8)",
                       il, ck.bits, cv.bits);
            return -1;
        }
        L->chunk = pk->chunk;
        L->sinks   = min_i32(pk->sinks, kv->n_ctx); // on a sliding-window layer they drop out like the rest
        L->n_slots = (kv->n_ctx - L->sinks) / L->chunk;
        if (ring) {
            // the chunks one ubatch's queries can see, plus the ones it compresses
            const int64_t need = ((int64_t) L->window + n_ubatch) / L->chunk + 2;
            if (need < L->n_slots) {
                L->n_slots = (int32_t) need;
            }
        }
    }
    L->k.p = *pk;
    L->v.p = *pv;
    L->k.p.cfg = ck;
    L->v.p.cfg = cv;
    if (L->mode == DQ_KV_DECOQUANT) {
        L->k.block_bytes = dq_block_size(&ck, L->chunk);
        L->v.block_bytes = dq_block_size(&cv, L->chunk);
    }
    return 0;
}

int dq_kv_plan(dq_kv_cache * kv, const dq_model * m, int32_t n_ctx, int32_t n_ubatch, const dq_kv_params * pk,
               const dq_kv_params * pv, const int32_t * window, int swa_full, char * err, size_t es) {
    memset(kv, 0, sizeof *kv);
    kv->n_layer = m->n_layer;
    kv->n_ctx   = n_ctx;
    kv->n_kv    = m->n_head_kv;
    kv->hd      = m->head_dim;
    kv->D       = m->n_head_kv * m->head_dim;
    kv->layers  = calloc((size_t) kv->n_layer, sizeof(dq_kv_layer));
    if (!kv->layers) {
        dq_set_err(err, es, "out of memory");
        return -1;
    }
    size_t total = 0;
    for (int il = 0; il < kv->n_layer; il++) {
        if (layer_init(kv, il, &pk[il], &pv[il], n_ubatch, window[il], swa_full, err, es) != 0) {
            dq_kv_free(kv);
            return -1;
        }
        const dq_kv_layer * L = &kv->layers[il];
        total += stream_bytes(L, &L->k, kv->D) + stream_bytes(L, &L->v, kv->D);
    }
    kv->bytes = total;
    return 0;
}

int dq_kv_init(dq_kv_cache * kv, const dq_model * m, int32_t n_ctx, int32_t n_ubatch, const dq_kv_params * pk,
               const dq_kv_params * pv, const int32_t * window, int swa_full, char * err, size_t es) {
    if (dq_kv_plan(kv, m, n_ctx, n_ubatch, pk, pv, window, swa_full, err, es) != 0) {
        return -1;
    }
    const size_t total = kv->bytes;
    kv->mem = aligned_alloc(64, (total + 63) / 64 * 64);
    if (!kv->mem) {
        dq_set_err(err, es, "out of memory: the KV cache needs %zu bytes", total);
        dq_kv_free(kv);
        return -1;
    }
    memset(kv->mem, 0, total);
    uint8_t * p = kv->mem;
    for (int il = 0; il < kv->n_layer; il++) {
        dq_kv_layer * L = &kv->layers[il];
        p = stream_place(L, &L->k, kv->D, p);
        p = stream_place(L, &L->v, kv->D, p);
    }
    return 0;
}

void dq_kv_free(dq_kv_cache * kv) {
    free(kv->mem);
    free(kv->layers);
    memset(kv, 0, sizeof *kv);
}

int dq_kv_all_f16(const dq_kv_cache * kv) {
    for (int il = 0; il < kv->n_layer; il++) {
        if (kv->layers[il].mode != DQ_KV_F16) {
            return 0;
        }
    }
    return 1;
}

void dq_kv_reset(dq_kv_cache * kv) {
    kv->n_past = 0;
    kv->n_high = 0;
}

// ---------------------------------------------------------------- append

static int32_t chunk_of(const dq_kv_layer * L, int32_t pos) { return (pos - L->sinks) / L->chunk; }

static uint8_t * block_at(const dq_kv_layer * L, const dq_kv_stream * s, int32_t c) {
    return s->blocks + (size_t) (c % L->n_slots) * s->block_bytes;
}

typedef struct append_plan {
    int32_t c_first, c_last; // touched chunks (c_first > c_last: none)
    int     tail_partial;    // the last touched chunk is still filling afterwards
} append_plan;

static append_plan plan(const dq_kv_layer * L, int32_t pos0, int32_t n) {
    append_plan pl = { 0, -1, 0 };
    const int32_t end = pos0 + n;
    if (end <= L->sinks) {
        return pl;
    }
    const int32_t first = pos0 > L->sinks ? pos0 : L->sinks;
    pl.c_first      = chunk_of(L, first);
    pl.c_last       = chunk_of(L, end - 1);
    pl.tail_partial = (end - L->sinks) % L->chunk != 0;
    return pl;
}

int dq_kv_append_units(const dq_kv_cache * kv, int il, int32_t pos0, int32_t n) {
    const dq_kv_layer * L = &kv->layers[il];
    if (L->mode == DQ_KV_F16) {
        return n < 8 ? 1 : 8;
    }
    const append_plan pl = plan(L, pos0, n);
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

// rows of positions [a, b) from x (rows of pos0..) into an f16 stream, wrapping around the ring
static void put_rows(const dq_kv_layer * L, dq_kv_stream * s, int32_t D, const float * x, int32_t pos0, int32_t a,
                     int32_t b) {
    while (a < b) {
        const int32_t r = a % L->cap, n = min_i32(b - a, L->cap - r);
        put_f16(s->rows + (size_t) r * D, x + (size_t) (a - pos0) * D, (int64_t) n * D);
        a += n;
    }
}

// compresses chunk c: rows before pos0 from the residual, the rest from x (rows of pos0..)
static void compress_chunk(const dq_kv_layer * L, dq_kv_stream * s, int32_t D, int32_t c, const float * x,
                           int32_t pos0) {
    const int32_t C = L->chunk, P = L->sinks + c * C;
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
    dq_decompose(&s->p.cfg, buf, C, block_at(L, s, c));
    free(buf);
}

// writes x rows of positions [a, b) of chunk c (partial) into the residual
static void to_resid(const dq_kv_layer * L, dq_kv_stream * s, int32_t D, int32_t c, const float * x, int32_t pos0,
                     int32_t a, int32_t b) {
    const int32_t P = L->sinks + c * L->chunk;
    if (b > a) {
        put_f16(s->resid + (size_t) (a - P) * D, x + (size_t) (a - pos0) * D, (int64_t) (b - a) * D);
    }
}

void dq_kv_append_unit(dq_kv_cache * kv, int il, int is_v, const float * x, int32_t pos0, int32_t n, int unit) {
    const dq_kv_layer * L = &kv->layers[il];
    dq_kv_stream * s = is_v ? &kv->layers[il].v : &kv->layers[il].k;
    const int32_t D = kv->D;
    if (L->mode == DQ_KV_F16) {
        const int U = dq_kv_append_units(kv, il, pos0, n);
        const int32_t r0 = (int32_t) ((int64_t) n * unit / U), r1 = (int32_t) ((int64_t) n * (unit + 1) / U);
        put_rows(L, s, D, x, pos0, pos0 + r0, pos0 + r1);
        return;
    }
    const int32_t end = pos0 + n, C = L->chunk;
    const append_plan pl = plan(L, pos0, n);
    if (unit == 0) {
        if (pos0 < L->sinks) {
            const int32_t e = end < L->sinks ? end : L->sinks;
            put_f16(s->sink + (size_t) pos0 * D, x, (int64_t) (e - pos0) * D);
        }
        if (pl.c_first > pl.c_last) {
            return;
        }
        const int32_t P = L->sinks + pl.c_first * C;
        if (end >= P + C) {
            compress_chunk(L, s, D, pl.c_first, x, pos0);
        } else {
            to_resid(L, s, D, pl.c_first, x, pos0, pos0 > P ? pos0 : P, end);
        }
        if (pl.tail_partial && pl.c_last != pl.c_first) {
            to_resid(L, s, D, pl.c_last, x, pos0, L->sinks + pl.c_last * C, end);
        }
        return;
    }
    compress_chunk(L, s, D, pl.c_first + unit, x, pos0); // a chunk wholly inside this batch
}

// ---------------------------------------------------------------- segments

int dq_kv_max_segs(const dq_kv_cache * kv) {
    int mx = 1;
    for (int il = 0; il < kv->n_layer; il++) {
        const dq_kv_layer * L = &kv->layers[il];
        const int n = L->mode == DQ_KV_F16 ? (L->cap + DQ_F16_SEG - 1) / DQ_F16_SEG + 1 : L->n_slots + 2;
        mx = n > mx ? n : mx;
    }
    return mx;
}

static int visible(int32_t pos0, int32_t n, int32_t min_pos, int32_t window) {
    return n > 0 && !(window > 0 && (int64_t) pos0 + n - 1 <= (int64_t) min_pos - window);
}

int dq_kv_segments(const dq_kv_cache * kv, int il, int32_t n_kv, int32_t min_pos, int32_t window, dq_segment * segs) {
    const dq_kv_layer * L = &kv->layers[il];
    const dq_kv_stream * k = &L->k, * v = &L->v;
    const int32_t D = kv->D;
    // the lowest position any query of this batch can see
    const int32_t lo = window > 0 ? max_i32(0, min_pos - window + 1) : 0;
    int ns = 0;
    if (L->mode == DQ_KV_F16) {
        for (int32_t p = lo / DQ_F16_SEG * DQ_F16_SEG; p < n_kv; p += DQ_F16_SEG) {
            const int32_t n = min_i32(n_kv - p, DQ_F16_SEG);
            const size_t r = (size_t) (p % L->cap); // segments never straddle the ring's end
            if (visible(p, n, min_pos, window)) {
                segs[ns++] = (dq_segment) { k->rows + r * D, v->rows + r * D, n, p, DQ_SEG_F16, 0 };
            }
        }
        return ns;
    }
    const int32_t ns0 = min_i32(n_kv, L->sinks);
    if (visible(0, ns0, min_pos, window)) {
        segs[ns++] = (dq_segment) { k->sink, v->sink, ns0, 0, DQ_SEG_F16, 0 };
    }
    if (n_kv <= L->sinks) {
        return ns;
    }
    const int32_t nb = (n_kv - L->sinks) / L->chunk, r = (n_kv - L->sinks) % L->chunk;
    for (int32_t c = lo > L->sinks ? chunk_of(L, lo) : 0; c < nb; c++) {
        const int32_t p = L->sinks + c * L->chunk;
        if (visible(p, L->chunk, min_pos, window)) {
            segs[ns++] = (dq_segment) { block_at(L, k, c), block_at(L, v, c), L->chunk, p, DQ_SEG_BLOCK, 0 };
        }
    }
    if (visible(L->sinks + nb * L->chunk, r, min_pos, window)) {
        segs[ns++] = (dq_segment) { k->resid, v->resid, r, L->sinks + nb * L->chunk, DQ_SEG_F16, 0 };
    }
    return ns;
}

// ---------------------------------------------------------------- truncate, state

// whether a ring layer still holds everything queries after position n can see
static int ring_keeps(const dq_kv_cache * kv, const dq_kv_layer * L, int32_t n) {
    if (L->window <= 0) {
        return 1;
    }
    const int32_t lo = max_i32(0, n - L->window + 1);
    if (L->mode == DQ_KV_F16) {
        return L->cap == kv->n_ctx || kv->n_high <= L->cap || lo / DQ_F16_SEG * DQ_F16_SEG >= kv->n_high - L->cap;
    }
    const int32_t nb_high = max_i32(0, kv->n_high - L->sinks) / L->chunk;
    return nb_high <= L->n_slots || (lo >= L->sinks && chunk_of(L, lo) >= nb_high - L->n_slots);
}

int dq_kv_truncate(dq_kv_cache * kv, int32_t n, char * err, size_t es) {
    if (n < 0 || n > kv->n_past) {
        dq_set_err(err, es, "truncate: n = %d is outside [0, %d] (the tokens in the cache)", n, kv->n_past);
        return -1;
    }
    for (int il = 0; il < kv->n_layer; il++) {
        if (!ring_keeps(kv, &kv->layers[il], n)) {
            dq_set_err(err, es, "truncate: layer %d keeps only the last tokens of its sliding window and has "
                       "overwritten what position %d would see; evaluate again from the start", il, n);
            return -1;
        }
    }
    float * buf = NULL;
    for (int il = 0; il < kv->n_layer && n < kv->n_past; il++) {
        const dq_kv_layer * L = &kv->layers[il];
        if (L->mode != DQ_KV_DECOQUANT || n <= L->sinks) {
            continue;
        }
        const int32_t c = chunk_of(L, n), off = (n - L->sinks) % L->chunk;
        const int32_t full_before = (kv->n_past - L->sinks) / L->chunk; // blocks compressed now
        if (off == 0 || c >= full_before) {
            continue;
        }
        // the block is cut in the middle: its kept tokens go back to the fp16 residual
        if (!buf && !(buf = malloc((size_t) L->chunk * kv->D * sizeof(float)))) {
            dq_set_err(err, es, "out of memory");
            return -1;
        }
        for (int sv = 0; sv < 2; sv++) {
            dq_kv_stream * s = sv ? &kv->layers[il].v : &kv->layers[il].k;
            dq_reconstruct(&s->p.cfg, block_at(L, s, c), L->chunk, buf);
            put_f16(s->resid, buf, (int64_t) off * kv->D);
        }
        free(buf); // chunks may differ between layers
        buf = NULL;
    }
    kv->n_past = n;
    return 0;
}

uint64_t dq_kv_settings_hash(const dq_kv_cache * kv) {
    uint64_t h = 0xcbf29ce484222325ULL;
    for (int il = 0; il < kv->n_layer; il++) {
        const dq_kv_layer * L = &kv->layers[il];
        // ring sizes only: a state without rings loads into a context of another n_ctx
        const int f16_ring = L->mode == DQ_KV_F16 && L->cap < kv->n_ctx;
        const int dq_ring  = L->mode == DQ_KV_DECOQUANT && L->n_slots < (kv->n_ctx - L->sinks) / L->chunk;
        const int32_t geo[6] = { L->mode, L->chunk, L->sinks, L->window, f16_ring ? L->cap : 0,
                                 dq_ring ? L->n_slots : 0 };
        h = dq_fnv1a(h, geo, sizeof geo);
        if (L->mode == DQ_KV_DECOQUANT) {
            h = dq_fnv1a(h, &L->k.p.cfg, sizeof L->k.p.cfg);
            h = dq_fnv1a(h, &L->v.p.cfg, sizeof L->v.p.cfg);
        }
    }
    return h;
}

// copies the used parts of the cache to (dir 0) or from (dir 1) buf; with buf NULL only counts
static size_t state_copy(dq_kv_cache * kv, uint8_t * buf, int32_t n, int dir) {
    size_t total = 0;
#define CP(ptr, bytes)                                   \
    do {                                                 \
        const size_t nb_ = (bytes);                      \
        if (buf && dir == 0) memcpy(buf + total, (ptr), nb_); \
        if (buf && dir == 1) memcpy((ptr), buf + total, nb_); \
        total += nb_;                                    \
    } while (0)
    for (int il = 0; il < kv->n_layer; il++) {
        dq_kv_layer * L = &kv->layers[il];
        for (int sv = 0; sv < 2; sv++) {
            dq_kv_stream * s = sv ? &L->v : &L->k;
            if (L->mode == DQ_KV_F16) {
                CP(s->rows, (size_t) min_i32(n, L->cap) * kv->D * 2); // a full ring: all of it
            } else {
                const int32_t ns = min_i32(n, L->sinks);
                const int32_t rest = n - ns, nb = rest / L->chunk, r = rest % L->chunk;
                CP(s->sink, (size_t) ns * kv->D * 2);
                CP(s->blocks, (size_t) min_i32(nb, L->n_slots) * s->block_bytes);
                CP(s->resid, (size_t) r * kv->D * 2);
            }
        }
    }
#undef CP
    return total;
}

size_t dq_kv_state_payload(const dq_kv_cache * kv, int32_t n) { return state_copy((dq_kv_cache *) kv, NULL, n, 0); }

void dq_kv_state_write(const dq_kv_cache * kv, uint8_t * dst) { state_copy((dq_kv_cache *) kv, dst, kv->n_past, 0); }

void dq_kv_state_read(dq_kv_cache * kv, const uint8_t * src, int32_t n, int32_t n_high) {
    state_copy(kv, (uint8_t *) src, n, 1);
    kv->n_past = n;
    kv->n_high = n_high;
}
