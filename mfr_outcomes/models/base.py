"""``MixedFitBase``: what every fitted mixed model shares, whatever its family.

A fit is a :class:`~mfr_outcomes.models.spec.ModelSpec` (the model on its rows), an
:class:`~mfr_outcomes.models.spec.EngineResult` (the estimates, on lme4's conventions) and a
degrees-of-freedom strategy (:mod:`mfr_outcomes.models.dfmethods`). From those the base builds the
tidy tables (``fixed_effects``, ``variance_components``, ``random_effects``), the information
criteria, the cautions in ``diagnostics`` and the displays. ``LinearMixedFit``
(:mod:`mfr_outcomes.models.fit`) adds what is specific to a Gaussian response; a generalised fit
is a sibling subclass (see docs/model_layer.md for what a sibling implements).
"""
from __future__ import annotations

import html
import warnings
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from mfr_outcomes.models import inference
from mfr_outcomes.models.checks import LME4_MESSAGES, OptimumCheck, term_label
from mfr_outcomes.models.dfmethods import (
    DF_LABELS,
    AsymptoticDf,
    DfMethod,
    DfUnavailable,
    block_covariances,
    make_df_method,
)
from mfr_outcomes.models.spec import EngineResult, ModelSpec, theta_lower_bounds
from mfr_outcomes.models.tidy import variance_components_table
from mfr_outcomes.warnings_ import DataWarning, ModelWarning

__all__ = ["MixedFitBase", "SINGULAR_TOL", "MIN_GROUPS_FOR_SLOPE"]

#: lme4's ``isSingular`` tolerance on θ elements with lower bound 0.
SINGULAR_TOL = 1e-4
#: fewer levels than this for a grouping factor with a random slope earns a warning.
MIN_GROUPS_FOR_SLOPE = 5
_CAPABILITY_TEXT = {"conditional_modes": "the conditional modes of the random effects",
                    "deviance_function": "the deviance function",
                    "vcov_function": "Var(β̂) as a function of the variance parameters"}


class MixedFitBase:
    """A fitted mixed model of any family (use a subclass: ``LinearMixedFit``).

    Attributes
    ----------
    fixed_effects : DataFrame
        term, estimate, std_error, df, statistic, p_value, ci_low, ci_high (95 %).
    variance_components : DataFrame
        group, term1, term2, variance, sd, corr — lme4's ``VarCorr`` (a last row ``Residual``
        when the family has a residual variance).
    loglik, aic, bic, deviance, nobs, ngroups, npar, diagnostics
        As lme4 reports them.
    coef, vcov : Series, DataFrame
        β̂ and the engine's Var(β̂).
    theta : ndarray
        lme4's relative covariance factor elements (block order of ``spec.blocks``).
    """

    #: Shown in ``summary()`` and ``_repr_html_``.
    family_label: ClassVar[str] = "Mixed model"
    #: Whether the family has a residual variance (a ``Residual`` row, σ in ``npar``).
    has_residual: ClassVar[bool] = False

    def __init__(self, spec: ModelSpec, result: EngineResult, *, reml: bool, df_method: str,
                 engine_reason: str = "", data: pd.DataFrame | None = None,
                 options: dict | None = None, emit_warnings: bool = True,
                 optimum: OptimumCheck | None = None, cautions: Sequence[str] = ()):
        self.spec = spec
        self.result = result
        self.reml = bool(reml)
        self.df_method = df_method
        self.formula = spec.formula
        self.data = data if data is not None else spec.data
        self.engine = result.engine
        self._options = options
        self._optimum = optimum
        self._dfm: DfMethod | None = None
        self.theta = np.asarray(result.theta, dtype=float)
        self.coef = pd.Series(result.beta, index=spec.fixed_names, name="estimate")
        self.vcov = pd.DataFrame(result.vcov_beta, index=spec.fixed_names,
                                 columns=spec.fixed_names)
        self.nobs = spec.n
        self.ngroups = {b.group: b.n_levels for b in spec.blocks}
        self.npar = spec.p + spec.n_theta + int(self.has_residual)
        self.loglik = -0.5 * float(result.objective)
        self.deviance = -2.0 * self.loglik
        self.aic = -2.0 * self.loglik + 2 * self.npar
        self.bic = -2.0 * self.loglik + np.log(self.nobs) * self.npar
        lb = theta_lower_bounds(spec)
        converged = bool(result.converged) if optimum is None else bool(optimum.converged)
        self.diagnostics: dict[str, Any] = {
            "converged": converged,
            "singular": bool(np.any(self.theta[lb == 0.0] < SINGULAR_TOL)),
            "optimizer": result.optimizer,
            "messages": list(result.messages),
            "engine": result.engine,
            "engine_reason": engine_reason,
            "n_evaluations": result.n_evaluations,
            "excluded_rows": len(spec.excluded),
            "max_grad": None if optimum is None else optimum.max_grad,
            "unavailable": [f"{u.what}: {u.reason}" for u in result.unavailable],
            "warnings": [],
        }
        for c in cautions:
            self._warn(f"{c[0].upper()}{c[1:]}.", ModelWarning, emit_warnings)
        self._check(emit_warnings)

    # ------------------------------------------------------------------ family hooks
    @property
    def scale(self) -> float:
        """The residual scale σ that multiplies ΛΛ' (1 for families without one)."""
        return 1.0

    # ------------------------------------------------------------------ cautions
    def _warn(self, message: str, category: type[Warning] = ModelWarning,
              emit: bool = True) -> None:
        if message in self.diagnostics["warnings"]:
            return
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
        self._check_convergence(emit)
        by_reason: dict[str, list[str]] = {}
        for u in self.result.unavailable:
            by_reason.setdefault(u.reason, []).append(_CAPABILITY_TEXT.get(u.what, u.what))
        for reason, what in by_reason.items():
            self._warn(f"The engine {self.engine!r} cannot supply {' or '.join(what)} for this "
                       f"model ({reason}); what needs them says so instead of guessing.",
                       ModelWarning, emit)
        if self.diagnostics["singular"]:
            zero = [term_label(b) for b, cov in zip(spec.blocks, self._block_covs())
                    if np.linalg.eigvalsh(cov).min() <= SINGULAR_TOL ** 2 * self.scale ** 2 * 10
                    or np.any(np.diag(cov) <= 0)]
            where = f" (term {'; '.join(zero)})" if zero else ""
            self._warn(f"{LME4_MESSAGES['singular'].split(':')[0]}{where}: a random-effect "
                       f"variance is estimated as zero or a correlation as ±1. Simplify the "
                       f"random part (drop the random slope or the term with zero variance, or "
                       f"use '||' for uncorrelated terms) and refit.", ModelWarning, emit)
        for b in spec.blocks:
            counts = np.bincount(b.codes, minlength=b.n_levels)
            has_slope = any(t != "(Intercept)" for t in b.terms)
            if has_slope and 2 <= b.n_levels < MIN_GROUPS_FOR_SLOPE:
                self._warn(f"Only {b.n_levels} levels of {b.group!r} for the random slope of "
                           f"{', '.join(t for t in b.terms if t != '(Intercept)')}: too few groups "
                           f"to estimate its variance (at least {MIN_GROUPS_FOR_SLOPE} advised). "
                           f"Consider a random intercept only.", ModelWarning, emit)
            if b.q > 1 and np.median(counts) < b.q:
                self._warn(f"Fewer observations per level of {b.group!r} (median "
                           f"{np.median(counts):g}) than random terms ({b.q}: "
                           f"{', '.join(b.terms)}): the random part is not identifiable from "
                           f"within-group data. Simplify it.", ModelWarning, emit)

    def _check_convergence(self, emit: bool) -> None:
        opt = self._optimum
        if opt is not None and opt.converged and not self.result.converged:
            said = "; ".join(self.result.messages) or "no success"
            self.diagnostics["messages"].append(
                f"the optimiser reported {said}, but the criterion is at a verified optimum "
                f"(max|grad| {opt.max_grad:.2g}, no Newton step lowers it): treated as converged")
        if opt is not None:
            self.diagnostics["messages"].extend(m for m in opt.messages
                                                if m not in self.diagnostics["messages"])
        if not self.diagnostics["converged"]:
            msgs = "; ".join(opt.messages if opt is not None and opt.messages
                             else self.result.messages) or "the optimiser did not report success"
            self._warn(f"The model may not have converged ({msgs}). Check the estimates, rescale "
                       f"covariates, or simplify the random part.", ModelWarning, emit)
        elif opt is not None and opt.messages and "verified optimum" not in " ".join(opt.messages):
            for m in opt.messages:  # e.g. "convergence could not be verified"
                self._warn(f"{m[0].upper()}{m[1:]}.", ModelWarning, emit)

    # ------------------------------------------------------------------ variance parameters
    def _block_covs(self) -> list[np.ndarray]:
        return block_covariances(self.spec, self.theta, self.scale)

    @property
    def random_covariances(self) -> list[tuple[str, list[str], np.ndarray]]:
        """(group, terms, q×q covariance matrix σ²ΛΛ') per random block, in block order."""
        return [(b.group, list(b.terms), c) for b, c in zip(self.spec.blocks, self._block_covs())]

    @property
    def variance_components(self) -> pd.DataFrame:
        return variance_components_table(self.random_covariances,
                                         self.scale if self.has_residual else None)

    # ------------------------------------------------------------------ fixed-effect inference
    @property
    def df_strategy(self) -> DfMethod:
        """The degrees-of-freedom strategy of the tests (built once, from the engine result)."""
        if self._dfm is None:
            hessian = None if self._optimum is None else self._optimum.hessian
            try:
                self._dfm = make_df_method(self.df_method, self.spec, self.result,
                                           hessian=hessian)
            except DfUnavailable as exc:
                self._warn(f"{exc}. The t tests use the normal approximation (z, df = ∞) "
                           f"instead.", ModelWarning, True)
                self._dfm = AsymptoticDf(self.spec, self.result)
        return self._dfm

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
        dfm = self.df_strategy
        out = inference.contest_1d(L, self.result.beta, dfm, names, level)
        for c in dfm.cautions:
            self._warn(c, ModelWarning, True)
        return out

    @property
    def fixed_effects(self) -> pd.DataFrame:
        if not hasattr(self, "_fixed_effects"):
            self._fixed_effects = self.linear_contrast(np.eye(self.spec.p),
                                                       names=self.spec.fixed_names)
        return self._fixed_effects.copy()

    def anova(self) -> pd.DataFrame:
        """Type III F tests of each fixed-effect term, as lmerTest's ``anova(fit, type = 3)``
        (denominator df by the fit's df method).

        Returns
        -------
        DataFrame
            term, num_df, den_df, statistic, p_value.
        """
        dfm = self.df_strategy
        out = inference.anova_type3(self.spec, self.result.beta, dfm)
        for c in dfm.cautions:
            self._warn(c, ModelWarning, True)
        return out

    def compare(self, *others: Any, refit: bool = True) -> pd.DataFrame:
        """Likelihood-ratio tests of this fit against nested others (lme4's ``anova(m0, m1)``)."""
        return inference.compare(self, *others, refit=refit)

    # ------------------------------------------------------------------ random effects
    def _require(self, what: str, use: str) -> None:
        why = self.result.cannot(what)  # type: ignore[arg-type]
        if why is not None:
            raise ValueError(f"{use} needs the conditional modes of the random effects, which the "
                             f"engine {self.engine!r} cannot supply for this model ({why}). Fit "
                             f"with another engine, or use include_random=False.")

    def random_effects(self) -> pd.DataFrame:
        """Conditional modes (BLUPs) of the random effects.

        Returns
        -------
        DataFrame
            group, level, term, estimate, cond_sd.
        """
        self._require("conditional_modes", "random_effects()")
        rows = []
        condvar = self.result.blup_condvar
        for k, (b, blup) in enumerate(zip(self.spec.blocks, self.result.blups)):
            for lev_i, lev in enumerate(b.levels):
                for j, t in enumerate(b.terms):
                    sd = np.sqrt(condvar[k][lev_i, j, j]) if condvar is not None else np.nan
                    rows.append({"group": b.group, "level": lev, "term": t,
                                 "estimate": blup[lev_i, j], "cond_sd": sd})
        return pd.DataFrame(rows, columns=["group", "level", "term", "estimate", "cond_sd"])

    # ------------------------------------------------------------------ display
    def _df_label(self) -> str:
        return self.df_strategy.label if self._dfm is not None else DF_LABELS.get(
            self.df_method, self.df_method)

    def _criterion_lines(self) -> list[str]:
        return [f"     AIC      BIC   logLik deviance\n{self.aic:8.1f} {self.bic:8.1f} "
                f"{self.loglik:8.1f} {self.deviance:8.1f}"]

    def _criterion_short(self) -> str:
        return f"log-likelihood {self.loglik:.2f}"

    def _safe_fixed_table(self) -> tuple[pd.DataFrame | None, str]:
        try:
            return self.fixed_effects, ""
        except (np.linalg.LinAlgError, FloatingPointError, ValueError) as exc:
            return None, (f"The fixed-effect tests could not be computed ({exc}); the estimates "
                          f"are in fit.coef.")

    def summary(self) -> str:
        """A text summary laid out like lmerTest's ``summary(lmer(...))``."""
        fe, failure = self._safe_fixed_table()
        lines = [f"{self.family_label} fit by {'REML' if self.reml else 'maximum likelihood'}. "
                 f"t-tests use {self._df_label()}",
                 f"Formula: {self.formula}",
                 f"Engine: {self.engine}"]
        lines += self._criterion_lines()
        lines += ["", "Random effects:"]
        vc_rows = [("Groups", "Name", "Variance", "Std.Dev.", "Corr")]
        for group, terms, cov in self.random_covariances:
            sd = np.sqrt(np.diag(cov))
            for i, t in enumerate(terms):
                corr = " ".join(f"{cov[i, j] / (sd[i] * sd[j]):5.2f}" if sd[i] * sd[j] > 0
                                else "  NaN" for j in range(i))
                vc_rows.append((group if i == 0 else "", t, f"{cov[i, i]:.4g}", f"{sd[i]:.4g}",
                                corr))
        if self.has_residual:
            vc_rows.append(("Residual", "", f"{self.scale ** 2:.4g}", f"{self.scale:.4g}", ""))
        widths = [max(len(r[c]) for r in vc_rows) for c in range(5)]
        for r in vc_rows:
            lines.append(" " + " ".join(r[c].ljust(widths[c]) for c in range(5)).rstrip())
        groups = ", ".join(f"{g}, {n}" for g, n in self.ngroups.items())
        lines.append(f"Number of obs: {self.nobs}, groups:  {groups}")
        lines += ["", "Fixed effects:"]
        if fe is None:
            lines.append(self.coef.to_string(float_format=lambda v: f"{v:.4g}"))
            lines.append(failure)
        else:
            fe = fe.set_index("term")
            tab = pd.DataFrame({"Estimate": fe["estimate"], "Std. Error": fe["std_error"],
                                "df": fe["df"], "t value": fe["statistic"],
                                "Pr(>|t|)": fe["p_value"]})
            lines.append(tab.to_string(float_format=lambda v: f"{v:.4g}"))
        if self.diagnostics["warnings"]:
            lines += ["", "Cautions:"] + [f" - {w}" for w in self.diagnostics["warnings"]]
        return "\n".join(lines)

    def __repr__(self) -> str:
        return (f"<{type(self).__name__} {self.formula!r}: n={self.nobs}, engine={self.engine}, "
                f"{'REML' if self.reml else 'ML'}>")

    def _repr_html_(self) -> str:
        fe_tab, failure = self._safe_fixed_table()
        fe = (fe_tab.to_html(index=False, float_format=lambda v: f"{v:.4g}") if fe_tab is not None
              else f"<p>{html.escape(failure)}</p>")
        vc = self.variance_components.to_html(index=False, float_format=lambda v: f"{v:.4g}",
                                              na_rep="")
        warn = "".join(f"<li>{html.escape(w)}</li>" for w in self.diagnostics["warnings"])
        crit = self._criterion_short()
        return (f"<div><p><b>{html.escape(self.family_label)}</b> "
                f"<code>{html.escape(self.formula)}</code> "
                f"({'REML' if self.reml else 'ML'}, engine {self.engine}; n = {self.nobs}; "
                f"{crit}; t tests use {self._df_label()})</p>"
                f"<p>Fixed effects</p>{fe}<p>Variance components</p>{vc}"
                + (f"<p>Cautions</p><ul>{warn}</ul>" if warn else "") + "</div>")
