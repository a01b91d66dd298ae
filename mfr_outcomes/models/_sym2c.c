/* The q = 2 pooled criterion and gradient of mfr_outcomes.models.pooled_sym2, in C.
 *
 * The same formulas as pooled_sym2._evaluate_py (tests/test_pooled_sym2.py compares the two to
 * rounding on random designs); written out because at the sizes of a clinic (K ≈ 10-30 classes,
 * p + 1 ≈ 10) the NumPy version's time is its ~25 calls, not arithmetic. No NumPy headers: the
 * arrays come through the buffer protocol, C-contiguous float64.
 *
 * evaluate(consts, out, l00, l01, l10, l11, n, p, K, reml, gradient) -> (status, f, logdet, pwrss)
 *   consts: C3a (K×4) | count (K) | omega (K×4×m²: the classes' Ω rows, N's four entries) |
 *           XaXa (m²) | omega_up2 (4K×m²) | C (K×4) | two_count_C (K×4)
 *   out:    A3 (K×3) | det (K) | NU (K×8) | M (m²) | R (m², upper, zeros below) | grad (4, Λ's
 *           entries row-major)
 *   status: 0 ok, 1 M's last pivot not positive (r² ≤ 0: the caller takes the general path),
 *           2 XᵀV⁻¹X not positive definite or the criterion not finite.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <string.h>

#define MAXM 40  /* p + 1 at most (Sym2 takes the NumPy path above) */

static PyObject *evaluate(PyObject *self, PyObject *args)
{
    Py_buffer cb, ob;
    double l00, l01, l10, l11;
    Py_ssize_t n, p, K;
    int reml, gradient;
    if (!PyArg_ParseTuple(args, "y*w*ddddnnnpp", &cb, &ob, &l00, &l01, &l10, &l11, &n, &p, &K,
                          &reml, &gradient))
        return NULL;
    const Py_ssize_t m = p + 1, mm = m * m;
    const Py_ssize_t need_c = K * 4 + K + K * 4 * mm + mm + 4 * K * mm + K * 4 + K * 4;
    const Py_ssize_t need_o = K * 3 + K + K * 8 + mm + mm + 4;
    if (m > MAXM || cb.len < need_c * (Py_ssize_t)sizeof(double) ||
        ob.len < need_o * (Py_ssize_t)sizeof(double)) {
        PyBuffer_Release(&cb);
        PyBuffer_Release(&ob);
        PyErr_SetString(PyExc_ValueError, "_sym2c.evaluate: buffers too small or p too large");
        return NULL;
    }
    const double *C3a = (const double *)cb.buf;
    const double *count = C3a + K * 4;
    const double *omega = count + K;
    const double *XaXa = omega + K * 4 * mm;
    const double *omega_up2 = XaXa + mm;
    const double *Cm = omega_up2 + 4 * K * mm;
    const double *two_count_C = Cm + K * 4;
    double *A3 = (double *)ob.buf;
    double *det = A3 + K * 3;
    double *NU = det + K;
    double *M = NU + K * 8;
    double *R = M + mm;
    double *grad = R + mm;

    /* A = ΛᵀCΛ + I as [c00, c01, c11, 1] @ MA; det(A) N and det(A) U as [a00, a01, a11] @ Rm */
    const double MA[4][3] = {{l00 * l00, l00 * l01, l01 * l01},
                             {2.0 * l00 * l10, l00 * l11 + l10 * l01, 2.0 * l01 * l11},
                             {l10 * l10, l10 * l11, l11 * l11},
                             {1.0, 0.0, 1.0}};
    const double c01 = -(l00 * l11 + l01 * l10);
    const double Rm[3][8] = {{l01 * l01, l01 * l11, l01 * l11, l11 * l11, 0.0, l01, 0.0, l11},
                             {-2.0 * l00 * l01, c01, c01, -2.0 * l10 * l11, -l01, -l00, -l11, -l10},
                             {l00 * l00, l00 * l10, l00 * l10, l10 * l10, l00, 0.0, l10, 0.0}};
    double logdet = 0.0;
    memcpy(M, XaXa, (size_t)mm * sizeof(double));
    for (Py_ssize_t k = 0; k < K; k++) {
        const double *c = C3a + 4 * k;
        double *a = A3 + 3 * k;
        for (int j = 0; j < 3; j++)
            a[j] = c[0] * MA[0][j] + c[1] * MA[1][j] + c[2] * MA[2][j] + c[3] * MA[3][j];
        const double d = a[0] * a[2] - a[1] * a[1];
        det[k] = d;
        double *nu = NU + 8 * k;
        for (int j = 0; j < 8; j++)
            nu[j] = (a[0] * Rm[0][j] + a[1] * Rm[1][j] + a[2] * Rm[2][j]) / d;
        logdet += count[k] * log(d);
        /* M = XaXa − Σₖ Σᵢ Nₖ[i] Ωₖ[i] */
        const double *om = omega + (Py_ssize_t)4 * mm * k;
        for (int i = 0; i < 4; i++) {
            const double w = nu[i];
            const double *row = om + (Py_ssize_t)i * mm;
            for (Py_ssize_t e = 0; e < mm; e++)
                M[e] -= w * row[e];
        }
    }
    /* Cholesky, upper: RᵀR = M (LAPACK dpotrf's column-by-column order) */
    memset(R, 0, (size_t)mm * sizeof(double));
    int status = 0;
    for (Py_ssize_t j = 0; j < m && !status; j++) {
        double s = M[j * m + j];
        for (Py_ssize_t i = 0; i < j; i++)
            s -= R[i * m + j] * R[i * m + j];
        if (!(s > 0.0)) {
            status = (j == p) ? 1 : 2;
            break;
        }
        const double rjj = sqrt(s);
        R[j * m + j] = rjj;
        for (Py_ssize_t c = j + 1; c < m; c++) {
            double t = M[j * m + c];
            for (Py_ssize_t i = 0; i < j; i++)
                t -= R[i * m + j] * R[i * m + c];
            R[j * m + c] = t / rjj;
        }
    }
    double f = 0.0, pwrss = 0.0;
    if (!status) {
        pwrss = R[p * m + p] * R[p * m + p];
        const double nn = (double)(reml ? n - p : n);
        f = logdet + nn * (1.0 + log(2.0 * M_PI * pwrss / nn));
        if (reml) {
            double prod = 1.0;
            for (Py_ssize_t i = 0; i < p; i++)
                prod *= R[i * m + i];
            prod = fabs(prod);
            if (prod > 1e-280 && prod < 1e280) {
                f += 2.0 * log(prod);
            } else {
                double s = 0.0;
                for (Py_ssize_t i = 0; i < p; i++)
                    s += log(fabs(R[i * m + i]));
                f += 2.0 * s;
            }
        }
        if (!isfinite(f))
            status = 2;
    }
    if (!status && gradient) {
        /* M⁻¹ from R (upper triangle): Rinv = R⁻¹, then M⁻¹ = Rinv Rinvᵀ */
        double Ri[MAXM * MAXM];
        double Mi[MAXM * MAXM];
        for (Py_ssize_t i = 0; i < mm; i++)
            Ri[i] = 0.0;
        for (Py_ssize_t j = m - 1; j >= 0; j--) {
            Ri[j * m + j] = 1.0 / R[j * m + j];
            for (Py_ssize_t i = j - 1; i >= 0; i--) {
                double s = 0.0;
                for (Py_ssize_t k = i + 1; k <= j; k++)
                    s += R[i * m + k] * Ri[k * m + j];
                Ri[i * m + j] = -s / R[i * m + i];
            }
        }
        for (Py_ssize_t i = 0; i < m; i++)
            for (Py_ssize_t j = i; j < m; j++) {
                double s = 0.0;
                for (Py_ssize_t k = j; k < m; k++)
                    s += Ri[i * m + k] * Ri[j * m + k];
                Mi[i * m + j] = s;
                Mi[j * m + i] = s;
            }
        /* W / 2 = M⁻¹ (REML) + c r² v vᵀ, v = M⁻¹ e_{p+1}; only its upper triangle is read */
        const double cc = (double)(reml ? (n - p) - 1 : n) * pwrss;
        double hw[MAXM * MAXM];
        for (Py_ssize_t i = 0; i < m; i++)
            for (Py_ssize_t j = i; j < m; j++)
                hw[i * m + j] = Mi[i * m + p] * (cc * Mi[j * m + p]) + (reml ? Mi[i * m + j] : 0.0);
        double g[4] = {0.0, 0.0, 0.0, 0.0};
        for (Py_ssize_t k = 0; k < K; k++) {
            double T[4];
            for (int r = 0; r < 4; r++) {
                const double *row = omega_up2 + (4 * k + r) * mm;
                double s = 0.0;
                for (Py_ssize_t i = 0; i < m; i++)
                    for (Py_ssize_t j = i; j < m; j++)
                        s += row[i * m + j] * hw[i * m + j];
                T[r] = s;
            }
            const double *N = NU + 8 * k, *U = NU + 8 * k + 4;
            const double *Ck = Cm + 4 * k, *tc = two_count_C + 4 * k;
            /* NT = N T, then Q = 2 count C − T + C (N T) */
            const double NT[4] = {N[0] * T[0] + N[1] * T[2], N[0] * T[1] + N[1] * T[3],
                                  N[2] * T[0] + N[3] * T[2], N[2] * T[1] + N[3] * T[3]};
            const double Q[4] = {tc[0] - T[0] + (Ck[0] * NT[0] + Ck[1] * NT[2]),
                                 tc[1] - T[1] + (Ck[0] * NT[1] + Ck[1] * NT[3]),
                                 tc[2] - T[2] + (Ck[2] * NT[0] + Ck[3] * NT[2]),
                                 tc[3] - T[3] + (Ck[2] * NT[1] + Ck[3] * NT[3])};
            g[0] += Q[0] * U[0] + Q[1] * U[2];
            g[1] += Q[0] * U[1] + Q[1] * U[3];
            g[2] += Q[2] * U[0] + Q[3] * U[2];
            g[3] += Q[2] * U[1] + Q[3] * U[3];
        }
        for (int r = 0; r < 4; r++)
            grad[r] = g[r];
    }
    PyBuffer_Release(&cb);
    PyBuffer_Release(&ob);
    return Py_BuildValue("iddd", status, f, logdet, pwrss);
}

static PyMethodDef methods[] = {
    {"evaluate", evaluate, METH_VARARGS,
     "The q = 2 pooled criterion (and gradient) at one θ: see mfr_outcomes.models.pooled_sym2."},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_sym2c",
                                    "The q = 2 pooled criterion in C (pooled_sym2's formulas).", -1,
                                    methods};

PyMODINIT_FUNC PyInit__sym2c(void) { return PyModule_Create(&module); }
