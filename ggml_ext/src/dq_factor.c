// M[n, 16] = A @ B through the 16x16 Gram matrix and a cyclic Jacobi eigensolver (double).
#include "dq_internal.h"

#include <math.h>

#define DQ_RANK_EPS (1.0 / 1048576.0) // 2^-20, as reference.RANK_EPS

// Eigen-decomposition of a symmetric 16x16 matrix: a is destroyed, w gets the eigenvalues,
// v the eigenvectors in columns.
static void jacobi16(double a[16][16], double w[16], double v[16][16]) {
    for (int i = 0; i < 16; i++) {
        for (int j = 0; j < 16; j++) {
            v[i][j] = i == j;
        }
    }
    for (int sweep = 0; sweep < 64; sweep++) {
        double off = 0.0, diag = 0.0;
        for (int i = 0; i < 16; i++) {
            diag += a[i][i] * a[i][i];
            for (int j = i + 1; j < 16; j++) {
                off += a[i][j] * a[i][j];
            }
        }
        if (off <= 1e-30 * diag || off == 0.0) {
            break;
        }
        for (int p = 0; p < 15; p++) {
            for (int q = p + 1; q < 16; q++) {
                const double apq = a[p][q];
                if (fabs(apq) < 1e-300) {
                    continue;
                }
                const double theta = (a[q][q] - a[p][p]) / (2.0 * apq);
                const double t = (theta >= 0 ? 1.0 : -1.0) / (fabs(theta) + sqrt(theta * theta + 1.0));
                const double c = 1.0 / sqrt(t * t + 1.0);
                const double s = t * c;
                for (int k = 0; k < 16; k++) { // A <- A J
                    const double akp = a[k][p], akq = a[k][q];
                    a[k][p] = c * akp - s * akq;
                    a[k][q] = s * akp + c * akq;
                }
                for (int k = 0; k < 16; k++) { // A <- J^T A
                    const double apk = a[p][k], aqk = a[q][k];
                    a[p][k] = c * apk - s * aqk;
                    a[q][k] = s * apk + c * aqk;
                }
                for (int k = 0; k < 16; k++) {
                    const double vkp = v[k][p], vkq = v[k][q];
                    v[k][p] = c * vkp - s * vkq;
                    v[k][q] = s * vkp + c * vkq;
                }
            }
        }
    }
    for (int i = 0; i < 16; i++) {
        w[i] = a[i][i];
    }
}

// W[16][16] (A = M W) and B[16][16] in double, canonical as reference.svd_split.
void dq_factor_weights(const float * m, int64_t n_rows, int64_t row_stride, float gauge, double wm[16][16],
                       double bm[16][16]) {
    double g[16][16] = { { 0 } };
    for (int64_t r = 0; r < n_rows; r++) {
        const float * x = m + r * row_stride;
        for (int i = 0; i < 16; i++) {
            const double xi = x[i];
            for (int j = i; j < 16; j++) {
                g[i][j] += xi * x[j];
            }
        }
    }
    for (int i = 0; i < 16; i++) {
        for (int j = 0; j < i; j++) {
            g[i][j] = g[j][i];
        }
    }
    double w[16], v[16][16];
    jacobi16(g, w, v);
    int order[16];
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
    const double smax = sqrt(w[order[0]] > 0 ? w[order[0]] : 0.0);
    for (int j = 0; j < 16; j++) {
        const int o = order[j];
        int imax = 0;
        for (int i = 1; i < 16; i++) {
            if (fabs(v[i][o]) > fabs(v[imax][o])) {
                imax = i;
            }
        }
        const double sign = v[imax][o] < 0 ? -1.0 : 1.0;
        const double s = sqrt(w[o] > 0 ? w[o] : 0.0);
        const int keep = smax > 0 && s > smax * DQ_RANK_EPS;
        const double fa = keep ? pow(s, (double) gauge - 1.0) : 0.0;
        const double fb = keep ? pow(s, 1.0 - (double) gauge) : 0.0;
        for (int i = 0; i < 16; i++) {
            wm[i][j] = sign * v[i][o] * fa;
            bm[j][i] = sign * v[i][o] * fb;
        }
    }
}

int dq_factor(const float * m, int64_t n_rows, float gauge, float * a, float * b) {
    if (!m || n_rows <= 0 || !a || !b || !(gauge >= 0.0f && gauge <= 1.0f)) {
        return DQ_ERR_ARG;
    }
    for (int64_t i = 0; i < n_rows * 16; i++) {
        if (!isfinite(m[i])) {
            return DQ_ERR_NONFINITE;
        }
    }
    double wm[16][16], bm[16][16];
    dq_factor_weights(m, n_rows, 16, gauge, wm, bm);
    for (int64_t r = 0; r < n_rows; r++) {
        for (int j = 0; j < 16; j++) {
            double acc = 0.0;
            for (int i = 0; i < 16; i++) {
                acc += (double) m[r * 16 + i] * wm[i][j];
            }
            a[r * 16 + j] = (float) acc;
        }
    }
    for (int i = 0; i < 256; i++) {
        b[i] = (float) bm[i / 16][i % 16];
    }
    return DQ_OK;
}
