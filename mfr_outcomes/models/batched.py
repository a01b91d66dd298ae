"""Many REML fits at once: studies that share a model (one grouping factor) fitted side by side.

Power by simulation fits thousands of studies of the same model; what differs between them is
the response (simr's way: new responses on one design) or the design too (new clinics each time,
same numbers of patients). Here every per-group quantity of
:mod:`mfr_outcomes.models.block_inference` carries a leading study axis, so one NumPy call
serves the whole batch: ZᵢᵀZᵢ and ZᵢᵀXᵢ are (S or 1, G, q, ·), the responses enter as Zᵢᵀyᵢ
(S, G, q), Xᵀy (S, p) and yᵀy (S,).

θ is found by a projected Newton method on the σ-profiled REML criterion with its exact
Hessian (the varpar Hessian of ``block_inference`` with σ profiled out by a Schur complement),
vectorised across studies: a backtracking line search per study, bounds θ_diag ≥ 0 handled by
fixing a component at 0 while its gradient pushes outwards (and stepping off 0 when the
curvature there is negative: a saddle). Studies leave the batch when they converge, so the
arrays shrink as the iterations proceed. Every study's arithmetic is independent of the others
in its batch: the same study gives the same fit in any batch.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import sparse
from scipy.linalg.lapack import dpotrf as _potrf
from scipy.linalg.lapack import dpotrs as _potrs

from mfr_outcomes.models import varpar_one
from mfr_outcomes.models.threads import blas_threads

__all__ = ["BatchDesign", "BatchFit", "Pooled", "design_arrays", "response_sums", "pool",
           "pooled_from_classes", "fit_batch", "fit_pooled", "satterthwaite_df",
           "varpar_derivatives", "deviance_varpar"]


class _Params:
    """p and θ's lower bounds, from XtX and theta_pos."""

    XtX: np.ndarray
    theta_pos: list[tuple[int, int]]

    @property
    def p(self) -> int:
        return int(self.XtX.shape[-1])

    @property
    def lower(self) -> np.ndarray:
        return np.array([0.0 if r == c else -np.inf for r, c in self.theta_pos])


@dataclass
class BatchDesign(_Params):
    """The design side of a batch: (D, G, q, q) ZᵢᵀZᵢ, (D, G, q, p) ZᵢᵀXᵢ, (D, p, p) XᵀX with D = 1
    (one design for every study) or D = S (one per study); θ's positions in Λ."""

    C: np.ndarray
    ZX: np.ndarray
    XtX: np.ndarray
    n: int | np.ndarray  # observations: one number, or (D,) one a design
    theta_pos: list[tuple[int, int]]  # (row, col) of each θ in the q×q Λ
    q: int


def _indicator(codes: np.ndarray, Z: np.ndarray, G: int) -> sparse.csr_matrix:
    """(G q, n) sparse: row (g, a) holds Z[:, a] on the rows of group g."""
    n, q = Z.shape
    rows = (codes[:, None] * q + np.arange(q)[None, :]).ravel()
    cols = np.repeat(np.arange(n), q)
    return sparse.csr_matrix((Z.ravel(), (rows, cols)), shape=(G * q, n))


def design_arrays(X: np.ndarray, Z: np.ndarray, codes: np.ndarray, n_groups: int
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, sparse.csr_matrix]:
    """ZᵢᵀZᵢ (G, q, q), ZᵢᵀXᵢ (G, q, p), XᵀX and the indicator that sums Zᵢᵀyᵢ of responses."""
    q, p = Z.shape[1], X.shape[1]
    ind = _indicator(np.asarray(codes, dtype=np.int64), np.asarray(Z, dtype=float), n_groups)
    ZX = np.asarray(ind @ X).reshape(n_groups, q, p)
    ZZ = np.empty((n_groups, q, q))
    for a in range(q):
        ZZ[:, :, a] = np.asarray(ind @ Z[:, a]).reshape(n_groups, q)
    return ZZ, ZX, X.T @ X, ind


def response_sums(X: np.ndarray, ind: sparse.csr_matrix, Y: np.ndarray, q: int
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Zᵢᵀyᵢ (S, G, q), Xᵀy (S, p) and yᵀy (S,) of responses Y (n, S) on one design."""
    Zy = np.asarray(ind @ Y).T.reshape(Y.shape[1], -1, q)
    return Zy, Y.T @ X, np.einsum("ns,ns->s", Y, Y)


@dataclass
class BatchFit:
    """Per-study results; NaN rows where a study could not be fitted."""

    theta: np.ndarray  # (S, k)
    sigma: np.ndarray  # (S,)
    beta: np.ndarray  # (S, p)
    vcov: np.ndarray  # (S, p, p)
    objective: np.ndarray  # (S,) REML criterion
    converged: np.ndarray  # (S,) bool
    iterations: np.ndarray  # (S,)
    hessian: np.ndarray  # (S, k+1, k+1): the deviance in varpar = (θ, σ) at the optimum
    jacobian: np.ndarray  # (S, k+1, p, p): ∂Var(β̂)/∂varpar


# ----------------------------------------------------------------------------------------------
# Groups pooled by class of ZᵢᵀZᵢ
# ----------------------------------------------------------------------------------------------
@dataclass
class Pooled(_Params):
    """A batch with its groups pooled by class of ZᵢᵀZᵢ.

    Everything the criterion, its gradient and Hessian, and the Jacobian of Var(β̂) need from a
    group is ZᵢᵀZᵢ and the outer products (ZᵢᵀXa_i)[a] (ZᵢᵀXa_i)[b]ᵀ (Xa = [X, y]); the latter enter
    linearly, so they are summed within each class of equal ZᵢᵀZᵢ: an evaluation costs
    O(classes), not O(groups). The classes are the union over the batch's designs (a design
    without a class has count 0 there). The response enters as y − X b0 (b0 the least-squares
    β of the study), so the pooled sums are of the size of the residuals (less rounding in the
    criterion near the optimum).
    """

    C: np.ndarray  # (K, q, q) ZᵢᵀZᵢ of each class
    count: np.ndarray  # (D, K) groups of each class, per design (D = 1 or S)
    Oxx: np.ndarray  # (D, K q q, p p) Σ_class ZXᵢ[a] ZXᵢ[b]ᵀ
    Om: np.ndarray  # (S, K q q, m m) Σ_class ZXaᵢ[a] ZXaᵢ[b]ᵀ, m = p + 1
    XtX: np.ndarray  # (D, p, p)
    Xty0: np.ndarray  # (S, p) Xᵀ(y − X b0)
    yty0: np.ndarray  # (S,) |y − X b0|²
    b0: np.ndarray  # (S, p)
    n: np.ndarray  # (D,) observations
    theta_pos: list[tuple[int, int]]
    q: int

    def design(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """count, XtX, n and Oxx of the studies *idx* (a leading axis of 1 when shared)."""
        if self.count.shape[0] == 1:
            return self.count, self.XtX, np.full(idx.size, float(self.n[0])), self.Oxx
        return self.count[idx], self.XtX[idx], self.n[idx].astype(float), self.Oxx[idx]


def _centre(Om: np.ndarray, XtX: np.ndarray, Xty: np.ndarray, yty: np.ndarray):
    """Om, Xᵀy, yᵀy of y − X b0 (b0 = least squares) from those of y: Xa → Xa T with
    T = [[I, −b0], [0, 1]]."""
    S, p = Xty.shape
    m = p + 1
    b0 = np.linalg.solve(XtX, Xty[..., None])[..., 0] if XtX.shape[0] == S else \
        np.linalg.solve(XtX[0], Xty.T).T
    T = np.broadcast_to(np.eye(m), (S, m, m)).copy()
    T[:, :p, p] = -b0
    Om = Om.reshape(S, -1, m, m)
    Om = (T.transpose(0, 2, 1)[:, None] @ Om @ T[:, None]).reshape(S, -1, m * m)
    XtXb = np.einsum("spr,sr->sp", np.broadcast_to(XtX, (S, p, p)), b0)
    Xty0 = Xty - XtXb
    yty0 = np.maximum(yty - 2.0 * np.einsum("sp,sp->s", b0, Xty)
                      + np.einsum("sp,sp->s", b0, XtXb), 0.0)
    return Om, Xty0, yty0, b0


def pool(d: BatchDesign, Zy: np.ndarray, Xty: np.ndarray, yty: np.ndarray) -> Pooled:
    """The per-group arrays of a batch pooled by class of ZᵢᵀZᵢ."""
    D, G, q, _ = d.C.shape
    S, p = Xty.shape
    m = p + 1
    flat = np.ascontiguousarray(d.C.reshape(D * G, q * q))
    # classes by a 1-D key (a fixed random projection), verified exactly
    key = flat @ np.random.default_rng(20150701).uniform(1.0, 2.0, q * q)
    _, first, cls = np.unique(key, return_index=True, return_inverse=True)
    uniq = flat[first]
    cls = cls.ravel()
    if not np.array_equal(uniq[cls], flat):
        uniq, cls = np.unique(flat, axis=0, return_inverse=True)
        cls = cls.ravel()
    K = uniq.shape[0]
    cls = cls.reshape(D, G)
    count = np.zeros((D, K))
    for r in range(D):
        count[r] = np.bincount(cls[r], minlength=K)
    ZX = np.broadcast_to(d.ZX, (S, G, q, p)) if D == 1 else d.ZX
    v = np.concatenate([ZX, Zy[..., None]], axis=3).reshape(S, G, q * m)
    W = (v[:, :, :, None] * v[:, :, None, :]).reshape(S * G, -1)
    rows = (np.arange(S)[:, None] * K + (cls if D > 1 else cls[:1])).ravel()
    ind = sparse.csr_matrix((np.ones(S * G), (rows, np.arange(S * G))), shape=(S * K, S * G))
    Om = np.asarray(ind @ W).reshape(S, K, q, m, q, m).transpose(0, 1, 2, 4, 3, 5)
    Om = np.ascontiguousarray(Om).reshape(S, K * q * q, m * m)
    Oxx = np.ascontiguousarray(Om[:D].reshape(D, K * q * q, m, m)[..., :p, :p]).reshape(
        D, K * q * q, p * p)
    Om, Xty0, yty0, b0 = _centre(Om, d.XtX, Xty, yty)
    return Pooled(C=uniq.reshape(K, q, q), count=count, Oxx=Oxx, Om=Om, XtX=d.XtX, Xty0=Xty0,
                  yty0=yty0, b0=b0, n=np.atleast_1d(np.asarray(d.n, dtype=float)),
                  theta_pos=list(d.theta_pos), q=q)


def pooled_from_classes(count: np.ndarray, Ck: np.ndarray, omega_flat: np.ndarray,
                        XtX: np.ndarray, Xty: np.ndarray, yty: float, n: int,
                        theta_pos: list[tuple[int, int]], *, oxx: np.ndarray | None = None,
                        centred: bool = False) -> Pooled:
    """One study (the fast engine's fit) from its classes: counts (K,), ZᵢᵀZᵢ (K, q, q) and
    Ω (K q q, (p+1)²) of [X, y]; *oxx* its X block (K q q, p²) when already at hand. With
    ``centred`` the response is already y − X b0 (the fast engine's classes): b0 = 0 and no
    second centring."""
    K, q = Ck.shape[0], Ck.shape[1]
    p = XtX.shape[0]
    Om = omega_flat.reshape(1, K * q * q, (p + 1) ** 2)
    Oxx = (np.ascontiguousarray(Om.reshape(1, K * q * q, p + 1, p + 1)[..., :p, :p]).reshape(
        1, K * q * q, p * p) if oxx is None else oxx.reshape(1, K * q * q, p * p))
    if centred:
        Xty0, yty0, b0 = np.asarray(Xty, float)[None], np.array([float(yty)]), np.zeros((1, p))
    else:
        Om, Xty0, yty0, b0 = _centre(Om, XtX[None], np.asarray(Xty, float)[None],
                                     np.array([float(yty)]))
    return Pooled(C=np.asarray(Ck, float), count=np.asarray(count, float)[None], Oxx=Oxx, Om=Om,
                  XtX=XtX[None], Xty0=Xty0, yty0=yty0, b0=b0, n=np.array([float(n)]),
                  theta_pos=list(theta_pos), q=q)


def _lambdas(theta: np.ndarray, P: Pooled) -> np.ndarray:
    lam = np.zeros((theta.shape[0], P.q, P.q))
    for k, (r, c) in enumerate(P.theta_pos):
        lam[:, r, c] = theta[:, k]
    return lam


def _inv_logdet(A: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Inverses and log-determinants of a stack of small SPD matrices (closed form for q ≤ 2:
    LAPACK's per-matrix call costs more than the 2×2 algebra)."""
    q = A.shape[-1]
    if q == 1:
        return 1.0 / A, np.log(A[..., 0, 0])
    if q == 2:
        a, b, c = A[..., 0, 0], A[..., 0, 1], A[..., 1, 1]
        det = a * c - b * b
        inv = np.empty_like(A)
        inv[..., 0, 0] = c / det
        inv[..., 1, 1] = a / det
        inv[..., 0, 1] = inv[..., 1, 0] = -b / det
        return inv, np.log(det)
    _, logdet = np.linalg.slogdet(A)
    return np.linalg.inv(A), logdet


def _swap(A: np.ndarray) -> np.ndarray:
    return np.swapaxes(A, -1, -2)


def _mm(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """A @ B for stacks of small q×q matrices: broadcast products summed (matmul's per-matrix
    dispatch costs more than 2×2 arithmetic); matmul where both stacks have one shape and are
    small (one study's classes: no broadcasting, and the sums cost three calls)."""
    if A.shape[-1] > 3 or (A.shape == B.shape and A.size <= 4096):
        return A @ B
    out = A[..., :, 0, None] * B[..., None, 0, :]
    for j in range(1, A.shape[-1]):
        out = out + A[..., :, j, None] * B[..., None, j, :]
    return out


def _core(P: Pooled, idx: np.ndarray, theta: np.ndarray, reml: bool = True) -> dict:
    """Profiled pieces at θ (σ = 1 scale) of the studies *idx*: β̂, r², the criterion."""
    count, XtX, n, _ = P.design(idx)
    S, p, q = idx.size, P.p, P.q
    m = p + 1
    lam = _lambdas(theta, P)[:, None]  # (S, 1, q, q)
    A = _mm(_mm(_swap(lam), P.C[None]), lam)
    A[..., range(q), range(q)] += 1.0
    Ainv, logdetA = _inv_logdet(A)
    N = _mm(_mm(lam, Ainv), _swap(lam))  # (S, K, q, q)
    S1 = (N.reshape(S, 1, -1) @ P.Om[idx]).reshape(S, m, m)
    XtKX = XtX - S1[:, :p, :p]
    XtKy = P.Xty0[idx] - S1[:, :p, p]
    with np.errstate(all="ignore"):
        try:
            beta0 = np.linalg.solve(XtKX, XtKy[..., None])[..., 0]
        except np.linalg.LinAlgError:
            beta0 = np.full((S, p), np.nan)
        pwrss = P.yty0[idx] - S1[:, p, p] - np.einsum("sp,sp->s", XtKy, beta0)
        sign, ldrx = np.linalg.slogdet(XtKX)
        nn = n - p if reml else n
        logdet = np.einsum("sk,sk->s", np.broadcast_to(count, logdetA.shape), logdetA)
        crit = logdet + nn * (1.0 + np.log(2.0 * np.pi * pwrss / nn))
        if reml:
            crit = crit + ldrx
    ok = (pwrss > 0) & (sign > 0) & np.isfinite(crit)
    return {"idx": idx, "lam": lam[:, 0], "N": N, "XtKX": XtKX, "beta0": beta0,
            "pwrss": pwrss, "crit": np.where(ok, crit, np.inf), "n": n, "nn": nn,
            "logdet": logdet, "ldrx": ldrx}


def _core_one(P: Pooled, theta: np.ndarray, reml: bool = True) -> dict:
    """``_core`` of the one study of *P* at θ (1, k), with fewer NumPy calls: every product by Λ
    over all classes as one product with Λ ⊗ Λ (row-major vec(ΛᵀXΛ) = (Λᵀ ⊗ Λᵀ) vec(X)), XᵀKX by
    Cholesky (LAPACK directly). Falls back to ``_core`` where XᵀKX is not positive definite, so
    the two agree everywhere (the same criterion where finite, inf where not)."""
    q, p = P.q, P.p
    m = p + 1
    K = P.C.shape[0]
    count, XtX, n, _ = P.design(np.arange(1))
    lam = _lambdas(theta, P)[0]
    kron = (lam[:, None, :, None] * lam[None, :, None, :]).reshape(q * q, q * q)
    A = P.C.reshape(K, q * q) @ kron
    A[:, ::q + 1] += 1.0  # the diagonals, as one strided view
    Ainv, logdetA = _inv_logdet(A.reshape(1, K, q, q))
    N = (Ainv.reshape(K, q * q) @ kron.T).reshape(1, K, q, q)  # vec(Λ A⁻¹ Λᵀ)
    S1 = (N.reshape(1, -1) @ P.Om[0]).reshape(1, m, m)
    XtKX = XtX - S1[:, :p, :p]
    RX, info = _potrf(XtKX[0], lower=0, clean=1)
    if info != 0:
        return _core(P, np.arange(1), theta, reml)
    XtKy = P.Xty0[:1] - S1[:, :p, p]
    beta0 = _potrs(RX, XtKy[0], lower=0)[0][None]
    pwrss = float(P.yty0[0] - S1[0, p, p] - XtKy[0] @ beta0[0])
    ldrx = 2.0 * float(np.log(RX.diagonal()).sum())
    nn = float(n[0]) - p if reml else float(n[0])
    logdet = float(count[0] @ logdetA[0])
    crit = math.inf
    if pwrss > 0:
        crit = logdet + nn * (1.0 + math.log(2.0 * math.pi * pwrss / nn)) + (ldrx if reml else 0.0)
    return {"idx": np.arange(1), "lam": lam[None], "N": N, "XtKX": XtKX, "beta0": beta0,
            "pwrss": np.array([pwrss]), "crit": np.array([crit if math.isfinite(crit) else math.inf]),
            "n": n, "nn": np.array([nn]), "logdet": np.array([logdet]), "ldrx": np.array([ldrx])}


def _blocks(P: Pooled, core: dict, sigma: np.ndarray) -> dict:
    """Per class M = ZᵢᵀV⁻¹Zᵢ, F = (I − ZᵢᵀZᵢN)/σ², the residual moments E2 = Σ eᵢeᵢᵀ and
    Oxe = Σ ZXᵢ[a] eᵢ[b] (eᵢ = Zᵢᵀ(y − Xβ̂)), Φ = Var(β̂) and the sums the derivatives need."""
    idx = core["idx"]
    count, _, n, Oxx = P.design(idx)
    S, p, q = idx.size, P.p, P.q
    m = p + 1
    K = P.C.shape[0]
    s2 = sigma ** 2
    w = np.concatenate([-core["beta0"], np.ones((S, 1))], axis=1)
    t = (P.Om[idx].reshape(S, -1, m) @ w[:, :, None]).reshape(S, K, q, q, m)
    Oxe = t[..., :p]
    E2 = np.einsum("skabi,si->skab", t, w)
    C = P.C[None]
    CN = _mm(C, core["N"])
    M = (C - _mm(CN, C)) / s2[:, None, None, None]
    F = (np.eye(q) - CN) / s2[:, None, None, None]
    Phi_inv = core["XtKX"] / s2[:, None, None]
    cnt = np.broadcast_to(count, (S, K))
    return {"M": M, "F": F, "E2": E2, "Oxe": Oxe, "Oxx": Oxx, "count": cnt, "n": n,
            "Phi_inv": Phi_inv, "Phi": np.linalg.inv(Phi_inv), "rKr": core["pwrss"] / s2,
            "Msum": np.einsum("sk,skab->sab", cnt, M),
            "Ss": _mm(_mm(F, E2), _swap(F)).sum(axis=1), "sigma": sigma, "lam": core["lam"]}


def _derivs(bl: dict, P: Pooled) -> tuple:
    """First (S, k+1, q, q), (S, k+1) and second (S, k+1, k+1, q, q), (S, k+1, k+1) derivatives
    of V in varpar = (θ, σ) as ∂V = Z E Zᵀ + c V."""
    lam, sig = bl["lam"], bl["sigma"]
    S, q, k = lam.shape[0], P.q, len(P.theta_pos)
    s2 = (sig ** 2)[:, None, None, None]
    U, UU2 = varpar_one.unit_products(tuple(P.theta_pos), q)
    E1 = np.zeros((S, k + 1, q, q))
    UL = _mm(U[None], _swap(lam)[:, None])  # U Λᵀ; its transpose is Λ Uᵀ (the same products)
    E1[:, :k] = s2 * (UL + _swap(UL))
    c1 = np.zeros((S, k + 1))
    c1[:, k] = 2.0 / sig
    E2 = np.zeros((S, k + 1, k + 1, q, q))
    E2[:, :k, :k] = s2[:, None] * UU2[None]
    E2[:, :k, k] = E2[:, k, :k] = (2.0 / sig)[:, None, None, None] * E1[:, :k]
    c2 = np.zeros((S, k + 1, k + 1))
    c2[:, k, k] = 2.0 / sig ** 2
    return E1, c1, E2, c2


def _kron(F: np.ndarray) -> np.ndarray:
    """F ⊗ F of each matrix of a (S, K, q, q) stack: (S, K, q², q²)."""
    q = F.shape[-1]
    return (F[..., :, None, :, None] * F[..., None, :, None, :]).reshape(
        F.shape[:-2] + (q * q, q * q))


def _sandwich(KFF: np.ndarray, X: np.ndarray, n_pairs: int) -> np.ndarray:
    """FₖᵀXFₖ for every class k of one study and every matrix of X (n_pairs of them, one per
    class (S, …, K, q, q) or shared by the classes (S, …, q, q)), as (S, n_pairs, K, q²):
    row-major vec(FᵀXF) = vec(X) (F ⊗ F) as rows, one product per class."""
    S, K, q2 = KFF.shape[0], KFF.shape[1], KFF.shape[-1]
    if X.size == S * n_pairs * q2:  # shared by the classes
        rows = X.reshape(S, 1, n_pairs, q2)
    else:
        rows = X.reshape(S, n_pairs, K, q2).transpose(0, 2, 1, 3)
    return (rows @ KFF).transpose(0, 2, 1, 3)


def _hessian(bl: dict, P: Pooled, reml: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Hessian (S, k+1, k+1) and gradient (S, k+1) of the REML (or ML) deviance in varpar, and
    P_i = XᵀKV_iKX (S, k+1, p, p); the formulas of :mod:`block_inference`, summed by class and
    vectorised over studies and derivatives."""
    E1, c1, E2d, c2 = _derivs(bl, P)
    M, F, Phi, Phi_inv = bl["M"], bl["F"], bl["Phi"], bl["Phi_inv"]
    S, k1, p = E1.shape[0], E1.shape[1], P.p
    n = bl["n"]
    Ft = _swap(F)
    Oxx = bl["Oxx"]  # (1 or S, Kqq, pp)
    PhiOxx = Oxx @ Phi.reshape(S, p * p, 1)  # (S, Kqq, 1): <Φ, Σ_class ZX[a] ZX[b]ᵀ>
    one = S == 1  # one study: the sandwiches as products with Kronecker matrices (fewer calls)
    KFF = _kron(F) if one else None
    T1 = (_sandwich(KFF, E1, k1) if one else
          _mm(_mm(Ft[:, None], E1[:, :, None]), F[:, None])).reshape(S, k1, -1)
    bbE = (T1 @ Oxx).reshape(S, k1, p, p)  # Σ BᵀE_iB
    Pm = bbE + c1[..., None, None] * Phi_inv[:, None]
    PB = (T1 @ PhiOxx)[..., 0]  # <Φ, Σ BᵀE_iB>
    trME = np.einsum("sab,siba->si", bl["Msum"], E1)
    sEs = np.einsum("sab,siab->si", bl["Ss"], E1)
    u = T1 @ bl["Oxe"].reshape(S, -1, p)  # Σ BᵀE_is  (S, k1, p)
    if one:  # vec(E_i M E_j) = vec(M) (E_iᵀ ⊗ E_j) as rows, then Fᵀ(·)F the same way
        qq = E1.shape[-1] ** 2
        KE = (_swap(E1)[:, :, None, :, None, :, None] * E1[:, None, :, None, :, None, :]
              ).reshape(S, k1 * k1, qq, qq)
        W = M.reshape(S, 1, -1, qq) @ KE  # (S, k1 k1, K, q²)
        TW = _sandwich(KFF, W, k1 * k1).reshape(S, k1 * k1, -1)
    else:
        EM = _mm(E1[:, :, None], M[:, None])  # E_i M  (S, k1, K, q, q)
        W = _mm(EM[:, :, None], E1[:, None, :, None])  # E_i M E_j  (S, k1, k1, K, q, q)
        TW = _mm(_mm(Ft[:, None, None], W), F[:, None, None]).reshape(S, k1 * k1, -1)
    spair = (TW @ bl["E2"].reshape(S, -1, 1)).reshape(S, k1, k1)
    ME = _mm(M[:, None], E1[:, :, None])
    MEc = ME * bl["count"][:, None, :, None, None]
    trpair = np.einsum("sikab,sjkba->sij", MEc, ME)
    ci, cj = c1[:, :, None], c1[:, None, :]
    nn_ = n[:, None, None]
    trKK = trpair + cj * trME[:, :, None] + ci * trME[:, None, :] + ci * cj * nn_
    trM2 = np.einsum("sab,sijba->sij", bl["Msum"], E2d)
    sE2 = np.einsum("sab,sijab->sij", bl["Ss"], E2d)
    tr1 = trM2 + c2 * nn_
    tr2 = trKK
    rKr = bl["rKr"][:, None, None]
    if reml:
        T2 = (_sandwich(KFF, E2d, k1 * k1) if one else
              _mm(_mm(Ft[:, None, None], E2d[:, :, :, None]), F[:, None, None])).reshape(
            S, k1 * k1, -1)
        tr1 = tr1 - (T2 @ PhiOxx).reshape(S, k1, k1) - c2 * p
        PhiPair = (TW @ PhiOxx).reshape(S, k1, k1)
        PhiP = Phi[:, None] @ Pm
        tr2 = tr2 - 2.0 * (PhiPair + cj * PB[:, :, None] + ci * PB[:, None, :] + ci * cj * p) \
            + np.einsum("sipr,sjrp->sij", PhiP, PhiP)
    q2 = spair + cj * sEs[:, :, None] + ci * sEs[:, None, :] + ci * cj * rKr \
        - (u @ Phi) @ _swap(u)
    q1 = sE2 + c2 * rKr
    H = tr1 - tr2 + 2.0 * q2 - q1
    H = (H + _swap(H)) / 2
    grad = trME + c1 * n[:, None] - (sEs + c1 * bl["rKr"][:, None])
    if reml:
        grad = grad - PB - c1 * p
    return H, grad, Pm


# ----------------------------------------------------------------------------------------------
# Projected Newton on the σ-profiled criterion, vectorised across studies
# ----------------------------------------------------------------------------------------------
def _newton_step(H: np.ndarray, g: np.ndarray, free: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray]:
    """−H⁻¹g on the free components, H made positive definite by flipping/clipping eigenvalues;
    and which studies had negative curvature."""
    S, k = g.shape
    Hf = np.where(free[:, :, None] & free[:, None, :], H, 0.0)
    Hf[:, range(k), range(k)] = np.where(free, Hf[:, range(k), range(k)], 1.0)
    w, V = np.linalg.eigh(Hf)
    neg = np.any(w < 0, axis=1)
    scale = np.maximum(np.abs(w).max(axis=1, keepdims=True), 1e-12)
    w = np.maximum(np.abs(w), 1e-8 * scale)
    gf = np.where(free, g, 0.0)
    return -np.einsum("sij,sj->si", V / w[:, None, :], np.einsum("sji,sj->si", V, gf)), neg


def _profiled(core: dict, P: Pooled, reml: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray,
                                                          dict]:
    """σ̂(θ), gradient and Hessian of the σ-profiled criterion in θ, and the varpar blocks."""
    sigma = np.sqrt(core["pwrss"] / core["nn"])
    bl = _blocks(P, core, sigma)
    H, g, _ = _hessian(bl, P, reml)
    k = H.shape[1] - 1
    Hp = H[:, :k, :k] - H[:, :k, k:] @ H[:, k:, :k] / H[:, k:, k:]
    return sigma, g[:, :k], Hp, bl


def fit_batch(d: BatchDesign, Zy: np.ndarray, Xty: np.ndarray, yty: np.ndarray,
              theta0: np.ndarray, *, max_iter: int = 60, gtol: float = 1e-9,
              xtol: float = 1e-11) -> BatchFit:
    """REML fits of S studies (responses on a shared design, or one design each).

    Parameters
    ----------
    d : BatchDesign
    Zy, Xty, yty : arrays
        Zᵢᵀyᵢ (S, G, q), Xᵀy (S, p), yᵀy (S,).
    theta0 : (S, k) or (k,)
        Starting θ (a fitted θ for simr-style refits; lme4's start otherwise).
    max_iter, gtol, xtol
        Newton iterations at most; convergence when the projected gradient of the criterion is
        below *gtol* (relative to the number of observations) or the step below *xtol*.

    Returns
    -------
    BatchFit
    """
    with blas_threads():
        return _fit_pooled(pool(d, Zy, Xty, yty), theta0, True, max_iter, gtol, xtol)


def fit_pooled(P: Pooled, theta0: np.ndarray, *, reml: bool = True, max_iter: int = 60,
               gtol: float = 1e-9, xtol: float = 1e-11) -> BatchFit:
    """:func:`fit_batch` on studies already pooled by class (REML or ML)."""
    with blas_threads():
        return _fit_pooled(P, theta0, reml, max_iter, gtol, xtol)


def _fit_pooled(P, theta0, reml, max_iter, gtol, xtol) -> BatchFit:
    S = P.Om.shape[0]
    lower = P.lower
    diag = lower == 0.0
    theta = np.broadcast_to(np.asarray(theta0, dtype=float), (S, len(P.theta_pos))).copy()
    theta[:, diag] = np.maximum(theta[:, diag], 0.0)
    converged = np.zeros(S, dtype=bool)
    iters = np.zeros(S, dtype=np.int64)
    active = np.arange(S)
    core = _core(P, active, theta, reml)
    f = core["crit"]
    for it in range(max_iter):
        if active.size == 0:
            break
        _, g, Hp, _ = _profiled(core, P, reml)
        th = theta[active]
        th, core, g, Hp = _flip_columns(P, th, core, g, Hp, reml)
        scale = np.maximum(np.abs(th).max(axis=1, keepdims=True), 1.0)
        at0 = diag & (th <= 1e-7 * scale)
        # at θ_diag = 0 the criterion is even in that component (gradient 0): step off 0 where
        # the curvature there is negative (a saddle, which lme4's start-inside probe escapes;
        # reflected steps can approach it from inside without reaching 0)
        curv = Hp[:, range(Hp.shape[1]), range(Hp.shape[1])]
        n = core["n"]
        push = at0 & (np.abs(g) <= 1e-5 * n[:, None]) & (curv < 0)
        free = ~at0 | (g < 0) | push
        pg = np.max(np.abs(np.where(free, g, 0.0)), axis=1)
        conv = (pg < gtol * n) & ~push.any(axis=1)
        step, neg = _newton_step(Hp, g, free)
        kick = 1e-2 * scale
        step = np.where(push, np.maximum(step, kick), step)
        new_theta, new_core, accepted = _line_search(P, th, step, g, f, core, diag, reml, neg)
        tiny = accepted & (np.max(np.abs(new_theta - th), axis=1)
                           < xtol * np.maximum(1.0, np.max(np.abs(th), axis=1)))
        stalled = ~accepted & ~conv
        finished = conv | stalled | tiny
        theta[active] = np.where((conv | stalled)[:, None], th, new_theta)
        iters[active] = it + 1
        converged[active] = conv | tiny | (stalled & (pg < 1e-5 * n))
        keep = ~finished
        active = active[keep]
        core = _take(_merge(core, new_core, accepted & ~conv), keep)
        f = core["crit"]
    return _finish(P, theta, converged, iters, reml)


def _flip_columns(P, th, core, g, Hp, reml):
    """Where a diagonal θ sits at 0, its column of Λ can change sign without changing ΛΛᵀ; take
    the sign whose gradient lets the diagonal leave 0 (else the bound looks optimal when it is
    not: the deviance falls on the other side of the symmetry)."""
    diag_idx = {c: k for k, (r, c) in enumerate(P.theta_pos) if r == c}
    cand = (P.lower == 0.0) & (th <= 0.0) & (g > 0)
    if not cand.any():
        return th, core, g, Hp
    sign = np.ones_like(th)
    for k, (r, c) in enumerate(P.theta_pos):
        if r != c:
            sign[:, k] = np.where(cand[:, diag_idx[c]], -1.0, 1.0)
    rows = np.flatnonzero(np.any(sign < 0, axis=1))
    if rows.size == 0:
        return th, core, g, Hp
    th_f = th[rows] * sign[rows]
    core_f = _core(P, core["idx"][rows], th_f, reml)
    _, g_f, Hp_f, _ = _profiled(core_f, P, reml)
    better = np.any(cand[rows] & (g_f < 0), axis=1)
    if not better.any():
        return th, core, g, Hp
    hit = rows[better]
    th = th.copy()
    th[hit] = th_f[better]
    g, Hp = g.copy(), Hp.copy()
    g[hit], Hp[hit] = g_f[better], Hp_f[better]
    return th, _put(core, core_f, hit, better), g, Hp


def _reflect(P: Pooled, trial: np.ndarray) -> np.ndarray:
    """A trial with a diagonal θ below 0 mirrored to its column with the sign changed: ΛΛᵀ, and
    so the criterion, is unchanged by the sign of a column of Λ (a step past the bound lands
    inside it, not on it)."""
    for k, (r, c) in enumerate(P.theta_pos):
        if r != c:
            continue
        neg = trial[:, k] < 0
        if neg.any():
            for j, (_, c2) in enumerate(P.theta_pos):
                if c2 == c:
                    trial[neg, j] = -trial[neg, j]
    return trial


def _line_search(P, th, step, g, f, core, diag, reml, expand):
    """Backtracking (Armijo) along the projected step, every study halving its own step; only
    the studies still searching are evaluated. Studies flagged in *expand* (negative curvature)
    whose full step was accepted try longer steps."""
    new_theta, new_core = th.copy(), core
    accepted = np.zeros(th.shape[0], dtype=bool)
    slope = np.abs(np.einsum("si,si->s", g, step))
    todo = np.arange(th.shape[0])
    t = 1.0
    for _ in range(40):
        trial = _reflect(P, th[todo] + t * step[todo])
        tc = _core(P, core["idx"][todo], trial, reml)
        ok = tc["crit"] <= f[todo] - 1e-4 * t * slope[todo]
        if t == 1.0:  # near the optimum a full Newton step may "increase" f by rounding only
            ok |= tc["crit"] <= f[todo] + 1e-11 * np.abs(f[todo])
        if ok.any():
            hit = todo[ok]
            new_theta[hit] = trial[ok]
            new_core = _put(new_core, tc, hit, ok)
            accepted[hit] = True
            todo = todo[~ok]
        if todo.size == 0:
            break
        t /= 2
    # where the full step was taken along negative curvature (the flipped Newton step is timid
    # there), extrapolate: double the step while the criterion keeps falling
    grow = np.flatnonzero(accepted & expand)
    t = 1.0
    while grow.size and t < 256:
        t *= 2
        trial = _reflect(P, th[grow] + t * step[grow])
        tc = _core(P, core["idx"][grow], trial, reml)
        ok = tc["crit"] < new_core["crit"][grow]
        if not ok.any():
            break
        new_theta[grow[ok]] = trial[ok]
        new_core = _put(new_core, tc, grow[ok], ok)
        grow = grow[ok]
    return new_theta, new_core, accepted


def _put(core: dict, part: dict, hit: np.ndarray, ok: np.ndarray) -> dict:
    """core with rows *hit* replaced by the rows *ok* of *part* (a copy)."""
    out = {}
    for key, v in core.items():
        w = v.copy()
        w[hit] = part[key][ok]
        out[key] = w
    return out


def _merge(old: dict, new: dict, mask: np.ndarray) -> dict:
    out = {}
    for key, v in old.items():
        m = mask.reshape((-1,) + (1,) * (v.ndim - 1))
        out[key] = np.where(m, new[key], v)
    return out


def _take(core: dict, keep: np.ndarray) -> dict:
    return {k: v[keep] for k, v in core.items()}


def _finish(P, theta, converged, iters, reml) -> BatchFit:
    S = theta.shape[0]
    core = _core(P, np.arange(S), theta, reml)
    sigma = np.sqrt(np.maximum(core["pwrss"], 0.0) / core["nn"])
    bl = _blocks(P, core, sigma)
    H, _, Pm = _hessian(bl, P, reml)
    Phi = bl["Phi"]
    J = Phi[:, None] @ Pm @ Phi[:, None]
    return BatchFit(theta=theta, sigma=sigma, beta=core["beta0"] + P.b0, vcov=Phi,
                    objective=core["crit"], converged=converged & np.isfinite(core["crit"]),
                    iterations=iters, hessian=H, jacobian=J)


def satterthwaite_df(fit: BatchFit, row: np.ndarray) -> np.ndarray:
    """Satterthwaite df of ``row @ β̂`` per study: 2 (lᵀΦl)² / (gᵀAg), A = 2H⁻¹ on the positive
    eigen-space of H (as lmerTest), g_i = lᵀ ∂Φ/∂varpar_i l."""
    row = np.asarray(row, dtype=float)
    var = np.einsum("p,spr,r->s", row, fit.vcov, row)
    g = np.einsum("p,skpr,r->sk", row, fit.jacobian, row)
    w, V = np.linalg.eigh(fit.hessian)
    pos = w > 1e-8
    winv = np.where(pos, 1.0 / np.where(pos, w, 1.0), 0.0)
    Vg = np.einsum("ski,sk->si", V, g)
    denom = 2.0 * np.einsum("si,si,si->s", Vg, winv, Vg)
    with np.errstate(divide="ignore", invalid="ignore"):
        df = np.where(np.isfinite(denom) & (denom > 0), 2.0 * var ** 2 / denom, np.inf)
    return df


def core_of_pieces(P: Pooled, lam: np.ndarray, N: np.ndarray, XtKX: np.ndarray,
                   beta0: np.ndarray, pwrss: float) -> dict:
    """The pieces :func:`_blocks` reads of ``_core_one``'s result, from those already computed
    at θ by the caller (Λ, N = ΛA⁻¹Λᵀ per class, XᵀV⁻¹X, β̂ − b0, r²: the same formulas)."""
    K, q = P.C.shape[0], P.q
    return {"idx": np.arange(1), "lam": lam[None], "N": N.reshape(1, K, q, q),
            "XtKX": XtKX[None], "beta0": beta0[None], "pwrss": np.array([float(pwrss)])}


def varpar_derivatives(P: Pooled, varpar: np.ndarray, reml: bool = True, core: dict | None = None
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gradient (k+1,) and Hessian (k+1, k+1) of the deviance in varpar = (θ..., σ) (lmerTest's
    ``devfun_vp``, profiled over β) and the Jacobian of Var(β̂), (k+1, p, p), of one pooled study,
    in closed form. *core*: the pieces at θ when already at hand (:func:`core_of_pieces`)."""
    varpar = np.asarray(varpar, dtype=float)
    with blas_threads():
        if core is None:
            core = _core_one(P, varpar[None, :-1], reml)
        if P.Om.shape[0] == 1 and varpar[-1] > 0:  # one study: σ's row in closed form
            return varpar_one.derivatives(P, core, float(varpar[-1]), reml)
        bl = _blocks(P, core, varpar[-1:])
        H, g, Pm = _hessian(bl, P, reml)
        Phi = bl["Phi"][0]
        return g[0], H[0], Phi @ Pm[0] @ Phi


def deviance_varpar(P: Pooled, varpar: np.ndarray, reml: bool = True) -> float:
    """The deviance of one pooled study at varpar = (θ..., σ), not profiled in σ (lmerTest's
    ``devfun_vp``), from the centred sums (less rounding than from yᵀy)."""
    varpar = np.asarray(varpar, dtype=float)
    with np.errstate(all="ignore"):
        core = _core_one(P, varpar[None, :-1], reml)
    if not np.isfinite(core["crit"][0]):
        return np.inf
    s2 = float(varpar[-1]) ** 2
    n = float(core["n"][0])
    dev = float(core["logdet"][0]) + float(core["pwrss"][0]) / s2 + n * np.log(2.0 * np.pi * s2)
    if reml:
        dev += float(core["ldrx"][0]) - P.p * np.log(2.0 * np.pi * s2)
    return dev
