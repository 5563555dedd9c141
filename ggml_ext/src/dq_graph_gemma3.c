// gemma3 (src/models/gemma3.cpp of llama.cpp): embeddings scaled by sqrt(n_embd), QK-norm,
// NEOX RoPE with a different base on the sliding-window (local) layers, Q scaled by
// 1/sqrt(head_dim) (then an attention scale of 1), post-attention and post-FFN norms, GeGLU FFN.
// Local layers (il % 6 < 5) attend to the last n_swa positions only.
#include "dq_model_internal.h"

#include <math.h>

struct ggml_tensor * dq_build_gemma3(dq_graph * g) {
    struct ggml_context * ctx = g->ctx;
    const dq_model * m = g->m;
    const int64_t n = g->n_tokens, hd = m->head_dim;
    struct ggml_tensor * inpL = ggml_get_rows(ctx, m->tok_embd, g->inp_tokens);
    inpL = ggml_scale(ctx, inpL, sqrtf((float) m->n_embd));
    for (int il = 0; il < m->n_layer; il++) {
        const dq_layer * L = &m->layers[il];
        struct ggml_tensor * cur = dq_g_norm(g, inpL, L->attn_norm);
        struct ggml_tensor * q = ggml_reshape_3d(ctx, dq_g_linear(g, L->wq, L->bq, cur), hd, m->n_head, n);
        struct ggml_tensor * k = ggml_reshape_3d(ctx, dq_g_linear(g, L->wk, L->bk, cur), hd, m->n_head_kv, n);
        struct ggml_tensor * v = ggml_reshape_3d(ctx, dq_g_linear(g, L->wv, L->bv, cur), hd, m->n_head_kv, n);
        q = dq_g_rope(g, dq_g_norm(g, q, L->q_norm), L);
        k = dq_g_rope(g, dq_g_norm(g, k, L->k_norm), L);
        q = ggml_scale(ctx, q, m->attn_scale);
        cur = dq_g_attention(g, il, q, k, v, 1.0f, L->is_swa ? m->n_swa : 0);
        cur = dq_g_linear(g, L->wo, L->bo, cur);
        cur = dq_g_norm(g, cur, L->attn_post_norm);
        struct ggml_tensor * sa_out = ggml_add(ctx, cur, inpL);
        cur = dq_g_norm(g, sa_out, L->ffn_norm);
        struct ggml_tensor * gate = ggml_mul_mat(ctx, L->ffn_gate, cur);
        struct ggml_tensor * up   = ggml_mul_mat(ctx, L->ffn_up, cur);
        cur = ggml_geglu_split(ctx, gate, up);
        cur = ggml_mul_mat(ctx, L->ffn_down, cur);
        cur = dq_g_norm(g, cur, L->ffn_post_norm);
        inpL = ggml_add(ctx, cur, sa_out);
    }
    return inpL;
}
