// DecoQuant on NVIDIA GPUs (libdecoquant_cuda, built with -DDQ_CUDA=ON or -DGGML_CUDA=ON).
// Same block format as the CPU library (docs/FORMAT.md); every pointer below that says
// "device" is a CUDA device pointer, and work is queued on `stream` (NULL: the legacy
// default stream). Functions return enum dq_status values, or DQ_ERR_CUDA with the text in
// dq_cuda_last_error(). Kernels are built for sm_90 (H100/H200) only.
#ifndef DECOQUANT_CUDA_H
#define DECOQUANT_CUDA_H

#include "decoquant.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct CUstream_st * dq_cuda_stream; // the same handle as cudaStream_t

enum {
    DQ_ERR_CUDA        = 10, // a CUDA runtime error (dq_cuda_last_error)
    DQ_ERR_UNSUPPORTED = 11, // a shape the kernels do not handle
};

DQ_API const char * dq_cuda_version(void);
DQ_API const char * dq_cuda_last_error(void);
// Device 0's name, multiprocessor count and compute capability; DQ_ERR_CUDA without a GPU.
DQ_API int dq_cuda_device_info(char * name, int name_len, int * sm_count, int * cc_major, int * cc_minor);

// ---------------------------------------------------------------- decompose-on-append

// A batch of chunks (layers x chunks, K and V streams of one config) -> blocks, all on the
// GPU: Gram matrix, Jacobi eigensolve (double, the CPU's cyclic order), A = M W, B, then
// quantize and pack exactly as dq_decompose. Inputs must be finite (not checked here).
typedef struct dq_cuda_decompose_params {
    const dq_config * cfg;       // host pointer
    int32_t n_tokens;            // tokens per chunk
    int32_t n_chunks;
    int32_t x_f16;               // 0: x holds fp32, 1: fp16 (IEEE binary16)
    const void * x;              // device: chunk i at element offset i * x_stride, [n_tokens][n_kv][hd]
    int64_t x_stride;            // elements between chunks
    const void * const * x_ptrs; // device array [n_chunks] of chunk pointers, or NULL (use x)
    void * blocks;               // device: block i at byte offset i * block_stride
    int64_t block_stride;        // bytes, a multiple of 16, >= dq_block_size(cfg, n_tokens)
    void * const * block_ptrs;   // device array [n_chunks] of block pointers, or NULL (use blocks)
    void * work;                 // device, dq_cuda_decompose_work_size bytes
} dq_cuda_decompose_params;

DQ_API size_t dq_cuda_decompose_work_size(const dq_cuda_decompose_params * p);
DQ_API int    dq_cuda_decompose(const dq_cuda_decompose_params * p, dq_cuda_stream stream);

// ---------------------------------------------------------------- fused attention

// n_seq sequences, each: a block table of full blocks (`chunk` tokens each, positions
// i*chunk ..) and an FP16 span of res_len tokens after them (the residual window; for decode
// without a mask, sinks may be put there too since order does not matter).
typedef struct dq_cuda_attn_params {
    const dq_config * cfg_k;            // host pointers; n_kv_heads, head_dim from cfg_k
    const dq_config * cfg_v;
    int32_t n_head;                     // query heads, a multiple of n_kv_heads
    int32_t n_seq;
    int32_t n_q;                        // query rows per sequence (1: decode)
    int32_t chunk;                      // tokens per block
    const float * q;                    // device [n_seq][n_q][n_head][head_dim]
    const int32_t * q_pos;              // device [n_seq][n_q] positions for a causal mask, or NULL
    float scale;                        // softmax scale, usually 1/sqrt(head_dim)
    const void * const * k_blocks;      // device array of device block pointers
    const void * const * v_blocks;
    const int32_t * blk_start;          // device [n_seq + 1]: sequence s owns blocks [blk_start[s], blk_start[s+1])
    const uint16_t * const * k_res;     // device array [n_seq] of fp16 [res_len][n_kv][hd] (NULL where empty)
    const uint16_t * const * v_res;
    const int32_t * res_len;            // device [n_seq], or NULL: no FP16 span
    int32_t max_blocks;                 // host-side bounds over the sequences, for the launch shape
    int32_t max_res;
    int32_t n_split;                    // splits per (sequence, KV head); 0: chosen for the GPU
    int32_t path;                       // 0: fastest that applies, 1: fast (tensor cores), 2: generic
    int32_t variant;                    // fast path: 0 int8 tensor cores where GQA <= 4, else fp16; 1 int8 only; 2 fp16 only
    float * out;                        // device [n_seq][n_q][n_head][head_dim]
    void * work;                        // device, dq_cuda_attn_work_size bytes, zeroed once (dq_cuda_attn_work_init)
} dq_cuda_attn_params;

// The fast path (tensor cores): n_q == 1, no mask, 4-bit K and V, head_dim 128, chunk 128 * 2^k,
// token scales with one group (scope layer) or channel scales, up to 8 query heads per KV head
// (int8 kernel: up to 4, exact integer sums of a 15-bit q~ (23-bit with channel scales) and
// 15-bit fixed-point weights; fp16 kernel: codes as fp16 subnormals, ~22-bit q~, fp16 weights).
// Everything else (and path = 2) runs the generic fp32 kernel: any bits, scales, scope, head_dim,
// chunk and GQA whose shared memory (about 16*grp*head_dim + 256*head_dim bytes) fits in 200 KB,
// and causal prefill (q_pos).
DQ_API int    dq_cuda_attn_path(const dq_cuda_attn_params * p);   // 1 fast, 2 generic, < 0: -status
DQ_API int    dq_cuda_attn_splits(const dq_cuda_attn_params * p);
DQ_API size_t dq_cuda_attn_work_size(const dq_cuda_attn_params * p);
DQ_API int    dq_cuda_attn_work_init(const dq_cuda_attn_params * p, dq_cuda_stream stream);
DQ_API int    dq_cuda_attn(const dq_cuda_attn_params * p, dq_cuda_stream stream);

// Benchmark helper: one launch of `blocks` x `threads` that only reads `bytes` (a multiple of 16)
// from device memory `src` (16-byte aligned); `sink` is one device word, written only if a thread's
// XOR of its words is 0x9e3779b9. The read ceiling the attention is judged by.
DQ_API int    dq_cuda_read_probe(const void * src, size_t bytes, int blocks, int threads, void * sink,
                                 dq_cuda_stream stream);

#ifdef __cplusplus
}
#endif

#endif // DECOQUANT_CUDA_H
