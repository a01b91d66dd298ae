"""A start for the pooled optimiser from the classes' moments (one grouping factor).

lme4 starts at Λ = I. With the groups pooled by class of ZᵢᵀZᵢ (``fast._Classes``), a moment
estimate of Λ costs a few small products and puts the start close enough to the optimum that
the quasi-Newton iteration needs fewer steps (its step is capped at a quarter of θ's scale, so
from Λ = I a variance ratio far from 1 takes several capped steps to reach).

With u_i = Zᵢᵀ(y − X b0) (b0 least squares), E[u_i u_iᵀ] ≈ Cᵢ D Cᵢ + σ² Cᵢ (Cᵢ = ZᵢᵀZᵢ,
D = Var(b)), ignoring what b0's estimation takes out. Per class the sum Uₖ of u_i u_iᵀ over its
groups gives Σₖ Cₖ⁻¹UₖCₖ⁻¹ ≈ G D + σ² Σₖ countₖ Cₖ⁻¹; σ² comes from the within-group residual
sum of squares |y − X b0|² − Σₖ tr(Cₖ⁻¹Uₖ) on n − G q − p degrees of freedom. Λ is the Cholesky
factor of D/σ² (each block's own), its eigenvalues kept away from 0. The optimiser uses this
start only where its criterion is below that of lme4's start (``fast.FastEngine``), so a poor
moment estimate costs one evaluation, never a different answer.
"""
from __future__ import annotations

import numpy as np

__all__ = ["moment_theta"]


def moment_theta(Ck: np.ndarray, count: np.ndarray, U: np.ndarray, yty0: float, n: int, p: int,
                 blocks: list[tuple[int, int]], theta_pos: list[tuple[int, int]],
                 floor: float = 1e-2) -> np.ndarray | None:
    """θ (in *theta_pos* order: (row, col) of Λ) from the classes' moments, or None when they do
    not identify it (a singular ZᵢᵀZᵢ in every class, too few within-group degrees of freedom,
    a non-positive σ²).

    *Ck* (K, q, q) ZᵢᵀZᵢ per class, *count* (K,) groups per class, *U* (K, q, q) Σ u_i u_iᵀ per
    class, *yty0* |y − X b0|², *blocks* (first column, number of columns) of each block of Λ;
    *floor* is the least eigenvalue of D/σ² kept, relative to its largest and absolute.
    """
    q = Ck.shape[1]
    if q == 1:
        c = Ck[:, 0, 0]
        ok = c > 0
        Cinv = np.zeros_like(Ck)
        Cinv[ok, 0, 0] = 1.0 / c[ok]
        rank = ok.astype(float)
    else:
        det = np.linalg.det(Ck)
        scale = np.einsum("kii->k", Ck) ** q
        ok = det > 1e-10 * scale
        Cinv = np.zeros_like(Ck)
        if ok.any():
            Cinv[ok] = np.linalg.inv(Ck[ok])
        rank = ok * float(q)
    if not ok.any():
        return None
    g = float(count[ok].sum())
    between = float(np.einsum("kab,kba->", Cinv, U))
    dfw = n - float(count @ rank) - p
    if dfw < max(10.0, 0.1 * n):
        return None
    sigma2 = (yty0 - between) / dfw
    if not sigma2 > 0:
        return None
    M = np.einsum("kab,kbc,kcd->ad", Cinv, U, Cinv)
    D = (M - sigma2 * np.einsum("k,kab->ab", count, Cinv)) / (g * sigma2)
    lam = np.zeros((q, q))
    for off, qb in blocks:
        sub = D[off:off + qb, off:off + qb]
        w, V = np.linalg.eigh(0.5 * (sub + sub.T))
        if not np.all(np.isfinite(w)):
            return None
        w = np.maximum(w, max(floor * float(w.max()), floor))
        lam[off:off + qb, off:off + qb] = np.linalg.cholesky((V * w) @ V.T)
    return np.array([lam[r, c] for (r, c) in theta_pos])
