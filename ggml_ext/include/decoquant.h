// DecoQuant: KV-cache compression by matrix decomposition (arXiv 2405.12591).
// Public C API. The block format is specified in docs/FORMAT.md; the NumPy
// reference (py/decoquant/reference.py) is the truth these functions are tested against.
#ifndef DECOQUANT_H
#define DECOQUANT_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define DQ_API __attribute__((visibility("default")))

enum dq_scale_mode {
    DQ_SCALE_TOKEN   = 0, // one scale per token and scope group (the paper)
    DQ_SCALE_ROW     = 1, // one scale per 16 values
    DQ_SCALE_CHANNEL = 2, // one scale per channel per chunk
};

enum dq_scope {
    DQ_SCOPE_LAYER = 0, // one 16x16 B for all KV heads of the layer (the paper)
    DQ_SCOPE_HEAD  = 1, // one B per KV head
};

enum dq_status {
    DQ_OK            = 0,
    DQ_ERR_ARG       = 1, // a bad argument (shape, bits, option)
    DQ_ERR_NONFINITE = 2, // NaN or Inf in the input
    DQ_ERR_NOMEM     = 3,
};

// One K or V stream's settings.
typedef struct dq_config {
    int32_t n_kv_heads;
    int32_t head_dim;   // a multiple of 16
    int32_t bits;       // 2, 3, 4 or 8
    int32_t scale_mode; // enum dq_scale_mode
    int32_t asym;       // 0: symmetric absmax codes; 1: scale + min
    int32_t scope;      // enum dq_scope
    float   gauge;      // A = U S^gauge, B = S^(1-gauge) V^T; the paper uses 0.5
} dq_config;

// Byte offsets of a block's sections (docs/FORMAT.md), for n_tokens tokens.
typedef struct dq_layout {
    size_t b;        // fp16 [G][16][16]
    size_t cparam;   // fp16 [npar][D]           (channel mode only)
    size_t tparam;   // fp16 [npar][n][S]        (token: S = G; row: S = D/16)
    size_t codes;    // u8 [n_kv_heads][n][head_dim/16][2*bits]
    size_t size;     // whole block, a multiple of 16
} dq_layout;

DQ_API const char * dq_version(void);
DQ_API const char * dq_status_str(int status);

// Checks a config; returns DQ_OK or DQ_ERR_ARG.
DQ_API int    dq_config_check(const dq_config * cfg);
DQ_API int    dq_groups(const dq_config * cfg); // G: 1 or n_kv_heads
DQ_API dq_layout dq_block_layout(const dq_config * cfg, int32_t n_tokens);
DQ_API size_t dq_block_size(const dq_config * cfg, int32_t n_tokens);
// Bits per value of a block of n tokens, scales and B included.
DQ_API double dq_bits_per_value(const dq_config * cfg, int32_t n_tokens);

// Exact split M[n_rows, 16] = A @ B, A = U S^gauge, B = S^(1-gauge) V^T, canonical signs.
// Uses the 16x16 Gram matrix and a double-precision Jacobi eigensolver.
DQ_API int dq_factor(const float * m, int64_t n_rows, float gauge, float * a, float * b);

// Decompose-on-append: x[n_tokens][n_kv_heads][head_dim] (fp32) -> one block.
// `block` must hold dq_block_size(cfg, n_tokens) bytes. `scratch` may be NULL (allocates).
DQ_API int dq_decompose(const dq_config * cfg, const float * x, int32_t n_tokens, void * block);

// Rebuilds x[n_tokens][n_kv_heads][head_dim] from a block (tests and tools).
DQ_API int dq_reconstruct(const dq_config * cfg, const void * block, int32_t n_tokens, float * x);

// Unpacked codes u[n_tokens][D/16][16] (tests), in token order.
DQ_API int dq_block_codes(const dq_config * cfg, const void * block, int32_t n_tokens, uint8_t * codes);

// ---------------------------------------------------------------- attention

enum dq_seg_kind {
    DQ_SEG_F16   = 0, // k, v: fp16 [n][n_kv_heads][head_dim] (token-major, like llama.cpp's cache)
    DQ_SEG_BLOCK = 1, // k, v: DecoQuant blocks of n tokens (cfg_k, cfg_v)
};

// A span of cached tokens at positions pos0 .. pos0 + n_tokens - 1.
typedef struct dq_segment {
    const void * k;
    const void * v;
    int32_t n_tokens;
    int32_t pos0;
    int32_t kind; // enum dq_seg_kind
    int32_t pad;
} dq_segment;

typedef struct dq_attn_params {
    const dq_config * cfg_k; // n_kv_heads and head_dim are taken from cfg_k
    const dq_config * cfg_v;
    int32_t n_head;          // query heads, a multiple of n_kv_heads (GQA)
    int32_t n_q;             // query rows
    const float * q;         // [n_q][n_head][head_dim]
    const int32_t * q_pos;   // [n_q]; NULL: no causal mask
    float scale;             // usually 1/sqrt(head_dim)
    const dq_segment * segs;
    int32_t n_segs;
    int32_t n_split;         // splits of the segment list (flash-decoding); 0: chosen from nth
    float * out;             // [n_q][n_head][head_dim]
    float * work;            // dq_attn_work_size floats
    int32_t window;          // sliding window (0: none): keys at k_pos <= q_pos - window are masked
                             // (needs q_pos); segments wholly outside it are skipped
} dq_attn_params;

// Floats of workspace for nth threads (partial softmax states of each split).
DQ_API size_t dq_attn_work_size(const dq_attn_params * p, int nth);
DQ_API int    dq_attn_splits(const dq_attn_params * p, int nth);
// Phase 1: thread ith of nth computes its share of (row, kv head, split) partials.
DQ_API void   dq_attn(const dq_attn_params * p, int ith, int nth);
// Phase 2, after all threads finished phase 1: merge splits into out.
DQ_API void   dq_attn_reduce(const dq_attn_params * p, int ith, int nth);
// Both phases on n_threads pthreads (allocates work if p->work is NULL).
DQ_API int    dq_attn_run(dq_attn_params * p, int n_threads);
// Runs both phases `iters` times on persistent threads; times[it] gets each run's seconds.
DQ_API int    dq_attn_bench(dq_attn_params * p, int n_threads, int iters, double * times);

// Which kernel set runs here: "avx512", "avx2" or "scalar".
DQ_API const char * dq_cpu_kernels(void);
// Forces the scalar kernels (1) or the best available (0); for tests and benches.
DQ_API void dq_force_scalar(int on);

// fp16 <-> fp32 (IEEE binary16, round to nearest even).
DQ_API uint16_t dq_fp32_to_fp16(float f);
DQ_API float    dq_fp16_to_fp32(uint16_t h);
DQ_API void     dq_fp32_to_fp16_row(const float * x, uint16_t * y, int64_t n);

#ifdef __cplusplus
}
#endif

#endif // DECOQUANT_H
