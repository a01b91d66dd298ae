"""The pooled criterion and gradient of the "fast" engine with every product by Λ as one matrix
product over all classes (one grouping factor).

With groups pooled by class of ZᵢᵀZᵢ (:class:`mfr_outcomes.models.fast._Classes`), each class
contributes a few q×q products; K is small (a few dozen classes), so the time is the number of
NumPy calls, not arithmetic. Λ is the same in every class, so a product Λᵀ X Λ of every class's
X is one (K, q²) × (q², q²) product with the Kronecker matrix Λ ⊗ Λ (row-major vec:
vec(L X R) = (L ⊗ Rᵀ) vec(X)); the sums over classes of per-class products are one product of
(q, K q) and (K q, q) matrices. The algebra is that of ``fast._pooled_terms`` and
``fast._fg_classes``:

    A = ΛᵀCΛ + I,  N = ΛA⁻¹Λᵀ,  S = Σₖ Nₖ : Ωₖ   (Ωₖ the outer products of Zᵢᵀ[X, y]),
    ∂f/∂Λ = Σₖ (2 countₖ Cₖ − Fₖ Tₖ) Hₖᵀ  with F = I − CN, H = A⁻¹Λᵀ, Tₖ = Ωₖ : W,
          = Σₖ (2 countₖ Cₖ − Tₖ + CₖNₖTₖ) ΛAₖ⁻¹.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
from scipy.linalg.lapack import dpotrf as _potrf
from scipy.linalg.lapack import dpotrs as _potrs

from mfr_outcomes.models import pooled_sym2

__all__ = ["Kept", "Pooled2", "pooled2", "core2", "criteria", "fg2", "gradients", "kept_at"]


class Pooled2:
    """What :func:`core2` and :func:`fg2` read of the classes: C as (K, q, q) and (K, q²), the
    count-weighted 2C, the flattened Ω, where θ goes in Λ, XᵀX, Xᵀ(y − X b0), |y − X b0|²."""

    __slots__ = ("C", "C4", "two_count_C", "count", "omega", "flat", "q", "K", "p", "n",
                 "XtX", "Xty0", "yty0", "eye_flat", "eye_p", "last", "sym2")

    def __init__(self, cl, stats, flat: np.ndarray, q: int):
        K = cl.Ck.shape[0]
        self.K, self.q, self.p, self.n = K, q, stats.p, stats.n
        self.C = np.ascontiguousarray(cl.Ck)
        self.C4 = self.C.reshape(K, q * q)
        self.count = cl.count
        self.two_count_C = 2.0 * cl.count[:, None, None] * self.C
        self.omega = cl.omega_flat
        self.flat = flat
        self.XtX, self.Xty0, self.yty0 = stats.XtX, cl.Xty0, cl.yty0
        self.eye_flat = np.eye(q).reshape(-1)
        self.eye_p = np.eye(stats.p)
        self.last: tuple | None = None  # (θ's bytes, core2 at θ): the optimiser's last point
        # q = 2: the classes' 2×2 algebra folded into products by matrices of θ (pooled_sym2)
        self.sym2 = (pooled_sym2.Sym2(self.C, self.count, self.omega, self.XtX, self.Xty0,
                                      self.yty0, flat, self.n) if q == 2 else None)


def pooled2(cl, stats, lay) -> Pooled2 | None:
    """The layout of *cl* for :func:`fg2`, or None when the model is not one factor with every
    θ on it (the general stacked code then applies)."""
    flat = lay._inner_flat
    if lay.q_outer or flat is None:
        return None
    return Pooled2(cl, stats, flat, lay.q_inner)


def _adj_inv(A: np.ndarray, q: int) -> tuple[np.ndarray, np.ndarray]:
    """Inverses and determinants of a (K, q, q) stack of SPD matrices (closed form for 2×2)."""
    if q == 2:
        f = A.reshape(-1, 4)
        det = f[:, 0] * f[:, 3] - f[:, 1] * f[:, 2]
        inv = (f[:, _ADJ_ORDER] * _ADJ_SIGN) / det[:, None]
        return inv.reshape(A.shape), det
    inv = np.linalg.inv(A)
    return inv, np.linalg.det(A)


_ADJ_ORDER = np.array([3, 1, 2, 0])
_ADJ_SIGN = np.array([1.0, -1.0, -1.0, 1.0])


def core2(P: Pooled2, theta) -> tuple | None:
    """log|L_θ|², r², R_X, β̂ − b0, Λ and A⁻¹ at θ; None when XᵀV⁻¹X is not positive definite
    (as ``fast._pooled_core``). The pieces at the last θ are kept: the fit reads β̂, σ and
    Var(β̂) at the optimiser's last point, where they were just computed (read-only arrays)."""
    key = theta.tobytes() if type(theta) is np.ndarray else None
    last = P.last
    if key is not None and last is not None and last[0] == key:
        if last[1] is None:  # evaluated by the q = 2 path: its tuple built once, on demand
            _keep(P, key, *pooled_sym2.pieces(P.sym2, last[3]), last[3])
        return P.last[1]
    if P.sym2 is not None:
        f, _, st = pooled_sym2.evaluate(P.sym2, theta, True, False)
        if st is not None:
            out, XtKX = pooled_sym2.pieces(P.sym2, st)
            if key is not None:
                _keep(P, key, out, XtKX, st)
            return out
        if f == math.inf:
            return None  # else (r² ≤ 0 by rounding) the general formulas below
    out = _core_general(P, theta)
    if out is None:
        return None
    if key is not None:
        _keep(P, key, out[0], out[1], None)
    return out[0]


def _keep(P: Pooled2, key: bytes, out: tuple, XtKX: np.ndarray, state) -> None:
    for a in out[2:] + (XtKX,):
        a.flags.writeable = False
    P.last = (key, out, XtKX, state)


def _core_general(P: Pooled2, theta) -> tuple[tuple, np.ndarray] | None:
    """core2's tuple and XᵀV⁻¹X at θ by the general q×q formulas (Λ ⊗ Λ products)."""
    q, K, p = P.q, P.K, P.p
    lam = np.zeros(q * q)
    lam[P.flat] = theta
    lam = lam.reshape(q, q)
    kron = (lam[:, None, :, None] * lam[None, :, None, :]).reshape(q * q, q * q)  # Λ ⊗ Λ
    A = P.C4 @ kron  # vec(Λᵀ C Λ) = (Λᵀ ⊗ Λᵀ) vec(C), as rows: C4 (Λ ⊗ Λ)
    A += P.eye_flat
    Ainv, det = _adj_inv(A.reshape(K, q, q), q)
    N = Ainv.reshape(K, q * q) @ kron.T  # vec(Λ A⁻¹ Λᵀ)
    S = (N.reshape(-1) @ P.omega).reshape(p + 1, p + 1)
    solved = fixed_solve(P.XtX, P.Xty0, P.yty0, S, p)
    if solved is None:
        return None
    RX, beta0, pwrss = solved
    logdet = float(P.count @ np.log(det))
    return (logdet, pwrss, RX, beta0, lam, Ainv, N), P.XtX - S[:p, :p]


class Kept(NamedTuple):
    """:func:`core2`'s pieces at one θ, by name, and XᵀV⁻¹X there."""

    logdet: float
    pwrss: float
    RX: np.ndarray
    beta0: np.ndarray
    lam: np.ndarray
    Ainv: np.ndarray
    N: np.ndarray
    XtVX: np.ndarray


def kept_at(P: Pooled2, theta: np.ndarray) -> Kept | None:
    """The pieces kept at θ when θ is the last θ :func:`core2` or :func:`fg2` computed, else
    None."""
    last = P.last
    key = np.asarray(theta, dtype=float).tobytes()
    if last is None or last[0] != key:
        return None
    if last[1] is None:
        _keep(P, key, *pooled_sym2.pieces(P.sym2, last[3]), last[3])
    return Kept(*P.last[1], P.last[2])


def fixed_solve(XtX: np.ndarray, Xty0: np.ndarray, yty0: float, S: np.ndarray, p: int
                ) -> tuple[np.ndarray, np.ndarray, float] | None:
    """R_X, β̂ − b0 and r² from the pooled sums: XᵀV⁻¹X = XᵀX − S[:p, :p] = R_XᵀR_X, and the
    response's column of S; None when XᵀV⁻¹X is not positive definite."""
    RX, info = _potrf(XtX - S[:p, :p], lower=0, clean=1)
    if info != 0:
        return None
    XtVy = Xty0 - S[:p, p]
    beta0 = _potrs(RX, XtVy, lower=0)[0]
    return RX, beta0, max(yty0 - float(S[p, p]) - float(XtVy @ beta0), 1e-300)


def criterion(logdet: float, pwrss: float, RX: np.ndarray, n: int, p: int, reml: bool,
              logdet_rx) -> float:
    """lme4's profiled criterion from its pieces: log|L|² + N (1 + log(2π r²/N)), N = n − p
    (REML, plus log|R_X|² from *logdet_rx*) or n (ML)."""
    nn = (n - p) if reml else n
    f = logdet + nn * (1.0 + math.log(2.0 * math.pi * pwrss / nn))
    return f + logdet_rx(RX) if reml else f


def fg2(P: Pooled2, theta, reml: bool, logdet_rx, gradient: bool = True
        ) -> tuple[float, np.ndarray | None]:
    """Criterion and gradient in θ of the pooled classes (``fast._fg_classes``'s formulas):
    (inf, None) where the criterion is not finite, (f, None) when *gradient* is false.
    *logdet_rx* gives log|XᵀV⁻¹X| from R_X."""
    if P.sym2 is not None:  # q = 2: the folded closed forms (pooled_sym2)
        f, g, st = pooled_sym2.evaluate(P.sym2, theta, reml, gradient)
        if f == math.inf:
            return np.inf, None
        if st is not None:
            if type(theta) is np.ndarray:
                P.last = (theta.tobytes(), None, None, st)
            return f, g
    core = core2(P, theta)
    if core is None:
        return np.inf, None
    logdet, pwrss, RX, beta0, lam, Ainv, N = core
    p, n, q, K = P.p, P.n, P.q, P.K
    nn = (n - p) if reml else n
    f = criterion(logdet, pwrss, RX, n, p, reml, logdet_rx)
    if not math.isfinite(f):
        return np.inf, None
    if not gradient:
        return f, None
    w = np.empty(p + 1)
    w[:p] = beta0
    w[p] = -1.0  # the data hold y − X b0
    W = (2.0 * nn / pwrss) * (w[:, None] * w)
    if reml:
        W[:p, :p] += 2.0 * _potrs(RX, P.eye_p, lower=0)[0]
    T = (P.omega @ W.reshape(-1)).reshape(K, q, q)
    Q = P.two_count_C - T
    Q += P.C @ (N.reshape(K, q, q) @ T)  # 2 count C − F T, F = I − C N
    U = lam @ Ainv  # Λ A⁻¹ (= Hᵀ) of every class
    # Σₖ Qₖ Uₖ: rows (r) by the stacked (k, j) against (k, j) by columns (s)
    grad_m = Q.transpose(1, 0, 2).reshape(q, K * q) @ U.reshape(K * q, q)
    return f, grad_m.reshape(-1)[P.flat]


def criteria(P: Pooled2, thetas: np.ndarray, reml: bool) -> np.ndarray | None:
    """:func:`fg2`'s criterion at several θ (rows of *thetas*) by the q = 2 form, or None where
    it does not apply (q ≠ 2) or some θ needs the general path."""
    if P.sym2 is None:
        return None
    return pooled_sym2.criteria(P.sym2, thetas, reml)


def gradients(P: Pooled2, thetas: np.ndarray, reml: bool) -> np.ndarray | None:
    """The gradients of :func:`fg2` at several θ at once (rows of *thetas*), every step of
    :func:`core2` and :func:`fg2` stacked over the θ (one NumPy call where each θ took one): for
    the differences that start the optimiser's Hessian. None where XᵀV⁻¹X is singular, r² ≤ 0
    or a gradient is not finite at some θ."""
    if P.sym2 is not None:
        return pooled_sym2.gradients(P.sym2, thetas, reml)
    q, K, p = P.q, P.K, P.p
    m, qq = p + 1, q * q
    S = thetas.shape[0]
    nn = (P.n - p) if reml else P.n
    lam = np.zeros((S, qq))
    lam[:, P.flat] = thetas
    lam = lam.reshape(S, q, q)
    kron = (lam[:, :, None, :, None] * lam[:, None, :, None, :]).reshape(S, qq, qq)
    A = P.C4 @ kron  # (S, K, q²)
    A += P.eye_flat
    Ainv, _ = _adj_inv(A.reshape(S * K, q, q), q)
    Ainv = Ainv.reshape(S, K, q, q)
    N = Ainv.reshape(S, K, qq) @ kron.transpose(0, 2, 1)  # vec(Λ A⁻¹ Λᵀ)
    Sm = (N.reshape(S, K * qq) @ P.omega).reshape(S, m, m)
    XtKX = P.XtX - Sm[:, :p, :p]
    try:
        XtKX_inv = np.linalg.inv(XtKX)
    except np.linalg.LinAlgError:
        return None
    XtVy = P.Xty0 - Sm[:, :p, p]
    beta0 = (XtKX_inv @ XtVy[:, :, None])[:, :, 0]
    pwrss = P.yty0 - Sm[:, p, p] - np.einsum("sp,sp->s", XtVy, beta0)
    if not np.all(pwrss > 0):
        return None
    w = np.empty((S, m))
    w[:, :p] = beta0
    w[:, p] = -1.0
    W = (2.0 * nn / pwrss)[:, None, None] * (w[:, :, None] * w[:, None, :])
    if reml:
        W[:, :p, :p] += 2.0 * XtKX_inv
    T = (W.reshape(S, m * m) @ P.omega.T).reshape(S, K, q, q)
    Q = P.two_count_C - T
    Q += P.C @ (N.reshape(S, K, q, q) @ T)
    U = lam[:, None] @ Ainv
    grad_m = Q.transpose(0, 2, 1, 3).reshape(S, q, K * q) @ U.reshape(S, K * q, q)
    out = grad_m.reshape(S, qq)[:, P.flat]
    return out if math.isfinite(float(out.sum())) else None
