"""Closed-form second-order inference from per-group blocks (one grouping factor, any q).

With one grouping factor V = σ²(I + ZΛΛᵀZᵀ) is block diagonal by group, and every trace or
quadratic form that the Hessian of the deviance in varpar = (θ..., σ), the Jacobian of Var(β̂)
in varpar and Kenward-Roger's matrices need reduces to sums over groups of small products of

    M_g = Z_gᵀV_g⁻¹Z_g (q×q),  B_g = Z_gᵀV_g⁻¹X_g (q×p),  s_g = Z_gᵀV_g⁻¹r_g (q),

with V_g⁻¹ = σ⁻²(I − Z_g N Z_gᵀ), N = Λ(I + ΛᵀZ_gᵀZ_gΛ)⁻¹Λᵀ (Woodbury), and r = y − Xβ̂(θ). They
come from the fast engine's sufficient statistics (ZᵢᵀZᵢ, ZᵢᵀXᵢ, Zᵢᵀyᵢ): nothing n × n is formed.

Every derivative of V used here has the form ``Z E Zᵀ + c V`` (E q×q, c a number): for θ_k at
Λ[r, c], ∂V = σ²Z(E_kΛᵀ + ΛE_kᵀ)Zᵀ; ∂V/∂σ = (2/σ)V; the residual covariance parameter of
pbkrtest, I = V/σ² − ZΛΛᵀZᵀ. With K = V⁻¹, KVK = K, and P = K − KXΦXᵀK (Φ = (XᵀKX)⁻¹):

    tr(K V_i) = Σ tr(M E_i) + c_i n,  XᵀK V_i K X = Σ BᵀE_iB + c_i Φ⁻¹,
    XᵀK V_i K V_j K X = Σ BᵀE_iME_jB + c_j ΣBᵀE_iB + c_i ΣBᵀE_jB + c_ic_j Φ⁻¹,
    yᵀP V_i P V_j P y = Σ sᵀE_iME_js + c_jΣsᵀE_is + c_iΣsᵀE_js + c_ic_j rᵀKr − u_iᵀΦu_j,

with u_i = Σ BᵀE_is (XᵀKr = 0 at β̂). The Hessian of the REML deviance (log|V| + log|XᵀKX| +
yᵀPy) is H_ij = tr(P V_ij) − tr(P V_i P V_j) + 2 yᵀPV_iPV_jPy − yᵀPV_ijPy (ML: K for P in the
traces), and ∂Φ/∂φ_i = Φ (XᵀKV_iKX) Φ.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["GroupBlocks", "group_blocks", "pair_terms",
           "hessian_varpar", "jacobian_vcov_varpar", "supports"]


@dataclass
class GroupBlocks:
    """The per-group quantities at one varpar (groups on the first axis)."""

    M: np.ndarray  # (G, q, q) ZᵀV⁻¹Z
    B: np.ndarray  # (G, q, p) ZᵀV⁻¹X
    s: np.ndarray  # (G, q) ZᵀV⁻¹r
    Phi: np.ndarray  # (p, p) (XᵀV⁻¹X)⁻¹
    Phi_inv: np.ndarray  # (p, p)
    rKr: float  # rᵀV⁻¹r
    n: int
    p: int
    lam: np.ndarray  # (q, q) Λ
    sigma: float
    BB: np.ndarray  # (q, q, p, p): Σ_g B_g[a] B_g[b]ᵀ
    Ss: np.ndarray  # (q, q): Σ_g s_g s_gᵀ
    Msum: np.ndarray  # (q, q): Σ_g M_g

    def bb(self, E: np.ndarray) -> np.ndarray:
        """Σ_g B_gᵀ E B_g."""
        return np.tensordot(E, self.BB, axes=([0, 1], [0, 1]))

    def pair(self, Ei: np.ndarray, Ej: np.ndarray) -> tuple[float, np.ndarray]:
        """Σ_g tr(M_g E_i M_g E_j) and Σ_g B_gᵀ E_i M_g E_j B_g."""
        tr = float(np.einsum("gab,gba->", self.M @ Ei, self.M @ Ej))
        Q = np.tensordot(np.matmul(Ei, self.B), self.M @ np.matmul(Ej, self.B),
                         axes=([0, 1], [0, 1]))
        return tr, Q

    def s_pair(self, Ei: np.ndarray, Ej: np.ndarray) -> float:
        """Σ_g s_gᵀ E_i M_g E_j s_g."""
        return float(np.sum((self.s @ Ei.T) * np.einsum("gab,gb->ga", self.M, self.s @ Ej.T)))

    def u(self, E: np.ndarray) -> np.ndarray:
        """Σ_g B_gᵀ E s_g."""
        return np.einsum("gap,ga->p", self.B, self.s @ E.T)


def supports(lay) -> bool:
    """Closed forms exist for the layout (one grouping factor; the nested case keeps FD)."""
    return lay is not None and lay.q_outer == 0


def group_blocks(stats, lay, varpar: np.ndarray) -> GroupBlocks:
    """M_g, B_g, s_g and their sums at varpar = (θ..., σ), from the engine's statistics."""
    varpar = np.asarray(varpar, dtype=float)
    theta, sigma = varpar[:-1], float(varpar[-1])
    s2 = sigma * sigma
    q, p = lay.q_inner, stats.p
    lam, _ = lay.lambdas(theta)
    C = np.ascontiguousarray(stats.ZtZ[:q, :q].transpose(2, 0, 1))  # (G, q, q)
    ZX = np.ascontiguousarray(stats.ZtX[:q].transpose(2, 0, 1))  # (G, q, p)
    Zy = np.ascontiguousarray(stats.Zty[:q].T)  # (G, q)
    A = lam.T @ C @ lam
    A[:, range(q), range(q)] += 1.0
    N = lam @ np.linalg.solve(A, np.broadcast_to(lam.T, A.shape))  # ΛA⁻¹Λᵀ
    CN = C @ N
    # XᵀV⁻¹X and XᵀV⁻¹y times σ²; β̂ the GLS estimate at θ
    NZX = N @ ZX
    XtKX = stats.XtX - np.tensordot(ZX, NZX, axes=([0, 1], [0, 1]))
    XtKy = stats.Xty - np.einsum("gap,ga->p", NZX, Zy)
    beta = np.linalg.solve(XtKX, XtKy)
    Zr = Zy - ZX @ beta
    rr = float(stats.yty - 2.0 * beta @ stats.Xty + beta @ stats.XtX @ beta)
    rKr = (rr - float(np.einsum("ga,gab,gb->", Zr, N, Zr))) / s2
    M = (C - CN @ C) / s2
    B = (ZX - CN @ ZX) / s2
    s = (Zr - np.einsum("gab,gb->ga", CN, Zr)) / s2
    Phi_inv = XtKX / s2
    Phi = np.linalg.inv(Phi_inv)
    G = C.shape[0]
    B2 = B.reshape(G, q * p)
    BB = (B2.T @ B2).reshape(q, p, q, p).transpose(0, 2, 1, 3)
    return GroupBlocks(M=M, B=B, s=s, Phi=Phi, Phi_inv=Phi_inv, rKr=rKr, n=int(stats.n),
                       p=int(p), lam=lam, sigma=sigma, BB=BB, Ss=s.T @ s, Msum=M.sum(axis=0))


# ----------------------------------------------------------------------------------------------
# Derivatives of V as (E, c): ∂V = Z E Zᵀ + c V
# ----------------------------------------------------------------------------------------------
def _unit(q: int, r: int, c: int) -> np.ndarray:
    e = np.zeros((q, q))
    e[r, c] = 1.0
    return e


def _first(gb: GroupBlocks, lay) -> list[tuple[np.ndarray, float]]:
    """∂V/∂varpar_i as (E_i, c_i), θ's then σ."""
    q, lam, s2 = lay.q_inner, gb.lam, gb.sigma ** 2
    out = []
    for (_, r, c) in lay.theta_pos:
        Ek = _unit(q, r, c)
        out.append((s2 * (Ek @ lam.T + lam @ Ek.T), 0.0))
    out.append((np.zeros((q, q)), 2.0 / gb.sigma))
    return out


def _second(gb: GroupBlocks, lay, first: list) -> dict[tuple[int, int], tuple[np.ndarray, float]]:
    """∂²V/∂varpar_i∂varpar_j as (E_ij, c_ij), i ≤ j."""
    q, s2, sig = lay.q_inner, gb.sigma ** 2, gb.sigma
    k = len(lay.theta_pos)
    units = [_unit(q, r, c) for (_, r, c) in lay.theta_pos]
    out = {}
    for i in range(k):
        for j in range(i, k):
            out[i, j] = (s2 * (units[i] @ units[j].T + units[j] @ units[i].T), 0.0)
        out[i, k] = ((2.0 / sig) * first[i][0], 0.0)
    out[k, k] = (np.zeros((q, q)), 2.0 / s2)
    return out


@dataclass
class _Pair:
    """Bilinear pieces of two derivatives, shared by the Hessian and Kenward-Roger."""

    trKK: float  # tr(K V_i K V_j)
    Q: np.ndarray  # XᵀK V_i K V_j K X


def pair_terms(gb, derivs: list[tuple[np.ndarray, float]]):
    """P_i = XᵀKV_iKX per derivative and, per pair i ≤ j, tr(KV_iKV_j) and XᵀKV_iKV_jKX.

    *gb* is a :class:`GroupBlocks`.
    """
    P = [gb.bb(E) + c * gb.Phi_inv for E, c in derivs]
    trME = [float(np.sum(gb.Msum * E.T)) for E, _ in derivs]
    pairs = {}
    k = len(derivs)
    for i in range(k):
        (Ei, ci) = derivs[i]
        for j in range(i, k):
            (Ej, cj) = derivs[j]
            tr, Q = gb.pair(Ei, Ej)
            trKK = tr + cj * trME[i] + ci * trME[j] + ci * cj * gb.n
            Q = Q + cj * gb.bb(Ei) + ci * gb.bb(Ej) + ci * cj * gb.Phi_inv
            pairs[i, j] = _Pair(trKK, Q)
    return P, pairs


def hessian_varpar(stats, lay, varpar: np.ndarray, reml: bool = True,
                   blocks=None) -> np.ndarray:
    """Hessian of the REML (or ML) deviance in varpar = (θ..., σ), in closed form.

    The deviance is lmerTest's ``devfun_vp`` (profiled over β, not over σ); see the module
    docstring for the formulas (summed by class of groups, vectorised: ``batched._hessian``).
    *blocks*: a function varpar -> blocks to use instead of the per-group sums of *stats*.
    """
    gb = group_blocks(stats, lay, varpar) if blocks is None else blocks(varpar)
    d1 = _first(gb, lay)
    d2 = _second(gb, lay, d1)
    P, pairs = pair_terms(gb, d1)
    k = len(d1)
    Phi = gb.Phi
    sEs = [float(np.sum(gb.Ss * E)) for E, _ in d1]  # Σ sᵀE_is
    u = [gb.u(E) for E, _ in d1]  # Σ BᵀE_is
    H = np.empty((k, k))
    for i in range(k):
        for j in range(i, k):
            Eij, cij = d2[i, j]
            ci, cj = d1[i][1], d1[j][1]
            pr = pairs[i, j]
            # traces
            tr1 = float(np.sum(gb.Msum * Eij.T)) + cij * gb.n
            tr2 = pr.trKK
            if reml:
                tr1 -= float(np.sum(Phi * gb.bb(Eij))) + cij * gb.p
                tr2 += (-2.0 * float(np.sum(Phi * pr.Q))
                        + float(np.sum((Phi @ P[i]) * (P[j] @ Phi))))
            # quadratic forms in Py = Kr
            q2 = (gb.s_pair(d1[i][0], d1[j][0]) + cj * sEs[i] + ci * sEs[j] + ci * cj * gb.rKr
                  - float(u[i] @ Phi @ u[j]))
            q1 = float(np.sum(gb.Ss * Eij)) + cij * gb.rKr
            H[i, j] = H[j, i] = tr1 - tr2 + 2.0 * q2 - q1
    return H


def jacobian_vcov_varpar(stats, lay, varpar: np.ndarray, blocks=None) -> np.ndarray:
    """∂Var(β̂)/∂varpar_i = Φ XᵀK V_i K X Φ, stacked (k, p, p)."""
    gb = group_blocks(stats, lay, varpar) if blocks is None else blocks(varpar)
    return np.stack([gb.Phi @ (gb.bb(E) + c * gb.Phi_inv) @ gb.Phi for E, c in _first(gb, lay)])
