"""``fit_mixed`` and ``MixedFit``: a linear mixed model fitted by an engine, explained in tidy frames.

The numbers follow lme4 (θ, σ, REML criterion, VarCorr, conditional modes) and lmerTest
(Satterthwaite df for t tests of fixed effects and of any linear contrast).
"""
from __future__ import annotations

import html
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from mfr_outcomes.models import inference
from mfr_outcomes.models.formula import build_spec, fixed_matrix, prepare_newdata
from mfr_outcomes.models.spec import (
    AUTO_ORDER,
    ENGINES,
    EngineResult,
    ModelSpec,
    block_lambda,
    theta_lower_bounds,
)
from mfr_outcomes.warnings_ import DataWarning, ModelWarning

__all__ = ["fit_mixed", "MixedFit", "DF_METHODS", "SINGULAR_TOL", "MIN_GROUPS_FOR_SLOPE"]

DF_METHODS = ("satterthwaite", "kenward-roger", "residual", "asymptotic")
#: lme4's ``isSingular`` tolerance on θ elements with lower bound 0.
SINGULAR_TOL = 1e-4
#: fewer levels than this for a grouping factor with a random slope earns a warning.
MIN_GROUPS_FOR_SLOPE = 5


def _choose_engine(spec: ModelSpec, engine: str) -> tuple[Any, str]:
    if engine != "auto":
        if engine not in ENGINES:
            raise ValueError(f"Unknown engine {engine!r}; available: {', '.join(sorted(ENGINES))} "
                             f"or 'auto'.")
        eng = ENGINES[engine]
        ok, why = eng.supports(spec)
        if not ok:
            raise ValueError(f"The engine {engine!r} cannot fit this model: {why}.")
        return eng, f"{engine}: requested"
    reasons = []
    for name in AUTO_ORDER:
        if name not in ENGINES:
            reasons.append(f"{name}: not available")
            continue
        ok, why = ENGINES[name].supports(spec)
        if ok:
            reasons.append(f"{name}: chosen (first engine in {AUTO_ORDER} that fits this model "
                           f"exactly)")
            return ENGINES[name], "; ".join(reasons)
        reasons.append(f"{name}: refused ({why})")
    raise ValueError("No engine can fit this model: " + "; ".join(reasons) + ".")


def fit_mixed(data: pd.DataFrame, formula: str, *, reml: bool = True, engine: str = "auto",
              df_method: str = "satterthwaite", options: dict | None = None) -> MixedFit:
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
        "auto" takes the first engine of ``AUTO_ORDER`` that fits the model exactly; the reason is
        in ``fit.diagnostics["engine_reason"]``.
    df_method : {"satterthwaite", "kenward-roger", "residual", "asymptotic"}
        Degrees of freedom for t tests and CIs: lmerTest's Satterthwaite (default),
        Kenward-Roger as pbkrtest (with its adjusted covariance of β̂ for the standard errors;
        REML fits, dense n×n matrices, n ≤ 4000), n − p, or ∞ (z tests).
    options : dict, optional
        Passed to the engine (e.g. ``maxiter``).

    Returns
    -------
    MixedFit

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
    if df_method not in DF_METHODS:
        raise ValueError(f"df_method must be one of {', '.join(DF_METHODS)}; got {df_method!r}.")
    if df_method == "kenward-roger" and not reml:
        raise ValueError("df_method='kenward-roger' needs a REML fit (reml=True), as pbkrtest "
                         "does; use 'satterthwaite' for ML fits.")
    spec = build_spec(data, formula)
    eng, reason = _choose_engine(spec, engine)
    from mfr_outcomes.models.pls import blas_limits

    with blas_limits(spec):
        result = eng.fit(spec, reml=reml, options=options)
    return MixedFit(spec, result, reml=reml, df_method=df_method, engine_reason=reason,
                    data=data, options=options)


class MixedFit:
    """A fitted linear mixed model.

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
        pbkrtest's adjusted covariance instead (``fit._vcov_for_tests()``); ``vcov`` stays lme4's.
    theta, sigma : ndarray, float
        lme4's relative covariance factor elements (block order of ``spec.blocks``) and σ.
    """

    def __init__(self, spec: ModelSpec, result: EngineResult, *, reml: bool, df_method: str,
                 engine_reason: str = "", data: pd.DataFrame | None = None,
                 options: dict | None = None, emit_warnings: bool = True):
        self.spec = spec
        self.result = result
        self.reml = bool(reml)
        self.df_method = df_method
        self.formula = spec.formula
        self.data = data if data is not None else spec.data
        self.engine = result.engine
        self._options = options
        self._satt: inference.SatterthwaiteData | None = None
        self.theta = np.asarray(result.theta, dtype=float)
        self.sigma = float(result.sigma)
        self.coef = pd.Series(result.beta, index=spec.fixed_names, name="estimate")
        self.vcov = pd.DataFrame(result.vcov_beta, index=spec.fixed_names,
                                 columns=spec.fixed_names)
        self.nobs = spec.n
        self.ngroups = {b.group: b.n_levels for b in spec.blocks}
        self.npar = spec.p + spec.n_theta + 1
        if reml:
            self.reml_criterion = float(result.objective)
            self.loglik = -0.5 * self.reml_criterion
        else:
            self.reml_criterion = float("nan")
            self.loglik = -0.5 * float(result.objective)
        self.deviance = -2.0 * self.loglik
        self.aic = -2.0 * self.loglik + 2 * self.npar
        self.bic = -2.0 * self.loglik + np.log(self.nobs) * self.npar
        lb = theta_lower_bounds(spec)
        singular = bool(np.any(self.theta[lb == 0.0] < SINGULAR_TOL))
        self.diagnostics: dict[str, Any] = {
            "converged": bool(result.converged),
            "singular": singular,
            "optimizer": result.optimizer,
            "messages": list(result.messages),
            "engine": result.engine,
            "engine_reason": engine_reason,
            "n_evaluations": result.n_evaluations,
            "excluded_rows": len(spec.excluded),
            "warnings": [],
        }
        self._check(emit_warnings)

    # ------------------------------------------------------------------ cautions
    def _warn(self, message: str, category=ModelWarning, emit: bool = True) -> None:
        self.diagnostics["warnings"].append(message)
        if emit:
            warnings.warn(message, category, stacklevel=5)

    def _check(self, emit: bool) -> None:
        spec = self.spec
        if len(spec.excluded):
            self._warn(f"{len(spec.excluded)} row(s) with missing values in the model's variables "
                       f"were excluded (see fit.spec.excluded); {spec.n} row(s) used.",
                       DataWarning, emit)
        for note in spec.notes:
            self._warn(f"Factor level without data: {note}." if "no data" in note else
                       f"{note[0].upper()}{note[1:]}.", ModelWarning, emit)
        if not self.diagnostics["converged"]:
            msgs = "; ".join(self.result.messages) or "the optimiser did not report success"
            self._warn(f"The model may not have converged ({msgs}). Check the estimates, rescale "
                       f"covariates, or simplify the random part.", ModelWarning, emit)
        if self.diagnostics["singular"]:
            zero = [f"{b.group}: {', '.join(b.terms)}" for b, cov in
                    zip(spec.blocks, self._block_covs()) if np.linalg.eigvalsh(cov).min()
                    <= SINGULAR_TOL ** 2 * self.sigma ** 2 * 10 or np.any(np.diag(cov) <= 0)]
            where = f" ({'; '.join(zero)})" if zero else ""
            self._warn(f"Boundary (singular) fit{where}: a random-effect variance is estimated as "
                       f"zero or a correlation as ±1. Simplify the random part (drop the random "
                       f"slope or the term with zero variance, or use '||' for uncorrelated terms) "
                       f"and refit.", ModelWarning, emit)
        for b in spec.blocks:
            counts = np.bincount(b.codes, minlength=b.n_levels)
            has_slope = any(t != "(Intercept)" for t in b.terms)
            if has_slope and b.n_levels < MIN_GROUPS_FOR_SLOPE:
                self._warn(f"Only {b.n_levels} levels of {b.group!r} for the random slope of "
                           f"{', '.join(t for t in b.terms if t != '(Intercept)')}: too few groups "
                           f"to estimate its variance (at least {MIN_GROUPS_FOR_SLOPE} advised). "
                           f"Consider a random intercept only.", ModelWarning, emit)
            elif b.n_levels < 2:
                self._warn(f"Only {b.n_levels} level of {b.group!r}: its variance cannot be "
                           f"estimated.", ModelWarning, emit)
            if b.q > 1 and np.median(counts) < b.q:
                self._warn(f"Fewer observations per level of {b.group!r} (median "
                           f"{np.median(counts):g}) than random terms ({b.q}: "
                           f"{', '.join(b.terms)}): the random part is not identifiable from "
                           f"within-group data. Simplify it.", ModelWarning, emit)
        if self.df_method == "satterthwaite" and self.diagnostics["converged"]:
            pass  # Satterthwaite messages are added lazily when df are first computed

    # ------------------------------------------------------------------ variance parameters
    def _block_covs(self) -> list[np.ndarray]:
        out, k = [], 0
        for b in self.spec.blocks:
            lam = block_lambda(self.theta[k:k + b.n_theta], b.q)
            k += b.n_theta
            out.append(self.sigma ** 2 * lam @ lam.T)
        return out

    @property
    def random_covariances(self) -> list[tuple[str, list[str], np.ndarray]]:
        """(group, terms, q×q covariance matrix σ²ΛΛ') per random block, in block order."""
        return [(b.group, list(b.terms), c) for b, c in zip(self.spec.blocks, self._block_covs())]

    @property
    def variance_components(self) -> pd.DataFrame:
        rows = []
        for group, terms, cov in self.random_covariances:
            sd = np.sqrt(np.diag(cov))
            for i, t in enumerate(terms):
                rows.append({"group": group, "term1": t, "term2": None, "variance": cov[i, i],
                             "sd": sd[i], "corr": np.nan})
            for j in range(len(terms)):
                for i in range(j + 1, len(terms)):
                    denom = sd[i] * sd[j]
                    rows.append({"group": group, "term1": terms[j], "term2": terms[i],
                                 "variance": cov[i, j], "sd": np.nan,
                                 "corr": cov[i, j] / denom if denom > 0 else np.nan})
        rows.append({"group": "Residual", "term1": None, "term2": None,
                     "variance": self.sigma ** 2, "sd": self.sigma, "corr": np.nan})
        out = pd.DataFrame(rows, columns=["group", "term1", "term2", "variance", "sd", "corr"])
        for col in ("term1", "term2"):  # None (not NaN) where lme4's VarCorr has NA
            out[col] = out[col].astype(object).where(out[col].notna(), None)
        return out

    # ------------------------------------------------------------------ fixed-effect inference
    def _satterthwaite(self) -> inference.SatterthwaiteData:
        if self._satt is None:
            varpar = np.append(self.theta, self.sigma)
            devfun, vcovfun = self.result.devfun_varpar, self.result.vcov_varpar
            if devfun is None or vcovfun is None:
                from mfr_outcomes.models import pls

                spec, reml = self.spec, self.reml
                devfun = lambda vp: pls.deviance_varpar(spec, vp, reml)  # noqa: E731
                vcovfun = lambda vp: pls.vcov_beta_varpar(spec, vp)  # noqa: E731
            from mfr_outcomes.models.pls import blas_limits

            with blas_limits(self.spec):
                self._satt = inference.satterthwaite_data(devfun, vcovfun, varpar,
                                                          self.result.vcov_beta)
            for m in self._satt.messages:
                self._warn(f"Satterthwaite df: {m}.", ModelWarning, True)
        return self._satt

    def _kenward_roger(self) -> inference.KenwardRogerData:
        if getattr(self, "_kr", None) is None:
            self._kr = inference.kenward_roger_data(self)
        return self._kr

    def _vcov_for_tests(self) -> np.ndarray:
        """Var(β̂) used by t/F tests: pbkrtest's adjusted Φ_A for Kenward-Roger, else lme4's."""
        if self.df_method == "kenward-roger":
            return self._kenward_roger().PhiA
        return np.asarray(self.result.vcov_beta)

    def _df_for(self, L: np.ndarray) -> np.ndarray:
        L = np.atleast_2d(np.asarray(L, dtype=float))
        if self.df_method == "kenward-roger":
            kr = self._kenward_roger()
            return np.array([kr.df(row) for row in L])
        if self.df_method == "satterthwaite":
            return inference.satterthwaite_df(self._satterthwaite(), L)
        if self.df_method == "residual":
            return np.full(L.shape[0], float(self.nobs - self.spec.p))
        return np.full(L.shape[0], np.inf)

    def linear_contrast(self, L: Any, names: Sequence[str] | None = None,
                        level: float = 0.95) -> pd.DataFrame:
        """t tests of linear combinations L β̂ with the fit's df method.

        Parameters
        ----------
        L : array-like (k, p) or (p,), or a dict {term: weight}
            One row a contrast over the fixed effects (order of ``fit.coef``).
        names : sequence of str, optional
            Row labels for the ``term`` column.
        level : float
            Confidence level of ci_low/ci_high.

        Returns
        -------
        DataFrame
            term, estimate, std_error, df, statistic, p_value, ci_low, ci_high.
        """
        if isinstance(L, dict):
            unknown = [k for k in L if k not in self.coef.index]
            if unknown:
                raise ValueError(f"Unknown term(s) {unknown}; the fixed effects are "
                                 f"{list(self.coef.index)}.")
            L = np.array([[L.get(t, 0.0) for t in self.coef.index]])
        L = np.atleast_2d(np.asarray(L, dtype=float))
        if L.shape[1] != self.spec.p:
            raise ValueError(f"A contrast needs {self.spec.p} columns (one per fixed effect: "
                             f"{list(self.coef.index)}); got {L.shape[1]}.")
        return inference.contest_1d(self, L, names, level)

    @property
    def fixed_effects(self) -> pd.DataFrame:
        if not hasattr(self, "_fixed_effects"):
            self._fixed_effects = self.linear_contrast(np.eye(self.spec.p),
                                                       names=self.spec.fixed_names)
        return self._fixed_effects.copy()

    def anova(self) -> pd.DataFrame:
        """Type III F tests of each fixed-effect term, as lmerTest's ``anova(fit, type = 3)``
        (Satterthwaite denominator df when that is the fit's df method).

        Returns
        -------
        DataFrame
            term, num_df, den_df, statistic, p_value.
        """
        return inference.anova_type3(self)

    # ------------------------------------------------------------------ random effects, prediction
    def random_effects(self) -> pd.DataFrame:
        """Conditional modes (BLUPs) of the random effects.

        Returns
        -------
        DataFrame
            group, level, term, estimate, cond_sd.
        """
        rows = []
        condvar = self.result.blup_condvar
        for k, (b, blup) in enumerate(zip(self.spec.blocks, self.result.blups)):
            for lev_i, lev in enumerate(b.levels):
                for j, t in enumerate(b.terms):
                    sd = np.sqrt(condvar[k][lev_i, j, j]) if condvar is not None else np.nan
                    rows.append({"group": b.group, "level": lev, "term": t,
                                 "estimate": blup[lev_i, j], "cond_sd": sd})
        return pd.DataFrame(rows, columns=["group", "level", "term", "estimate", "cond_sd"])

    def model_matrix(self, newdata: pd.DataFrame) -> np.ndarray:
        """The fixed-effects model matrix X for new rows (columns as ``fit.coef``)."""
        return fixed_matrix(self.spec, newdata)

    def _random_part(self, newdata: pd.DataFrame) -> np.ndarray:
        from formulaic import model_matrix

        out = np.zeros(len(newdata))
        exprs = self.spec.design.get("random_exprs", {})
        for b, blup in zip(self.spec.blocks, self.result.blups):
            gvars = b.group.split(":")
            if any(g not in newdata.columns for g in gvars):
                continue
            labels = (newdata[gvars[0]].astype(str) if len(gvars) == 1 else
                      newdata[gvars].astype(str).agg(":".join, axis=1))
            pos = b.levels.get_indexer(labels)
            known = pos >= 0
            if not known.any():
                continue
            nd = prepare_newdata(self.spec, newdata)
            expr = exprs.get((b.group, tuple(b.terms)))
            if expr is None:  # a spec built elsewhere: the terms are plain column names
                expr = " + ".join(t if t != "(Intercept)" else "1" for t in b.terms)
                if "(Intercept)" not in b.terms:
                    expr = "0 + " + expr
            zmm = model_matrix(expr, nd, na_action="ignore")
            names = ["(Intercept)" if c == "Intercept" else c for c in zmm.columns]
            Z = pd.DataFrame(np.asarray(zmm, float), columns=names)[b.terms].to_numpy()
            contrib = np.einsum("ij,ij->i", Z[known], blup[pos[known]])
            out[known] += contrib
        return out

    def predict(self, newdata: pd.DataFrame | None = None, include_random: bool = True
                ) -> np.ndarray:
        """Predictions Xβ̂ (+ Zb̂ when include_random); levels not seen in the fit get b = 0."""
        if newdata is None:
            return self.fitted(include_random)
        eta = self.model_matrix(newdata) @ self.result.beta
        if include_random:
            eta = eta + self._random_part(newdata)
        return eta

    def fitted(self, include_random: bool = True) -> np.ndarray:
        """Fitted values on the rows used (conditional on the random effects by default)."""
        eta = self.spec.X @ self.result.beta
        if include_random:
            for b, blup in zip(self.spec.blocks, self.result.blups):
                eta = eta + np.einsum("ij,ij->i", b.Z, blup[b.codes])
        return eta

    def residuals(self) -> np.ndarray:
        """y − fitted (conditional residuals, as lme4's ``residuals``)."""
        return self.spec.y - self.fitted(True)

    # ------------------------------------------------------------------ refits and intervals
    def refit_ml(self) -> MixedFit:
        """The same model fitted by maximum likelihood (for likelihood-ratio tests)."""
        if not self.reml:
            return self
        eng = ENGINES[self.engine]
        res = eng.fit(self.spec, reml=False, start=self.theta, options=self._options)
        return MixedFit(self.spec, res, reml=False, df_method=self.df_method,
                        engine_reason=self.diagnostics["engine_reason"], data=self.data,
                        options=self._options, emit_warnings=False)

    def confint_variance(self, method: str = "profile", *, level: float = 0.95, nsim: int = 200,
                         seed: int | np.random.Generator | None = 0) -> pd.DataFrame:
        """Confidence intervals for the SDs and correlations of the random effects and σ.

        Parameters
        ----------
        method : {"profile", "boot"}
            Likelihood profile of the fitted criterion (as lme4's ``confint(method="profile")``)
            or parametric bootstrap percentiles (``nsim`` refits from simulated responses).
        level : float
        nsim : int
        seed : int or Generator
            Seed of the bootstrap.

        Returns
        -------
        DataFrame
            group, term1, term2, parameter ("sd", "corr" or "sigma"), estimate, ci_low, ci_high.
        """
        return inference.confint_variance(self, method=method, level=level, nsim=nsim, seed=seed)

    # ------------------------------------------------------------------ delegates
    def emmeans(self, specs: Any, **kwargs: Any) -> pd.DataFrame:
        from mfr_outcomes.models import emmeans as _em

        return _em.emmeans(self, specs, **kwargs)

    def contrasts(self, specs: Any, **kwargs: Any) -> pd.DataFrame:
        from mfr_outcomes.models import emmeans as _em

        return _em.contrasts(self, specs, **kwargs)

    def icc(self, **kwargs: Any) -> Any:
        from mfr_outcomes.models import r2 as _r2

        return _r2.icc(self, **kwargs)

    def r2(self, **kwargs: Any) -> Any:
        from mfr_outcomes.models import r2 as _r2

        return _r2.r2_nakagawa(self, **kwargs)

    # ------------------------------------------------------------------ display
    def _df_label(self) -> str:
        return {"satterthwaite": "Satterthwaite's method",
                "kenward-roger": "Kenward-Roger's method", "residual": "residual df (n - p)",
                "asymptotic": "normal approximation (z)"}.get(self.df_method, self.df_method)

    def summary(self) -> str:
        """A text summary laid out like lmerTest's ``summary(lmer(...))``."""
        lines = [f"Linear mixed model fit by {'REML' if self.reml else 'maximum likelihood'}. "
                 f"t-tests use {self._df_label()}",
                 f"Formula: {self.formula}",
                 f"Engine: {self.engine}"]
        if self.reml:
            lines.append(f"REML criterion at convergence: {self.reml_criterion:.1f}")
        else:
            lines.append(f"     AIC      BIC   logLik deviance\n{self.aic:8.1f} {self.bic:8.1f} "
                         f"{self.loglik:8.1f} {self.deviance:8.1f}")
        lines += ["", "Random effects:"]
        vc_rows = [("Groups", "Name", "Variance", "Std.Dev.", "Corr")]
        for group, terms, cov in self.random_covariances:
            sd = np.sqrt(np.diag(cov))
            for i, t in enumerate(terms):
                corr = " ".join(f"{cov[i, j] / (sd[i] * sd[j]):5.2f}" if sd[i] * sd[j] > 0
                                else "  NaN" for j in range(i))
                vc_rows.append((group if i == 0 else "", t, f"{cov[i, i]:.4g}", f"{sd[i]:.4g}",
                                corr))
        vc_rows.append(("Residual", "", f"{self.sigma ** 2:.4g}", f"{self.sigma:.4g}", ""))
        widths = [max(len(r[c]) for r in vc_rows) for c in range(5)]
        for r in vc_rows:
            lines.append(" " + " ".join(r[c].ljust(widths[c]) for c in range(5)).rstrip())
        groups = ", ".join(f"{g}, {n}" for g, n in self.ngroups.items())
        lines.append(f"Number of obs: {self.nobs}, groups:  {groups}")
        lines += ["", "Fixed effects:"]
        fe = self.fixed_effects.set_index("term")
        tab = pd.DataFrame({"Estimate": fe["estimate"], "Std. Error": fe["std_error"],
                            "df": fe["df"], "t value": fe["statistic"],
                            "Pr(>|t|)": fe["p_value"]})
        lines.append(tab.to_string(float_format=lambda v: f"{v:.4g}"))
        if self.diagnostics["warnings"]:
            lines += ["", "Cautions:"] + [f" - {w}" for w in self.diagnostics["warnings"]]
        return "\n".join(lines)

    def __repr__(self) -> str:
        return (f"<MixedFit {self.formula!r}: n={self.nobs}, engine={self.engine}, "
                f"{'REML' if self.reml else 'ML'}>")

    def _repr_html_(self) -> str:
        fe = self.fixed_effects.to_html(index=False, float_format=lambda v: f"{v:.4g}")
        vc = self.variance_components.to_html(index=False, float_format=lambda v: f"{v:.4g}",
                                              na_rep="")
        warn = "".join(f"<li>{html.escape(w)}</li>" for w in self.diagnostics["warnings"])
        crit = (f"REML criterion {self.reml_criterion:.2f}" if self.reml else
                f"log-likelihood {self.loglik:.2f}")
        return (f"<div><p><b>Linear mixed model</b> <code>{html.escape(self.formula)}</code> "
                f"({'REML' if self.reml else 'ML'}, engine {self.engine}; n = {self.nobs}; "
                f"{crit}; t tests use {self._df_label()})</p>"
                f"<p>Fixed effects</p>{fe}<p>Variance components</p>{vc}"
                + (f"<p>Cautions</p><ul>{warn}</ul>" if warn else "") + "</div>")
