// Fused attention driver: work split over (query row, KV head, segment split) units as
// ggml ops are (ith, nth), flash-decoding style partials, then a merge.
#include "dq_internal.h"

#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <time.h>

static int g_force_scalar = 0;

void dq_force_scalar(int on) { g_force_scalar = on; }

static const dq_kernels * kernels(void) {
    if (g_force_scalar) {
        return &dq_kernels_scalar;
    }
#if defined(__x86_64__)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
        __builtin_cpu_supports("avx512vnni")) {
        return &dq_kernels_avx512;
    }
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c")) {
        return &dq_kernels_avx2;
    }
#endif
    return &dq_kernels_scalar;
}

const char * dq_cpu_kernels(void) { return kernels()->name; }

size_t dq_attn_scratch_floats(int grp, int hd) {
    // two tiles of rows, scores, q~ and A-space sums, B, channel params (dq_attn_kernels.c)
    return 2 * (size_t) DQ_TILE * hd + (size_t) grp * DQ_TILE + 2 * (size_t) grp * hd + 256 + 4 * (size_t) hd + 16;
}

int dq_attn_splits(const dq_attn_params * p, int nth) {
    if (p->n_split > 0) {
        return p->n_split < p->n_segs ? p->n_split : (p->n_segs > 0 ? p->n_segs : 1);
    }
    const int units = p->n_q * p->cfg_k->n_kv_heads;
    int s = units >= 4 * nth ? 1 : (4 * nth + units - 1) / units;
    s = s < p->n_segs ? s : p->n_segs;
    return s > 0 ? s : 1;
}

static size_t part_floats(const dq_attn_params * p) {
    const int grp = p->n_head / p->cfg_k->n_kv_heads;
    return (size_t) grp * (p->cfg_k->head_dim + 2);
}

size_t dq_attn_work_size(const dq_attn_params * p, int nth) {
    const int grp = p->n_head / p->cfg_k->n_kv_heads, hd = p->cfg_k->head_dim;
    const size_t units = (size_t) p->n_q * p->cfg_k->n_kv_heads * dq_attn_splits(p, nth);
    return units * part_floats(p) + (size_t) nth * dq_attn_scratch_floats(grp, hd);
}

// Segment range [s0, s1) of split `sp`: contiguous ranges of about equal token counts.
static void split_range(const dq_attn_params * p, int sp, int ns, int * s0, int * s1) {
    int64_t total = 0;
    for (int i = 0; i < p->n_segs; i++) {
        total += p->segs[i].n_tokens;
    }
    const int64_t lo = total * sp / ns, hi = total * (sp + 1) / ns;
    int64_t cum = 0;
    *s0 = *s1 = p->n_segs;
    for (int i = 0; i < p->n_segs; i++) {
        const int64_t mid = cum + p->segs[i].n_tokens / 2; // a segment goes where its middle lies
        if (*s0 == p->n_segs && mid >= lo) {
            *s0 = i;
        }
        if (mid >= hi) {
            *s1 = i;
            break;
        }
        cum += p->segs[i].n_tokens;
    }
    if (*s1 < *s0) {
        *s1 = *s0;
    }
}

void dq_attn(const dq_attn_params * p, int ith, int nth) {
    const dq_kernels * k = kernels();
    const int nkv = p->cfg_k->n_kv_heads, hd = p->cfg_k->head_dim, grp = p->n_head / nkv;
    const int ns = dq_attn_splits(p, nth);
    const int64_t units = (int64_t) p->n_q * nkv * ns;
    const size_t pf = part_floats(p);
    float * scratch = p->work + units * pf + (size_t) ith * dq_attn_scratch_floats(grp, hd);
    const dq_attn_shape sh = { p->cfg_k, p->cfg_v, grp, hd, p->scale, p->window };
    // contiguous unit ranges keep a thread on one row's data
    const int64_t u0 = units * ith / nth, u1 = units * (ith + 1) / nth;
    for (int64_t u = u0; u < u1; u++) {
        const int sp = (int) (u % ns), kvh = (int) ((u / ns) % nkv), iq = (int) (u / ((int64_t) ns * nkv));
        float * part = p->work + u * pf;
        dq_state st = { part, part + grp * hd, part + grp * hd + grp };
        for (int i = 0; i < grp * hd; i++) {
            st.acc[i] = 0.0f;
        }
        for (int g = 0; g < grp; g++) {
            st.m[g] = -INFINITY;
            st.l[g] = 0.0f;
        }
        const float * q = p->q + ((int64_t) iq * p->n_head + kvh * grp) * hd;
        const int32_t qpos = p->q_pos ? p->q_pos[iq] : INT32_MAX;
        int s0, s1;
        split_range(p, sp, ns, &s0, &s1);
        for (int si = s0; si < s1; si++) {
            const dq_segment * s = &p->segs[si];
            if (s->n_tokens <= 0 || (qpos != INT32_MAX && s->pos0 > qpos) ||
                (p->window > 0 && qpos != INT32_MAX && (int64_t) s->pos0 + s->n_tokens - 1 <= (int64_t) qpos - p->window)) {
                continue;
            }
            (s->kind == DQ_SEG_BLOCK ? k->seg_block : k->seg_f16)(&sh, s, kvh, q, qpos, st, scratch);
        }
    }
}

void dq_attn_reduce(const dq_attn_params * p, int ith, int nth) {
    const int nkv = p->cfg_k->n_kv_heads, hd = p->cfg_k->head_dim, grp = p->n_head / nkv;
    const int ns = dq_attn_splits(p, nth);
    const size_t pf = part_floats(p);
    const int64_t rows = (int64_t) p->n_q * nkv;
    for (int64_t r = rows * ith / nth; r < rows * (ith + 1) / nth; r++) {
        const float * part0 = p->work + r * ns * pf;
        for (int g = 0; g < grp; g++) {
            float mx = -INFINITY;
            for (int sp = 0; sp < ns; sp++) {
                const float m = part0[sp * pf + grp * hd + g];
                mx = m > mx ? m : mx;
            }
            float * out = p->out + (r * grp + g) * hd; // r = iq * nkv + kvh: heads in order
            for (int i = 0; i < hd; i++) {
                out[i] = 0.0f;
            }
            if (mx == -INFINITY) {
                continue; // no visible key: zeros
            }
            float l = 0.0f;
            for (int sp = 0; sp < ns; sp++) {
                const float * part = part0 + sp * pf;
                const float   w    = expf(part[grp * hd + g] - mx);
                if (w == 0.0f) {
                    continue;
                }
                l += w * part[grp * hd + grp + g];
                for (int i = 0; i < hd; i++) {
                    out[i] += w * part[g * hd + i];
                }
            }
            const float inv = 1.0f / l;
            for (int i = 0; i < hd; i++) {
                out[i] *= inv;
            }
        }
    }
}

static int check_params(const dq_attn_params * p) {
    if (!p || dq_config_check(p->cfg_k) != DQ_OK || dq_config_check(p->cfg_v) != DQ_OK || !p->q || !p->out ||
        p->n_q <= 0 || p->n_segs < 0 || (p->n_segs > 0 && !p->segs)) {
        return DQ_ERR_ARG;
    }
    const dq_config * ck = p->cfg_k, * cv = p->cfg_v;
    if (ck->n_kv_heads != cv->n_kv_heads || ck->head_dim != cv->head_dim || p->n_head % ck->n_kv_heads != 0 ||
        p->n_head / ck->n_kv_heads > 64) {
        return DQ_ERR_ARG;
    }
    return DQ_OK;
}

typedef struct {
    dq_attn_params  * p;
    pthread_barrier_t * bar;
    int ith, nth, iters;
    double * times; // per iteration seconds (thread 0), or NULL
} worker_arg;

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + 1e-9 * ts.tv_nsec;
}

static void * worker(void * v) {
    worker_arg * a = v;
    for (int it = 0; it < a->iters; it++) {
        double t0 = 0.0;
        if (a->nth > 1) {
            pthread_barrier_wait(a->bar);
        }
        if (a->times && a->ith == 0) {
            t0 = now_s();
        }
        dq_attn(a->p, a->ith, a->nth);
        if (a->nth > 1) {
            pthread_barrier_wait(a->bar);
        }
        dq_attn_reduce(a->p, a->ith, a->nth);
        if (a->nth > 1) {
            pthread_barrier_wait(a->bar);
        }
        if (a->times && a->ith == 0) {
            a->times[it] = now_s() - t0;
        }
    }
    return NULL;
}

int dq_attn_bench(dq_attn_params * p, int nth, int iters, double * times) {
    if (check_params(p) != DQ_OK || nth <= 0 || nth > 256 || iters <= 0) {
        return DQ_ERR_ARG;
    }
    float * own = NULL;
    if (!p->work) {
        own = malloc(dq_attn_work_size(p, nth) * sizeof(float));
        if (!own) {
            return DQ_ERR_NOMEM;
        }
        p->work = own;
    }
    pthread_barrier_t bar;
    pthread_barrier_init(&bar, NULL, (unsigned) nth);
    pthread_t  th[256];
    worker_arg args[256];
    for (int i = 0; i < nth; i++) {
        args[i] = (worker_arg) { p, &bar, i, nth, iters, times };
    }
    for (int i = 1; i < nth; i++) {
        pthread_create(&th[i], NULL, worker, &args[i]);
    }
    worker(&args[0]);
    for (int i = 1; i < nth; i++) {
        pthread_join(th[i], NULL);
    }
    pthread_barrier_destroy(&bar);
    if (own) {
        p->work = NULL;
        free(own);
    }
    return DQ_OK;
}

int dq_attn_run(dq_attn_params * p, int nth) { return dq_attn_bench(p, nth, 1, NULL); }
