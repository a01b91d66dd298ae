"""Tests and intervals for mixed models: t and F tests of fixed effects (lmerTest's ``contest``,
``anova(type = 3)``), likelihood-ratio ``compare`` (lme4's ``anova``) and variance-parameter CIs.

Every function works on the model (:class:`~mfr_outcomes.models.spec.ModelSpec`), the engine
result and a degrees-of-freedom strategy (:mod:`mfr_outcomes.models.dfmethods`); none imports the
fit classes. ``compare`` takes any objects with the attributes of :class:`ComparableFit`.
"""
from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Protocol

import numpy as np
import pandas as pd
from scipy import special  # t and normal tails; scipy.stats costs ~0.3 s to import (see _stats)

from mfr_outcomes.models.dfmethods import DfMethod
from mfr_outcomes.models.spec import (
    ENGINES,
    EngineResult,
    ModelSpec,
    block_lambda,
    theta_lower_bounds,
)

__all__ = [
    "ComparableFit",
    "contest_1d",
    "contest_1d_values",
    "tidy_table",
    "contest_md",
    "compare",
    "confint_variance",
    "anova_type3",
]


class ComparableFit(Protocol):
    """What :func:`compare` reads from a fit."""

    formula: str
    reml: bool
    nobs: int
    npar: int
    aic: float
    bic: float
    loglik: float

    def refit_ml(self) -> ComparableFit: ...

def _table(L: np.ndarray, beta: np.ndarray, vcov: np.ndarray, df: np.ndarray, names: Sequence[str],
           level: float) -> pd.DataFrame:
    return tidy_table(_test_values(L, beta, vcov, df, level), names)


def _test_values(L: np.ndarray, beta: np.ndarray, vcov: np.ndarray, df: np.ndarray,
                 level: float) -> np.ndarray:
    """The t tests of the rows of L as a (7, k) array: one row a column of the table after
    ``term`` (estimate, std_error, df, statistic, p_value, ci_low, ci_high)."""
    est = L @ beta
    se = np.sqrt(np.maximum(np.einsum("ij,jk,ik->i", L, vcov, L), 0.0))
    with np.errstate(divide="ignore", invalid="ignore"):
        stat = est / se
    df = np.asarray(df, dtype=float)
    finite = np.isfinite(df)
    if finite.all():  # t tests only (the usual case): the normal tails are not needed
        p = 2 * special.stdtr(df, -np.abs(stat))
        q = special.stdtrit(df, 0.5 + level / 2)
    else:
        dfs = np.where(finite, df, 1.0)
        p = np.where(finite, 2 * special.stdtr(dfs, -np.abs(stat)),
                     2 * special.ndtr(-np.abs(stat)))
        q = np.where(finite, special.stdtrit(dfs, 0.5 + level / 2),
                     special.ndtri(0.5 + level / 2))
    return np.array([est, se, df, stat, p, est - q * se, est + q * se])


def tidy_table(values: np.ndarray, names: Sequence[str]) -> pd.DataFrame:
    """The tidy table (term, estimate, std_error, df, statistic, p_value, ci_low, ci_high) of
    *values*, a (7, k) array as :func:`contest_1d_values` returns it, and k term *names*. The
    frame takes *values* as its data (no copy): pass a copy of an array you keep."""
    names = list(names)
    if _from_blocks is None or not all(isinstance(n, str) for n in names):
        return pd.DataFrame({"term": names, **dict(zip(_TABLE_COLUMNS[1:], values))})
    # the frame from its two blocks (strings, floats): the dict constructor's inference and
    # consolidation cost ~0.3 ms, more than the tests themselves, on a table of a dozen rows
    return _from_blocks([(_term_array(tuple(names)).copy(), _TERM_PLACE), (values, _VALUE_PLACE)],
                        index=pd.RangeIndex(len(names)), columns=_TABLE_INDEX)


@functools.lru_cache(maxsize=256)
def _term_array(names: tuple[str, ...]):
    """The term column's array of *names* (kept per tuple of names: building it costs ~28 µs,
    a copy 1 µs; the copy shares the immutable Arrow data, a write to it replaces its own)."""
    return pd.array(list(names), dtype=_TERM_DTYPE)


_TABLE_COLUMNS = ("term", "estimate", "std_error", "df", "statistic", "p_value", "ci_low",
                  "ci_high")
_TABLE_INDEX = pd.Index(_TABLE_COLUMNS)  # immutable: built once
_TERM_PLACE = np.array([0])
_VALUE_PLACE = np.arange(1, len(_TABLE_COLUMNS))
#: the dtype pandas infers for a list of strings ("str" from pandas 3, object before)
_TERM_DTYPE = pd.Series(["term"]).dtype
try:  # pandas.api.internals (pandas 3): only where text is inferred as the string dtype
    from pandas.api.internals import create_dataframe_from_blocks as _from_blocks
except ImportError:  # older pandas: the dict constructor
    _from_blocks = None
if not isinstance(_TERM_DTYPE, pd.StringDtype):
    _from_blocks = None


def contest_1d(L: np.ndarray, beta: np.ndarray, dfm: DfMethod,
               names: Sequence[str] | None = None, level: float = 0.95) -> pd.DataFrame:
    """One t test per row of L with the df strategy *dfm* (see ``linear_contrast`` of a fit)."""
    L = np.atleast_2d(np.asarray(L, dtype=float))
    if names is None:
        names = [f"contrast {i + 1}" for i in range(L.shape[0])]
    return _table(L, np.asarray(beta, float), dfm.vcov(), dfm.df(L), names, level)


def contest_1d_values(L: np.ndarray, beta: np.ndarray, dfm: DfMethod,
                      level: float = 0.95) -> np.ndarray:
    """:func:`contest_1d`'s numbers without the frame: a (7, k) array for :func:`tidy_table`
    (a fit keeps them and builds a new frame from a copy on each read, instead of copying a
    frame)."""
    L = np.atleast_2d(np.asarray(L, dtype=float))
    return _test_values(L, np.asarray(beta, float), dfm.vcov(), dfm.df(L), level)


def contest_md(L: np.ndarray, beta: np.ndarray, dfm: DfMethod, name: str = "") -> dict:
    """Joint F test of the rows of L (lmerTest's ``contestMD``; denominator df from *dfm*).

    Returns a dict with term, num_df, den_df, statistic (F) and p_value.
    """
    from scipy import stats

    L = np.atleast_2d(np.asarray(L, dtype=float))
    beta, V = np.asarray(beta, float), dfm.vcov()
    VL = L @ V @ L.T
    lam, P = np.linalg.eigh(VL)
    keep = lam > max(lam.max(), 0) * 1e-8
    lam, P = lam[keep], P[:, keep]
    qrank = int(keep.sum())
    PtL = P.T @ L
    t2 = (PtL @ beta) ** 2 / lam
    den, scaling = dfm.f_denominator(L, PtL, qrank)  # Kenward-Roger scales F (KRmodcomp)
    F = float(t2.sum() / qrank) * scaling
    p = float(stats.f.sf(F, qrank, den)) if np.isfinite(den) else float(stats.chi2.sf(F * qrank,
                                                                                        qrank))
    return {"term": name, "num_df": qrank, "den_df": den, "statistic": F, "p_value": p}


def compare(*fits: ComparableFit, refit: bool = True) -> pd.DataFrame:
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


def _simulate(spec: ModelSpec, result: EngineResult, rng: np.random.Generator) -> np.ndarray:
    sigma, theta = float(result.sigma), np.asarray(result.theta, float)
    y = spec.X @ result.beta + sigma * rng.standard_normal(spec.n)
    k = 0
    for b in spec.blocks:
        lam = block_lambda(theta[k:k + b.n_theta], b.q)
        k += b.n_theta
        u = rng.standard_normal((b.n_levels, b.q))
        bvals = sigma * u @ lam.T
        y = y + np.einsum("ij,ij->i", b.Z, bvals[b.codes])
    return y


def _profile_intervals(spec: ModelSpec, result: EngineResult, level: float
                       ) -> list[tuple[float, float]]:
    """Likelihood-profile limits of each variance parameter (sd, corr, σ) of the fitted criterion.

    Parametrised as lme4's profile is, by the sds and correlations themselves: the engine's own
    deviance in (θ, σ) is minimised under the constraint that one parameter is fixed, and the
    limit is where the profiled deviance exceeds its minimum by the χ²₁ quantile.
    """
    from scipy import stats
    from scipy.optimize import brentq, minimize

    devfun = result.devfun_varpar
    if devfun is None:
        why = result.cannot("deviance_function") or "it returned no deviance function"
        raise ValueError(f"Profile intervals need the deviance as a function of the variance "
                         f"parameters, which the engine {result.engine!r} cannot supply for this "
                         f"model ({why}); use method='boot'.")
    theta_hat, sigma_hat = np.asarray(result.theta, float), float(result.sigma)
    x_hat = np.append(theta_hat, sigma_hat)
    d_min = float(devfun(x_hat))
    crit = stats.chi2.ppf(level, 1)
    lb = np.append(theta_lower_bounds(spec), 0.0)
    bounds = [(0.0 if lo == 0.0 else None, None) for lo in lb]
    est = _varcomp_params(spec, theta_hat, sigma_hat)
    labels = _varcomp_labels(spec)

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
            if kind == "corr":  # a function of θ only: constrained minimum over (θ, σ)
                cons = {"type": "eq",
                        "fun": lambda vp: param(np.append(vp[:-1], 1.0), k) - target}
                res = minimize(safe_dev, start["x"], method="SLSQP",
                               bounds=bounds[:-1] + [(1e-12 * sigma_hat, None)],
                               constraints=[cons], options={"maxiter": 500, "ftol": 1e-12})
                if res.success:
                    start["x"] = np.asarray(res.x, float)
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
                step = direction * 0.3 * max(abs(value), sigma_hat * 1e-3)
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


def _bootstrap_draws(spec: ModelSpec, result: EngineResult, rng: np.random.Generator,
                     nsim: int) -> list:
    import copy

    eng = ENGINES[result.engine]
    draws = []
    for _ in range(nsim):
        sim = copy.copy(spec)
        sim.y = _simulate(spec, result, rng)
        res = eng.fit(sim, reml=result.reml, start=result.theta)
        draws.append(_varcomp_params(sim, np.asarray(res.theta), float(res.sigma)))
    return draws


def confint_variance(spec: ModelSpec, result: EngineResult, *, ml_result: EngineResult | None
                     = None, method: str = "profile", level: float = 0.95, nsim: int = 200,
                     seed: int | np.random.Generator | None = 0) -> pd.DataFrame:
    """Confidence intervals for the random-effect SDs, correlations and σ of a fit.

    ``method="boot"`` refits ``nsim`` responses simulated from the fitted model with the same
    engine (parametric bootstrap, percentile limits, as lme4's ``bootMer``); ``method="profile"``
    inverts the likelihood-ratio test of the ML deviance, profiled over the other variance
    parameters (lme4's ``confint(method="profile")``; lme4 refits a REML fit by ML for the
    profile: pass that ML result as *ml_result*). The profile uses the engine's own deviance
    function; an engine that cannot supply one gets a sentence, not another engine's model.
    The estimate column is the fit's own estimate.

    Returns
    -------
    DataFrame
        group, term1, term2, parameter, estimate, ci_low, ci_high.
    """
    if method not in ("profile", "boot"):
        raise ValueError(f"method must be 'profile' or 'boot'; got {method!r}.")
    if not 0 < level < 1:
        raise ValueError(f"level must be between 0 and 1; got {level}.")
    labels = _varcomp_labels(spec)
    est = _varcomp_params(spec, np.asarray(result.theta, float), float(result.sigma))
    if method == "boot":
        if int(nsim) < 10:
            raise ValueError(f"nsim must be at least 10 for bootstrap percentiles; got {nsim}.")
        rng = np.random.default_rng(seed)
        arr = np.asarray(_bootstrap_draws(spec, result, rng, int(nsim)), dtype=float)
        a = (1 - level) / 2
        lo = np.nanquantile(arr, a, axis=0)
        hi = np.nanquantile(arr, 1 - a, axis=0)
        limits = list(zip(lo, hi))
    else:
        ml = result if ml_result is None else ml_result
        if ml.reml:
            raise ValueError("The profile needs the ML fit (lme4 profiles the ML deviance); pass "
                             "ml_result.")
        limits = _profile_intervals(spec, ml, level)
    rows = [{"group": g, "term1": t1, "term2": t2, "parameter": kind, "estimate": e,
             "ci_low": lim[0], "ci_high": lim[1]}
            for (g, t1, t2, kind), e, lim in zip(labels, est, limits)]
    return pd.DataFrame(rows, columns=["group", "term1", "term2", "parameter", "estimate",
                                       "ci_low", "ci_high"])


def _factor_columns(spec, expr: str) -> list[tuple[str, np.ndarray]]:
    """Full (all-level) dummy columns of a categorical factor, or the numeric column(s)."""
    return spec.design.factor_columns(expr, spec.data)


def anova_type3(spec: ModelSpec, beta: np.ndarray, dfm: DfMethod) -> pd.DataFrame:
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
    names = list(spec.fixed_names)
    terms = []  # (label, factor exprs, X column indices)
    for term in spec.design.fixed_terms:
        factors = list(term.factors)
        cols = [names.index(c) for c in term.columns if c in names]
        terms.append((term.label, factors, cols))
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
        rows.append(contest_md(Lt, beta, dfm, label))
    return pd.DataFrame(rows, columns=["term", "num_df", "den_df", "statistic", "p_value"])
