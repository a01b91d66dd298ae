"""``fit_mixed`` and ``LinearMixedFit``: a linear mixed model fitted by an engine, in tidy frames.

The numbers follow lme4 (θ, σ, REML criterion, VarCorr, conditional modes) and lmerTest
(Satterthwaite df for t tests of fixed effects and of any linear contrast). The flow is
formula → ``ModelSpec`` → lme4's checks (:mod:`~mfr_outcomes.models.checks`) → the engine chosen
by priority → a verified optimum → ``LinearMixedFit`` (on
:class:`~mfr_outcomes.models.base.MixedFitBase`). ``MixedFit`` is kept as an alias.
"""
from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pandas as pd

from mfr_outcomes.models import inference
from mfr_outcomes.models.base import MIN_GROUPS_FOR_SLOPE, SINGULAR_TOL, MixedFitBase
from mfr_outcomes.models.checks import (
    ModelCheckError,
    OptimumCheck,
    check_model,
    gaussian_response_caution,
    verify_optimum,
)
from mfr_outcomes.models.dfmethods import DF_METHODS
from mfr_outcomes.models.formula import build_spec
from mfr_outcomes.models.spec import AUTO_ORDER, ENGINES, Engine, EngineResult, ModelSpec
from mfr_outcomes.models.threads import blas_limits
from mfr_outcomes.warnings_ import ModelWarning

__all__ = ["fit_mixed", "LinearMixedFit", "MixedFit", "ModelFitError", "ModelCheckError",
           "DF_METHODS", "SINGULAR_TOL", "MIN_GROUPS_FOR_SLOPE", "auto_order", "choose_engine",
           "fit_engine"]

#: Numerical failures an engine may raise; they become a :class:`ModelFitError` sentence.
_NUMERICAL = (np.linalg.LinAlgError, FloatingPointError, ZeroDivisionError, OverflowError)
#: keys the linear engines read from ``options`` (fast: gtol, ftol, maxiter, boundary_tol,
#: compress, analytic_gradient, blas_one_thread; sparse: optimizer; pls: maxiter, boundary_tol,
#: grad_tol).
LINEAR_OPTIONS = frozenset({"gtol", "ftol", "maxiter", "boundary_tol", "compress",
                            "analytic_gradient", "grad_tol", "optimizer", "blas_one_thread",
                            "condvar", "fd", "moment_start"})


class ModelFitError(ValueError):
    """The engine failed numerically on this model and data (the message says where)."""


def auto_order() -> list[str]:
    """Registered engines, best first: by ``priority`` (highest first, then by name). When some
    registered engine has no priority, the order is ``AUTO_ORDER``'s (engines not listed there
    come after it, by priority), so an engine registered the older way is never ranked last."""
    names = ENGINES.names()  # priorities without importing the engines not loaded yet
    prio = {n: ENGINES.priority(n) for n in names}
    if all(p is not None for p in prio.values()):
        return sorted(names, key=lambda n: (-float(prio[n]), n))
    listed = [n for n in AUTO_ORDER if n in names]
    rest = sorted((n for n in names if n not in listed),
                  key=lambda n: (-float(prio[n] if prio[n] is not None else -1e9), n))
    return listed + rest


def choose_engine(spec: ModelSpec, engine: str) -> tuple[Engine, str]:
    """The engine to fit *spec* with, and why (every engine tried, with its reason to decline)."""
    if engine != "auto":
        if engine not in ENGINES:
            raise ValueError(f"Unknown engine {engine!r}; available: "
                             f"{', '.join(sorted(ENGINES.names()))} "
                             f"or 'auto'.")
        eng = ENGINES[engine]
        ok, why = eng.supports(spec)
        if not ok:
            raise ValueError(f"The engine {engine!r} cannot fit this model: {why}.")
        return eng, f"{engine}: requested"
    order = auto_order()
    reasons = []
    for name in order:
        ok, why = ENGINES[name].supports(spec)
        if ok:
            reasons.append(f"{name}: chosen (the engine of highest priority among {order} that "
                           f"fits this model exactly)")
            return ENGINES[name], "; ".join(reasons)
        reasons.append(f"{name}: refused ({why})")
    raise ValueError("No engine can fit this model: " + "; ".join(reasons) + ".")


def _engine_fit(eng: Engine, spec: ModelSpec, reml: bool, start: np.ndarray | None,
                options: dict | None) -> EngineResult:
    try:
        with blas_limits(spec), np.errstate(all="ignore"):
            return eng.fit(spec, reml=reml, start=start, options=options)
    except _NUMERICAL as exc:
        raise ModelFitError(f"The engine {eng.name!r} failed numerically on {spec.formula!r} "
                            f"({type(exc).__name__}: {exc}); check the response and covariates "
                            f"for constant or extreme values, or simplify the random part.") from None


def fit_engine(eng: Engine, spec: ModelSpec, reml: bool, *, start: np.ndarray | None = None,
               options: dict | None = None) -> tuple[EngineResult, OptimumCheck]:
    """Fit with *eng*, then verify the optimum (lme4's ``checkConv`` and a Newton polish).

    An optimiser that stopped short is restarted from the polished point (at most twice); the
    better result is kept, so "converged" never stands short of the optimum.
    """
    result = _engine_fit(eng, spec, reml, start, options)
    with blas_limits(spec), np.errstate(all="ignore"):
        check = verify_optimum(spec, result)
    for _ in range(2):
        if check.restart_from is None:
            break
        again = _engine_fit(eng, spec, reml, check.restart_from, options)
        if not again.objective < result.objective:
            break
        again.messages.append(f"restarted from a polished point after the optimiser stopped "
                              f"{result.objective - again.objective:.3g} above the optimum")
        result = again
        with blas_limits(spec), np.errstate(all="ignore"):
            check = verify_optimum(spec, result)
    return result, check


def fit_mixed(data: pd.DataFrame, formula: str, *, reml: bool = True, engine: str = "auto",
              df_method: str = "satterthwaite", options: dict | None = None,
              family: str = "gaussian", link: str | None = None, nagq: int = 1,
              weights: Any = None, offset: Any = None) -> MixedFit:
    """Fit a linear mixed model written in lme4's syntax.

    Parameters
    ----------
    data : DataFrame
        One row an observation (e.g. ``study.frame("pain_nrs")``).
    formula : str
        lme4 syntax, e.g. ``"value ~ post * technique + session_number + (post | patient_id)"``.
    reml : bool
        REML (default, as lmer) or maximum likelihood.
    engine : {"auto", "fast", "pls", "statsmodels"}
        "auto" takes the engine of highest ``priority`` among those that fit the model exactly;
        the reason (and why the others declined) is in ``fit.diagnostics["engine_reason"]``.
    df_method : {"satterthwaite", "kenward-roger", "residual", "asymptotic"}
        Degrees of freedom for t tests and CIs: lmerTest's Satterthwaite (default),
        Kenward-Roger as pbkrtest (with its adjusted covariance of β̂ for the standard errors;
        REML fits, dense n×n matrices, n ≤ 4000), n − p, or ∞ (z tests).
    options : dict, optional
        Passed to the engine (e.g. ``maxiter``); an unknown key is an error.
    family : {"gaussian", "binomial", "poisson"}
        "binomial"/"poisson" fit a generalised mixed model by glmer's method (Laplace, or
        adaptive Gauss-Hermite quadrature with ``nagq`` > 1) and return a
        ``GeneralizedMixedFit`` (see ``models/glmm_api.py``); ``reml``, ``engine`` and
        ``df_method`` do not apply to it.
    link : str, optional
        "logit" (default), "probit" or "cloglog" for binomial; "log" for Poisson.
    nagq : int
        Quadrature nodes (1 = Laplace; 0 = glmer's fast nAGQ = 0).
    weights, offset : array-like or column name, optional
        Binomial trials (the response then a proportion) and an offset of the linear
        predictor (e.g. log exposure), for generalised fits.

    Returns
    -------
    LinearMixedFit or GeneralizedMixedFit

    Raises
    ------
    ModelCheckError
        A model lme4 would refuse (lme4's sentence: too few levels, as many random effects as
        observations, ...) or a constant response.
    ModelFitError
        A numerical failure while fitting, as a sentence.

    Examples
    --------
    >>> import mfr_outcomes as mfr
    >>> frame = mfr.load_study(mfr.datasets.synthetic_path()).frame("pain_nrs")
    >>> frame = frame[frame["technique"] != "none"]
    >>> fit = fit_mixed(frame, "value ~ post * technique + session_number + (post | patient_id)")
    >>> fit.fixed_effects.columns.tolist()
    ['term', 'estimate', 'std_error', 'df', 'statistic', 'p_value', 'ci_low', 'ci_high']
    >>> fit.linear_contrast({"post": 1, "post:technique[T.massage]": 1}, names=["post, massage"])
    ... # doctest: +SKIP
    """
    if family != "gaussian" or link not in (None, "identity"):
        from mfr_outcomes.models.glmm_api import fit_generalized

        return fit_generalized(data, formula, family=family, link=link, nagq=nagq,
                               weights=weights, offset=offset, options=options)
    unknown = sorted(set(options or {}) - LINEAR_OPTIONS)
    if unknown:
        raise ValueError(f"Unknown option(s) {unknown} for a linear mixed model (known: "
                         f"{', '.join(sorted(LINEAR_OPTIONS))}); for a binomial or Poisson "
                         f"model use fit_mixed(..., family=...).")
    if weights is not None or offset is not None or nagq != 1:
        raise ValueError("weights=, offset= and nagq= apply to family='binomial' or 'poisson'; "
                         "the linear (gaussian) fit takes none of them.")
    if df_method not in DF_METHODS:
        raise ValueError(f"df_method must be one of {', '.join(DF_METHODS)}; got {df_method!r}.")
    if not isinstance(data, pd.DataFrame):  # Dask, DuckDB, Parquet: statistics out of memory
        from mfr_outcomes.scale.dispatch import fit_elsewhere

        return fit_elsewhere(data, formula, reml=reml, engine=engine, df_method=df_method,
                             options=options)
    if df_method == "kenward-roger" and not reml:
        raise ValueError("df_method='kenward-roger' needs a REML fit (reml=True), as pbkrtest "
                         "does; use 'satterthwaite' for ML fits.")
    spec = build_spec(data, formula)
    if spec.weights is not None or spec.offset is not None:
        raise ValueError(f"{formula!r}: cbind() responses and offset() terms need a generalised "
                         f"model (family='binomial' or 'poisson'); a linear fit cannot use them "
                         f"(subtract an offset from the response instead, as "
                         f"'value - baseline ~ ...').")
    # one BLAS scope for the whole fit: the engines' own scopes inside it cost nothing
    with blas_limits(spec):
        caution = gaussian_response_caution(spec.y, spec.response)
        if caution:
            warnings.warn(caution, ModelWarning, stacklevel=2)
        cautions = check_model(spec)
        eng, reason = choose_engine(spec, engine)
        result, check = fit_engine(eng, spec, reml, options=options)
        return LinearMixedFit(spec, result, reml=reml, df_method=df_method, engine_reason=reason,
                              data=data, options=options, optimum=check, cautions=cautions)


class LinearMixedFit(MixedFitBase):
    """A fitted linear mixed model (lmer's ``merMod``, with lmerTest's tests).

    Attributes
    ----------
    fixed_effects : DataFrame
        term, estimate, std_error, df, statistic, p_value, ci_low, ci_high (95 %).
    variance_components : DataFrame
        group, term1, term2, variance, sd, corr — lme4's ``VarCorr``: one row per variance (term2
        empty, sd filled), one per covariance (variance holds the covariance, corr the
        correlation), and a last row ``Residual``.
    loglik, aic, bic, reml_criterion, deviance, nobs, ngroups, diagnostics
        As lme4 reports them (loglik is the REML log-likelihood for a REML fit).
    coef, vcov : Series, DataFrame
        β̂ and lme4's Var(β̂) = σ²(R_X'R_X)⁻¹. With ``df_method="kenward-roger"`` the tests use
        pbkrtest's adjusted covariance instead (``fit.df_strategy.vcov()``); ``vcov`` stays
        lme4's.
    theta, sigma : ndarray, float
        lme4's relative covariance factor elements (block order of ``spec.blocks``) and σ.
    """

    family_label = "Linear mixed model"
    has_residual = True

    def __init__(self, spec: ModelSpec, result: EngineResult, **kwargs: Any):
        self.sigma = float(result.sigma)
        super().__init__(spec, result, **kwargs)
        self.reml_criterion = float(result.objective) if self.reml else float("nan")

    @property
    def scale(self) -> float:
        return self.sigma

    # ------------------------------------------------------------------ residuals and refits
    def residuals(self) -> np.ndarray:
        """y − fitted (conditional residuals, as lme4's ``residuals``)."""
        return self.spec.y - self.fitted(True)

    def refit_ml(self) -> LinearMixedFit:
        """The same model fitted by maximum likelihood (for likelihood-ratio tests)."""
        if not self.reml:
            return self
        res, check = fit_engine(ENGINES[self.engine], self.spec, False, start=self.theta,
                                options=self._options)
        return LinearMixedFit(self.spec, res, reml=False, df_method=self.df_method,
                              engine_reason=self.diagnostics["engine_reason"], data=self.data,
                              options=self._options, emit_warnings=False, optimum=check)

    def confint_variance(self, method: str = "profile", *, level: float = 0.95, nsim: int = 200,
                         seed: int | np.random.Generator | None = 0) -> pd.DataFrame:
        """Confidence intervals for the SDs and correlations of the random effects and σ.

        Parameters
        ----------
        method : {"profile", "boot"}
            Likelihood profile of the ML deviance (as lme4's ``confint(method="profile")``, with
            the engine's own deviance function) or parametric bootstrap percentiles (``nsim``
            refits from simulated responses, with the same engine).
        level : float
        nsim : int
        seed : int or Generator
            Seed of the bootstrap.

        Returns
        -------
        DataFrame
            group, term1, term2, parameter ("sd", "corr" or "sigma"), estimate, ci_low, ci_high.
        """
        ml = None
        if method == "profile":
            ml = self.refit_ml().result
        with blas_limits(self.spec):
            return inference.confint_variance(self.spec, self.result, ml_result=ml,
                                              method=method, level=level, nsim=nsim, seed=seed)

    # ------------------------------------------------------------------ ICC and R²
    def icc(self, **kwargs: Any) -> Any:
        from mfr_outcomes.models import r2 as _r2

        return _r2.icc(self, **kwargs)

    def r2(self, **kwargs: Any) -> Any:
        from mfr_outcomes.models import r2 as _r2

        return _r2.r2_nakagawa(self, **kwargs)

    # ------------------------------------------------------------------ display
    def _criterion_lines(self) -> list[str]:
        if self.reml:
            return [f"REML criterion at convergence: {self.reml_criterion:.1f}"]
        return super()._criterion_lines()

    def _criterion_short(self) -> str:
        if self.reml:
            return f"REML criterion {self.reml_criterion:.2f}"
        return super()._criterion_short()


#: The name of the first version, kept for compatibility.
MixedFit = LinearMixedFit
