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

from dataclasses import dataclass

import numpy as np
from scipy import sparse

from mfr_outcomes.models.threads import blas_threads

__all__ = ["BatchDesign", "BatchFit", "design_arrays", "response_sums", "fit_batch",
           "satterthwaite_df"]


@dataclass
class BatchDesign:
    """The design side of a batch: (D, G, q, q) ZᵢᵀZᵢ, (D, G, q, p) ZᵢᵀXᵢ, (D, p, p) XᵀX with D = 1
    (one design for every study) or D = S (one per study); θ's positions in Λ."""

    C: np.ndarray
    ZX: np.ndarray
    XtX: np.ndarray
    n: int | np.ndarray  # observations: one number, or (D,) one a design
    theta_pos: list[tuple[int, int]]  # (row, col) of each θ in the q×q Λ
    q: int

    @property
    def p(self) -> int:
        return int(self.XtX.shape[-1])

    @property
    def lower(self) -> np.ndarray:
        return np.array([0.0 if r == c else -np.inf for r, c in self.theta_pos])


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
# The per-group blocks of a batch at (θ_s, σ_s)
# ----------------------------------------------------------------------------------------------
def _lambdas(theta: np.ndarray, d: BatchDesign) -> np.ndarray:
    lam = np.zeros((theta.shape[0], d.q, d.q))
    for k, (r, c) in enumerate(d.theta_pos):
        lam[:, r, c] = theta[:, k]
    return lam


def _at(d: BatchDesign, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if d.C.shape[0] == 1:
        return d.C, d.ZX, d.XtX
    return d.C[idx], d.ZX[idx], d.XtX[idx]


def _nobs(d: BatchDesign, idx: np.ndarray) -> np.ndarray:
    n = np.asarray(d.n, dtype=float)
    return np.full(idx.size, float(n)) if n.ndim == 0 else n[idx]


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


def _gq_dot(U: np.ndarray, W: np.ndarray) -> np.ndarray:
    """Σ_g U_gᵀ W_g for stacks (S|1, G, q, p) and (S, G, q, r): one batched matrix product."""
    Uf = U.reshape(U.shape[0], -1, U.shape[-1])
    Wf = W.reshape(W.shape[0], -1, W.shape[-1])
    return Uf.transpose(0, 2, 1) @ Wf


def _outer_sum(B: np.ndarray) -> np.ndarray:
    """Σ_g B_g[a] B_g[b]ᵀ as (S, q, q, p, p) from B (S, G, q, p)."""
    S, G, q, p = B.shape
    Bf = B.reshape(S, G, q * p)
    return (Bf.transpose(0, 2, 1) @ Bf).reshape(S, q, p, q, p).transpose(0, 1, 3, 2, 4)


def _core(d: BatchDesign, idx: np.ndarray, theta: np.ndarray, Zy, Xty, yty) -> dict:
    """Profiled pieces at θ (σ = 1 scale): β̂, r², criterion, and the unit-σ blocks."""
    C, ZX, XtX = _at(d, idx)
    lam = _lambdas(theta, d)[:, None]  # (S, 1, q, q)
    lamT = lam.transpose(0, 1, 3, 2)
    A = lamT @ C @ lam
    A[..., range(d.q), range(d.q)] += 1.0
    Ainv, logdetA = _inv_logdet(A)
    N = lam @ Ainv @ lamT
    CN = C @ N
    NZX = N @ ZX
    XtKX = XtX - _gq_dot(ZX, NZX)
    XtKy = Xty - np.einsum("sgap,sga->sp", NZX, Zy)
    beta = np.linalg.solve(XtKX, XtKy[..., None])[..., 0]
    Zr = Zy - np.einsum("sgap,sp->sga", np.broadcast_to(ZX, NZX.shape), beta)
    XtXb = np.einsum("spr,sr->sp", np.broadcast_to(XtX, XtKX.shape), beta)
    rr = yty - 2.0 * np.einsum("sp,sp->s", beta, Xty) + np.einsum("sp,sp->s", beta, XtXb)
    pwrss = rr - np.einsum("sga,sgab,sgb->s", Zr, N, Zr)
    _, ldrx = np.linalg.slogdet(XtKX)
    n = _nobs(d, idx)
    nmp = n - d.p
    with np.errstate(invalid="ignore", divide="ignore"):
        crit = logdetA.sum(axis=1) + ldrx + nmp * (1.0 + np.log(2.0 * np.pi * pwrss / nmp))
    return {"C": C, "ZX": ZX, "lam": lam[:, 0], "CN": CN, "Zr": Zr, "XtKX": XtKX,
            "beta": beta, "pwrss": pwrss, "crit": np.where(pwrss > 0, crit, np.inf), "n": n}


def _blocks(core: dict, sigma: np.ndarray) -> dict:
    """M_g, B_g, s_g (σ included), Φ, Φ⁻¹ and the sums the derivatives need."""
    C, ZX, CN, Zr = core["C"], core["ZX"], core["CN"], core["Zr"]
    s2 = (sigma ** 2)[:, None, None, None]
    M = (C - CN @ C) / s2
    B = (ZX - CN @ ZX) / s2
    s = (Zr - np.einsum("sgab,sgb->sga", CN, Zr)) / s2[..., 0]
    Phi_inv = core["XtKX"] / s2[:, 0]
    return {"M": M, "B": B, "s": s, "Phi_inv": Phi_inv, "Phi": np.linalg.inv(Phi_inv),
            "rKr": core["pwrss"] / sigma ** 2, "Msum": M.sum(axis=1),
            "Ss": np.einsum("sga,sgb->sab", s, s),
            "BB": _outer_sum(B), "sigma": sigma, "lam": core["lam"]}


def _bb(bl: dict, E: np.ndarray) -> np.ndarray:
    S, q, _, p, _ = bl["BB"].shape
    return (E.reshape(S, 1, q * q) @ bl["BB"].reshape(S, q * q, p * p)).reshape(S, p, p)


def _derivs(bl: dict, d: BatchDesign) -> tuple[list, dict]:
    """First and second derivatives of V in varpar as (E (S, q, q), c (S,))."""
    S, q = bl["lam"].shape[0], d.q
    lam, sig = bl["lam"], bl["sigma"]
    s2 = (sig ** 2)[:, None, None]
    units = []
    for r, c in d.theta_pos:
        u = np.zeros((q, q))
        u[r, c] = 1.0
        units.append(u)
    zero_E, zero_c = np.zeros((S, q, q)), np.zeros(S)
    first = [(s2 * (u @ lam.transpose(0, 2, 1) + lam @ u.T), zero_c) for u in units]
    first.append((zero_E, 2.0 / sig))
    k = len(units)
    second = {}
    for i in range(k):
        for j in range(i, k):
            second[i, j] = (s2 * (units[i] @ units[j].T + units[j] @ units[i].T), zero_c)
        second[i, k] = ((2.0 / sig)[:, None, None] * first[i][0], zero_c)
    second[k, k] = (zero_E, 2.0 / sig ** 2)
    return first, second


def _hessian(bl: dict, d: BatchDesign, n: int, p: int) -> tuple[np.ndarray, np.ndarray, list]:
    """REML Hessian (S, k+1, k+1) and gradient (S, k+1) of the deviance in varpar."""
    first, second = _derivs(bl, d)
    M, B, Phi, Phi_inv = bl["M"], bl["B"], bl["Phi"], bl["Phi_inv"]
    k1 = len(first)
    EB = [np.einsum("sab,sgbp->sgap", E, B) for E, _ in first]
    ME = [M @ E[:, None] for E, _ in first]
    MEB = [M @ eb for eb in EB]
    P = [_bb(bl, E) + c[:, None, None] * Phi_inv for E, c in first]
    Es = [np.einsum("sab,sgb->sga", E, bl["s"]) for E, _ in first]
    MEs = [np.einsum("sgab,sgb->sga", M, es) for es in Es]
    sEs = [np.einsum("sab,sab->s", bl["Ss"], E) for E, _ in first]
    u = [np.einsum("sgap,sga->sp", B, es) for es in Es]
    trME = [np.einsum("sab,sba->s", bl["Msum"], E) for E, _ in first]
    PhiP = [Phi @ Pi for Pi in P]
    S = M.shape[0]
    H = np.empty((S, k1, k1))
    grad = np.empty((S, k1))
    for i, (E, c) in enumerate(first):
        tr = trME[i] + c * n - np.einsum("spr,spr->s", Phi, _bb(bl, E)) - c * p
        grad[:, i] = tr - (sEs[i] + c * bl["rKr"])
    for i in range(k1):
        ci = first[i][1]
        for j in range(i, k1):
            cj = first[j][1]
            Eij, cij = second[i, j]
            trKK = (np.einsum("sgab,sgba->s", ME[i], ME[j]) + cj * trME[i] + ci * trME[j]
                    + ci * cj * n)
            Q = (_gq_dot(EB[i], MEB[j]) + cj[:, None, None] * _bb(bl, first[i][0])
                 + ci[:, None, None] * _bb(bl, first[j][0]) + (ci * cj)[:, None, None] * Phi_inv)
            tr1 = (np.einsum("sab,sba->s", bl["Msum"], Eij) + cij * n
                   - np.einsum("spr,spr->s", Phi, _bb(bl, Eij)) - cij * p)
            tr2 = (trKK - 2.0 * np.einsum("spr,spr->s", Phi, Q)
                   + np.einsum("spr,srp->s", PhiP[i], PhiP[j]))
            q2 = (np.einsum("sga,sga->s", Es[i], MEs[j]) + cj * sEs[i] + ci * sEs[j]
                  + ci * cj * bl["rKr"] - np.einsum("sp,spr,sr->s", u[i], Phi, u[j]))
            q1 = np.einsum("sab,sab->s", bl["Ss"], Eij) + cij * bl["rKr"]
            H[:, i, j] = H[:, j, i] = tr1 - tr2 + 2.0 * q2 - q1
    return H, grad, P


# ----------------------------------------------------------------------------------------------
# Projected Newton on the σ-profiled criterion, vectorised across studies
# ----------------------------------------------------------------------------------------------
def _newton_step(H: np.ndarray, g: np.ndarray, free: np.ndarray) -> np.ndarray:
    """−H⁻¹g on the free components, H made positive definite by flipping/clipping eigenvalues."""
    S, k = g.shape
    Hf = np.where(free[:, :, None] & free[:, None, :], H, 0.0)
    Hf[:, range(k), range(k)] = np.where(free, Hf[:, range(k), range(k)], 1.0)
    w, V = np.linalg.eigh(Hf)
    scale = np.maximum(np.abs(w).max(axis=1, keepdims=True), 1e-12)
    w = np.maximum(np.abs(w), 1e-8 * scale)
    gf = np.where(free, g, 0.0)
    return -np.einsum("sij,sj->si", V / w[:, None, :], np.einsum("sji,sj->si", V, gf))


def _profiled(core: dict, d: BatchDesign) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    """σ̂(θ), gradient and Hessian of the σ-profiled criterion in θ, and the varpar blocks."""
    sigma = np.sqrt(core["pwrss"] / (core["n"] - d.p))
    bl = _blocks(core, sigma)
    H, g, _ = _hessian(bl, d, core["n"], d.p)
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
        return _fit_batch(d, Zy, Xty, yty, theta0, max_iter, gtol, xtol)


def _fit_batch(d, Zy, Xty, yty, theta0, max_iter, gtol, xtol) -> BatchFit:
    S = Zy.shape[0]
    lower = d.lower
    diag = lower == 0.0
    theta = np.broadcast_to(np.asarray(theta0, dtype=float), (S, len(d.theta_pos))).copy()
    theta[:, diag] = np.maximum(theta[:, diag], 0.0)
    converged = np.zeros(S, dtype=bool)
    iters = np.zeros(S, dtype=np.int64)
    active = np.arange(S)
    core = _core(d, active, theta, Zy, Xty, yty)
    f = core["crit"]
    for it in range(max_iter):
        if active.size == 0:
            break
        _, g, Hp, _ = _profiled(core, d)
        th = theta[active]
        th, core, g, Hp = _flip_columns(d, active, th, core, g, Hp, Zy, Xty, yty)
        at0 = diag & (th <= 0.0)
        # at θ_diag = 0 the criterion is even in that component (gradient 0): step off 0 where
        # the curvature there is negative (a saddle, which lme4's start-inside probe escapes)
        curv = Hp[:, range(Hp.shape[1]), range(Hp.shape[1])]
        n = core["n"]
        push = at0 & (np.abs(g) <= 1e-10 * n[:, None]) & (curv < 0)
        free = ~at0 | (g < 0) | push
        pg = np.max(np.abs(np.where(free, g, 0.0)), axis=1)
        conv = (pg < gtol * n) & ~push.any(axis=1)
        step = _newton_step(Hp, g, free)
        kick = 1e-2 * np.maximum(np.abs(th).max(axis=1, keepdims=True), 1.0)
        step = np.where(push, np.maximum(step, kick), step)
        new_theta, new_core, accepted = _line_search(d, active, th, step, g, f, core, Zy, Xty,
                                                     yty, diag)
        tiny = accepted & (np.max(np.abs(new_theta - th), axis=1)
                           < xtol * np.maximum(1.0, np.max(np.abs(th), axis=1)))
        stalled = ~accepted & ~conv
        finished = conv | stalled | tiny
        theta[active] = np.where((conv | stalled)[:, None], th, new_theta)
        iters[active] = it + 1
        converged[active] = conv | tiny | (stalled & (pg < 1e-5 * n))
        keep = ~finished
        active = active[keep]
        core = _merge_keep(_merge(core, new_core, accepted & ~conv), keep)
        f = core["crit"]
    return _finish(d, theta, converged, iters, Zy, Xty, yty)


def _flip_columns(d, active, th, core, g, Hp, Zy, Xty, yty):
    """Where a diagonal θ sits at 0, its column of Λ can change sign without changing ΛΛᵀ; take
    the sign whose gradient lets the diagonal leave 0 (else the bound looks optimal when it is
    not: the deviance falls on the other side of the symmetry)."""
    diag_idx = {c: k for k, (r, c) in enumerate(d.theta_pos) if r == c}
    lower = d.lower
    cand = (lower == 0.0) & (th <= 0.0) & (g > 0)
    if not cand.any():
        return th, core, g, Hp
    sign = np.ones_like(th)
    for k, (r, c) in enumerate(d.theta_pos):
        if r != c:
            sign[:, k] = np.where(cand[:, diag_idx[c]], -1.0, 1.0)
    rows = np.flatnonzero(np.any(sign < 0, axis=1))
    if rows.size == 0:
        return th, core, g, Hp
    th_f = th[rows] * sign[rows]
    core_f = _core(d, active[rows], th_f, Zy[active[rows]], Xty[active[rows]],
                   yty[active[rows]])
    _, g_f, Hp_f, _ = _profiled(core_f, d)
    better = np.any(cand[rows] & (g_f < 0), axis=1)
    if not better.any():
        return th, core, g, Hp
    take = np.zeros(th.shape[0], dtype=bool)
    take[rows[better]] = True
    th = th.copy()
    th[rows[better]] = th_f[better]
    g, Hp = g.copy(), Hp.copy()
    g[rows[better]], Hp[rows[better]] = g_f[better], Hp_f[better]
    full = {k: v for k, v in core_f.items()}
    expanded = {}
    for key, v in core.items():
        if key in ("C", "ZX") and v.shape[0] == 1:
            expanded[key] = v
            continue
        w = v.copy()
        w[rows[better]] = full[key][better]
        expanded[key] = w
    return th, expanded, g, Hp


def _line_search(d, active, th, step, g, f, core, Zy, Xty, yty, diag):
    """Backtracking (Armijo) along the projected step, every study halving its own step; only
    the studies still searching are evaluated."""
    new_theta, new_core = th.copy(), core
    accepted = np.zeros(active.size, dtype=bool)
    slope = np.abs(np.einsum("si,si->s", g, step))
    todo = np.arange(active.size)
    t = 1.0
    for _ in range(40):
        trial = th[todo] + t * step[todo]
        trial[:, diag] = np.maximum(trial[:, diag], 0.0)
        rows = active[todo]
        tc = _core(d, rows, trial, Zy[rows], Xty[rows], yty[rows])
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
    return new_theta, new_core, accepted


def _put(core: dict, part: dict, hit: np.ndarray, ok: np.ndarray) -> dict:
    """core with rows *hit* replaced by the rows *ok* of *part* (a copy)."""
    out = {}
    for key, v in core.items():
        if key in ("C", "ZX") and v.shape[0] == 1:
            out[key] = v
            continue
        w = v.copy()
        w[hit] = part[key][ok]
        out[key] = w
    return out


def _merge(old: dict, new: dict, mask: np.ndarray) -> dict:
    out = {}
    for key, v in old.items():
        if key in ("C", "ZX") and v.shape[0] == 1:
            out[key] = v
            continue
        m = mask.reshape((-1,) + (1,) * (v.ndim - 1))
        out[key] = np.where(m, new[key], v)
    return out


def _merge_keep(core: dict, keep: np.ndarray) -> dict:
    return {k: (v if k in ("C", "ZX") and v.shape[0] == 1 else v[keep]) for k, v in core.items()}


def _finish(d, theta, converged, iters, Zy, Xty, yty) -> BatchFit:
    S = theta.shape[0]
    core = _core(d, np.arange(S), theta, Zy, Xty, yty)
    sigma = np.sqrt(np.maximum(core["pwrss"], 0.0) / (core["n"] - d.p))
    bl = _blocks(core, sigma)
    H, _, P = _hessian(bl, d, core["n"], d.p)
    Phi = bl["Phi"]
    J = np.stack([Phi @ Pi @ Phi for Pi in P], axis=1)
    return BatchFit(theta=theta, sigma=sigma, beta=core["beta"], vcov=Phi,
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
