// A context: the KV cache plus the forward pass. Each ubatch is one ggml graph (the family's
// builder), allocated by ggml-alloc's gallocr and computed by the CPU backend with n_threads.
// Prefill goes in ubatches of n_ubatch tokens; decode is one token per call.
#include "dq_model_internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define DQ_GRAPH_NODES 16384

dq_kv_params dq_kv_default_params(int32_t mode, int32_t bits) {
    dq_kv_params p;
    memset(&p, 0, sizeof p);
    p.mode = mode;
    // the project's default preset (docs/RESULTS.md): asymmetric per-channel scales, 256-token chunks
    p.cfg  = (dq_config) { 0, 0, bits, DQ_SCALE_CHANNEL, 1, DQ_SCOPE_LAYER, 0.5f };
    p.chunk = 256;
    p.sinks = 0;
    return p;
}

dq_context_params dq_context_default_params(void) {
    dq_context_params p;
    memset(&p, 0, sizeof p);
    p.n_batch   = 512;
    p.n_ubatch  = 512;
    p.n_threads = 1;
    p.k = dq_kv_default_params(DQ_KV_F16, 4);
    p.v = dq_kv_default_params(DQ_KV_F16, 4);
    return p;
}

// the KV cache from the per-layer (or shared) K/V params; sliding-window layers get a ring.
// alloc 0: only its geometry and size (dq_kv_plan)
static int init_kv(dq_kv_cache * kv, const dq_model * m, const dq_context_params * p, int alloc, char * err,
                   size_t es) {
    if ((p->layer_k || p->layer_v) && (!p->layer_k || !p->layer_v || p->n_layer_kv != m->n_layer)) {
        dq_set_err(err, es, "per-layer KV params need layer_k and layer_v with n_layer_kv = %d entries (the model's "
                   "layers), got %d", m->n_layer, p->n_layer_kv);
        return -1;
    }
    dq_kv_params * pk = malloc((size_t) m->n_layer * sizeof *pk);
    dq_kv_params * pv = malloc((size_t) m->n_layer * sizeof *pv);
    int32_t * window  = malloc((size_t) m->n_layer * sizeof *window);
    int rc = -1;
    if (!pk || !pv || !window) {
        dq_set_err(err, es, "out of memory");
    } else {
        for (int il = 0; il < m->n_layer; il++) {
            pk[il] = p->layer_k ? p->layer_k[il] : p->k;
            pv[il] = p->layer_v ? p->layer_v[il] : p->v;
            window[il] = m->layers[il].is_swa ? m->n_swa : 0;
        }
        rc = (alloc ? dq_kv_init : dq_kv_plan)(kv, m, p->n_ctx, p->n_ubatch, pk, pv, window, p->swa_full, err, es);
    }
    free(pk);
    free(pv);
    free(window);
    return rc;
}

// the defaults filled in (n_ctx 0: the model's, ...)
static dq_context_params resolve_params(const dq_model * m, const dq_context_params * pp) {
    dq_context_params p = pp ? *pp : dq_context_default_params();
    if (p.n_ctx <= 0) {
        p.n_ctx = m->n_ctx_train;
    }
    if (p.n_batch <= 0) {
        p.n_batch = 512;
    }
    if (p.n_ubatch <= 0) {
        p.n_ubatch = p.n_batch < 512 ? p.n_batch : 512;
    }
    if (p.n_ubatch > p.n_batch) {
        p.n_ubatch = p.n_batch;
    }
    if (p.n_threads <= 0) {
        p.n_threads = 1;
    }
    return p;
}

size_t dq_kv_bytes(const dq_model * m, const dq_context_params * pp, char * err, size_t es) {
    if (err && es) {
        err[0] = 0;
    }
    if (!m) {
        dq_set_err(err, es, "no model");
        return 0;
    }
    const dq_context_params p = resolve_params(m, pp);
    dq_kv_cache kv;
    if (init_kv(&kv, m, &p, 0, err, es) != 0) {
        return 0;
    }
    const size_t bytes = kv.bytes;
    dq_kv_free(&kv);
    return bytes;
}

dq_context * dq_context_new(dq_model * m, const dq_context_params * pp, char * err, size_t es) {
    if (err && es) {
        err[0] = 0;
    }
    if (!m) {
        dq_set_err(err, es, "no model");
        return NULL;
    }
    const dq_context_params p = resolve_params(m, pp);
    if (p.n_threads > 256) {
        dq_set_err(err, es, "n_threads = %d is too large (at most 256)", p.n_threads);
        return NULL;
    }
    dq_context * c = calloc(1, sizeof *c);
    if (!c) {
        dq_set_err(err, es, "out of memory");
        return NULL;
    }
    c->m = m;
    c->p = p;
    c->p.layer_k = c->p.layer_v = NULL; // not kept: the caller owns the arrays
    if (init_kv(&c->kv, m, &p, 1, err, es) != 0) {
        free(c);
        return NULL;
    }
    c->backend = ggml_backend_cpu_init();
    c->galloc  = ggml_gallocr_new(ggml_backend_cpu_buffer_type());
    c->meta_size = ggml_tensor_overhead() * DQ_GRAPH_NODES + ggml_graph_overhead_custom(DQ_GRAPH_NODES, false);
    c->meta = malloc(c->meta_size);
    c->attn_ops   = calloc((size_t) m->n_layer, sizeof(dq_attn_op));
    c->append_ops = calloc((size_t) m->n_layer, sizeof(dq_append_op));
    c->segs       = calloc((size_t) m->n_layer * dq_kv_max_segs(&c->kv), sizeof(dq_segment));
    c->logits     = malloc((size_t) p.n_batch * m->n_vocab * sizeof(float));
    if (!c->backend || !c->galloc || !c->meta || !c->attn_ops || !c->append_ops || !c->segs || !c->logits) {
        dq_set_err(err, es, "out of memory (context)");
        dq_context_free(c);
        return NULL;
    }
    if (p.attn_impl == 1) {
        if (!dq_kv_all_f16(&c->kv)) {
            dq_set_err(err, es, "attn_impl 1 (ggml flash attention) needs the f16 cache");
            dq_context_free(c);
            return NULL;
        }
        c->kv_buf = ggml_backend_cpu_buffer_from_ptr(c->kv.mem, c->kv.bytes);
    } else if (p.attn_impl != 0) {
        dq_set_err(err, es, "attn_impl must be 0 (dq_attn) or 1 (ggml flash attention), got %d", p.attn_impl);
        dq_context_free(c);
        return NULL;
    }
    ggml_backend_cpu_set_n_threads(c->backend, p.n_threads);
    return c;
}

void dq_context_free(dq_context * c) {
    if (!c) {
        return;
    }
    if (c->galloc) {
        ggml_gallocr_free(c->galloc);
    }
    if (c->backend) {
        ggml_backend_free(c->backend);
    }
    if (c->kv_buf) {
        ggml_backend_buffer_free(c->kv_buf);
    }
    dq_kv_free(&c->kv);
    free(c->meta);
    free(c->attn_ops);
    free(c->append_ops);
    free(c->segs);
    free(c->logits);
    free(c);
}

// One ubatch: tokens[0..n) at positions n_past..; writes n_out logits rows (all or the last).
static int eval_ubatch(dq_context * c, const int32_t * tokens, int32_t n, int out_mode, float * logits, char * err,
                       size_t es) {
    const dq_model * m = c->m;
    struct ggml_init_params ip = { c->meta_size, c->meta, true };
    struct ggml_context * ctx = ggml_init(ip);
    if (!ctx) {
        dq_set_err(err, es, "ggml_init failed");
        return -1;
    }
    dq_graph g = { 0 };
    g.ctx = ctx; g.m = m; g.kv = &c->kv; g.n_tokens = n; g.pos0 = c->kv.n_past; g.n_threads = c->p.n_threads;
    g.attn_ggml = c->p.attn_impl == 1; g.kv_buf = c->kv_buf;
    g.attn_ops = c->attn_ops; g.append_ops = c->append_ops; g.segs = c->segs;
    g.inp_tokens = ggml_new_tensor_1d(ctx, GGML_TYPE_I32, n);
    g.inp_pos    = ggml_new_tensor_1d(ctx, GGML_TYPE_I32, n);
    ggml_set_input(g.inp_tokens);
    ggml_set_input(g.inp_pos);
    struct ggml_tensor * cur = m->arch == DQ_ARCH_GEMMA3 ? dq_build_gemma3(&g) : dq_build_llama(&g);
    struct ggml_tensor * res = cur;
    if (out_mode != 0) { // 1: all rows, 2: the last row
        if (out_mode == 2 && n > 1) {
            cur = ggml_view_2d(ctx, cur, cur->ne[0], 1, cur->nb[1], (size_t) (n - 1) * cur->nb[1]);
        }
        cur = dq_g_norm(&g, cur, m->output_norm);
        cur = ggml_mul_mat(ctx, m->output, cur);
        if (m->logit_softcap > 0.0f) {
            cur = ggml_scale(ctx, cur, 1.0f / m->logit_softcap);
            cur = ggml_tanh(ctx, cur);
            cur = ggml_scale(ctx, cur, m->logit_softcap);
        }
        ggml_set_output(cur);
        res = cur;
    }
    struct ggml_cgraph * gf = ggml_new_graph_custom(ctx, DQ_GRAPH_NODES, false);
    ggml_build_forward_expand(gf, res);
    if (!ggml_gallocr_alloc_graph(c->galloc, gf)) {
        dq_set_err(err, es, "could not allocate the compute graph");
        ggml_free(ctx);
        return -1;
    }
    memcpy(g.inp_tokens->data, tokens, (size_t) n * sizeof(int32_t));
    int32_t * pos = g.inp_pos->data;
    for (int32_t i = 0; i < n; i++) {
        pos[i] = c->kv.n_past + i;
    }
    if (ggml_backend_graph_compute(c->backend, gf) != GGML_STATUS_SUCCESS) {
        dq_set_err(err, es, "graph compute failed");
        ggml_free(ctx);
        return -1;
    }
    if (out_mode != 0) {
        memcpy(logits, res->data, ggml_nbytes(res));
    }
    c->kv.n_past += n;
    if (c->kv.n_past > c->kv.n_high) {
        c->kv.n_high = c->kv.n_past;
    }
    ggml_free(ctx);
    return 0;
}

int dq_context_eval(dq_context * c, const int32_t * tokens, int32_t n, int logits_all, char * err, size_t es) {
    if (err && es) {
        err[0] = 0;
    }
    if (!c || (!tokens && n > 0) || n <= 0) {
        dq_set_err(err, es, "eval: no tokens");
        return -1;
    }
    if ((int64_t) c->kv.n_past + n > c->kv.n_ctx) {
        dq_set_err(err, es, "context overflow: %d tokens in the cache + %d new > n_ctx = %d", c->kv.n_past, n,
                   c->kv.n_ctx);
        return -1;
    }
    for (int32_t i = 0; i < n; i++) {
        if (tokens[i] < 0 || tokens[i] >= c->m->n_vocab) {
            dq_set_err(err, es, "token %d at index %d is outside the vocabulary [0, %d)", tokens[i], i, c->m->n_vocab);
            return -1;
        }
    }
    if (logits_all && n > c->p.n_batch) {
        float * nl = realloc(c->logits, (size_t) n * c->m->n_vocab * sizeof(float));
        if (!nl) {
            dq_set_err(err, es, "out of memory for %d rows of logits", n);
            return -1;
        }
        c->logits = nl;
    }
    c->n_outputs = 0;
    for (int32_t i = 0; i < n; i += c->p.n_ubatch) {
        const int32_t nu = n - i < c->p.n_ubatch ? n - i : c->p.n_ubatch;
        const int last = i + nu == n;
        const int mode = logits_all ? 1 : (last ? 2 : 0);
        float * out = c->logits + (size_t) (logits_all ? i : 0) * c->m->n_vocab;
        if (eval_ubatch(c, tokens + i, nu, mode, out, err, es) != 0) {
            return -1;
        }
    }
    c->n_outputs = logits_all ? n : 1;
    return 0;
}

const float * dq_context_logits(const dq_context * c) { return c ? c->logits : NULL; }
int32_t dq_context_n_outputs(const dq_context * c) { return c ? c->n_outputs : 0; }
int32_t dq_context_n_past(const dq_context * c) { return c ? c->kv.n_past : 0; }
int32_t dq_context_n_ctx(const dq_context * c) { return c ? c->kv.n_ctx : 0; }
size_t  dq_context_kv_bytes(const dq_context * c) { return c ? c->kv.bytes : 0; }
double  dq_context_kv_bytes_per_token(const dq_context * c) {
    return c && c->kv.n_ctx > 0 ? (double) c->kv.bytes / c->kv.n_ctx : 0.0;
}

int dq_context_truncate(dq_context * c, int32_t n, char * err, size_t es) {
    if (!c) {
        return -1;
    }
    return dq_kv_truncate(&c->kv, n, err, es);
}

void dq_context_reset(dq_context * c) {
    if (c) {
        dq_kv_reset(&c->kv);
        c->n_outputs = 0;
    }
}

// ---------------------------------------------------------------- state

#define DQ_STATE_MAGIC   "DQKVSTAT"
#define DQ_STATE_VERSION 2

typedef struct dq_state_header {
    char     magic[8];
    uint32_t version;
    uint32_t header_size;
    uint64_t fingerprint;
    int32_t  n_layer, n_kv, head_dim, mode, chunk, sinks; // mode/chunk/sinks/cfg: layer 0's, for messages
    dq_config cfg_k, cfg_v;
    int32_t  n_past, n_ctx;
    int32_t  n_high, pad;      // the rings' high-water mark (see dq_kv_cache)
    uint64_t settings;         // dq_kv_settings_hash: every layer's mode, options and geometry
    uint64_t payload_size;
    uint64_t checksum; // FNV-1a 64 of the header (this field 0) and the payload
} dq_state_header;

size_t dq_context_state_size(const dq_context * c) {
    return c ? sizeof(dq_state_header) + dq_kv_state_payload(&c->kv, c->kv.n_past) : 0;
}

static void make_header(const dq_context * c, dq_state_header * h) {
    memset(h, 0, sizeof *h);
    memcpy(h->magic, DQ_STATE_MAGIC, 8);
    h->version = DQ_STATE_VERSION;
    h->header_size = sizeof *h;
    h->fingerprint = c->m->fingerprint;
    const dq_kv_layer * L = &c->kv.layers[0];
    h->n_layer = c->kv.n_layer; h->n_kv = c->kv.n_kv; h->head_dim = c->kv.hd; h->mode = L->mode;
    h->chunk = L->chunk; h->sinks = L->sinks;
    if (L->mode == DQ_KV_DECOQUANT) {
        h->cfg_k = L->k.p.cfg;
        h->cfg_v = L->v.p.cfg;
    }
    h->n_past = c->kv.n_past;
    h->n_ctx  = c->kv.n_ctx;
    h->n_high = c->kv.n_high;
    h->settings = dq_kv_settings_hash(&c->kv);
    h->payload_size = dq_kv_state_payload(&c->kv, c->kv.n_past);
}

int dq_context_state_save(const dq_context * c, void * dst, size_t size, size_t * written, char * err, size_t es) {
    if (!c || !dst) {
        dq_set_err(err, es, "state_save: no context or buffer");
        return -1;
    }
    const size_t need = dq_context_state_size(c);
    if (size < need) {
        dq_set_err(err, es, "state_save: the buffer holds %zu bytes, the state needs %zu", size, need);
        return -1;
    }
    dq_state_header h;
    make_header(c, &h);
    uint8_t * out = dst;
    dq_kv_state_write(&c->kv, out + sizeof h);
    uint64_t sum = dq_fnv1a(0xcbf29ce484222325ULL, &h, sizeof h);
    sum = dq_fnv1a(sum, out + sizeof h, h.payload_size);
    h.checksum = sum;
    memcpy(out, &h, sizeof h);
    if (written) {
        *written = need;
    }
    return 0;
}

int dq_context_state_load(dq_context * c, const void * src, size_t size, char * err, size_t es) {
    if (!c || !src) {
        dq_set_err(err, es, "state_load: no context or data");
        return -1;
    }
    dq_state_header h, mine;
    if (size < 8 || memcmp(src, DQ_STATE_MAGIC, 8) != 0) {
        dq_set_err(err, es, "state_load: not a DecoQuant KV state (bad magic)");
        return -1;
    }
    if (size < sizeof h) {
        dq_set_err(err, es, "state_load: truncated state (%zu bytes, the header alone is %zu)", size, sizeof h);
        return -1;
    }
    memcpy(&h, src, sizeof h);
    if (h.version != DQ_STATE_VERSION || h.header_size != sizeof h) {
        dq_set_err(err, es, "state_load: state version %u is not supported (this build reads version %d)", h.version,
                   DQ_STATE_VERSION);
        return -1;
    }
    make_header(c, &mine);
    if (h.fingerprint != mine.fingerprint || h.n_layer != mine.n_layer || h.n_kv != mine.n_kv ||
        h.head_dim != mine.head_dim) {
        dq_set_err(err, es, "state_load: the state was saved from another model (fingerprint %016llx, this model "
                   "%016llx)", (unsigned long long) h.fingerprint, (unsigned long long) mine.fingerprint);
        return -1;
    }
    if (h.settings != mine.settings) {
        dq_set_err(err, es, "state_load: the KV cache settings differ (state: layer 0 mode %d, K bits %d, V bits %d, "
                   "chunk %d, sinks %d; context: mode %d, K bits %d, V bits %d, chunk %d, sinks %d; or the per-layer "
                   "settings or sliding-window rings (n_ctx, n_ubatch) differ)", h.mode, h.cfg_k.bits, h.cfg_v.bits,
                   h.chunk, h.sinks, mine.mode, mine.cfg_k.bits, mine.cfg_v.bits, mine.chunk, mine.sinks);
        return -1;
    }
    if (h.n_past < 0 || h.n_past > c->kv.n_ctx || h.n_high < h.n_past || h.n_high > c->kv.n_ctx) {
        dq_set_err(err, es, "state_load: the state holds %d tokens (%d written), more than this context's "
                   "n_ctx = %d", h.n_past, h.n_high, c->kv.n_ctx);
        return -1;
    }
    const size_t payload = dq_kv_state_payload(&c->kv, h.n_past);
    if (h.payload_size != payload || size < sizeof h + payload) {
        dq_set_err(err, es, "state_load: truncated or inconsistent state (%zu bytes, expected %zu)", size,
                   sizeof h + payload);
        return -1;
    }
    const uint64_t want = h.checksum;
    h.checksum = 0;
    uint64_t sum = dq_fnv1a(0xcbf29ce484222325ULL, &h, sizeof h);
    sum = dq_fnv1a(sum, (const uint8_t *) src + sizeof h, payload);
    if (sum != want) {
        dq_set_err(err, es, "state_load: checksum mismatch (the state is corrupt)");
        return -1;
    }
    dq_kv_state_read(&c->kv, (const uint8_t *) src + sizeof h, h.n_past, h.n_high);
    c->n_outputs = 0;
    return 0;
}

int dq_context_state_save_file(const dq_context * c, const char * path, char * err, size_t es) {
    if (!c || !path) {
        dq_set_err(err, es, "state_save_file: no context or path");
        return -1;
    }
    const size_t n = dq_context_state_size(c);
    void * buf = malloc(n);
    if (!buf) {
        dq_set_err(err, es, "out of memory (%zu bytes)", n);
        return -1;
    }
    int rc = dq_context_state_save(c, buf, n, NULL, err, es);
    if (rc == 0) {
        FILE * f = fopen(path, "wb");
        if (!f || fwrite(buf, 1, n, f) != n) {
            dq_set_err(err, es, "state_save_file: cannot write %s", path);
            rc = -1;
        }
        if (f && fclose(f) != 0 && rc == 0) {
            dq_set_err(err, es, "state_save_file: cannot write %s", path);
            rc = -1;
        }
    }
    free(buf);
    return rc;
}

int dq_context_state_load_file(dq_context * c, const char * path, char * err, size_t es) {
    if (!c || !path) {
        dq_set_err(err, es, "state_load_file: no context or path");
        return -1;
    }
    FILE * f = fopen(path, "rb");
    if (!f) {
        dq_set_err(err, es, "state_load_file: cannot open %s", path);
        return -1;
    }
    fseek(f, 0, SEEK_END);
    const long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    void * buf = n > 0 ? malloc((size_t) n) : NULL;
    if (!buf || fread(buf, 1, (size_t) n, f) != (size_t) n) {
        fclose(f);
        free(buf);
        dq_set_err(err, es, "state_load_file: cannot read %s", path);
        return -1;
    }
    fclose(f);
    const int rc = dq_context_state_load(c, buf, (size_t) n, err, es);
    free(buf);
    return rc;
}
