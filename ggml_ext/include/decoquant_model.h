// DecoQuant runtime: GGUF models (llama, qwen2, gemma3) on our own ggml graph, CPU, with an
// f16 or DecoQuant KV cache. The KV ops run inside the graph as ggml custom ops
// (decompose-on-append, dequant-in-attention). Errors come back as NULL / nonzero plus a message
// in a caller's buffer (err, err_size), never as a crash.
#ifndef DECOQUANT_MODEL_H
#define DECOQUANT_MODEL_H

#include "decoquant.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct dq_model   dq_model;
typedef struct dq_context dq_context;

enum dq_kv_mode {
    DQ_KV_F16       = 0, // fp16 rows, token-major (llama.cpp's f16 cache)
    DQ_KV_DECOQUANT = 1, // sinks fp16 + compressed chunks + fp16 residual for the chunk filling
};

// One stream (K or V) of one layer's cache. K and V must have the same mode, chunk and sinks;
// their dq_config fields (bits, scale mode, ...) may differ. n_kv_heads/head_dim are filled in
// from the model.
typedef struct dq_kv_params {
    int32_t   mode;   // enum dq_kv_mode
    dq_config cfg;    // DQ_KV_DECOQUANT only
    int32_t   chunk;  // tokens per compressed block (DQ_KV_DECOQUANT), e.g. 256
    int32_t   sinks;  // first tokens kept fp16 (DQ_KV_DECOQUANT)
} dq_kv_params;

typedef struct dq_context_params {
    int32_t n_ctx;     // 0: the model's training context
    int32_t n_batch;   // tokens per eval call chunk (ubatches are split from it); 0: 512
    int32_t n_ubatch;  // tokens per graph; 0: min(n_batch, 512)
    int32_t n_threads; // 0: 1
    dq_kv_params k;
    dq_kv_params v;
    int32_t attn_impl; // 0: dq_attn custom ops (default); 1: ggml_flash_attn_ext (f16 cache only:
                       // llama.cpp's own CPU attention numerics, for bit-level parity checks)
    // Per-layer settings (optional): n_layer_kv entries each, layer il uses layer_k[il] and
    // layer_v[il] instead of k and v; modes, bits and options may differ between layers (e.g. the
    // first layers f16). NULL / 0: every layer uses k and v. n_layer_kv must be the model's n_layer.
    const dq_kv_params * layer_k;
    const dq_kv_params * layer_v;
    int32_t n_layer_kv;
    int32_t swa_full;  // 1: sliding-window layers keep all n_ctx tokens (0: a ring of window + n_ubatch)
} dq_context_params;

typedef struct dq_model_info {
    char    arch[32];
    int32_t n_vocab, n_ctx_train, n_embd, n_layer, n_head, n_head_kv, head_dim, n_ff;
    int32_t n_swa;          // sliding window (gemma3), 0 if none
    uint64_t fingerprint;   // identifies the weights (used by saved states)
} dq_model_info;

DQ_API dq_context_params dq_context_default_params(void);
DQ_API dq_kv_params      dq_kv_default_params(int32_t mode, int32_t bits);

// Loads a GGUF (mmap'd). NULL on error, with the reason in err.
DQ_API dq_model * dq_model_load(const char * path, char * err, size_t err_size);
DQ_API void       dq_model_free(dq_model * m);
DQ_API int        dq_model_get_info(const dq_model * m, dq_model_info * info);
DQ_API int32_t    dq_model_n_vocab(const dq_model * m);
DQ_API const char * dq_model_supported_archs(void);

DQ_API dq_context * dq_context_new(dq_model * m, const dq_context_params * p, char * err, size_t err_size);
// The KV bytes dq_context_new(m, p) would allocate, without allocating (0 with err on bad params).
DQ_API size_t       dq_kv_bytes(const dq_model * m, const dq_context_params * p, char * err, size_t err_size);
DQ_API void         dq_context_free(dq_context * c);

// Evaluates n tokens after the n_past already in the cache. logits_all: 1 -> logits of every
// token ([n][n_vocab]), 0 -> of the last one. 0 on success, else nonzero with the error in err.
DQ_API int     dq_context_eval(dq_context * c, const int32_t * tokens, int32_t n, int logits_all,
                               char * err, size_t err_size);
DQ_API const float * dq_context_logits(const dq_context * c); // the last eval's logits
DQ_API int32_t dq_context_n_outputs(const dq_context * c);
DQ_API int32_t dq_context_n_past(const dq_context * c);
DQ_API int32_t dq_context_n_ctx(const dq_context * c);
DQ_API int     dq_context_truncate(dq_context * c, int32_t n, char * err, size_t err_size);
DQ_API void    dq_context_reset(dq_context * c);

// KV memory, allocated for n_ctx up front.
DQ_API size_t  dq_context_kv_bytes(const dq_context * c);
DQ_API double  dq_context_kv_bytes_per_token(const dq_context * c);

// State: versioned header, model fingerprint, KV settings, checksum.
DQ_API size_t  dq_context_state_size(const dq_context * c);
DQ_API int     dq_context_state_save(const dq_context * c, void * dst, size_t size, size_t * written,
                                     char * err, size_t err_size);
DQ_API int     dq_context_state_load(dq_context * c, const void * src, size_t size, char * err, size_t err_size);
DQ_API int     dq_context_state_save_file(const dq_context * c, const char * path, char * err, size_t err_size);
DQ_API int     dq_context_state_load_file(dq_context * c, const char * path, char * err, size_t err_size);

#ifdef __cplusplus
}
#endif

#endif // DECOQUANT_MODEL_H
