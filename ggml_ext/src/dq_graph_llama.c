// llama and qwen2 (src/models/llama.cpp, qwen2.cpp of llama.cpp): pre-norm blocks, RMS norm,
// RoPE (llama: NORM, qwen2: NEOX), GQA attention, SwiGLU FFN. qwen2 adds Q/K/V biases; SmolLM2
// ties the output to the token embeddings (handled by the loader).
#include "dq_model_internal.h"

struct ggml_tensor * dq_build_llama(dq_graph * g) {
    struct ggml_context * ctx = g->ctx;
    const dq_model * m = g->m;
    const int64_t n = g->n_tokens, hd = m->head_dim;
    struct ggml_tensor * inpL = ggml_get_rows(ctx, m->tok_embd, g->inp_tokens);
    for (int il = 0; il < m->n_layer; il++) {
        const dq_layer * L = &m->layers[il];
        struct ggml_tensor * cur = dq_g_norm(g, inpL, L->attn_norm);
        struct ggml_tensor * q = ggml_reshape_3d(ctx, dq_g_linear(g, L->wq, L->bq, cur), hd, m->n_head, n);
        struct ggml_tensor * k = ggml_reshape_3d(ctx, dq_g_linear(g, L->wk, L->bk, cur), hd, m->n_head_kv, n);
        struct ggml_tensor * v = ggml_reshape_3d(ctx, dq_g_linear(g, L->wv, L->bv, cur), hd, m->n_head_kv, n);
        q = dq_g_rope(g, q, L);
        k = dq_g_rope(g, k, L);
        cur = dq_g_attention(g, il, q, k, v, m->attn_scale, 0);
        cur = dq_g_linear(g, L->wo, L->bo, cur);
        struct ggml_tensor * ffn_inp = ggml_add(ctx, cur, inpL);
        cur = dq_g_norm(g, ffn_inp, L->ffn_norm);
        struct ggml_tensor * gate = ggml_mul_mat(ctx, L->ffn_gate, cur);
        struct ggml_tensor * up   = ggml_mul_mat(ctx, L->ffn_up, cur);
        cur = ggml_swiglu_split(ctx, gate, up);
        cur = ggml_mul_mat(ctx, L->ffn_down, cur);
        inpL = ggml_add(ctx, cur, ffn_inp);
    }
    return inpL;
}
