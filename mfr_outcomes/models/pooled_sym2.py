"""The pooled criterion and gradient of :mod:`~mfr_outcomes.models.pooled2` for two random-effect
columns (q = 2, e.g. ``(post | patient)``), with the per-class 2×2 algebra folded into a few
products by small matrices built from θ.

Every per-class quantity is linear in the class's symmetric C = ZᵢᵀZᵢ = (c00, c01, c11) or in
the adjugate of A = ΛᵀCΛ + I, with coefficients that depend on θ only:

    A (3 entries)            = [c00, c01, c11, 1] @ MA(Λ)        (4×3),
    det(A) N, det(A) U (4+4) = [a00, a01, a11] @ R(Λ)            (3×8),

N = ΛA⁻¹Λᵀ and U = ΛA⁻¹, so a class's algebra costs no NumPy call of its own: one product for
every class's A, one for N and U, a few elementwise calls for the determinants. β̂, r² and
log|R_X|² come from one Cholesky factor of the augmented matrix
M = [X, y − X b0]ᵀ V⁻¹ [X, y − X b0] (R_X its leading block, r its last pivot squared), and the
gradient's weights from M⁻¹ (one LAPACK call): with v = M⁻¹ e_{p+1},

    W / 2 = M⁻¹ + (n − p − 1) r² v vᵀ   (REML),   n r² v vᵀ   (ML),

the W of ``pooled2.fg2`` (β̂ − b0 = −r² v[:p], (XᵀV⁻¹X)⁻¹ = M⁻¹[:p, :p] − r² v vᵀ[:p, :p]).
Same formulas as :func:`pooled2.core2` and :func:`pooled2.fg2`, to rounding (tested).
"""
from __future__ import annotations

import functools
import math

import numpy as np
from scipy.linalg.lapack import dpotrf as _potrf
from scipy.linalg.lapack import dpotrs as _potrs

try:  # the C kernel (hatch_build.py compiles it at install; without a compiler: None)
    from mfr_outcomes.models import _sym2c as KERNEL
except ImportError:  # pragma: no cover - a pure-Python install
    KERNEL = None

#: the largest p + 1 the C kernel takes (its work arrays are on the stack)
KERNEL_MAX_M = 40

__all__ = ["KERNEL", "Sym2", "State", "criteria", "evaluate", "pieces", "gradients"]


class Sym2:
    """The classes' constants for q = 2: C's entries with a column of ones (K, 4), Ω with four
    zero rows after each class's (for N and U in one product), Ω folded onto the upper triangle
    of its (p+1)×(p+1) columns and doubled (for W's upper triangle), [X, y − X b0]'s sums."""

    __slots__ = ("C", "C3a", "two_count_C", "count", "omega8", "omega_up2", "XaXa", "flat",
                 "K", "p", "n", "eye", "flat_idx", "blob", "out_size")

    def __init__(self, C: np.ndarray, count: np.ndarray, omega: np.ndarray, XtX: np.ndarray,
                 Xty0: np.ndarray, yty0: float, flat: np.ndarray, n: int):
        K, p = C.shape[0], XtX.shape[0]
        m = p + 1
        self.K, self.p, self.n = K, p, n
        self.C = C
        C3a = C.reshape(K, 4)[:, _C3A]  # c00, c01, c11, then a column of ones
        C3a[:, 3] = 1.0
        self.C3a = C3a
        self.count = count
        self.two_count_C = 2.0 * count[:, None, None] * C
        o8 = np.zeros((K, 8, m * m))
        o8[:, :4] = omega.reshape(K, 4, m * m)
        self.omega8 = o8.reshape(8 * K, m * m)
        om = omega.reshape(4 * K, m, m)
        up = om + om.transpose(0, 2, 1)
        up *= _fold(m)
        self.omega_up2 = up.reshape(4 * K, m * m)
        XaXa = np.empty((m, m))
        XaXa[:p, :p] = XtX
        XaXa[:p, p] = XaXa[p, :p] = Xty0
        XaXa[p, p] = yty0
        self.XaXa = XaXa
        self.flat = flat.tolist()
        self.flat_idx = np.array(self.flat, dtype=np.intp)  # indexing by an array: no list scan
        self.eye = np.eye(m)
        # the C kernel's constants in one contiguous buffer (its layout: _sym2c.c), or None
        self.blob = None
        self.out_size = 12 * K + 2 * m * m + 4
        if KERNEL is not None and m <= KERNEL_MAX_M:
            self.blob = np.concatenate([
                C3a.ravel(), np.asarray(count, dtype=float), omega.reshape(-1), XaXa.ravel(),
                self.omega_up2.ravel(), C.reshape(-1), self.two_count_C.reshape(-1)])


_C3A = np.array([0, 1, 3, 3])


@functools.lru_cache(maxsize=16)
def _fold(m: int) -> np.ndarray:
    """2 above the diagonal, 1 on it, 0 below: (Ω + Ωᵀ) ⊙ this, contracted with a matrix's upper
    triangle, is 2 Ω : W for a symmetric W (read-only, one a size)."""
    f = np.triu(np.full((m, m), 2.0), 1) + np.eye(m)
    f.flags.writeable = False
    return f


class State:
    """The pieces of one evaluation at θ: Λ's entries, A's entries (K, 3), det A, N and U
    (K, 8), M and its Cholesky factor R (upper), log|L_θ|², r². From the C kernel the arrays
    are read off its output buffer *buf* when first needed (:func:`pieces`)."""

    __slots__ = ("lam", "A3", "det", "NU", "M", "R", "logdet", "pwrss", "buf")

    def views(self, S2: Sym2) -> State:
        """Set A3, det, NU, M and R as views of the kernel's output buffer (once)."""
        if self.A3 is None:
            K, m = S2.K, S2.p + 1
            b = self.buf
            self.A3 = b[:3 * K].reshape(K, 3)
            self.det = b[3 * K:4 * K]
            self.NU = b[4 * K:12 * K].reshape(K, 8)
            self.M = b[12 * K:12 * K + m * m].reshape(m, m)
            self.R = b[12 * K + m * m:12 * K + 2 * m * m].reshape(m, m)
        return self


def _lambda(S2: Sym2, theta) -> list[float]:
    lam = [0.0, 0.0, 0.0, 0.0]
    for pos, t in zip(S2.flat, theta.tolist() if type(theta) is np.ndarray else theta):
        lam[pos] = t
    return lam


def evaluate(S2: Sym2, theta, reml: bool, gradient: bool
             ) -> tuple[float, np.ndarray | None, State | None]:
    """(criterion, gradient or None, pieces) at θ; (inf, None, None) where XᵀV⁻¹X is not
    positive definite or the criterion is not finite; (nan, None, None) where M's last pivot is
    not positive (r² ≤ 0 by rounding: the caller takes the general path, which floors r²).
    The C kernel where it was built (the same formulas in one call), else :func:`_evaluate_py`."""
    if S2.blob is None:
        return _evaluate_py(S2, theta, reml, gradient)
    lam = _lambda(S2, theta)
    out = np.empty(S2.out_size)
    status, f, logdet, pwrss = KERNEL.evaluate(S2.blob, out, *lam, S2.n, S2.p, S2.K, reml,
                                               gradient)
    if status:
        return (math.nan if status == 1 else math.inf), None, None
    st = State()
    st.lam, st.logdet, st.pwrss, st.buf = lam, logdet, pwrss, out
    st.A3 = None
    return f, (out[-4:][S2.flat_idx] if gradient else None), st


def _coefficients(lam: list[float]) -> tuple[list, list]:
    """MA (4×3: A's entries from [c00, c01, c11, 1]) and Rm (3×8: det(A) N and det(A) U from
    [a00, a01, a11]) at Λ's entries, as nested lists (see the module's docstring)."""
    l00, l01, l10, l11 = lam
    c01 = -(l00 * l11 + l01 * l10)
    return ([[l00 * l00, l00 * l01, l01 * l01],
             [2.0 * l00 * l10, l00 * l11 + l10 * l01, 2.0 * l01 * l11],
             [l10 * l10, l10 * l11, l11 * l11],
             [1.0, 0.0, 1.0]],
            [[l01 * l01, l01 * l11, l01 * l11, l11 * l11, 0.0, l01, 0.0, l11],
             [-2.0 * l00 * l01, c01, c01, -2.0 * l10 * l11, -l01, -l00, -l11, -l10],
             [l00 * l00, l00 * l10, l00 * l10, l10 * l10, l00, 0.0, l10, 0.0]])


def _evaluate_py(S2: Sym2, theta, reml: bool, gradient: bool
                 ) -> tuple[float, np.ndarray | None, State | None]:
    """:func:`evaluate` by NumPy and LAPACK calls (about 25 of them)."""
    lam = _lambda(S2, theta)
    MA, Rm = _coefficients(lam)
    A3 = S2.C3a @ np.array(MA)  # (K, 3): a00, a01, a11 of every class
    pr = A3 * A3[:, ::-1]
    det = pr[:, 0] - pr[:, 1]
    NU = A3 @ np.array(Rm)
    NU /= det[:, None]  # (K, 8): N = ΛA⁻¹Λᵀ, U = ΛA⁻¹ (row-major 2×2 each)
    p = S2.p
    M = S2.XaXa - (NU.reshape(-1) @ S2.omega8).reshape(p + 1, p + 1)
    R, info = _potrf(M, lower=0, clean=1)
    if info != 0:
        return (math.nan if info == p + 1 else math.inf), None, None
    d = R.diagonal().tolist()
    pwrss = d[p] * d[p]
    logdet = float(S2.count @ np.log(det))
    n = S2.n
    nn = (n - p) if reml else n
    f = logdet + nn * (1.0 + math.log(2.0 * math.pi * pwrss / nn))
    if reml:
        prod = abs(math.prod(d[:p]))
        f += (2.0 * math.log(prod) if 1e-280 < prod < 1e280
              else 2.0 * sum(math.log(abs(x)) for x in d[:p]))
    if not math.isfinite(f):
        return math.inf, None, None
    st = State()
    st.lam, st.A3, st.det, st.NU, st.M, st.R, st.logdet, st.pwrss = (
        lam, A3, det, NU, M, R, logdet, pwrss)
    if not gradient:
        return f, None, st
    # M⁻¹ by solving with the identity: a third of dpotri's time through SciPy's wrappers
    # (≈ 3 against 8-10 µs at p + 1 = 10; the same matrix to rounding, both triangles)
    Minv = _potrs(R, S2.eye, lower=0)[0]
    v = Minv[:, p]
    half_w = np.multiply.outer(v, ((nn - 1) if reml else n) * pwrss * v)
    if reml:
        half_w += Minv
    K = S2.K
    T = (S2.omega_up2 @ half_w.reshape(-1)).reshape(K, 2, 2)  # Tₖ = Ωₖ : W
    NU4 = NU.reshape(K, 2, 2, 2)
    Q = S2.two_count_C - T
    Q += S2.C @ (NU4[:, 0] @ T)  # 2 count C − F T, F = I − C N
    grad_m = Q.transpose(1, 0, 2).reshape(2, 2 * K) @ NU4[:, 1].reshape(2 * K, 2)
    return f, grad_m.reshape(-1)[S2.flat_idx], st


def pieces(S2: Sym2, st: State) -> tuple[tuple, np.ndarray]:
    """``pooled2.core2``'s tuple (log|L_θ|², r², R_X, β̂ − b0, Λ, A⁻¹, N) and XᵀV⁻¹X from an
    evaluation's pieces (β̂ − b0 by R_X as ``pooled2.fixed_solve``)."""
    p, K = S2.p, S2.K
    if st.A3 is None:
        st.views(S2)
    RX = np.array(st.R[:p, :p], order="F")
    beta0 = _potrs(RX, st.M[:p, p], lower=0)[0]
    a00, a01, a11 = st.A3[:, 0], st.A3[:, 1], st.A3[:, 2]
    Ainv = (np.stack([a11, -a01, -a01, a00], axis=1) / st.det[:, None]).reshape(K, 2, 2)
    N = np.ascontiguousarray(st.NU[:, :4])
    lam = np.array(st.lam).reshape(2, 2)
    XtKX = np.ascontiguousarray(st.M[:p, :p])
    return (st.logdet, st.pwrss, RX, beta0, lam, Ainv, N), XtKX


def _stacked_nu(S2: Sym2, thetas: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """N and U (S, K, 8) and M (S, p+1, p+1) at several θ (rows of *thetas*):
    :func:`evaluate`'s first steps, each one NumPy call over the stack."""
    S, K, m = thetas.shape[0], S2.K, S2.p + 1
    MA, Rm = zip(*(_coefficients(_lambda(S2, th)) for th in thetas))
    A3 = S2.C3a @ np.array(MA)  # (S, K, 3)
    pr = A3 * A3[..., ::-1]
    NU = A3 @ np.array(Rm)
    NU /= (pr[..., 0] - pr[..., 1])[..., None]  # (S, K, 8)
    M = S2.XaXa - (NU.reshape(S, 8 * K) @ S2.omega8).reshape(S, m, m)
    return NU, M


def criteria(S2: Sym2, thetas: np.ndarray, reml: bool) -> np.ndarray | None:
    """:func:`evaluate`'s criterion at several θ (rows of *thetas*; inf where it is not
    finite): the trial points of a probe off a bound of θ (see ``spec.probe_inside_bounds``).
    None where some θ's r² is not positive by rounding (the caller then takes the general path
    θ by θ)."""
    fs = [evaluate(S2, th, reml, False)[0] for th in thetas]
    return None if any(math.isnan(f) for f in fs) else np.array(fs)


def gradients(S2: Sym2, thetas: np.ndarray, reml: bool) -> np.ndarray | None:
    """The gradients of :func:`evaluate` at several θ (rows of *thetas*), every step stacked over
    the θ (the differences that start the optimiser's Hessian); M⁻¹ by one stacked inverse. None
    where M is singular, r² ≤ 0 or a gradient is not finite at some θ. With the C kernel, θ by
    θ through it."""
    if S2.blob is not None:
        gs = [evaluate(S2, th, reml, True)[1] for th in thetas]
        if any(g is None for g in gs):
            return None
        out = np.array(gs)
        return out if math.isfinite(float(out.sum())) else None
    S, K, p = thetas.shape[0], S2.K, S2.p
    m = p + 1
    NU, M = _stacked_nu(S2, thetas)
    try:
        Minv = np.linalg.inv(M)
    except np.linalg.LinAlgError:
        return None
    v = Minv[:, :, p]
    pwrss = 1.0 / v[:, p]  # M⁻¹'s last diagonal is 1 / r²
    if not np.all(pwrss > 0):
        return None
    n = S2.n
    c = ((n - p - 1) if reml else n) * pwrss
    half_w = v[:, :, None] * (c[:, None] * v)[:, None, :]
    if reml:
        half_w += Minv
    T = (half_w.reshape(S, m * m) @ S2.omega_up2.T).reshape(S, K, 2, 2)
    NU4 = NU.reshape(S, K, 2, 2, 2)
    Q = S2.two_count_C - T
    Q += S2.C @ (NU4[:, :, 0] @ T)
    grad_m = Q.transpose(0, 2, 1, 3).reshape(S, 2, 2 * K) @ NU4[:, :, 1].reshape(S, 2 * K, 2)
    out = grad_m.reshape(S, 4)[:, S2.flat_idx]
    return out if math.isfinite(float(out.sum())) else None
