// Graph pieces shared by the families: RMS norm, linear layers, RoPE, and the attention block
// whose KV work runs as two/three ggml custom ops threaded by ggml's (ith, nth):
//   append    (k, v)            -> dummy : writes the new rows into the cache; compresses every
//                                          chunk that fills (decompose-on-append)
//   attn      (q, pos, append)  -> work  : dq_attn partials over the cache segments
//   reduce    (work, q, pos)    -> out   : dq_attn_reduce, merging the splits (flash-decoding)
#include "dq_model_internal.h"

#include <string.h>

struct ggml_tensor * dq_g_norm(dq_graph * g, struct ggml_tensor * x, struct ggml_tensor * w) {
    x = ggml_rms_norm(g->ctx, x, g->m->eps);
    return w ? ggml_mul(g->ctx, x, w) : x;
}

struct ggml_tensor * dq_g_linear(dq_graph * g, struct ggml_tensor * w, struct ggml_tensor * b, struct ggml_tensor * x) {
    struct ggml_tensor * y = ggml_mul_mat(g->ctx, w, x);
    return b ? ggml_add(g->ctx, y, b) : y;
}

struct ggml_tensor * dq_g_rope(dq_graph * g, struct ggml_tensor * x, const dq_layer * L) {
    // no YaRN: ext_factor 0, attn_factor 1, beta_fast 32, beta_slow 1 (llama.cpp's defaults)
    return ggml_rope_ext(g->ctx, x, g->inp_pos, NULL, g->m->n_rot, g->m->rope_type, g->m->n_ctx_train, L->rope_base,
                         L->rope_scale, 0.0f, 1.0f, 32.0f, 1.0f);
}

static void append_fn(struct ggml_tensor * dst, int ith, int nth, void * ud) {
    dq_append_op * op = ud;
    const float * k = dst->src[0]->data, * v = dst->src[1]->data;
    const int U = dq_kv_append_units(op->kv, op->il, op->pos0, op->n);
    // units alternate K, V: with two threads one takes K and the other V
    for (int u = ith; u < 2 * U; u += nth) {
        const int is_v = u & 1;
        dq_kv_append_unit(op->kv, op->il, is_v, is_v ? v : k, op->pos0, op->n, u >> 1);
    }
}

static void fill_params(dq_attn_params * p, const dq_attn_op * op, const struct ggml_tensor * q,
                        const struct ggml_tensor * pos) {
    memset(p, 0, sizeof *p);
    p->cfg_k   = &op->cfg_k;
    p->cfg_v   = &op->cfg_v;
    p->n_head  = op->n_head;
    p->n_q     = op->n_q;
    p->q       = q->data;
    p->q_pos   = pos->data;
    p->scale   = op->scale;
    p->segs    = op->segs;
    p->n_segs  = op->n_segs;
    p->n_split = op->n_split;
    p->window  = op->window;
}

static void attn_fn(struct ggml_tensor * dst, int ith, int nth, void * ud) {
    dq_attn_params p;
    fill_params(&p, ud, dst->src[0], dst->src[1]);
    p.work = dst->data;
    dq_attn(&p, ith, nth);
}

static void reduce_fn(struct ggml_tensor * dst, int ith, int nth, void * ud) {
    dq_attn_params p;
    fill_params(&p, ud, dst->src[1], dst->src[2]);
    p.work = dst->src[0]->data;
    p.out  = dst->data;
    dq_attn_reduce(&p, ith, nth);
}

// the KQ mask of the ggml flash-attention path: 0 where visible, -inf elsewhere (causal, window)
static void mask_fn(struct ggml_tensor * dst, int ith, int nth, void * ud) {
    const dq_attn_op * op = ud;
    const int32_t * pos = dst->src[1]->data;
    const uint16_t ninf = 0xFC00;
    for (int32_t i = ith; i < op->n_q; i += nth) {
        uint16_t * row = (uint16_t *) ((char *) dst->data + (size_t) i * dst->nb[1]);
        const int32_t p = pos[i];
        const int32_t n_cols = op->n_kv < op->cap ? op->n_kv : op->cap;
        // row j holds the newest position of its ring slot: base + j up to the last one written
        // (row `last`), base - cap + j after it
        const int32_t base = (op->n_kv - 1) / op->cap * op->cap, last = (op->n_kv - 1) % op->cap;
        for (int32_t j = 0; j < n_cols; j++) {
            const int32_t pj = j <= last ? base + j : base - op->cap + j;
            const int vis = pj <= p && !(op->window > 0 && pj <= p - op->window);
            row[j] = vis ? 0 : ninf;
        }
    }
}

static struct ggml_tensor * attention_ggml(dq_graph * g, int il, struct ggml_tensor * q, struct ggml_tensor * dep,
                                           float scale, int32_t window) {
    struct ggml_context * ctx = g->ctx;
    const dq_model * m = g->m;
    dq_kv_cache * kv = g->kv;
    const dq_kv_layer * L = &kv->layers[il];
    const int32_t n = g->n_tokens, n_kv = g->pos0 + n, n_cols = n_kv < L->cap ? n_kv : L->cap;
    dq_attn_op * op = &g->attn_ops[il];
    memset(op, 0, sizeof *op);
    op->n_q = n; op->n_kv = n_kv; op->cap = L->cap; op->window = window;
    struct ggml_tensor * args_m[2] = { dep, g->inp_pos };
    struct ggml_tensor * mask = ggml_custom_4d(ctx, GGML_TYPE_F16, n_cols, n, 1, 1, args_m, 2, mask_fn,
                                               GGML_N_TASKS_MAX, op);
    struct ggml_tensor * kc = ggml_new_tensor_3d(ctx, GGML_TYPE_F16, m->head_dim, m->n_head_kv, n_cols);
    struct ggml_tensor * vc = ggml_new_tensor_3d(ctx, GGML_TYPE_F16, m->head_dim, m->n_head_kv, n_cols);
    ggml_backend_tensor_alloc(g->kv_buf, kc, L->k.rows);
    ggml_backend_tensor_alloc(g->kv_buf, vc, L->v.rows);
    struct ggml_tensor * k = ggml_permute(ctx, kc, 0, 2, 1, 3);
    struct ggml_tensor * v = ggml_permute(ctx, vc, 0, 2, 1, 3);
    q = ggml_permute(ctx, q, 0, 2, 1, 3);
    struct ggml_tensor * out = ggml_flash_attn_ext(ctx, q, k, v, mask, scale, 0.0f, 0.0f);
    ggml_prec_set_acc(out, GGML_PREC_F32);
    return ggml_reshape_2d(ctx, out, (int64_t) m->head_dim * m->n_head, n);
}

struct ggml_tensor * dq_g_attention(dq_graph * g, int il, struct ggml_tensor * q, struct ggml_tensor * k,
                                    struct ggml_tensor * v, float scale, int32_t window) {
    struct ggml_context * ctx = g->ctx;
    const dq_model * m = g->m;
    dq_kv_cache * kv = g->kv;
    const int32_t n = g->n_tokens;

    dq_append_op * ap = &g->append_ops[il];
    *ap = (dq_append_op) { kv, il, g->pos0, n };
    k = ggml_cont(ctx, k); // no-ops when already contiguous
    v = ggml_cont(ctx, v);
    struct ggml_tensor * args_a[2] = { k, v };
    struct ggml_tensor * dep = ggml_custom_4d(ctx, GGML_TYPE_F32, 1, 1, 1, 1, args_a, 2, append_fn, GGML_N_TASKS_MAX, ap);

    if (g->attn_ggml) {
        return attention_ggml(g, il, q, dep, scale, window);
    }
    dq_attn_op * op = &g->attn_ops[il];
    memset(op, 0, sizeof *op);
    op->kv      = kv;
    op->il      = il;
    op->cfg_k   = kv->layers[il].k.p.cfg;
    op->cfg_v   = kv->layers[il].v.p.cfg;
    op->n_head  = m->n_head;
    op->n_q     = n;
    op->window  = window;
    op->scale   = scale;
    op->segs    = g->segs + (size_t) il * dq_kv_max_segs(kv);
    op->n_segs  = dq_kv_segments(kv, il, g->pos0 + n, g->pos0, window, op->segs);
    dq_attn_params p;
    memset(&p, 0, sizeof p);
    p.cfg_k = &op->cfg_k; p.cfg_v = &op->cfg_v; p.n_head = op->n_head; p.n_q = n; p.n_segs = op->n_segs;
    op->n_split = dq_attn_splits(&p, g->n_threads);
    p.n_split   = op->n_split;
    const size_t work = dq_attn_work_size(&p, g->n_threads);

    q = ggml_cont(ctx, q);
    struct ggml_tensor * args_w[3] = { q, g->inp_pos, dep };
    struct ggml_tensor * w = ggml_custom_4d(ctx, GGML_TYPE_F32, (int64_t) work, 1, 1, 1, args_w, 3, attn_fn,
                                           GGML_N_TASKS_MAX, op);
    struct ggml_tensor * args_r[3] = { w, q, g->inp_pos };
    struct ggml_tensor * out = ggml_custom_4d(ctx, GGML_TYPE_F32, m->head_dim, m->n_head, n, 1, args_r, 3, reduce_fn,
                                              GGML_N_TASKS_MAX, op);
    return ggml_reshape_2d(ctx, out, (int64_t) m->head_dim * m->n_head, n);
}
