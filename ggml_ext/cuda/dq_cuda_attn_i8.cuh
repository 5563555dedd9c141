// Fast decode attention, int8 tensor-core variant (included by dq_cuda_attn.cu inside its
// anonymous namespace; uses its FastArgs, issue_unit and helpers). Up to 4 query heads per KV
// head (GQA <= 4: Llama-3, Llama-2, ...). Per 128-token unit, one warp:
//   - q~ = B_k q on the tensor cores (fp16 hi + lo), channel scales folded in, then rounded per
//     head to a 15-bit integer q^ split into two signed 8-bit digits (23 bits, three digits, with
//     channel scales: outlier channels set the range there);
//   - scores with mma.m16n8k32.s8.u8: rows = (head, digit) (rows g and g + 8 of a thread are the
//     low two digits of head g / 2, so it adds them in place; the third digit sits in the odd
//     lane's row and comes over with one shuffle), the codes as the u8 B operand: one
//     LOP3 turns a word into 4 low-nibble codes, SHF + LOP3 into 4 high-nibble codes (the k order
//     is permuted so that a thread's 16-byte load is its fragment); the sums are exact int32;
//   - one softmax frame per unit (all 128 scores are kept in registers), so V needs no rescaling
//     inside the unit: the weights p * v_scale are rounded to 15-bit fixed point (two u8 digits,
//     the columns of the B operand of the V product);
//   - V in A-space: out^T[channel][head, digit] += codes^T[channel][token] P[token][head, digit]
//     with mma.m16n8k32.u8.u8, the codes transposed by ldmatrix.trans + PRMT (4 tokens of one
//     channel per register), exact int32 sums; an all-ones row gives sum(P) exactly;
//   - A-space -> output once per unit: fp16 hi + lo, mma.m16n8k16 with B_v.
// Every lane has a head: rows g = 2h and 2h + 1 hold the same head (GQA 4 fills 8 of 16 rows);
// the duplicate lanes also make the two digit columns of the V product's B operand.
// Data: each warp owns a K slot and a V slot; the epilogue's A-space buffer reuses the V slot. K
// comes in with bulk (TMA) copies on an mbarrier, issued by one lane (unswizzled: the score loads
// are conflict-free as they are); V with 16-byte cp.async, swizzled for ldmatrix.trans (with VL, half
// of V's codes by plain loads into registers, stored into the slot when needed: issue_v_ldg). The next
// unit's K is issued as soon as the scores are in registers, its V once the epilogue has read the
// A-space buffer back (B_v and the V channel scales are in registers by then); block pointers are
// loaded a unit ahead, the FP16 rows' bases once (not with each FP16 unit's copies), and q before
// the first copies. Launches of up to three units per warp ask for a warp's first V only once
// its first K has landed, so that every warp's first K comes in sooner. Warps take units round robin
// (statically: the result does not depend on timing), in pairs for 256-token blocks. About 1925
// warp instructions per unit (16.6 KB), 0.116 per byte, against 0.213 for the fp16 kernel.
// DQ_I8_TIMING=1 builds record a per-CTA / per-warp timeline (bench/attn_cuda_timeline.py); =2
// records when each warp's last unit's K landed instead of its first (FP16 units included).
// DQ_I8_NOMATH=1 builds skip the math (the output is garbage): the copies alone, in the same order.
// DQ_I8_NOCOPY=1 builds skip the copies of K and V (the output is garbage): the math alone.

#ifndef DQ_I8_NOCOPY
#define DQ_I8_NOCOPY 0
#endif
constexpr bool I8_COPY = !DQ_I8_NOCOPY;

constexpr int I8_NH = 4;
constexpr int I8_ASB = 32 * 48 + 4 * 32;   // bytes of one A-space buffer: row 8h + r at 48 row + 32 (row / 8)
constexpr uint32_t M0F = 0x0f0f0f0fu;
constexpr uint32_t MF0 = 0xf0f0f0f0u;

#ifndef DQ_I8_FW
#define DQ_I8_FW 11  // warps per CTA: one CTA of 11 per SM (20.1 KB each); 2 x 5 ran 2-6 % slower, 3 x 3 slower still
#endif
constexpr int FWI = DQ_I8_FW;
constexpr int I8_MINB = FWI <= 3 ? 3 : FWI <= 5 ? 2 : 1;  // CTAs per SM

struct __align__(16) WarpSmemI8 {
    uint8_t slot[2][SLOT];        // K, V
    uint8_t scratch[2048];        // q^ fragments (1 or 2 KB) | FP16-span weights (A-space: in the V slot)
    float hv[HNV][I8_NH];
    uint64_t kbar;                // K slot's mbarrier (bulk copies)
    const uint8_t * res[2];       // the sequence's FP16 rows, K and V (loaded once, not per unit)
};

__device__ __forceinline__ void imma_s8u8(int (&d)[4], const uint4 & a, uint32_t b0, uint32_t b1) {
    asm("mma.sync.aligned.m16n8k32.row.col.s32.s8.u8.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
        : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3])
        : "r"(a.x), "r"(a.y), "r"(a.z), "r"(a.w), "r"(b0), "r"(b1));
}
__device__ __forceinline__ void imma_u8u8(int (&d)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3, uint32_t b0,
                                          uint32_t b1) {
    asm("mma.sync.aligned.m16n8k32.row.col.s32.u8.u8.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
        : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}
__device__ __forceinline__ uint32_t prmt(uint32_t a, uint32_t b, uint32_t sel) {
    uint32_t d;
    asm("prmt.b32 %0, %1, %2, %3;\n" : "=r"(d) : "r"(a), "r"(b), "r"(sel));
    return d;
}
__device__ __forceinline__ int i8_as_off(int row) { return row * 48 + (row >> 3) * 32; }
template <typename T> __device__ __forceinline__ T sel4(const T (&v)[I8_NH], int h) {
    return h == 0 ? v[0] : h == 1 ? v[1] : h == 2 ? v[2] : v[3];
}
// Warp max of a float in one redux: the bits, negatives flipped, order as signed integers.
__device__ __forceinline__ float warp_max_redux(float x) {
    const int b = __float_as_int(x);
    const int m = __reduce_max_sync(0xffffffffu, b ^ ((b >> 31) & 0x7fffffff));
    return __int_as_float(m ^ ((m >> 31) & 0x7fffffff));
}
// Warp sum of v[h] for the lane's head h = lane / 8, all four heads at once: each step swaps half of
// the heads with the partner lane (6 shuffles, not 4 x 5).
__device__ __forceinline__ float sum4_heads(const float (&v)[I8_NH], int lane) {
    const unsigned FULL = 0xffffffffu;
    const bool b4 = lane & 16, b3 = lane & 8;
    float k0 = b4 ? v[2] : v[0], k1 = b4 ? v[3] : v[1];
    k0 += __shfl_xor_sync(FULL, b4 ? v[0] : v[2], 16);
    k1 += __shfl_xor_sync(FULL, b4 ? v[1] : v[3], 16);
    float x = b3 ? k1 : k0;
    x += __shfl_xor_sync(FULL, b3 ? k0 : k1, 8);
    x += __shfl_xor_sync(FULL, x, 4);
    x += __shfl_xor_sync(FULL, x, 2);
    x += __shfl_xor_sync(FULL, x, 1);
    return x;
}

// out *= the softmax correction of each row's head: rows (2 mt, g) and (2 mt + 1, g) of a thread
// belong to the heads of lanes 16 mt and 16 mt + 8.
__device__ __forceinline__ void rescale_out(float (&out)[2][2][4], float corr) {
#pragma unroll
    for (int mt = 0; mt < 2; mt++) {
        const float c0 = __shfl_sync(0xffffffffu, corr, 16 * mt), c1 = __shfl_sync(0xffffffffu, corr, 16 * mt + 8);
#pragma unroll
        for (int nt = 0; nt < 2; nt++) {
            out[mt][nt][0] *= c0;
            out[mt][nt][1] *= c0;
            out[mt][nt][2] *= c1;
            out[mt][nt][3] *= c1;
        }
    }
}

// Block pointer of unit u (K or V), loaded a unit ahead of its use. The index is clamped to the
// table instead of the load being predicated: a predicated load made the compiler wait for it
// at once (7 % of the batch-8 time in one build). Past the blocks the pointer is never dereferenced (the issue
// functions check u), and with no blocks at all the host passes a readable dummy table.
__device__ __forceinline__ const uint8_t * unit_ptr(const FastArgs & a, int which, int u, int b0, int nbu) {
    const int last = nbu > 0 ? b0 + ((nbu - 1) >> a.lsub) : (b0 > 0 ? b0 - 1 : 0);
    const int bi = min(b0 + (max(u, 0) >> a.lsub), last);
    return (const uint8_t *) (which ? a.vb : a.kb)[bi];
}

__device__ __forceinline__ void mbar_init(uint64_t * bar) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;\n" ::"r"(smem_addr(bar)) : "memory");
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}
__device__ __forceinline__ void mbar_expect(uint64_t * bar, uint32_t bytes) {
    asm volatile("{\n.reg .b64 st;\nmbarrier.arrive.expect_tx.shared::cta.b64 st, [%0], %1;\n}\n" ::"r"(smem_addr(bar)),
                 "r"(bytes)
                 : "memory");
}
__device__ __forceinline__ void mbar_wait(uint64_t * bar, uint32_t parity) {
    asm volatile("{\n.reg .pred p;\nW%=:\nmbarrier.try_wait.parity.shared::cta.b64 p, [%0], %1;\n@!p bra W%=;\n}\n" ::"r"(
                     smem_addr(bar)),
                 "r"(parity)
                 : "memory");
}
__device__ __forceinline__ void bulk_copy(void * dst, const void * src, uint32_t bytes, uint64_t * bar) {
    asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];\n" ::"r"(
                     smem_addr(dst)),
                 "l"(src), "r"(bytes), "r"(smem_addr(bar))
                 : "memory");
}

// A block unit's K (codes unswizzled: the score loads are conflict-free as they are) with bulk
// copies completing on the slot's mbarrier; an empty cp.async group keeps the group count uniform.

__device__ __forceinline__ void issue_k_bulk(const FastArgs & a, uint8_t * dst, const uint8_t * blk, int u, int kvh,
                                             int lane, uint64_t * bar) {
    const Side & s = a.k;
    const int sub = u & ((1 << a.lsub) - 1);
    const int poff = s.par_hstep ? 0 : sub * 2 * SU;
    if (lane == 0) {  // one lane, straight-line: per-lane copies cost a divergent branch each
        mbar_expect(bar, I8_COPY ? 8192 + 512 + 256 + (s.asym ? 256 : 0) : 0);
        if (I8_COPY) {
            bulk_copy(dst, blk + s.codes + ((int64_t) kvh * a.chunk + sub * SU) * (HD / 2), 8192, bar);
            bulk_copy(dst + SLOT_B, blk + s.off_b + (s.bhead ? kvh * 512 : 0), 512, bar);
            bulk_copy(dst + SLOT_P, blk + s.off_par + (int64_t) kvh * s.par_hstep + poff, 256, bar);
            if (s.asym) {
                bulk_copy(dst + SLOT_P + 256, blk + s.off_min + (int64_t) kvh * s.par_hstep + poff, 256, bar);
            }
        }
    }
    cp_commit();
}

// A block unit's B and scales (and mins) by cp.async, into the slot's B and P areas.
__device__ __forceinline__ void issue_par(const Side & s, uint8_t * dst, const uint8_t * blk, int sub, int kvh, int lane) {
    if (!I8_COPY) {
        return;
    }
    cp16(dst + SLOT_B + lane * 16, blk + s.off_b + (s.bhead ? kvh * 512 : 0) + lane * 16, 16);
    const int poff = s.par_hstep ? 0 : sub * 2 * SU;
    if (lane < 16) {
        cp16(dst + SLOT_P + lane * 16, blk + s.off_par + (int64_t) kvh * s.par_hstep + poff + lane * 16, 16);
    } else if (s.asym) {
        cp16(dst + SLOT_P + lane * 16, blk + s.off_min + (int64_t) kvh * s.par_hstep + poff + (lane - 16) * 16, 16);
    }
}

// issue_unit with the 16 code copies unrolled (immediate offsets), the FP16 rows' bounds hoisted
// and the block pointer and the FP16 rows' base (res) passed in.
__device__ __forceinline__ void issue_i8(const FastArgs & a, uint8_t * dst, const uint8_t * blk, const uint8_t * base, int u,
                                         int u1, int which, int kvh, int nbu, int nres, int lane, int sw_off) {
    if (I8_COPY && u < u1) {
        if (u < nbu) {
            const Side & s = which ? a.v : a.k;
            const int sub = u & ((1 << a.lsub) - 1);
            const uint8_t * codes = blk + s.codes + ((int64_t) kvh * a.chunk + sub * SU) * (HD / 2) + lane * 16;
            uint8_t * d = dst + sw_off;
#pragma unroll
            for (int k = 0; k < 16; k++) {
                cp16(d + k * 512, codes + k * 512, 16);
            }
            issue_par(s, dst, blk, sub, kvh, lane);
        } else {
            const int tok0 = (u - nbu) * RP;
            const int n = nres - tok0 < RP ? nres - tok0 : RP;
            const int64_t rstride = (int64_t) a.nkv * HD * 2;
            const uint8_t * src0 = base + ((int64_t) tok0 * a.nkv + kvh) * HD * 2 + (lane & 15) * 16;
#pragma unroll 4
            for (int k = 0; k < 16; k++) {
                const int l = (lane >> 4) + 2 * k;
                const bool valid = l < n;
                cp16(dst + l * RS + (lane & 15) * 16, valid ? src0 + l * rstride : base, valid ? 16 : 0);
            }
        }
    }
    cp_commit();
}

// Large launches take a block unit's first I8_VLD V code pieces (of 16) by plain 16-byte loads into
// registers, stored into the slot (swizzled) when the unit's V is needed; the rest, B and the scales
// by cp.async as before. At 32K batch 8, the copies alone (-DDQ_I8_NOMATH=1) ran 6 % faster with V
// by plain loads, and without the slow SM groups that cp.async and bulk copies show. More than 8
// pieces spill registers with 11 warps (and ran slower); with -DDQ_I8_FW=8 all 16 fit (not timed).
#ifndef DQ_I8_VLD
#define DQ_I8_VLD 8
#endif
constexpr int I8_VLD = DQ_I8_VLD;
__device__ __forceinline__ void issue_v_ldg(const FastArgs & a, uint4 (&vst)[I8_VLD], uint8_t * dst, const uint8_t * blk,
                                            int u, int kvh, int lane, int sw_off) {
    const Side & s = a.v;
    const int sub = u & ((1 << a.lsub) - 1);
    const uint4 * codes = (const uint4 *) (blk + s.codes + ((int64_t) kvh * a.chunk + sub * SU) * (HD / 2)) + lane;
#pragma unroll
    for (int k = 0; k < 16; k++) {
        if (!I8_COPY) {
            vst[k] = make_uint4(0u, 0u, 0u, 0u);
        } else if (k < I8_VLD) {
            vst[k] = __ldcs(codes + 32 * k);
        } else {
            cp16(dst + sw_off + k * 512, codes + 32 * k, 16);
        }
    }
}
__device__ __forceinline__ void issue_v_par(const FastArgs & a, uint8_t * dst, const uint8_t * blk, int u, int kvh,
                                            int lane) {
    issue_par(a.v, dst, blk, u & ((1 << a.lsub) - 1), kvh, lane);
    cp_commit();
}

// With V loads in registers, the output accumulator waits in the warp's scratch (free once q^ is in
// registers) from the scores to the epilogue: 16 registers fewer there (without, 4-28 bytes spilled).
// Volatile: kept in memory.
__device__ __forceinline__ void park_out(uint8_t * scratch, const float (&out)[2][2][4], int lane) {
#pragma unroll
    for (int i = 0; i < 4; i++) {
        const float * o = out[i >> 1][i & 1];
        asm volatile("st.shared.v4.f32 [%0], {%1, %2, %3, %4};\n" ::"r"(smem_addr(scratch + i * 512 + lane * 16)), "f"(o[0]),
                     "f"(o[1]), "f"(o[2]), "f"(o[3])
                     : "memory");
    }
}
__device__ __forceinline__ void unpark_out(const uint8_t * scratch, float (&out)[2][2][4], int lane) {
#pragma unroll
    for (int i = 0; i < 4; i++) {
        float * o = out[i >> 1][i & 1];
        asm volatile("ld.shared.v4.f32 {%0, %1, %2, %3}, [%4];\n"
                     : "=f"(o[0]), "=f"(o[1]), "=f"(o[2]), "=f"(o[3])
                     : "r"(smem_addr(scratch + i * 512 + lane * 16))
                     : "memory");
    }
}

#if DQ_I8_TIMING
// diagnostics build only: per CTA [start, end, smid] and per warp [first K landed, loop done]
__device__ unsigned long long g_dq_tc[3 * 2048], g_dq_tw[2 * 2048 * FWI];
__device__ __forceinline__ unsigned long long gtimer() {
    unsigned long long t;
    asm volatile("mov.u64 %0, %globaltimer;" : "=l"(t));
    return t;
}
#endif
template <bool KCH, bool VCH, bool VL> __global__ void __launch_bounds__(FWI * 32, I8_MINB) k_attn_i8(const FastArgs a) {
    constexpr int NH = I8_NH, MT2 = 2;
    constexpr bool D3 = KCH;  // three digits of q^
    using WS = WarpSmemI8;
    extern __shared__ __align__(16) uint8_t smem[];
    __shared__ int s_last;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    WS * all = reinterpret_cast<WS *>(smem);
    WS & ws = all[warp];
    float * q_s = reinterpret_cast<float *>(smem + FWI * sizeof(WS));        // [NH][HD], q * scale * log2 e
    uint32_t * qf = reinterpret_cast<uint32_t *>(q_s + NH * HD);            // [NH][2 part][2 reg][32 lanes]
    const int split = blockIdx.x, kvh = blockIdx.y, seq = blockIdx.z, grp = a.grp;
    const unsigned FULL = 0xffffffffu;
#if DQ_I8_TIMING
    const int cta_id = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
    bool t_first = true;
    if (threadIdx.x == 0 && cta_id < 2048) {
        unsigned smid;
        asm volatile("mov.u32 %0, %smid;" : "=r"(smid));
        g_dq_tc[3 * cta_id] = gtimer();
        g_dq_tc[3 * cta_id + 2] = smid;
    }
#endif
    // q first: loaded after the K/V copies it would queue behind them (12 % of the batch-1 time)
    constexpr int QPT = (NH * HD + FWI * 32 - 1) / (FWI * 32);
    float qreg[QPT];
#pragma unroll
    for (int k = 0; k < QPT; k++) {
        const int i = threadIdx.x + k * FWI * 32, h = i / HD, c = i % HD;
        qreg[k] = i < NH * HD && h < grp ? a.q[((int64_t) seq * a.n_head + kvh * grp + h) * HD + c] : 0.0f;
    }

    const int b0 = a.blk_start[seq], nbu = (a.blk_start[seq + 1] - b0) << a.lsub;
    const int nres = a.res_len ? a.res_len[seq] : 0;
    const int U = nbu + (nres + RP - 1) / RP;
    // Warps take units in groups of G, round robin; G = 2 for blocks of 256 or more tokens, so that
    // a block's two units share q^ (1-3 % faster there; pairs of 128-token blocks ran 2 % slower).
    // Splits fall on group boundaries.
    const int G = a.lsub ? 2 : 1;
    const int NG = (U + G - 1) / G;
    const int u0 = G * (NG * split / a.ns), u1 = min(U, G * (NG * (split + 1) / a.ns));
    const int sw_issue = (lane >> 2) * 64 + (((lane & 3) ^ ((lane >> 3) & 3)) << 4);
    int u = u0 + G * warp;
    // this warp's unit after uu: the next one of its group, else the first of its next group
    auto next_unit = [&](int uu) -> int { return ((uu - u0) & (G - 1)) != G - 1 ? uu + 1 : uu - (G - 1) + G * FWI; };
    uint32_t kph = 0;  // parity of the K barrier's next phase
    if (lane == 0) {
        mbar_init(&ws.kbar);
    }
    __syncwarp();
    uint8_t * const karea = ws.slot[0];
    uint4 vst[I8_VLD];
    // the FP16 rows' base of K (0) or V (1): loaded per unit in VL kernels (4 bytes spilled with it in
    // shared memory), else from the warp's shared memory (a load per unit there held each FP16 unit's
    // copies up by a load's latency)
    auto res_base = [&](int which) -> const uint8_t * {
        return VL ? (const uint8_t *) (which ? a.vres : a.kres)[seq] : ws.res[which];
    };
    auto issue_v = [&](const uint8_t * blk, int uu) {
        if (VL && uu < u1 && uu < nbu) {
            issue_v_ldg(a, vst, ws.slot[1], blk, uu, kvh, lane, sw_issue);
            issue_v_par(a, ws.slot[1], blk, uu, kvh, lane);
        } else {
            issue_i8(a, ws.slot[1], blk, res_base(1), uu, u1, 1, kvh, nbu, nres, lane, sw_issue);
        }
    };
    auto land_v = [&]() {
        if (VL) {
#pragma unroll
            for (int k = 0; k < I8_VLD; k++) {
                *(uint4 *) (ws.slot[1] + sw_issue + k * 512) = vst[k];
            }
        }
    };
    auto issue_k = [&](const uint8_t * blk, int uu, const uint8_t * kres) {
        if (uu < u1 && uu < nbu) {
            issue_k_bulk(a, karea, blk, uu, kvh, lane, &ws.kbar);
        } else {
            issue_i8(a, karea, blk, kres, uu, u1, 0, kvh, nbu, nres, lane, sw_issue);
        }
    };
    // the pointers of this unit and the next before the first copy (the copies' memory clobbers
    // would keep later loads behind them); the next unit's copies are issued during this one
    int un = next_unit(u);
    const uint8_t * pk1 = unit_ptr(a, 0, un, b0, nbu), * pv1 = unit_ptr(a, 1, un, b0, nbu);
    const uint8_t * pv0 = unit_ptr(a, 1, u, b0, nbu);
    // the FP16 rows' bases, in the warp's shared memory from the first barrier on
    const uint8_t * const res0 = !VL && a.res_len ? (const uint8_t *) a.kres[seq] : nullptr;
    const uint8_t * const res1 = !VL && a.res_len ? (const uint8_t *) a.vres[seq] : nullptr;
    issue_k(unit_ptr(a, 0, u, b0, nbu), u, VL ? res_base(0) : res0);  // the first V after the prologue, below
#pragma unroll
    for (int k = 0; k < QPT; k++) {
        const int i = threadIdx.x + k * FWI * 32;
        if (i < NH * HD) {
            q_s[i] = qreg[k] * a.cscale;
        }
    }
    if (lane == 0) {
        ws.res[0] = res0;
        ws.res[1] = res1;
    }
    __syncthreads();
    for (int i = threadIdx.x; i < NH * 4 * 32; i += FWI * 32) {
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
    __syncthreads();
    // every warp asks for its first unit at once, so the K units should come in first: the scores
    // can start while the V units land (with the unrolled FP16-span loops, -4 to -6 % at batch 1).
    // Small launches (no VL) ask for a first block unit's V only once its K has landed: the first
    // K units then land sooner (batch 1 -3 to -4 %)
    bool v_late = !VL && u < nbu;
    if (!v_late) {
        issue_v(pv0, u);
    }

    const int hq = g >> 1;                                                   // this lane's head (scores, P)
    const uint32_t dsel = (g & 1) ? 0x0051u : 0x0040u;                       // its digit of P
    const int k_off = g * 64 + t * 16;                                       // token 8 nt + g, piece t (unswizzled)
    const int lr = lane & 7, mi = lane >> 3;
    const int v_off = lane * 64;                                             // token 32 ks + lane
    const int vsw = (lane >> 1) & 3;
    const int fw_off = (t * 4 + 2 * (g & 1)) * 16 + (g >> 1);               // q^ byte this lane writes
    const int zpk = a.k.asym ? 0 : 7, zpv = a.v.asym ? 0 : 7;
    const float wself = (g & 1) ? 65536.0f : 1.0f;                          // digit weight of this lane (D3)

    float fk = 0.0f, cadd = 0.0f, q1f = 0.0f;  // q^ of block q_blk: scale, asym offset, digit sum
    int q1s = 0, q_blk = -1;
    uint4 A4[4];
    float m_run = -INFINITY, l_run = 0.0f;  // head hq (l_run: this lane's tokens; summed over t at the end)
    float out[MT2][2][4];                   // out[h][16r + j]: (h, r) = (2 mt + (e >> 1), g), j = 8 nt + 2t + (e & 1)
#pragma unroll
    for (int i = 0; i < MT2; i++) {
#pragma unroll
        for (int j = 0; j < 2; j++) {
            out[i][j][0] = out[i][j][1] = out[i][j][2] = out[i][j][3] = 0.0f;
        }
    }

    while (u < u1) {
        // the unit after the next one, and its pointers (used in the next iteration)
        const int un2 = next_unit(un);
        const uint8_t * pk2 = unit_ptr(a, 0, un2, b0, nbu), * pv2 = unit_ptr(a, 1, un2, b0, nbu);
        cp_wait<1>();  // this unit's K (its V may still be in flight)
        __syncwarp();
        const uint8_t * sk = karea;
        const uint8_t * sv = ws.slot[1];
        if (u < nbu) {
            mbar_wait(&ws.kbar, kph);
            kph ^= 1u;
#if DQ_I8_TIMING
            if ((t_first || DQ_I8_TIMING == 2) && lane == 0 && cta_id < 2048) {  // 2: the last unit's K
                g_dq_tw[2 * (cta_id * FWI + warp)] = gtimer();
            }
            t_first = false;
#endif
            if (v_late) {
                issue_v(pv0, u);
                v_late = false;
            }
#if DQ_I8_NOMATH  // diagnostics: the copies alone, in the same order (the output is garbage)
            __syncwarp();
            issue_k(pk1, un, res_base(0));
            cp_wait<1>();
            land_v();
            __syncwarp();
            issue_v(pv1, un);
#else
            // ------------------------------------------------ q~ = B_k q, then q^ as two int8 digits
            // (once per block: the second unit of a pair reuses them when it is in the same block)
            const int blk_u = u >> a.lsub;
            if (blk_u != q_blk) {
                q_blk = blk_u;
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
                // value i of qt[h]: channel 32t + {g, 16 + g, 8 + g, 24 + g}[i]
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
                float fkh[NH], q2h[NH];
                uint8_t * F = ws.scratch;
                // only the exponent of max |q~| matters; |q~| >= 0, so its bits order as unsigned
                // integers: one redux per head
                uint32_t exh[NH];
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
                    exh[h] = __reduce_max_sync(FULL, __float_as_uint(am)) >> 23;
                    q2h[h] = q2;
                }
                if (KCH && a.k.asym) {
                    // sum of the four heads at once: halve the heads per step, then lanes 8h..8h+7 hold head h
                    cadd = sum4_heads(q2h, lane);
                }
                // q^ digit sums (the codes' zero point, per score row) by redux, off the fragment path
                int sy[NH], sd2[NH];
#pragma unroll
                for (int h = 0; h < NH; h++) {
                    // |q^| <= 0.99 * 2^15 (2^23 with three digits): the top digit stays in [-127, 127]
                    const int exb = (int) exh[h];  // biased exponent of max |q~| (0: all zero)
                    int e = exb ? (D3 ? 22 : 14) - (exb - 127) : 0;
                    e = e > 100 ? 100 : e < -100 ? -100 : e;
                    const float sc = pow2i(e) * 0.99f;
                    fkh[h] = pow2i(-e) * (1.0f / 0.99f);
                    int ys = 0, d2s = 0;
#pragma unroll
                    for (int i = 0; i < 4; i++) {
                        const int w = i == 0 ? 0 : i == 1 ? 2 : i == 2 ? 1 : 3;
                        const int idx = fw_off + h * 256 + (w >> 1) * 16 + (w & 1) * 8;
                        if (D3) {
                            const int y = __float2int_rn(qt[h][i] * sc);
                            const int y1 = (y + 128) >> 8, y2 = (y1 + 128) >> 8;
                            F[idx] = (uint8_t) y;                       // digits in [-128, 127], as s8
                            F[idx + 4] = (uint8_t) y1;
                            F[idx + 1024] = (uint8_t) y2;
                            ys += y;
                            d2s += y2;
                        } else {
                            const int bits = __float_as_int(fmaf(qt[h][i], sc, 12582912.0f)); // 1.5 * 2^23 + q^
                            F[idx] = (uint8_t) bits;                     // low digit: q^ mod 256 as s8
                            F[idx + 4] = (uint8_t) ((bits + 128) >> 8);  // high digit
                            ys += (bits & 0x7fffff) - 0x400000;
                        }
                    }
                    sy[h] = __reduce_add_sync(FULL, ys);
                    sd2[h] = D3 ? __reduce_add_sync(FULL, d2s) : 0;
                }
                fk = sel4(fkh, hq);
                {
                    const int syh = sel4(sy, hq), sd2h = sel4(sd2, hq);
                    // a row's digit sum: rows of digits 0 and 1 (y - 2^16 d2), or of digit 2 (odd lanes, D3)
                    q1s = D3 && (g & 1) ? sd2h : syh - 65536 * sd2h;
                    q1f = D3 ? (float) (syh - 65536 * sd2h) + 65536.0f * (float) sd2h : (float) syh;
                }
                __syncwarp();
                // fragment (head hq, piece t): [m][a0 d0 | a1 d1 | a2 d0 | a3 d1], m = 2 * nibble + (word >> 1);
                // three digits: odd lanes take [d2 | 0 | d2 | 0] from the second KB
                const bool odd = D3 && (g & 1);
#pragma unroll
                for (int m = 0; m < 4; m++) {
                    A4[m] = *(const uint4 *) (F + (odd ? 1024 : 0) + hq * 256 + t * 64 + m * 16);
                    if (odd) {
                        A4[m].y = A4[m].w = 0u;
                    }
                }
            }
            const int zq = -zpk * q1s;
            if (VL) {
                __syncwarp();  // every lane has read its q^ fragments from the scratch
                park_out(ws.scratch, out, lane);
            }

            // ------------------------------------------------ scores of the unit's 128 tokens
            const uint32_t * kpar = (const uint32_t *) (sk + SLOT_P);
            float s[16][2];
            float mx = -INFINITY;
#pragma unroll
            for (int nt = 0; nt < 16; nt++) {
                const uint4 X = *(const uint4 *) (sk + k_off + nt * 512);
                int d[4] = {zq, zq, 0, 0};
                imma_s8u8(d, A4[0], X.x & M0F, X.y & M0F);
                imma_s8u8(d, A4[1], X.z & M0F, X.w & M0F);
                imma_s8u8(d, A4[2], (X.x >> 4) & M0F, (X.y >> 4) & M0F);
                imma_s8u8(d, A4[3], (X.z >> 4) & M0F, (X.w >> 4) & M0F);
                float x0 = (float) (d[0] + 256 * d[2]), x1 = (float) (d[1] + 256 * d[3]);
                if (D3) {  // the pair of lanes g, g ^ 1 holds digits (0, 1) and 2 of the same scores
                    x0 *= wself;
                    x1 *= wself;
                    x0 += __shfl_xor_sync(FULL, x0, 4);
                    x1 += __shfl_xor_sync(FULL, x1, 4);
                }
                if (!KCH) {
                    const float2 ks = h22f(kpar[4 * nt + t]);
                    x0 *= ks.x;
                    x1 *= ks.y;
                    if (a.k.asym) {
                        const float2 kl = h22f(kpar[64 + 4 * nt + t]);
                        x0 = fmaf(kl.x, q1f, x0);
                        x1 = fmaf(kl.y, q1f, x1);
                    }
                }
                s[nt][0] = x0;
                s[nt][1] = x1;
                mx = fmaxf(mx, fmaxf(x0, x1));
            }
            mx = fmaxf(mx, __shfl_xor_sync(FULL, mx, 1));
            mx = fmaxf(mx, __shfl_xor_sync(FULL, mx, 2));
            const float mnew = fmaxf(m_run, fmaf(mx, fk, cadd));
            const float corr = m_run == -INFINITY ? 0.0f : fexp2(m_run - mnew);
            m_run = mnew;
            const float nb = cadd - mnew;  // p = 2^(fk s + nb)

            __syncwarp();
            issue_k(pk1, un, res_base(0));
            cp_wait<1>();  // this unit's V
            land_v();
            __syncwarp();

            // ------------------------------------------------ weights as 15-bit fixed point, P digits
            float qsc = 32768.0f;  // channel scales: p <= 1
            if (!VCH) {            // token scales: p * s * nu < 2, nu a power of two
                const uint2 raw = *(const uint2 *) (sv + SLOT_P + lane * 8);
                const float2 s01 = h22f(raw.x), s23 = h22f(raw.y);
                float vm = fmaxf(fmaxf(s01.x, s01.y), fmaxf(s23.x, s23.y));
                vm = warp_max_redux(vm);
                qsc = 16384.0f * (vm > 0.0f ? pow2i(-ilog2f(vm)) : 1.0f);
            }
            const uint32_t * vpar = (const uint32_t *) (sv + SLOT_P);
            float ls = 0.0f, splo = 0.0f;
            uint32_t Qb[16][2];
#pragma unroll
            for (int nt = 0; nt < 16; nt++) {
                const float p0 = fexp2(fmaf(s[nt][0], fk, nb)), p1 = fexp2(fmaf(s[nt][1], fk, nb));
                ls += p0 + p1;
                float f0 = qsc, f1 = qsc;
                if (!VCH) {
                    const float2 vs = h22f(vpar[4 * nt + t]);
                    f0 *= vs.x;
                    f1 *= vs.y;
                    if (a.v.asym) {
                        const float2 vl = h22f(vpar[64 + 4 * nt + t]);
                        splo = fmaf(p0, vl.x, fmaf(p1, vl.y, splo));
                    }
                }
                Qb[nt][0] = (uint32_t) __float_as_int(fmaf(p0, f0, 8388608.0f));  // 2^23 + Q
                Qb[nt][1] = (uint32_t) __float_as_int(fmaf(p1, f1, 8388608.0f));
            }
            l_run = l_run * corr + ls;

            // ------------------------------------------------ V in A-space (int8 tensor cores)
            int av[4][2][4], asum[4] = {0, 0, 0, 0};
#pragma unroll
            for (int c = 0; c < 4; c++) {
#pragma unroll
                for (int pp = 0; pp < 2; pp++) {
                    av[c][pp][0] = av[c][pp][1] = av[c][pp][2] = av[c][pp][3] = 0;
                }
            }
#pragma unroll
            for (int ks = 0; ks < 4; ks++) {
                // k slots 4t..4t+3 <-> tokens {2t, 2t+1, 8+2t, 9+2t} (+16 for b1) of these 32
                uint32_t pb[2];
#pragma unroll
                for (int hb = 0; hb < 2; hb++) {
                    const int n0 = 4 * ks + 2 * hb;
                    pb[hb] = prmt(prmt(Qb[n0][0], Qb[n0][1], dsel), prmt(Qb[n0 + 1][0], Qb[n0 + 1][1], dsel), 0x5410u);
                }
                uint32_t r[4][4];
#pragma unroll
                for (int P = 0; P < 4; P++) {
                    ldsm4t(r[P], sv + ks * 2048 + v_off + ((P ^ vsw) << 4));
                }
#pragma unroll
                for (int pp = 0; pp < 2; pp++) {
                    // byte 0 of a b16 element: channels 4g, 4g+1 of the piece; byte 1: 4g+2, 4g+3
                    const uint32_t e0 = prmt(r[2 * pp][0], r[2 * pp][1], 0x6420u);
                    const uint32_t o0 = prmt(r[2 * pp][0], r[2 * pp][1], 0x7531u);
                    const uint32_t e1 = prmt(r[2 * pp][2], r[2 * pp][3], 0x6420u);
                    const uint32_t o1 = prmt(r[2 * pp][2], r[2 * pp][3], 0x7531u);
                    const uint32_t f0 = prmt(r[2 * pp + 1][0], r[2 * pp + 1][1], 0x6420u);
                    const uint32_t h0 = prmt(r[2 * pp + 1][0], r[2 * pp + 1][1], 0x7531u);
                    const uint32_t f1 = prmt(r[2 * pp + 1][2], r[2 * pp + 1][3], 0x6420u);
                    const uint32_t h1 = prmt(r[2 * pp + 1][2], r[2 * pp + 1][3], 0x7531u);
                    imma_u8u8(av[0][pp], e0 & M0F, f0 & M0F, e1 & M0F, f1 & M0F, pb[0], pb[1]);
                    imma_u8u8(av[1][pp], e0 & MF0, f0 & MF0, e1 & MF0, f1 & MF0, pb[0], pb[1]);
                    imma_u8u8(av[2][pp], o0 & M0F, h0 & M0F, o1 & M0F, h1 & M0F, pb[0], pb[1]);
                    imma_u8u8(av[3][pp], o0 & MF0, h0 & MF0, o1 & MF0, h1 & MF0, pb[0], pb[1]);
                }
                imma_u8u8(asum, 0x01010101u, 0x01010101u, 0x01010101u, 0x01010101u, pb[0], pb[1]);
            }
            // what the epilogue needs from the V slot, so that the next unit's V can start landing
            uint32_t bv[4];
            ldsm4t(bv, sv + SLOT_B + (lr + 8 * (mi & 1)) * 32 + 16 * (mi >> 1));
            uint2 vsr[4], vlr[4];
            if (VCH) {
#pragma unroll
                for (int P = 0; P < 4; P++) {
                    vsr[P] = *(const uint2 *) (sv + SLOT_P + 2 * (32 * P + 4 * g));
                    vlr[P] = a.v.asym ? *(const uint2 *) (sv + SLOT_P + 256 + 2 * (32 * P + 4 * g)) : make_uint2(0u, 0u);
                }
            }
            __syncwarp();  // the V slot's codes are read: the A-space buffer goes there

            // ------------------------------------------------ A-space (head t) -> out, B_v on the tensor cores
            {
                const int spi = asum[0] + 256 * asum[1];  // sum of Q, head t
                const int zsp = zpv * spi;
                float lov = 0.0f;
                if (!VCH && a.v.asym) {
                    splo += __shfl_xor_sync(FULL, splo, 1);
                    splo += __shfl_xor_sync(FULL, splo, 2);
                    lov = __shfl_sync(FULL, splo, 8 * t);
                }
                const float inv = 1.0f / qsc;
                const float spf = (float) spi;
                uint8_t * As = ws.slot[1];
#pragma unroll
                for (int P = 0; P < 4; P++) {  // channels 32P + 4g + c: row r = 2P + g / 4, i = 4 (g % 4) + c
                    const int pp = P >> 1, hf = P & 1;
                    float x[4];
#pragma unroll
                    for (int c = 0; c < 4; c++) {
                        int xi = av[c][pp][2 * hf] + 256 * av[c][pp][2 * hf + 1];
                        if (c & 1) {
                            xi >>= 4;  // high-nibble codes came in as 16 u: exact
                        }
                        x[c] = (float) (xi - zsp);
                    }
                    if (VCH) {
                        const float2 s01 = h22f(vsr[P].x), s23 = h22f(vsr[P].y);
                        const float2 l01 = h22f(vlr[P].x), l23 = h22f(vlr[P].y);
                        x[0] = fmaf(s01.x, x[0], l01.x * spf) * inv;
                        x[1] = fmaf(s01.y, x[1], l01.y * spf) * inv;
                        x[2] = fmaf(s23.x, x[2], l23.x * spf) * inv;
                        x[3] = fmaf(s23.y, x[3], l23.y * spf) * inv;
                    } else {
#pragma unroll
                        for (int c = 0; c < 4; c++) {
                            x[c] = fmaf(x[c], inv, lov);
                        }
                    }
                    const __half2 h01 = __floats2half2_rn(x[0], x[1]), h23 = __floats2half2_rn(x[2], x[3]);
                    const float2 r01 = __half22float2(h01), r23 = __half22float2(h23);
                    const __half2 l01 = __floats2half2_rn(x[0] - r01.x, x[1] - r01.y);
                    const __half2 l23 = __floats2half2_rn(x[2] - r23.x, x[3] - r23.y);
                    const int off = i8_as_off(8 * t + 2 * P + (g >> 2)) + 8 * (g & 3);
                    *(uint2 *) (As + off) = make_uint2(*(const uint32_t *) &h01, *(const uint32_t *) &h23);
                    *(uint2 *) (As + I8_ASB + off) = make_uint2(*(const uint32_t *) &l01, *(const uint32_t *) &l23);
                }
                __syncwarp();
                uint32_t ahi[MT2][4], alo[MT2][4];
#pragma unroll
                for (int mt = 0; mt < MT2; mt++) {
                    const uint8_t * src = As + i8_as_off(16 * mt + 8 * (mi & 1) + lr) + 16 * (mi >> 1);
                    ldsm4(ahi[mt], src);
                    ldsm4(alo[mt], src + I8_ASB);
                }
                __syncwarp();  // the next unit's V may land now
                issue_v(pv1, un);
                if (VL) {
                    unpark_out(ws.scratch, out, lane);
                }
                rescale_out(out, corr);
#pragma unroll
                for (int mt = 0; mt < MT2; mt++) {
#pragma unroll
                    for (int nt = 0; nt < 2; nt++) {
                        mma16816(out[mt][nt], ahi[mt][0], ahi[mt][1], ahi[mt][2], ahi[mt][3], bv[2 * nt], bv[2 * nt + 1]);
                        mma16816(out[mt][nt], alo[mt][0], alo[mt][1], alo[mt][2], alo[mt][3], bv[2 * nt], bv[2 * nt + 1]);
                    }
                }
            }
#endif
        } else {
            // ------------------------------------------------ 32 tokens of the FP16 span
#if DQ_I8_TIMING == 2
            if (lane == 0 && cta_id < 2048) {
                g_dq_tw[2 * (cta_id * FWI + warp)] = gtimer();
            }
#endif
            const int tok0 = (u - nbu) * RP;
            const int n = nres - tok0 < RP ? nres - tok0 : RP;
            float s[NH];
            span_scores<NH, 4>(sk + lane * RS, q_s, s);  // (unrolled: a 32-token span took 2 us more than a block unit)
            __syncwarp();
            issue_k(pk1, un, res_base(0));
            float * Pf = reinterpret_cast<float *>(ws.scratch);
            float mh[NH], lsum[NH];
#pragma unroll
            for (int h = 0; h < NH; h++) {  // every head's state is kept by the lanes 8h..8h+7: broadcast it
                const float x = lane < n ? s[h] : -INFINITY;
                float mx = x;
#pragma unroll
                for (int o = 1; o < 32; o <<= 1) {
                    mx = fmaxf(mx, __shfl_xor_sync(FULL, mx, o));
                }
                const float m2 = fmaxf(__shfl_sync(FULL, m_run, 8 * h), mx);
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
            float mg = mh[0], sg = lsum[0];
#pragma unroll
            for (int h = 1; h < NH; h++) {
                mg = hq == h ? mh[h] : mg;
                sg = hq == h ? lsum[h] : sg;
            }
            const float corr = m_run == -INFINITY ? 0.0f : fexp2(m_run - mg);
            m_run = mg;
            l_run = l_run * corr + (t == 0 ? sg : 0.0f);
            cp_wait<1>();  // this unit's V rows
            __syncwarp();
            rescale_out(out, corr);
            span_accumulate_v<MT2, 4>(sv, 2 * (16 * g + 2 * t), Pf, n, out);
            __syncwarp();
            issue_v(pv1, un);
        }
        u = un;
        un = un2;
        pk1 = pk2;
        pv1 = pv2;
        __syncwarp();  // the scratch is reused by the next unit
    }
    cp_wait<0>();
    __syncwarp();
#if DQ_I8_TIMING
    if (lane == 0 && cta_id < 2048) {
        g_dq_tw[2 * (cta_id * FWI + warp) + 1] = gtimer();
    }
#endif

    // ---------------------------------------------------- merge the CTA's warps, then the splits
    l_run += __shfl_xor_sync(FULL, l_run, 1);
    l_run += __shfl_xor_sync(FULL, l_run, 2);
    if (t == 0 && (g & 1) == 0) {
        ws.hv[HM][hq] = m_run;
        ws.hv[HL][hq] = l_run;
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
    merge_splits<NH, FWI, WS>(a, all, seq, kvh, split, grp, &s_last);
#if DQ_I8_TIMING
    if (threadIdx.x == 0 && cta_id < 2048) {
        g_dq_tc[3 * cta_id + 1] = gtimer();
    }
#endif
}
