"""``GeneralizedMixedFit``: a binomial or Poisson mixed model fitted as glmer does, in tidy frames.

The public surface is :class:`~mfr_outcomes.models.fit.MixedFit`'s (``fixed_effects``,
``variance_components``, ``emmeans``, ``contrasts``, ``predict``, ``random_effects``, ``icc``,
``r2``, ``diagnostics``, ``summary``) with Wald z tests (df = ∞), as glmer reports them, plus
``fixed_effects_exp`` (odds or rate ratios) and the response scale (``type="response"``).
"""
from __future__ import annotations

import html
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy import special

from mfr_outcomes.models.families import Family, latent_variance
from mfr_outcomes.models.formula import fixed_matrix
from mfr_outcomes.models.glmm import GlmmResult
from mfr_outcomes.models.spec import ModelSpec, block_lambda, theta_lower_bounds
from mfr_outcomes.models.tidy import random_part, variance_components_table
from mfr_outcomes.warnings_ import DataWarning, ModelWarning

__all__ = ["GeneralizedMixedFit", "SEPARATION_LOGIT", "OVERDISPERSION_RATIO", "SINGULAR_TOL"]

SINGULAR_TOL = 1e-4  # lme4's isSingular tolerance
#: |log odds| above this for a fixed effect points to (quasi-)complete separation.
SEPARATION_LOGIT = 10.0
#: Pearson χ²/df above this earns an overdispersion caution (Poisson).
OVERDISPERSION_RATIO = 1.5
_TYPES = ("link", "response")


class GeneralizedMixedFit:
    """A fitted generalised linear mixed model (glmer's method).

    Attributes
    ----------
    fixed_effects : DataFrame
        term, estimate, std_error, df (∞), statistic (Wald z), p_value, ci_low, ci_high, on the
        link scale (log odds, log rate), as ``summary(glmer(...))``.
    fixed_effects_exp : DataFrame
        The same rows exponentiated: estimate and CI are odds ratios (logit link) or rate ratios
        (log link); std_error by the delta method; statistic and p_value stay the link-scale
        Wald test. ``.attrs["scale"]`` says which ratio.
    variance_components : DataFrame
        group, term1, term2, variance, sd, corr (lme4's ``VarCorr``; no residual row: σ = 1).
    loglik, deviance, aic, bic, nobs, ngroups, npar
        glmer's: ``deviance`` is −2 log-likelihood (the "deviance" of ``summary()``);
        ``conditional_deviance`` is the sum of squared deviance residuals at the conditional
        modes (what ``deviance(glmerfit)`` returns).
    coef, vcov : Series, DataFrame
        β̂ and Var(β̂) = 2 H⁻¹ (H the finite-difference Hessian of the deviance over (θ, β)), as
        ``vcov(glmerfit)``.
    theta, sigma, family, nagq, diagnostics
    """

    df_method = "asymptotic"
    reml = False

    def __init__(self, spec: ModelSpec, result: GlmmResult, *, weights: np.ndarray,
                 offset: np.ndarray, data: pd.DataFrame | None = None,
                 offset_column: str | None = None, emit_warnings: bool = True):
        self.spec = spec
        self.result = result
        self.family: Family = result.family
        self.nagq = result.nagq
        self.formula = spec.formula
        self.data = data if data is not None else spec.data
        self.engine = "glmm"
        self.weights = weights
        self.offset = offset
        self._offset_column = offset_column
        self.theta = np.asarray(result.theta, dtype=float)
        self.sigma = 1.0
        self.coef = pd.Series(result.beta, index=spec.fixed_names, name="estimate")
        self.vcov = pd.DataFrame(result.vcov_beta, index=spec.fixed_names,
                                 columns=spec.fixed_names)
        self.nobs = spec.n
        self.ngroups = {b.group: b.n_levels for b in spec.blocks}
        self.npar = spec.p + spec.n_theta
        self.deviance = float(result.objective)
        self.loglik = -0.5 * self.deviance
        self.conditional_deviance = float(result.conditional_deviance)
        self.aic = self.deviance + 2.0 * self.npar
        self.bic = self.deviance + np.log(self.nobs) * self.npar
        self.reml_criterion = float("nan")
        lb = theta_lower_bounds(spec)
        self.diagnostics: dict[str, Any] = {
            "converged": bool(result.converged),
            "singular": bool(np.any(self.theta[lb == 0.0] < SINGULAR_TOL)),
            "family": self.family.label,
            "nagq": self.nagq,
            "optimizer": result.optimizer,
            "messages": list(result.messages),
            "engine": "glmm",
            "backend": result.backend,
            "vcov_method": result.vcov_method,
            "n_evaluations": result.n_evaluations,
            "excluded_rows": len(spec.excluded),
            "separation": [],
            "overdispersion": None,
            "warnings": [],
        }
        self._check(emit_warnings)

    # ------------------------------------------------------------------ cautions
    def _warn(self, message: str, category=ModelWarning, emit: bool = True) -> None:
        self.diagnostics["warnings"].append(message)
        if emit:
            warnings.warn(message, category, stacklevel=4)

    def _check(self, emit: bool) -> None:
        spec = self.spec
        if len(spec.excluded):
            self._warn(f"{len(spec.excluded)} row(s) with missing values in the model's variables "
                       f"were excluded (see fit.spec.excluded); {spec.n} row(s) used.",
                       DataWarning, emit)
        for note in spec.notes:
            self._warn(f"{note[0].upper()}{note[1:]}.", ModelWarning, emit)
        if not self.diagnostics["converged"]:
            msgs = "; ".join(self.result.messages) or "the optimiser did not report success"
            self._warn(f"The model may not have converged ({msgs}). Check the estimates, rescale "
                       f"covariates, or simplify the random part.", ModelWarning, emit)
        elif self.result.messages:
            for m in self.result.messages:
                self._warn(f"Optimiser: {m}.", ModelWarning, emit)
        if self.diagnostics["singular"]:
            zero = [f"{g}: {', '.join(t)}" for g, t, cov in self.random_covariances
                    if np.min(np.linalg.eigvalsh(cov)) <= SINGULAR_TOL ** 2 * 10]
            where = f" ({'; '.join(zero)})" if zero else ""
            self._warn(f"Boundary (singular) fit{where}: a random-effect variance is estimated as "
                       f"zero or a correlation as ±1. Simplify the random part and refit.",
                       ModelWarning, emit)
        if self.family.name == "binomial":
            for text in self._separation():
                self.diagnostics["separation"].append(text)
                self._warn(text, ModelWarning, emit)
        else:
            self._overdispersion(emit)

    def _separation(self) -> list[str]:
        """(Quasi-)complete separation: factor levels with one outcome only, runaway estimates."""
        spec, out = self.spec, []
        y, data = spec.y, spec.data
        design = spec.design
        categories = design.categories if design is not None else {}
        used = set(design.fixed_variables) if design is not None else set()
        for col in categories:
            if col not in data.columns or col not in used:
                continue
            codes, levels = pd.factorize(data[col].astype(str))
            total = np.bincount(codes, weights=self.weights, minlength=len(levels))
            succ = np.bincount(codes, weights=self.weights * y, minlength=len(levels))
            for lev, t, s in zip(levels, total, succ):
                if t > 0 and (s <= 0 or s >= t):
                    out.append(f"Complete separation: every response for {col} = {lev} is "
                               f"{'0' if s <= 0 else '1'} ({t:g} trials), so its log odds ratio "
                               f"runs off to {'-' if s <= 0 else '+'}infinity; merge the level, "
                               f"drop it, or use a penalised (Firth) model.")
        fe = self.fixed_effects
        big = fe[(fe["estimate"].abs() > SEPARATION_LOGIT) & (fe["term"] != "(Intercept)")]
        for _, r in big.iterrows():
            out.append(f"Quasi-complete separation suspected: the fixed effect {r['term']} is "
                       f"{r['estimate']:.3g} on the logit scale (SE {r['std_error']:.3g}); an "
                       f"outcome is (almost) perfectly predicted by it.")
        return out

    def _overdispersion(self, emit: bool) -> None:
        mu = self.result.mu
        pearson = float(np.sum(self.weights * (self.spec.y - mu) ** 2 / self.family.variance(mu)))
        rdf = self.nobs - self.npar
        ratio = pearson / rdf if rdf > 0 else np.nan
        p = float(special.chdtrc(rdf, pearson)) if rdf > 0 else np.nan
        self.diagnostics["overdispersion"] = {"pearson_chisq": pearson, "df": rdf,
                                              "ratio": ratio, "p_value": p}
        if np.isfinite(ratio) and ratio > OVERDISPERSION_RATIO:
            self._warn(f"Overdispersion: Pearson χ²/df = {ratio:.2f} (χ² = {pearson:.1f} on {rdf} "
                       f"df, p = {p:.2g}); the Poisson standard errors are too small. Add an "
                       f"observation-level random effect (1 | row) or model the extra variation.",
                       ModelWarning, emit)

    # ------------------------------------------------------------------ variance parameters
    @property
    def random_covariances(self) -> list[tuple[str, list[str], np.ndarray]]:
        """(group, terms, q×q covariance ΛΛ') per random block, in block order."""
        out, k = [], 0
        for b in self.spec.blocks:
            lam = block_lambda(self.theta[k:k + b.n_theta], b.q)
            k += b.n_theta
            out.append((b.group, list(b.terms), lam @ lam.T))
        return out

    @property
    def variance_components(self) -> pd.DataFrame:
        return variance_components_table(self.random_covariances)

    # ------------------------------------------------------------------ fixed-effect inference
    def linear_contrast(self, L: Any, names: Sequence[str] | None = None,
                        level: float = 0.95) -> pd.DataFrame:
        """Wald z tests of linear combinations L β̂ (link scale).

        Parameters
        ----------
        L : array-like (k, p) or (p,), or a dict {term: weight}
        names : sequence of str, optional
        level : float

        Returns
        -------
        DataFrame
            term, estimate, std_error, df (∞), statistic (z), p_value, ci_low, ci_high.
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
        est = L @ self.result.beta
        se = np.sqrt(np.maximum(np.einsum("ij,jk,ik->i", L, self.result.vcov_beta, L), 0.0))
        with np.errstate(divide="ignore", invalid="ignore"):
            z = est / se
        crit = special.ndtri(0.5 + level / 2.0)
        names = list(names) if names is not None else [f"c{i + 1}" for i in range(len(est))]
        return pd.DataFrame({"term": names, "estimate": est, "std_error": se,
                             "df": np.full(len(est), np.inf), "statistic": z,
                             "p_value": 2.0 * special.ndtr(-np.abs(z)),
                             "ci_low": est - crit * se, "ci_high": est + crit * se})

    @property
    def fixed_effects(self) -> pd.DataFrame:
        if not hasattr(self, "_fixed_effects"):
            self._fixed_effects = self.linear_contrast(np.eye(self.spec.p),
                                                       names=self.spec.fixed_names)
        return self._fixed_effects.copy()

    @property
    def ratio_name(self) -> str:
        """"odds ratio" (logit), "rate ratio" (log); other links have no ratio scale."""
        return {"logit": "odds ratio", "log": "rate ratio"}.get(self.family.link, "")

    @property
    def fixed_effects_exp(self) -> pd.DataFrame:
        if not self.ratio_name:
            raise ValueError(f"Exponentiated fixed effects are odds or rate ratios only for the "
                             f"logit and log links; this model uses the {self.family.link} link.")
        out = self.fixed_effects
        out["estimate"] = np.exp(out["estimate"])
        out["std_error"] = out["estimate"] * out["std_error"]
        out["ci_low"], out["ci_high"] = np.exp(out["ci_low"]), np.exp(out["ci_high"])
        out.attrs["scale"] = self.ratio_name
        return out

    # ------------------------------------------------------------------ marginal means
    def emmeans(self, specs: Any, *, type: str = "link", **kwargs: Any) -> pd.DataFrame:
        """Estimated marginal means (``models.emmeans.emmeans``), on the link or response scale.

        With ``type="response"`` the means and CI limits are back-transformed (probabilities or
        rates), the SE by the delta method, and the z test stays on the link scale, as emmeans'
        ``type = "response"`` does.
        """
        from mfr_outcomes.models import emmeans as _em

        _check_type(type)
        out = _em.emmeans(self, specs, **kwargs)
        out.attrs["type"] = type
        if type == "link":
            return out
        inv = self.family.linkinv
        est = out["estimate"].to_numpy(float)
        out["std_error"] = out["std_error"] * self.family.mu_eta(est)
        out["estimate"] = inv(est)
        out["ci_low"], out["ci_high"] = inv(out["ci_low"].to_numpy(float)), \
            inv(out["ci_high"].to_numpy(float))
        out.attrs["notes"] = list(out.attrs.get("notes", [])) + [
            f"back-transformed from the {self.family.link} scale; tests are on the "
            f"{self.family.link} scale"]
        return out

    def contrasts(self, specs: Any, *, type: str = "link", **kwargs: Any) -> pd.DataFrame:
        """Contrasts of marginal means (``models.emmeans.contrasts``).

        ``type="response"`` gives ratios (odds ratios for logit, rate ratios for log links; the
        CI exponentiated, the SE by the delta method, the test on the link scale), as emmeans'
        ``pairs(emm, type = "response")``.
        """
        from mfr_outcomes.models import emmeans as _em

        _check_type(type)
        out = _em.contrasts(self, specs, **kwargs)
        out.attrs["type"] = type
        if type == "link":
            return out
        if not self.ratio_name:
            raise ValueError(f"Contrasts on the response scale are odds or rate ratios, for the "
                             f"logit and log links; this model uses the {self.family.link} link. "
                             f"Use type='link'.")
        out["estimate"] = np.exp(out["estimate"])
        out["std_error"] = out["estimate"] * out["std_error"]
        out["ci_low"], out["ci_high"] = np.exp(out["ci_low"]), np.exp(out["ci_high"])
        if "contrast" in out.columns:
            out["contrast"] = out["contrast"].str.replace(" - ", " / ", regex=False)
        out.attrs["scale"] = self.ratio_name
        out.attrs["notes"] = list(out.attrs.get("notes", [])) + [
            f"{self.ratio_name}s; tests are on the {self.family.link} scale"]
        return out

    # ------------------------------------------------------------------ prediction
    def model_matrix(self, newdata: pd.DataFrame) -> np.ndarray:
        """The fixed-effects model matrix X for new rows (columns as ``fit.coef``)."""
        return fixed_matrix(self.spec, newdata)

    def random_effects(self) -> pd.DataFrame:
        """Conditional modes of the random effects and their conditional SDs.

        Returns
        -------
        DataFrame
            group, level, term, estimate, cond_sd.
        """
        rows = []
        for b, blup, cv in zip(self.spec.blocks, self.result.blups, self.result.blup_condvar):
            sd = np.sqrt(np.diagonal(cv, axis1=1, axis2=2))
            for j, t in enumerate(b.terms):
                rows.append(pd.DataFrame({"group": b.group, "level": list(b.levels), "term": t,
                                          "estimate": blup[:, j], "cond_sd": sd[:, j]}))
        return pd.concat(rows, ignore_index=True)

    def _random_part(self, newdata: pd.DataFrame) -> np.ndarray:
        return random_part(self.spec, self.result.blups, newdata)

    def predict(self, newdata: pd.DataFrame | None = None, include_random: bool = True,
                type: str = "link", offset: Any = None) -> np.ndarray:
        """Predictions on the link (η) or response (μ) scale.

        Parameters
        ----------
        newdata : DataFrame, optional
            None: the rows used in the fit.
        include_random : bool
            Add the conditional modes (levels not seen in the fit get 0).
        type : {"link", "response"}
        offset : array-like or str, optional
            Offset of the new rows (a column name or values); by default the fit's offset
            column when the offset was given as one, else 0.
        """
        _check_type(type)
        if newdata is None:
            eta = self.spec.X @ self.result.beta + self.offset
            if include_random:
                eta = self.result.eta.copy()
        else:
            eta = self.model_matrix(newdata) @ self.result.beta
            off = offset if offset is not None else self._offset_column
            if isinstance(off, str):
                eta = eta + newdata[off].to_numpy(float)
            elif off is not None:
                eta = eta + np.asarray(off, float)
            if include_random:
                eta = eta + self._random_part(newdata)
        return eta if type == "link" else self.family.linkinv(eta)

    def fitted(self, include_random: bool = True) -> np.ndarray:
        """Fitted means μ on the rows used (glmer's ``fitted``)."""
        return self.predict(None, include_random, type="response")

    def residuals(self, type: str = "deviance") -> np.ndarray:
        """Deviance (default), Pearson or response residuals at the conditional modes."""
        y, mu, w = self.spec.y, self.result.mu, self.weights
        if type == "response":
            return y - mu
        if type == "pearson":
            return (y - mu) * np.sqrt(w / self.family.variance(mu))
        if type == "deviance":
            return np.sign(y - mu) * np.sqrt(np.maximum(self.family.dev_resid(y, mu, w), 0.0))
        raise ValueError(f"type must be 'deviance', 'pearson' or 'response'; got {type!r}.")

    # ------------------------------------------------------------------ ICC, R², comparison
    def _variances(self) -> dict[str, float]:
        """performance's variance decomposition on the latent scale."""
        fixed = self.spec.X @ self.result.beta
        var_fixed = float(np.var(fixed, ddof=1))
        var_random = 0.0
        for b, (_, _, cov) in zip(self.spec.blocks, self.random_covariances):
            var_random += float(np.mean(np.einsum("ij,jk,ik->i", b.Z, cov, b.Z)))
        if self.family.name == "binomial":
            var_dist = latent_variance(self.family)
        else:
            var_dist = self._poisson_latent()
        return {"fixed": var_fixed, "random": var_random, "distribution": var_dist}

    def _poisson_latent(self) -> float:
        """log(1 + 1/λ), λ = exp(β₀) of the null model (intercept, the same random part and
        offset), as performance's ``r2_nakagawa`` / ``icc`` compute it for Poisson fits."""
        if not hasattr(self, "_null_latent"):
            from mfr_outcomes.models.glmm import fit_glmm

            spec = self.spec
            null = ModelSpec(formula=spec.formula, response=spec.response, y=spec.y,
                             X=np.ones((spec.n, 1)), fixed_names=["(Intercept)"],
                             blocks=spec.blocks, data=spec.data, design=spec.design)
            res = fit_glmm(null, self.family, weights=self.weights, offset=self.offset)
            self._null_latent = latent_variance(self.family, float(res.beta[0]))
        return self._null_latent

    def icc(self) -> dict[str, float]:
        """Adjusted and unadjusted ICC on the latent scale, as ``performance::icc``."""
        v = self._variances()
        total = v["fixed"] + v["random"] + v["distribution"]
        return {"icc_adjusted": v["random"] / (v["random"] + v["distribution"]),
                "icc_unadjusted": v["random"] / total}

    def r2(self) -> dict[str, float]:
        """Nakagawa's marginal and conditional R², as ``performance::r2_nakagawa``."""
        v = self._variances()
        total = v["fixed"] + v["random"] + v["distribution"]
        return {"r2_marginal": v["fixed"] / total,
                "r2_conditional": (v["fixed"] + v["random"]) / total}

    def compare(self, *others: GeneralizedMixedFit) -> pd.DataFrame:
        """Likelihood-ratio tests against nested fits of the same family (lme4's ``anova``)."""
        from mfr_outcomes.models.inference import compare

        for o in others:
            if not isinstance(o, GeneralizedMixedFit) or o.family != self.family:
                raise ValueError("compare() needs fits of the same family and link.")
            if (o.nagq > 1) != (self.nagq > 1):
                raise ValueError("Laplace (nagq = 1) and quadrature (nagq > 1) deviances are on "
                                 "different scales in glmer; compare fits with the same nagq.")
        return compare(self, *others)

    # ------------------------------------------------------------------ display
    def summary(self) -> str:
        """A text summary laid out like ``summary(glmer(...))``."""
        method = ("Laplace approximation" if self.nagq == 1 else
                  f"adaptive Gauss-Hermite quadrature (nAGQ = {self.nagq})" if self.nagq > 1
                  else "nAGQ = 0 (β in PIRLS)")
        lines = [f"Generalized linear mixed model fit by maximum likelihood ({method})",
                 f" Family: {self.family.name}  ( {self.family.link} )",
                 f"Formula: {self.formula}", "",
                 "     AIC      BIC   logLik deviance df.resid",
                 f"{self.aic:8.1f} {self.bic:8.1f} {self.loglik:8.1f} {self.deviance:8.1f} "
                 f"{self.nobs - self.npar:8d}", "", "Random effects:"]
        for group, terms, cov in self.random_covariances:
            sd = np.sqrt(np.diag(cov))
            for i, t in enumerate(terms):
                lines.append(f" {group if i == 0 else '':<12} {t:<14} {cov[i, i]:10.4g} "
                             f"{sd[i]:10.4g}")
        groups = ", ".join(f"{g}, {n}" for g, n in self.ngroups.items())
        lines += [f"Number of obs: {self.nobs}, groups:  {groups}", "", "Fixed effects:"]
        fe = self.fixed_effects.set_index("term")
        tab = pd.DataFrame({"Estimate": fe["estimate"], "Std. Error": fe["std_error"],
                            "z value": fe["statistic"], "Pr(>|z|)": fe["p_value"]})
        lines.append(tab.to_string(float_format=lambda v: f"{v:.4g}"))
        if self.ratio_name:
            ex = self.fixed_effects_exp.set_index("term")
            lines += ["", f"{self.ratio_name.capitalize()}s (95 % CI):"]
            for t, r in ex.iterrows():
                lines.append(f" {t:<32} {r['estimate']:.3f} ({r['ci_low']:.3f} to "
                             f"{r['ci_high']:.3f})")
        if self.diagnostics["warnings"]:
            lines += ["", "Cautions:"] + [f" - {w}" for w in self.diagnostics["warnings"]]
        return "\n".join(lines)

    def __repr__(self) -> str:
        return (f"<GeneralizedMixedFit {self.formula!r}: {self.family.label}, n={self.nobs}, "
                f"nagq={self.nagq}>")

    def _repr_html_(self) -> str:
        fmt = lambda v: f"{v:.4g}"  # noqa: E731
        fe = self.fixed_effects.to_html(index=False, float_format=fmt)
        ex = (f"<p>{html.escape(self.ratio_name.capitalize())}s</p>"
              + self.fixed_effects_exp.to_html(index=False, float_format=fmt)
              if self.ratio_name else "")
        vc = self.variance_components.to_html(index=False, float_format=fmt, na_rep="")
        warn = "".join(f"<li>{html.escape(w)}</li>" for w in self.diagnostics["warnings"])
        return (f"<div><p><b>Generalized linear mixed model</b> "
                f"<code>{html.escape(self.formula)}</code> ({html.escape(self.family.label)}, "
                f"nAGQ = {self.nagq}; n = {self.nobs}; log-likelihood {self.loglik:.2f}; "
                f"Wald z tests)</p><p>Fixed effects (link scale)</p>{fe}{ex}"
                f"<p>Variance components</p>{vc}"
                + (f"<p>Cautions</p><ul>{warn}</ul>" if warn else "") + "</div>")


def _check_type(type: str) -> None:
    if type not in _TYPES:
        raise ValueError(f"type must be 'link' or 'response'; got {type!r}.")
