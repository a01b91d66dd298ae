"""Small-sample inference for mixed models: Satterthwaite df (lmerTest), LRT ``compare`` (lme4's anova).

Satterthwaite follows Kuznetsova, Brockhoff & Christensen (2017, JSS 82(13)) and lmerTest's code:
with varpar = (θ, σ), A = 2 H⁻¹ where H is the Hessian of the (REML or ML) deviance in varpar at
the optimum, and for a contrast row l the df are 2 (l'Vl)² / (g'Ag) with g the gradient of
l'V(varpar)l. Derivatives are numDeriv's Richardson extrapolation (``genD`` and ``jacobian``), as
lmerTest uses.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from scipy import special  # t and normal tails; scipy.stats costs ~0.3 s to import (see _stats)

if TYPE_CHECKING:  # pragma: no cover
    from mfr_outcomes.models.fit import MixedFit

__all__ = [
    "richardson_hessian",
    "richardson_jacobian",
    "SatterthwaiteData",
    "satterthwaite_data",
    "satterthwaite_df",
    "contest_1d",
    "contest_md",
    "compare",
    "confint_variance",
    "anova_type3",
    "KenwardRogerData",
    "kenward_roger_data",
    "kenward_roger_dense",
]

_ZERO_TOL = np.sqrt(np.finfo(float).eps / 7e-7)


def richardson_hessian(f: Callable[[np.ndarray], float], x: np.ndarray, *, d: float = 0.1,
                       eps: float = 1e-4, r: int = 4, v: float = 2.0) -> np.ndarray:
    """Hessian of a scalar function by numDeriv's ``genD`` (central differences, Richardson)."""
    x = np.asarray(x, dtype=float)
    n = x.size
    f0 = f(x)
    h0 = np.abs(d * x) + eps * (np.abs(x) < _ZERO_TOL)
    hdiag = np.zeros(n)
    H = np.zeros((n, n))

    def extrapolate(a: np.ndarray) -> float:
        a = a.copy()
        for m in range(1, r):
            for k in range(r - m):
                a[k] = (a[k + 1] * 4.0 ** m - a[k]) / (4.0 ** m - 1)
        return float(a[0])

    for i in range(n):
        h = h0.copy()
        ha = np.zeros(r)
        for k in range(r):
            e = np.zeros(n)
            e[i] = h[i]
            ha[k] = (f(x + e) - 2 * f0 + f(x - e)) / h[i] ** 2
            h = h / v
        hdiag[i] = extrapolate(ha)
        H[i, i] = hdiag[i]
    for i in range(n):
        for j in range(i):
            h = h0.copy()
            da = np.zeros(r)
            for k in range(r):
                e = np.zeros(n)
                e[i], e[j] = h[i], h[j]
                da[k] = (f(x + e) - 2 * f0 + f(x - e) - hdiag[i] * h[i] ** 2
                         - hdiag[j] * h[j] ** 2) / (2 * h[i] * h[j])
                h = h / v
            H[i, j] = H[j, i] = extrapolate(da)
    return H


def richardson_jacobian(f: Callable[[np.ndarray], np.ndarray], x: np.ndarray, *,
                        d: float = 1e-4, eps: float = 1e-4, r: int = 4,
                        v: float = 2.0) -> list[np.ndarray]:
    """Derivatives of an array-valued function, one array per coordinate of x (numDeriv's
    ``jacobian`` with Richardson extrapolation)."""
    x = np.asarray(x, dtype=float)
    out = []
    for i in range(x.size):
        h = abs(d * x[i]) + eps * (abs(x[i]) < _ZERO_TOL)
        approx = []
        for _ in range(r):
            e = np.zeros(x.size)
            e[i] = h
            approx.append((np.asarray(f(x + e)) - np.asarray(f(x - e))) / (2 * h))
            h /= v
        for m in range(1, r):
            for k in range(r - m):
                approx[k] = (approx[k + 1] * 4.0 ** m - approx[k]) / (4.0 ** m - 1)
        out.append(approx[0])
    return out


class SatterthwaiteData:
    """What Satterthwaite df need, computed once per fit: A = 2H⁻¹ and ∂Var(β̂)/∂varpar."""

    def __init__(self, vcov: np.ndarray, A: np.ndarray, jac: list[np.ndarray],
                 messages: list[str]):
        self.vcov = vcov
        self.A = A
        self.jac = jac
        self.messages = messages

    def df_1d(self, row: np.ndarray) -> float:
        row = np.asarray(row, dtype=float)
        var = float(row @ self.vcov @ row)
        g = np.array([float(row @ J @ row) for J in self.jac])
        denom = float(g @ self.A @ g)
        if not np.isfinite(denom) or denom <= 0:
            return np.inf
        return 2.0 * var ** 2 / denom


def satterthwaite_data(devfun: Callable[[np.ndarray], float],
                       vcovfun: Callable[[np.ndarray], np.ndarray], varpar: np.ndarray,
                       vcov: np.ndarray, *,
                       hessian: Callable[[np.ndarray], np.ndarray] | None = None,
                       jacobian: Callable[[np.ndarray], np.ndarray] | None = None
                       ) -> SatterthwaiteData:
    """Hessian of the deviance in varpar and the Jacobian of Var(β̂), as lmerTest's ``as_lmerModLT``.

    *hessian* and *jacobian*, when given (an engine's closed forms, ``EngineResult.hessian_varpar``
    and ``jacobian_vcov_varpar``), replace the finite differences of *devfun* and *vcovfun*.
    """
    messages: list[str] = []
    H = (richardson_hessian(devfun, varpar) if hessian is None
         else np.asarray(hessian(varpar), dtype=float))
    H = (H + H.T) / 2
    # lmerTest (as_lmerModLT, tol = 1e-8): warn on negative or near-zero eigenvalues and invert H
    # on its positive eigen-space only.
    tol = 1e-8
    ev, vec = np.linalg.eigh(H)
    neg, zero, pos = ev < -tol, np.abs(ev) <= tol, ev > tol
    if neg.any():
        messages.append(f"the model may not have converged: the Hessian of the deviance in "
                        f"(θ, σ) has {int(neg.sum())} negative eigenvalue(s) "
                        f"({', '.join(f'{v:.1e}' for v in ev[neg])})")
    if zero.any():
        messages.append(f"the model may not have converged: the Hessian of the deviance in "
                        f"(θ, σ) has {int(zero.sum())} eigenvalue(s) close to zero")
    A = 2.0 * (vec[:, pos] / ev[pos]) @ vec[:, pos].T
    jac = (richardson_jacobian(vcovfun, varpar) if jacobian is None
           else list(np.asarray(jacobian(varpar), dtype=float)))
    return SatterthwaiteData(np.asarray(vcov), A, jac, messages)


def satterthwaite_df(sd: SatterthwaiteData, L: np.ndarray) -> np.ndarray:
    """Satterthwaite df of each row of L."""
    L = np.atleast_2d(np.asarray(L, dtype=float))
    return np.array([sd.df_1d(row) for row in L])


def _table(L: np.ndarray, beta: np.ndarray, vcov: np.ndarray, df: np.ndarray, names: Sequence[str],
           level: float) -> pd.DataFrame:
    est = L @ beta
    se = np.sqrt(np.maximum(np.einsum("ij,jk,ik->i", L, vcov, L), 0.0))
    with np.errstate(divide="ignore", invalid="ignore"):
        stat = est / se
    df = np.asarray(df, dtype=float)
    finite = np.isfinite(df)
    dfs = np.where(finite, df, 1.0)
    p = np.where(finite, 2 * special.stdtr(dfs, -np.abs(stat)), 2 * special.ndtr(-np.abs(stat)))
    q = np.where(finite, special.stdtrit(dfs, 0.5 + level / 2), special.ndtri(0.5 + level / 2))
    return pd.DataFrame({"term": list(names), "estimate": est, "std_error": se, "df": df,
                         "statistic": stat, "p_value": p, "ci_low": est - q * se,
                         "ci_high": est + q * se})


def contest_1d(fit: MixedFit, L: np.ndarray, names: Sequence[str] | None = None,
               level: float = 0.95) -> pd.DataFrame:
    """One t test per row of L with the fit's df method (see ``MixedFit.linear_contrast``)."""
    L = np.atleast_2d(np.asarray(L, dtype=float))
    if names is None:
        names = [f"contrast {i + 1}" for i in range(L.shape[0])]
    df = fit._df_for(L)
    return _table(L, fit.result.beta, fit._vcov_for_tests(), df, names, level)


def contest_md(fit: MixedFit, L: np.ndarray, name: str = "") -> dict:
    """Joint F test of the rows of L (lmerTest's ``contestMD``, Satterthwaite denominator df).

    Returns a dict with term, num_df, den_df, statistic (F) and p_value.
    """
    from scipy import stats

    L = np.atleast_2d(np.asarray(L, dtype=float))
    beta, V = fit.result.beta, fit._vcov_for_tests()
    VL = L @ V @ L.T
    lam, P = np.linalg.eigh(VL)
    keep = lam > max(lam.max(), 0) * 1e-8
    lam, P = lam[keep], P[:, keep]
    qrank = int(keep.sum())
    PtL = P.T @ L
    t2 = (PtL @ beta) ** 2 / lam
    F = float(t2.sum() / qrank)
    if fit.df_method == "kenward-roger":  # lmerTest: pbkrtest's KRmodcomp, scaled F
        den, scaling = fit._kenward_roger().adjust(L)
        F *= scaling
    elif fit.df_method == "satterthwaite":
        nu = fit._df_for(PtL)
        finite = nu[np.isfinite(nu)]
        if qrank == 1:
            den = float(nu[0])
        else:
            E = float(np.sum(np.where(nu > 2, nu / np.maximum(nu - 2, 1e-12), 0.0)))
            den = 2 * E / (E - qrank) if E > qrank else 0.0
            if den <= 0 or not finite.size:
                den = float(np.min(nu))
    else:
        den = float(fit._df_for(PtL[:1])[0])
    p = float(stats.f.sf(F, qrank, den)) if np.isfinite(den) else float(stats.chi2.sf(F * qrank,
                                                                                        qrank))
    return {"term": name, "num_df": qrank, "den_df": den, "statistic": F, "p_value": p}


def compare(*fits: MixedFit, refit: bool = True) -> pd.DataFrame:
    """Likelihood-ratio tests between nested fits, as lme4's ``anova(m0, m1)``.

    Models fitted by REML are refitted by ML first (``refit=True``, lme4's default), since REML
    likelihoods of models with different fixed effects are not comparable. Models are ordered by
    their number of parameters.

    Returns
    -------
    DataFrame
        model, npar, aic, bic, loglik, deviance, chisq, df, p_value (one row a model; the test
        columns compare each model with the one above it).
    """
    from scipy import stats

    if len(fits) < 2:
        raise ValueError("compare() needs at least two fitted models.")
    nobs = {f.nobs for f in fits}
    if len(nobs) > 1:
        raise ValueError(f"The models were fitted to different numbers of observations "
                         f"({sorted(nobs)}); a likelihood-ratio test needs the same rows.")
    use = []
    for f in fits:
        if f.reml and refit:
            f = f.refit_ml()
        use.append(f)
    rows = []
    for i, f in enumerate(use):
        npar = f.npar
        rows.append({"model": fits[i].formula, "npar": npar, "aic": f.aic, "bic": f.bic,
                     "loglik": f.loglik, "deviance": -2 * f.loglik})
    out = pd.DataFrame(rows)
    out = out.iloc[np.argsort(out["npar"].to_numpy(), kind="stable")].reset_index(drop=True)
    chisq = [np.nan]
    dfs = [np.nan]
    for i in range(1, len(out)):
        chisq.append(max(out["deviance"][i - 1] - out["deviance"][i], 0.0))
        dfs.append(out["npar"][i] - out["npar"][i - 1])
    out["chisq"] = chisq
    out["df"] = dfs
    out["p_value"] = [np.nan] + [float(stats.chi2.sf(c, d)) if d > 0 else np.nan
                                 for c, d in zip(chisq[1:], dfs[1:])]
    return out


def _varcomp_params(spec, theta: np.ndarray, sigma: float) -> list[float]:
    """sd of each random term, correlations within blocks, then σ (lme4's .sig01, ... order)."""
    from mfr_outcomes.models.spec import block_lambda

    out, k = [], 0
    for b in spec.blocks:
        lam = block_lambda(theta[k:k + b.n_theta], b.q)
        k += b.n_theta
        cov = sigma ** 2 * lam @ lam.T
        sd = np.sqrt(np.diag(cov))
        for j in range(b.q):
            out.append(sd[j])
            for i in range(j + 1, b.q):
                out.append(cov[i, j] / (sd[i] * sd[j]) if sd[i] * sd[j] > 0 else np.nan)
    out.append(sigma)
    return out


def _varcomp_labels(spec) -> list[tuple[str, str | None, str | None, str]]:
    labels = []
    for b in spec.blocks:
        for j in range(b.q):
            labels.append((b.group, b.terms[j], None, "sd"))
            for i in range(j + 1, b.q):
                labels.append((b.group, b.terms[j], b.terms[i], "corr"))
    labels.append(("Residual", None, None, "sigma"))
    return labels


def _simulate(fit: MixedFit, rng: np.random.Generator) -> np.ndarray:
    from mfr_outcomes.models.spec import block_lambda

    spec = fit.spec
    y = spec.X @ fit.result.beta + fit.sigma * rng.standard_normal(spec.n)
    k = 0
    for b in spec.blocks:
        lam = block_lambda(fit.theta[k:k + b.n_theta], b.q)
        k += b.n_theta
        u = rng.standard_normal((b.n_levels, b.q))
        bvals = fit.sigma * u @ lam.T
        y = y + np.einsum("ij,ij->i", b.Z, bvals[b.codes])
    return y


def _profile_intervals(fit: MixedFit, level: float) -> list[tuple[float, float]]:
    """Likelihood-profile limits of each variance parameter (sd, corr, σ) of the fitted criterion.

    Parametrised as lme4's profile is, by the sds and correlations themselves: the deviance in
    (θ, σ) is minimised under the constraint that one parameter is fixed (SLSQP), and the limit is
    where the profiled deviance exceeds its minimum by the χ²₁ quantile.
    """
    from scipy import stats
    from scipy.optimize import brentq, minimize

    from mfr_outcomes.models import pls
    from mfr_outcomes.models.spec import theta_lower_bounds

    spec, reml = fit.spec, fit.reml
    devfun = fit.result.devfun_varpar or (lambda vp: pls.deviance_varpar(spec, vp, reml))
    x_hat = np.append(fit.theta, fit.sigma)
    d_min = float(devfun(x_hat))
    crit = stats.chi2.ppf(level, 1)
    lb = np.append(theta_lower_bounds(spec), 0.0)
    bounds = [(0.0 if lo == 0.0 else None, None) for lo in lb]
    est = _varcomp_params(spec, fit.theta, fit.sigma)
    labels = _varcomp_labels(spec)
    def pls_dev(th):
        return pls.profiled_deviance(spec, th, reml)

    def _safe(f, x):
        try:
            val = float(f(x))
        except (np.linalg.LinAlgError, ValueError):
            return 1e100
        return val if np.isfinite(val) else 1e100

    def param(vp, k):
        return _varcomp_params(spec, vp[:-1], vp[-1])[k]

    def safe_dev(vp):
        try:
            val = float(devfun(vp))
        except (np.linalg.LinAlgError, ValueError):
            return 1e100
        return val if np.isfinite(val) else 1e100

    out = []
    for k, value in enumerate(est):
        start = {"x": x_hat.copy()}

        kind = labels[k][3]

        def prof(target, k=k, start=start, kind=kind):
            if kind == "corr":  # a function of θ only: constrained minimum of the σ-profiled
                cons = {"type": "eq", "fun": lambda th: param(np.append(th, 1.0), k) - target}
                res = minimize(lambda th: _safe(pls_dev, th), start["x"][:-1], method="SLSQP",
                               bounds=bounds[:-1], constraints=[cons],
                               options={"maxiter": 500, "ftol": 1e-12})
                if res.success:
                    start["x"] = np.append(res.x, start["x"][-1])
                return float(res.fun) - d_min - crit
            if kind == "sigma":
                def dev(th):
                    return safe_dev(np.append(th, target))
            else:  # sd of a term: σ follows from θ, sd = σ·‖row of Λ‖
                def dev(th):
                    norm = param(np.append(th, 1.0), k)
                    if not norm > 1e-12:
                        return 1e100
                    return safe_dev(np.append(th, target / norm))
            best = minimize(dev, start["x"][:-1], method="L-BFGS-B", bounds=bounds[:-1],
                            options={"ftol": 1e-13, "gtol": 1e-6, "maxiter": 500})
            th = np.asarray(best.x)
            sig = target if kind == "sigma" else target / max(param(np.append(th, 1.0), k),
                                                              1e-12)
            start["x"] = np.append(th, sig)
            return float(best.fun) - d_min - crit

        is_corr = kind == "corr"
        root_crit = np.sqrt(crit)

        def zeta(t, prof=prof, root_crit=root_crit):
            # signed-root scale: near linear in the parameter, so the secant steps converge fast
            return np.sqrt(max(prof(t) + crit, 0.0)) - root_crit

        limits = []
        for direction in (-1, 1):
            start["x"] = x_hat.copy()
            if is_corr:
                lo_edge, hi_edge = -1.0, 1.0
                step = 0.25 * direction
            else:
                lo_edge, hi_edge = 0.0, np.inf
                step = direction * 0.3 * max(abs(value), fit.sigma * 1e-3)
            t_prev, z_prev = value, -root_crit
            t = float(np.clip(value + step, lo_edge, hi_edge))
            limit = lo_edge if direction < 0 else hi_edge
            for _ in range(25):
                z = zeta(t)
                if z >= 0:
                    try:
                        limit = brentq(zeta, min(t_prev, t), max(t_prev, t),
                                       xtol=2e-5 * max(abs(value), 1e-3), rtol=1e-6)
                    except ValueError:
                        limit = t
                    break
                edge = lo_edge if direction < 0 else hi_edge
                if t == edge:
                    limit = edge
                    break
                slope = (z - z_prev) / (t - t_prev) if t != t_prev else 0.0
                t_prev, z_prev = t, z
                if slope * direction > 1e-12:
                    t_new = t + 1.3 * (-z) / slope  # overshoot a little, so one step brackets
                else:
                    t_new = t + 2 * (t - value)
                t = float(np.clip(t_new, lo_edge if not is_corr else -1.0,
                                  hi_edge if not is_corr else 1.0))
            limits.append(float(limit))
        out.append((limits[0], limits[1]))
    return out


def _bootstrap_draws(fit: MixedFit, eng, rng: np.random.Generator, nsim: int) -> list:
    import copy

    draws = []
    for _ in range(nsim):
        spec = copy.copy(fit.spec)
        spec.y = _simulate(fit, rng)
        res = eng.fit(spec, reml=fit.reml, start=fit.theta)
        draws.append(_varcomp_params(spec, np.asarray(res.theta), float(res.sigma)))
    return draws


def confint_variance(fit: MixedFit, method: str = "profile", *, level: float = 0.95,
                     nsim: int = 200, seed: int | np.random.Generator | None = 0) -> pd.DataFrame:
    """Confidence intervals for the random-effect SDs, correlations and σ of a fit.

    See :meth:`MixedFit.confint_variance`. ``method="boot"`` refits ``nsim`` responses simulated
    from the fitted model (parametric bootstrap, percentile limits, as lme4's ``bootMer``);
    ``method="profile"`` inverts the likelihood-ratio test of the ML deviance, profiled over the
    other variance parameters (lme4's ``confint(method="profile")``; a REML fit is refitted by ML
    for the profile, as lme4 does). The estimate column is the fit's own estimate.

    Returns
    -------
    DataFrame
        group, term1, term2, parameter, estimate, ci_low, ci_high.
    """
    from mfr_outcomes.models.fit import MixedFit  # noqa: F401  (type only)
    from mfr_outcomes.models.spec import ENGINES

    if method not in ("profile", "boot"):
        raise ValueError(f"method must be 'profile' or 'boot'; got {method!r}.")
    if not 0 < level < 1:
        raise ValueError(f"level must be between 0 and 1; got {level}.")
    labels = _varcomp_labels(fit.spec)
    est = _varcomp_params(fit.spec, fit.theta, fit.sigma)
    if method == "boot":
        if int(nsim) < 10:
            raise ValueError(f"nsim must be at least 10 for bootstrap percentiles; got {nsim}.")
        rng = np.random.default_rng(seed)
        eng = ENGINES[fit.engine]
        from mfr_outcomes.models.pls import blas_limits

        with blas_limits(fit.spec):
            draws = _bootstrap_draws(fit, eng, rng, int(nsim))
        arr = np.asarray(draws, dtype=float)
        a = (1 - level) / 2
        lo = np.nanquantile(arr, a, axis=0)
        hi = np.nanquantile(arr, 1 - a, axis=0)
        limits = list(zip(lo, hi))
    else:
        from mfr_outcomes.models.pls import blas_limits

        # lme4 profiles the ML deviance (devfun2), also for a REML fit, which it refits by ML.
        with blas_limits(fit.spec):
            limits = _profile_intervals(fit.refit_ml(), level)
    rows = [{"group": g, "term1": t1, "term2": t2, "parameter": kind, "estimate": e,
             "ci_low": lim[0], "ci_high": lim[1]}
            for (g, t1, t2, kind), e, lim in zip(labels, est, limits)]
    return pd.DataFrame(rows, columns=["group", "term1", "term2", "parameter", "estimate",
                                       "ci_low", "ci_high"])


def _factor_columns(spec, expr: str) -> list[tuple[str, np.ndarray]]:
    """Full (all-level) dummy columns of a categorical variable, or the numeric column(s)."""
    from formulaic import model_matrix

    data = spec.data
    cats = spec.design["categories"]
    if expr in cats:
        values = data[expr].astype(object).to_numpy()
        return [(f"{expr}[T.{c}]", (values == c).astype(float)) for c in cats[expr]]
    mm = model_matrix(f"0 + {expr}", data, na_action="ignore")
    return [(str(c), np.asarray(mm[c], dtype=float)) for c in mm.columns]


def anova_type3(fit: MixedFit) -> pd.DataFrame:
    """Type III F tests of each fixed-effect term, as lmerTest's ``anova(type = 3)``.

    The hypothesis matrix of each term comes from lmerTest's ``get_contrasts_type3``: the
    generalised inverse of X applied to the full-dummy ("rank-deficient") design, with the columns
    of each term made orthogonal to those of the terms containing it. So a main effect contained in
    an interaction is tested averaged over the other factor's levels, whatever the coding.

    Returns
    -------
    DataFrame
        term, num_df, den_df, statistic (F), p_value.
    """
    spec = fit.spec
    ms = spec.design["model_spec"]
    names = list(spec.fixed_names)
    colnames = ["(Intercept)" if c == "Intercept" else c for c in ms.column_names]
    terms = []  # (label, factor exprs, X column indices)
    for term, sl in ms.term_slices.items():
        factors = [f.expr for f in term.factors if f.expr != "1"]
        if not factors:
            continue
        cols = [names.index(c) for c in colnames[sl] if c in names]
        terms.append((":".join(factors), factors, cols))
    # the rank-deficient design: intercept + every term with all levels of its factors
    rd_names, rd_cols = [], []
    if "(Intercept)" in names:
        rd_names.append("(Intercept)")
        rd_cols.append(np.ones(spec.n))
    for _, factors, _ in terms:
        parts = [_factor_columns(spec, f) for f in factors]
        combos = [("", np.ones(spec.n))]
        for part in parts:
            combos = [((a + ":" if a else "") + b, va * vb) for a, va in combos for b, vb in part]
        for nm, v in combos:
            rd_names.append(nm)
            rd_cols.append(v)
    rdX = np.column_stack(rd_cols)
    L = (np.linalg.pinv(spec.X) @ rdX).T  # (n_rd, p)
    L[np.abs(L) < 1e-9] = 0.0
    fsets = [set(f) for _, f, _ in terms]
    order = sorted(range(len(terms)), key=lambda i: len(terms[i][1]))[::-1]
    for i in order:
        containing = [j for j in range(len(terms)) if j != i and fsets[i] < fsets[j]]
        if not containing or not terms[i][2]:
            continue
        cols_c = [c for j in containing for c in terms[j][2]]
        A = L[:, cols_c]
        B = L[:, terms[i][2]]
        coef, *_ = np.linalg.lstsq(A, B, rcond=None)
        R = B - A @ coef
        R[np.abs(R) < 1e-9] = 0.0
        L[:, terms[i][2]] = R
    keep = [rd_names.index(n) for n in names if n in rd_names]
    if len(keep) != len(names):
        raise ValueError("anova() needs treatment-coded factors and plain column names in the "
                         "fixed part of the formula.")
    Lk = L[keep]
    rows = []
    for label, _, cols in terms:
        Lt = Lk[:, cols].T
        Lt = Lt[np.abs(Lt).sum(axis=1) > 1e-8]
        if Lt.shape[0] == 0:
            continue
        rows.append(contest_md(fit, Lt, label))
    return pd.DataFrame(rows, columns=["term", "num_df", "den_df", "statistic", "p_value"])


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


def kenward_roger_data(fit: MixedFit) -> KenwardRogerData:
    """Φ_A = Φ + 2Φ U Φ (pbkrtest's ``vcovAdj16_internal``): from per-group blocks when the fit
    is the fast engine's on one grouping factor (any size), else on dense n×n matrices."""
    from mfr_outcomes.models import block_inference

    stats, lay = fit.result.extra.get("stats"), fit.result.extra.get("layout")
    if stats is not None and block_inference.supports(lay):
        from mfr_outcomes.models.kr_blocks import kenward_roger_blocks

        return kenward_roger_blocks(stats, lay, fit.theta, fit.sigma)
    return kenward_roger_dense(fit)


def kenward_roger_dense(fit: MixedFit) -> KenwardRogerData:
    """Φ_A = Φ + 2Φ U Φ (pbkrtest's ``vcovAdj16_internal``) on dense n×n matrices."""
    spec = fit.spec
    n = spec.n
    if n > 4000:
        raise ValueError(f"Kenward-Roger needs dense {n}×{n} matrices; use 'satterthwaite' for "
                         f"more than 4000 observations.")
    G: list[np.ndarray] = []
    gamma: list[float] = []
    for b, (_, _, cov) in zip(spec.blocks, fit.random_covariances):
        same = (b.codes[:, None] == b.codes[None, :]).astype(float)
        for j in range(b.q):
            for i in range(j, b.q):
                zz = np.outer(b.Z[:, i], b.Z[:, j])
                Gi = (zz + zz.T) if i != j else zz
                G.append(Gi * same)
                gamma.append(cov[i, j])
    G.append(np.eye(n))
    gamma.append(fit.sigma ** 2)
    Sigma = sum(g * Gi for g, Gi in zip(gamma, G))
    SigmaInv = np.linalg.inv(Sigma)
    X = spec.X
    Phi = np.asarray(fit.result.vcov_beta)
    TT = SigmaInv @ X
    H = [Gi @ SigmaInv for Gi in G]
    HX = [Hi @ X for Hi in H]
    k = len(G)
    P = [-(Oi.T @ TT) for Oi in HX]
    P = [(Pi + Pi.T) / 2 for Pi in P]
    Q = {}
    for r in range(k):
        for s in range(r, k):
            Q[r, s] = HX[r].T @ SigmaInv @ HX[s]
    IE2 = np.zeros((k, k))
    for i in range(k):
        PhiPi = Phi @ P[i]
        for j in range(i, k):
            kt = float(np.sum(H[i].T * H[j]))
            IE2[i, j] = IE2[j, i] = (kt - 2 * np.sum(Phi * Q[i, j])
                                     + np.sum(PhiPi * (P[j] @ Phi)))
    ev = np.linalg.eigvalsh(IE2)
    W = 2 * (np.linalg.inv(IE2) if np.min(np.abs(ev)) > 1e-10 else np.linalg.pinv(IE2))
    U = np.zeros_like(Phi)
    for i in range(k - 1):
        for j in range(i + 1, k):
            U += W[i, j] * (Q[i, j] - P[i] @ Phi @ P[j])
    U = U + U.T
    for i in range(k):
        U += W[i, i] * (Q[i, i] - P[i] @ Phi @ P[i])
    PhiA = Phi + 2 * Phi @ U @ Phi
    return KenwardRogerData(PhiA, Phi, P, W)
