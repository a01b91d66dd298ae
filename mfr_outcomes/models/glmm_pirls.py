"""Penalised iteratively reweighted least squares (lme4's ``pwrssUpdate``) for GLMMs.

Two backends compute the same things on the spherical random effects u (b = Λθ u, u ~ N(0, I)):

* :class:`OneFactorPirls` — one grouping factor: the Laplace blocks of the groups are independent,
  so PIRLS, log-determinants and adaptive Gauss–Hermite quadrature run as batched q×q algebra over
  all groups at once (``np.bincount`` sums, no matrix of size groups × groups).
* :class:`GeneralPirls` — any random structure (several factors, crossed, nested): a sparse
  Z, Λ'Z'WZΛ + I factorised densely (up to :data:`DENSE_MAX` random effects) or by sparse LU.

Both give, for given θ and β, the conditional modes û (``modes``), and for given θ the joint
modes of (u, β) (``joint_modes``, glmer's ``nAGQ = 0`` stage), with −2 log-likelihood pieces on
glmer's conventions: Σ deviance residuals + ‖û‖² + log|L|² + the family's saturated constant.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.linalg as sla
import scipy.sparse as sp
import scipy.sparse.linalg as spla

from mfr_outcomes.models.families import Family
from mfr_outcomes.models.spec import ModelSpec, block_lambda

__all__ = ["GlmmData", "Modes", "OneFactorPirls", "GeneralPirls", "make_backend", "DENSE_MAX",
           "PIRLS_TOL", "PIRLS_MAXIT"]

#: largest number of random effects factorised densely by the general backend.
DENSE_MAX = 3000
#: PIRLS stops after a full Newton step smaller than this in every u (the error left is then
#: of the order of its square: Newton converges quadratically).
PIRLS_TOL = 1e-8
PIRLS_MAXIT = 60
_MAX_HALVINGS = 12


@dataclass
class GlmmData:
    """What the PIRLS backends need besides the random structure."""

    y: np.ndarray
    X: np.ndarray
    weights: np.ndarray  # prior weights (binomial trials)
    offset: np.ndarray
    family: Family

    def __post_init__(self) -> None:
        self.const = self.family.saturated_constant(self.y, self.weights)
        self.sat = self.family.saturated(self.y)
        # 0/1 responses: d = −2w log P(y | μ), one logarithm instead of two
        self._binary = self.family.name == "binomial" and bool(np.all((self.y == 0.0) |
                                                                      (self.y == 1.0)))
        self._is_one = self.y == 1.0
        self._w2 = -2.0 * self.weights

    def dev_resid(self, mu: np.ndarray) -> np.ndarray:
        if self._binary:
            return self._w2 * np.log(np.where(self._is_one, mu, 1.0 - mu))
        return self.family.dev_resid(self.y, mu, self.weights, self.sat)


@dataclass
class Modes:
    """The state at the conditional modes for one (θ, β)."""

    u: np.ndarray  # (n_re,) spherical modes, lme4's order (block, level, term)
    beta: np.ndarray
    eta: np.ndarray
    mu: np.ndarray
    devres: float  # Σ deviance residuals (lme4's drsum / deviance())
    ussq: float  # ‖u‖²
    ldL2: float  # log|Λ'Z'WZΛ + I|
    converged: bool
    iterations: int

    def laplace(self, const: float) -> float:
        """−2 log-likelihood by the Laplace approximation (glmer's ``dev``)."""
        return self.devres + self.ussq + self.ldL2 + const


def _irls_quantities(data: GlmmData, eta: np.ndarray, mu: np.ndarray | None = None):
    """μ, the IRLS weights W = w μ_η² / V(μ) and the working residual (y − μ) / μ_η."""
    fam = data.family
    mu = fam.linkinv(eta) if mu is None else mu
    if fam.canonical:  # μ_η = V(μ): one pass fewer
        v = np.maximum(fam.variance(mu), np.finfo(float).eps)
        return mu, data.weights * v, (data.y - mu) / v
    mu_eta = fam.mu_eta(eta)
    var = fam.variance(mu)
    W = data.weights * mu_eta ** 2 / np.maximum(var, 1e-300)
    r = (data.y - mu) / mu_eta
    return mu, W, r


# ------------------------------------------------------------------------------------------
# one grouping factor: independent blocks, batched
# ------------------------------------------------------------------------------------------

class OneFactorPirls:
    """PIRLS with one grouping factor and q random terms per level, batched over levels."""

    def __init__(self, spec: ModelSpec, data: GlmmData):
        (block,) = spec.blocks
        self.data = data
        self.Z = block.Z
        self.g = block.codes
        self.G = block.n_levels
        self.q = block.q
        self.n_re = self.G * self.q
        self._pairs = [(k, m) for k in range(self.q) for m in range(k, self.q)]

    # ---------------------------------------------------------------- helpers
    def _A(self, theta: np.ndarray) -> np.ndarray:
        return self.Z @ block_lambda(theta, self.q) if self.q > 1 else self.Z * theta[0]

    def _gsum(self, v: np.ndarray) -> np.ndarray:
        return np.bincount(self.g, weights=v, minlength=self.G)

    def _eta_rand(self, A: np.ndarray, u: np.ndarray) -> np.ndarray:
        U = u.reshape(self.G, self.q)
        if self.q == 1:
            return A[:, 0] * U[self.g, 0]
        return np.einsum("ij,ij->i", A, U[self.g])

    def _M(self, A: np.ndarray, W: np.ndarray) -> np.ndarray:
        """(G, q, q): I + Σ_rows W A A' per group."""
        M = np.zeros((self.G, self.q, self.q))
        for k, m in self._pairs:
            s = self._gsum(W * A[:, k] * A[:, m])
            M[:, k, m] = s
            M[:, m, k] = s
        M[:, np.arange(self.q), np.arange(self.q)] += 1.0
        return M

    def _gvec(self, A: np.ndarray, v: np.ndarray) -> np.ndarray:
        """(G, q): Σ_rows A v per group."""
        return np.column_stack([self._gsum(A[:, k] * v) for k in range(self.q)])

    def _solve(self, M: np.ndarray, rhs: np.ndarray) -> np.ndarray:
        if self.q == 1:
            return rhs / M[:, 0, :]
        return np.linalg.solve(M, rhs[..., None])[..., 0]

    def _logdet(self, M: np.ndarray) -> float:
        if self.q == 1:
            return float(np.sum(np.log(M[:, 0, 0])))
        return float(2.0 * np.sum(np.log(np.diagonal(np.linalg.cholesky(M), axis1=1, axis2=2))))

    def _pdev_groups(self, devres: np.ndarray, u: np.ndarray) -> np.ndarray:
        return self._gsum(devres) + np.sum(u.reshape(self.G, self.q) ** 2, axis=1)

    # ---------------------------------------------------------------- PIRLS, β fixed
    def _modes_scalar(self, theta: np.ndarray, beta: np.ndarray, u0: np.ndarray | None
                      ) -> Modes:
        """PIRLS for one scalar random effect per level: plain 1-D arrays, no q×q blocks."""
        d, g, G = self.data, self.g, self.G
        a = self.Z[:, 0] * theta[0]
        a2 = a * a
        fixed = d.offset + d.X @ beta
        u = np.zeros(G) if u0 is None else u0.copy()
        eta = fixed + a * u[g]
        mu, W, r = _irls_quantities(d, eta)
        dr = d.dev_resid(mu)
        pdev = np.bincount(g, weights=dr, minlength=G) + u * u
        converged, its = False, 0
        for it in range(1, PIRLS_MAXIT + 1):
            its = it
            M = 1.0 + np.bincount(g, weights=W * a2, minlength=G)
            delta = np.bincount(g, weights=W * a * (eta - fixed + r), minlength=G) / M - u
            step = 1.0
            for _ in range(_MAX_HALVINGS):
                u_new = u + step * delta
                eta_new = fixed + a * u_new[g]
                mu_new = d.family.linkinv(eta_new)
                dr_new = d.dev_resid(mu_new)
                pdev_new = np.bincount(g, weights=dr_new, minlength=G) + u_new * u_new
                worse = pdev_new > pdev + 1e-10 * (1.0 + np.abs(pdev))
                if not worse.any():
                    break
                step = np.where(worse, step * 0.5, step)
            u, eta, pdev, dr = u_new, eta_new, pdev_new, dr_new
            mu, W, r = _irls_quantities(d, eta, mu_new)
            if np.max(np.abs(step * delta), initial=0.0) < PIRLS_TOL and np.all(step == 1.0):
                converged = True
                break
        M = 1.0 + np.bincount(g, weights=W * a2, minlength=G)
        return Modes(u, beta, eta, mu, float(dr.sum()), float(u @ u), float(np.log(M).sum()),
                     converged, its)

    def laplace_gradient(self, theta: np.ndarray, modes: Modes) -> np.ndarray:
        """Exact gradient over (θ, β) of the Laplace deviance, one scalar random effect.

        At the mode ∂(Σd + ‖u‖²)/∂u = 0, so (envelope theorem) only log|M| feels û's motion:
        dF/dx = ∂F/∂x|_u + Σᵢ ∂log Mᵢ/∂uᵢ · dûᵢ/dx, with dûᵢ/dx = −Hᵢ⁻¹ ∂gᵢ/∂x from the mode
        condition gᵢ = Σⱼ d′ⱼ aⱼ + 2uᵢ = 0 (d the deviance residual, a = θz, Mᵢ = 1 + Σ W a²,
        Hᵢ = Σ d″ a² + 2; W, d′, d″ and W′ from the family's link derivatives).
        """
        d, g, G = self.data, self.g, self.G
        fam = d.family
        z = self.Z[:, 0]
        a = z * theta[0]
        eta, mu, u = modes.eta, modes.mu, modes.u
        me = fam.mu_eta(eta)
        mee = fam.mu_eta_eta(eta, mu, me)
        V = np.maximum(fam.variance(mu), 1e-300)
        Vp = fam.variance_deriv(mu)
        w, res = d.weights, d.y - mu
        d1 = -2.0 * w * res * me / V
        d2 = 2.0 * w * me ** 2 / V - 2.0 * w * res * (mee * V - me ** 2 * Vp) / V ** 2
        W = w * me ** 2 / V
        W1 = w * (2.0 * me * mee / V - me ** 3 * Vp / V ** 2)
        M = 1.0 + np.bincount(g, weights=W * a * a, minlength=G)
        H = 2.0 + np.bincount(g, weights=d2 * a * a, minlength=G)
        c = W1 * a * a / M[g]
        sH = np.bincount(g, weights=c * a, minlength=G) / H  # (∂ log M/∂u) / H per group
        ug = u[g]
        v = d1 + c - sH[g] * d2 * a
        grad_beta = d.X.T @ v
        dg_dlam = np.bincount(g, weights=d2 * z * ug * a + d1 * z, minlength=G)
        grad_lam = (np.sum((d1 + c) * z * ug)
                    + np.sum(np.bincount(g, weights=2.0 * W * a * z, minlength=G) / M)
                    - np.sum(sH * dg_dlam))
        return np.concatenate([[grad_lam], grad_beta])

    def modes(self, theta: np.ndarray, beta: np.ndarray, u0: np.ndarray | None) -> Modes:
        if self.q == 1:
            return self._modes_scalar(theta, beta, u0)
        d = self.data
        A = self._A(theta)
        fixed = d.offset + d.X @ beta
        u = np.zeros(self.n_re) if u0 is None else u0.copy()
        eta = fixed + self._eta_rand(A, u)
        mu, W, r = _irls_quantities(d, eta)
        dr = d.dev_resid(mu)
        pdev = self._pdev_groups(dr, u)
        converged, its = False, 0
        for it in range(1, PIRLS_MAXIT + 1):
            its = it
            M = self._M(A, W)
            rhs = self._gvec(A, W * (eta - fixed + r))
            delta = self._solve(M, rhs).ravel() - u
            step = np.ones(self.G)
            for _ in range(_MAX_HALVINGS):
                u_new = u + np.repeat(step, self.q) * delta
                eta_new = fixed + self._eta_rand(A, u_new)
                mu_new = d.family.linkinv(eta_new)
                dr_new = d.dev_resid(mu_new)
                pdev_new = self._pdev_groups(dr_new, u_new)
                worse = pdev_new > pdev + 1e-10 * (1.0 + np.abs(pdev))
                if not worse.any():
                    break
                step = np.where(worse, step * 0.5, step)
            u, eta, pdev, dr = u_new, eta_new, pdev_new, dr_new
            mu, W, r = _irls_quantities(d, eta, mu_new)
            if np.max(np.abs(delta * np.repeat(step, self.q)), initial=0.0) < PIRLS_TOL and \
                    np.all(step == 1.0):
                converged = True
                break
        M = self._M(A, W)
        self._last = (A, W, M)
        return Modes(u, beta, eta, mu, float(dr.sum()), float(u @ u), self._logdet(M),
                     converged, its)

    # ---------------------------------------------------------------- joint (u, β): nAGQ = 0
    def _joint_scalar(self, theta: np.ndarray, beta0: np.ndarray, u0: np.ndarray | None
                      ) -> Modes:
        """Joint PIRLS over (u, β) for one scalar random effect: u eliminated group by group."""
        d, g, G, X = self.data, self.g, self.G, self.data.X
        a = self.Z[:, 0] * theta[0]
        u = np.zeros(G) if u0 is None else u0.copy()
        beta = beta0.copy()
        eta = d.offset + X @ beta + a * u[g]
        mu, W, r = _irls_quantities(d, eta)
        dr = d.dev_resid(mu)
        pdev = float(dr.sum() + u @ u)
        converged, its = False, 0
        for it in range(1, PIRLS_MAXIT + 1):
            its = it
            z = eta - d.offset + r
            Wa = W * a
            M = 1.0 + np.bincount(g, weights=Wa * a, minlength=G)
            av = np.bincount(g, weights=Wa * z, minlength=G)
            C = np.column_stack([np.bincount(g, weights=Wa * X[:, j], minlength=G)
                                 for j in range(X.shape[1])])  # (G, p)
            CM = C / M[:, None]
            XtW = X.T * W
            S = XtW @ X - C.T @ CM
            beta_new = np.linalg.solve(S, XtW @ z - CM.T @ av)
            du = (av - C @ beta_new) / M - u
            db = beta_new - beta
            t = 1.0
            for _ in range(_MAX_HALVINGS):
                u_try, b_try = u + t * du, beta + t * db
                eta_try = d.offset + X @ b_try + a * u_try[g]
                mu_try = d.family.linkinv(eta_try)
                dr_try = d.dev_resid(mu_try)
                pdev_try = float(dr_try.sum() + u_try @ u_try)
                if pdev_try <= pdev + 1e-10 * (1.0 + abs(pdev)):
                    break
                t *= 0.5
            u, beta, eta, pdev, dr = u_try, b_try, eta_try, pdev_try, dr_try
            mu, W, r = _irls_quantities(d, eta, mu_try)
            if max(np.max(np.abs(t * du), initial=0.0), np.max(np.abs(t * db))) < PIRLS_TOL \
                    and t == 1.0:
                converged = True
                break
        M = 1.0 + np.bincount(g, weights=W * a * a, minlength=G)
        return Modes(u, beta, eta, mu, float(dr.sum()), float(u @ u), float(np.log(M).sum()),
                     converged, its)

    def joint_modes(self, theta: np.ndarray, beta0: np.ndarray, u0: np.ndarray | None) -> Modes:
        if self.q == 1:
            return self._joint_scalar(theta, beta0, u0)
        d = self.data
        A = self._A(theta)
        X = d.X
        p = X.shape[1]
        u = np.zeros(self.n_re) if u0 is None else u0.copy()
        beta = beta0.copy()
        eta = d.offset + X @ beta + self._eta_rand(A, u)
        mu, W, r = _irls_quantities(d, eta)
        dr = d.dev_resid(mu)
        pdev = float(dr.sum() + u @ u)
        converged, its = False, 0
        for it in range(1, PIRLS_MAXIT + 1):
            its = it
            z = eta - d.offset + r
            M = self._M(A, W)
            a = self._gvec(A, W * z)  # (G, q)
            C = np.stack([self._gvec(A, W * X[:, j]) for j in range(p)], axis=2)  # (G, q, p)
            Minv_a = self._solve(M, a)
            Minv_C = np.stack([self._solve(M, C[:, :, j]) for j in range(p)], axis=2)
            XtWX = (X * W[:, None]).T @ X
            S = XtWX - np.einsum("gqi,gqj->ij", C, Minv_C)
            rhs = X.T @ (W * z) - np.einsum("gqi,gq->i", C, Minv_a)
            beta_new = np.linalg.solve(S, rhs)
            u_new_full = (Minv_a - np.einsum("gqj,j->gq", Minv_C, beta_new)).ravel()
            du, db = u_new_full - u, beta_new - beta
            t = 1.0
            for _ in range(_MAX_HALVINGS):
                u_try, b_try = u + t * du, beta + t * db
                eta_try = d.offset + X @ b_try + self._eta_rand(A, u_try)
                mu_try = d.family.linkinv(eta_try)
                dr_try = d.dev_resid(mu_try)
                pdev_try = float(dr_try.sum() + u_try @ u_try)
                if pdev_try <= pdev + 1e-10 * (1.0 + abs(pdev)):
                    break
                t *= 0.5
            u, beta, eta, pdev, dr = u_try, b_try, eta_try, pdev_try, dr_try
            mu, W, r = _irls_quantities(d, eta, mu_try)
            if max(np.max(np.abs(t * du), initial=0.0), np.max(np.abs(t * db))) < PIRLS_TOL \
                    and t == 1.0:
                converged = True
                break
        M = self._M(A, W)
        self._last = (A, W, M)
        return Modes(u, beta, eta, mu, float(dr.sum()), float(u @ u), self._logdet(M),
                     converged, its)

    def schur(self, theta: np.ndarray, modes: Modes) -> np.ndarray:
        """R_X'R_X = X'WX − X'WZΛ (Λ'Z'WZΛ + I)⁻¹ Λ'Z'WX at the modes (Var(β̂)⁻¹ given θ)."""
        d = self.data
        A = self._A(theta)
        _, W, _ = _irls_quantities(d, modes.eta)
        M = self._M(A, W)
        X = d.X
        C = np.stack([self._gvec(A, W * X[:, j]) for j in range(X.shape[1])], axis=2)
        Minv_C = np.stack([self._solve(M, C[:, :, j]) for j in range(X.shape[1])], axis=2)
        return (X * W[:, None]).T @ X - np.einsum("gqi,gqj->ij", C, Minv_C)

    def cond_cov_u(self, theta: np.ndarray, modes: Modes) -> np.ndarray:
        """(G, q, q) conditional covariances of u per level: (Λ'Z'WZΛ + I)⁻¹ blocks."""
        _, W, _ = _irls_quantities(self.data, modes.eta)
        return np.linalg.inv(self._M(self._A(theta), W))

    # ---------------------------------------------------------------- adaptive Gauss–Hermite
    def agq(self, theta: np.ndarray, modes: Modes, nagq: int) -> float:
        """−2 log-likelihood by adaptive Gauss–Hermite quadrature with *nagq* nodes (q = 1).

        On glmer's scale: deviance residuals, not the full log-density, so for binomial data
        with trials (and Poisson) it differs from the Laplace value by the saturated constant.
        """
        d = self.data
        A = self._A(theta)[:, 0]
        _, W, _ = _irls_quantities(d, modes.eta)
        M = self._M(A[:, None], W)[:, 0, 0]
        sd = 1.0 / np.sqrt(M)
        z, w = np.polynomial.hermite_e.hermegauss(nagq)
        w = w / np.sqrt(2.0 * np.pi)
        fixed = modes.eta - A * modes.u[self.g]
        dr0 = d.dev_resid(modes.mu)
        dev0 = self._gsum(dr0) + modes.u ** 2
        total = np.zeros(self.G)
        for zk, wk in zip(z, w):
            uk = modes.u + zk * sd
            mu_k = d.family.linkinv(fixed + A * uk[self.g])
            devk = self._gsum(d.dev_resid(mu_k)) + uk ** 2
            total += wk * np.exp(-0.5 * (devk - dev0) + 0.5 * zk ** 2)
        # lme4 (glmerAGQ) leaves the family's saturated constant out of the quadrature value,
        # unlike its Laplace value; kept so that logLik agrees with glmer's for nAGQ > 1.
        return float(np.sum(dev0) + np.sum(np.log(M)) - 2.0 * np.sum(np.log(total)))

    def blups(self, theta: np.ndarray, modes: Modes) -> tuple[list[np.ndarray], list[np.ndarray]]:
        lam = block_lambda(theta, self.q)
        U = modes.u.reshape(self.G, self.q)
        cov_u = self.cond_cov_u(theta, modes)
        return [U @ lam.T], [np.einsum("ij,gjk,lk->gil", lam, cov_u, lam)]


# ------------------------------------------------------------------------------------------
# any structure: sparse Z, dense or sparse factorisation
# ------------------------------------------------------------------------------------------

class _Factor:
    """Cholesky (dense) or LU (sparse) of the SPD matrix Λ'Z'WZΛ + I."""

    def __init__(self, M, dense: bool):
        self.dense = dense
        if dense:
            self.c = sla.cho_factor(M, lower=True, check_finite=False)
            self.logdet = float(2.0 * np.sum(np.log(np.diag(self.c[0]))))
        else:
            self.lu = spla.splu(sp.csc_matrix(M), permc_spec="MMD_AT_PLUS_A",
                                diag_pivot_thresh=0.0, options={"SymmetricMode": True})
            self.logdet = float(np.sum(np.log(np.abs(self.lu.U.diagonal()))))

    def solve(self, b: np.ndarray) -> np.ndarray:
        if self.dense:
            return sla.cho_solve(self.c, b, check_finite=False)
        return self.lu.solve(np.asarray(b))


class _ElimFactor:
    """Λ'Z'WZΛ + I when the first (largest) factor has one scalar term: its block is diagonal,
    so it is eliminated and only the Schur complement of the other factors is factorised
    (for crossed designs such as respondents × items: a 24×24 matrix instead of 340×340)."""

    def __init__(self, A: _RowSparse, W: np.ndarray, G1: int):
        c1, v1 = A.cols[:, 0], A.vals[:, 0]
        c2, v2 = A.cols[:, 1:] - G1, A.vals[:, 1:]
        Q2 = A.n_re - G1
        Wv1 = W * v1
        self.D = 1.0 + np.bincount(c1, weights=Wv1 * v1, minlength=G1)
        k = c2.shape[1]
        self.B = np.bincount((c1[:, None] * Q2 + c2).ravel(),
                             weights=(Wv1[:, None] * v2).ravel(),
                             minlength=G1 * Q2).reshape(G1, Q2)
        M22 = _RowSparse(c2, v2, Q2).gram_plus_identity(W, True) if k else np.eye(Q2)
        S = M22 - self.B.T @ (self.B / self.D[:, None])
        self.c = sla.cho_factor(S, lower=True, check_finite=False)
        self.G1 = G1
        self.logdet = float(np.sum(np.log(self.D)) + 2.0 * np.sum(np.log(np.diag(self.c[0]))))
        self.dense = True

    def solve(self, b: np.ndarray) -> np.ndarray:
        b = np.asarray(b, dtype=float)
        b1, b2 = b[:self.G1], b[self.G1:]
        D = self.D if b.ndim == 1 else self.D[:, None]
        y2 = sla.cho_solve(self.c, b2 - self.B.T @ (b1 / D), check_finite=False)
        return np.concatenate([(b1 - self.B @ y2) / D, y2])


class _RowSparse:
    """A = ZΛ with a fixed pattern: each row has k non-zeros at ``cols[row]`` (Z's pattern,
    because Λ is block-diagonal by level and lower triangular within a level)."""

    def __init__(self, cols: np.ndarray, vals: np.ndarray, n_re: int):
        self.cols, self.vals, self.n_re = cols, vals, n_re

    def matvec(self, u: np.ndarray) -> np.ndarray:
        return np.einsum("ik,ik->i", self.vals, u[self.cols])

    def rmatvec(self, v: np.ndarray) -> np.ndarray:
        return np.bincount(self.cols.ravel(), weights=(self.vals * v[:, None]).ravel(),
                           minlength=self.n_re)

    def rmatmat(self, V: np.ndarray) -> np.ndarray:
        return np.column_stack([self.rmatvec(V[:, j]) for j in range(V.shape[1])])

    def gram_plus_identity(self, W: np.ndarray, dense: bool):
        """Λ'Z'WZΛ + I, dense (ndarray) or sparse."""
        n, k = self.cols.shape
        ii = np.repeat(self.cols, k, axis=1).ravel()
        jj = np.tile(self.cols, (1, k)).ravel()
        vv = (np.repeat(self.vals, k, axis=1) * np.tile(self.vals, (1, k)) * W[:, None]).ravel()
        if dense:
            M = np.bincount(ii * self.n_re + jj, weights=vv,
                            minlength=self.n_re * self.n_re).reshape(self.n_re, self.n_re)
            M[np.diag_indices(self.n_re)] += 1.0
            return M
        return (sp.coo_matrix((vv, (ii, jj)), shape=(self.n_re, self.n_re)).tocsc()
                + sp.identity(self.n_re, format="csc"))


class GeneralPirls:
    """PIRLS for any random structure (lme4's general sparse algebra)."""

    def __init__(self, spec: ModelSpec, data: GlmmData):
        self.data = data
        self.blocks = spec.blocks
        cols, self._slices = [], []
        off = 0
        for b in spec.blocks:
            for k in range(b.q):
                cols.append(off + b.codes * b.q + k)
            self._slices.append((off, b.n_levels * b.q))
            off += b.n_levels * b.q
        self.n_re = off
        self.dense = off <= DENSE_MAX
        self._cols = np.column_stack(cols)
        first = spec.blocks[0]
        rest = off - first.n_levels * first.q
        self._eliminate = (len(spec.blocks) > 1 and first.q == 1 and rest <= DENSE_MAX
                           and first.n_levels > rest)

    def _A(self, theta: np.ndarray) -> _RowSparse:
        vals, k = [], 0
        for b in self.blocks:
            lam = block_lambda(theta[k:k + b.n_theta], b.q)
            k += b.n_theta
            vals.append(b.Z @ lam)
        return _RowSparse(self._cols, np.column_stack(vals), self.n_re)

    def _factor(self, A: _RowSparse, W: np.ndarray):
        if self._eliminate:
            return _ElimFactor(A, W, self.blocks[0].n_levels)
        return _Factor(A.gram_plus_identity(W, self.dense), self.dense)

    def modes(self, theta: np.ndarray, beta: np.ndarray, u0: np.ndarray | None) -> Modes:
        d = self.data
        A = self._A(theta)
        fixed = d.offset + d.X @ beta
        u = np.zeros(self.n_re) if u0 is None else u0.copy()
        eta = fixed + A.matvec(u)
        mu, W, r = _irls_quantities(d, eta)
        dr = d.dev_resid(mu)
        pdev = float(dr.sum() + u @ u)
        converged, its = False, 0
        for it in range(1, PIRLS_MAXIT + 1):
            its = it
            fac = self._factor(A, W)
            delta = fac.solve(A.rmatvec(W * (eta - fixed + r))) - u
            t = 1.0
            for _ in range(_MAX_HALVINGS):
                u_try = u + t * delta
                eta_try = fixed + A.matvec(u_try)
                mu_try = d.family.linkinv(eta_try)
                dr_try = d.dev_resid(mu_try)
                pdev_try = float(dr_try.sum() + u_try @ u_try)
                if pdev_try <= pdev + 1e-10 * (1.0 + abs(pdev)):
                    break
                t *= 0.5
            u, eta, pdev, dr = u_try, eta_try, pdev_try, dr_try
            mu, W, r = _irls_quantities(d, eta, mu_try)
            if np.max(np.abs(t * delta), initial=0.0) < PIRLS_TOL and t == 1.0:
                converged = True
                break
        fac = self._factor(A, W)
        return Modes(u, beta, eta, mu, float(dr.sum()), float(u @ u), fac.logdet, converged, its)

    def _joint_solve(self, A: _RowSparse, W: np.ndarray, z: np.ndarray):
        d = self.data
        fac = self._factor(A, W)
        C = A.rmatmat(d.X * W[:, None])
        Minv_a, Minv_C = fac.solve(A.rmatvec(W * z)), fac.solve(C)
        S = (d.X * W[:, None]).T @ d.X - C.T @ Minv_C
        return S, Minv_a, Minv_C, fac

    def joint_modes(self, theta: np.ndarray, beta0: np.ndarray, u0: np.ndarray | None) -> Modes:
        d = self.data
        A = self._A(theta)
        u = np.zeros(self.n_re) if u0 is None else u0.copy()
        beta = beta0.copy()
        eta = d.offset + d.X @ beta + A.matvec(u)
        mu, W, r = _irls_quantities(d, eta)
        dr = d.dev_resid(mu)
        pdev = float(dr.sum() + u @ u)
        converged, its = False, 0
        for it in range(1, PIRLS_MAXIT + 1):
            its = it
            z = eta - d.offset + r
            S, Minv_a, Minv_C, _ = self._joint_solve(A, W, z)
            beta_new = np.linalg.solve(S, d.X.T @ (W * z) - Minv_C.T @ A.rmatvec(W * z))
            du, db = Minv_a - Minv_C @ beta_new - u, beta_new - beta
            t = 1.0
            for _ in range(_MAX_HALVINGS):
                u_try, b_try = u + t * du, beta + t * db
                eta_try = d.offset + d.X @ b_try + A.matvec(u_try)
                mu_try = d.family.linkinv(eta_try)
                dr_try = d.dev_resid(mu_try)
                pdev_try = float(dr_try.sum() + u_try @ u_try)
                if pdev_try <= pdev + 1e-10 * (1.0 + abs(pdev)):
                    break
                t *= 0.5
            u, beta, eta, pdev, dr = u_try, b_try, eta_try, pdev_try, dr_try
            mu, W, r = _irls_quantities(d, eta, mu_try)
            if max(np.max(np.abs(t * du), initial=0.0), np.max(np.abs(t * db))) < PIRLS_TOL \
                    and t == 1.0:
                converged = True
                break
        fac = self._factor(A, W)
        return Modes(u, beta, eta, mu, float(dr.sum()), float(u @ u), fac.logdet, converged, its)

    def schur(self, theta: np.ndarray, modes: Modes) -> np.ndarray:
        _, W, _ = _irls_quantities(self.data, modes.eta)
        S, *_ = self._joint_solve(self._A(theta), W, np.zeros_like(W))
        return S

    def agq(self, theta: np.ndarray, modes: Modes, nagq: int) -> float:
        raise ValueError("nagq > 1 is only available for models with a single, scalar "
                         "random-effects term (as in lme4).")

    def blups(self, theta: np.ndarray, modes: Modes) -> tuple[list[np.ndarray], list[np.ndarray]]:
        A = self._A(theta)
        _, W, _ = _irls_quantities(self.data, modes.eta)
        fac = self._factor(A, W)
        blups, condvar, k = [], [], 0
        for b, (off, size) in zip(self.blocks, self._slices):
            lam = block_lambda(theta[k:k + b.n_theta], b.q)
            k += b.n_theta
            U = modes.u[off:off + size].reshape(b.n_levels, b.q)
            blups.append(U @ lam.T)
            if size <= DENSE_MAX:
                E = np.zeros((self.n_re, size))
                E[off + np.arange(size), np.arange(size)] = 1.0
                Minv = np.asarray(fac.solve(E))[off:off + size]
                cov_u = np.stack([Minv[i * b.q:(i + 1) * b.q, i * b.q:(i + 1) * b.q]
                                  for i in range(b.n_levels)])
                condvar.append(np.einsum("ij,gjk,lk->gil", lam, cov_u, lam))
            else:  # the diagonal blocks of a large sparse inverse are not computed
                condvar.append(np.full((b.n_levels, b.q, b.q), np.nan))
        return blups, condvar


def make_backend(spec: ModelSpec, data: GlmmData, *, force_general: bool = False):
    """The batched one-factor backend when the model has one random term, else the general one."""
    if len(spec.blocks) == 1 and not force_general:
        return OneFactorPirls(spec, data)
    return GeneralPirls(spec, data)
