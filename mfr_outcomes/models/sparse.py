"""Engine "sparse": lme4's profiled deviance with a blocked Cholesky factor, for any random structure.

The algebra is lme4's (Bates, Mächler, Bolker & Walker 2015, JSS 67(1), sec. 3) and the blocking
is MixedModels.jl's: the Gram matrix of [Z X y] is formed once; at each θ it is rescaled by Λ and
refactored. Z is partitioned by grouping factor (terms on one factor amalgamated) and the factor
with the most random effects comes first, so its diagonal block is block diagonal (one q×q block
per level) and is factored level by level, vectorised over levels. Its elimination updates the
trailing block (all other factors, X and y) by a fixed sparse matrix times a vector (see
``sparse_struct``), after which the trailing block — small, and dense after fill-in in crossed
designs — gets one dense Cholesky. The last diagonal element of that factor is the penalised
residual sum of squares; β and the modes u are solved once, at the optimum. See
``docs/sparse_engine.md``.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import scipy.linalg as sla
import scipy.sparse as sp
from scipy.linalg.lapack import dpotrf, dpotri

from mfr_outcomes.models.sparse_struct import (
    Structure,
    build_structure,
    cached_model,
    deviance_at_sigma,
    factors_of,
    per_block,
    profiled_sigma,
    trailing_size,
)
from mfr_outcomes.models.spec import (
    EngineResult,
    ModelSpec,
    probe_inside_bounds,
    register_engine,
    theta_lower_bounds,
    theta_start,
)
from mfr_outcomes.models.stacks import bsolve, chol, fsolve
from mfr_outcomes.models.threads import blas_threads

__all__ = ["SparseEngine", "SparseModel", "sparse_model", "MAX_TRAILING"]

#: Largest dense trailing block (all grouping factors but the largest, X and y) accepted.
MAX_TRAILING = 4000
_LOG2PI = np.log(2.0 * np.pi)


# ----------------------------------------------------------------------------------------------
# Batched small-matrix algebra, level axis last: A[i, j] is the vector over levels
# ----------------------------------------------------------------------------------------------
def _bchol(A: np.ndarray) -> np.ndarray:
    """Lower Cholesky factors of a stack (q, q, ℓ); NaN where a matrix is not positive definite."""
    with np.errstate(invalid="ignore"):
        return chol(A)


_bfsolve, _bbsolve = fsolve, bsolve


def _sandwich(M: np.ndarray, A: np.ndarray, N: np.ndarray) -> np.ndarray:
    """M A N for fixed small M (r, q), N (q', s) and a stack A (q, q', ℓ): two matrix products
    with the level axis as the long one (einsum's batched path copies and is several times
    slower at ~10⁵ levels)."""
    q, q2, nl = A.shape
    tmp = (M @ np.ascontiguousarray(A).reshape(q, q2 * nl)).reshape(M.shape[0], q2, nl)
    return np.matmul(N.T[None], tmp)


def _stack_mul(G: np.ndarray, B: np.ndarray, transpose: bool = False) -> np.ndarray:
    """G_l B_l (G_lᵀ B_l when *transpose*) for stacks G (q, q, ℓ), B (q, r, ℓ), as q
    broadcast products of (r, ℓ) slices."""
    out = None
    for a in range(G.shape[1]):
        g = G[a, :, None, :] if transpose else G[:, a, None, :]  # (q, 1, ℓ)
        term = g * B[a][None]
        out = term if out is None else out + term
    return out


def _eye_stack(q: int, n: int) -> np.ndarray:
    return np.broadcast_to(np.eye(q)[:, :, None], (q, q, n)).copy()


# ----------------------------------------------------------------------------------------------
# One evaluation
# ----------------------------------------------------------------------------------------------
@dataclass
class _Eval:
    theta: np.ndarray
    ok: bool
    L1: np.ndarray | None = None  # (q1, q1, ℓ1)
    C: np.ndarray | None = None  # (m, m) lower Cholesky factor of the trailing block
    ldL2: float = np.inf
    ldRX2: float = np.inf
    pwrss: float = np.inf
    inverse: tuple[int, np.ndarray] | None = None  # (cut, S_c⁻¹), see _trailing_inverse


def _scale_rest(S: np.ndarray, st: Structure, lams: list[np.ndarray], transpose: bool) -> None:
    """S ← Λ_rᵀ S Λ_r in place (Λ_r S Λ_rᵀ when *transpose*), Λ_r = diag(Λ_k ⊗ I, I_{p+1})."""
    m = S.shape[0]
    for f, off, lam in zip(st.rest, st.rest_offset, lams):
        seg = slice(off, off + f.size)
        if f.q == 1:
            S[seg, :] *= lam[0, 0]
            S[:, seg] *= lam[0, 0]
            continue
        M = lam if transpose else lam.T  # rows: new[l, i] = Σ_j M[i, j] old[l, j]
        rows = S[seg, :].reshape(f.n_levels, f.q, m)
        S[seg, :] = np.einsum("ij,ljm->lim", M, rows).reshape(f.size, m)
        cols = S[:, seg].reshape(m, f.n_levels, f.q)
        S[:, seg] = np.einsum("mlj,ij->mli", cols, M).reshape(m, f.size)


def _thin_qr(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """X = QR, Q with orthonormal columns: CholeskyQR2 (Fukaya et al. 2014: R from the Cholesky
    factor of XᵀX, once more on Q to restore orthogonality; two passes of n p² flops, 10-20x
    faster than Householder at n ~ 10⁵) when X is well enough conditioned for it (cond(X) well
    below 1/√ε, judged from the first factor), else Householder."""
    n, p = X.shape
    if p == 0 or n < 4 * p:
        return np.linalg.qr(X)
    try:
        R1 = np.linalg.cholesky(X.T @ X).T
        d = np.abs(np.diag(R1))
        if d.min() <= 1e-5 * d.max():  # near-collinear columns: CholeskyQR2 may lose them
            raise np.linalg.LinAlgError
        # X R⁻¹ as one matrix product (a triangular solve with n right-hand sides of length p
        # is several times slower); the second pass mends what the explicit inverse loses
        Q1 = X @ sla.solve_triangular(R1, np.eye(p), check_finite=False)
        R2 = np.linalg.cholesky(Q1.T @ Q1).T
    except np.linalg.LinAlgError:
        return np.linalg.qr(X)
    Q = Q1 @ sla.solve_triangular(R2, np.eye(p), check_finite=False)
    if np.max(np.abs(Q.T @ Q - np.eye(p))) > 1e-12:  # the diagonal understated cond(X)
        return np.linalg.qr(X)
    return Q, R2 @ R1


class SparseModel:
    """The fixed structure of one ModelSpec and the profiled deviance at any θ."""

    def __init__(self, spec: ModelSpec):
        self.spec = spec
        self.n, self.p = spec.n, spec.p
        # The deviance is unchanged when X is replaced by Q = X R⁻¹ (orthonormal columns; log|R_X|²
        # shifts by the constant log|R|²) and y by its residual from X (β shifts). Both shrink the
        # cancellation in the trailing block's X and y entries by orders of magnitude.
        Q, R = _thin_qr(spec.X)
        self._R = R
        self._Q = Q
        qty = Q.T @ spec.y
        self._beta_ols = sla.solve_triangular(R, qty, check_finite=False)
        self._ldR2 = 2.0 * float(np.sum(np.log(np.abs(np.diag(R)))))
        self.st_y = spec.y - Q @ qty
        self._setup(build_structure(spec, X=Q, y=self.st_y))

    def _setup(self, st: Structure) -> None:
        """The state of a model of structure *st* (a hook: ``scale.gram`` builds *st* from
        aggregated Gram blocks instead of rows)."""
        self.st = st
        self._last: _Eval | None = None
        self._symmetric = any(f.q > 1 for f in self.st.rest)
        self._diag_z = np.arange(self.st.mZ) * (self.st.m + 1)
        self._Bxf: np.ndarray | None = None
        self._gram_y: tuple[np.ndarray, np.ndarray] | None = None
        self.n_gradients = 0
        self._grad_cache: tuple | None = None
        self.methods_used: set[str] = set()
        self.ai_at: tuple[bytes, np.ndarray] | None = None  # (θ, AI Hessian) where Newton ended

    # -- per evaluation -------------------------------------------------------------------
    def evaluate(self, theta: np.ndarray) -> _Eval:
        theta = np.asarray(theta, dtype=float)
        if self._last is not None and np.array_equal(theta, self._last.theta):
            return self._last
        st = self.st
        f1 = st.first
        lam1 = f1.lam(theta)
        if f1.q == 1:
            t = lam1[0, 0]
            d = t * t * st.A11[0, 0] + 1.0
            L1 = np.sqrt(d)[None, None, :]
            w = (t * t / d)[:, None]
            G = (t / L1[0, 0])[None, None, :]
        else:
            L1 = _bchol(_sandwich(lam1.T, st.A11, lam1) + _eye_stack(f1.q, f1.n_levels))
            G = _bfsolve(L1, np.broadcast_to(lam1.T[:, :, None], L1.shape).copy())  # L⁻¹Λᵀ
            w = np.stack([np.einsum("kl,kl->l", G[:, a], G[:, b]) for a, b in st.w_index],
                         axis=1)
        ev = _Eval(theta=theta.copy(), ok=False)
        if not np.all(np.isfinite(L1)):
            self._last = ev
            return ev
        S = st.Arr.copy()
        # T stays in CSC (its transpose serves the gradient as CSR): the product's scatter costs
        # ~0.7 ms more per evaluation than a CSR copy would, which takes ~27 ms to make (InstEval)
        if st.T.shape[0]:
            S.flat[st.pair_flat] -= st.T @ w[st.level_order].ravel()
        # the rows of X and y, W_l = G_lᵀG_l: Σ_l [X y]ᵀZ_l W_l Z_lᵀ[X y] as one product over all
        # levels, and the cross block Σ_l Z_rᵀZ_l W_l Z_lᵀ[X y] as the sparse B_Z times W_l B_x,l
        mZ = st.mZ
        if f1.q > 1:
            H = _stack_mul(G, st.Bx)  # G_l B_x,l
            S[mZ:, mZ:] -= sum(H[b] @ H[b].T for b in range(f1.q))
            if mZ:  # (ℓ1, q1, p + 1): W_l B_x,l = G_lᵀ G_l B_x,l
                HW = _stack_mul(G, H, transpose=True).transpose(2, 0, 1)
        else:
            H = st.Bx[0] * G[0, 0]
            S[mZ:, mZ:] -= H @ H.T
            if mZ:
                HW = (st.Bx[0] * w[:, 0]).T[:, None, :]
        if mZ:
            S[mZ:, :mZ] -= (st.Bz @ np.ascontiguousarray(HW).reshape(-1, st.p + 1)).T
        if self._symmetric:
            il = np.tril_indices(st.m, -1)
            S[il[1], il[0]] = S[il]
        _scale_rest(S, st, [f.lam(theta) for f in st.rest], transpose=False)
        S.flat[self._diag_z] += 1.0
        # S is C-ordered with its lower triangle set: LAPACK sees that as the upper triangle of
        # the F-ordered Sᵀ, factored in place (no transposing copy); C = Uᵀ is the lower factor
        U, info = dpotrf(S.T, lower=0, clean=0, overwrite_a=1)
        if info != 0:
            self._last = ev
            return ev
        C = U.T
        dg = np.diag(C)
        p = st.p
        ev.ok = True
        ev.L1, ev.C = L1, C
        ev.ldL2 = 2.0 * float(np.sum(np.log(np.diagonal(L1, axis1=0, axis2=1)))) + \
            2.0 * float(np.sum(np.log(dg[:mZ])))
        ev.ldRX2 = 2.0 * float(np.sum(np.log(np.abs(dg[mZ:mZ + p])))) + self._ldR2
        ev.pwrss = max(float(dg[-1]) ** 2, 1e-300)
        self._last = ev
        return ev

    def objective(self, theta: np.ndarray, reml: bool) -> float:
        ev = self.evaluate(theta)
        if not ev.ok:
            return np.inf
        if reml:
            nmp = self.n - self.p
            return ev.ldL2 + ev.ldRX2 + nmp * (1.0 + _LOG2PI + np.log(ev.pwrss / nmp))
        return ev.ldL2 + self.n * (1.0 + _LOG2PI + np.log(ev.pwrss / self.n))

    def sigma(self, theta: np.ndarray, reml: bool) -> float:
        return profiled_sigma(self, theta, reml)

    def deviance_varpar(self, varpar: np.ndarray, reml: bool) -> float:
        """lmerTest's ``devfun_vp``: the deviance at (θ, σ), not profiled over σ."""
        return deviance_at_sigma(self, varpar, reml)

    def _rx(self, ev: _Eval) -> np.ndarray:
        mZ, p = self.st.mZ, self.p
        return np.tril(ev.C[mZ:mZ + p, mZ:mZ + p])  # R̃_Xᵀ (dpotrf leaves the upper part)

    def vcov_beta(self, varpar: np.ndarray) -> np.ndarray:
        """σ² (R_XᵀR_X)⁻¹ at varpar = (θ, σ) — lmerTest's ``get_covbeta``."""
        varpar = np.asarray(varpar, dtype=float)
        ev = self.evaluate(varpar[:-1])
        if not ev.ok:
            return np.full((self.p, self.p), np.nan)
        # R_X of the original X is R̃_X R (R from X = QR): (R_XᵀR_X)⁻¹ = R⁻¹(R̃_XᵀR̃_X)⁻¹R⁻ᵀ
        Li = sla.solve_triangular(self._R.T @ self._rx(ev), np.eye(self.p), lower=True,
                                  check_finite=False)
        return varpar[-1] ** 2 * (Li.T @ Li)

    def beta(self, theta: np.ndarray) -> np.ndarray:
        ev = self.evaluate(theta)
        mZ, p = self.st.mZ, self.p
        cb = ev.C[-1, mZ:mZ + p]
        g = sla.solve_triangular(self._rx(ev), cb, lower=True, trans="T", check_finite=False)
        return self._beta_ols + sla.solve_triangular(self._R, g, check_finite=False)

    # -- once, at the optimum ------------------------------------------------------------
    def random_modes(self, theta: np.ndarray, sigma: float, condvar: bool = True
                     ) -> tuple[list[np.ndarray], list[np.ndarray] | None]:
        """Conditional modes b = Λu per spec block (ℓ, q), and σ²Λ(M⁻¹)_diag Λᵀ per level."""
        st, spec = self.st, self.spec
        ev = self.evaluate(theta)
        f1 = st.first
        mZ, q1, l1 = st.mZ, f1.q, f1.n_levels
        lam1 = f1.lam(theta)
        lams = [f.lam(theta) for f in st.rest]
        z1r, r2 = self._z_resid(self.beta(theta))
        r1 = lam1.T @ z1r
        r2 = _apply_lam(r2, st, lams, transpose=False)
        Bz = st.Bz  # (mZ, ℓ1 q1), column l q1 + a
        L1 = ev.L1
        dinv_r1 = _bbsolve(L1, _bfsolve(L1, r1))

        def c_mul(x: np.ndarray) -> np.ndarray:  # C x, C = Λ_rᵀ B_Z Λ1, x (q1, ℓ1)
            return _apply_lam(Bz @ (lam1 @ x).T.ravel(), st, lams, transpose=False)

        def ct_mul(v: np.ndarray) -> np.ndarray:  # Cᵀ v -> (q1, ℓ1)
            t = Bz.T @ _apply_lam(v, st, lams, transpose=True)
            return lam1.T @ t.reshape(l1, q1).T

        LZ = ev.C[:mZ, :mZ]
        u2 = sla.cho_solve((LZ, True), r2 - c_mul(dinv_r1), check_finite=False) if mZ else \
            np.zeros(0)
        u1 = _bbsolve(L1, _bfsolve(L1, r1 - (ct_mul(u2) if mZ else 0.0)))
        b_first = lam1 @ u1  # (q1, ℓ1)
        b_rest = [lam @ u2[off:off + f.size].reshape(f.n_levels, f.q).T
                  for f, off, lam in zip(st.rest, st.rest_offset, lams)]
        cv_first = cv_rest = None
        if condvar:
            cv_first, cv_rest = self._condvar(ev, lam1, lams, sigma)
        return per_block(spec, [f1] + st.rest, [b_first] + b_rest,
                          None if not condvar else [cv_first] + cv_rest)

    def _z_resid(self, beta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Zᵀ(y − Xβ): the first factor's (q1, ℓ1) and the rest's (mZ,), from the rows."""
        st, spec = self.st, self.spec
        f1 = st.first
        resid = spec.y - spec.X @ beta
        z1r = np.stack([np.bincount(f1.codes, f1.Z[:, a] * resid, minlength=f1.n_levels)
                        for a in range(f1.q)])
        return z1r, np.asarray(st.Vz.T @ resid)

    def _condvar(self, ev: _Eval, lam1: np.ndarray, lams: list[np.ndarray], sigma: float):
        Minv, rest = self._inverse_blocks(ev, lam1, lams, self.st.mZ)
        cv_first = sigma ** 2 * _sandwich(lam1, Minv, lam1.T)
        cv_rest = [sigma ** 2 * np.einsum("ia,lab,jb->ijl", lam, blk, lam)
                   for lam, blk in zip(lams, rest)]
        return cv_first, cv_rest

    def _inverse_blocks(self, ev: _Eval, lam1: np.ndarray, lams: list[np.ndarray], cut: int
                        ) -> tuple[np.ndarray, list[np.ndarray]]:
        """The diagonal level blocks of Ω_c⁻¹, Ω_c the leading *cut* trailing columns plus the
        first factor (cut = m_Z: the random effects, M = ΛᵀZᵀZΛ + I; cut = m_Z + p: with X).

        Returns the first factor's blocks (q1, q1, ℓ1) and each other factor's (ℓ, q, q). The
        trailing part of the inverse is S_c⁻¹ (LAPACK dpotri on the factor, once); the first
        factor's blocks are D_l⁻¹ + D_l⁻¹C_lᵀS_c⁻¹C_lD_l⁻¹ for all levels at once through Tᵀ.
        """
        st = self.st
        f1, mZ, m = st.first, st.mZ, st.m
        Linv = _bfsolve(ev.L1, _eye_stack(f1.q, f1.n_levels))
        Dinv = np.einsum("kal,kbl->abl", Linv, Linv)
        if cut == 0:
            return Dinv, []
        Sinv = self._trailing_inverse(ev, cut)  # C-ordered, lower triangle valid
        twice = np.where(st.pair_r > st.pair_s, 2.0, 1.0)
        if all(f.q == 1 for f in st.rest):
            # scalar factors: Λ_r is diagonal, so read the lower triangle dpotri wrote, scaled
            dg = np.zeros(m)
            for f, off, lam in zip(st.rest, st.rest_offset, lams):
                dg[off:off + f.size] = lam[0, 0]
            dg[mZ:cut] = 1.0
            r, c = st.pair_r, st.pair_s  # all inside: T's pairs are random-effect rows
            pr = Sinv.ravel()[r * cut + c] * dg[r] * dg[c] * twice
            pxz = Sinv[mZ:cut, :mZ] * dg[:mZ]  # below the diagonal: valid as dpotri wrote it
            diag = np.diagonal(Sinv)
            rest = [diag[off:off + f.size].reshape(f.n_levels, 1, 1)
                    for f, off in zip(st.rest, st.rest_offset)]
            pxx = Sinv[mZ:cut, mZ:cut]
            pxx = np.tril(pxx) + np.tril(pxx, -1).T
        else:  # (filling the upper triangle leaves the kept inverse valid)
            iu = np.triu_indices(cut, 1)
            Sinv[iu] = Sinv[iu[1], iu[0]]
            rest = []
            for f, off in zip(st.rest, st.rest_offset):
                blk = Sinv[off:off + f.size, off:off + f.size].reshape(f.n_levels, f.q,
                                                                        f.n_levels, f.q)
                rest.append(blk[np.arange(f.n_levels), :, np.arange(f.n_levels), :])
            P = np.zeros((m, m))
            P[:cut, :cut] = Sinv
            _scale_rest(P, st, lams, transpose=True)  # Λ_r S⁻¹ Λ_rᵀ
            pr = P.flat[st.pair_flat] * twice
            pxx = P[mZ:cut, mZ:cut]
            pxz = P[mZ:cut, :mZ]
        K = np.zeros((f1.q, f1.q, f1.n_levels))
        if pr.size:
            kv = np.empty((f1.n_levels, st.nw))
            kv[st.level_order] = (self._tt() @ pr).reshape(f1.n_levels, st.nw)
            for comp, (a, b) in enumerate(st.w_index):
                K[a, b] = K[b, a] = kv[:, comp] * (1.0 if a == b else 0.5)
        if cut > mZ:  # the rows of X (T holds the random-effect pairs only)
            bx = st.Bx[:, :cut - mZ]
            hx = np.einsum("ajl,jk->akl", bx, pxx)
            K += np.einsum("ajl,bjl->abl", hx, bx)
            if mZ:  # the cross part B_Zᵀ P_ZX B_X and its transpose
                Y = np.asarray(st.Bz.T @ pxz.T).reshape(f1.n_levels, f1.q, cut - mZ)
                kc = np.einsum("laj,bjl->abl", Y, bx)
                K += kc + kc.transpose(1, 0, 2)
        DK = np.einsum("abl,bc,cdl->adl", Dinv, lam1.T, K, optimize=True)
        Minv = Dinv + np.einsum("abl,bc,cdl->adl", DK, lam1, Dinv, optimize=True)
        return Minv, rest

    def _trailing_inverse(self, ev: _Eval, cut: int) -> np.ndarray:
        """S_c⁻¹ for the leading *cut* columns of the trailing block at ev's θ, lower triangle
        valid (C-ordered). LAPACK dpotri on the factor, kept per evaluation: the REML gradient's
        inverse (cut = m_Z + p) gives the conditional variances' (cut = m_Z) by the rank-p identity
        (S_Z)⁻¹ = P_ZZ − P_ZXP_XX⁻¹P_XZ, P = S_c⁻¹, instead of a second dpotri."""
        if ev.inverse is not None and ev.inverse[0] == cut:
            return ev.inverse[1]
        if ev.inverse is not None and ev.inverse[0] > cut:
            P = ev.inverse[1]
            E = P[cut:ev.inverse[0], :cut]
            F = np.tril(P[cut:ev.inverse[0], cut:ev.inverse[0]])
            F = F + np.tril(F, -1).T
            out = P[:cut, :cut] - E.T @ np.linalg.solve(F, E)
            return out
        # the factor's Fortran-ordered upper form (Cᵀ): no transposing copy for LAPACK
        Ui, info = dpotri(ev.C.T[:cut, :cut], lower=0)
        if info != 0:
            raise np.linalg.LinAlgError(f"dpotri failed ({info})")
        ev.inverse = (cut, Ui.T)
        return Ui.T

    # -- the gradient ---------------------------------------------------------------------
    def modes_u(self, theta: np.ndarray) -> list[np.ndarray]:
        """The spherical modes u per factor (first, then rest), each (q, ℓ), from the factor."""
        st = self.st
        ev = self.evaluate(theta)
        f1, mZ, p = st.first, st.mZ, st.p
        c = mZ + p
        x = _cut_solve(ev.C, ev.C[-1, :c], trans=True)
        lams = [f.lam(theta) for f in st.rest]
        v = np.empty(st.m)
        v[:mZ] = _apply_lam(x[:mZ], st, lams, transpose=True)
        v[mZ:c] = x[mZ:]
        v[-1] = -1.0
        t = -self._bt_mul(v).reshape(f1.n_levels, f1.q).T  # (q1, ℓ1): Λ1ᵀ-less rhs
        lam1 = f1.lam(theta)
        u1 = _bbsolve(ev.L1, _bfsolve(ev.L1, lam1.T @ t))
        return [u1] + [x[off:off + f.size].reshape(f.n_levels, f.q).T
                       for f, off in zip(st.rest, st.rest_offset)]

    def _bxf(self) -> np.ndarray:
        """B_X as one (p + 1, ℓ1 q1) matrix, column l q1 + a (kept)."""
        if self._Bxf is None:
            st = self.st
            self._Bxf = np.ascontiguousarray(st.Bx.transpose(1, 2, 0)).reshape(st.p + 1, -1)
        return self._Bxf

    def _bt_mul(self, v: np.ndarray) -> np.ndarray:
        """Bᵀv for v (m,) or (m, r): B (m × ℓ1 q1) the Gram matrix's trailing rows (Z_rest, X,
        y) in the first factor's columns (column l q1 + a); sparse B_Z, dense B_X."""
        mZ = self.st.mZ
        return np.asarray(self.st.Bz.T @ v[:mZ]) + self._bxf().T @ v[mZ:]

    def _b_mul(self, c: np.ndarray) -> np.ndarray:
        """B c for c (ℓ1 q1, r) -> (m, r)."""
        bx = self._bxf() @ c
        return np.concatenate([np.asarray(self.st.Bz @ c).reshape((self.st.mZ,) + bx.shape[1:]),
                               bx])

    def _tt(self) -> sp.csr_matrix:
        """Tᵀ in CSR: the same arrays as T in CSC, no copy."""
        return self.st.T.T.tocsr()

    def gradient(self, theta: np.ndarray, reml: bool) -> np.ndarray | None:
        """The analytic gradient of :meth:`objective` in θ, or None where it does not apply.

        With Λ invertible, ΛᵀAΛ = Ω − J gives ∂log|Ω_c|/∂θ_t = 2[ℓ_k(Λ_k⁻¹)_ji −
        (G_kΛ_k⁻¹)_ji] for θ_t at Λ_k[i, j], G_k the sum over levels of the diagonal blocks of
        Ω_c⁻¹ (``_inverse_blocks``), and ∂r²/∂θ_t = −2(Λ_k⁻ᵀU_k)_ij, U_k = Σ_l u_l u_lᵀ (the
        envelope theorem with ZᵀΛᵀr = u). The criterion is log|Ω_c| + N log r² + const
        (REML: c with X, N = n − p; ML: c = Z alone, N = n). A scalar factor at θ = 0 has
        derivative 0 (the criterion is even in it); a vector factor with a singular Λ_k gives None
        (the caller then differences).
        """
        theta = np.asarray(theta, dtype=float)
        key = (theta.tobytes(), bool(reml))
        if self._grad_cache is not None and self._grad_cache[0] == key:
            return self._grad_cache[1]
        g = self._gradient(theta, reml)
        self._grad_cache = (key, g)
        return g

    def has_gradient(self, theta: np.ndarray, reml: bool) -> bool:
        """Whether :meth:`gradient` at (θ, reml) is kept from the last call (costs nothing)."""
        key = (np.asarray(theta, dtype=float).tobytes(), bool(reml))
        return self._grad_cache is not None and self._grad_cache[0] == key

    def _gradient(self, theta: np.ndarray, reml: bool) -> np.ndarray | None:
        ev = self.evaluate(theta)
        if not ev.ok:
            return None
        st = self.st
        factors = [st.first] + st.rest
        lams = [f.lam(theta) for f in factors]
        for f, lam in zip(factors, lams):
            if f.q > 1 and np.any(np.diag(lam) == 0.0):
                return None
        cut = st.mZ + (st.p if reml else 0)
        Minv, rest = self._inverse_blocks(ev, lams[0], lams[1:], cut)
        Gs = [Minv.sum(axis=2)] + [blk.sum(axis=0) for blk in rest]
        us = self.modes_u(theta)
        N = self.n - self.p if reml else self.n
        r2 = ev.pwrss
        g = np.zeros(theta.size)
        for f, lam, G, u in zip(factors, lams, Gs, us):
            if f.q == 1 and lam[0, 0] == 0.0:
                continue
            Li = np.linalg.inv(lam)
            dld = 2.0 * (f.n_levels * Li - G @ Li).T  # [i, j] ← (·)_ji
            dr2 = -2.0 * Li.T @ (u @ u.T)
            d = dld + (N / r2) * dr2
            for t, (i, j) in zip(f.theta_index, f.theta_pos):
                g[t] = d[i, j]
        return g

    def _gram_apply(self, c1: np.ndarray, ct: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """[Z_1 Z_r X y]ᵀ w for w = Z_1 c1 + [Z_r X y] ct, from the Gram matrix alone: c1 is
        (ℓ1 q1, r) (row l q1 + a), ct (m, r); returns the first factor's and the trailing part."""
        st = self.st
        q1, l1, r = st.first.q, st.first.n_levels, c1.shape[1]
        a = c1.reshape(l1, q1, r)
        g1 = np.zeros((l1, q1, r))
        for i in range(q1):
            for j in range(q1):
                g1[:, i, :] += st.A11[i, j][:, None] * a[:, j, :]
        return g1.reshape(l1 * q1, r) + self._bt_mul(ct), self._b_mul(c1) + st.Arr @ ct

    def _pls_fit(self, theta: np.ndarray, g1: np.ndarray, gt: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray]:
        """The penalised least-squares fit at θ (the factor of :meth:`evaluate`) of responses w
        given by their Gram vectors g1 = Z_1ᵀw (ℓ1 q1, r) and gt = [Z_r X y]ᵀw (m, r): the fitted
        values Xβ̂ + Zb̂ as coefficients (f1, ft) of Z_1 and [Z_r X y], as in :meth:`_gram_apply`."""
        st = self.st
        ev = self.evaluate(theta)
        f1, mZ, p = st.first, st.mZ, st.p
        c, q1, l1, r = mZ + p, f1.q, f1.n_levels, g1.shape[1]
        lam1 = f1.lam(theta)
        lams = [f.lam(theta) for f in st.rest]

        def lev(M: np.ndarray) -> np.ndarray:  # (ℓ1 q1, r) -> (q1, r, ℓ1)
            return M.reshape(l1, q1, r).transpose(1, 2, 0)

        def flat(M: np.ndarray) -> np.ndarray:  # (q1, r, ℓ1) -> (ℓ1 q1, r)
            return M.transpose(2, 0, 1).reshape(l1 * q1, r)

        rhs1 = np.tensordot(lam1.T, lev(g1), 1)  # Λ1ᵀZ1ᵀw
        h = _bbsolve(ev.L1, _bfsolve(ev.L1, rhs1))  # D⁻¹ rhs1
        bh = self._b_mul(flat(np.tensordot(lam1, h, 1)))
        bh[:mZ] = _apply_lam(bh[:mZ], st, lams, transpose=False)
        rhs_r = gt[:c].copy()
        rhs_r[:mZ] = _apply_lam(rhs_r[:mZ], st, lams, transpose=False)
        x = _cut_solve(ev.C, rhs_r - bh[:c], trans=False)
        x = _cut_solve(ev.C, x, trans=True)
        v = np.zeros((st.m, r))
        v[:mZ] = _apply_lam(x[:mZ], st, lams, transpose=True)
        v[mZ:c] = x[mZ:]
        t = lev(self._bt_mul(v))
        b1 = np.tensordot(lam1, _bbsolve(ev.L1, _bfsolve(ev.L1, rhs1 - np.tensordot(lam1.T, t, 1))),
                          1)
        return flat(b1), v

    def average_information(self, theta: np.ndarray, reml: bool) -> np.ndarray | None:
        """An approximation of the Hessian of :meth:`objective` for Newton steps: the average
        information of Gilmour, Thompson & Cullis (1995, Biometrics 51), AI_ij = ½ w_iᵀPw_j with
        w_i = (∂V/∂φ_i)Py in φ = (θ, σ²), V = σ²(ZΛΛᵀZᵀ + I), profiled over σ² (a Schur
        complement) and doubled (the deviance scale).

        Py = e/σ² (e the penalised residual), (∂V/∂θ_t)Py = Z(∂ΛΛᵀ + Λ∂Λᵀ)Zᵀe, (∂V/∂σ²)Py =
        (y − Xβ̂)/σ², and Pw = e(w)/σ². Every w is a combination of the columns of [Z X y], so all
        of it is done on the Gram matrix with the factor at hand: no pass over the rows, no
        inverse. None if it fails.
        """
        st = self.st
        ev = self.evaluate(theta)
        if not ev.ok:
            return None
        f1, mZ, c, m = st.first, st.mZ, st.mZ + st.p, st.m
        n1 = f1.size
        sigma2 = ev.pwrss / (self.n - self.p if reml else self.n)
        # e = y − fit(y), on the Gram matrix
        if self._gram_y is None:
            cy = np.zeros((m, 1))
            cy[-1] = 1.0
            self._gram_y = self._gram_apply(np.zeros((n1, 1)), cy)
        gy1, gyt = self._gram_y
        fy1, fyt = self._pls_fit(theta, gy1, gyt)
        gf1, gft = self._gram_apply(fy1, fyt)
        zte1 = (gy1 - gf1)[:, 0].reshape(f1.n_levels, f1.q).T  # Z_1ᵀe (q1, ℓ1)
        zter = (gyt - gft)[:mZ, 0]
        k = theta.size
        C1 = np.zeros((n1, k + 1))
        Ct = np.zeros((m, k + 1))
        for f, off, C in [(f1, 0, C1)] + [(f, off, Ct) for f, off in
                                            zip(st.rest, st.rest_offset)]:
            lam = f.lam(theta)
            zte = zte1 if f is f1 else zter[off:off + f.size].reshape(f.n_levels, f.q).T
            for t, (i, j) in zip(f.theta_index, f.theta_pos):
                dl = np.zeros((f.q, f.q))
                dl[i, j] = 1.0
                C[off:off + f.size, t] = ((dl @ lam.T + lam @ dl.T) @ zte).T.ravel()
        Ct[mZ:c, k] = -fyt[mZ:c, 0] / sigma2  # (y − Xβ̂)/σ²
        Ct[-1, k] = 1.0 / sigma2
        G1, Gt = self._gram_apply(C1, Ct)
        F1, Ft = self._pls_fit(theta, G1, Gt)
        ww = C1.T @ G1 + Ct.T @ Gt  # w_iᵀw_j
        fw = F1.T @ G1 + Ft.T @ Gt  # fit(w_j)ᵀw_i at [j, i]
        A0 = (ww - fw.T) / sigma2  # w_iᵀPw_j
        A = 0.25 * (A0 + A0.T)
        if not np.all(np.isfinite(A)) or A[k, k] <= 0:
            return None
        return 2.0 * (A[:k, :k] - np.outer(A[:k, k], A[k, :k]) / A[k, k])

def _cut_solve(C: np.ndarray, b: np.ndarray, trans: bool) -> np.ndarray:
    """Solve C_c x = b (C_cᵀ x = b when *trans*) for the leading c×c block C_c of a lower
    triangular C, without copying the block: b (c or c × r) padded with zeros solves the same
    leading equations with all of C (the padded unknowns are zero)."""
    c = b.shape[0]
    if c == 0:
        return b.copy()
    bb = np.zeros((C.shape[0],) + b.shape[1:])
    bb[:c] = b
    return sla.solve_triangular(C, bb, lower=True, trans="T" if trans else "N",
                                check_finite=False)[:c]


def _apply_lam(v: np.ndarray, st: Structure, lams: list[np.ndarray], transpose: bool
               ) -> np.ndarray:
    """Λ_rᵀ v (Λ_r v when *transpose*) for v (mZ, or mZ × r) over the random columns of the rest."""
    out = np.array(v, dtype=float, copy=True)
    for f, off, lam in zip(st.rest, st.rest_offset, lams):
        M = lam if transpose else lam.T
        seg = slice(off, off + f.size)
        if f.q == 1:
            out[seg] *= M[0, 0]
            continue
        blk = out[seg].reshape((f.n_levels, f.q) + out.shape[1:])
        out[seg] = np.einsum("lj...,ij->li...", blk, M).reshape(out[seg].shape)
    return out


_MODELS: OrderedDict[int, tuple[ModelSpec, SparseModel]] = OrderedDict()


def sparse_model(spec: ModelSpec) -> SparseModel:
    """A (cached) :class:`SparseModel` for *spec*; the cache keeps the last few specs."""
    return cached_model(_MODELS, spec, SparseModel)


# ----------------------------------------------------------------------------------------------
# Optimisation
# ----------------------------------------------------------------------------------------------
def moment_start(model: SparseModel) -> np.ndarray:
    """lme4's start (identity Λ) with each scalar factor's θ set from one-way moment estimates.

    For a factor with one column z, the residual r of y on X and level sums s_l = Σ z r, w_l =
    Σ z²: under r = z b_l + e, E[s_l²/w_l] = σ_b² w_l + σ², so with the within-level variance
    σ_w² = (rᵀr − Σ s_l²/w_l)/(n − p − ℓ), σ_b² ≈ (Σ s_l²/w_l − ℓσ_w²)/Σ w_l. The residual
    variance is what the factors leave of rᵀr/(n − p), σ² = rᵀr/(n − p) − Σ σ_b² (at least a
    quarter of the smallest σ_w², as nested factors count the same variance twice), and
    θ = σ_b/σ, kept within [0.05, 5] (never 0: a scalar θ at 0 has derivative 0 and would stay
    there). A start, not an estimate: on InstEval it is within 20 % of the optimum and Newton
    needs 4 steps instead of 8. A vector factor starts from the moment estimate of its covariance
    (``_vector_moments``, masked to its blocks, eigenvalues kept within [0.05², 25]σ²) with σ²
    at most its within-level variance; Λ is its Cholesky factor.
    """
    spec, st = model.spec, model.st
    x0 = theta_start(spec)
    # Everything from the structure (the Gram matrix of [Z X r] with r the residual of y on X),
    # so a model aggregated without rows (scale.gram) starts where the in-memory one does.
    m = st.m
    rr = float(st.Arr[m - 1, m - 1])
    n_p = st.n - st.p
    sums = []
    if st.first.q == 1:
        sums.append((st.first, st.A11[0, 0, :], st.Bx[0, st.p, :]))
    for f, off in zip(st.rest, st.rest_offset):
        if f.q == 1:
            cols = off + np.arange(f.n_levels)
            sums.append((f, st.Arr[cols, cols], st.Arr[cols, m - 1]))
    est = []
    for f, w, s in sums:
        keep = w > 0
        s_l = s[keep]
        ssb = float(np.sum(s_l * s_l / w[keep]))
        dfw = n_p - int(keep.sum())
        sw = (rr - ssb) / dfw if dfw > 0 else 0.0
        if sw > 0:
            est.append((int(f.theta_index[0]), max((ssb - keep.sum() * sw) / float(w.sum()), 0.0),
                        sw))
    vec = []
    if st.first.q > 1:
        vec.append((st.first, st.A11, st.Bx[:, st.p, :]))
    for f, off in zip(st.rest, st.rest_offset):
        if f.q > 1:
            cols = off + np.arange(f.size).reshape(f.n_levels, f.q)  # (ℓ, q)
            A = st.Arr[cols[:, :, None], cols[:, None, :]].transpose(1, 2, 0)
            vec.append((f, A, st.Arr[cols, m - 1].T))
    vest = [(f, *mom) for f, A, sv in vec if (mom := _vector_moments(A, sv, rr, n_p))]
    if not est and not vest:
        return x0
    s2 = max(rr / n_p - sum(vb for _, vb, _ in est), 0.25 * min(sw for _, _, sw in est)) \
        if est else np.inf
    if vest:  # a vector factor's within-level variance: the closest bound on σ² at hand
        s2 = min(s2, min(sw for _, _, sw in vest))
    for t, vb, _ in est:
        x0[t] = float(np.clip(np.sqrt(vb / s2), 0.05, 5.0))
    for f, sig, _ in vest:
        mask = np.zeros((f.q, f.q), dtype=bool)
        for i, j in f.theta_pos:
            mask[i, j] = mask[j, i] = True
        ev, U = np.linalg.eigh(np.where(mask, sig, 0.0) / s2)
        L = np.linalg.cholesky((U * np.clip(ev, 0.05 ** 2, 25.0)) @ U.T)
        for t, (i, j) in zip(f.theta_index, f.theta_pos):
            x0[t] = float(L[i, j])
    return x0


def _vector_moments(A: np.ndarray, s: np.ndarray, rr: float, n_p: int
                    ) -> tuple[np.ndarray, float] | None:
    """Moment estimates for a vector factor from A_l = Z_lᵀZ_l (q, q, ℓ) and s_l = Z_lᵀr (q, ℓ):
    per-level least squares b̂_l = A_l⁻¹s_l (levels with a well-conditioned A_l) has
    E[b̂_l b̂_lᵀ] = Σ + σ_w²A_l⁻¹, so Σ ≈ mean(b̂_l b̂_lᵀ − σ_w²A_l⁻¹) with the within-level
    variance σ_w² = (rᵀr − Σ s_lᵀb̂_l)/(n − p − q·ℓ); correlations kept within ±0.9. Returns
    (Σ, σ_w²), or None with fewer than 50q such levels."""
    q = A.shape[0]
    Al = A.transpose(2, 0, 1)
    tr = np.trace(Al, axis1=1, axis2=2) / q
    with np.errstate(invalid="ignore", divide="ignore"):
        keep = np.linalg.det(Al) > 1e-8 * tr ** q
    nk = int(keep.sum())
    dfw = n_p - q * nk
    if nk < 50 * q or dfw <= 0:  # few levels: too noisy a start to beat the identity
        return None
    Ainv = np.linalg.inv(Al[keep])
    sk = s.T[keep]
    b = np.einsum("lij,lj->li", Ainv, sk)
    sw = (rr - float(np.sum(b * sk))) / dfw
    if not sw > 0:
        return None
    sig = (b.T @ b - sw * Ainv.sum(axis=0)) / nk
    sig = 0.5 * (sig + sig.T)
    # correlations shrunk to at most 0.9: a start near a singular Σ can lead to a boundary
    # optimum that is not the best one
    d = np.sqrt(np.clip(np.diag(sig), 1e-12, None))
    corr = np.clip(sig / np.outer(d, d), -0.9, 0.9)
    np.fill_diagonal(corr, 1.0)
    return corr * np.outer(d, d), sw


def _fd_grad(f, x: np.ndarray, fx: float, lower: np.ndarray, central: bool) -> np.ndarray:
    """Finite-difference gradient; one-sided (inward) at a bound of 0."""
    g = np.empty_like(x)
    for i in range(x.size):
        h = 1e-6 * max(1.0, abs(x[i]))
        up = x.copy()
        up[i] += h
        if not central or (lower[i] == 0.0 and x[i] - h < 0.0):
            g[i] = (f(up) - fx) / h
        else:
            dn = x.copy()
            dn[i] -= h
            g[i] = (f(up) - f(dn)) / (2 * h)
    return g


def _polish_free(f, x: np.ndarray, fx: float, lower: np.ndarray, h: float = 1e-4,
                 maxit: int = 20) -> tuple[np.ndarray, float]:
    """Newton steps on the θ not held at a bound of 0, gradient and Hessian by central
    differences (step *h*); a step is kept when it stays inside the bounds and the deviance does
    not rise by more than its rounding. Returns the last point kept."""
    idx = np.flatnonzero(~((lower == 0.0) & (x <= 0.0)))
    k = idx.size
    if k == 0:
        return x, fx
    for _ in range(maxit):
        fp, fm = np.empty(k), np.empty(k)
        H = np.empty((k, k))
        for a in range(k):
            e = np.zeros_like(x)
            e[idx[a]] = h
            if lower[idx[a]] == 0.0 and x[idx[a]] - h < 0.0:
                return x, fx  # too close to the bound for a central difference
            fp[a], fm[a] = f(x + e), f(x - e)
            H[a, a] = (fp[a] - 2.0 * fx + fm[a]) / h ** 2
        for a in range(k):
            for b in range(a + 1, k):
                e = np.zeros_like(x)
                e[idx[a]] = e[idx[b]] = h
                H[a, b] = H[b, a] = (f(x + e) - fp[a] - fp[b] + 2.0 * fx - fm[a] - fm[b]
                                     + f(x - e)) / (2.0 * h ** 2)
        g = (fp - fm) / (2.0 * h)
        try:
            d = -sla.cho_solve(sla.cho_factor(H, lower=True, check_finite=False), g,
                               check_finite=False)
        except np.linalg.LinAlgError:
            return x, fx
        xn = x.copy()
        xn[idx] += d
        if not np.all(np.isfinite(xn)) or np.any((lower == 0.0) & (xn < 0.0)):
            return x, fx
        fn = f(xn)
        # near the optimum the decrease is below the deviance's rounding: a step that raises it
        # by no more than that is still taken (the difference gradient decides, not the noise)
        if not fn <= fx + 1e-12 * max(1.0, abs(fx)):
            return x, fx
        x, fx = xn, fn
        if np.max(np.abs(d)) <= 1e-10 * max(1.0, float(np.max(np.abs(x)))):
            break
    return x, fx


def _grad_and_curvature(f, x: np.ndarray, fx: float, lower: np.ndarray,
                        delta: float = 1e-4) -> tuple[np.ndarray, np.ndarray]:
    """Gradient and diagonal second derivatives by central differences (one-sided at a bound)."""
    g, h = np.empty_like(x), np.empty_like(x)
    for i in range(x.size):
        up = x.copy()
        up[i] += delta
        if lower[i] == 0.0 and x[i] - delta < 0.0:
            up2 = x.copy()
            up2[i] += 2 * delta
            f1, f2 = f(up), f(up2)
            g[i] = (-3 * fx + 4 * f1 - f2) / (2 * delta)
            h[i] = (fx - 2 * f1 + f2) / delta ** 2
        else:
            dn = x.copy()
            dn[i] -= delta
            f1, f2 = f(up), f(dn)
            g[i] = (f1 - f2) / (2 * delta)
            h[i] = (f1 - 2 * fx + f2) / delta ** 2
    return g, h


def _newton_ai(model: SparseModel, f, lower: np.ndarray, x: np.ndarray, fx: float, reml: bool,
               n_grad: list[int], maxit: int = 100, tol: float = 1e-11, gtol: float = 1e-4,
               sgtol: float = 1e-3) -> tuple[np.ndarray, float, bool]:
    """Projected Newton steps on the profiled deviance: the exact gradient, the average-information
    Hessian (``SparseModel.average_information``) and a backtracking line search.

    A diagonal θ at its bound of 0 with a positive derivative is held there. Stops when the Newton
    decrement gᵀH⁻¹g is below ``tol``·max(1, |f|) and the free gradient below ``gtol``, or
    below ``sgtol`` when scaled by the Hessian's diagonal (as lme4's check; half its tolerance), or
    the decrement is at rounding level; returns (θ, f, True) then, or the best point and False when
    the gradient or the Hessian cannot be formed or a line search fails.
    """
    x = x.copy()
    for _ in range(maxit):
        g = model.gradient(x, reml)
        H = model.average_information(x, reml) if g is not None else None
        if g is None or H is None or not np.isfinite(fx):
            return x, fx, False
        n_grad[0] += 1
        free = ~((lower == 0.0) & (x <= 0.0) & (g >= 0.0))
        if not free.any():
            return x, fx, True
        Hf, gf = H[np.ix_(free, free)], g[free]
        try:
            cf = sla.cho_factor(Hf, lower=True, check_finite=False)
        except np.linalg.LinAlgError:
            return x, fx, False
        df = -sla.cho_solve(cf, gf, check_finite=False)
        dec = float(-gf @ df)
        if not np.isfinite(dec):
            return x, fx, False
        scale = max(1.0, abs(fx))
        model.ai_at = (x.tobytes(), H)
        # stop at a tiny decrement when the gradient is small, raw or scaled by the Hessian's
        # diagonal (as lme4's check; half its tolerance)
        small = np.max(np.abs(gf)) <= gtol or \
            np.max(np.abs(gf) / np.sqrt(np.maximum(np.diag(Hf), 1e-12))) <= sgtol
        if (dec <= tol * scale and small) or dec <= 1e-15 * scale:
            return x, fx, True
        d = np.zeros_like(x)
        d[free] = df
        alpha = 1.0
        for _ls in range(40):
            xn = x + alpha * d
            # a diagonal θ that the step shrinks is moved in log θ, θ·exp(αd/θ) (the deviance is
            # closer to quadratic there for small variances); one the step takes below 0 goes to
            # a tenth of its value instead (a bound reached only when the deviance keeps falling
            # there, then held)
            shrink = (lower == 0.0) & (x > 0.0) & (d < 0.0) & (xn > 0.0)
            if shrink.any():
                xn[shrink] = x[shrink] * np.exp(alpha * d[shrink] / x[shrink])
            xn = np.where((lower == 0.0) & (xn < 0.0), 0.1 * x, xn)
            fn = f(xn)
            if fn <= fx - 1e-4 * alpha * dec:
                break
            alpha *= 0.5
        else:
            # no decrease: at the rounding floor of the deviance if the decrement is tiny
            return x, fx, dec <= 1e-9 * scale
        x, fx = xn, fn
    return x, fx, False


def optimize_theta(model: SparseModel, lower: np.ndarray, x0: np.ndarray, reml: bool,
                   options: dict) -> tuple[np.ndarray, float, bool, list[str], int]:
    """Minimise the profiled deviance over θ within lme4's bounds, then check the optimum.

    Newton steps with the exact gradient and the average-information Hessian (``_newton_ai``;
    L-BFGS-B from where they stop if they fail, with the analytic gradient or finite differences
    where Λ is singular); restarts from inside the bound while ``probe_inside_bounds`` finds a
    lower deviance there; diagonal θ within ``boundary_tol`` of 0 are tried at 0 and kept there
    when the deviance is no larger (lme4's boundary check); lme4's scaled-gradient check at the
    end decides convergence.
    """
    bounds = [(0.0 if lo == 0.0 else None, None) for lo in lower]
    n_eval = [0]

    def f(th: np.ndarray) -> float:
        n_eval[0] += 1
        return model.objective(th, reml)

    central = options.get("fd", "forward") == "central"
    analytic = bool(options.get("analytic_gradient", True))
    n_grad = [0]

    def grad(th: np.ndarray, fx: float) -> np.ndarray:
        if analytic:
            g = model.gradient(th, reml)
            if g is not None:
                n_grad[0] += 1
                return g
        return _fd_grad(f, th, fx, lower, central=central)

    def fg(th: np.ndarray):
        fx = f(th)
        if not np.isfinite(fx):
            return 1e300, np.zeros_like(th)
        return fx, grad(th, fx)

    lbfgs = {"maxiter": int(options.get("maxiter", 2000)),
             "ftol": float(options.get("ftol", 1e-13)), "gtol": float(options.get("gtol", 1e-6)),
             "maxcor": 20}
    x = np.maximum(np.asarray(x0, float), np.where(np.isfinite(lower), lower, -np.inf))
    fx = f(x)
    messages: list[str] = []
    # By default Newton steps with the exact gradient and the average-information Hessian, with
    # L-BFGS-B (analytic gradient, finite differences where it does not apply) to take over if
    # they fail; L-BFGS-B or COBYQA (derivative-free, Powell's successor to lme4's bobyqa) on
    # request.
    method = options.get("optimizer") or "newton"
    cobyqa = {"final_tr_radius": 1e-7,
              "maxfev": 50 * int(options.get("maxiter", 2000))}

    used: set[str] = set()

    def run(start: np.ndarray, radius: float):
        if method == "newton" and analytic:
            fs = fx if np.array_equal(start, x) else f(start)
            xn, fn, ok = _newton_ai(model, f, lower, start, fs, reml, n_grad)
            used.add("newton")
            if ok:
                return SimpleNamespace(x=xn, fun=fn, success=True)
            start = xn  # the exact gradient did not apply or a step failed: L-BFGS-B from here
        # scipy.optimize is imported only here: it costs about half a second of a cold start,
        # and the Newton path does without it
        from scipy.optimize import Bounds, minimize
        if method == "cobyqa":
            box = Bounds(np.where(lower == 0.0, 0.0, -np.inf), np.inf)
            return minimize(f, start, method="COBYQA", bounds=box,
                            options=dict(cobyqa, initial_tr_radius=radius))
        used.add("l-bfgs-b")
        return minimize(fg, start, jac=True, method="L-BFGS-B", bounds=bounds, options=lbfgs)

    radius = 0.5
    for _attempt in range(6):
        res = run(x, radius)
        if res.fun <= fx:
            x, fx = np.asarray(res.x, float), float(res.fun)
        if method != "cobyqa" and not res.success and _attempt == 0:
            continue  # L-BFGS-B stopped in a line search: once more from where it stopped
        best, best_f = probe_inside_bounds(f, x, fx, lower)
        if best is None:
            break
        x, fx, radius = best, best_f, 0.05
    converged = bool(np.isfinite(fx))
    if not converged:
        messages.append("the deviance could not be evaluated at any θ tried")
        return x, fx, False, messages, n_eval[0]
    btol = float(options.get("boundary_tol", 1e-5))
    for i in np.flatnonzero((lower == 0.0) & (x > 0) & (x < btol)):
        trial = x.copy()
        trial[i] = 0.0
        ft = f(trial)
        if ft <= fx:
            x, fx = trial, ft
    if analytic and model.gradient(x, reml) is None:
        # Λ singular (a vector factor's diagonal θ at 0): the optimum came from differences and
        # is only as sharp as their line searches; Newton steps on the free θ with a central
        # difference Hessian settle it (to ~1e-9: two routes to the same data agree)
        x, fx = _polish_free(f, x, fx, lower)
    # lme4's checkConv: the gradient scaled by the (here diagonal) Hessian, min(|scaled|, |raw|)
    # against 0.002 on free coordinates. The scaled value is at most the raw one, so an analytic
    # gradient below the tolerance decides it; otherwise (or without one) central differences
    # with step 1e-4 (lme4's deriv12) give the gradient and the Hessian's diagonal.
    gtol = float(options.get("grad_tol", 2e-3))
    cached = model.has_gradient(x, reml)
    g = model.gradient(x, reml) if analytic else None
    if g is not None:
        n_grad[0] += 0 if cached else 1  # where Newton stopped it is at hand: not counted again
        free = ~((lower == 0.0) & (x <= 0.0) & (g >= 0))
        gmax = float(np.max(np.abs(g[free]))) if free.any() else 0.0
    ai = getattr(model, "ai_at", None)
    if g is not None and gmax > gtol and ai is not None and ai[0] == x.tobytes():
        # the Newton steps ended here with the average-information Hessian at hand: its diagonal
        # scales the exact gradient (accepted below half lme4's tolerance; else differences)
        hd = np.maximum(np.diag(ai[1]), 1e-12)
        scaled = np.minimum(np.abs(g) / np.sqrt(hd), np.abs(g))
        gs = float(np.max(scaled[free])) if free.any() else 0.0
        if gs <= 0.5 * gtol:
            gmax = gs
    if g is None or gmax > gtol:
        g, hd = _grad_and_curvature(f, x, fx, lower)
        free = ~((lower == 0.0) & (x <= 0.0) & (g > 0))
        scaled = np.minimum(np.abs(g) / np.sqrt(np.maximum(hd, 1e-12)), np.abs(g))
        gmax = float(np.max(scaled[free])) if free.any() else 0.0
    if gmax > gtol:
        converged = False
        messages.append(f"the optimiser stopped with a scaled gradient of {gmax:.2g} on the "
                        f"deviance (tolerance {gtol:g}, as lme4's check)")
    model.n_gradients = n_grad[0]
    model.methods_used = used
    return x, float(fx), converged, messages, n_eval[0]


def _optimizer_label(options: dict, model: SparseModel) -> str:
    if options.get("optimizer") == "cobyqa":
        return "COBYQA (scipy, derivative-free) on the profiled deviance"
    if not options.get("analytic_gradient", True):
        return "L-BFGS-B (scipy, finite-difference gradient) on the profiled deviance"
    used = getattr(model, "methods_used", set())
    parts = []
    if "newton" in used:
        parts.append("Newton steps (exact gradient, average-information Hessian)")
    if "l-bfgs-b" in used:
        parts.append("L-BFGS-B (scipy; analytic gradient, differences where Λ is singular)")
    return (" then ".join(parts) or "L-BFGS-B (scipy)") + \
        f" on the profiled deviance; {model.n_gradients} gradient evaluations"


# ----------------------------------------------------------------------------------------------
# The engine
# ----------------------------------------------------------------------------------------------
class SparseEngine:
    """Any random structure (crossed, nested, partially crossed; scalar or vector; ``||``).

    Options (``options`` of ``fit``): ``optimizer`` ("newton", the default: Newton steps with the
    exact gradient and the average-information Hessian, L-BFGS-B taking over if they fail;
    "l-bfgs-b"; "cobyqa", derivative-free), ``analytic_gradient`` (True; False: finite
    differences, ``fd`` "forward" or "central"), ``maxiter`` (2000), ``boundary_tol`` (1e-5),
    ``grad_tol`` (2e-3, on the largest free component of the deviance's gradient),
    ``condvar`` (True: conditional variances of the modes), ``moment_start`` (True: scalar
    factors start from one-way moment estimates, :func:`moment_start`; False: lme4's start).

    Examples
    --------
    >>> import numpy as np, pandas as pd
    >>> from mfr_outcomes.models.formula import build_spec
    >>> rng = np.random.default_rng(1)
    >>> d = pd.DataFrame({"a": rng.integers(0, 30, 400).astype(str),
    ...                   "b": rng.integers(0, 8, 400).astype(str)})
    >>> d["y"] = rng.normal(size=400)
    >>> res = SparseEngine().fit(build_spec(d, "y ~ 1 + (1 | a) + (1 | b)"))
    >>> res.engine, len(res.theta)
    ('sparse', 2)
    """

    name = "sparse"
    priority = 25  # any structure at scale; below "fast" where that applies, above dense "pls"

    def supports(self, spec: ModelSpec) -> tuple[bool, str]:
        if not spec.blocks:
            return False, "the model has no random-effects term"
        if spec.n <= spec.p:
            return False, f"there are {spec.n} observations for {spec.p} fixed effects"
        n_re = sum(b.q * b.n_levels for b in spec.blocks)
        if spec.n <= n_re:
            return False, (f"number of observations ({spec.n}) is not larger than the number of "
                           f"random effects ({n_re}): the residual variance is not identifiable")
        m = trailing_size(spec)
        if m > MAX_TRAILING:
            big = factors_of(spec)[0]
            return False, (f"after the largest grouping factor ({big.group!r}) the other factors "
                           f"and X make a dense block of {m} columns; the sparse engine "
                           f"handles at most {MAX_TRAILING}")
        if not (np.all(np.isfinite(spec.y)) and np.all(np.isfinite(spec.X))):
            return False, "the response or the fixed-effects matrix holds non-finite values"
        return True, ""

    def fit(self, spec: ModelSpec, reml: bool = True, *, start: np.ndarray | None = None,
            options: dict | None = None, model: SparseModel | None = None) -> EngineResult:
        """*model*: a SparseModel of *spec* made elsewhere (``scale.gram``: from aggregated Gram
        blocks, the spec without rows); by default the (cached) one of *spec*'s rows."""
        # One BLAS thread throughout, even for InstEval's 1,145-column block: on this 2-core
        # machine with other jobs running, two OpenBLAS threads made the InstEval fit 4-14x
        # slower (6-21 s against 1.5 s, same run; docs/sparse_engine.md)
        with blas_threads():
            return self._fit(spec, reml, start, dict(options or {}), model)

    def _fit(self, spec: ModelSpec, reml: bool, start: np.ndarray | None,
             options: dict, model: SparseModel | None = None) -> EngineResult:
        model = sparse_model(spec) if model is None else model
        lower = theta_lower_bounds(spec)
        if start is not None:
            x0 = np.asarray(start, float)
        elif options.get("moment_start", True):
            x0 = moment_start(model)
        else:
            x0 = theta_start(spec)
        theta, obj, converged, messages, nev = optimize_theta(model, lower, x0, reml, options)
        optimizer_name = _optimizer_label(options, model)
        sigma = model.sigma(theta, reml)
        want_cv = bool(options.get("condvar", True))
        blups, condvar = model.random_modes(theta, sigma, condvar=want_cv)
        if not want_cv:
            messages.append("conditional variances of the modes were not computed "
                            "(options['condvar'] is False)")

        def devfun_varpar(vp: np.ndarray, _m=model, _r=reml) -> float:
            return _m.deviance_varpar(vp, _r)

        return EngineResult(
            engine=self.name, reml=reml, theta=theta, beta=model.beta(theta), sigma=sigma,
            vcov_beta=model.vcov_beta(np.append(theta, sigma)), objective=obj,
            converged=converged, messages=messages,
            optimizer=optimizer_name,
            n_evaluations=nev, blups=blups, blup_condvar=condvar,
            devfun_varpar=devfun_varpar, vcov_varpar=model.vcov_beta,
        )


ENGINE = register_engine(SparseEngine())
