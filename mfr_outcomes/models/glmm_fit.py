"""``GeneralizedMixedFit``: a binomial or Poisson mixed model fitted as glmer does, in tidy frames.

A sibling of :class:`~mfr_outcomes.models.fit.LinearMixedFit` on
:class:`~mfr_outcomes.models.base.MixedFitBase`: the tidy tables (``fixed_effects`` with Wald z
tests, df = ∞, as glmer reports them; ``variance_components``; ``random_effects``),
``linear_contrast``, ``anova``, ``compare``, ``emmeans``/``contrasts``, prediction on the link
scale, the lme4 cautions and the displays are the base's. This class adds only what depends on
the family: the response scale (``type="response"``, ``fixed_effects_exp``: odds or rate
ratios), offsets and prior weights, glmer's residuals and conditional deviance, performance's
latent-scale ICC and R², and the checks for separation (binomial) and overdispersion (Poisson).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy import special

from mfr_outcomes.models.base import SINGULAR_TOL, MixedFitBase
from mfr_outcomes.models.families import Family, latent_variance
from mfr_outcomes.models.glmm import GlmmResult
from mfr_outcomes.models.spec import EngineResult, ModelSpec, Unavailable
from mfr_outcomes.warnings_ import ModelWarning

__all__ = ["GeneralizedMixedFit", "SEPARATION_LOGIT", "OVERDISPERSION_RATIO", "SINGULAR_TOL",
           "engine_result"]

#: |log odds| above this for a fixed effect points to (quasi-)complete separation.
SEPARATION_LOGIT = 10.0
#: Pearson χ²/df above this earns an overdispersion caution (Poisson).
OVERDISPERSION_RATIO = 1.5
_TYPES = ("link", "response")
_NOT_SUPPLIED = ("glmer's Wald z tests use Var(β̂) at the optimum only; the Laplace deviance as a "
                 "function of the variance parameters is not exposed")


def engine_result(res: GlmmResult) -> EngineResult:
    """The :class:`EngineResult` of a glmer-style fit (engine "glmm", σ = 1, objective = −2 log L
    by Laplace or quadrature); the :class:`GlmmResult` itself is kept in ``internals``."""
    return EngineResult(engine="glmm", reml=False, theta=np.asarray(res.theta, float),
                        beta=np.asarray(res.beta, float), sigma=1.0, vcov_beta=res.vcov_beta,
                        objective=float(res.objective), converged=bool(res.converged),
                        messages=list(res.messages), optimizer=res.optimizer,
                        n_evaluations=res.n_evaluations, blups=list(res.blups),
                        blup_condvar=list(res.blup_condvar),
                        unavailable=[Unavailable("deviance_function", _NOT_SUPPLIED),
                                     Unavailable("vcov_function", _NOT_SUPPLIED)],
                        internals=res)


class GeneralizedMixedFit(MixedFitBase):
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
    result, glmm_result
        The :class:`EngineResult` the base reads, and the backend's own :class:`GlmmResult`
        (μ, η, the Hessian, the backend's name).
    theta, sigma, family, nagq, diagnostics
    """

    family_label = "Generalized linear mixed model"
    has_residual = False
    #: glmer's Wald z tests need neither closure (no Satterthwaite df, no profile of θ).
    unneeded_capabilities = frozenset({"deviance_function", "vcov_function"})

    def __init__(self, spec: ModelSpec, result: GlmmResult, *, weights: np.ndarray,
                 offset: np.ndarray, data: pd.DataFrame | None = None,
                 offset_column: str | None = None, emit_warnings: bool = True,
                 cautions: Sequence[str] = ()):
        self.glmm_result = result
        self.family: Family = result.family
        self.nagq = result.nagq
        self.weights = weights
        self.offset = offset
        self._offset_column = offset_column
        self.sigma = 1.0
        self.conditional_deviance = float(result.conditional_deviance)
        self.reml_criterion = float("nan")
        super().__init__(spec, engine_result(result), reml=False, df_method="asymptotic",
                         engine_reason=f"glmm: glmer's method ({result.backend} backend)",
                         data=data, emit_warnings=emit_warnings, cautions=cautions)

    # ------------------------------------------------------------------ family hooks
    def _extra_diagnostics(self) -> dict[str, Any]:
        return {"family": self.family.label, "nagq": self.nagq,
                "backend": self.glmm_result.backend, "vcov_method": self.glmm_result.vcov_method,
                "separation": [], "overdispersion": None}

    def _check_family(self, emit: bool) -> None:
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
        mu = self.glmm_result.mu
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

    # ------------------------------------------------------------------ fixed-effect inference
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
        _check_type(type)
        out = super().emmeans(specs, **kwargs)
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
        _check_type(type)
        out = super().contrasts(specs, **kwargs)
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
    def _offset(self, newdata: pd.DataFrame | None, offset: Any = None) -> np.ndarray | float:
        if newdata is None:
            return self.offset
        off = offset if offset is not None else self._offset_column
        if isinstance(off, str):
            return newdata[off].to_numpy(float)
        return 0.0 if off is None else np.asarray(off, float)

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
        eta = self._linear_predictor(newdata, include_random, offset)
        return eta if type == "link" else self.family.linkinv(eta)

    def fitted(self, include_random: bool = True) -> np.ndarray:
        """Fitted means μ on the rows used (glmer's ``fitted``)."""
        return self.predict(None, include_random, type="response")

    def residuals(self, type: str = "deviance") -> np.ndarray:
        """Deviance (default), Pearson or response residuals at the conditional modes."""
        y, mu, w = self.spec.y, self.glmm_result.mu, self.weights
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

    def _check_comparable(self, others: Sequence[Any]) -> None:
        for o in others:
            if not isinstance(o, GeneralizedMixedFit) or o.family != self.family:
                raise ValueError("compare() needs fits of the same family and link.")
            if (o.nagq > 1) != (self.nagq > 1):
                raise ValueError("Laplace (nagq = 1) and quadrature (nagq > 1) deviances are on "
                                 "different scales in glmer; compare fits with the same nagq.")

    # ------------------------------------------------------------------ display
    def _fit_method(self) -> str:
        method = ("Laplace approximation" if self.nagq == 1 else
                  f"adaptive Gauss-Hermite quadrature (nAGQ = {self.nagq})" if self.nagq > 1
                  else "nAGQ = 0 (β in PIRLS)")
        return f"maximum likelihood ({method})"

    def _family_line(self) -> str | None:
        return f" Family: {self.family.name}  ( {self.family.link} )"

    def _extra_tables(self) -> list[tuple[str, pd.DataFrame]]:
        if not self.ratio_name:
            return []
        ex = self.fixed_effects_exp[["term", "estimate", "ci_low", "ci_high"]]
        return [(f"{self.ratio_name.capitalize()}s (95 % CI)",
                 ex.rename(columns={"estimate": self.ratio_name.replace(" ", "_")}))]

    def _repr_details(self) -> str:
        return f"{self.family.label}, nagq={self.nagq}"


def _check_type(type: str) -> None:
    if type not in _TYPES:
        raise ValueError(f"type must be 'link' or 'response'; got {type!r}.")
