"""Intraclass correlation and Nakagawa's R² of a linear mixed model, as R's performance computes them.

Variance components follow Nakagawa, Johnson & Schielzeth (2017, J R Soc Interface 14:20170213)
and Johnson (2014, Methods Ecol Evol 5:944-946) for random slopes:

- fixed-effect variance σ²_f = var(Xβ̂) (sample variance, n − 1);
- random-effect variance σ²_r = Σ_blocks mean_i (z_iᵀ Σ_b z_i), the mean of diag(Z Σ Zᵀ) over the
  rows used, which is the intercept variance when a block has only an intercept;
- residual variance σ²_e = σ̂².

Two definitions of σ²_r (``definition=``):

- ``"performance"`` (default; what users compare against): as ``insight::get_variance`` 0.19 /
  performance 0.10.x compute it. Only the first random term of each grouping factor counts (lme4
  names the later ones ``g.1``, ``g.2``: the slope term of ``(x || g)``), and within a term only
  the columns that are also columns of the fixed-effects design X (for ``(0 + f | g)`` the
  dummies of the non-reference levels of f): the variance of the other random slopes is left out.
- ``"nakagawa2017"``: the full random-slope variance of Nakagawa et al. (2017), every block and
  every column of Z.

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

__all__ = ["VarianceParts", "ICCResult", "R2Result", "variance_parts", "icc", "r2_nakagawa",
           "DEFINITIONS"]

#: performance's default tolerance for a singular fit (lme4::isSingular(tol = 1e-5))
SINGULAR_TOL = 1e-5
#: The definitions of the random-effect variance σ²_r (see the module docstring).
DEFINITIONS = {
    "performance": ("performance 0.10.x / insight (random slopes of '||' terms and slope columns "
                    "not in the fixed design left out)"),
    "nakagawa2017": "Nakagawa et al. (2017) with the full random-slope variance",
}


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
    definition : str
        Which σ²_r: "performance" or "nakagawa2017" (see ``DEFINITIONS``).
    """

    var_fixed: float
    var_random: float
    var_residual: float
    var_intercept: dict[str, float] = field(default_factory=dict)
    singular: bool = False
    notes: list[str] = field(default_factory=list)
    definition: str = "performance"


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

    @property
    def definition(self) -> str:
        """Which σ²_r the ICC uses ("performance" or "nakagawa2017")."""
        return self.parts.definition

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

    @property
    def definition(self) -> str:
        """Which σ²_r the R² uses ("performance" or "nakagawa2017")."""
        return self.parts.definition

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


def _base(name: str) -> str:
    """``f[T.b]`` / ``f[b]`` -> ``f``: the variable behind a factor column."""
    return name.split("[", 1)[0] if name.endswith("]") else name


def _level(name: str) -> str:
    """``f[T.b]`` / ``f[b]`` -> ``f[b]``: one spelling for a factor level column."""
    return name.replace("[T.", "[")


def _block_variance(b: Any, S: np.ndarray, X: np.ndarray, fixed_names: list[str],
                    definition: str) -> float:
    """mean_i z_iᵀ S z_i over the rows, with z the columns the definition counts."""
    if definition == "nakagawa2017":
        Z, S_use = np.asarray(b.Z, dtype=float), S
    else:  # insight: the random terms that are also columns of X, with X's values
        pos = {_level(n): j for j, n in enumerate(fixed_names)}
        keep = [i for i, t in enumerate(b.terms) if _level(t) in pos]
        if not keep:
            return 0.0
        Z = X[:, [pos[_level(b.terms[i])] for i in keep]]
        S_use = S[np.ix_(keep, keep)]
    return float(np.einsum("ij,jk,ik->", Z, S_use, Z)) / Z.shape[0]


def variance_parts(fit: Any, *, tolerance: float = SINGULAR_TOL, warn: bool = True,
                   definition: str = "performance") -> VarianceParts:
    """σ²_f, σ²_r and σ²_e of a linear mixed model, as ``insight::get_variance``.

    Blocks with one level per observation (an observation-level random effect) are left out of
    σ²_r, as insight does. A singular fit (a variance parameter within *tolerance* of 0) gives
    σ²_r = NaN with a caution, as performance does. *definition* chooses σ²_r: "performance"
    (default) or "nakagawa2017" (the full random-slope variance); see the module docstring.
    """
    if definition not in DEFINITIONS:
        raise ValueError(f"definition must be one of {', '.join(DEFINITIONS)}; got "
                         f"{definition!r}.")
    spec = fit.spec
    X = np.asarray(spec.X, dtype=float)
    beta = np.asarray(fit.coef, dtype=float)
    eta = X @ beta
    var_fixed = float(np.var(eta, ddof=1)) if eta.size > 1 else 0.0
    var_residual = float(fit.sigma) ** 2
    notes: list[str] = [f"σ²_r by the {definition} definition: {DEFINITIONS[definition]}"]
    singular = _is_singular(fit, tolerance)
    covs = _covariances(fit)
    var_intercept: dict[str, float] = {}
    total = 0.0
    fixed_names = list(getattr(spec, "fixed_names", []))
    fixed_vars = {_base(n) for n in fixed_names}
    missing_slopes, seen_groups, left_out = set(), set(), []
    for b, S in zip(spec.blocks, covs):
        if b.terms and b.terms[0] == "(Intercept)":
            var_intercept.setdefault(b.group, float(S[0, 0]))
        for t in b.terms:
            if t != "(Intercept)" and _base(t) not in fixed_vars:
                missing_slopes.add(t)
        if b.n_levels == spec.n:
            continue
        if definition == "performance" and b.group in seen_groups:
            left_out.append(f"({' + '.join(b.terms)} | {b.group})")
            continue
        seen_groups.add(b.group)
        total += _block_variance(b, S, X, fixed_names, definition)
    if left_out:
        notes.append(f"as performance does, the variance of the later term(s) "
                     f"{', '.join(left_out)} of a grouping factor is left out of σ²_r; "
                     f"definition='nakagawa2017' counts it")
    if missing_slopes:
        _caution(notes, f"random slope(s) {sorted(missing_slopes)} are not fixed effects too; "
                        f"this inflates the conditional R² and ICC", warn)
    if singular:
        _caution(notes, "some variance components are (near) zero, so the fit is singular and "
                        "random-effect variances cannot be computed (as performance::icc); "
                        "simplify the random-effects structure", warn)
        total = float("nan")
    return VarianceParts(var_fixed=var_fixed, var_random=total, var_residual=var_residual,
                         var_intercept=var_intercept, singular=singular, notes=notes,
                         definition=definition)


def icc(fit: Any, *, by_group: bool = False, tolerance: float = SINGULAR_TOL,
        definition: str = "performance") -> ICCResult | pd.DataFrame:
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
    definition : {"performance", "nakagawa2017"}
        Which random-effect variance (see the module docstring); the result's ``definition``
        and notes say which was used.

    Examples
    --------
    >>> import mfr_outcomes as mfr
    >>> fit = mfr.fit_course(mfr.load_study(mfr.datasets.synthetic_path()), "pain_nrs",
    ...                      therapist=False, random_slope=False)
    >>> res = icc(fit)
    >>> 0 < res.adjusted < 1 and res.unadjusted <= res.adjusted
    True
    """
    parts = variance_parts(fit, tolerance=tolerance, definition=definition)
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


def r2_nakagawa(fit: Any, *, tolerance: float = SINGULAR_TOL,
                definition: str = "performance") -> R2Result:
    """Marginal and conditional R² of Nakagawa, Johnson & Schielzeth (2017).

    As ``performance::r2_nakagawa``: when random-effect variances are not available (singular
    fit) the marginal R² is σ²_f / (σ²_f + σ²_e) and the conditional R² is NaN.
    ``definition="nakagawa2017"`` counts the full random-slope variance (see the module
    docstring); the result's ``definition`` says which was used.

    Examples
    --------
    >>> import mfr_outcomes as mfr
    >>> fit = mfr.fit_course(mfr.load_study(mfr.datasets.synthetic_path()), "pain_nrs",
    ...                      therapist=False, random_slope=False)
    >>> r2 = r2_nakagawa(fit)
    >>> 0 < r2.marginal < r2.conditional < 1
    True
    """
    parts = variance_parts(fit, tolerance=tolerance, definition=definition)
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
