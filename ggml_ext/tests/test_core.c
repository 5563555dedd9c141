// C-level checks of the core: exact factorization, block round trip, fused attention
// against dense attention over the reconstructed K/V, and bad input.
#include "decoquant.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

static int failures = 0;
#define CHECK(cond, ...)                                      \
    do {                                                      \
        if (!(cond)) {                                        \
            failures++;                                       \
            fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__); \
            fprintf(stderr, __VA_ARGS__);                     \
            fprintf(stderr, "\n");                            \
        }                                                     \
    } while (0)

static uint64_t rng = 88172645463325252ull;
static float randn(void) { // Box-Muller over xorshift
    double u[2];
    for (int i = 0; i < 2; i++) {
        rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17;
        u[i] = ((rng >> 11) + 0.5) / 9007199254740992.0;
    }
    return (float) (sqrt(-2 * log(u[0])) * cos(6.283185307179586 * u[1]));
}

static double rel_err(const float * a, const float * b, int64_t n) {
    double num = 0, den = 0;
    for (int64_t i = 0; i < n; i++) {
        num += ((double) a[i] - b[i]) * ((double) a[i] - b[i]);
        den += (double) b[i] * b[i];
    }
    return den > 0 ? sqrt(num / den) : sqrt(num);
}

static void test_factor(void) {
    const int n = 96;
    float * m = malloc(n * 16 * 4), * a = malloc(n * 16 * 4), b[256], * r = malloc(n * 16 * 4);
    for (int i = 0; i < n * 16; i++) {
        m[i] = randn() * (i % 16 == 3 ? 40.0f : 1.0f); // an outlier column
    }
    for (int gi = 0; gi <= 2; gi++) {
        const float gauge = 0.5f * gi;
        CHECK(dq_factor(m, n, gauge, a, b) == DQ_OK, "factor");
        for (int i = 0; i < n; i++)
            for (int k = 0; k < 16; k++) {
                double s = 0;
                for (int j = 0; j < 16; j++) s += (double) a[i * 16 + j] * b[j * 16 + k];
                r[i * 16 + k] = (float) s;
            }
        const double e = rel_err(r, m, n * 16);
        CHECK(e < 1e-5, "factor gauge %.1f: rel err %g", gauge, e);
    }
    free(m); free(a); free(r);
}

static void test_roundtrip_and_attn(int bits, int mode, int asym, int scope) {
    const int hkv = 3, hd = 64, d = hkv * hd, n = 100, nq = 2, hq = 9;
    dq_config c = { hkv, hd, bits, mode, asym, scope, 0.5f };
    float * x = malloc(sizeof(float) * n * d), * y = malloc(sizeof(float) * n * d);
    float * v = malloc(sizeof(float) * n * d), * vy = malloc(sizeof(float) * n * d);
    for (int i = 0; i < n * d; i++) {
        x[i] = randn() + (i % d == 5 ? 20.0f : 0.0f);
        v[i] = randn();
    }
    uint8_t * kb = malloc(dq_block_size(&c, n)), * vb = malloc(dq_block_size(&c, n));
    CHECK(dq_decompose(&c, x, n, kb) == DQ_OK && dq_decompose(&c, v, n, vb) == DQ_OK, "decompose");
    dq_reconstruct(&c, kb, n, y);
    dq_reconstruct(&c, vb, n, vy);
    const double e = rel_err(y, x, (int64_t) n * d);
    const double lim = bits == 8 ? 0.02 : bits == 4 ? 0.3 : 0.8;
    CHECK(e < lim, "bits %d mode %d asym %d scope %d: rel err %g", bits, mode, asym, scope, e);

    // fused attention over [block | fp16 residual] vs dense over the reconstruction
    const int nres = 7;
    uint16_t * kr = malloc(2 * nres * d), * vr = malloc(2 * nres * d);
    float * kfull = malloc(sizeof(float) * (n + nres) * d), * vfull = malloc(sizeof(float) * (n + nres) * d);
    for (int i = 0; i < n * d; i++) { kfull[i] = y[i]; vfull[i] = vy[i]; }
    for (int i = 0; i < nres * d; i++) {
        kr[i] = dq_fp32_to_fp16(randn()); vr[i] = dq_fp32_to_fp16(randn());
        kfull[n * d + i] = dq_fp16_to_fp32(kr[i]); vfull[n * d + i] = dq_fp16_to_fp32(vr[i]);
    }
    float q[nq * hq * hd], out[nq * hq * hd], ref[nq * hq * hd];
    for (int i = 0; i < nq * hq * hd; i++) q[i] = 0.3f * randn();
    int32_t qpos[2] = { 60, n + nres - 1 };
    dq_segment segs[2] = { { kb, vb, n, 0, DQ_SEG_BLOCK, 0 }, { kr, vr, nres, n, DQ_SEG_F16, 0 } };
    dq_attn_params p = { &c, &c, hq, nq, q, qpos, 0.125f, segs, 2, 0, out, NULL };
    CHECK(dq_attn_run(&p, 2) == DQ_OK, "attn run");
    for (int iq = 0; iq < nq; iq++)
        for (int h = 0; h < hq; h++) {
            const int kh = h / (hq / hkv);
            double mx = -1e300, l = 0, s[n + nres];
            for (int t = 0; t <= qpos[iq]; t++) {
                s[t] = 0;
                for (int i = 0; i < hd; i++) s[t] += (double) q[(iq * hq + h) * hd + i] * kfull[t * d + kh * hd + i];
                s[t] *= 0.125;
                mx = s[t] > mx ? s[t] : mx;
            }
            for (int i = 0; i < hd; i++) ref[(iq * hq + h) * hd + i] = 0;
            for (int t = 0; t <= qpos[iq]; t++) l += exp(s[t] - mx);
            for (int t = 0; t <= qpos[iq]; t++)
                for (int i = 0; i < hd; i++)
                    ref[(iq * hq + h) * hd + i] += (float) (exp(s[t] - mx) / l * vfull[t * d + kh * hd + i]);
        }
    const double ea = rel_err(out, ref, nq * hq * hd);
    CHECK(ea < 1e-4, "attn bits %d mode %d asym %d scope %d: rel err %g", bits, mode, asym, scope, ea);
    free(x); free(y); free(v); free(vy); free(kb); free(vb); free(kr); free(vr); free(kfull); free(vfull);
}

static void test_bad_input(void) {
    dq_config c = { 2, 32, 5, 0, 0, 0, 0.5f };
    CHECK(dq_config_check(&c) == DQ_ERR_ARG, "bits 5 accepted");
    c.bits = 4;
    c.head_dim = 24;
    CHECK(dq_config_check(&c) == DQ_ERR_ARG, "head_dim 24 accepted");
    c.head_dim = 32;
    float x[4 * 64] = { 0 };
    uint8_t * blk = malloc(dq_block_size(&c, 4));
    CHECK(dq_decompose(&c, x, 4, blk) == DQ_OK, "zero chunk");
    float y[4 * 64];
    dq_reconstruct(&c, blk, 4, y);
    int zeros = 1;
    for (int i = 0; i < 4 * 64; i++) zeros &= y[i] == 0.0f;
    CHECK(zeros, "zero chunk does not reconstruct to zeros");
    x[17] = NAN;
    CHECK(dq_decompose(&c, x, 4, blk) == DQ_ERR_NONFINITE, "NaN accepted");
    free(blk);
}

int main(void) {
    test_factor();
    for (int bits = 2; bits <= 8; bits *= 2)
        for (int mode = 0; mode < 3; mode++)
            for (int asym = 0; asym < 2; asym++)
                for (int scope = 0; scope < 2; scope++) test_roundtrip_and_attn(bits, mode, asym, scope);
    test_roundtrip_and_attn(3, 0, 0, 0);
    test_bad_input();
    dq_force_scalar(1);
    test_roundtrip_and_attn(4, 2, 1, 0);
    dq_force_scalar(0);
    printf("kernels: %s\n", dq_cpu_kernels());
    printf("%s: %d failures\n", failures ? "FAILED" : "OK", failures);
    return failures != 0;
}
