"""Engine "sparse_ldl": lme4's profiled deviance with one sparse LDLᵀ factor of Λ'Z'ZΛ + I.

The "sparse" engine keeps every grouping factor but the largest as a dense trailing block and so
declines models whose trailing block passes ``sparse.MAX_TRAILING`` columns (two large crossed
factors: 20,000 patients by 10,000 therapists). This engine keeps the whole symmetric system
Ω(θ) = Λ'Z'ZΛ + I (all factors) sparse, on a pattern fixed once, factored by QDLDL (Goulart &
Chen's LDLᵀ, with an AMD fill-reducing ordering computed once: symbolic once, numeric per θ).
The profiled REML/ML deviance is lme4's (Bates, Mächler, Bolker & Walker 2015, JSS 67(1),
eqs. 34, 41): log|L|² = Σ log D, and r²(θ), log|R_X|² from the Schur complement of [X y] in the
bordered system, S = [X y]'[X y] − B'Ω⁻¹B with B = Λ'Z'[X y] (p + 1 solves with the factor).
As in "sparse", X is replaced by Q = XR⁻¹ and y by its residual from X, which removes most of the
cancellation in S. When the ordering leaves heavy fill (randomly crossed factors), SuperLU's
supernodal factorisation on the same ordering replaces QDLDL (``HEAVY_FILL``). θ is optimised by
COBYQA (derivative-free, as lme4's bobyqa) through ``sparse.optimize_theta``, with its bound
probes and lme4's convergence check. Conditional variances come from a selected inverse of the
factor (Takahashi, Fagan & Chen 1973): Ω⁻¹ on the pattern of L only, never a dense inverse of
Ω. See ``sparse_ldl_inverse`` for that part.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import scipy.linalg as sla
import scipy.sparse as sp

from mfr_outcomes.models.sparse_ldl_inverse import level_blocks, selected_inverse
from mfr_outcomes.models.sparse_struct import (
    Factor,
    cached_model,
    deviance_at_sigma,
    factors_of,
    per_block,
    probe_zero_diagonals,
    profiled_sigma,
    trailing_size,
)
from mfr_outcomes.models.spec import (
    EngineResult,
    ModelSpec,
    register_engine,
    theta_lower_bounds,
    theta_start,
)

__all__ = ["SparseLDLEngine", "LDLModel", "ldl_model"]

_LOG2PI = np.log(2.0 * np.pi)
#: Entries a column of the factor above which SuperLU (supernodal) replaces QDLDL.
HEAVY_FILL = 30


@dataclass
class _Eval:
    theta: np.ndarray
    ok: bool
    ldL2: float = np.inf
    ldRX2: float = np.inf
    pwrss: float = np.inf
    S: np.ndarray | None = None  # (p + 1, p + 1) Schur complement of [Q r_y]
    CS: np.ndarray | None = None  # its lower Cholesky factor
    W: np.ndarray | None = None  # (q, p + 1) Ω⁻¹ B


class LDLModel:
    """The fixed sparse pattern of Λ'Z'ZΛ + I for one ModelSpec, and the deviance at any θ."""

    def __init__(self, spec: ModelSpec):
        import qdldl  # imported here: only this engine needs it

        self._qdldl = qdldl
        self.spec = spec
        self.n, self.p = spec.n, spec.p
        Q, R = np.linalg.qr(spec.X)
        self._R = R
        self._beta_ols = sla.solve_triangular(R, Q.T @ spec.y, check_finite=False)
        self._ldR2 = 2.0 * float(np.sum(np.log(np.abs(np.diag(R)))))
        ry = spec.y - Q @ (Q.T @ spec.y)
        self.factors: list[Factor] = factors_of(spec)
        self.offsets = list(np.cumsum([0] + [f.size for f in self.factors])[:-1].astype(int))
        self.q = int(sum(f.size for f in self.factors))
        n = self.n
        idx, val = [], []
        for f, off in zip(self.factors, self.offsets):
            for j in range(f.q):
                idx.append(off + f.codes * f.q + j)
                val.append(f.Z[:, j])
        k = len(idx)
        indptr = np.arange(n + 1, dtype=np.int64) * k
        Z = sp.csr_matrix((np.column_stack(val).ravel(), np.column_stack(idx).ravel(), indptr),
                          shape=(n, self.q))
        ones = sp.csr_matrix((np.ones(n * k), Z.indices, indptr), shape=(n, self.q))
        # the structural pattern of Z'Z (from ones: ones never cancel) and Z'Z's values on it
        pat = (ones.T @ ones).tocsc()
        pat.sort_indices()
        qq = self.q
        cols = np.repeat(np.arange(qq, dtype=np.int64), np.diff(pat.indptr))
        keys = cols * qq + pat.indices
        A = (Z.T @ Z).tocsc()
        A.sort_indices()
        akeys = np.repeat(np.arange(qq, dtype=np.int64), np.diff(A.indptr)) * qq + A.indices
        adata = np.zeros(keys.size)
        adata[np.searchsorted(keys, akeys)] = A.data
        self._adata = adata
        # Ω is stored as its upper triangle (row ≤ column), CSC, on this fixed pattern
        up = pat.indices <= cols
        self._up_rows, self._up_cols = pat.indices[up], cols[up]
        counts = np.bincount(self._up_cols, minlength=qq)
        self._up_indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self._up_diag = np.flatnonzero(self._up_rows == self._up_cols)
        # which factor, level and column within the level each Ω column is
        fac_of = np.empty(qq, dtype=np.intp)
        comp = np.empty(qq, dtype=np.intp)
        base = np.empty(qq, dtype=np.int64)
        for kf, (f, off) in enumerate(zip(self.factors, self.offsets)):
            seg = slice(off, off + f.size)
            fac_of[seg] = kf
            comp[seg] = np.tile(np.arange(f.q), f.n_levels)
            base[seg] = off + np.repeat(np.arange(f.n_levels), f.q) * f.q
        self._fac_of, self._comp, self._base = fac_of, comp, base
        # (Λ'AΛ)[r, c] = Σ_ij Λ_k[i, a] Λ_k'[j, b] A[base_r + i, base_c + j]: per pair of factors
        # (k, k') the entries' positions in A for every (i, j), so one θ costs a few gathers
        self._groups = []
        r, c = self._up_rows, self._up_cols
        for kr in range(len(self.factors)):
            for kc in range(len(self.factors)):
                e = np.flatnonzero((fac_of[r] == kr) & (fac_of[c] == kc))
                if e.size == 0:
                    continue
                qr, qc = self.factors[kr].q, self.factors[kc].q
                pos = np.empty((e.size, qr, qc), dtype=np.int64)
                for i in range(qr):
                    for j in range(qc):
                        kk = (base[c[e]] + j) * qq + base[r[e]] + i
                        pp = np.searchsorted(keys, kk)
                        pos[:, i, j] = pp  # always present: level blocks are structurally full
                # A's values gathered once: (entries, q_r, q_c)
                self._groups.append((kr, kc, e, comp[r[e]], comp[c[e]], adata[pos]))
        XY = np.column_stack([Q, ry])
        self._ztxy = np.asarray(Z.T @ XY)  # (q, p + 1)
        self._xyxy = XY.T @ XY
        self._Z = Z
        self._solver = None
        self._slu: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        self._lu = None
        self._perm: np.ndarray | None = None
        self._last: _Eval | None = None
        self.n_factorisations = 0

    # -- Λ ------------------------------------------------------------------------------------
    def lams(self, theta: np.ndarray) -> list[np.ndarray]:
        return [f.lam(theta) for f in self.factors]

    def _apply_lam(self, v: np.ndarray, lams: list[np.ndarray], transpose: bool) -> np.ndarray:
        """Λᵀv (Λv when *transpose*) for v (q,) or (q, r) on the random-effect columns."""
        out = np.array(v, dtype=float, copy=True)
        for f, off, lam in zip(self.factors, self.offsets, lams):
            seg = slice(off, off + f.size)
            M = lam if transpose else lam.T
            if f.q == 1:
                out[seg] *= M[0, 0]
                continue
            blk = np.array(out[seg]).reshape((f.n_levels, f.q) + out.shape[1:])
            res = out[seg].reshape((f.n_levels, f.q) + out.shape[1:])  # a view: written in place
            for i in range(f.q):
                res[:, i] = sum(M[i, j] * blk[:, j] for j in range(f.q))
        return out

    def omega(self, theta: np.ndarray) -> sp.csc_matrix:
        """The upper triangle of Λ'Z'ZΛ + I at θ, on the fixed pattern (zeros kept)."""
        lams = self.lams(theta)
        data = np.zeros(self._up_rows.size)
        for kr, kc, e, a, b, G in self._groups:
            lr, lc = lams[kr], lams[kc]
            if G.shape[1] == 1 and G.shape[2] == 1:
                data[e] = G[:, 0, 0] * (lr[0, 0] * lc[0, 0])
                continue
            # Σ_ij Λ_r[i, a] G[e, i, j] Λ_c[j, b], with a, b the entry's columns in its level
            # (plain loops over the q_r q_c terms: 4-6x faster than einsum here)
            acc = np.zeros(e.size)
            for i in range(G.shape[1]):
                li = lr[i, a]
                for j in range(G.shape[2]):
                    acc += li * lc[j, b] * G[:, i, j]
            data[e] = acc
        data[self._up_diag] += 1.0
        return sp.csc_matrix((data, self._up_rows, self._up_indptr), shape=(self.q, self.q))

    # -- per evaluation -----------------------------------------------------------------------
    def factor(self, theta: np.ndarray) -> np.ndarray:
        """Factor Ω(θ) and return D of Ω = P(I + L)D(I + L)ᵀPᵀ.

        QDLDL (symbolic analysis with AMD on the first call, numeric after) unless its factor
        has more than ``HEAVY_FILL`` entries a column: then SuperLU, supernodal, on Ω permuted
        by the same ordering (natural column order, no pivoting, so U = DLᵀ): 8x slower than
        QDLDL on the light fill of factors crossed within sites (20,000 x 10,000), 2-4x faster on
        the heavy fill of randomly crossed factors.
        """
        om = self.omega(theta)
        self.n_factorisations += 1
        if self._solver is None:
            self._solver = self._qdldl.Solver(om, upper=True)
            L, D, P = self._solver.factors()
            self._perm = np.asarray(P, dtype=np.int64)
            if L.nnz > HEAVY_FILL * self.q:
                self._setup_superlu()
            else:
                return D
        elif self._slu is None:
            self._solver.update(om, upper=True)
            return self._solver.factors()[1]
        from scipy.sparse.linalg import splu

        Ap = sp.csc_matrix((om.data[self._slu[0]], self._slu[1], self._slu[2]),
                           shape=(self.q, self.q))
        lu = splu(Ap, permc_spec="NATURAL", diag_pivot_thresh=0.0,
                  options={"SymmetricMode": True})
        if not np.array_equal(lu.perm_r, np.arange(self.q)):
            raise np.linalg.LinAlgError("SuperLU pivoted off the diagonal of Λ'Z'ZΛ + I")
        self._lu = lu
        return lu.U.diagonal()

    def _setup_superlu(self) -> None:
        """The full symmetric pattern of Ω in the factor's order, once: CSC rows and indptr, and
        for each stored entry the index of its value in the upper triangle's data."""
        pinv = np.empty(self.q, dtype=np.int64)
        pinv[self._perm] = np.arange(self.q)
        r, c = pinv[self._up_rows], pinv[self._up_cols]
        e = np.arange(r.size)
        off = r != c
        rows = np.concatenate([r, c[off]])
        cols = np.concatenate([c, r[off]])
        src = np.concatenate([e, e[off]])
        order = np.lexsort((rows, cols))
        indptr = np.concatenate([[0], np.cumsum(np.bincount(cols, minlength=self.q))])
        self._slu = (src[order], rows[order], indptr.astype(np.int64))

    def solve(self, B: np.ndarray) -> np.ndarray:
        """Ω⁻¹B at the θ factored last, B (q, r)."""
        if self._slu is None:
            return np.column_stack([self._solver.solve(B[:, j]) for j in range(B.shape[1])])
        X = np.empty_like(B)
        X[self._perm] = self._lu.solve(np.ascontiguousarray(B[self._perm]))
        return X

    def ldl_factors(self) -> tuple[sp.csc_matrix, np.ndarray, np.ndarray]:
        """(L strictly lower, D, P) of the θ factored last: Ω = P(I + L)D(I + L)ᵀPᵀ."""
        if self._slu is None:
            L, D, P = self._solver.factors()
            return L, D, np.asarray(P, dtype=np.int64)
        L = sp.tril(self._lu.L, k=-1, format="csc")
        return L, self._lu.U.diagonal(), self._perm

    def evaluate(self, theta: np.ndarray) -> _Eval:
        theta = np.asarray(theta, dtype=float)
        if self._last is not None and np.array_equal(theta, self._last.theta):
            return self._last
        ev = _Eval(theta=theta.copy(), ok=False)
        self._last = ev
        D = self.factor(theta)
        if not (np.all(np.isfinite(D)) and np.all(D > 0)):
            return ev
        B = self._apply_lam(self._ztxy, self.lams(theta), transpose=False)
        W = self.solve(B)
        S = self._xyxy - B.T @ W
        S = 0.5 * (S + S.T)
        try:
            CS = np.linalg.cholesky(S)
        except np.linalg.LinAlgError:
            return ev
        dg = np.diag(CS)
        p = self.p
        ev.ok = True
        ev.ldL2 = float(np.sum(np.log(D)))
        ev.ldRX2 = 2.0 * float(np.sum(np.log(np.abs(dg[:p])))) + self._ldR2
        ev.pwrss = max(float(dg[-1]) ** 2, 1e-300)
        ev.S, ev.CS, ev.W = S, CS, W
        return ev

    def objective(self, theta: np.ndarray, reml: bool) -> float:
        ev = self.evaluate(theta)
        if not ev.ok:
            return np.inf
        if reml:
            nmp = self.n - self.p
            return ev.ldL2 + ev.ldRX2 + nmp * (1.0 + _LOG2PI + np.log(ev.pwrss / nmp))
        return ev.ldL2 + self.n * (1.0 + _LOG2PI + np.log(ev.pwrss / self.n))

    # the optimiser's (``sparse.optimize_theta``) hooks: no analytic gradient here
    def has_gradient(self, theta: np.ndarray, reml: bool) -> bool:
        return False

    def gradient(self, theta: np.ndarray, reml: bool) -> None:
        return None

    def sigma(self, theta: np.ndarray, reml: bool) -> float:
        return profiled_sigma(self, theta, reml)

    def deviance_varpar(self, varpar: np.ndarray, reml: bool) -> float:
        """lmerTest's ``devfun_vp``: the deviance at (θ, σ), not profiled over σ."""
        return deviance_at_sigma(self, varpar, reml)

    def _beta_q(self, ev: _Eval) -> np.ndarray:
        """β in the basis Q = XR⁻¹ of the residual y: S_XX⁻¹ S_Xy."""
        p = self.p
        CX = ev.CS[:p, :p]
        return sla.cho_solve((CX, True), ev.S[:p, p], check_finite=False)

    def beta(self, theta: np.ndarray) -> np.ndarray:
        ev = self.evaluate(theta)
        return self._beta_ols + sla.solve_triangular(self._R, self._beta_q(ev),
                                                     check_finite=False)

    def vcov_beta(self, varpar: np.ndarray) -> np.ndarray:
        """σ² (R_XᵀR_X)⁻¹ at varpar = (θ, σ) — lmerTest's ``get_covbeta``."""
        varpar = np.asarray(varpar, dtype=float)
        ev = self.evaluate(varpar[:-1])
        if not ev.ok:
            return np.full((self.p, self.p), np.nan)
        # R_X of the original X is R̃_X R: (R_XᵀR_X)⁻¹ = R⁻¹ S_XX⁻¹ R⁻ᵀ
        Li = sla.solve_triangular(self._R.T @ ev.CS[:self.p, :self.p], np.eye(self.p),
                                  lower=True, check_finite=False)
        return varpar[-1] ** 2 * (Li.T @ Li)

    # -- once, at the optimum -----------------------------------------------------------------
    def random_modes(self, theta: np.ndarray, sigma: float, condvar: bool = True):
        """Conditional modes b = Λu per spec block (ℓ, q), and σ²Λ(Ω⁻¹)_ll Λᵀ per level."""
        ev = self.evaluate(theta)
        lams = self.lams(theta)
        u = ev.W[:, self.p] - ev.W[:, :self.p] @ self._beta_q(ev)  # Ω⁻¹Λ'Z'(y − Xβ̂)
        b = self._apply_lam(u, lams, transpose=True)
        modes = [b[off:off + f.size].reshape(f.n_levels, f.q).T
                 for f, off in zip(self.factors, self.offsets)]
        cvs = None
        if condvar:
            L, D, P = self.ldl_factors()
            Sig = selected_inverse(L, D)
            cvs = []
            for f, off, lam in zip(self.factors, self.offsets, lams):
                blk = level_blocks(Sig, P, off, f.n_levels, f.q)  # (ℓ, q, q)
                cvs.append(sigma ** 2 * np.einsum("ia,lab,jb->ijl", lam, blk, lam))
        return per_block(self.spec, self.factors, modes, cvs)

    def fill(self) -> tuple[int, int]:
        """(nnz of Ω's upper triangle, nnz of the factor L): the fill of the ordering."""
        return int(self._up_rows.size), int(self.ldl_factors()[0].nnz)


_MODELS: OrderedDict[int, tuple[ModelSpec, LDLModel]] = OrderedDict()


def ldl_model(spec: ModelSpec) -> LDLModel:
    """A (cached) :class:`LDLModel` for *spec*; the cache keeps the last few specs."""
    return cached_model(_MODELS, spec, LDLModel)


def moment_start_ldl(model: LDLModel) -> np.ndarray:
    """lme4's start (identity Λ) with each scalar factor's θ from one-way moment estimates
    (the rule of ``sparse.moment_start``, computed from the rows: this engine has no Gram
    matrix of the trailing block)."""
    spec = model.spec
    x0 = theta_start(spec)
    Q, _ = np.linalg.qr(spec.X)
    r = spec.y - Q @ (Q.T @ spec.y)
    rr = float(r @ r)
    n_p = model.n - model.p
    est = []
    for f in model.factors:
        if f.q != 1:
            continue
        z = f.Z[:, 0]
        w = np.bincount(f.codes, z * z, minlength=f.n_levels)
        s = np.bincount(f.codes, z * r, minlength=f.n_levels)
        keep = w > 0
        ssb = float(np.sum(s[keep] ** 2 / w[keep]))
        dfw = n_p - int(keep.sum())
        sw = (rr - ssb) / dfw if dfw > 0 else 0.0
        if sw > 0:
            est.append((int(f.theta_index[0]), max((ssb - keep.sum() * sw) / float(w.sum()), 0.0),
                        sw))
    if est:
        s2 = max(rr / n_p - sum(vb for _, vb, _ in est), 0.25 * min(sw for _, _, sw in est))
        for t, vb, _ in est:
            x0[t] = float(np.clip(np.sqrt(vb / s2), 0.05, 5.0))
    return x0


class SparseLDLEngine:
    """Any random structure with all factors in one sparse LDLᵀ factor: for crossed models whose
    second factor is too large for the dense trailing block of "sparse".

    Options (``options`` of ``fit``): ``optimizer`` ("cobyqa", the default: derivative-free,
    fewer deviance evaluations than difference gradients need; or "l-bfgs-b"), ``fd``
    ("central", the default, or "forward": L-BFGS-B's difference gradient), ``maxiter``
    (2000), ``boundary_tol`` (1e-5), ``grad_tol`` (2e-3, lme4's scaled-gradient check),
    ``condvar`` (True: conditional variances of the modes by a selected inverse),
    ``moment_start`` (True).

    Examples
    --------
    >>> import numpy as np, pandas as pd
    >>> from mfr_outcomes.models.formula import build_spec
    >>> rng = np.random.default_rng(1)
    >>> d = pd.DataFrame({"a": rng.integers(0, 30, 400).astype(str),
    ...                   "b": rng.integers(0, 8, 400).astype(str)})
    >>> d["y"] = rng.normal(size=400)
    >>> res = SparseLDLEngine().fit(build_spec(d, "y ~ 1 + (1 | a) + (1 | b)"))
    >>> res.engine, len(res.theta)
    ('sparse_ldl', 2)
    """

    name = "sparse_ldl"
    priority = 22  # below "sparse" (faster where its trailing block fits), above dense "pls"

    def supports(self, spec: ModelSpec) -> tuple[bool, str]:
        if not spec.blocks:
            return False, "the model has no random-effects term"
        if spec.n <= spec.p:
            return False, f"there are {spec.n} observations for {spec.p} fixed effects"
        n_re = sum(b.q * b.n_levels for b in spec.blocks)
        if spec.n <= n_re:
            return False, (f"number of observations ({spec.n}) is not larger than the number of "
                           f"random effects ({n_re}): the residual variance is not identifiable")
        if not (np.all(np.isfinite(spec.y)) and np.all(np.isfinite(spec.X))):
            return False, "the response or the fixed-effects matrix holds non-finite values"
        return True, ""

    def fit(self, spec: ModelSpec, reml: bool = True, *, start: np.ndarray | None = None,
            options: dict | None = None) -> EngineResult:
        from mfr_outcomes.models.sparse import optimize_theta

        options = dict(options or {})
        model = ldl_model(spec)
        lower = theta_lower_bounds(spec)
        if start is not None:
            x0 = np.asarray(start, float)
        elif options.get("moment_start", True):
            x0 = moment_start_ldl(model)
        else:
            x0 = theta_start(spec)
        method = options.get("optimizer") or "cobyqa"
        if method not in ("cobyqa", "l-bfgs-b"):
            raise ValueError(f"options['optimizer'] for the sparse_ldl engine is 'cobyqa' or "
                             f"'l-bfgs-b', not {method!r}")
        opt = dict(options, analytic_gradient=False, optimizer=method,
                   fd=options.get("fd", "central"))
        theta, obj, converged, messages, nev = optimize_theta(model, lower, x0, reml, opt)
        for _ in range(3):  # a θ at 0 can hide a lower criterion inside (see the probe)
            trial, ft = probe_zero_diagonals(model.factors, lambda th: model.objective(th, reml),
                                             theta, obj)
            if trial is None:
                break
            theta2, obj2, conv2, msg2, nev2 = optimize_theta(model, lower, trial, reml, opt)
            nev += nev2
            if obj2 < obj:
                theta, obj, converged, messages = theta2, obj2, conv2, msg2
        sigma = model.sigma(theta, reml)
        want_cv = bool(options.get("condvar", True))
        blups, condvar = model.random_modes(theta, sigma, condvar=want_cv)
        if not want_cv:
            messages.append("conditional variances of the modes were not computed "
                            "(options['condvar'] is False)")
        nnz_a, nnz_l = model.fill()
        how = ("COBYQA (scipy, derivative-free: Powell's successor to lme4's bobyqa)"
               if method == "cobyqa" else
               f"L-BFGS-B (scipy, {opt['fd']}-difference gradient)")
        label = (f"{how} on the profiled deviance; "
                 f"QDLDL sparse LDLᵀ of Λ'Z'ZΛ + I ({model.q} random effects, {nnz_a} stored "
                 f"entries, {nnz_l} in the factor, AMD ordering; the sparse engine's dense "
                 f"trailing block would have {trailing_size(spec)} columns), "
                 f"{model.n_factorisations} factorisations")

        def devfun_varpar(vp: np.ndarray, _m=model, _r=reml) -> float:
            return _m.deviance_varpar(vp, _r)

        return EngineResult(
            engine=self.name, reml=reml, theta=theta, beta=model.beta(theta), sigma=sigma,
            vcov_beta=model.vcov_beta(np.append(theta, sigma)), objective=obj,
            converged=converged, messages=messages,
            optimizer=label,
            n_evaluations=nev, blups=blups, blup_condvar=condvar,
            devfun_varpar=devfun_varpar, vcov_varpar=model.vcov_beta,
        )


ENGINE = register_engine(SparseLDLEngine())
