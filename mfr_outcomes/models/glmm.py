"""glmer's method for generalised linear mixed models (binomial and Poisson families).

For θ (lme4's relative covariance factor) and β, PIRLS (:mod:`glmm_pirls`) finds the conditional
modes of the spherical random effects; the Laplace approximation (``nagq = 1``) or adaptive
Gauss–Hermite quadrature (``nagq > 1``, one scalar random effect) gives −2 log-likelihood.

With the exact Laplace gradient (``backend.has_gradient``: one scalar random effect, or a general
model whose factor is dense or eliminated) the fit is Newton's method over (θ, β) from lme4's θ and
the GLM's β: Hessian columns by forward differences of the gradient in θ (β's block 2 R_X'R_X)
while far, the full forward-difference Hessian at the end. Otherwise the optimiser works as
glmer's: a first stage over θ with β inside PIRLS (``nAGQ = 0``), then the full stage over (θ, β)
from there, quasi-Newton with central differences and glmer's ``deriv12`` Hessian. Newton steps
are projected on θ's bounds, with a bounded quasi-Newton fallback; Var(β̂) is 2 H⁻¹ restricted
to β, as ``vcov(glmerfit)`` (``use.hessian = TRUE``).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import optimize

from mfr_outcomes.models.families import Family
from mfr_outcomes.models.glmm_general import GeneralPirls
from mfr_outcomes.models.glmm_onefactor import OneFactorPirls
from mfr_outcomes.models.glmm_pirls import GlmmData, Modes
from mfr_outcomes.models.spec import ModelSpec, probe_inside_bounds, theta_lower_bounds, theta_start

__all__ = ["GlmmResult", "fit_glmm", "GLMM_OPTIONS", "deriv12", "make_backend"]

#: keys accepted in ``options`` of a generalised fit, with their defaults.
GLMM_OPTIONS = {
    "backend": "auto",  # "auto" | "one-factor" | "general"
    "max_newton": 30,  # Newton iterations of the full stage
    "newton_tol": 1e-9,  # stop when the Newton decrement (deviance units) is below this
    "delta": 1e-4,  # finite-difference step of the Hessian (glmer's deriv12)
    "maxiter": 1000,  # iterations of the first-stage optimiser and of the fallback
}


@dataclass
class GlmmResult:
    """A fitted GLMM on glmer's conventions (σ = 1)."""

    family: Family
    nagq: int
    theta: np.ndarray
    beta: np.ndarray
    vcov_beta: np.ndarray
    objective: float  # −2 log-likelihood (Laplace or AGQ), glmer's "deviance" in summary()
    conditional_deviance: float  # Σ deviance residuals at the modes: glmer's deviance()
    converged: bool
    messages: list[str]
    optimizer: str
    n_evaluations: int
    u: np.ndarray
    eta: np.ndarray
    mu: np.ndarray
    blups: list[np.ndarray]
    blup_condvar: list[np.ndarray]
    backend: str
    vcov_method: str  # "hessian" or "RX"
    hessian: np.ndarray | None = None
    gradient: np.ndarray | None = None
    stage1: dict = field(default_factory=dict)


def deriv12(fun, x: np.ndarray, delta: float, fx: float | None = None
            ) -> tuple[np.ndarray, np.ndarray]:
    """Central-difference gradient and Hessian, as lme4's ``deriv12``."""
    n = x.size
    fx = fun(x) if fx is None else fx
    H = np.zeros((n, n))
    g = np.zeros(n)
    for j in range(n):
        xa, xs = x.copy(), x.copy()
        xa[j] += delta
        xs[j] -= delta
        fa, fs = fun(xa), fun(xs)
        g[j] = (fa - fs) / (2.0 * delta)
        H[j, j] = (fa - 2.0 * fx + fs) / delta ** 2
        for i in range(j):
            pts = []
            for si, sj in ((1, 1), (1, -1), (-1, 1), (-1, -1)):
                xx = x.copy()
                xx[i] += si * delta
                xx[j] += sj * delta
                pts.append(fun(xx))
            H[i, j] = H[j, i] = (pts[0] - pts[1] - pts[2] + pts[3]) / (4.0 * delta ** 2)
    return g, H


def make_backend(spec: ModelSpec, data: GlmmData, *, force_general: bool = False
                 ) -> OneFactorPirls | GeneralPirls:
    """The batched one-factor backend when the model has one random term, else the general one."""
    if len(spec.blocks) == 1 and not force_general:
        return OneFactorPirls(spec, data)
    return GeneralPirls(spec, data)


class _Objective:
    """The deviance functions of both stages, with warm-started PIRLS and a call counter."""

    def __init__(self, backend, data: GlmmData, nagq: int, ntheta: int):
        self.backend, self.data, self.nagq, self.ntheta = backend, data, nagq, ntheta
        self.u: np.ndarray | None = None
        self.beta0: np.ndarray | None = None
        self.calls = 0
        self._last: tuple[np.ndarray, Modes] | None = None
        self.pirls_failures = 0

    def stage1(self, theta: np.ndarray) -> float:
        self.calls += 1
        m = self.backend.joint_modes(theta, self.beta0, self.u)
        if np.isfinite(m.laplace(self.data.const)):
            self.u, self.beta0 = m.u, m.beta
        self.pirls_failures += not m.converged
        return m.laplace(self.data.const)

    def modes(self, x: np.ndarray) -> Modes:
        if self._last is not None and np.array_equal(self._last[0], x):
            return self._last[1]  # f and its gradient at the same point share one PIRLS
        m = self.backend.modes(x[:self.ntheta], x[self.ntheta:], self.u)
        self.pirls_failures += not m.converged
        if m.converged:
            self.u = m.u
        self._last = (x.copy(), m)
        return m

    def full(self, x: np.ndarray) -> float:
        self.calls += 1
        m = self.modes(x)
        if self.nagq > 1:
            return self.backend.agq(x[:self.ntheta], m, self.nagq)
        return m.laplace(self.data.const)

    @property
    def analytic(self) -> bool:
        """The exact Laplace gradient is available (nagq = 1, a factor whose inverse is formed)."""
        return self.nagq == 1 and self.backend.has_gradient

    def grad(self, x: np.ndarray) -> np.ndarray:
        self.calls += 1
        m = self.modes(x)
        try:
            return self.backend.laplace_gradient(x[:self.ntheta], m)
        except np.linalg.LinAlgError:  # H = A'diag(d″)A + 2I indefinite (non-canonical link)
            return _gradient(self.full, x, GLMM_OPTIONS["delta"])

    def derivs(self, x: np.ndarray, fx: float, delta: float, full: bool = True
               ) -> tuple[np.ndarray, np.ndarray]:
        """(gradient, Hessian): analytic gradient and forward differences of it when
        available, else glmer's deriv12 on the deviance.

        With ``full=False`` (analytic only) the differences are taken in θ alone and the β
        block is 2 R_X'R_X (the curvature of the penalised deviance given θ, exact for
        canonical links up to log|M|'s): a Newton step for ntheta + 1 gradients instead of
        ntheta + p + 1. The Hessian returned with the estimates is always the full one.
        """
        if not self.analytic:
            return deriv12(self.full, x, delta, fx)
        g = self.grad(x)
        m = self.modes(x)
        nt = self.ntheta
        H = np.zeros((x.size, x.size))
        h = 1e-6  # forward differences of the exact gradient: error O(h) relative
        cols = range(x.size if full else nt)
        sens = getattr(self.backend, "mode_sensitivity", None)
        dU = sens(x[:nt], m) if sens is not None else None
        for j in cols:
            xa = x.copy()
            xa[j] += h
            # PIRLS at xa starts from û(x) + h dû/dxⱼ, exact to O(h²)
            self.u = m.u if dU is None else m.u + h * dU[:, j]
            H[:, j] = (self.grad(xa) - g) / h
        if not full:
            H[nt:, nt:] = 2.0 * self.backend.schur(x[:nt], m)
            H[:nt, nt:] = H[nt:, :nt].T
        self.u = m.u  # leave the warm start at x
        self._last = (x.copy(), m)
        return g, 0.5 * (H + H.T)

    def gradient(self, x: np.ndarray, delta: float) -> np.ndarray:
        return self.grad(x) if self.analytic else _gradient(self.full, x, delta)


def _glm_start(data: GlmmData, maxit: int = 50) -> np.ndarray:
    """β of the GLM without random effects (IRLS from the family's starting μ)."""
    fam = data.family
    eta = fam.linkfun(fam.start_mu(data.y, data.weights))
    beta = np.zeros(data.X.shape[1])
    for _ in range(maxit):
        mu, mu_eta = fam.linkinv(eta), fam.mu_eta(eta)
        W = data.weights * mu_eta ** 2 / np.maximum(fam.variance(mu), 1e-300)
        z = eta - data.offset + (data.y - mu) / mu_eta
        XtW = data.X.T * W
        new = np.linalg.lstsq(XtW @ data.X, XtW @ z, rcond=None)[0]
        if np.max(np.abs(new - beta)) < 1e-10:
            beta = new
            break
        beta = new
        eta = data.offset + data.X @ beta
    return beta


def _minimize_bounded(f, x0: np.ndarray, lower: np.ndarray, maxiter: int, delta: float = 1e-6,
                      ftol: float = 1e-15, gtol: float = 1e-8):
    """L-BFGS-B with central-difference gradients (one-sided at a bound)."""
    bounds = [(lo if np.isfinite(lo) else None, None) for lo in lower]

    def fg(x):
        fx = f(x)
        g = np.zeros_like(x)
        for j in range(x.size):
            h = delta * max(1.0, abs(x[j]))
            xa, xs = x.copy(), x.copy()
            xa[j] += h
            if x[j] - h < lower[j]:
                g[j] = (f(xa) - fx) / h
            else:
                xs[j] -= h
                g[j] = (f(xa) - f(xs)) / (2 * h)
        return fx, g

    res = optimize.minimize(fg, x0, jac=True, method="L-BFGS-B", bounds=bounds,
                            options={"maxiter": maxiter, "ftol": ftol, "gtol": gtol})
    return res


def _stage1(obj: _Objective, theta0: np.ndarray, lower: np.ndarray, maxiter: int,
            xatol: float = 1e-9, upper: float = 50.0, ftol: float = 1e-15):
    """glmer's nAGQ = 0 stage: θ optimised with β inside PIRLS. As the start of the full stage
    (``xatol``, ``ftol`` loose) it only has to land near the optimum, whose basin it finds."""
    if theta0.size == 1:  # scalar θ: a bracketed 1-D search is cheaper and as tight
        res = optimize.minimize_scalar(lambda t: obj.stage1(np.array([t])), bounds=(0.0, upper),
                                       method="bounded", options={"xatol": xatol,
                                                                   "maxiter": maxiter})
        theta, fval = np.array([res.x]), float(res.fun)
        f0 = obj.stage1(np.zeros(1))
        if f0 <= fval:
            theta, fval = np.zeros(1), f0
        obj.stage1(theta)
        return theta, fval
    res = _minimize_bounded(obj.stage1, theta0, lower, maxiter, ftol=ftol)
    theta, fval = res.x, float(res.fun)
    trial, ft = probe_inside_bounds(obj.stage1, theta, fval, lower)
    if trial is not None:
        res = _minimize_bounded(obj.stage1, trial, lower, maxiter, ftol=ftol)
        theta, fval = res.x, float(res.fun)
    obj.stage1(theta)  # leave the warm start at the optimum
    return theta, fval


def _gradient(fun, x: np.ndarray, delta: float) -> np.ndarray:
    g = np.zeros_like(x)
    for j in range(x.size):
        xa, xs = x.copy(), x.copy()
        xa[j] += delta
        xs[j] -= delta
        g[j] = (fun(xa) - fun(xs)) / (2.0 * delta)
    return g


def _start_hessian(obj: _Objective, x: np.ndarray, f: float, delta: float) -> np.ndarray:
    """A cheap first Hessian for the quasi-Newton path: 2 R_X'R_X for β (the curvature given
    θ), second differences on the diagonal for θ, no cross terms."""
    nt = obj.ntheta
    H = np.zeros((x.size, x.size))
    m = obj.modes(x)
    H[nt:, nt:] = 2.0 * obj.backend.schur(x[:nt], m)
    for j in range(nt):
        xa, xs = x.copy(), x.copy()
        xa[j] += delta
        xs[j] -= delta
        H[j, j] = max((obj.full(xa) - 2.0 * f + obj.full(xs)) / delta ** 2, 1e-3)
    return H


#: largest Newton step in θ (times max(1, |θ|)) on the exact-gradient path
THETA_STEP = 0.5


def _newton(obj: _Objective, x: np.ndarray, lower: np.ndarray, opts: dict):
    """Projected (quasi-)Newton on the full deviance; returns x, f, g, H, converged, messages.

    With the exact gradient, Newton steps on forward differences of the gradient (in θ only while
    the decrement is large, see :meth:`_Objective.derivs`). Otherwise the expensive finite-difference Hessian is computed only
    at the end: steps start from a cheap approximation (:func:`_start_hessian`) updated by BFGS
    from finite-difference gradients. Either way the Hessian returned is evaluated at the point
    returned, because Var(β̂) is read from it.
    """
    f = obj.full(x)
    messages: list[str] = []
    delta = opts["delta"]
    if obj.analytic:
        g, H = obj.derivs(x, f, delta, full=False)
        fresh = False
    else:
        g, H = obj.gradient(x, delta), _start_hessian(obj, x, f, delta)
        fresh = False
    for _ in range(int(opts["max_newton"])):
        active = (lower == 0.0) & (x <= 0.0) & (g >= 0.0)
        free = ~active
        step = np.zeros_like(x)
        Hf = H[np.ix_(free, free)]
        try:
            L = np.linalg.cholesky(Hf)
            step[free] = -np.linalg.solve(L.T, np.linalg.solve(L, g[free]))
            pd = True
        except np.linalg.LinAlgError:
            if not fresh and not obj.analytic:
                g, H = obj.derivs(x, f, delta)
                fresh = True
                continue
            # far from the optimum (e.g. from the start): a modified Newton step, the
            # Hessian's eigenvalues replaced by their absolute values
            ev, V = np.linalg.eigh(Hf)
            ev = np.maximum(np.abs(ev), 1e-8 * max(float(np.max(np.abs(ev))), 1.0))
            step[free] = -V @ ((V.T @ g[free]) / ev)
            pd = False
        decrement = float(-g @ step)
        if decrement < opts["newton_tol"]:
            if fresh and pd:
                return x, f, g, H, True, messages
            if fresh:
                messages.append("the Hessian is not positive definite at the optimum found")
                return x, f, g, H, False, messages
            g, H = obj.derivs(x, f, delta)
            fresh = True
            continue
        nt = obj.ntheta
        if obj.analytic and nt:  # far from the optimum a Newton step in θ can leap: cap it
            big = float(np.max(np.abs(step[:nt])))
            lim = THETA_STEP * max(1.0, float(np.max(np.abs(x[:nt]))))
            if big > lim:
                step = step * (lim / big)
        slope = float(-g @ step)
        t = 1.0
        for _ in range(30):
            x_try = np.maximum(x + t * step, lower)
            f_try = obj.full(x_try)
            if f_try <= f - 1e-4 * t * slope:
                break
            t *= 0.5
        else:
            if not fresh:
                g, H = obj.derivs(x, f, delta)
                fresh = True
                continue
            messages.append("the Newton line search made no progress")
            return x, f, g, H, False, messages
        if obj.analytic and decrement > 1e-2:  # far away: a new θ curvature pays for itself
            x, f = x_try, f_try
            g, H = obj.derivs(x, f, delta, full=False)
            fresh = False
            continue
        g_new = obj.gradient(x_try, delta)
        sx, yv = x_try - x, g_new - g
        if not obj.analytic and sx @ yv > 1e-12 * np.linalg.norm(sx) * np.linalg.norm(yv):
            Hs = H @ sx
            H = H - np.outer(Hs, Hs) / (sx @ Hs) + np.outer(yv, yv) / (sx @ yv)  # BFGS
        x, f, g = x_try, f_try, g_new
        fresh = False
    messages.append(f"no convergence within {opts['max_newton']} Newton iterations")
    return x, f, g, H, False, messages


def _newton_probed(obj: _Objective, x: np.ndarray, lower: np.ndarray, opts: dict):
    """:func:`_newton`, restarted from just inside θ's bound when it stops at a diagonal θ = 0
    and a lower deviance lies inside (a projected Newton step can land there and stay)."""
    nt = obj.ntheta
    out = _newton(obj, x, lower, opts)
    for _ in range(nt):
        x, f = out[0], out[1]
        beta = x[nt:]
        trial, _ft = probe_inside_bounds(lambda t, b=beta: obj.full(np.concatenate([t, b])),
                                         x[:nt], f, lower[:nt])
        if trial is None:
            break
        out = _newton(obj, np.concatenate([trial, x[nt:]]), lower, opts)
    return out


def fit_glmm(spec: ModelSpec, family: Family, *, nagq: int = 1, weights: np.ndarray | None = None,
             offset: np.ndarray | None = None, options: dict | None = None) -> GlmmResult:
    """Fit a GLMM to a :class:`ModelSpec` by glmer's method.

    Parameters
    ----------
    spec : ModelSpec
    family : Family
    nagq : int
        0: the first stage only (β inside PIRLS, glmer's ``nAGQ = 0``); 1: Laplace; > 1: adaptive
        Gauss–Hermite quadrature with that many nodes (one scalar random-effects term only).
    weights, offset : ndarray, optional
        Prior weights (binomial trials) and an offset of the linear predictor, row-aligned.
    options : dict, optional
        Keys of :data:`GLMM_OPTIONS`; an unknown key is an error.

    Returns
    -------
    GlmmResult
    """
    opts = dict(GLMM_OPTIONS)
    unknown = sorted(set(options or {}) - set(GLMM_OPTIONS))
    if unknown:
        raise ValueError(f"Unknown option(s) {unknown} for a generalised mixed model; known: "
                         f"{', '.join(GLMM_OPTIONS)}.")
    opts.update(options or {})
    nagq = int(nagq)
    if nagq < 0:
        raise ValueError(f"nagq must be 0, 1 or more; got {nagq}.")
    if nagq > 1 and not (len(spec.blocks) == 1 and spec.blocks[0].q == 1):
        raise ValueError("nagq > 1 is only available for models with a single, scalar "
                         "random-effects term (as in lme4); use nagq=1 (Laplace).")
    n = spec.n
    data = GlmmData(y=spec.y, X=spec.X,
                    weights=np.ones(n) if weights is None else np.asarray(weights, float),
                    offset=np.zeros(n) if offset is None else np.asarray(offset, float),
                    family=family)
    if opts["backend"] not in ("auto", "one-factor", "general"):
        raise ValueError(f"options['backend'] must be 'auto', 'one-factor' or 'general'; got "
                         f"{opts['backend']!r}.")
    if opts["backend"] == "one-factor" and len(spec.blocks) != 1:
        raise ValueError("The one-factor backend needs exactly one random-effects term.")
    backend = make_backend(spec, data, force_general=opts["backend"] == "general")
    from mfr_outcomes.models.pls import blas_limits

    with blas_limits(spec):
        return _fit(spec, family, backend, data, nagq, opts)


def _fit(spec: ModelSpec, family: Family, backend, data: GlmmData, nagq: int,
         opts: dict) -> GlmmResult:
    backend_name = type(backend).__name__
    lower = theta_lower_bounds(spec)
    ntheta = lower.size
    obj = _Objective(backend, data, nagq, ntheta)
    obj.beta0 = _glm_start(data)
    # the first stage only gives the start of the full one, unless it is the fit (nagq = 0)
    if obj.analytic:
        # with the exact gradient, Newton from lme4's start θ and the GLM's β is cheaper than
        # the nAGQ = 0 stage (which costs more evaluations than the Newton path it shortens);
        # bound traps are probed after it (_newton_probed)
        theta1 = theta_start(spec)
        f1 = obj.full(np.concatenate([theta1, obj.beta0]))
    else:
        theta1, f1 = _stage1(obj, theta_start(spec), lower, int(opts["maxiter"]),
                             xatol=1e-9 if nagq == 0 else 1e-2, upper=50.0 if nagq == 0 else 10.0)
    beta1 = obj.beta0.copy()
    stage1 = {"theta": theta1, "beta": beta1, "objective": f1, "evaluations": obj.calls}
    messages: list[str] = []
    if nagq == 0:
        m = backend.joint_modes(theta1, beta1, obj.u)
        S = backend.schur(theta1, m)
        vcov = np.linalg.inv(S)
        return _result(backend, family, 0, theta1, m, vcov, f1, True, messages,
                       "nAGQ=0: bounded 1-D / L-BFGS-B over θ, β in PIRLS", obj, backend_name,
                       "RX", None, None, stage1)
    x0 = np.concatenate([theta1, beta1])
    lower_x = np.concatenate([lower, np.full(spec.p, -np.inf)])
    x, f, g, H, ok, msgs = _newton_probed(obj, x0, lower_x, opts)
    optimizer = ("Newton over (θ, β): exact Laplace gradient, Hessian by its forward differences"
                 if obj.analytic else
                 "Newton over (θ, β): Hessian and gradient by central differences (deriv12)")
    if not ok:
        messages += [f"Newton stage: {m}" for m in msgs]
        res = _minimize_bounded(obj.full, x, lower_x, int(opts["maxiter"]))
        x, f = res.x, float(res.fun)
        optimizer = "L-BFGS-B over (θ, β) after Newton"
        g, H = obj.derivs(x, f, opts["delta"])
        free = ~((lower_x == 0.0) & (x <= 0.0) & (g >= 0.0))
        ok = bool(res.success) and float(np.max(np.abs(g[free]), initial=0.0)) < 1e-3
        if not ok:
            messages.append(f"the optimiser stopped with gradient {np.max(np.abs(g[free])):.2g} "
                            f"({res.message})")
    m = obj.modes(x)
    if obj.pirls_failures:
        messages.append(f"PIRLS did not converge in {obj.pirls_failures} evaluation(s)")
    vcov, vmethod = _vcov_from_hessian(H, ntheta)
    if vcov is None:
        messages.append("the finite-difference Hessian is not positive definite; Var(β̂) from "
                        "R_X (as glmer does in that case)")
        vcov, vmethod = np.linalg.inv(backend.schur(x[:ntheta], m)), "RX"
    return _result(backend, family, nagq, x[:ntheta], m, vcov, f, ok, messages, optimizer, obj,
                   backend_name, vmethod, H, g, stage1)


def _vcov_from_hessian(H: np.ndarray | None, ntheta: int):
    if H is None or not np.all(np.isfinite(H)):
        return None, ""
    try:
        np.linalg.cholesky(H)
    except np.linalg.LinAlgError:
        return None, ""
    return 2.0 * np.linalg.inv(H)[ntheta:, ntheta:], "hessian"


def _result(backend, family, nagq, theta, m: Modes, vcov, objective, converged, messages,
            optimizer, obj, backend_name, vmethod, H, g, stage1) -> GlmmResult:
    blups, condvar = backend.blups(theta, m)
    return GlmmResult(family=family, nagq=nagq, theta=np.asarray(theta, float), beta=m.beta,
                      vcov_beta=vcov, objective=float(objective),
                      conditional_deviance=m.devres, converged=bool(converged),
                      messages=messages, optimizer=optimizer, n_evaluations=obj.calls, u=m.u,
                      eta=m.eta, mu=m.mu, blups=blups, blup_condvar=condvar,
                      backend=backend_name, vcov_method=vmethod, hessian=H, gradient=g,
                      stage1=stage1)
