"""Any random structure: PIRLS with a sparse Z and a dense, eliminated or sparse factorisation."""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla
from scipy.linalg.lapack import dpotrf as _potrf
from scipy.linalg.lapack import dpotrs as _potrs

from mfr_outcomes.models.glmm_pirls import (
    DENSE_MAX,
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

__all__ = ["GeneralPirls"]


def _chol(M: np.ndarray) -> np.ndarray:
    """Lower Cholesky factor by LAPACK directly (scipy's wrappers cost more than the
    factorisation at these sizes)."""
    L, info = _potrf(M, lower=1, clean=1, overwrite_a=0)
    if info != 0:
        raise np.linalg.LinAlgError(f"the matrix is not positive definite (LAPACK info {info})")
    return L


def _chol_solve(L: np.ndarray, b: np.ndarray) -> np.ndarray:
    x, info = _potrs(L, b, lower=1)
    if info != 0:
        raise ValueError(f"LAPACK potrs failed (info {info})")
    return x


class _Factor:
    """Cholesky (dense) or LU (sparse) of the SPD matrix Λ'Z'WZΛ + I."""

    def __init__(self, M, dense: bool):
        self.dense = dense
        if dense:
            self.L = _chol(M)
            self.logdet = float(2.0 * np.sum(np.log(np.diag(self.L))))
        else:
            self.lu = spla.splu(sp.csc_matrix(M), permc_spec="MMD_AT_PLUS_A",
                                diag_pivot_thresh=0.0, options={"SymmetricMode": True})
            self.logdet = float(np.sum(np.log(np.abs(self.lu.U.diagonal()))))

    def solve(self, b: np.ndarray) -> np.ndarray:
        if self.dense:
            return _chol_solve(self.L, b)
        return self.lu.solve(np.asarray(b))

    def row_blocks(self, cols: np.ndarray) -> np.ndarray:
        """(n, k, k): the entries of M⁻¹ at each row's columns (dense factors only)."""
        inv = _chol_solve(self.L, np.eye(self.L.shape[0]))
        return inv[cols[:, :, None], cols[:, None, :]]


class _ElimPlan:
    """Index arrays of the eliminated factorisation, fixed by Z's pattern (built once)."""

    def __init__(self, cols: np.ndarray, G1: int, n_re: int):
        self.G1, self.Q2 = G1, n_re - G1
        self.c1, self.c2 = cols[:, 0], cols[:, 1:] - G1
        k2 = self.c2.shape[1]
        self.k2 = k2
        c2t = np.ascontiguousarray(self.c2.T)  # (k2, n), as the values are stored
        self.idx12 = (self.c1[None, :] * self.Q2 + c2t).ravel()
        self.idx22 = (c2t[:, None, :] * self.Q2 + c2t[None, :, :]).ravel()


class _ElimFactor:
    """Λ'Z'WZΛ + I when the first (largest) factor has one scalar term: its block is diagonal,
    so it is eliminated and only the Schur complement of the other factors is factorised
    (for crossed designs such as respondents × items: a 24×24 matrix instead of 340×340)."""

    def __init__(self, A: _RowSparse, W: np.ndarray, plan: _ElimPlan):
        G1, Q2 = plan.G1, plan.Q2
        v1, v2 = A.valsT[0], A.valsT[1:]  # (n,), (k2, n)
        Wv1 = W * v1
        self.D = 1.0 + np.bincount(plan.c1, weights=Wv1 * v1, minlength=G1)
        self.B = np.bincount(plan.idx12, weights=(Wv1 * v2).ravel(),
                             minlength=G1 * Q2).reshape(G1, Q2)
        Wv2 = W * v2
        M22 = np.bincount(plan.idx22, weights=(Wv2[:, None, :] * v2[None, :, :]).ravel(),
                          minlength=Q2 * Q2).reshape(Q2, Q2)
        M22[np.diag_indices(Q2)] += 1.0
        S = M22 - self.B.T @ (self.B / self.D[:, None])
        self.L = _chol(S)
        self.G1, self.plan = G1, plan
        self.logdet = float(np.sum(np.log(self.D)) + 2.0 * np.sum(np.log(np.diag(self.L))))
        self.dense = True

    def solve(self, b: np.ndarray) -> np.ndarray:
        b = np.asarray(b, dtype=float)
        b1, b2 = b[:self.G1], b[self.G1:]
        D = self.D if b.ndim == 1 else self.D[:, None]
        y2 = _chol_solve(self.L, b2 - self.B.T @ (b1 / D))
        return np.concatenate([(b1 - self.B @ y2) / D, y2])

    def row_blocks(self, cols: np.ndarray) -> np.ndarray:
        """(n, k, k): the entries of M⁻¹ at each row's columns, from the blocks of the inverse:
        S⁻¹ (trailing), −D⁻¹B S⁻¹ (off-diagonal) and the diagonal of D⁻¹ + D⁻¹B S⁻¹ B'D⁻¹
        (the eliminated factor has one column per row, so only that diagonal is needed)."""
        pl = self.plan
        Sinv = _chol_solve(self.L, np.eye(pl.Q2))
        DB = self.B / self.D[:, None]
        M12 = -(DB @ Sinv)
        diag11 = 1.0 / self.D - np.einsum("ij,ij->i", M12, DB)
        P = np.empty((cols.shape[0], pl.k2 + 1, pl.k2 + 1))
        P[:, 0, 0] = diag11[pl.c1]
        off = M12[pl.c1[:, None], pl.c2]
        P[:, 0, 1:] = off
        P[:, 1:, 0] = off
        P[:, 1:, 1:] = Sinv[pl.c2[:, :, None], pl.c2[:, None, :]]
        return P


class _RowSparse:
    """A = ZΛ with a fixed pattern: each row has k non-zeros at ``cols[row]`` (Z's pattern,
    because Λ is block-diagonal by level and lower triangular within a level)."""

    def __init__(self, cols: np.ndarray, colsT: np.ndarray, valsT: np.ndarray, n_re: int):
        # stored column by column ((k, n), contiguous): row gathers and sums are k passes
        self.cols, self.colsT, self.valsT, self.n_re = cols, colsT, valsT, n_re
        self._flat = colsT.ravel()

    @property
    def vals(self) -> np.ndarray:
        """(n, k) values (a view)."""
        return self.valsT.T

    def matvec(self, u: np.ndarray) -> np.ndarray:
        out = self.valsT[0] * u[self.colsT[0]]
        for j in range(1, self.colsT.shape[0]):
            out += self.valsT[j] * u[self.colsT[j]]
        return out

    def rmatvec(self, v: np.ndarray) -> np.ndarray:
        return np.bincount(self._flat, weights=(self.valsT * v).ravel(), minlength=self.n_re)

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
        self._colsT = np.ascontiguousarray(self._cols.T)
        first = spec.blocks[0]
        rest = off - first.n_levels * first.q
        self._eliminate = (len(spec.blocks) > 1 and first.q == 1 and rest <= DENSE_MAX
                           and first.n_levels > rest)
        if self._eliminate:
            self._plan = _ElimPlan(self._cols, first.n_levels, off)
        self._Zq = [(b.Z, b.q, b.n_theta) for b in spec.blocks]

    def _A(self, theta: np.ndarray) -> _RowSparse:
        vals = np.empty(self._colsT.shape)
        j = k = 0
        for Z, q, nt in self._Zq:
            if q == 1:
                np.multiply(Z[:, 0], theta[k], out=vals[j])
            else:
                vals[j:j + q] = (Z @ block_lambda(theta[k:k + nt], q)).T
            j, k = j + q, k + nt
        return _RowSparse(self._cols, self._colsT, vals, self.n_re)

    def _factor(self, A: _RowSparse, W: np.ndarray):
        if self._eliminate:
            return _ElimFactor(A, W, self._plan)
        return _Factor(A.gram_plus_identity(W, self.dense), self.dense)

    def modes(self, theta: np.ndarray, beta: np.ndarray, u0: np.ndarray | None) -> Modes:
        d = self.data
        A = self._A(theta)
        u, eta, mu, W, dr, converged, its = pirls(
            d, d.offset + d.X @ beta, np.zeros(self.n_re) if u0 is None else u0.copy(),
            A.matvec, lambda W, z: self._factor(A, W).solve(A.rmatvec(W * z)),
            lambda dr, u: float(dr.sum() + u @ u))
        fac = self._factor(A, W)
        return Modes(u, beta, eta, mu, float(dr.sum()), float(u @ u), fac.logdet, converged, its,
                     fac)

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
        mu, W, r = irls_quantities(d, eta)
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
            for _ in range(MAX_HALVINGS):
                u_try, b_try = u + t * du, beta + t * db
                eta_try = d.offset + d.X @ b_try + A.matvec(u_try)
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
        fac = self._factor(A, W)
        return Modes(u, beta, eta, mu, float(dr.sum()), float(u @ u), fac.logdet, converged, its,
                     fac)

    @property
    def has_gradient(self) -> bool:
        """The exact Laplace gradient needs entries of (Λ'Z'WZΛ + I)⁻¹: dense or eliminated."""
        return self.dense or self._eliminate

    def laplace_gradient(self, theta: np.ndarray, modes: Modes) -> np.ndarray:
        """Exact gradient over (θ, β) of the Laplace deviance, any random structure.

        F = Σd(η) + ‖û‖² + log|M|, M = A'WA + I, A = ZΛθ, η = o + Xβ + Aû. At the mode the
        penalised deviance is stationary in u (envelope theorem), so dF/dx = ∂F/∂x|ᵤ −
        sᵀH⁻¹ ∂g/∂x, with g = A'd′ + 2u the mode condition, H = A'diag(d″)A + 2I its Jacobian
        and s = ∂log|M|/∂u = A'(W′∘h), h the leverages aᵢ'M⁻¹aᵢ. ∂log|M|/∂x|ᵤ is
        tr(M⁻¹∂M/∂x): Σ W′h ∂η/∂x plus, for θ, 2 Σ Wᵢ aᵢ'M⁻¹(∂aᵢ/∂θ). The one-factor
        backend's scalar gradient is the special case with one column per row.
        """
        d = self.data
        A, d1, d2, W, W1, fac, kfac = self._derivs_at(theta, modes)
        cols, vals = A.cols, A.vals
        Pv = np.einsum("ilm,im->il", fac.row_blocks(cols), vals)  # (M⁻¹aᵢ) at row i's columns
        c = W1 * np.einsum("il,il->i", vals, Pv)
        v = 0.5 * kfac.solve(A.rmatvec(c))
        Av = A.matvec(v)
        grad_beta = d.X.T @ (d1 + c - d2 * Av)
        u = modes.u
        grad_theta = np.zeros(theta.size)
        for k in range(theta.size):
            e = np.zeros(theta.size)
            e[k] = 1.0
            Ak = self._A(e)  # ∂A/∂θₖ (A is linear in θ)
            eta_k = Ak.matvec(u)
            grad_theta[k] = (np.dot(d1 + c - d2 * Av, eta_k) - np.dot(d1, Ak.matvec(v))
                             + 2.0 * np.sum(W * np.einsum("il,il->i", Pv, Ak.vals)))
        return np.concatenate([grad_theta, grad_beta])

    def _derivs_at(self, theta: np.ndarray, modes: Modes):
        """A, the rows' d′, d″, W, W′, the factor of M and that of H/2 = A'diag(d″/2)A + I."""
        A = self._A(theta)
        d1, d2, W, W1 = laplace_derivs(self.data, modes.eta, modes.mu)
        fac = modes.factor if modes.factor is not None else self._factor(A, W)
        kfac = fac if self.data.family.canonical else self._factor(A, 0.5 * d2)
        return A, d1, d2, W, W1, fac, kfac

    def mode_sensitivity(self, theta: np.ndarray, modes: Modes) -> np.ndarray:
        """(n_re, ntheta + p): dû/dx = −H⁻¹ ∂g/∂x (g = A'd′ + 2u), to warm-start PIRLS at a
        nearby x to second order (the finite-difference Hessian's points)."""
        d = self.data
        A, d1, d2, _, _, _, kfac = self._derivs_at(theta, modes)
        G = [A.rmatvec(d2 * d.X[:, j]) for j in range(d.X.shape[1])]
        for k in range(theta.size):
            e = np.zeros(theta.size)
            e[k] = 1.0
            Ak = self._A(e)
            G.insert(k, Ak.rmatvec(d1) + A.rmatvec(d2 * Ak.matvec(modes.u)))
        return -0.5 * np.asarray(kfac.solve(np.column_stack(G)))

    def schur(self, theta: np.ndarray, modes: Modes) -> np.ndarray:
        _, W, _ = irls_quantities(self.data, modes.eta)
        S, *_ = self._joint_solve(self._A(theta), W, np.zeros_like(W))
        return S

    def agq(self, theta: np.ndarray, modes: Modes, nagq: int) -> float:
        raise ValueError("nagq > 1 is only available for models with a single, scalar "
                         "random-effects term (as in lme4).")

    def blups(self, theta: np.ndarray, modes: Modes) -> tuple[list[np.ndarray], list[np.ndarray]]:
        A = self._A(theta)
        _, W, _ = irls_quantities(self.data, modes.eta)
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
