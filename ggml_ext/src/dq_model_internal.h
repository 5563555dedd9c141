// Internal structures of the runtime (model, KV cache, context, graph builders).
#ifndef DQ_MODEL_INTERNAL_H
#define DQ_MODEL_INTERNAL_H

#include "decoquant_model.h"

#include "ggml.h"
#include "ggml-alloc.h"
#include "ggml-backend.h"
#include "ggml-cpu.h"
#include "gguf.h"

#include <stdarg.h>
#include <stdio.h>

enum dq_arch { DQ_ARCH_LLAMA = 0, DQ_ARCH_QWEN2 = 1, DQ_ARCH_GEMMA3 = 2 };

typedef struct dq_layer {
    struct ggml_tensor * attn_norm;
    struct ggml_tensor * wq, * wk, * wv, * wo;
    struct ggml_tensor * bq, * bk, * bv, * bo;          // optional biases (qwen2: q, k, v)
    struct ggml_tensor * q_norm, * k_norm;               // gemma3
    struct ggml_tensor * attn_post_norm, * ffn_post_norm; // gemma3
    struct ggml_tensor * ffn_norm, * ffn_gate, * ffn_up, * ffn_down;
    int   is_swa;    // sliding-window layer (gemma3 local)
    float rope_base; // per layer (gemma3 local layers use another base)
    float rope_scale;
} dq_layer;

struct dq_model {
    int  arch;
    char arch_name[32];
    char path[512];
    int32_t n_vocab, n_ctx_train, n_embd, n_layer, n_head, n_head_kv, head_dim, n_ff, n_rot;
    int32_t rope_type; // GGML_ROPE_TYPE_NORMAL (0) or GGML_ROPE_TYPE_NEOX
    int32_t n_swa;
    float   eps, attn_scale, logit_softcap;
    struct ggml_tensor * tok_embd, * output_norm, * output;
    dq_layer * layers;

    struct gguf_context  * gguf;
    struct ggml_context  * ctx_meta;
    void                 * map;
    size_t                 map_size;
    ggml_backend_buffer_t  buf;
    struct ggml_context  * ctx_repack; // matmul weights copied into the CPU repack buffer type
    ggml_backend_buffer_t  buf_repack;
    int                    n_repacked;
    uint64_t               fingerprint;
};

// ---------------------------------------------------------------- KV cache

typedef struct dq_kv_stream {
    dq_kv_params p;          // cfg filled with the model's n_kv_heads and head_dim
    size_t   block_bytes;    // DQ: dq_block_size(cfg, chunk)
    uint16_t * rows;         // F16: [cap][D]
    uint16_t * sink;         // DQ: [sinks][D]
    uint8_t  * blocks;       // DQ: [n_slots][block_bytes]
    uint16_t * resid;        // DQ: [chunk][D]
} dq_kv_stream;

// One layer's K and V. Both share the mode, chunk, sinks and the ring geometry; a
// sliding-window layer keeps only the last tokens it can still see, in a ring.
typedef struct dq_kv_layer {
    int32_t mode;     // enum dq_kv_mode
    int32_t chunk;    // DQ: tokens per block
    int32_t sinks;    // DQ: first tokens kept fp16
    int32_t window;   // > 0: a sliding-window layer
    int32_t cap;      // F16: rows held; position p sits in row p % cap (cap == n_ctx: no ring)
    int32_t n_slots;  // DQ: block slots; chunk c sits in slot c % n_slots (all chunks of n_ctx: no ring)
    dq_kv_stream k, v;
} dq_kv_layer;

typedef struct dq_kv_cache {
    int32_t n_layer, n_ctx, n_kv, hd, D;
    dq_kv_layer * layers;     // [n_layer]
    uint8_t * mem;
    size_t    bytes;
    int32_t   n_past;
    int32_t   n_high;         // the most tokens held since the last reset: rings are valid back to it - cap
} dq_kv_cache;

// pk/pv: n_layer entries each (layer il uses pk[il], pv[il]); window[il] > 0 marks a sliding-window
// layer, which gets a ring sized for n_ubatch-token batches unless swa_full.
int  dq_kv_init(dq_kv_cache * kv, const dq_model * m, int32_t n_ctx, int32_t n_ubatch, const dq_kv_params * pk,
                const dq_kv_params * pv, const int32_t * window, int swa_full, char * err, size_t err_size);
// dq_kv_init without the allocation: the geometry and kv->bytes only (free with dq_kv_free)
int  dq_kv_plan(dq_kv_cache * kv, const dq_model * m, int32_t n_ctx, int32_t n_ubatch, const dq_kv_params * pk,
                const dq_kv_params * pv, const int32_t * window, int swa_full, char * err, size_t err_size);
void dq_kv_free(dq_kv_cache * kv);
int  dq_kv_all_f16(const dq_kv_cache * kv);
// Appends n rows (fp32 [n][D]) at positions pos0.. of layer il, one stream; the rows of one
// stream are split into `units` independent jobs (see dq_kv_cache.c).
int  dq_kv_append_units(const dq_kv_cache * kv, int il, int32_t pos0, int32_t n);
void dq_kv_append_unit(dq_kv_cache * kv, int il, int is_v, const float * x, int32_t pos0, int32_t n, int unit);
// Segments of layer il once n_kv tokens are cached; tokens at positions <= min_pos - window
// (window > 0) are left out. Returns the count (at most dq_kv_max_segs).
int  dq_kv_max_segs(const dq_kv_cache * kv);
int  dq_kv_segments(const dq_kv_cache * kv, int il, int32_t n_kv, int32_t min_pos, int32_t window, dq_segment * segs);
int  dq_kv_truncate(dq_kv_cache * kv, int32_t n, char * err, size_t err_size);
void dq_kv_reset(dq_kv_cache * kv);
uint64_t dq_kv_settings_hash(const dq_kv_cache * kv);
size_t dq_kv_state_payload(const dq_kv_cache * kv, int32_t n_past);
void dq_kv_state_write(const dq_kv_cache * kv, uint8_t * dst);
void dq_kv_state_read(dq_kv_cache * kv, const uint8_t * src, int32_t n_past, int32_t n_high);

// ---------------------------------------------------------------- graph

typedef struct dq_attn_op {
    dq_kv_cache * kv;
    int      il;
    dq_config cfg_k, cfg_v;
    int32_t  n_head, n_q, window, n_split;
    float    scale;
    dq_segment * segs;
    int32_t  n_segs;
    int32_t  n_kv;       // ggml flash-attention path: keys in the cache after the append
    int32_t  cap;        // ggml flash-attention path: rows of the layer's (ring) buffer
} dq_attn_op;

typedef struct dq_append_op {
    dq_kv_cache * kv;
    int     il;
    int32_t pos0, n;
} dq_append_op;

typedef struct dq_graph {
    struct ggml_context * ctx;
    const dq_model * m;
    dq_kv_cache    * kv;
    int32_t n_tokens, pos0, n_threads;
    int     attn_ggml;             // ggml_flash_attn_ext over the f16 cache
    ggml_backend_buffer_t kv_buf;  // the cache memory as a ggml buffer (attn_ggml)
    struct ggml_tensor * inp_tokens, * inp_pos;
    dq_attn_op   * attn_ops;   // [n_layer]
    dq_append_op * append_ops; // [n_layer]
    dq_segment   * segs;       // [n_layer][max_segs]
} dq_graph;

struct dq_context {
    dq_model * m;
    dq_context_params p;
    dq_kv_cache kv;
    ggml_backend_t backend;
    ggml_gallocr_t galloc;
    ggml_backend_buffer_t kv_buf;
    void   * meta;
    size_t   meta_size;
    dq_attn_op   * attn_ops;
    dq_append_op * append_ops;
    dq_segment   * segs;
    float  * logits;
    int32_t  n_outputs;
};

// the layers of each family: input embeddings in, hidden states [n_embd, n_tokens] out
struct ggml_tensor * dq_build_llama(dq_graph * g);
struct ggml_tensor * dq_build_gemma3(dq_graph * g);

// dq_graph_common.c
struct ggml_tensor * dq_g_norm(dq_graph * g, struct ggml_tensor * x, struct ggml_tensor * w);
struct ggml_tensor * dq_g_linear(dq_graph * g, struct ggml_tensor * w, struct ggml_tensor * b, struct ggml_tensor * x);
struct ggml_tensor * dq_g_rope(dq_graph * g, struct ggml_tensor * x, const dq_layer * L);
// K/V [hd, n_kv, n_tokens] (contiguous fp32) appended into the cache, then attention of q
// [hd, n_head, n_tokens] over it; returns [hd*n_head, n_tokens] (before the output projection)
struct ggml_tensor * dq_g_attention(dq_graph * g, int il, struct ggml_tensor * q, struct ggml_tensor * k,
                                    struct ggml_tensor * v, float scale, int32_t window);

void dq_set_err(char * err, size_t size, const char * fmt, ...) __attribute__((format(printf, 3, 4)));
uint64_t dq_fnv1a(uint64_t h, const void * data, size_t n);

#endif // DQ_MODEL_INTERNAL_H
