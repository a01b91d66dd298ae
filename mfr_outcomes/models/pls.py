"""Engine "pls": lme4's penalised least squares on dense matrices, for any random structure.

Follows Bates, Mächler, Bolker & Walker (2015, JSS 67(1), section 3): for a relative covariance
factor Λθ, the Cholesky factor L of Λ'Z'ZΛ + I, the blocks R_ZX and R_X, and the penalised residual
sum of squares r² give the profiled deviance

    ML:   log|L|² + n (1 + log(2π r² / n))
    REML: log|L|² + log|R_X|² + (n − p) (1 + log(2π r² / (n − p)))

which is minimised over θ with box constraints (diagonal elements of Λ ≥ 0). Dense matrices limit
it to a few thousand random effects; :meth:`PLSEngine.supports` says so.
"""
from __future__ import annotations

from collections import OrderedDict

import numpy as np
import scipy.linalg as sla
import scipy.sparse as sp
from scipy.optimize import minimize

from mfr_outcomes.models.sparse_struct import cached_model, factors_of, probe_zero_diagonals
from mfr_outcomes.models.spec import (
    EngineResult,
    ModelSpec,
    probe_inside_bounds,
    register_engine,
    theta_lower_bounds,
    theta_start,
)
from mfr_outcomes.models.threads import blas_limits, blas_threads  # noqa: F401 (re-exported)

__all__ = [
    "PLSEngine",
    "PLSModel",
    "deviance_varpar",
    "vcov_beta_varpar",
    "profiled_deviance",
    "pls_model",
    "MAX_Q",
    "blas_limits",
]

#: Largest total number of random effects the dense engine accepts.
MAX_Q = 3000
_LOG2PI = np.log(2.0 * np.pi)


class PLSModel:
    """The fixed cross-products of one ModelSpec and the PLS solution at any θ."""

    def __init__(self, spec: ModelSpec):
        self.spec = spec
        n, p = spec.X.shape
        self.n, self.p = n, p
        offsets, cols = [], []
        q = 0
        for b in spec.blocks:
            offsets.append(q)
            q += b.q * b.n_levels
        self.q = q
        self.offsets = offsets
        rows = np.arange(n)
        z_r, z_c, z_v = [], [], []
        # Columns are level-major within a block: level ℓ, term j -> offset + ℓ q_b + j (lme4's order).
        lam_r, lam_c, lam_k = [], [], []
        k0 = 0
        for b, off in zip(spec.blocks, offsets):
            for j in range(b.q):
                z_r.append(rows)
                z_c.append(off + b.codes * b.q + j)
                z_v.append(b.Z[:, j])
            k = k0
            for jj in range(b.q):
                for ii in range(jj, b.q):
                    lev = np.arange(b.n_levels)
                    lam_r.append(off + lev * b.q + ii)
                    lam_c.append(off + lev * b.q + jj)
                    lam_k.append(np.full(b.n_levels, k))
                    k += 1
            k0 = k
            cols.append(b)
        # Z is kept sparse: n × q dense would not fit in memory for large n.
        self.Zs = sp.csr_matrix((np.concatenate(z_v), (np.concatenate(z_r), np.concatenate(z_c))),
                                shape=(n, q))
        self.lam_r = np.concatenate(lam_r) if lam_r else np.zeros(0, int)
        self.lam_c = np.concatenate(lam_c) if lam_c else np.zeros(0, int)
        self.lam_k = np.concatenate(lam_k) if lam_k else np.zeros(0, int)
        X, y = spec.X, spec.y
        self.ZtZ_s = (self.Zs.T @ self.Zs).tocsr()
        self.ZtZ = self.ZtZ_s.toarray()
        self.ZtX = np.asarray(self.Zs.T @ X)
        self.Zty = np.asarray(self.Zs.T @ y)
        self.XtX = X.T @ X
        self.Xty = X.T @ y
        self.yty = float(y @ y)
        self.n_theta = spec.n_theta
        self._cache_theta: np.ndarray | None = None
        self._cache: dict | None = None

    def lambda_matrix(self, theta: np.ndarray) -> np.ndarray:
        lam = np.zeros((self.q, self.q))
        lam[self.lam_r, self.lam_c] = np.asarray(theta, float)[self.lam_k]
        return lam

    def lambda_sparse(self, theta: np.ndarray) -> sp.csc_matrix:
        return sp.csc_matrix((np.asarray(theta, float)[self.lam_k], (self.lam_r, self.lam_c)),
                             shape=(self.q, self.q))

    def solve(self, theta: np.ndarray) -> dict:
        """The PLS quantities at θ (cached for the last θ)."""
        theta = np.asarray(theta, dtype=float)
        if self._cache_theta is not None and np.array_equal(theta, self._cache_theta):
            return self._cache
        lam_s = self.lambda_sparse(theta)
        # Λ is block diagonal with tiny blocks and Z'Z is sparse: sparse products, dense Cholesky.
        lzzl = (lam_s.T @ self.ZtZ_s @ lam_s).toarray()
        lzzl[np.diag_indices_from(lzzl)] += 1.0
        L = sla.cholesky(lzzl, lower=True, check_finite=False)
        cu = sla.solve_triangular(L, lam_s.T @ self.Zty, lower=True, check_finite=False)
        RZX = sla.solve_triangular(L, lam_s.T @ self.ZtX, lower=True, check_finite=False)
        RXtRX = self.XtX - RZX.T @ RZX
        RX = sla.cholesky(RXtRX, lower=False, check_finite=False)  # RX'RX
        cbeta = sla.solve_triangular(RX, self.Xty - RZX.T @ cu, trans="T", lower=False,
                                     check_finite=False)
        beta = sla.solve_triangular(RX, cbeta, lower=False, check_finite=False)
        prss = max(self.yty - cu @ cu - cbeta @ cbeta, 1e-300)
        ldL2 = 2.0 * float(np.sum(np.log(np.diag(L))))
        ldRX2 = 2.0 * float(np.sum(np.log(np.abs(np.diag(RX)))))
        out = {"theta": theta.copy(), "lam": lam_s, "L": L, "cu": cu, "RZX": RZX, "RX": RX,
               "beta": beta, "prss": prss, "ldL2": ldL2, "ldRX2": ldRX2}
        self._cache_theta, self._cache = theta.copy(), out
        return out

    def profiled_deviance(self, theta: np.ndarray, reml: bool) -> float:
        s = self.solve(theta)
        if reml:
            nmp = self.n - self.p
            return s["ldL2"] + s["ldRX2"] + nmp * (1.0 + _LOG2PI + np.log(s["prss"] / nmp))
        return s["ldL2"] + self.n * (1.0 + _LOG2PI + np.log(s["prss"] / self.n))

    def sigma(self, theta: np.ndarray, reml: bool) -> float:
        s = self.solve(theta)
        return float(np.sqrt(s["prss"] / (self.n - self.p if reml else self.n)))

    def deviance_varpar(self, varpar: np.ndarray, reml: bool) -> float:
        """lmerTest's ``devfun_vp``: the deviance at (θ, σ), not profiled over σ."""
        varpar = np.asarray(varpar, dtype=float)
        theta, sigma2 = varpar[:-1], varpar[-1] ** 2
        s = self.solve(theta)
        dev = s["ldL2"] + s["prss"] / sigma2 + self.n * np.log(2.0 * np.pi * sigma2)
        if reml:
            dev += s["ldRX2"] - self.p * np.log(2.0 * np.pi * sigma2)
        return float(dev)

    def vcov_beta(self, varpar: np.ndarray) -> np.ndarray:
        """σ² (R_X'R_X)⁻¹ at (θ, σ) — lmerTest's ``get_covbeta``."""
        varpar = np.asarray(varpar, dtype=float)
        s = self.solve(varpar[:-1])
        RXi = sla.solve_triangular(s["RX"], np.eye(self.p), lower=False, check_finite=False)
        return varpar[-1] ** 2 * (RXi @ RXi.T)

    def random_modes(self, theta: np.ndarray, sigma: float) -> tuple[list, list]:
        """Conditional modes b = Λu per block (n_levels, q) and their conditional covariances."""
        s = self.solve(theta)
        u = sla.solve_triangular(s["L"], s["cu"] - s["RZX"] @ s["beta"], trans="T", lower=True,
                                 check_finite=False)
        b = np.asarray(s["lam"] @ u)
        Linv = sla.solve_triangular(s["L"], np.eye(self.q), lower=True, check_finite=False)
        # Var(b | y) = σ² Λ (L L')⁻¹ Λ'  (lme4's condVar); only the diagonal q×q blocks are needed.
        half = np.asarray(s["lam"] @ Linv.T)  # Λ L'⁻¹
        blups, condvar = [], []
        for blk, off in zip(self.spec.blocks, self.offsets):
            m = blk.n_levels * blk.q
            blups.append(b[off:off + m].reshape(blk.n_levels, blk.q))
            H = half[off:off + m]
            cv = np.empty((blk.n_levels, blk.q, blk.q))
            for lev in range(blk.n_levels):
                h = H[lev * blk.q:(lev + 1) * blk.q]
                cv[lev] = sigma ** 2 * (h @ h.T)
            condvar.append(cv)
        return blups, condvar


_MODELS: OrderedDict[int, tuple[ModelSpec, PLSModel]] = OrderedDict()


def pls_model(spec: ModelSpec) -> PLSModel:
    """A (cached) :class:`PLSModel` for *spec*; the cache keeps the last few specs."""
    return cached_model(_MODELS, spec, PLSModel)  # each holds a dense q×q Z'Z


def profiled_deviance(spec: ModelSpec, theta: np.ndarray, reml: bool = True) -> float:
    """The profiled REML criterion (reml) or deviance at θ, on lme4's scale."""
    return pls_model(spec).profiled_deviance(theta, reml)


def deviance_varpar(spec: ModelSpec, varpar: np.ndarray, reml: bool = True) -> float:
    """The REML or ML deviance at varpar = (θ..., σ), as lmerTest's ``devfun_vp``."""
    return pls_model(spec).deviance_varpar(varpar, reml)


def vcov_beta_varpar(spec: ModelSpec, varpar: np.ndarray) -> np.ndarray:
    """Var(β̂) = σ² (R_X'R_X)⁻¹ at varpar = (θ..., σ), as lmerTest's ``get_covbeta``."""
    return pls_model(spec).vcov_beta(varpar)


def _central_grad(f, x: np.ndarray, h: float = 1e-6) -> np.ndarray:
    g = np.empty_like(x)
    for i in range(x.size):
        step = h * max(1.0, abs(x[i]))
        xp, xm = x.copy(), x.copy()
        xp[i] += step
        xm[i] -= step
        g[i] = (f(xp) - f(xm)) / (2 * step)
    return g


def optimize_theta(spec: ModelSpec, reml: bool, start: np.ndarray | None = None,
                   options: dict | None = None) -> tuple[np.ndarray, float, bool, list[str], int]:
    """Minimise the profiled deviance over θ within lme4's bounds.

    L-BFGS-B with central-difference gradients, restarted from its optimum while a probe inside
    the bounds finds a lower deviance (lme4's ``restart_edge``; and, as the sparse engines do,
    a diagonal θ at 0 moved inside with its column of Λ kept or negated, which leaves the saddle
    a gradient optimiser can stop at there), then θ elements within ``boundary_tol`` of 0 are
    tried at 0 and kept there when the deviance is no larger (lme4's ``boundary.tol`` check).
    """
    options = dict(options or {})
    model = pls_model(spec)
    lb = theta_lower_bounds(spec)
    bounds = [(0.0 if lo == 0.0 else None, None) for lo in lb]
    x0 = theta_start(spec) if start is None else np.asarray(start, float).copy()
    x0 = np.maximum(x0, np.where(np.isfinite(lb), lb, -np.inf))
    n_eval = [0]

    def f(th):
        n_eval[0] += 1
        try:
            return model.profiled_deviance(th, reml)
        except (np.linalg.LinAlgError, ValueError):
            return np.inf

    def fg(th):
        return f(th), _central_grad(f, th)

    messages: list[str] = []
    x, fx = x0, f(x0)
    converged = False
    factors = factors_of(spec)
    lbfgs = {"maxiter": int(options.get("maxiter", 2000)), "ftol": 1e-15, "gtol": 1e-9,
             "maxcor": 20}
    # L-BFGS-B again from wherever a run improved or a probe found a lower deviance inside the
    # bounds (a diagonal θ at 0 moved inside, its column of Λ kept or negated); a probe's trial
    # point is always optimised from, never returned as it is
    probed = False
    for _attempt in range(6):
        res = minimize(fg, x, jac=True, method="L-BFGS-B", bounds=bounds, options=lbfgs)
        probed = False
        improved = res.fun < fx - 1e-10
        if res.fun <= fx:
            x, fx = np.asarray(res.x, float), float(res.fun)
        converged = bool(res.success) or "ABNORMAL" in str(res.message)
        if improved:
            continue
        best, best_f = probe_inside_bounds(f, x, fx, lb)
        if best is None:
            best, best_f = probe_zero_diagonals(factors, f, x, fx)
        if best is None:
            break
        x, fx, probed = best, best_f, True
    if probed:
        res = minimize(fg, x, jac=True, method="L-BFGS-B", bounds=bounds, options=lbfgs)
        if res.fun <= fx:
            x, fx = np.asarray(res.x, float), float(res.fun)
        converged = bool(res.success) or "ABNORMAL" in str(res.message)
    if not np.isfinite(fx):
        converged = False
        messages.append("the deviance could not be evaluated at any θ tried")
    # lme4's boundary check: values within boundary_tol of 0 are compared with exactly 0.
    btol = float(options.get("boundary_tol", 1e-5))
    for i in np.flatnonzero((lb == 0.0) & (x > 0) & (x < btol)):
        trial = x.copy()
        trial[i] = 0.0
        ft = f(trial)
        if ft <= fx:
            x, fx = trial, ft
    # Gradient check on free (interior) coordinates, as lme4's checkConv does on the scaled gradient.
    g = _central_grad(f, x)
    free = ~((lb == 0.0) & (x <= 0.0) & (g > 0))
    gmax = float(np.max(np.abs(g[free]))) if free.any() else 0.0
    if gmax > float(options.get("grad_tol", 2e-3)):
        converged = False
        messages.append(f"the optimiser stopped with a gradient of {gmax:.2g} on the deviance "
                        f"(tolerance 0.002)")
    return x, float(fx), converged, messages, n_eval[0]


class PLSEngine:
    """lme4's penalised least squares on dense matrices: any random structure, q ≤ ``MAX_Q``."""

    name = "pls"
    priority = 20  # exact for any structure; dense, so it declines large models

    def supports(self, spec: ModelSpec) -> tuple[bool, str]:
        q = sum(b.q * b.n_levels for b in spec.blocks)
        if q > MAX_Q:
            return False, (f"the model has {q} random effects; the dense engine 'pls' handles at "
                           f"most {MAX_Q}")
        if spec.n <= spec.p:
            return False, f"there are {spec.n} observations for {spec.p} fixed effects"
        return True, ""

    def fit(self, spec: ModelSpec, reml: bool = True, *, start: np.ndarray | None = None,
            options: dict | None = None) -> EngineResult:
        with blas_limits(spec):
            return self._fit(spec, reml, start, options)

    def _fit(self, spec: ModelSpec, reml: bool, start: np.ndarray | None,
             options: dict | None) -> EngineResult:
        model = pls_model(spec)
        theta, obj, converged, messages, nev = optimize_theta(spec, reml, start, options)
        s = model.solve(theta)
        sigma = model.sigma(theta, reml)
        vc = model.vcov_beta(np.append(theta, sigma))
        blups, condvar = model.random_modes(theta, sigma)
        return EngineResult(
            engine=self.name, reml=reml, theta=theta, beta=s["beta"].copy(), sigma=sigma,
            vcov_beta=vc, objective=obj, converged=converged, messages=messages,
            optimizer="L-BFGS-B (scipy) on the profiled deviance", n_evaluations=nev,
            blups=blups, blup_condvar=condvar,
            devfun_varpar=lambda vp, _m=model, _r=reml: _m.deviance_varpar(vp, _r),
            vcov_varpar=model.vcov_beta,
        )


register_engine(PLSEngine())
