"""The closed-form gradient and Hessian of the deviance in varpar = (θ, σ) and the Jacobian of
Var(β̂), for one study pooled by class (the fast engine's fit): the formulas of
:func:`mfr_outcomes.models.batched.varpar_derivatives` without the study axis, with σ's row and
column in closed form.

V = σ²(ZΛΛᵀZᵀ + I), so ∂V/∂σ = (2/σ)V, ∂²V/∂σ² = (2/σ²)V and ∂²V/∂θᵢ∂σ = (2/σ)∂V/∂θᵢ; with
P V P = P (P = V⁻¹ − V⁻¹X(XᵀV⁻¹X)⁻¹XᵀV⁻¹ by REML, V⁻¹ by ML), ν = n − p (REML) or n and
ρ = yᵀPy, σ's entries need only the θ entries' pieces:

    g_σ = (2/σ)(ν − ρ),   H_σσ = (6ρ − 2ν)/σ²,   H_θᵢσ = (2/σ) yᵀP Vᵢ P y,
    XᵀV⁻¹V_σV⁻¹X = (2/σ) XᵀV⁻¹X.

The θ block is that of ``batched._hessian`` with its σ terms (c₁, c₂) at 0: sums by class of
products with F ⊗ F (F = (I − CN)/σ²), every class at once.
"""
from __future__ import annotations

import functools

import numpy as np
from scipy.linalg.lapack import dpotrf as _potrf
from scipy.linalg.lapack import dpotrs as _potrs

__all__ = ["derivatives", "unit_products"]


@functools.lru_cache(maxsize=64)
def unit_products(theta_pos: tuple, q: int) -> tuple[np.ndarray, np.ndarray]:
    """U_t (the unit matrix at θ_t's place in Λ) and U_iU_jᵀ + U_jU_iᵀ: constants of the model's
    layout (read-only, kept between calls)."""
    k = len(theta_pos)
    U = np.zeros((k, q, q))
    for t, (r, c) in enumerate(theta_pos):
        U[t, r, c] = 1.0
    UU = U[:, None] @ np.swapaxes(U, -1, -2)[None]
    UU2 = UU + np.swapaxes(UU, -1, -2)
    U.flags.writeable = False
    UU2.flags.writeable = False
    return U, UU2


def derivatives(P, core: dict, sigma: float, reml: bool = True
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gradient (k+1,), Hessian (k+1, k+1) of the deviance in (θ, σ) and ∂Var(β̂)/∂varpar
    (k+1, p, p) of the one study of the pooled classes *P* (``batched.Pooled``) at the pieces
    *core* (Λ, N = ΛA⁻¹Λᵀ per class, XᵀV⁻¹X σ⁻², β̂ − b0, r²: ``batched._core_one``'s keys)."""
    q, p = P.q, P.p
    m, qq = p + 1, q * q
    C = P.C
    K = C.shape[0]
    k = len(P.theta_pos)
    count = P.count[0]
    n = float(P.n[0])
    Om, Oxx = P.Om[0], P.Oxx[0]
    s2 = sigma * sigma
    # the blocks: per class M = ZᵢᵀV⁻¹Zᵢ, F, the residual moments E2 and Oxe
    w = np.empty(m)
    w[:p] = -core["beta0"][0]
    w[p] = 1.0
    t = (Om.reshape(K * qq * m, m) @ w).reshape(K * qq, m)
    Oxe = t[:, :p]
    U, UU2 = unit_products(tuple(P.theta_pos), q)
    UU2 = UU2.reshape(k * k, qq)
    CN = C @ core["N"][0]
    F = np.eye(q) - CN
    F /= s2
    M = C - CN @ C
    M /= s2
    Phi_inv = core["XtKX"][0] / s2
    R, info = _potrf(Phi_inv, lower=0, clean=1)
    Phi = _potrs(R, np.eye(p), lower=0)[0] if info == 0 else np.linalg.inv(Phi_inv)
    rho = float(core["pwrss"][0]) / s2
    Mflat = M.reshape(K, qq)
    Msum = count @ Mflat  # (qq,)
    # per class F ⊗ F, applied to the class's E2 and <Φ, Oxx>: vec(F E Fᵀ) = (F ⊗ F) vec(E)
    KFF = (F[:, :, None, :, None] * F[:, None, :, None, :]).reshape(K, qq, qq)
    EP = np.empty((K * qq, 2))  # E2 and <Φ, Oxx> of every class
    np.matmul(t, w, out=EP[:, 0])
    np.matmul(Oxx, Phi.reshape(p * p), out=EP[:, 1])
    FEP = KFF @ EP.reshape(K, qq, 2)  # (K, qq, 2)
    Ss, Gphi = (np.ones(K) @ FEP.reshape(K, 2 * qq)).reshape(qq, 2).T  # Σ F E2 Fᵀ, …
    # the same products summed over the classes against Oxx and Oxe: E_t's sandwiches FᵀE_tF
    # are shared by the classes, so Σ_class (FᵀE_tF) : Oxx = vec(E_t) (KFFt Oxx)
    KFFt = KFF.transpose(1, 0, 2).reshape(qq, K * qq)
    Gxx = KFFt @ Oxx  # (qq, p p)
    Gxe = KFFt @ Oxe  # (qq, p)
    # θ's derivatives of V (σ²-scaled): E_t = σ²(U_tΛᵀ + ΛU_tᵀ), E_tu = σ²(U_tU_uᵀ + U_uU_tᵀ)
    UL = U @ core["lam"][0].T
    E1 = UL + np.swapaxes(UL, 1, 2)
    E1 *= s2
    E1f = E1.reshape(k, qq)
    # every term of the θ block is E1f Z E1fᵀ (Z qq × qq) or UU2 z (z qq), Z summed first:
    #   Σ_class count tr(M E_t M E_u) → Σ count M ⊗ M (as [(a,c),(b,d)]),
    #   Σ_class vec(E_t M E_u) · vec(F E2 Fᵀ) → Σ M ⊗ FE2Fᵀ reordered, likewise with <Φ, Oxx>,
    #   tr(Φ B_t Φ B_u) (B = XᵀV⁻¹V_tV⁻¹X = Σ_a E_t[a] Gxx[a]), u Φ uᵀ (u = E1f Gxe)
    Y = (Mflat.T @ FEP.reshape(K, 2 * qq)).reshape(q, q, q, q, 2)  # [a, c, b, d, ·]
    ZEP = Y.transpose(4, 2, 0, 1, 3).reshape(2, qq, qq)  # [·, (b, a), (c, d)]
    MM = ((Mflat * count[:, None]).T @ Mflat).reshape(q, q, q, q).transpose(0, 2, 1, 3)
    Z = 2.0 * ZEP[0] - MM.reshape(qq, qq) - 2.0 * (Gxe @ Phi @ Gxe.T)
    v0 = Msum - Ss
    if reml:
        PG = (Phi @ Gxx.reshape(qq, p, p)).reshape(qq, p * p)
        Z += 2.0 * ZEP[1] - PG @ np.swapaxes(PG.reshape(qq, p, p), 1, 2).reshape(qq, p * p).T
        v0 -= Gphi
    Htt = E1f @ Z @ E1f.T + (s2 * (UU2 @ v0)).reshape(k, k)
    H = np.empty((k + 1, k + 1))
    H[:k, :k] = Htt + Htt.T
    H[:k, :k] *= 0.5
    nu = (n - p) if reml else n
    H[:k, k] = H[k, :k] = (2.0 / sigma) * (E1f @ Ss)
    H[k, k] = (6.0 * rho - 2.0 * nu) / s2
    g = np.empty(k + 1)
    g[:k] = E1f @ v0
    g[k] = (2.0 / sigma) * (nu - rho)
    Pm = np.empty((k + 1, p, p))
    Pm[:k] = (E1f @ Gxx).reshape(k, p, p)  # XᵀV⁻¹V_tV⁻¹X
    Pm[k] = (2.0 / sigma) * Phi_inv
    return g, H, Phi @ Pm @ Phi
