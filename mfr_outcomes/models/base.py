"""``MixedFitBase``: what every fitted mixed model shares, whatever its family.

A fit is a :class:`~mfr_outcomes.models.spec.ModelSpec` (the model on its rows), an
:class:`~mfr_outcomes.models.spec.EngineResult` (the estimates, on lme4's conventions) and a
degrees-of-freedom strategy (:mod:`mfr_outcomes.models.dfmethods`). From those the base builds the
tidy tables (``fixed_effects``, ``variance_components``, ``random_effects``), the information
criteria, the cautions in ``diagnostics``, predictions on the linear-predictor scale, marginal
means, likelihood-ratio comparison and the displays (``summary()``, ``_repr_html_``).
``LinearMixedFit`` (:mod:`mfr_outcomes.models.fit`) adds what is specific to a Gaussian response;
``GeneralizedMixedFit`` (:mod:`mfr_outcomes.models.glmm_fit`) is its sibling for binomial and
Poisson responses. A subclass fills the hooks below (``scale``, ``has_residual``,
``family_label``, ``_fit_method``, ``_family_line``, ``_offset``, ``_extra_diagnostics``,
``_extra_tables``, ``_check_comparable``, ``_check_family``); see docs/model_layer.md.
"""
from __future__ import annotations

import functools
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
from mfr_outcomes.models.formula import fixed_matrix
from mfr_outcomes.models.spec import EngineResult, ModelSpec, theta_lower_bounds
from mfr_outcomes.models.tidy import random_part, variance_components_table
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
    #: Engine capabilities nothing of this family needs (their absence earns no caution; it is
    #: still listed in ``diagnostics["unavailable"]``).
    unneeded_capabilities: ClassVar[frozenset[str]] = frozenset()

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
        self.diagnostics.update(self._extra_diagnostics())
        for c in cautions:
            self._warn(f"{c[0].upper()}{c[1:]}.", ModelWarning, emit_warnings)
        self._check(emit_warnings)

    # ------------------------------------------------------------------ labelled estimates
    # Built on first use (a labelled pandas object costs ~0.1-0.3 ms, a tenth of a small fit);
    # the values are those the constructor used to build.
    @functools.cached_property
    def coef(self) -> pd.Series:
        """β̂, indexed by the fixed-effect names."""
        return pd.Series(self.result.beta, index=self.spec.fixed_names, name="estimate")

    @functools.cached_property
    def vcov(self) -> pd.DataFrame:
        """The engine's Var(β̂), labelled by the fixed-effect names."""
        names = self.spec.fixed_names
        return pd.DataFrame(self.result.vcov_beta, index=names, columns=names)

    # ------------------------------------------------------------------ family hooks
    @property
    def scale(self) -> float:
        """The residual scale σ that multiplies ΛΛ' (1 for families without one)."""
        return 1.0

    def _extra_diagnostics(self) -> dict[str, Any]:
        """Family-specific entries of ``diagnostics``, set before the checks run."""
        return {}

    def _check_family(self, emit: bool) -> None:
        """Family-specific cautions (run last by ``_check``)."""

    def _offset(self, newdata: pd.DataFrame | None, offset: Any = None) -> np.ndarray | float:
        """The offset of the linear predictor (0 unless the family has one)."""
        return 0.0

    def _check_comparable(self, others: Sequence[Any]) -> None:
        """Raise when *others* cannot be compared with this fit by a likelihood ratio."""

    def _fit_method(self) -> str:
        return "REML" if self.reml else "maximum likelihood"

    def _family_line(self) -> str | None:
        """A line under the summary's title naming the family and link (None: none)."""
        return None

    def _extra_tables(self) -> list[tuple[str, pd.DataFrame]]:
        """(title, table) shown after the fixed effects in ``summary()`` and the HTML."""
        return []

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
            if u.what not in self.unneeded_capabilities:
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
            # every level with at least q rows: the median is too (np.median sorts, ~25 µs)
            if b.q > 1 and int(counts.min()) < b.q and np.median(counts) < b.q:
                self._warn(f"Fewer observations per level of {b.group!r} (median "
                           f"{np.median(counts):g}) than random terms ({b.q}: "
                           f"{', '.join(b.terms)}): the random part is not identifiable from "
                           f"within-group data. Simplify it.", ModelWarning, emit)
        self._check_family(emit)

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
        elif opt is None:  # no verified optimum: what the optimiser said, never swallowed
            for m in self.result.messages:
                self._warn(f"Optimiser: {m}.", ModelWarning, emit)

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
        if not 0.0 < level < 1.0:
            raise ValueError(f"level must be between 0 and 1; got {level!r}.")
        dfm = self.df_strategy
        out = inference.contest_1d(L, self.result.beta, dfm, names, level)
        for c in dfm.cautions:
            self._warn(c, ModelWarning, True)
        return out

    @property
    def fixed_effects(self) -> pd.DataFrame:
        # the tests' numbers are kept, and each read builds its own frame from a copy of them
        # (a frame of its own for the caller to change, without copying a frame: ~20 µs)
        values = getattr(self, "_fixed_effect_values", None)
        if values is None:
            dfm = self.df_strategy
            values = inference.contest_1d_values(np.eye(self.spec.p), self.result.beta, dfm)
            for c in dfm.cautions:
                self._warn(c, ModelWarning, True)
            self._fixed_effect_values = values
        return inference.tidy_table(values.copy(), self.spec.fixed_names)

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
        self._check_comparable(others)
        return inference.compare(self, *others, refit=refit)

    # ------------------------------------------------------------------ marginal means
    def emmeans(self, specs: Any, **kwargs: Any) -> pd.DataFrame:
        """Estimated marginal means (:func:`mfr_outcomes.models.emmeans.emmeans`)."""
        from mfr_outcomes.models import emmeans as _em

        return _em.emmeans(self, specs, **kwargs)

    def contrasts(self, specs: Any, **kwargs: Any) -> pd.DataFrame:
        """Contrasts of marginal means (:func:`mfr_outcomes.models.emmeans.contrasts`)."""
        from mfr_outcomes.models import emmeans as _em

        return _em.contrasts(self, specs, **kwargs)

    # ------------------------------------------------------------------ random effects
    def _require(self, what: str, use: str) -> None:
        why = self.result.cannot(what)  # type: ignore[arg-type]
        if why is not None:
            raise ValueError(f"{use} needs the conditional modes of the random effects, which the "
                             f"engine {self.engine!r} cannot supply for this model ({why}). Fit "
                             f"with another engine, or use include_random=False.")

    def random_effects(self) -> pd.DataFrame:
        """Conditional modes (BLUPs) of the random effects and their conditional SDs.

        Returns
        -------
        DataFrame
            group, level, term, estimate, cond_sd (one row a level and term, level by level).
        """
        self._require("conditional_modes", "random_effects()")
        condvar = self.result.blup_condvar
        parts = []
        for k, (b, blup) in enumerate(zip(self.spec.blocks, self.result.blups)):
            sd = (np.sqrt(np.diagonal(condvar[k], axis1=1, axis2=2)) if condvar is not None
                  else np.full(blup.shape, np.nan))
            parts.append(pd.DataFrame({"group": b.group,
                                       "level": np.repeat(np.asarray(b.levels, dtype=object), b.q),
                                       "term": np.tile(np.asarray(b.terms, dtype=object),
                                                       b.n_levels),
                                       "estimate": np.asarray(blup, float).ravel(),
                                       "cond_sd": np.asarray(sd, float).ravel()}))
        cols = ["group", "level", "term", "estimate", "cond_sd"]
        return (pd.concat(parts, ignore_index=True)[cols] if parts
                else pd.DataFrame(columns=cols))

    # ------------------------------------------------------------------ prediction
    def model_matrix(self, newdata: pd.DataFrame) -> np.ndarray:
        """The fixed-effects model matrix X for new rows (columns as ``fit.coef``)."""
        return fixed_matrix(self.spec, newdata)

    def _random_part(self, newdata: pd.DataFrame) -> np.ndarray:
        return random_part(self.spec, self.result.blups, newdata)

    def _linear_predictor(self, newdata: pd.DataFrame | None, include_random: bool,
                          offset: Any = None) -> np.ndarray:
        """η = Xβ̂ (+ offset) (+ Zb̂) on the rows used (newdata None) or on new rows."""
        beta = self.result.beta
        if newdata is None:
            eta = self.spec.X @ beta + self._offset(None)
            if include_random:
                self._require("conditional_modes", "fitted(include_random=True)")
                for b, blup in zip(self.spec.blocks, self.result.blups):
                    eta = eta + np.einsum("ij,ij->i", b.Z, blup[b.codes])
            return eta
        eta = self.model_matrix(newdata) @ beta + self._offset(newdata, offset)
        if include_random:
            self._require("conditional_modes", "predict(include_random=True)")
            eta = eta + self._random_part(newdata)
        return eta

    def predict(self, newdata: pd.DataFrame | None = None, include_random: bool = True
                ) -> np.ndarray:
        """Predictions Xβ̂ (+ Zb̂ when include_random); levels not seen in the fit get b = 0."""
        return self._linear_predictor(newdata, include_random)

    def fitted(self, include_random: bool = True) -> np.ndarray:
        """Fitted values on the rows used (conditional on the random effects by default)."""
        return self._linear_predictor(None, include_random)

    # ------------------------------------------------------------------ display
    def _df_label(self) -> str:
        return self.df_strategy.label if self._dfm is not None else DF_LABELS.get(
            self.df_method, self.df_method)

    def _tests_phrase(self) -> str:
        if self.df_method == "asymptotic":
            return "Wald z tests (df = ∞)"
        return f"t-tests use {self._df_label()}"

    def _criterion_lines(self) -> list[str]:
        return ["     AIC      BIC   logLik deviance df.resid",
                f"{self.aic:8.1f} {self.bic:8.1f} {self.loglik:8.1f} {self.deviance:8.1f} "
                f"{self.nobs - self.npar:8d}"]

    def _criterion_short(self) -> str:
        return f"log-likelihood {self.loglik:.2f}"

    def _safe_fixed_table(self) -> tuple[pd.DataFrame | None, str]:
        try:
            return self.fixed_effects, ""
        except (np.linalg.LinAlgError, FloatingPointError, ValueError) as exc:
            return None, (f"The fixed-effect tests could not be computed ({exc}); the estimates "
                          f"are in fit.coef.")

    def _random_effects_lines(self) -> list[str]:
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
        return [" " + " ".join(r[c].ljust(widths[c]) for c in range(5)).rstrip()
                for r in vc_rows]

    def _fixed_effects_display(self, fe: pd.DataFrame) -> pd.DataFrame:
        """lme4's coefficient table: t tests with a df column, or Wald z tests without one."""
        fe = fe.set_index("term")
        if np.isfinite(fe["df"].to_numpy(float)).any():
            return pd.DataFrame({"Estimate": fe["estimate"], "Std. Error": fe["std_error"],
                                 "df": fe["df"], "t value": fe["statistic"],
                                 "Pr(>|t|)": fe["p_value"]})
        return pd.DataFrame({"Estimate": fe["estimate"], "Std. Error": fe["std_error"],
                             "z value": fe["statistic"], "Pr(>|z|)": fe["p_value"]})

    def summary(self) -> str:
        """A text summary laid out like ``summary(lmer(...))`` / ``summary(glmer(...))``: title,
        formula, engine, criteria, random effects, fixed effects, the family's extra tables (odds
        or rate ratios), cautions."""
        fe, failure = self._safe_fixed_table()
        lines = [f"{self.family_label} fit by {self._fit_method()}. {self._tests_phrase()}"]
        family = self._family_line()
        if family:
            lines.append(family)
        lines += [f"Formula: {self.formula}", f"Engine: {self.engine}"]
        lines += self._criterion_lines()
        lines += ["", "Random effects:"] + self._random_effects_lines()
        groups = ", ".join(f"{g}, {n}" for g, n in self.ngroups.items())
        lines.append(f"Number of obs: {self.nobs}, groups:  {groups}")
        lines += ["", "Fixed effects:"]
        if fe is None:
            lines.append(self.coef.to_string(float_format=lambda v: f"{v:.4g}"))
            lines.append(failure)
        else:
            lines.append(self._fixed_effects_display(fe).to_string(
                float_format=lambda v: f"{v:.4g}"))
            for title, tab in self._extra_tables():
                lines += ["", f"{title}:", tab.to_string(index=False,
                                                          float_format=lambda v: f"{v:.4g}")]
        if self.diagnostics["warnings"]:
            lines += ["", "Cautions:"] + [f" - {w}" for w in self.diagnostics["warnings"]]
        return "\n".join(lines)

    def _repr_details(self) -> str:
        return f"engine={self.engine}, {'REML' if self.reml else 'ML'}"

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.formula!r}: n={self.nobs}, {self._repr_details()}>"

    def _repr_html_(self) -> str:
        fmt = lambda v: f"{v:.4g}"  # noqa: E731
        fe_tab, failure = self._safe_fixed_table()
        fe = (fe_tab.to_html(index=False, float_format=fmt) if fe_tab is not None
              else f"<p>{html.escape(failure)}</p>")
        extra = "".join(f"<p>{html.escape(title)}</p>" + tab.to_html(index=False, float_format=fmt)
                        for title, tab in (self._extra_tables() if fe_tab is not None else []))
        vc = self.variance_components.to_html(index=False, float_format=fmt, na_rep="")
        warn = "".join(f"<li>{html.escape(w)}</li>" for w in self.diagnostics["warnings"])
        family = self._family_line()
        details = "; ".join([*([family.strip()] if family else []),
                             f"{self._fit_method()}, engine {self.engine}", f"n = {self.nobs}",
                             self._criterion_short(), self._tests_phrase()])
        return (f"<div><p><b>{html.escape(self.family_label)}</b> "
                f"<code>{html.escape(self.formula)}</code> ({html.escape(details)})</p>"
                f"<p>Fixed effects</p>{fe}{extra}<p>Variance components</p>{vc}"
                + (f"<p>Cautions</p><ul>{warn}</ul>" if warn else "") + "</div>")
