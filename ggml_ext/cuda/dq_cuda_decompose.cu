// Decompose-on-append on the GPU: the same arithmetic as dq_decompose.c / dq_factor.c, in the
// same order, so that the blocks come out byte-identical. This file is compiled with
// --fmad=false (the CPU library builds with -ffp-contract=off): every product and sum is
// rounded on its own, as in the C code.
//
// Per batch: (1) one CTA per (chunk, scope group): Gram matrix in double, summed row by row
// in the CPU's order (the products of floats are exact in double, so the sums match bit for
// bit), then one warp runs the cyclic Jacobi sweeps in shared memory (the 16 column updates
// and the 16 eigenvector updates of a rotation run on the warp's lanes at once), sorts,
// signs, gauges, and writes W (A = M W) and B; (2) A = M W per value in double; (3) channel
// parameters per channel over the chunk's tokens (channel mode); (4) one CTA per (chunk,
// token): token or row parameters, quantize, pack.
#include "dq_cuda_common.h"

#include <math.h>

namespace {

struct DecArgs {
    const void * x;
    int64_t x_stride;
    const void * const * x_ptrs;
    int x_f16;
    uint8_t * blocks;
    int64_t block_stride;
    void * const * block_ptrs;
    int n, nkv, hd, D, G, rg, rows, rh;
    int bits, scale_mode, asym, per, npar;
    float gauge;
    int64_t off_b, off_cparam, off_tparam, off_codes, size;
    double * W;    // [n_chunks][G][16][16]
    float * A;     // [n_chunks][n][D]
    float * cpar;  // [n_chunks][2][D]: channel scale, min (fp16 values)
};

__device__ inline float load_x(const DecArgs & a, int chunk, int64_t idx) {
    if (a.x_ptrs) {
        const void * base = a.x_ptrs[chunk];
        return a.x_f16 ? __half2float(((const __half *) base)[idx]) : ((const float *) base)[idx];
    }
    const int64_t off = (int64_t) chunk * a.x_stride + idx;
    return a.x_f16 ? __half2float(((const __half *) a.x)[off]) : ((const float *) a.x)[off];
}

__device__ inline uint8_t * block_of(const DecArgs & a, int chunk) {
    return a.block_ptrs ? (uint8_t *) a.block_ptrs[chunk] : a.blocks + (int64_t) chunk * a.block_stride;
}

__device__ inline float f16r(float x) { return __half2float(__float2half_rn(x)); }

constexpr int GRAM_TILE = 256;

// (1) Gram + Jacobi + canonical W and B. blockDim = 256.
__global__ void __launch_bounds__(256) k_factor(DecArgs a) {
    const int chunk = blockIdx.x / a.G, g = blockIdx.x % a.G;
    const int tid = threadIdx.x, lane = tid & 31;
    __shared__ float tile[GRAM_TILE][17];
    __shared__ double gm[16][17];
    __shared__ double vm[16][17];
    __shared__ double w[16];
    __shared__ int order[16];
    __shared__ int stop;

    // pairs (i <= j): thread tid < 136
    int pi = 0, pj = 0;
    if (tid < 136) {
        int k = tid;
        while (k >= 16 - pi) {
            k -= 16 - pi;
            pi++;
        }
        pj = pi + k;
    }
    const int64_t nrows = (int64_t) a.n * a.rg;
    double acc = 0.0;
    for (int64_t base = 0; base < nrows; base += GRAM_TILE) {
        for (int e = tid; e < GRAM_TILE * 16; e += blockDim.x) {
            const int64_t r = base + e / 16;
            float v = 0.0f;
            if (r < nrows) {
                const int64_t t = r / a.rg, rr = r % a.rg;
                v = load_x(a, chunk, t * a.D + ((int64_t) g * a.rg + rr) * 16 + e % 16);
            }
            tile[e / 16][e % 16] = v;
        }
        __syncthreads();
        if (tid < 136) {
            const int nr = (int) (nrows - base < GRAM_TILE ? nrows - base : GRAM_TILE);
            for (int r = 0; r < nr; r++) {
                const double xi = tile[r][pi];
                acc += xi * (double) tile[r][pj];
            }
        }
        __syncthreads();
    }
    if (tid < 136) {
        gm[pi][pj] = acc;
        gm[pj][pi] = acc;
    }
    if (tid < 256) {
        vm[tid / 16][tid % 16] = (tid / 16 == tid % 16) ? 1.0 : 0.0;
    }
    __syncthreads();

    if (tid < 32) { // the eigensolver: warp 0, same operations as jacobi16 in dq_factor.c
        for (int sweep = 0; sweep < 64; sweep++) {
            if (lane == 0) {
                double off = 0.0, diag = 0.0;
                for (int i = 0; i < 16; i++) {
                    diag += gm[i][i] * gm[i][i];
                    for (int j = i + 1; j < 16; j++) {
                        off += gm[i][j] * gm[i][j];
                    }
                }
                stop = (off <= 1e-30 * diag || off == 0.0);
            }
            __syncwarp();
            const int done = stop;
            __syncwarp();
            if (done) {
                break;
            }
            for (int p = 0; p < 15; p++) {
                for (int q = p + 1; q < 16; q++) {
                    const double apq = gm[p][q];
                    if (fabs(apq) < 1e-300) {
                        continue;
                    }
                    const double theta = (gm[q][q] - gm[p][p]) / (2.0 * apq);
                    const double t = (theta >= 0 ? 1.0 : -1.0) / (fabs(theta) + sqrt(theta * theta + 1.0));
                    const double c = 1.0 / sqrt(t * t + 1.0);
                    const double s = t * c;
                    __syncwarp();
                    if (lane < 16) { // A <- A J
                        const int k = lane;
                        const double akp = gm[k][p], akq = gm[k][q];
                        gm[k][p] = c * akp - s * akq;
                        gm[k][q] = s * akp + c * akq;
                    } else { // V <- V J
                        const int k = lane - 16;
                        const double vkp = vm[k][p], vkq = vm[k][q];
                        vm[k][p] = c * vkp - s * vkq;
                        vm[k][q] = s * vkp + c * vkq;
                    }
                    __syncwarp();
                    if (lane < 16) { // A <- J^T A
                        const int k = lane;
                        const double apk = gm[p][k], aqk = gm[q][k];
                        gm[p][k] = c * apk - s * aqk;
                        gm[q][k] = s * apk + c * aqk;
                    }
                    __syncwarp();
                }
            }
        }
        if (lane < 16) {
            w[lane] = gm[lane][lane];
        }
        __syncwarp();
        if (lane == 0) {
            for (int i = 0; i < 16; i++) {
                order[i] = i;
            }
            for (int i = 1; i < 16; i++) { // insertion sort, descending eigenvalue
                const int o = order[i];
                int j = i - 1;
                while (j >= 0 && w[order[j]] < w[o]) {
                    order[j + 1] = order[j];
                    j--;
                }
                order[j + 1] = o;
            }
        }
        __syncwarp();
        if (lane < 16) {
            const int j = lane, o = order[j];
            const double w0 = w[order[0]];
            const double smax = sqrt(w0 > 0 ? w0 : 0.0);
            int imax = 0;
            for (int i = 1; i < 16; i++) {
                if (fabs(vm[i][o]) > fabs(vm[imax][o])) {
                    imax = i;
                }
            }
            const double sign = vm[imax][o] < 0 ? -1.0 : 1.0;
            const double s = sqrt(w[o] > 0 ? w[o] : 0.0);
            const int keep = smax > 0 && s > smax * (1.0 / 1048576.0);
            const double fa = keep ? pow(s, (double) a.gauge - 1.0) : 0.0;
            const double fb = keep ? pow(s, 1.0 - (double) a.gauge) : 0.0;
            double * W = a.W + ((int64_t) chunk * a.G + g) * 256;
            uint8_t * blk = block_of(a, chunk);
            __half * bsec = (__half *) (blk + a.off_b) + g * 256;
            for (int i = 0; i < 16; i++) {
                W[i * 16 + j] = sign * vm[i][o] * fa;
                const double bji = sign * vm[i][o] * fb;
                bsec[j * 16 + i] = __float2half_rn((float) bji);
            }
        }
    }
    // zero the padding at the ends of the token-parameter and code sections (dq_decompose
    // clears the whole block first)
    if (g == 0) {
        uint8_t * blk = block_of(a, chunk);
        const int64_t tp_end = a.off_tparam + (int64_t) a.npar * a.n * a.per * 2;
        for (int64_t i = tp_end + tid; i < a.off_codes; i += blockDim.x) {
            blk[i] = 0;
        }
        const int64_t c_end = a.off_codes + (int64_t) a.n * a.D * a.bits / 8;
        for (int64_t i = c_end + tid; i < a.size; i += blockDim.x) {
            blk[i] = 0;
        }
    }
}

// (2) A = M W, one value per thread, in double as dq_decompose.
__global__ void __launch_bounds__(256) k_transform(DecArgs a, int64_t per_chunk) {
    const int64_t idx = (int64_t) blockIdx.x * blockDim.x + threadIdx.x;
    const int chunk = blockIdx.y;
    if (idx >= per_chunk) {
        return;
    }
    const int64_t t = idx / a.D;
    const int c = (int) (idx % a.D);
    const int row = c / 16, j = c % 16, g = row / a.rg;
    const double * W = a.W + ((int64_t) chunk * a.G + g) * 256;
    const int64_t base = t * a.D + (int64_t) row * 16;
    double acc = 0.0;
#pragma unroll
    for (int i = 0; i < 16; i++) {
        acc += (double) load_x(a, chunk, base + i) * W[i * 16 + j];
    }
    a.A[(int64_t) chunk * per_chunk + idx] = (float) acc;
}

struct QP {
    float scale, lo;
};

__device__ inline QP qparam_asym(float lo, float hi, int bits) {
    QP p;
    p.lo = f16r(lo);
    p.scale = f16r((hi - p.lo) / (float) ((1 << bits) - 1));
    return p;
}

__device__ inline QP qparam_sym(float amax, int bits) {
    QP p;
    p.lo = 0.0f;
    p.scale = f16r(amax / (float) dq_cuda_qmax(bits));
    return p;
}

__device__ inline uint32_t quant1(float x, QP p, int bits, int asym) {
    if (!(p.scale > 0.0f)) {
        return asym ? 0u : (uint32_t) dq_cuda_qmax(bits);
    }
    if (asym) {
        const float u = roundf((x - p.lo) / p.scale);
        const float top = (float) ((1 << bits) - 1);
        return (uint32_t) (u < 0.0f ? 0.0f : u > top ? top : u);
    }
    const int qm = dq_cuda_qmax(bits);
    const float q = roundf(x / p.scale);
    return (uint32_t) ((q < -qm ? -qm : q > qm ? qm : q) + qm);
}

// (3) channel parameters: one thread per channel, over the chunk's tokens.
__global__ void __launch_bounds__(256) k_chparams(DecArgs a) {
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    const int chunk = blockIdx.y;
    if (c >= a.D) {
        return;
    }
    const float * A = a.A + (int64_t) chunk * a.n * a.D;
    QP p;
    if (a.asym) {
        float lo = A[c], hi = A[c];
        for (int t = 1; t < a.n; t++) {
            const float x = A[(int64_t) t * a.D + c];
            lo = x < lo ? x : lo;
            hi = x > hi ? x : hi;
        }
        p = qparam_asym(lo, hi, a.bits);
    } else {
        float amax = 0.0f;
        for (int t = 0; t < a.n; t++) {
            const float x = fabsf(A[(int64_t) t * a.D + c]);
            amax = x > amax ? x : amax;
        }
        p = qparam_sym(amax, a.bits);
    }
    a.cpar[((int64_t) chunk * 2) * a.D + c] = p.scale;
    a.cpar[((int64_t) chunk * 2 + 1) * a.D + c] = p.lo;
    __half * cp = (__half *) (block_of(a, chunk) + a.off_cparam);
    cp[c] = __float2half_rn(p.scale);
    if (a.asym) {
        cp[a.D + c] = __float2half_rn(p.lo);
    }
}

// (4) token/row parameters, quantize and pack: one CTA per (chunk, token). Dynamic shared
// memory: 3 floats per row (min, max, absmax) + 2 floats per parameter group.
__global__ void __launch_bounds__(256) k_quant(DecArgs a) {
    extern __shared__ float sm[];
    const int t = blockIdx.x, chunk = blockIdx.y;
    float * rmin = sm, * rmax = sm + a.rows, * ramax = sm + 2 * a.rows;
    float * gscale = sm + 3 * a.rows, * glo = gscale + (a.per > 0 ? a.per : 1);
    const float * A = a.A + ((int64_t) chunk * a.n + t) * a.D;
    uint8_t * blk = block_of(a, chunk);

    if (a.scale_mode != DQ_SCALE_CHANNEL) {
        for (int r = threadIdx.x; r < a.rows; r += blockDim.x) {
            float lo = A[r * 16], hi = lo, am = 0.0f;
            for (int j = 0; j < 16; j++) {
                const float x = A[r * 16 + j];
                lo = x < lo ? x : lo;
                hi = x > hi ? x : hi;
                am = fabsf(x) > am ? fabsf(x) : am;
            }
            rmin[r] = lo;
            rmax[r] = hi;
            ramax[r] = am;
        }
        __syncthreads();
        const int rpp = a.rows / a.per;
        __half * tp = (__half *) (blk + a.off_tparam);
        for (int k = threadIdx.x; k < a.per; k += blockDim.x) {
            float lo = rmin[k * rpp], hi = rmax[k * rpp], am = 0.0f;
            for (int r = k * rpp; r < (k + 1) * rpp; r++) {
                lo = rmin[r] < lo ? rmin[r] : lo;
                hi = rmax[r] > hi ? rmax[r] : hi;
                am = ramax[r] > am ? ramax[r] : am;
            }
            const QP p = a.asym ? qparam_asym(lo, hi, a.bits) : qparam_sym(am, a.bits);
            gscale[k] = p.scale;
            glo[k] = p.lo;
            const int64_t pi = (int64_t) t * a.per + k;
            tp[pi] = __float2half_rn(p.scale);
            if (a.asym) {
                tp[(int64_t) a.n * a.per + pi] = __float2half_rn(p.lo);
            }
        }
        __syncthreads();
    }
    const float * cs = a.cpar + (int64_t) chunk * 2 * a.D;
    const int rb = 2 * a.bits;
    for (int r = threadIdx.x; r < a.rows; r += blockDim.x) {
        uint64_t lo64 = 0, hi64 = 0;
        for (int j = 0; j < 16; j++) {
            QP p;
            if (a.scale_mode == DQ_SCALE_CHANNEL) {
                p.scale = cs[r * 16 + j];
                p.lo = cs[a.D + r * 16 + j];
            } else {
                const int k = r / (a.rows / a.per);
                p.scale = gscale[k];
                p.lo = glo[k];
            }
            const uint64_t u = quant1(A[r * 16 + j], p, a.bits, a.asym);
            const int bit = j * a.bits;
            if (bit < 64) {
                lo64 |= u << bit;
                if (bit + a.bits > 64) {
                    hi64 |= u >> (64 - bit);
                }
            } else {
                hi64 |= u << (bit - 64);
            }
        }
        const int h = r / a.rh, rr = r % a.rh;
        uint8_t * dst = blk + a.off_codes + (((int64_t) h * a.n + t) * a.rh + rr) * rb;
        for (int i = 0; i < rb; i++) {
            dst[i] = (uint8_t) (i < 8 ? lo64 >> (8 * i) : hi64 >> (8 * (i - 8)));
        }
    }
}

struct WorkLayout {
    size_t w, a, cpar, total;
};

WorkLayout work_layout(const dq_config * c, int n, int n_chunks) {
    WorkLayout l;
    const size_t D = (size_t) c->n_kv_heads * c->head_dim;
    l.w = 0;
    l.a = dq_cuda_align((size_t) n_chunks * dqc_groups(c) * 256 * sizeof(double), 256);
    l.cpar = l.a + dq_cuda_align((size_t) n_chunks * n * D * sizeof(float), 256);
    l.total = l.cpar + dq_cuda_align((size_t) n_chunks * 2 * D * sizeof(float), 256);
    return l;
}

} // namespace

extern "C" size_t dq_cuda_decompose_work_size(const dq_cuda_decompose_params * p) {
    if (!p || dqc_check(p->cfg) != DQ_OK || p->n_tokens <= 0 || p->n_chunks <= 0) {
        return 0;
    }
    return work_layout(p->cfg, p->n_tokens, p->n_chunks).total;
}

extern "C" int dq_cuda_decompose(const dq_cuda_decompose_params * p, dq_cuda_stream stream) {
    if (!p || dqc_check(p->cfg) != DQ_OK || p->n_tokens <= 0 || p->n_chunks <= 0 || !p->work ||
        (!p->x && !p->x_ptrs) || (!p->blocks && !p->block_ptrs)) {
        return DQ_ERR_ARG;
    }
    const dq_config * c = p->cfg;
    const dq_layout L = dqc_layout(c, p->n_tokens);
    if (!p->block_ptrs && (p->block_stride < (int64_t) L.size || p->block_stride % 16 != 0)) {
        return DQ_ERR_ARG;
    }
    DecArgs a;
    a.x = p->x;
    a.x_stride = p->x_stride;
    a.x_ptrs = p->x_ptrs;
    a.x_f16 = p->x_f16;
    a.blocks = (uint8_t *) p->blocks;
    a.block_stride = p->block_stride;
    a.block_ptrs = p->block_ptrs;
    a.n = p->n_tokens;
    a.nkv = c->n_kv_heads;
    a.hd = c->head_dim;
    a.D = a.nkv * a.hd;
    a.G = dqc_groups(c);
    a.rows = a.D / 16;
    a.rg = a.rows / a.G;
    a.rh = a.hd / 16;
    a.bits = c->bits;
    a.scale_mode = c->scale_mode;
    a.asym = c->asym;
    a.per = dq_cuda_tparams(c);
    a.npar = c->asym ? 2 : 1;
    a.gauge = c->gauge;
    a.off_b = (int64_t) L.b;
    a.off_cparam = (int64_t) L.cparam;
    a.off_tparam = (int64_t) L.tparam;
    a.off_codes = (int64_t) L.codes;
    a.size = (int64_t) L.size;
    const WorkLayout wl = work_layout(c, a.n, p->n_chunks);
    a.W = (double *) ((uint8_t *) p->work + wl.w);
    a.A = (float *) ((uint8_t *) p->work + wl.a);
    a.cpar = (float *) ((uint8_t *) p->work + wl.cpar);
    cudaStream_t st = (cudaStream_t) stream;

    for (int c0 = 0; c0 < p->n_chunks; c0 += 65535) { // grid.y limit
        const int nc = p->n_chunks - c0 < 65535 ? p->n_chunks - c0 : 65535;
        DecArgs b = a;
        // shift the batch window: pointers arrays / strides and work arrays
        if (b.x_ptrs) {
            b.x_ptrs += c0;
        } else {
            b.x = (const uint8_t *) b.x + (size_t) c0 * b.x_stride * (b.x_f16 ? 2 : 4);
        }
        if (b.block_ptrs) {
            b.block_ptrs += c0;
        } else {
            b.blocks += (int64_t) c0 * b.block_stride;
        }
        b.W += (int64_t) c0 * b.G * 256;
        b.A += (int64_t) c0 * b.n * b.D;
        b.cpar += (int64_t) c0 * 2 * b.D;
        k_factor<<<nc * b.G, 256, 0, st>>>(b);
        DQ_CUDA_TRY(cudaGetLastError(), "k_factor");
        const int64_t per_chunk = (int64_t) b.n * b.D;
        k_transform<<<dim3((unsigned) ((per_chunk + 255) / 256), nc), 256, 0, st>>>(b, per_chunk);
        DQ_CUDA_TRY(cudaGetLastError(), "k_transform");
        if (b.scale_mode == DQ_SCALE_CHANNEL) {
            k_chparams<<<dim3((unsigned) ((b.D + 255) / 256), nc), 256, 0, st>>>(b);
            DQ_CUDA_TRY(cudaGetLastError(), "k_chparams");
        }
        const size_t smem = (size_t) (3 * b.rows + 2 * (b.per > 0 ? b.per : 1)) * sizeof(float);
        if (smem > 48 * 1024) {
            return DQ_ERR_UNSUPPORTED;
        }
        const int th = b.rows < 256 ? ((b.rows + 31) / 32) * 32 : 256;
        k_quant<<<dim3((unsigned) b.n, nc), th, smem, st>>>(b);
        DQ_CUDA_TRY(cudaGetLastError(), "k_quant");
    }
    return DQ_OK;
}
