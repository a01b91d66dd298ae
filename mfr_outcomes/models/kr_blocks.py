"""Kenward-Roger from per-group blocks: pbkrtest's adjusted Var(β̂) without n × n matrices.

pbkrtest (``vcovAdj16_internal``) writes Σ = Σ_i γ_i G_i with one G_i per element of each random
covariance matrix (G_i = Z E_i Zᵀ, E_i the symmetric unit matrix of that element) and the
residual's G = I, and needs, for every pair of parameters,

    P_i = −XᵀΣ⁻¹G_iΣ⁻¹X,  Q_ij = XᵀΣ⁻¹G_iΣ⁻¹G_jΣ⁻¹X,  IE2_ij = tr(Σ⁻¹G_iΣ⁻¹G_j) − 2tr(ΦQ_ij)
    + tr(ΦP_iΦP_j),  W = 2 IE2⁻¹,  U = Σ_ij W_ij (Q_ij − P_iΦP_j),  Φ_A = Φ + 2ΦUΦ.

With one grouping factor Σ is block diagonal by group. Writing the residual's G as
I = Σ/σ² − Z(ΛΛᵀ)Zᵀ puts every G_i in the form ``Z E Zᵀ + c Σ`` that
:mod:`mfr_outcomes.models.block_inference` reduces to sums over groups of q×q and q×p products
(ZᵢᵀΣᵢ⁻¹Zᵢ, ZᵢᵀΣᵢ⁻¹Xᵢ): the cost is O(groups · q² p²) and the memory O(groups · q p), so it runs
at 100,000 readings where the dense version (limited to 4,000) cannot.
"""
from __future__ import annotations

import numpy as np

from mfr_outcomes.models import block_inference
from mfr_outcomes.models.threads import blas_threads

__all__ = ["kenward_roger_blocks"]


def _sym_unit(q: int, r: int, c: int) -> np.ndarray:
    e = np.zeros((q, q))
    e[r, c] = 1.0
    e[c, r] = 1.0
    return e



class KenwardRogerData:
    """Kenward & Roger (1997) as pbkrtest computes it (``vcovAdj``, ``.KR_adjust``): the adjusted
    covariance Φ_A of β̂ and what the df of a contrast need (P_i, W)."""

    def __init__(self, PhiA: np.ndarray, Phi: np.ndarray, P: list[np.ndarray], W: np.ndarray):
        self.PhiA, self.Phi, self.P, self.W = PhiA, Phi, P, W

    def df(self, L: np.ndarray) -> float:
        """df of the t test of one contrast row, as pbkrtest's ``get_Lb_ddf`` (which lmerTest
        uses): Θ = ll'/(l'Φl) with the unadjusted Φ."""
        row = np.asarray(L, dtype=float).ravel()
        return self.adjust(row[None, :])[0]

    def adjust(self, L: np.ndarray) -> tuple[float, float]:
        """(denominator df, F scaling) as pbkrtest's ``.KR_adjust`` (KRmodcomp); Θ uses the
        unadjusted Φ, as pbkrtest does."""
        L = np.atleast_2d(np.asarray(L, dtype=float))
        q = np.linalg.matrix_rank(L)
        Theta = L.T @ np.linalg.solve(L @ self.Phi @ L.T, L)
        TP = Theta @ self.Phi
        U = [TP @ Pi @ self.Phi for Pi in self.P]
        A1 = A2 = 0.0
        k = len(self.P)
        for i in range(k):
            for j in range(i, k):
                e = 1.0 if i == j else 2.0
                A1 += e * self.W[i, j] * np.trace(U[i]) * np.trace(U[j])
                A2 += e * self.W[i, j] * np.sum(U[i] * U[j].T)
        B = (A1 + 6 * A2) / (2 * q)
        g = ((q + 1) * A1 - (q + 4) * A2) / ((q + 2) * A2)
        den = 3 * q + 2 * (1 - g)
        c1, c2, c3 = g / den, (q - g) / den, (q + 2 - g) / den
        V0 = 1 + c1 * B
        V0 = 0.0 if abs(V0) < 1e-10 else V0
        V1, V2 = 1 - c2 * B, 1 - c3 * B
        ratio = (1 - A2 / q) / V1 if V1 != 0 else 0.0
        rho = ratio ** 2 * V0 / V2 / q
        df2 = float(4 + (q + 2) / (q * rho - 1))
        scaling = 1.0 if abs(df2 - 2) < 1e-2 else df2 * (1 - A2 / q) / (df2 - 2)
        return df2, float(scaling)


def kenward_roger_blocks(stats, lay, theta: np.ndarray, sigma: float) -> KenwardRogerData:
    """pbkrtest's Φ_A, Φ, P_i and W from the fast engine's statistics (one grouping factor).

    Parameters
    ----------
    stats, lay
        The fast engine's :class:`~mfr_outcomes.models.fast.Stats` and
        :class:`~mfr_outcomes.models.fast.Layout` (``EngineResult.internals.stats``,
        ``["layout"]``).
    theta, sigma
        The REML estimates.

    Returns
    -------
    KenwardRogerData
        As :func:`mfr_outcomes.models.dfmethods.kenward_roger_data` returns it (dense).
    """
    if not block_inference.supports(lay):
        raise ValueError("Kenward-Roger from blocks needs one grouping factor; the layout has a "
                         "nesting level")
    with blas_threads():
        return _compute(stats, lay, np.asarray(theta, dtype=float), float(sigma))


def _compute(stats, lay, theta: np.ndarray, sigma: float) -> KenwardRogerData:
    gb = block_inference.group_blocks(stats, lay, np.append(theta, sigma))
    q = lay.q_inner
    derivs = [(_sym_unit(q, r, c), 0.0) for (_, r, c) in lay.theta_pos]
    derivs.append((-(gb.lam @ gb.lam.T), 1.0 / sigma ** 2))  # the residual's G = I
    Pk, pairs = block_inference.pair_terms(gb, derivs)
    Phi = gb.Phi
    P = [-(Pi + Pi.T) / 2 for Pi in Pk]
    k = len(derivs)
    IE2 = np.zeros((k, k))
    for i in range(k):
        PhiPi = Phi @ P[i]
        for j in range(i, k):
            pr = pairs[i, j]
            IE2[i, j] = IE2[j, i] = (pr.trKK - 2 * np.sum(Phi * pr.Q)
                                     + np.sum(PhiPi * (P[j] @ Phi)))
    ev = np.linalg.eigvalsh(IE2)
    W = 2 * (np.linalg.inv(IE2) if np.min(np.abs(ev)) > 1e-10 else np.linalg.pinv(IE2))
    U = np.zeros_like(Phi)
    for i in range(k - 1):
        for j in range(i + 1, k):
            U += W[i, j] * (pairs[i, j].Q - P[i] @ Phi @ P[j])
    U = U + U.T
    for i in range(k):
        U += W[i, i] * (pairs[i, i].Q - P[i] @ Phi @ P[i])
    PhiA = Phi + 2 * Phi @ U @ Phi
    return KenwardRogerData(PhiA, Phi, P, W)
