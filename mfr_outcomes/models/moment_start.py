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

import math

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
    K, q = Ck.shape[0], Ck.shape[1]
    Cinv, ok = _inverses(Ck)
    g = float(count @ ok)
    if not g > 0:
        return None
    between = float(np.vdot(Cinv, U))  # Σₖ tr(Cₖ⁻¹Uₖ) (both symmetric)
    dfw = n - g * q - p
    if dfw < max(10.0, 0.1 * n):
        return None
    sigma2 = (yty0 - between) / dfw
    if not sigma2 > 0:
        return None
    # Σₖ Cₖ⁻¹UₖCₖ⁻¹ − σ² Σₖ countₖ Cₖ⁻¹, over G σ²
    D = (Cinv @ U @ Cinv).sum(axis=0)
    D -= sigma2 * (count @ Cinv.reshape(K, q * q)).reshape(q, q)
    D /= g * sigma2
    if len(blocks) == 1 and blocks[0] == (0, q):
        lam = _chol_floored(D, floor)
    else:
        lam = np.zeros((q, q))
        for off, qb in blocks:
            lam[off:off + qb, off:off + qb] = _chol_floored(D[off:off + qb, off:off + qb], floor)
    if not math.isfinite(float(lam.sum())):
        return None
    return lam[tuple(zip(*theta_pos))] if theta_pos else np.zeros(0)


_ADJ_SIGN = np.array([[1.0, -1.0], [-1.0, 1.0]])


def _inverses(Ck: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cₖ⁻¹ (0 where Cₖ is singular) and which Cₖ are not; closed forms for q ≤ 2 (a LAPACK call
    costs more than the algebra on a dozen 2×2 matrices)."""
    q = Ck.shape[1]
    if q == 1:
        c = Ck[:, 0, 0]
        ok = c > 0
        return np.where(ok, 1.0 / np.where(ok, c, 1.0), 0.0)[:, None, None], ok
    if q == 2:
        a, b, c = Ck[:, 0, 0], Ck[:, 0, 1], Ck[:, 1, 1]
        det = a * c - b * b
        ok = det > 1e-10 * (a + c) ** 2
        # adjugate over determinant; a singular Cₖ gets 0 (its determinant taken as infinite)
        return Ck[:, ::-1, ::-1] * _ADJ_SIGN / np.where(ok, det, np.inf)[:, None, None], ok
    det = np.linalg.det(Ck)
    ok = det > 1e-10 * np.einsum("kii->k", Ck) ** q
    inv = np.zeros_like(Ck)
    if ok.any():
        inv[ok] = np.linalg.inv(Ck[ok])
    return inv, ok


def _chol_floored(D: np.ndarray, floor: float) -> np.ndarray:
    """The Cholesky factor of the symmetric *D* with its eigenvalues raised to at least *floor*
    times the largest (and to *floor*): by hand for one or two columns (a LAPACK call costs
    more than the algebra), else by eigendecomposition."""
    qb = D.shape[0]
    if qb == 1:
        return np.sqrt(np.maximum(D, floor))
    if qb == 2:
        a, b, c = float(D[0, 0]), 0.5 * float(D[0, 1] + D[1, 0]), float(D[1, 1])
        if not (math.isfinite(a) and math.isfinite(b) and math.isfinite(c)):
            return np.full_like(D, np.nan)
        mid, half = 0.5 * (a + c), math.hypot(0.5 * (a - c), b)
        hi, lo = mid + half, mid - half
        least = max(floor * hi, floor)
        if lo < least:  # raise the eigenvalues: D = hi v vᵀ + lo w wᵀ, v at angle φ
            phi = 0.5 * math.atan2(2.0 * b, a - c)
            cs, sn = math.cos(phi), math.sin(phi)
            hi = max(hi, least)
            lo = least
            a, c = hi * cs * cs + lo * sn * sn, hi * sn * sn + lo * cs * cs
            b = (hi - lo) * sn * cs
        l11 = math.sqrt(a)
        l21 = b / l11
        return np.array([[l11, 0.0], [l21, math.sqrt(max(c - l21 * l21, 0.0))]])
    w, V = np.linalg.eigh(0.5 * (D + D.T))
    if not np.all(np.isfinite(w)):
        return np.full_like(D, np.nan)
    w = np.maximum(w, max(floor * float(w.max()), floor))
    return np.linalg.cholesky((V * w) @ V.T)
