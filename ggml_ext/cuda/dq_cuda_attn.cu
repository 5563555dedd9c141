// Fused dequant-in-attention on the GPU, straight from DecoQuant blocks (docs/FORMAT.md).
//
// Fast path (decode, 4-bit, head_dim 128, blocks of a multiple of 128 tokens; token scales with
// one group, or channel scales; up to 8 query heads per KV head): flash-decoding. A CTA of FW
// warps owns one (sequence, KV head, split); each warp takes whole units (128 tokens of a
// block, or 32 tokens of the FP16 span) with its own online-softmax state; the CTA merges its
// warps and the last CTA of a (sequence, KV head) merges the splits (no second launch).
// Per 128-token unit a warp:
//   - streams the head's 8 KB of K codes and 8 KB of V codes (plus B and scales) into a
//     two-slot shared-memory ring with 16-byte cp.async (the next unit's K lands while this
//     unit's V is used, and the other way round); 16-byte pieces are XOR-swizzled per token
//     pair so that both the K loads and the V ldmatrix.trans are free of bank conflicts;
//   - q~ = B q per 16-row on the tensor cores (B exact in fp16, q as fp16 hi + lo), channel
//     scales folded in, re-split into fp16 hi + lo (about 22 bits) as the A operand of
//     S[head][token] = q^ . u, mma.m16n8k16 with rows = heads (hi in rows 0-7, lo in rows 8-15)
//     and the codes as the B operand: one LOP3 turns two 4-bit codes into two fp16 subnormals
//     u * 2^-24 (the k dimension is permuted so that a thread's 16-byte load is exactly its
//     fragment); sum(q^) comes from the same MMA against a constant all-ones fragment;
//   - online softmax in fp32 (exp2); the weights stay in registers and are exactly the B
//     operand of the V product: out^T[channel][head] = sum_t u^T[channel][t] p[t][head]
//     (codes transposed by ldmatrix.trans, V's token scales folded into p);
//   - A-space to output once per unit: out[head][16r + j] += A[head][16r + i] B_v[i][j], again on
//     the tensor cores (A-space split into fp16 hi + lo).
// GQA <= 4 takes the int8 variant of the fast path instead (dq_cuda_attn_i8.cuh: integer
// tensor-core products, about half the instructions per byte).
// Generic path (all formats, causal prefill, any shape): one CTA per (sequence, query row,
// KV head, split), tiles of 32 tokens dequantized into shared memory, fp32 throughout, and a
// merge kernel. It is the fallback and the cross-check; it is not tuned.
#include "dq_cuda_common.h"

#include <limits.h>
#include <math.h>

namespace {

constexpr int FW = 3;            // warps per CTA (fast path)
constexpr int SU = 128;          // tokens per unit of a block (fast path)
constexpr int HD = 128;          // head_dim (fast path)
constexpr int SLOT = 9216;       // bytes of one ring slot: codes 8192 | B 512 | scales 256 | mins 256
constexpr int SLOT_B = 8192;
constexpr int SLOT_P = 8704;
constexpr int FT = 20;           // uint32 per (part, head, t) row of F (16 used)
constexpr int AS_ROW = 24;       // halves per row of the A-space transpose buffer (16 used)
constexpr int RP = 32;           // FP16 tokens per unit
constexpr int RS = 272;          // bytes per FP16 row in a slot (256 + 16: no bank conflicts)
constexpr int MAX_SPLIT = 64;
constexpr float LOG2E = 1.4426950408889634f;

enum { HM, HL, HC, HF, HQC, HSP, HSPLO, HNV };

template <int NH> struct FastScratch {
    static constexpr int F_BYTES = 2 * NH * 4 * FT * 4;                      // q^ fragments, hi and lo
    static constexpr int AS_BYTES = 2 * (NH * 8 * AS_ROW * 2 + NH * 16);     // A-space hi and lo (+ pad)
    static constexpr int PF_BYTES = NH * RP * 4;                             // FP16 span weights
    static constexpr int BYTES = F_BYTES > AS_BYTES ? (F_BYTES > PF_BYTES ? F_BYTES : PF_BYTES)
                                                    : (AS_BYTES > PF_BYTES ? AS_BYTES : PF_BYTES);
};

template <int NH> struct __align__(16) WarpSmem {
    uint8_t slot[2][SLOT];
    uint8_t scratch[(FastScratch<NH>::BYTES + 15) / 16 * 16];
    float hv[HNV][NH];
};

struct Side {
    int asym;
    float zp;
    int64_t off_b, off_par, off_min, codes;
    int par_hstep, bhead;
};

struct FastArgs {
    const float * q;
    float cscale;
    const void * const * kb;
    const void * const * vb;
    const int32_t * blk_start;
    const uint16_t * const * kres;
    const uint16_t * const * vres;
    const int32_t * res_len;
    int n_head, nkv, grp, ns, chunk, lsub; // 2^lsub units of 128 tokens per block
    Side k, v;
    float * out;
    float * ws_o;
    float2 * ws_ml;
    int * cnt;
};

__device__ __forceinline__ uint32_t smem_addr(const void * p) { return (uint32_t) __cvta_generic_to_shared(p); }

__device__ __forceinline__ void cp16(void * dst, const void * src, int src_bytes) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(dst)), "l"(src), "r"(src_bytes)
                 : "memory");
}
__device__ __forceinline__ void cp_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N> __device__ __forceinline__ void cp_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory"); }

__device__ __forceinline__ void mma16816(float (&d)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3, uint32_t b0,
                                         uint32_t b1) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

__device__ __forceinline__ void ldsm4(uint32_t (&r)[4], const void * p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_addr(p)));
}
__device__ __forceinline__ void ldsm4t(uint32_t (&r)[4], const void * p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_addr(p)));
}

// Two 4-bit codes (bits 0-3 of each 16-bit half) -> fp16x2 subnormals u * 2^-24; bits 4-7 ->
// 16u * 2^-24. The tensor cores take fp16 subnormals exactly (checked by tests/test_cuda.py).
__device__ __forceinline__ uint32_t nib_lo(uint32_t w) { return w & 0x000f000fu; }
__device__ __forceinline__ uint32_t nib_hi(uint32_t w) { return w & 0x00f000f0u; }

__device__ __forceinline__ float fexp2(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
    return y;
}

__device__ __forceinline__ float h2f(uint16_t h) { return __half2float(__ushort_as_half(h)); }
__device__ __forceinline__ float2 h22f(uint32_t v) {
    return make_float2(h2f((uint16_t) (v & 0xffff)), h2f((uint16_t) (v >> 16)));
}
__device__ __forceinline__ uint32_t pack2f(float lo, float hi) { // fp32 pair -> fp16x2 (rn)
    const __half2 h = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<const uint32_t *>(&h);
}
__device__ __forceinline__ float pow2i(int e) { return __int_as_float((127 + e) << 23); } // e in [-126, 127]
__device__ __forceinline__ int ilog2f(float x) { return ((__float_as_int(x) >> 23) & 0xff) - 127; }
__device__ __forceinline__ uint32_t word4(const uint4 & v, int i) { return i == 0 ? v.x : i == 1 ? v.y : i == 2 ? v.z : v.w; }

// Queue the copies of unit u's K (which = 0) or V (which = 1) into `dst` and commit a group
// (an empty group past the range keeps the group count uniform).
__device__ __forceinline__ void issue_unit(const FastArgs & a, uint8_t * dst, int u, int u1, int which, int seq, int kvh,
                                           int b0, int nbu, int nres, int lane, int sw_off) {
    if (u < u1) {
        if (u < nbu) {
            const Side & s = which ? a.v : a.k;
            const int blk_i = u >> a.lsub, sub = u & ((1 << a.lsub) - 1);
            const uint8_t * blk = (const uint8_t *) (which ? a.vb : a.kb)[b0 + blk_i];
            const uint8_t * codes = blk + s.codes + ((int64_t) kvh * a.chunk + sub * SU) * (HD / 2) + lane * 16;
#pragma unroll 4
            for (int k = 0; k < 16; k++) {
                cp16(dst + sw_off + k * 512, codes + k * 512, 16);
            }
            cp16(dst + SLOT_B + lane * 16, blk + s.off_b + (s.bhead ? kvh * 512 : 0) + lane * 16, 16);
            const int poff = s.par_hstep ? 0 : sub * 2 * SU; // token scales: this unit's 128 tokens
            if (lane < 16) {
                cp16(dst + SLOT_P + lane * 16, blk + s.off_par + (int64_t) kvh * s.par_hstep + poff + lane * 16, 16);
            } else if (s.asym) {
                cp16(dst + SLOT_P + lane * 16, blk + s.off_min + (int64_t) kvh * s.par_hstep + poff + (lane - 16) * 16, 16);
            }
        } else {
            const int tok0 = (u - nbu) * RP;
            const int n = nres - tok0 < RP ? nres - tok0 : RP;
            const uint8_t * base = (const uint8_t *) (which ? a.vres : a.kres)[seq];
#pragma unroll 1
            for (int k = 0; k < 16; k++) {
                const int ci = lane + 32 * k, l = ci >> 4, qq = ci & 15;
                const bool valid = l < n;
                const uint8_t * src = valid ? base + (((int64_t) (tok0 + l) * a.nkv + kvh) * HD) * 2 + qq * 16 : base;
                cp16(dst + l * RS + qq * 16, src, valid ? 16 : 0);
            }
        }
    }
    cp_commit();
}

// The CTA's warps have written their (max, sum) to hv and their outputs to slot[0]: merge them
// into this split's partial; the last CTA of a (sequence, KV head) then merges the splits.
template <int NH, int W, typename WS>
__device__ __forceinline__ void merge_splits(const FastArgs & a, WS * all, int seq, int kvh, int split, int grp,
                                             int * s_last_p) {
    int & s_last = *s_last_p;
    const int64_t row = (int64_t) seq * a.nkv + kvh;
    float * wo = a.ws_o + (row * a.ns + split) * NH * HD;
    float2 * wml = a.ws_ml + (row * a.ns + split) * NH;
    for (int i = threadIdx.x; i < grp * HD; i += W * 32) {
        const int h = i / HD, c = i % HD;
        float M = -INFINITY;
#pragma unroll
        for (int w = 0; w < W; w++) {
            M = fmaxf(M, all[w].hv[HM][h]);
        }
        float o = 0.0f, L = 0.0f;
        if (M != -INFINITY) {
#pragma unroll
            for (int w = 0; w < W; w++) {
                const float mw = all[w].hv[HM][h];
                if (mw != -INFINITY) {
                    const float f = fexp2(mw - M);
                    o = fmaf(f, reinterpret_cast<const float *>(all[w].slot[0])[h * HD + c], o);
                    L = fmaf(f, all[w].hv[HL][h], L);
                }
            }
        }
        wo[h * HD + c] = o;
        if (c == 0) {
            wml[h] = make_float2(M, L);
        }
    }
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) {
        const int prev = atomicAdd(a.cnt + row, 1);
        s_last = prev == a.ns - 1;
    }
    __syncthreads();
    if (!s_last) {
        return;
    }
    __threadfence();
    // the last CTA merges the splits: each thread four channels of a head, all the splits' (max,
    // sum) and outputs loaded at once (one L2 round trip), combined online in split order
    const float2 * mlb = a.ws_ml + row * a.ns * NH;
    const float4 * ob = reinterpret_cast<const float4 *>(a.ws_o + row * a.ns * NH * HD);
    for (int i = threadIdx.x; i < grp * (HD / 4); i += W * 32) {
        const int h = i / (HD / 4), c4 = i % (HD / 4);
        float M = -INFINITY, L = 0.0f;
        float4 o = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
#pragma unroll 8
        for (int s = 0; s < a.ns; s++) {
            const float2 ml = __ldcg(mlb + s * NH + h);
            const float4 v = __ldcg(ob + ((int64_t) s * NH + h) * (HD / 4) + c4);
            const float Mn = fmaxf(M, ml.x);  // a split with no tokens of this head has max -inf: fs = 0
            const float fo = M == -INFINITY ? 0.0f : fexp2(M - Mn), fs = ml.x == -INFINITY ? 0.0f : fexp2(ml.x - Mn);
            M = Mn;
            L = fmaf(fs, ml.y, L * fo);
            o.x = fmaf(fs, v.x, o.x * fo);
            o.y = fmaf(fs, v.y, o.y * fo);
            o.z = fmaf(fs, v.z, o.z * fo);
            o.w = fmaf(fs, v.w, o.w * fo);
        }
        const float inv = L > 0.0f ? 1.0f / L : 0.0f;
        reinterpret_cast<float4 *>(a.out + ((int64_t) seq * a.n_head + kvh * grp + h) * HD)[c4] =
            make_float4(o.x * inv, o.y * inv, o.z * inv, o.w * inv);
    }
    if (threadIdx.x == 0) {
        a.cnt[row] = 0;
    }
}

// s[h] = q_s[h] . k for the FP16 row k (this lane's token, at krow), fp32 FMAs in channel order.
template <int NH, int UNROLL>
__device__ __forceinline__ void span_scores(const uint8_t * krow, const float * q_s, float (&s)[NH]) {
#pragma unroll
    for (int h = 0; h < NH; h++) {
        s[h] = 0.0f;
    }
#pragma unroll UNROLL
    for (int k = 0; k < 16; k++) {
        const uint4 raw = *(const uint4 *) (krow + 16 * k);
        float kf[8];
#pragma unroll
        for (int e = 0; e < 4; e++) {
            const float2 f = h22f(word4(raw, e));
            kf[2 * e] = f.x;
            kf[2 * e + 1] = f.y;
        }
#pragma unroll
        for (int h = 0; h < NH; h++) {
            const float4 qa = *(const float4 *) (q_s + h * HD + 8 * k);
            const float4 qb = *(const float4 *) (q_s + h * HD + 8 * k + 4);
            s[h] = fmaf(qa.x, kf[0], s[h]);
            s[h] = fmaf(qa.y, kf[1], s[h]);
            s[h] = fmaf(qa.z, kf[2], s[h]);
            s[h] = fmaf(qa.w, kf[3], s[h]);
            s[h] = fmaf(qb.x, kf[4], s[h]);
            s[h] = fmaf(qb.y, kf[5], s[h]);
            s[h] = fmaf(qb.z, kf[6], s[h]);
            s[h] = fmaf(qb.w, kf[7], s[h]);
        }
    }
}

// out += P V over the span's n rows (RS bytes apart from sv): coff = the byte offset of this thread's
// channels 16 g + 2 t (+ 8), Pf = the weights [head][RP], out[mt][nt][e] as in the kernels.
template <int MT2, int UNROLL>
__device__ __forceinline__ void span_accumulate_v(const uint8_t * sv, int coff, const float * Pf, int n,
                                                  float (&out)[MT2][2][4]) {
#pragma unroll UNROLL
    for (int l = 0; l < n; l++) {
        const uint8_t * row = sv + l * RS + coff;
        const float2 v0 = h22f(*(const uint32_t *) row), v1 = h22f(*(const uint32_t *) (row + 16));
#pragma unroll
        for (int mt = 0; mt < MT2; mt++) {
            const float p0 = Pf[(2 * mt) * RP + l], p1 = Pf[(2 * mt + 1) * RP + l];
            out[mt][0][0] = fmaf(p0, v0.x, out[mt][0][0]);
            out[mt][0][1] = fmaf(p0, v0.y, out[mt][0][1]);
            out[mt][0][2] = fmaf(p1, v0.x, out[mt][0][2]);
            out[mt][0][3] = fmaf(p1, v0.y, out[mt][0][3]);
            out[mt][1][0] = fmaf(p0, v1.x, out[mt][1][0]);
            out[mt][1][1] = fmaf(p0, v1.y, out[mt][1][1]);
            out[mt][1][2] = fmaf(p1, v1.x, out[mt][1][2]);
            out[mt][1][3] = fmaf(p1, v1.y, out[mt][1][3]);
        }
    }
}

template <int NH, bool KCH, bool VCH> __global__ void __launch_bounds__(FW * 32, 3) k_attn_fast(const FastArgs a) {
    constexpr int MT2 = NH / 2;             // m-tiles of (head, row) pairs in the B_v product
    using WS = WarpSmem<NH>;
    extern __shared__ __align__(16) uint8_t smem[];
    __shared__ int s_last;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    WS * all = reinterpret_cast<WS *>(smem);
    WS & ws = all[warp];
    float * q_s = reinterpret_cast<float *>(smem + FW * sizeof(WS));        // [NH][HD], q * scale * log2 e
    uint32_t * qf = reinterpret_cast<uint32_t *>(q_s + NH * HD);            // [NH][2 part][2 reg][32 lanes]
    const int split = blockIdx.x, kvh = blockIdx.y, seq = blockIdx.z, grp = a.grp;
    const unsigned FULL = 0xffffffffu;

    const int b0 = a.blk_start[seq], nbu = (a.blk_start[seq + 1] - b0) << a.lsub;
    const int nres = a.res_len ? a.res_len[seq] : 0;
    const int U = nbu + (nres + RP - 1) / RP;
    const int u0 = U * split / a.ns, u1 = U * (split + 1) / a.ns;
    // per-lane swizzled offsets: token T, 16-byte piece s at T*64 + ((s ^ ((T >> 1) & 3)) << 4)
    const int sw_issue = (lane >> 2) * 64 + (((lane & 3) ^ ((lane >> 3) & 3)) << 4);
    int u = u0 + warp;
    issue_unit(a, ws.slot[0], u, u1, 0, seq, kvh, b0, nbu, nres, lane, sw_issue);
    issue_unit(a, ws.slot[1], u, u1, 1, seq, kvh, b0, nbu, nres, lane, sw_issue);

    for (int i = threadIdx.x; i < NH * HD; i += FW * 32) {
        const int h = i / HD, c = i % HD;
        q_s[i] = h < grp ? a.q[((int64_t) seq * a.n_head + kvh * grp + h) * HD + c] * a.cscale : 0.0f;
    }
    __syncthreads();
    // q as fp16 hi + lo B fragments of the q~ product: n = (head, row) pair, k = j
    for (int i = threadIdx.x; i < NH * 4 * 32; i += FW * 32) {
        const int h = i >> 7, part = (i >> 6) & 1, reg = (i >> 5) & 1, l = i & 31;
        const int gg = l >> 2, tt = l & 3;
        const float * src = q_s + h * HD + 16 * gg + 2 * tt + 8 * reg;
        float x0 = src[0], x1 = src[1];
        if (part) {
            x0 -= __half2float(__float2half_rn(x0));
            x1 -= __half2float(__float2half_rn(x1));
        }
        qf[i] = pack2f(x0, x1);
    }
    if (lane < NH) {
        ws.hv[HC][lane] = 1.0f;
    }
    __syncthreads();

    const int k_off = g * 64 + ((t ^ ((g >> 1) & 3)) << 4);                         // + nt * 512
    const int lr = lane & 7, mi = lane >> 3;
    const int vT = 8 * (mi & 1) + lr, vsw = (lr >> 1) & 3;
    const int v_off0 = vT * 64 + (((mi >> 1) ^ vsw) << 4);                          // pieces 0, 1; + kt * 1024
    const int v_off1 = vT * 64 + (((2 + (mi >> 1)) ^ vsw) << 4);                    // pieces 2, 3
    const bool hvalid = g < grp;

    float m_run = -INFINITY, l_run = 0.0f;  // head g's softmax state (same in the 4 threads of g)
    float out[MT2][2][4];                   // out[h][16r + j]: (h, r) = (2 mt + (e >> 1), g), j = 8 nt + 2t + (e & 1)
#pragma unroll
    for (int i = 0; i < MT2; i++) {
#pragma unroll
        for (int j = 0; j < 2; j++) {
            out[i][j][0] = out[i][j][1] = out[i][j][2] = out[i][j][3] = 0.0f;
        }
    }

    for (; u < u1; u += FW) {
        const int un = u + FW;
        cp_wait<0>();
        __syncwarp();
        const uint8_t * sk = ws.slot[0];
        const uint8_t * sv = ws.slot[1];
        if (u < nbu) {
            // ------------------------------------------------ q~ = B_k q on the tensor cores
            uint32_t ab[4];
            ldsm4(ab, sk + SLOT_B + (lr + 8 * (mi & 1)) * 32 + 16 * (mi >> 1));
            float qt[NH][4];
#pragma unroll
            for (int h = 0; h < NH; h++) {
                qt[h][0] = qt[h][1] = qt[h][2] = qt[h][3] = 0.0f;
                const uint32_t * f = qf + h * 128 + lane;
                mma16816(qt[h], ab[0], ab[1], ab[2], ab[3], f[0], f[32]);
                mma16816(qt[h], ab[0], ab[1], ab[2], ab[3], f[64], f[96]);
            }
            // value i of qt[h]: channel c_i = 32t + {g, 16 + g, 8 + g, 24 + g}
            float cs[4] = {1.0f, 1.0f, 1.0f, 1.0f}, cl[4] = {0.0f, 0.0f, 0.0f, 0.0f};
            if (KCH) {
                const uint16_t * ps = (const uint16_t *) (sk + SLOT_P);
#pragma unroll
                for (int i = 0; i < 4; i++) {
                    const int c = 32 * t + g + (i == 1 ? 16 : i == 2 ? 8 : i == 3 ? 24 : 0);
                    cs[i] = h2f(ps[c]);
                    cl[i] = a.k.asym ? h2f(ps[128 + c]) : 0.0f;
                }
            }
            float sc2e[NH];
#pragma unroll
            for (int h = 0; h < NH; h++) {
                float am = 0.0f, q2 = 0.0f;
#pragma unroll
                for (int i = 0; i < 4; i++) {
                    if (KCH) {
                        q2 = fmaf(qt[h][i], cl[i], q2);
                        qt[h][i] *= cs[i];
                    }
                    am = fmaxf(am, fabsf(qt[h][i]));
                }
#pragma unroll
                for (int o = 1; o < 32; o <<= 1) {
                    am = fmaxf(am, __shfl_xor_sync(FULL, am, o));
                    if (KCH) {
                        q2 += __shfl_xor_sync(FULL, q2, o);
                    }
                }
                int e = am > 0.0f ? 13 - ilog2f(am) : 0;
                e = e > 100 ? 100 : e < -100 ? -100 : e;
                sc2e[h] = pow2i(e);
                if (lane == 0) {
                    ws.hv[HF][h] = pow2i(24 - e);
                    ws.hv[HQC][h] = q2; // Q2 = sum q~ lo (channel mins), 0 otherwise
                }
            }
            {   // q^ (scaled) as fp16 hi/lo into F[part][head][t][4w + j].half[e]
                __half * F = reinterpret_cast<__half *>(ws.scratch);
                const int j = g & 3, eh = (g >> 2) & 1;
                const float jsc = (g & 1) ? 0.0625f : 1.0f;
#pragma unroll
                for (int h = 0; h < NH; h++) {
#pragma unroll
                    for (int i = 0; i < 4; i++) {
                        const int w = i == 0 ? 0 : i == 1 ? 2 : i == 2 ? 1 : 3;
                        const float x = qt[h][i] * sc2e[h] * jsc;
                        const __half hi = __float2half_rn(x);
                        const __half lo = __float2half_rn(x - __half2float(hi));
                        const int idx = ((h * 4 + t) * FT + 4 * w + j) * 2 + eh;
                        F[idx] = hi;
                        F[NH * 4 * FT * 2 + idx] = lo;
                    }
                }
            }
            __syncwarp();
            uint32_t ah[16], al[16];
            if (g < NH) {
                const uint32_t * F = reinterpret_cast<const uint32_t *>(ws.scratch) + (g * 4 + t) * FT;
#pragma unroll
                for (int k = 0; k < 4; k++) {
                    const uint4 vh = *(const uint4 *) (F + 4 * k);
                    const uint4 vl = *(const uint4 *) (F + NH * 4 * FT + 4 * k);
                    ah[4 * k] = vh.x;
                    ah[4 * k + 1] = vh.y;
                    ah[4 * k + 2] = vh.z;
                    ah[4 * k + 3] = vh.w;
                    al[4 * k] = vl.x;
                    al[4 * k + 1] = vl.y;
                    al[4 * k + 2] = vl.z;
                    al[4 * k + 3] = vl.w;
                }
            } else {
#pragma unroll
                for (int k = 0; k < 16; k++) {
                    ah[k] = al[k] = 0u;
                }
            }
            const float fk = ws.hv[HF][g < NH ? g : 0];
            const float q2k = ws.hv[HQC][g < NH ? g : 0];
            float q1; // sum of q^ as the MMA sees it: the scores of an all-ones token
            {
                float d[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
                for (int kk = 0; kk < 8; kk++) {
                    mma16816(d, ah[2 * kk], al[2 * kk], ah[2 * kk + 1], al[2 * kk + 1], 0x00010001u, 0x00100010u);
                }
                q1 = (d[0] + d[2]) * fk;
            }
            const float qc = q2k - a.k.zp * q1;
            float nu = 1.0f;
            if (!VCH) { // power-of-two normalizer of V's token scales: p * s * nu in [0, 2)
                const uint2 raw = *(const uint2 *) (sv + SLOT_P + lane * 8);
                const float2 s01 = h22f(raw.x), s23 = h22f(raw.y);
                float mx = fmaxf(fmaxf(s01.x, s01.y), fmaxf(s23.x, s23.y));
#pragma unroll
                for (int o = 1; o < 32; o <<= 1) {
                    mx = fmaxf(mx, __shfl_xor_sync(FULL, mx, o));
                }
                nu = mx > 0.0f ? pow2i(-ilog2f(mx)) : 1.0f;
            }
            const float inu = 1.0f / nu; // a power of two: exact

            // ------------------------------------------------ 4 groups of 32 tokens: scores, softmax, V
            const float m_unit = m_run;    // the frame of `out`
            float acc[8][4];
#pragma unroll
            for (int mt = 0; mt < 8; mt++) {
                acc[mt][0] = acc[mt][1] = acc[mt][2] = acc[mt][3] = 0.0f;
            }
            float sp = 0.0f, splo = 0.0f;
            const uint8_t * kbase = sk + k_off;
            const uint32_t * kpar = (const uint32_t *) (sk + SLOT_P);
            const uint32_t * vpar = (const uint32_t *) (sv + SLOT_P);
            uint4 Xn[4];
#pragma unroll
            for (int i = 0; i < 4; i++) {
                Xn[i] = *(const uint4 *) (kbase + i * 512);
            }
#pragma unroll 1
            for (int gi = 0; gi < 4; gi++) {
                uint4 X[4];
                float d[2][4][4];
#pragma unroll
                for (int i = 0; i < 4; i++) {
                    X[i] = Xn[i];
#pragma unroll
                    for (int z = 0; z < 2; z++) {
                        d[z][i][0] = d[z][i][1] = d[z][i][2] = d[z][i][3] = 0.0f;
                    }
                }
                if (gi < 3) {
#pragma unroll
                    for (int i = 0; i < 4; i++) {
                        Xn[i] = *(const uint4 *) (kbase + (4 * gi + 4 + i) * 512);
                    }
                }
                uint32_t Rn[2][4];
                ldsm4t(Rn[0], sv + v_off0 + gi * 2048);
                ldsm4t(Rn[1], sv + v_off1 + gi * 2048);
#pragma unroll
                for (int kk = 0; kk < 8; kk++) {
#pragma unroll
                    for (int i = 0; i < 4; i++) {
                        const uint32_t w = word4(X[i], kk >> 1);
                        const uint32_t s = (kk & 1) ? (w >> 8) : w;
                        mma16816(d[kk & 1][i], ah[2 * kk], al[2 * kk], ah[2 * kk + 1], al[2 * kk + 1], nib_lo(s),
                                 nib_hi(s));
                    }
                }
                float p[4][2];
                float mc = -INFINITY;
#pragma unroll
                for (int i = 0; i < 4; i++) {
                    const int nt = 4 * gi + i;
                    const float s0 = d[0][i][0] + d[0][i][2] + d[1][i][0] + d[1][i][2];
                    const float s1 = d[0][i][1] + d[0][i][3] + d[1][i][1] + d[1][i][3];
                    if (KCH) {
                        p[i][0] = fmaf(s0, fk, qc);
                        p[i][1] = fmaf(s1, fk, qc);
                    } else {
                        const float2 ks = h22f(kpar[4 * nt + t]);
                        float kl0 = 0.0f, kl1 = 0.0f;
                        if (a.k.asym) {
                            const float2 kl = h22f(kpar[64 + 4 * nt + t]);
                            kl0 = kl.x;
                            kl1 = kl.y;
                        }
                        p[i][0] = ks.x * fmaf(s0, fk, -a.k.zp * q1) + kl0 * q1;
                        p[i][1] = ks.y * fmaf(s1, fk, -a.k.zp * q1) + kl1 * q1;
                    }
                    mc = fmaxf(mc, fmaxf(p[i][0], p[i][1]));
                }
                mc = fmaxf(mc, __shfl_xor_sync(FULL, mc, 1));
                mc = fmaxf(mc, __shfl_xor_sync(FULL, mc, 2));
                const float mnew = hvalid ? fmaxf(m_run, mc) : 0.0f;
                const float c = (hvalid && m_run != -INFINITY) ? fexp2(m_run - mnew) : (hvalid ? 0.0f : 1.0f);
                m_run = hvalid ? mnew : m_run;
                float ls = 0.0f, spg = 0.0f, splg = 0.0f;
                uint32_t pb[4];
#pragma unroll
                for (int i = 0; i < 4; i++) {
                    const int nt = 4 * gi + i;
                    float w0 = hvalid ? fexp2(p[i][0] - mnew) : 0.0f;
                    float w1 = hvalid ? fexp2(p[i][1] - mnew) : 0.0f;
                    ls += w0 + w1;
                    if (!VCH) {
                        const float2 vs = h22f(vpar[4 * nt + t]);
                        if (a.v.asym) {
                            const float2 vl = h22f(vpar[64 + 4 * nt + t]);
                            splg = fmaf(w0, vl.x, fmaf(w1, vl.y, splg));
                        }
                        w0 *= vs.x * nu;
                        w1 *= vs.y * nu;
                    }
                    pb[i] = pack2f(w0, w1);
                    const float2 r = h22f(pb[i]);
                    spg += r.x + r.y;
                }
                l_run = l_run * c + ls;
                sp = sp * c + spg;
                splo = splo * c + splg;
                if (__any_sync(FULL, c != 1.0f)) { // rescale the A-space sums of heads 2t, 2t+1
                    const float c0 = __shfl_sync(FULL, c, 8 * t), c1 = __shfl_sync(FULL, c, 8 * t + 4);
#pragma unroll
                    for (int mt = 0; mt < 8; mt++) {
                        acc[mt][0] *= c0;
                        acc[mt][1] *= c1;
                        acc[mt][2] *= c0;
                        acc[mt][3] *= c1;
                    }
                }
#pragma unroll
                for (int k2 = 0; k2 < 2; k2++) {
                    uint32_t R[2][4];
#pragma unroll
                    for (int i = 0; i < 4; i++) {
                        R[0][i] = Rn[0][i];
                        R[1][i] = Rn[1][i];
                    }
                    if (k2 == 0) {
                        ldsm4t(Rn[0], sv + v_off0 + gi * 2048 + 1024);
                        ldsm4t(Rn[1], sv + v_off1 + gi * 2048 + 1024);
                    }
#pragma unroll
                    for (int hs = 0; hs < 2; hs++) {
#pragma unroll
                        for (int b = 0; b < 2; b++) {
#pragma unroll
                            for (int sub = 0; sub < 2; sub++) {
                                const uint32_t x0 = sub ? (R[hs][2 * b] >> 8) : R[hs][2 * b];
                                const uint32_t x1 = sub ? (R[hs][2 * b + 1] >> 8) : R[hs][2 * b + 1];
                                mma16816(acc[4 * hs + 2 * b + sub], nib_lo(x0), nib_hi(x0), nib_lo(x1), nib_hi(x1),
                                         pb[2 * k2], pb[2 * k2 + 1]);
                            }
                        }
                    }
                }
            }
            sp += __shfl_xor_sync(FULL, sp, 1);
            sp += __shfl_xor_sync(FULL, sp, 2);
            if (!VCH && a.v.asym) {
                splo += __shfl_xor_sync(FULL, splo, 1);
                splo += __shfl_xor_sync(FULL, splo, 2);
            }
            if (t == 0 && g < NH) {
                ws.hv[HSP][g] = sp;
                ws.hv[HSPLO][g] = splo;
                ws.hv[HC][g] = (hvalid && m_unit != -INFINITY) ? fexp2(m_unit - m_run) : (hvalid ? 0.0f : 1.0f);
            }
            __syncwarp();
            // ------------------------------------------------ A-space -> out, B_v on the tensor cores
            {
                __half * As = reinterpret_cast<__half *>(ws.scratch);
                constexpr int LO = NH * 8 * AS_ROW + NH * 8;  // lo half's offset (halves)
#pragma unroll
                for (int hh = 0; hh < 2; hh++) {
                    const int h = 2 * t + hh;
                    if (h < NH) {
                        const float spv = ws.hv[HSP][h];
                        const float lov = ws.hv[HSPLO][h];
#pragma unroll
                        for (int mt = 0; mt < 8; mt++) {
                            const int s = mt >> 1, sub = mt & 1;
                            const int c = 32 * s + 4 * g + 2 * sub;     // even channel; c + 1 odd
                            float x0 = acc[mt][hh] * 16777216.0f, x1 = acc[mt][2 + hh] * 1048576.0f;
                            if (VCH) {
                                const float2 vs = h22f(*(const uint32_t *) (sv + SLOT_P + 2 * c));
                                float2 vl = make_float2(0.0f, 0.0f);
                                if (a.v.asym) {
                                    vl = h22f(*(const uint32_t *) (sv + SLOT_P + 256 + 2 * c));
                                }
                                x0 = vs.x * (x0 - a.v.zp * spv) + vl.x * spv;
                                x1 = vs.y * (x1 - a.v.zp * spv) + vl.y * spv;
                            } else {
                                x0 = (x0 - a.v.zp * spv) * inu + lov;
                                x1 = (x1 - a.v.zp * spv) * inu + lov;
                            }
                            const __half2 hi = __floats2half2_rn(x0, x1);
                            const float2 hf = __half22float2(hi);
                            const __half2 lo = __floats2half2_rn(x0 - hf.x, x1 - hf.y);
                            const int row = h * 8 + (c >> 4);
                            const int off = row * AS_ROW + (row >> 3) * 8 + (c & 15);
                            *reinterpret_cast<__half2 *>(As + off) = hi;
                            *reinterpret_cast<__half2 *>(As + LO + off) = lo;
                        }
                    }
                }
                __syncwarp();
                uint32_t bv[4];
                ldsm4t(bv, sv + SLOT_B + (lr + 8 * (mi & 1)) * 32 + 16 * (mi >> 1));
#pragma unroll
                for (int mt = 0; mt < MT2; mt++) {
                    const int row = 16 * mt + 8 * (mi & 1) + lr;
                    const __half * src = As + row * AS_ROW + (row >> 3) * 8 + 8 * (mi >> 1);
                    uint32_t ahi[4], alo[4];
                    ldsm4(ahi, src);
                    ldsm4(alo, src + LO);
                    const float c0 = ws.hv[HC][2 * mt], c1 = ws.hv[HC][2 * mt + 1];
#pragma unroll
                    for (int nt = 0; nt < 2; nt++) {
                        out[mt][nt][0] *= c0;
                        out[mt][nt][1] *= c0;
                        out[mt][nt][2] *= c1;
                        out[mt][nt][3] *= c1;
                        mma16816(out[mt][nt], ahi[0], ahi[1], ahi[2], ahi[3], bv[2 * nt], bv[2 * nt + 1]);
                        mma16816(out[mt][nt], alo[0], alo[1], alo[2], alo[3], bv[2 * nt], bv[2 * nt + 1]);
                    }
                }
            }
        } else {
            // ------------------------------------------------ 32 tokens of the FP16 span
            const int tok0 = (u - nbu) * RP;
            const int n = nres - tok0 < RP ? nres - tok0 : RP;
            float s[NH];
            span_scores<NH, 1>(sk + lane * RS, q_s, s);
            float * Pf = reinterpret_cast<float *>(ws.scratch);
            // every head's softmax state is kept by the threads g == head: broadcast it
            float mh[NH], lsum[NH];
#pragma unroll
            for (int h = 0; h < NH; h++) {
                const float x = (lane < n && h < grp) ? s[h] : -INFINITY;
                float mx = x;
#pragma unroll
                for (int o = 1; o < 32; o <<= 1) {
                    mx = fmaxf(mx, __shfl_xor_sync(FULL, mx, o));
                }
                const float mo = __shfl_sync(FULL, m_run, 4 * h);
                const float m2 = fmaxf(mo, mx);
                const float pv = x == -INFINITY ? 0.0f : fexp2(x - m2);
                float sm = pv;
#pragma unroll
                for (int o = 1; o < 32; o <<= 1) {
                    sm += __shfl_xor_sync(FULL, sm, o);
                }
                mh[h] = m2;
                lsum[h] = sm;
                Pf[h * RP + lane] = pv;
            }
            // thread (g, t) keeps head g: new max, correction, sum (t == 0 adds the piece's sum)
            float mg = mh[0], sg = lsum[0];
#pragma unroll
            for (int h = 1; h < NH; h++) {
                mg = g == h ? mh[h] : mg;
                sg = g == h ? lsum[h] : sg;
            }
            if (hvalid) {
                const float corr = m_run == -INFINITY ? 0.0f : fexp2(m_run - mg);
                m_run = mg;
                l_run = l_run * corr + (t == 0 ? sg : 0.0f);
                if (t == 0) {
                    ws.hv[HC][g] = corr;
                }
            }
            __syncwarp();
#pragma unroll
            for (int mt = 0; mt < MT2; mt++) {
                const float c0 = 2 * mt < grp ? ws.hv[HC][2 * mt] : 1.0f;
                const float c1 = 2 * mt + 1 < grp ? ws.hv[HC][2 * mt + 1] : 1.0f;
#pragma unroll
                for (int nt = 0; nt < 2; nt++) {
                    out[mt][nt][0] *= c0;
                    out[mt][nt][1] *= c0;
                    out[mt][nt][2] *= c1;
                    out[mt][nt][3] *= c1;
                }
            }
            span_accumulate_v<MT2, 1>(sv, 2 * (16 * g + 2 * t), Pf, n, out);
        }
        __syncwarp();
        issue_unit(a, ws.slot[0], un, u1, 0, seq, kvh, b0, nbu, nres, lane, sw_issue);
        issue_unit(a, ws.slot[1], un, u1, 1, seq, kvh, b0, nbu, nres, lane, sw_issue);
    }
    cp_wait<0>();
    __syncwarp();

    // ---------------------------------------------------- merge the CTA's warps
    l_run += __shfl_xor_sync(FULL, l_run, 1);
    l_run += __shfl_xor_sync(FULL, l_run, 2);
    if (t == 0 && g < NH) {
        ws.hv[HM][g] = hvalid ? m_run : -INFINITY;
        ws.hv[HL][g] = hvalid ? l_run : 0.0f;
    }
    {
        float * O = reinterpret_cast<float *>(ws.slot[0]);
#pragma unroll
        for (int mt = 0; mt < MT2; mt++) {
#pragma unroll
            for (int nt = 0; nt < 2; nt++) {
                const int c = 16 * g + 8 * nt + 2 * t;
                *(float2 *) (O + (2 * mt) * HD + c) = make_float2(out[mt][nt][0], out[mt][nt][1]);
                *(float2 *) (O + (2 * mt + 1) * HD + c) = make_float2(out[mt][nt][2], out[mt][nt][3]);
            }
        }
    }
    __syncthreads();
    merge_splits<NH, FW, WS>(a, all, seq, kvh, split, grp, &s_last);
}

#include "dq_cuda_attn_i8.cuh"

// ====================================================================== generic path

constexpr int GT = 32; // tokens per tile
constexpr int GTH = 128;

struct GSide {
    int bits, mode, asym, bhead, per, G;
    float zp;
    int64_t off_b, off_cparam, off_tparam, off_codes;
};

struct GenArgs {
    const float * q;
    const int32_t * q_pos;
    float scale;
    const void * const * kb;
    const void * const * vb;
    const int32_t * blk_start;
    const uint16_t * const * kres;
    const uint16_t * const * vres;
    const int32_t * res_len;
    int n_head, nkv, hd, grp, n_q, chunk, ns;
    GSide k, v;
    float * ws_o;
    float2 * ws_ml;
    float * out;
};

__device__ inline float gen_deq(const GSide & s, const uint8_t * blk, const float * cs, const float * cl, int chunk,
                                int kvh, int hd, int tok, int c) {
    const int r = c >> 4, i = c & 15, rb = 2 * s.bits;
    const uint8_t * row = blk + s.off_codes + (((int64_t) kvh * chunk + tok) * (hd / 16) + r) * rb;
    const int bit = i * s.bits, by = bit >> 3, sh = bit & 7;
    uint32_t v = row[by];
    if (sh + s.bits > 8) {
        v |= (uint32_t) row[by + 1] << 8;
    }
    const float u = (float) ((v >> sh) & ((1u << s.bits) - 1));
    float sc, lo = 0.0f;
    if (s.mode == DQ_SCALE_CHANNEL) {
        sc = cs[c];
        lo = cl[c];
    } else {
        const int64_t k = (int64_t) tok * s.per + (s.mode == DQ_SCALE_TOKEN ? (s.G > 1 ? kvh : 0) : kvh * (hd / 16) + r);
        const uint16_t * tp = (const uint16_t *) (blk + s.off_tparam);
        sc = h2f(tp[k]);
        if (s.asym) {
            lo = h2f(tp[(int64_t) chunk * s.per + k]);
        }
    }
    return lo + sc * (u - s.zp);
}

__device__ inline void gen_load_side(const GSide & s, const uint8_t * blk, int kvh, int hd, int D, float * B, float * cs,
                                     float * cl) {
    const uint16_t * b = (const uint16_t *) (blk + s.off_b) + (s.bhead ? kvh * 256 : 0);
    for (int i = threadIdx.x; i < 256; i += blockDim.x) {
        B[i] = h2f(b[i]);
    }
    if (s.mode == DQ_SCALE_CHANNEL) {
        const uint16_t * cp = (const uint16_t *) (blk + s.off_cparam);
        for (int c = threadIdx.x; c < hd; c += blockDim.x) {
            cs[c] = h2f(cp[kvh * hd + c]);
            cl[c] = s.asym ? h2f(cp[D + kvh * hd + c]) : 0.0f;
        }
    }
}

__global__ void __launch_bounds__(GTH) k_attn_generic(const GenArgs a) {
    extern __shared__ float sm[];
    const int split = blockIdx.x, kvh = blockIdx.y, z = blockIdx.z;
    const int seq = z / a.n_q, iq = z % a.n_q;
    const int hd = a.hd, grp = a.grp, gh = grp * hd, D = a.nkv * hd;
    float * q = sm;
    float * qt = q + gh;
    float * acc = qt + gh;
    float * out = acc + gh;
    float * kt = out + gh;
    float * vt = kt + GT * hd;
    float * sc = vt + GT * hd;
    float * Bk = sc + grp * GT;
    float * Bv = Bk + 256;
    float * kcs = Bv + 256;
    float * kcl = kcs + hd;
    float * vcs = kcl + hd;
    float * vcl = vcs + hd;
    float * m = vcl + hd;
    float * l = m + grp;
    float * corr = l + grp;
    const int tid = threadIdx.x, nth = blockDim.x;

    const float * qg = a.q + (((int64_t) seq * a.n_q + iq) * a.n_head + (int64_t) kvh * grp) * hd;
    for (int i = tid; i < gh; i += nth) {
        q[i] = qg[i] * a.scale;
        out[i] = 0.0f;
    }
    for (int i = tid; i < grp; i += nth) {
        m[i] = -INFINITY;
        l[i] = 0.0f;
    }
    const int qpos = a.q_pos ? a.q_pos[seq * a.n_q + iq] : INT_MAX;
    const int b0 = a.blk_start[seq], nb = a.blk_start[seq + 1] - b0;
    const int nres = a.res_len ? a.res_len[seq] : 0;
    const int U = nb + (nres + GT - 1) / GT;
    const int u0 = (int) ((int64_t) U * split / a.ns), u1 = (int) ((int64_t) U * (split + 1) / a.ns);
    __syncthreads();
    for (int u = u0; u < u1; u++) {
        const bool block = u < nb;
        int n, pos0, tok0 = 0;
        const uint8_t * kb = nullptr, * vb = nullptr;
        if (block) {
            n = a.chunk;
            pos0 = u * a.chunk;
            kb = (const uint8_t *) a.kb[b0 + u];
            vb = (const uint8_t *) a.vb[b0 + u];
        } else {
            tok0 = (u - nb) * GT;
            n = nres - tok0 < GT ? nres - tok0 : GT;
            pos0 = nb * a.chunk + tok0;
        }
        if (pos0 > qpos) {
            break;
        }
        if (block) {
            gen_load_side(a.k, kb, kvh, hd, D, Bk, kcs, kcl);
            gen_load_side(a.v, vb, kvh, hd, D, Bv, vcs, vcl);
        }
        __syncthreads();
        for (int i = tid; i < gh; i += nth) {
            if (block) {
                const int gg = i / hd, c = i % hd, r = c >> 4, ii = c & 15;
                float s = 0.0f;
                for (int j = 0; j < 16; j++) {
                    s = fmaf(Bk[ii * 16 + j], q[gg * hd + 16 * r + j], s);
                }
                qt[i] = s;
            } else {
                qt[i] = q[i];
            }
            acc[i] = 0.0f;
        }
        __syncthreads();
        for (int t0 = 0; t0 < n; t0 += GT) {
            const int nt = n - t0 < GT ? n - t0 : GT;
            for (int i = tid; i < nt * hd; i += nth) {
                const int tt = i / hd, c = i % hd, tok = t0 + tt;
                if (block) {
                    kt[i] = gen_deq(a.k, kb, kcs, kcl, a.chunk, kvh, hd, tok, c);
                    vt[i] = gen_deq(a.v, vb, vcs, vcl, a.chunk, kvh, hd, tok, c);
                } else {
                    const int64_t off = ((int64_t) (tok0 + tok) * a.nkv + kvh) * hd + c;
                    kt[i] = h2f(a.kres[seq][off]);
                    vt[i] = h2f(a.vres[seq][off]);
                }
            }
            __syncthreads();
            for (int i = tid; i < grp * GT; i += nth) {
                const int gg = i / GT, tt = i % GT;
                float s = -INFINITY;
                if (tt < nt && pos0 + t0 + tt <= qpos) {
                    s = 0.0f;
                    for (int c = 0; c < hd; c++) {
                        s = fmaf(qt[gg * hd + c], kt[tt * hd + c], s);
                    }
                }
                sc[i] = s;
            }
            __syncthreads();
            for (int gg = tid; gg < grp; gg += nth) {
                float mx = -INFINITY;
                for (int tt = 0; tt < GT; tt++) {
                    mx = fmaxf(mx, sc[gg * GT + tt]);
                }
                const float mo = m[gg], m2 = fmaxf(mo, mx);
                const float cr = m2 == -INFINITY ? 1.0f : expf(mo - m2);
                float sum = 0.0f;
                for (int tt = 0; tt < GT; tt++) {
                    const float s = sc[gg * GT + tt];
                    const float p = s == -INFINITY ? 0.0f : expf(s - m2);
                    sc[gg * GT + tt] = p;
                    sum += p;
                }
                l[gg] = l[gg] * cr + sum;
                m[gg] = m2;
                corr[gg] = cr;
            }
            __syncthreads();
            for (int i = tid; i < gh; i += nth) {
                const int gg = i / hd, c = i % hd;
                float x = acc[i] * corr[gg];
                for (int tt = 0; tt < nt; tt++) {
                    x = fmaf(sc[gg * GT + tt], vt[tt * hd + c], x);
                }
                acc[i] = x;
                out[i] *= corr[gg];
            }
            __syncthreads();
        }
        for (int i = tid; i < gh; i += nth) {
            if (block) {
                const int gg = i / hd, c = i % hd, r = c >> 4, j = c & 15;
                float o = 0.0f;
                for (int ii = 0; ii < 16; ii++) {
                    o = fmaf(acc[gg * hd + 16 * r + ii], Bv[ii * 16 + j], o);
                }
                out[i] += o;
            } else {
                out[i] += acc[i];
            }
        }
        __syncthreads();
    }
    const int64_t base = ((int64_t) z * a.nkv + kvh) * a.ns + split;
    for (int i = tid; i < gh; i += nth) {
        a.ws_o[base * gh + i] = out[i];
    }
    for (int i = tid; i < grp; i += nth) {
        a.ws_ml[base * grp + i] = make_float2(m[i], l[i]);
    }
}

__global__ void k_merge_generic(const GenArgs a) {
    const int z = blockIdx.x / a.n_head, hq = blockIdx.x % a.n_head;
    const int kvh = hq / a.grp, gg = hq % a.grp, hd = a.hd, gh = a.grp * hd;
    const int64_t base = ((int64_t) z * a.nkv + kvh) * a.ns;
    float M = -INFINITY;
    for (int s = 0; s < a.ns; s++) {
        M = fmaxf(M, a.ws_ml[(base + s) * a.grp + gg].x);
    }
    for (int c = threadIdx.x; c < hd; c += blockDim.x) {
        float o = 0.0f, L = 0.0f;
        if (M != -INFINITY) {
            for (int s = 0; s < a.ns; s++) {
                const float2 ml = a.ws_ml[(base + s) * a.grp + gg];
                if (ml.x != -INFINITY) {
                    const float f = expf(ml.x - M);
                    o = fmaf(f, a.ws_o[(base + s) * gh + gg * hd + c], o);
                    L = fmaf(f, ml.y, L);
                }
            }
        }
        a.out[((int64_t) z * a.n_head + hq) * hd + c] = L > 0.0f ? o / L : 0.0f;
    }
}

// ====================================================================== host side


struct DevInfo {
    int sms = 0;
    bool ok = false;
};

int dev_info(DevInfo & d) {
    static DevInfo cache;
    if (!cache.ok) {
        int dev = 0;
        DQ_CUDA_TRY(cudaGetDevice(&dev), "cudaGetDevice");
        DQ_CUDA_TRY(cudaDeviceGetAttribute(&cache.sms, cudaDevAttrMultiProcessorCount, dev), "cudaDeviceGetAttribute");
        cache.ok = true;
    }
    d = cache;
    return DQ_OK;
}

bool side_fast(const dq_config * c) {
    return c->bits == 4 && c->head_dim == HD &&
           (c->scale_mode == DQ_SCALE_CHANNEL || (c->scale_mode == DQ_SCALE_TOKEN && dqc_groups(c) == 1));
}

int check(const dq_cuda_attn_params * p) {
    if (!p || !p->cfg_k || !p->cfg_v || dqc_check(p->cfg_k) != DQ_OK || dqc_check(p->cfg_v) != DQ_OK) {
        return DQ_ERR_ARG;
    }
    const dq_config * k = p->cfg_k, * v = p->cfg_v;
    if (k->n_kv_heads != v->n_kv_heads || k->head_dim != v->head_dim || p->n_head <= 0 ||
        p->n_head % k->n_kv_heads != 0 || p->n_seq <= 0 || p->n_q <= 0 || p->chunk <= 0 || p->max_blocks < 0 ||
        p->max_res < 0 || !p->q || !p->out || !p->blk_start || p->n_split < 0 || p->n_split > MAX_SPLIT ||
        (p->max_blocks > 0 && (!p->k_blocks || !p->v_blocks)) || (p->max_res > 0 && (!p->k_res || !p->v_res || !p->res_len)) ||
        p->path < 0 || p->path > 2 || p->variant < 0 || p->variant > 2) {
        return DQ_ERR_ARG;
    }
    return DQ_OK;
}

bool fast_ok(const dq_cuda_attn_params * p) {
    const int grp = p->n_head / p->cfg_k->n_kv_heads;
    const int units = p->chunk / SU;
    return p->n_q == 1 && !p->q_pos && p->chunk % SU == 0 && (units & (units - 1)) == 0 &&
           grp <= (p->variant == 1 ? I8_NH : 8) && side_fast(p->cfg_k) && side_fast(p->cfg_v);
}

int choose_path(const dq_cuda_attn_params * p) {
    if (p->path == 1) {
        return fast_ok(p) ? 1 : -DQ_ERR_UNSUPPORTED;
    }
    if (p->path == 2) {
        return 2;
    }
    return fast_ok(p) ? 1 : 2;
}

size_t gen_smem(int grp, int hd) {
    return (size_t) (4 * grp * hd + 2 * GT * hd + grp * GT + 512 + 4 * hd + 3 * grp) * sizeof(float);
}

template <int NH> size_t fast_smem() {
    return FW * sizeof(WarpSmem<NH>) + NH * HD * sizeof(float) + NH * 128 * sizeof(uint32_t);
}

size_t i8_smem() { return FWI * sizeof(WarpSmemI8) + I8_NH * HD * sizeof(float) + I8_NH * 128 * sizeof(uint32_t); }

// Kernel -> (dynamic shared memory set, CTAs per SM), once per instantiation.
template <int NH, bool KCH, bool VCH, bool I8> int fast_occupancy(int * per_sm) {
    static int cached = 0;
    if (!cached) {
        const size_t sm = I8 ? i8_smem() : fast_smem<NH>();
        const void * fn = I8 ? (const void *) k_attn_i8<KCH, VCH, false> : (const void *) k_attn_fast<NH, KCH, VCH>;
        DQ_CUDA_TRY(cudaFuncSetAttribute(fn, cudaFuncAttributeMaxDynamicSharedMemorySize, (int) sm),
                    "cudaFuncSetAttribute");
        if (I8) {  // the V-by-plain-loads build of the same kernel: same shared memory and occupancy
            DQ_CUDA_TRY(cudaFuncSetAttribute((const void *) k_attn_i8<KCH, VCH, true>,
                                             cudaFuncAttributeMaxDynamicSharedMemorySize, (int) sm),
                        "cudaFuncSetAttribute");
        }
        DQ_CUDA_TRY(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&cached, fn, (I8 ? FWI : FW) * 32, sm), "cudaOccupancy");
        if (cached < 1) {
            cached = 1;
        }
    }
    *per_sm = cached;
    return DQ_OK;
}

int gen_occupancy(size_t sm, int * per_sm) {
    static size_t set = 0;
    if (sm > set) {
        DQ_CUDA_TRY(cudaFuncSetAttribute(k_attn_generic, cudaFuncAttributeMaxDynamicSharedMemorySize, (int) sm),
                    "cudaFuncSetAttribute");
        set = sm;
    }
    DQ_CUDA_TRY(cudaOccupancyMaxActiveBlocksPerMultiprocessor(per_sm, k_attn_generic, GTH, sm), "cudaOccupancy");
    if (*per_sm < 1) {
        *per_sm = 1;
    }
    return DQ_OK;
}

// Splits per row (sequence x query row x KV head): the fewest "waves x units per warp". With
// `spread`, units per warp count as a fraction, so that among plans of equal rounds the one
// spreading the units over more CTAs wins (the int8 kernel, 11 warps: 16 splits at Llama-3-8B
// 32K batch 1 ran 7 % faster than the 12 of whole rounds).
int choose_splits(int64_t rows, int units, int slots, int warps, bool spread) {
    int best = 1;
    double best_cost = 1e30;
    for (int ns = 1; ns <= MAX_SPLIT; ns++) {
        if (ns > 1 && ns > units) {
            break;
        }
        const double waves = (double) ((rows * ns + slots - 1) / slots);
        const int per_cta = (units + ns - 1) / ns;
        const double per_warp = spread ? (double) per_cta / warps : (double) ((per_cta + warps - 1) / warps);
        const double cost = waves * (per_warp + 2.0) + 0.01 * ns; // + start-up and merge of each CTA
        if (cost < best_cost - 1e-9) {
            best_cost = cost;
            best = ns;
        }
    }
    return best;
}

struct Plan {
    int path, nh, kch, vch, i8, ns, grp, nsub, vldg;
    size_t off_ml, off_o, total, smem;
};

int make_plan(const dq_cuda_attn_params * p, Plan & pl) {
    int st = check(p);
    if (st != DQ_OK) {
        return st;
    }
    const int path = choose_path(p);
    if (path < 0) {
        return -path;
    }
    DevInfo di;
    st = dev_info(di);
    if (st != DQ_OK) {
        return st;
    }
    const int nkv = p->cfg_k->n_kv_heads, hd = p->cfg_k->head_dim;
    pl.path = path;
    pl.grp = p->n_head / nkv;
    const int64_t cnt_bytes = (int64_t) p->n_seq * nkv * sizeof(int);
    if (path == 1) {
        pl.nh = pl.grp <= 4 ? 4 : 8;
        pl.kch = p->cfg_k->scale_mode == DQ_SCALE_CHANNEL;
        pl.vch = p->cfg_v->scale_mode == DQ_SCALE_CHANNEL;
        pl.i8 = pl.grp <= I8_NH && p->variant != 2;
        pl.nsub = p->chunk / SU;
        int per_sm = 1;
        switch (pl.i8 * 8 + (pl.nh == 8) * 4 + pl.kch * 2 + pl.vch) {
            case 0: st = fast_occupancy<4, false, false, false>(&per_sm); break;
            case 1: st = fast_occupancy<4, false, true, false>(&per_sm); break;
            case 2: st = fast_occupancy<4, true, false, false>(&per_sm); break;
            case 3: st = fast_occupancy<4, true, true, false>(&per_sm); break;
            case 4: st = fast_occupancy<8, false, false, false>(&per_sm); break;
            case 5: st = fast_occupancy<8, false, true, false>(&per_sm); break;
            case 6: st = fast_occupancy<8, true, false, false>(&per_sm); break;
            case 7: st = fast_occupancy<8, true, true, false>(&per_sm); break;
            case 8: st = fast_occupancy<4, false, false, true>(&per_sm); break;
            case 9: st = fast_occupancy<4, false, true, true>(&per_sm); break;
            case 10: st = fast_occupancy<4, true, false, true>(&per_sm); break;
            default: st = fast_occupancy<4, true, true, true>(&per_sm); break;
        }
        pl.smem = pl.i8 ? i8_smem() : pl.nh == 4 ? fast_smem<4>() : fast_smem<8>();
        if (st != DQ_OK) {
            return st;
        }
        const int units = p->max_blocks * pl.nsub + (p->max_res + RP - 1) / RP;
        pl.ns = p->n_split ? p->n_split : choose_splits((int64_t) p->n_seq * nkv, units > 0 ? units : 1, di.sms * per_sm,
                                                         pl.i8 ? FWI : FW, pl.i8);
        // V by plain loads where each warp has a few units (at 32K: batch 8, -2 to -5 %); with one or
        // two, it ran 2-8 % slower (batch 1: the first V load holds the loop top up)
        pl.vldg = pl.i8 && (units + pl.ns - 1) / pl.ns >= 4 * FWI;
        pl.off_ml = dq_cuda_align((size_t) cnt_bytes, 256);
        pl.off_o = pl.off_ml + dq_cuda_align((size_t) p->n_seq * nkv * pl.ns * pl.nh * sizeof(float2), 256);
        pl.total = pl.off_o + (size_t) p->n_seq * nkv * pl.ns * pl.nh * HD * sizeof(float);
    } else {
        pl.nh = pl.kch = pl.vch = pl.i8 = pl.vldg = 0;
        pl.nsub = 1;
        pl.smem = gen_smem(pl.grp, hd);
        if (pl.smem > 200 * 1024) {
            return DQ_ERR_UNSUPPORTED;
        }
        int per_sm = 1;
        st = gen_occupancy(pl.smem, &per_sm);
        if (st != DQ_OK) {
            return st;
        }
        const int units = p->max_blocks + (p->max_res + GT - 1) / GT;
        pl.ns = p->n_split ? p->n_split
                           : choose_splits((int64_t) p->n_seq * p->n_q * nkv, units > 0 ? units : 1, di.sms * per_sm, 1, false);
        pl.off_ml = dq_cuda_align((size_t) cnt_bytes, 256);
        pl.off_o = pl.off_ml + dq_cuda_align((size_t) p->n_seq * p->n_q * nkv * pl.ns * pl.grp * sizeof(float2), 256);
        pl.total = pl.off_o + (size_t) p->n_seq * p->n_q * nkv * pl.ns * pl.grp * hd * sizeof(float);
    }
    return DQ_OK;
}

Side fast_side(const dq_config * c, int chunk) {
    const dq_layout L = dqc_layout(c, chunk);
    Side s;
    const bool chan = c->scale_mode == DQ_SCALE_CHANNEL;
    s.asym = c->asym;
    s.zp = c->asym ? 0.0f : (float) dq_cuda_qmax(c->bits);
    s.off_b = (int64_t) L.b;
    s.codes = (int64_t) L.codes;
    s.bhead = c->scope == DQ_SCOPE_HEAD;
    if (chan) {
        s.off_par = (int64_t) L.cparam;
        s.off_min = (int64_t) L.cparam + (int64_t) c->n_kv_heads * c->head_dim * 2;
        s.par_hstep = HD * 2;
    } else {
        s.off_par = (int64_t) L.tparam;
        s.off_min = (int64_t) L.tparam + (int64_t) chunk * 2;
        s.par_hstep = 0;
    }
    return s;
}

GSide gen_side(const dq_config * c, int chunk) {
    const dq_layout L = dqc_layout(c, chunk);
    GSide s;
    s.bits = c->bits;
    s.mode = c->scale_mode;
    s.asym = c->asym;
    s.bhead = c->scope == DQ_SCOPE_HEAD;
    s.per = dq_cuda_tparams(c);
    s.G = dqc_groups(c);
    s.zp = c->asym ? 0.0f : (float) dq_cuda_qmax(c->bits);
    s.off_b = (int64_t) L.b;
    s.off_cparam = (int64_t) L.cparam;
    s.off_tparam = (int64_t) L.tparam;
    s.off_codes = (int64_t) L.codes;
    return s;
}

template <int NH, bool KCH, bool VCH, bool I8>
int launch_fast(const FastArgs & fa, const Plan & pl, dim3 grid, cudaStream_t st) {
    if (I8 && pl.vldg) {
        k_attn_i8<KCH, VCH, true><<<grid, FWI * 32, pl.smem, st>>>(fa);
    } else if (I8) {
        k_attn_i8<KCH, VCH, false><<<grid, FWI * 32, pl.smem, st>>>(fa);
    } else {
        k_attn_fast<NH, KCH, VCH><<<grid, FW * 32, pl.smem, st>>>(fa);
    }
    DQ_CUDA_TRY(cudaGetLastError(), I8 ? "k_attn_i8" : "k_attn_fast");
    return DQ_OK;
}

} // namespace

#if DQ_I8_TIMING
extern "C" __attribute__((visibility("default"))) int dq_dbg_timing(unsigned long long * tc, unsigned long long * tw) {
    if (cudaMemcpyFromSymbol(tc, g_dq_tc, sizeof(g_dq_tc)) != cudaSuccess ||
        cudaMemcpyFromSymbol(tw, g_dq_tw, sizeof(g_dq_tw)) != cudaSuccess) {
        return 1;
    }
    return 0;
}
#endif

extern "C" int dq_cuda_attn_path(const dq_cuda_attn_params * p) {
    const int st = check(p);
    if (st != DQ_OK) {
        return -st;
    }
    return choose_path(p);
}

extern "C" int dq_cuda_attn_splits(const dq_cuda_attn_params * p) {
    Plan pl;
    const int st = make_plan(p, pl);
    return st == DQ_OK ? pl.ns : -st;
}

extern "C" size_t dq_cuda_attn_work_size(const dq_cuda_attn_params * p) {
    Plan pl;
    return make_plan(p, pl) == DQ_OK ? pl.total : 0;
}

extern "C" int dq_cuda_attn_work_init(const dq_cuda_attn_params * p, dq_cuda_stream stream) {
    Plan pl;
    const int st = make_plan(p, pl);
    if (st != DQ_OK) {
        return st;
    }
    if (!p->work) {
        return DQ_ERR_ARG;
    }
    DQ_CUDA_TRY(cudaMemsetAsync(p->work, 0, pl.off_ml, (cudaStream_t) stream), "cudaMemsetAsync");
    return DQ_OK;
}

extern "C" int dq_cuda_attn(const dq_cuda_attn_params * p, dq_cuda_stream stream) {
    Plan pl;
    const int st = make_plan(p, pl);
    if (st != DQ_OK) {
        return st;
    }
    if (!p->work) {
        return DQ_ERR_ARG;
    }
    const int nkv = p->cfg_k->n_kv_heads, hd = p->cfg_k->head_dim;
    uint8_t * work = (uint8_t *) p->work;
    cudaStream_t cs = (cudaStream_t) stream;
    if (pl.path == 1) {
        FastArgs fa;
        fa.q = p->q;
        fa.cscale = p->scale * LOG2E;
        // with no blocks, a readable dummy table (the int8 kernel loads block pointers unpredicated)
        fa.kb = p->k_blocks ? p->k_blocks : (const void * const *) work;
        fa.vb = p->v_blocks ? p->v_blocks : (const void * const *) work;
        fa.blk_start = p->blk_start;
        fa.kres = p->k_res;
        fa.vres = p->v_res;
        fa.res_len = p->max_res > 0 ? p->res_len : nullptr;
        fa.n_head = p->n_head;
        fa.nkv = nkv;
        fa.grp = pl.grp;
        fa.ns = pl.ns;
        fa.chunk = p->chunk;
        fa.lsub = 0;
        while ((1 << fa.lsub) < pl.nsub) {
            fa.lsub++;
        }
        fa.k = fast_side(p->cfg_k, p->chunk);
        fa.v = fast_side(p->cfg_v, p->chunk);
        fa.out = p->out;
        fa.cnt = (int *) work;
        fa.ws_ml = (float2 *) (work + pl.off_ml);
        fa.ws_o = (float *) (work + pl.off_o);
        const dim3 grid(pl.ns, nkv, p->n_seq);
        switch (pl.i8 * 8 + (pl.nh == 8) * 4 + pl.kch * 2 + pl.vch) {
            case 0: return launch_fast<4, false, false, false>(fa, pl, grid, cs);
            case 1: return launch_fast<4, false, true, false>(fa, pl, grid, cs);
            case 2: return launch_fast<4, true, false, false>(fa, pl, grid, cs);
            case 3: return launch_fast<4, true, true, false>(fa, pl, grid, cs);
            case 4: return launch_fast<8, false, false, false>(fa, pl, grid, cs);
            case 5: return launch_fast<8, false, true, false>(fa, pl, grid, cs);
            case 6: return launch_fast<8, true, false, false>(fa, pl, grid, cs);
            case 7: return launch_fast<8, true, true, false>(fa, pl, grid, cs);
            case 8: return launch_fast<4, false, false, true>(fa, pl, grid, cs);
            case 9: return launch_fast<4, false, true, true>(fa, pl, grid, cs);
            case 10: return launch_fast<4, true, false, true>(fa, pl, grid, cs);
            default: return launch_fast<4, true, true, true>(fa, pl, grid, cs);
        }
    }
    GenArgs ga;
    ga.q = p->q;
    ga.q_pos = p->q_pos;
    ga.scale = p->scale;
    ga.kb = p->k_blocks;
    ga.vb = p->v_blocks;
    ga.blk_start = p->blk_start;
    ga.kres = p->k_res;
    ga.vres = p->v_res;
    ga.res_len = p->max_res > 0 ? p->res_len : nullptr;
    ga.n_head = p->n_head;
    ga.nkv = nkv;
    ga.hd = hd;
    ga.grp = pl.grp;
    ga.n_q = p->n_q;
    ga.chunk = p->chunk;
    ga.ns = pl.ns;
    ga.k = gen_side(p->cfg_k, p->chunk);
    ga.v = gen_side(p->cfg_v, p->chunk);
    ga.ws_ml = (float2 *) (work + pl.off_ml);
    ga.ws_o = (float *) (work + pl.off_o);
    ga.out = p->out;
    if ((int64_t) p->n_seq * p->n_q > 65535) {
        return DQ_ERR_UNSUPPORTED;
    }
    const dim3 grid(pl.ns, nkv, p->n_seq * p->n_q);
    k_attn_generic<<<grid, GTH, pl.smem, cs>>>(ga);
    DQ_CUDA_TRY(cudaGetLastError(), "k_attn_generic");
    k_merge_generic<<<p->n_seq * p->n_q * p->n_head, hd < 1024 ? hd : 1024, 0, cs>>>(ga);
    DQ_CUDA_TRY(cudaGetLastError(), "k_merge_generic");
    return DQ_OK;
}
