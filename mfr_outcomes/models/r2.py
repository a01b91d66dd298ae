"""Intraclass correlation and Nakagawa's R² of a linear mixed model, as R's performance computes them.

Variance components follow Nakagawa, Johnson & Schielzeth (2017, J R Soc Interface 14:20170213)
and Johnson (2014, Methods Ecol Evol 5:944-946) for random slopes:

- fixed-effect variance σ²_f = var(Xβ̂) (sample variance, n − 1);
- random-effect variance σ²_r = Σ_blocks mean_i (z_iᵀ Σ_b z_i), i.e. the mean of diag(Z Σ Zᵀ)
  over the rows used, which is the intercept variance when a block has only an intercept;
- residual variance σ²_e = σ̂².

ICC adjusted = σ²_r / (σ²_r + σ²_e); unadjusted = σ²_r / (σ²_f + σ²_r + σ²_e).
R² marginal = σ²_f / (σ²_f + σ²_r + σ²_e); conditional = (σ²_f + σ²_r) / (σ²_f + σ²_r + σ²_e).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from mfr_outcomes.models.spec import block_lambda, theta_lower_bounds
from mfr_outcomes.warnings_ import ModelWarning

__all__ = ["VarianceParts", "ICCResult", "R2Result", "variance_parts", "icc", "r2_nakagawa"]

#: performance's default tolerance for a singular fit (lme4::isSingular(tol = 1e-5))
SINGULAR_TOL = 1e-5


@dataclass(frozen=True)
class VarianceParts:
    """The variance decomposition behind ICC and R² (insight::get_variance).

    Attributes
    ----------
    var_fixed, var_random, var_residual : float
        σ²_f, σ²_r (NaN when the fit is singular, as performance), σ²_e.
    var_intercept : dict
        group -> random-intercept variance of each block that has an intercept.
    singular : bool
    notes : list of str
    """

    var_fixed: float
    var_random: float
    var_residual: float
    var_intercept: dict[str, float] = field(default_factory=dict)
    singular: bool = False
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class ICCResult:
    """ICC of a mixed model (performance::icc).

    Attributes
    ----------
    adjusted : float
        σ²_r / (σ²_r + σ²_e): the share of the variance not explained by fixed effects that lies
        between groups.
    unadjusted : float
        σ²_r / (σ²_f + σ²_r + σ²_e) (performance's "conditional" ICC).
    parts : VarianceParts
    notes : list of str
    """

    adjusted: float
    unadjusted: float
    parts: VarianceParts
    notes: list[str] = field(default_factory=list)

    def to_frame(self) -> pd.DataFrame:
        """One row: icc_adjusted, icc_unadjusted, var_fixed, var_random, var_residual."""
        return pd.DataFrame([{"icc_adjusted": self.adjusted, "icc_unadjusted": self.unadjusted,
                              "var_fixed": self.parts.var_fixed,
                              "var_random": self.parts.var_random,
                              "var_residual": self.parts.var_residual}])

    def __getitem__(self, key: str) -> float:
        return {"adjusted": self.adjusted, "unadjusted": self.unadjusted}[key]


@dataclass(frozen=True)
class R2Result:
    """Nakagawa's R² of a mixed model (performance::r2_nakagawa).

    Attributes
    ----------
    marginal : float
        Variance explained by the fixed effects.
    conditional : float
        Variance explained by fixed and random effects (NaN when the fit is singular).
    parts : VarianceParts
    notes : list of str
    """

    marginal: float
    conditional: float
    parts: VarianceParts
    notes: list[str] = field(default_factory=list)

    def to_frame(self) -> pd.DataFrame:
        """One row: r2_marginal, r2_conditional, var_fixed, var_random, var_residual."""
        return pd.DataFrame([{"r2_marginal": self.marginal, "r2_conditional": self.conditional,
                              "var_fixed": self.parts.var_fixed,
                              "var_random": self.parts.var_random,
                              "var_residual": self.parts.var_residual}])

    def __getitem__(self, key: str) -> float:
        return {"marginal": self.marginal, "conditional": self.conditional}[key]


def _covariances(fit: Any) -> list[np.ndarray]:
    covs = getattr(fit, "random_covariances", None)
    if covs is not None:
        return [np.atleast_2d(np.asarray(c[2] if isinstance(c, tuple) else c, dtype=float))
                for c in covs]
    theta = np.atleast_1d(np.asarray(fit.theta, dtype=float))
    out, k = [], 0
    for b in fit.spec.blocks:
        lam = block_lambda(theta[k:k + b.n_theta], b.q)
        k += b.n_theta
        out.append(float(fit.sigma) ** 2 * lam @ lam.T)
    return out


def _is_singular(fit: Any, tol: float) -> bool:
    theta = np.atleast_1d(np.asarray(getattr(fit, "theta", []), dtype=float))
    if theta.size == 0:
        return False
    lb = theta_lower_bounds(fit.spec)
    return bool(np.any(np.abs(theta[lb == 0.0]) < tol))


def _caution(notes: list[str], text: str, warn: bool) -> None:
    notes.append(text)
    if warn:
        warnings.warn(text, ModelWarning, stacklevel=4)


def variance_parts(fit: Any, *, tolerance: float = SINGULAR_TOL, warn: bool = True
                   ) -> VarianceParts:
    """σ²_f, σ²_r and σ²_e of a linear mixed model, as ``insight::get_variance``.

    Blocks with one level per observation (an observation-level random effect) are left out of
    σ²_r, as insight does. A singular fit (a variance parameter within *tolerance* of 0) gives
    σ²_r = NaN with a caution, as performance does.
    """
    spec = fit.spec
    X = np.asarray(spec.X, dtype=float)
    beta = np.asarray(fit.coef, dtype=float)
    eta = X @ beta
    var_fixed = float(np.var(eta, ddof=1)) if eta.size > 1 else 0.0
    var_residual = float(fit.sigma) ** 2
    notes: list[str] = []
    singular = _is_singular(fit, tolerance)
    covs = _covariances(fit)
    var_intercept: dict[str, float] = {}
    total = 0.0
    fixed_names = list(getattr(spec, "fixed_names", []))
    missing_slopes = set()
    for b, S in zip(spec.blocks, covs):
        if b.terms and b.terms[0] == "(Intercept)":
            var_intercept.setdefault(b.group, float(S[0, 0]))
        for t in b.terms:
            if t != "(Intercept)" and t not in fixed_names:
                missing_slopes.add(t)
        if b.n_levels == spec.n:
            continue
        Z = np.asarray(b.Z, dtype=float)
        total += float(np.einsum("ij,jk,ik->", Z, S, Z)) / spec.n
    if missing_slopes:
        _caution(notes, f"random slope(s) {sorted(missing_slopes)} are not fixed effects too; "
                        f"this inflates the conditional R² and ICC", warn)
    if singular:
        _caution(notes, "some variance components are (near) zero, so the fit is singular and "
                        "random-effect variances cannot be computed (as performance::icc); "
                        "simplify the random-effects structure", warn)
        total = float("nan")
    return VarianceParts(var_fixed=var_fixed, var_random=total, var_residual=var_residual,
                         var_intercept=var_intercept, singular=singular, notes=notes)


def icc(fit: Any, *, by_group: bool = False, tolerance: float = SINGULAR_TOL
        ) -> ICCResult | pd.DataFrame:
    """Intraclass correlation of a linear mixed model (``performance::icc``).

    Parameters
    ----------
    fit : MixedFit
    by_group : bool
        False: the adjusted and unadjusted ICC over all random effects (an :class:`ICCResult`,
        also indexable as ``res["adjusted"]``). True: one ICC per grouping factor, σ²_intercept /
        (σ²_r + σ²_e), as a DataFrame with columns group, icc (a caution when there are random
        slopes, since these ICCs then ignore them).
    tolerance : float
        Singularity tolerance; a singular fit gives NaN with a :class:`ModelWarning`.

    Examples
    --------
    >>> import mfr_outcomes as mfr
    >>> fit = mfr.fit_course(mfr.load_study(mfr.datasets.synthetic_path()), "pain_nrs",
    ...                      therapist=False, random_slope=False)
    >>> res = icc(fit)
    >>> 0 < res.adjusted < 1 and res.unadjusted <= res.adjusted
    True
    """
    parts = variance_parts(fit, tolerance=tolerance)
    notes = list(parts.notes)
    denom_adj = parts.var_random + parts.var_residual
    if by_group:
        if any(len(b.terms) > 1 or b.terms[0] != "(Intercept)" for b in fit.spec.blocks):
            _caution(notes, "the model has random slopes, so ICCs by group are not accurate",
                     True)
        out = pd.DataFrame({"group": list(parts.var_intercept),
                            "icc": [v / denom_adj for v in parts.var_intercept.values()]})
        out.attrs["notes"] = notes
        return out
    adjusted = parts.var_random / denom_adj
    unadjusted = parts.var_random / (parts.var_fixed + denom_adj)
    return ICCResult(adjusted=float(adjusted), unadjusted=float(unadjusted), parts=parts,
                     notes=notes)


def r2_nakagawa(fit: Any, *, tolerance: float = SINGULAR_TOL) -> R2Result:
    """Marginal and conditional R² of Nakagawa, Johnson & Schielzeth (2017).

    As ``performance::r2_nakagawa``: when random-effect variances are not available (singular
    fit) the marginal R² is σ²_f / (σ²_f + σ²_e) and the conditional R² is NaN.

    Examples
    --------
    >>> import mfr_outcomes as mfr
    >>> fit = mfr.fit_course(mfr.load_study(mfr.datasets.synthetic_path()), "pain_nrs",
    ...                      therapist=False, random_slope=False)
    >>> r2 = r2_nakagawa(fit)
    >>> 0 < r2.marginal < r2.conditional < 1
    True
    """
    parts = variance_parts(fit, tolerance=tolerance)
    notes = list(parts.notes)
    if not np.isfinite(parts.var_random):
        marginal = parts.var_fixed / (parts.var_fixed + parts.var_residual)
        conditional = float("nan")
        notes.append("R² does not account for random effects (their variances are not "
                     "available)")
    else:
        total = parts.var_fixed + parts.var_random + parts.var_residual
        marginal = parts.var_fixed / total
        conditional = (parts.var_fixed + parts.var_random) / total
    return R2Result(marginal=float(marginal), conditional=float(conditional), parts=parts,
                    notes=notes)
