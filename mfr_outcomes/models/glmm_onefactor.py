"""One grouping factor: PIRLS, Laplace and adaptive quadrature batched over its levels."""
from __future__ import annotations

import numpy as np

from mfr_outcomes.models.glmm_pirls import (
    MAX_HALVINGS,
    PIRLS_MAXIT,
    PIRLS_TOL,
    GlmmData,
    Modes,
    irls_quantities,
    laplace_derivs,
    pirls,
)
from mfr_outcomes.models.spec import ModelSpec, block_lambda

__all__ = ["OneFactorPirls"]


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
        self._z2 = self.Z[:, 0] ** 2 if self.q == 1 else None

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

        def step(W, z):
            Wa = W * a
            return np.bincount(g, weights=Wa * z, minlength=G) / \
                (1.0 + np.bincount(g, weights=Wa * a, minlength=G))

        u, eta, mu, W, dr, converged, its = pirls(
            d, d.offset + d.X @ beta, np.zeros(G) if u0 is None else u0.copy(),
            lambda u: a * u[g], step,
            lambda dr, u: np.bincount(g, weights=dr, minlength=G) + u * u)
        M = 1.0 + np.bincount(g, weights=W * a2, minlength=G)
        return Modes(u, beta, eta, mu, float(dr.sum()), float(u @ u), float(np.log(M).sum()),
                     converged, its)

    def _vector_pieces(self, theta: np.ndarray, modes: Modes):
        """q > 1: A, d′, d″, W, W′, M⁻¹ per group, H/2 per group, ∂A/∂θₖ."""
        A = self._A(theta)
        d1, d2, W, W1 = laplace_derivs(self.data, modes.eta, modes.mu)
        M = self._M(A, W)
        K = M if self.data.family.canonical else self._M(A, 0.5 * d2)
        nt = theta.size
        dA = [self.Z @ block_lambda(np.eye(nt)[k], self.q) for k in range(nt)]
        return A, d1, d2, W, W1, M, K, dA

    def _vector_gradient(self, theta: np.ndarray, modes: Modes) -> np.ndarray:
        """The general backend's gradient formula with the per-group q×q blocks of M⁻¹."""
        d, g = self.data, self.g
        A, d1, d2, W, W1, M, K, dA = self._vector_pieces(theta, modes)
        Pv = np.einsum("ilm,im->il", np.linalg.inv(M)[g], A)  # M⁻¹aᵢ
        c = W1 * np.einsum("il,il->i", A, Pv)
        v = 0.5 * self._solve(K, self._gvec(A, c)).ravel()
        resid = d1 + c - d2 * self._eta_rand(A, v)
        grad_theta = [np.dot(resid, self._eta_rand(Ak, modes.u))
                      - np.dot(d1, self._eta_rand(Ak, v))
                      + 2.0 * np.sum(W * np.einsum("il,il->i", Pv, Ak)) for Ak in dA]
        return np.concatenate([grad_theta, d.X.T @ resid])

    def mode_sensitivity(self, theta: np.ndarray, modes: Modes) -> np.ndarray:
        """(n_re, ntheta + p): dû/dx = −H⁻¹ ∂g/∂x per group, to warm-start PIRLS at the
        finite-difference Hessian's points."""
        if self.q != 1:
            d = self.data
            A, d1, d2, _, _, _, K, dA = self._vector_pieces(theta, modes)
            cols = [self._gvec(Ak, d1) + self._gvec(A, d2 * self._eta_rand(Ak, modes.u))
                    for Ak in dA]
            cols += [self._gvec(A, d2 * d.X[:, j]) for j in range(d.X.shape[1])]
            return -0.5 * np.column_stack([self._solve(K, cg).ravel() for cg in cols])
        d, g, G = self.data, self.g, self.G
        z = self.Z[:, 0]
        a = z * theta[0]
        d1, d2, _, _ = laplace_derivs(d, modes.eta, modes.mu)
        H = 2.0 + np.bincount(g, weights=d2 * a * a, minlength=G)
        d2a = d2 * a
        cols = [np.bincount(g, weights=d1 * z + d2a * z * modes.u[g], minlength=G)]
        cols += [np.bincount(g, weights=d2a * d.X[:, j], minlength=G) for j in range(d.X.shape[1])]
        return -np.column_stack(cols) / H[:, None]

    @property
    def has_gradient(self) -> bool:
        """The exact Laplace gradient (scalar, or vector random effects by q×q blocks)."""
        return True

    def laplace_gradient(self, theta: np.ndarray, modes: Modes) -> np.ndarray:
        """Exact gradient over (θ, β) of the Laplace deviance, one scalar random effect.

        At the mode ∂(Σd + ‖u‖²)/∂u = 0, so (envelope theorem) only log|M| feels û's motion:
        dF/dx = ∂F/∂x|_u + Σᵢ ∂log Mᵢ/∂uᵢ · dûᵢ/dx, with dûᵢ/dx = −Hᵢ⁻¹ ∂gᵢ/∂x from the mode
        condition gᵢ = Σⱼ d′ⱼ aⱼ + 2uᵢ = 0 (d the deviance residual, a = θz, Mᵢ = 1 + Σ W a²,
        Hᵢ = Σ d″ a² + 2; W, d′, d″ and W′ from the family's link derivatives). Vector random
        effects: :meth:`_vector_gradient`.
        """
        if self.q != 1:
            return self._vector_gradient(theta, modes)
        d, g, G = self.data, self.g, self.G
        lam = theta[0]
        z, z2 = self.Z[:, 0], self._z2
        d1, d2, W, W1 = laplace_derivs(d, modes.eta, modes.mu)
        Sw = np.bincount(g, weights=W * z2, minlength=G)  # Σ W z² per group
        M = 1.0 + lam * lam * Sw
        # canonical links: d″ = 2W, so H = 2M
        H = 2.0 * M if d.family.canonical else \
            2.0 + lam * lam * np.bincount(g, weights=d2 * z2, minlength=G)
        c = (lam * lam) * W1 * z2 / M[g]
        sH = lam * np.bincount(g, weights=c * z, minlength=G) / H  # (∂ log M/∂u) / H
        zug = z * modes.u[g]
        sHz = sH[g] * z
        v = d1 + c - lam * d2 * sHz
        grad_beta = d.X.T @ v
        # Σ_g sH_g Σ_rows (d″ z u a + d′ z) = Σ_rows sH z (λ d″ z u + d′)
        grad_lam = (np.dot(d1 + c, zug) + 2.0 * lam * np.sum(Sw / M)
                    - np.dot(sHz, lam * d2 * zug + d1))
        return np.concatenate([[grad_lam], grad_beta])

    def modes(self, theta: np.ndarray, beta: np.ndarray, u0: np.ndarray | None) -> Modes:
        if self.q == 1:
            return self._modes_scalar(theta, beta, u0)
        d, q = self.data, self.q
        A = self._A(theta)
        u, eta, mu, W, dr, converged, its = pirls(
            d, d.offset + d.X @ beta, np.zeros(self.n_re) if u0 is None else u0.copy(),
            lambda u: self._eta_rand(A, u),
            lambda W, z: self._solve(self._M(A, W), self._gvec(A, W * z)).ravel(),
            self._pdev_groups, lambda t: np.repeat(t, q))
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
        mu, W, r = irls_quantities(d, eta)
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
            for _ in range(MAX_HALVINGS):
                u_try, b_try = u + t * du, beta + t * db
                eta_try = d.offset + X @ b_try + a * u_try[g]
                mu_try = d.family.linkinv(eta_try)
                dr_try = d.dev_resid(mu_try)
                pdev_try = float(dr_try.sum() + u_try @ u_try)
                if pdev_try <= pdev + 1e-10 * (1.0 + abs(pdev)):
                    break
                t *= 0.5
            u, beta, eta, pdev, dr = u_try, b_try, eta_try, pdev_try, dr_try
            mu, W, r = irls_quantities(d, eta, mu_try)
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
        mu, W, r = irls_quantities(d, eta)
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
            for _ in range(MAX_HALVINGS):
                u_try, b_try = u + t * du, beta + t * db
                eta_try = d.offset + X @ b_try + self._eta_rand(A, u_try)
                mu_try = d.family.linkinv(eta_try)
                dr_try = d.dev_resid(mu_try)
                pdev_try = float(dr_try.sum() + u_try @ u_try)
                if pdev_try <= pdev + 1e-10 * (1.0 + abs(pdev)):
                    break
                t *= 0.5
            u, beta, eta, pdev, dr = u_try, b_try, eta_try, pdev_try, dr_try
            mu, W, r = irls_quantities(d, eta, mu_try)
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
        _, W, _ = irls_quantities(d, modes.eta)
        M = self._M(A, W)
        X = d.X
        C = np.stack([self._gvec(A, W * X[:, j]) for j in range(X.shape[1])], axis=2)
        Minv_C = np.stack([self._solve(M, C[:, :, j]) for j in range(X.shape[1])], axis=2)
        return (X * W[:, None]).T @ X - np.einsum("gqi,gqj->ij", C, Minv_C)

    def cond_cov_u(self, theta: np.ndarray, modes: Modes) -> np.ndarray:
        """(G, q, q) conditional covariances of u per level: (Λ'Z'WZΛ + I)⁻¹ blocks."""
        _, W, _ = irls_quantities(self.data, modes.eta)
        return np.linalg.inv(self._M(self._A(theta), W))

    # ---------------------------------------------------------------- adaptive Gauss–Hermite
    def agq(self, theta: np.ndarray, modes: Modes, nagq: int) -> float:
        """−2 log-likelihood by adaptive Gauss–Hermite quadrature with *nagq* nodes (q = 1).

        On glmer's scale: deviance residuals, not the full log-density, so for binomial data
        with trials (and Poisson) it differs from the Laplace value by the saturated constant.
        """
        d = self.data
        A = self._A(theta)[:, 0]
        _, W, _ = irls_quantities(d, modes.eta)
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
