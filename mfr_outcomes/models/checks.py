"""lme4's safety checks, with lme4's wording, applied by the fit layer to every engine.

Before fitting (:func:`check_model`, lme4's ``checkNlevels`` and ``checkZdims``):

- ``check.nlev.gtr.1`` (error): a grouping factor with fewer than 2 levels;
- ``check.nobs.vs.nlev`` (error): no more observations than levels of a grouping factor;
- ``check.nobs.vs.nRE`` (error): no more observations than random effects of a term;
- ``check.nlev.gtreq.5`` (a caution here; lme4 can warn): fewer than 5 levels;
- a constant response (nothing to estimate; lme4 returns a degenerate fit).

After fitting (:func:`verify_optimum`): lme4's relative-gradient check ``checkConv`` (the gradient
of the deviance scaled by its Hessian, tolerance 0.002) and a Newton "polish" step, so that the
verdict agrees with the optimum: an optimiser that stopped short is sent on (the caller refits from
the polished point) and one that reported failure at a verified optimum is not flagged.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from scipy.linalg.lapack import dpotrf as _potrf
from scipy.linalg.lapack import dpotrs as _potrs
from scipy.linalg.lapack import dtrtrs as _trtrs

from mfr_outcomes.models.dfmethods import richardson_hessian
from mfr_outcomes.models.spec import EngineResult, ModelSpec, RandomBlock, theta_lower_bounds

__all__ = [
    "ModelCheckError",
    "LME4_MESSAGES",
    "term_label",
    "check_model",
    "OptimumCheck",
    "verify_optimum",
    "gaussian_response_caution",
    "GRAD_TOL",
    "POLISH_RTOL",
]

#: lme4's ``check.conv.grad`` tolerance on the scaled gradient.
GRAD_TOL = 2e-3
#: A Newton step that lowers the criterion by more than this (relative to max(1, |criterion|))
#: means the optimiser stopped short of the optimum.
POLISH_RTOL = 1e-7
#: A Newton step that lowers the criterion by more than this is worth a restart from it.
RESTART_RTOL = 1e-11

#: lme4's sentences (lme4 1.1-31, ``checkNlevels``, ``checkZdims``, ``checkConv``).
LME4_MESSAGES = {
    "nlev.gtr.1": "grouping factors must have > 1 sampled level",
    # {op}/{what}: lmer's wording, or glmer's (allow.n = TRUE) as lme4's checkNlevels and
    # checkZdims write it
    "nobs.vs.nlev": ("number of levels of each grouping factor must be {op} number of observations "
                     "(problems: {groups})"),
    "nobs.vs.nRE": ("number of observations (={n}) {op} number of random effects (={nre}) for term "
                    "({term}); the random-effects parameters{what} are probably unidentifiable"),
    "nlev.gtreq.5": "grouping factors with < 5 sampled levels may give unreliable estimates",
    "conv.grad": "Model failed to converge with max|grad| = {g:.6g} (tol = {tol:g}, component {k})",
    "singular": "boundary (singular) fit: see help('isSingular')",
}


class ModelCheckError(ValueError):
    """A model lme4 would refuse; the message is lme4's sentence and what to do instead."""

    def __init__(self, check: str, message: str):
        super().__init__(message)
        self.check = check


def _base_name(term: str) -> str:
    """``f[T.b]`` / ``f[b]`` -> ``f`` (the variable behind a factor column)."""
    return term.split("[", 1)[0] if term.endswith("]") else term


def term_label(block: RandomBlock) -> str:
    """The random term as lme4 names it in messages: ``post | patient_id``, ``1 | g``,
    ``0 + f | g``."""
    slopes: list[str] = []
    for t in block.terms:
        if t != "(Intercept)" and _base_name(t) not in slopes:
            slopes.append(_base_name(t))
    if not slopes:
        lhs = "1"
    elif "(Intercept)" in block.terms:
        lhs = " + ".join(slopes)
    else:
        lhs = "0 + " + " + ".join(slopes)
    return f"{lhs} | {block.group}"


def check_model(spec: ModelSpec, *, allow_n: bool = False) -> list[str]:
    """Refuse what lme4 refuses; return the cautions (sentences) of the checks that only warn.

    *allow_n* is glmer's setting (``allow.n = TRUE`` in lme4's ``checkNlevels`` and
    ``checkZdims``): as many levels, or random effects, as observations is allowed there (an
    observation-level random effect models overdispersion), more is refused.

    Raises
    ------
    ModelCheckError
        A constant response, a grouping factor with one level, as many levels as observations,
        or as many random effects in a term as observations (lme4's wording, then advice).
    """
    n = spec.n
    y = np.asarray(spec.y, dtype=float)
    if n and np.ptp(y) == 0:
        raise ModelCheckError(
            "constant", f"the response {spec.response!r} is constant (all {n} values are "
                        f"{y[0]:g}), so there is no variation for a mixed model to explain; "
                        f"check the measure and the rows selected")
    one = [b.group for b in spec.blocks if b.n_levels < 2]
    if one:
        raise ModelCheckError(
            "nlev.gtr.1", f"{LME4_MESSAGES['nlev.gtr.1']}: {', '.join(sorted(set(one)))} has "
                          f"only one level in the data, so its variance cannot be estimated; "
                          f"drop its random term")
    crowded = sorted({b.group for b in spec.blocks
                      if (n < b.n_levels if allow_n else n <= b.n_levels)})
    if crowded:
        why = ("there are more levels than observations" if allow_n else
               "each level has a single observation, so its variance cannot be told from the "
               "residual variance")
        raise ModelCheckError("nobs.vs.nlev", LME4_MESSAGES["nobs.vs.nlev"].format(
            op="<=" if allow_n else "<", groups=", ".join(crowded)) + f"; {why}")
    # lme4 checks each term (a '||' term is several): our blocks of one (group, correlated) term
    seen: dict[tuple[str, str], int] = {}
    for b in spec.blocks:
        key = (b.group, term_label(b))
        seen[key] = seen.get(key, 0) + b.q * b.n_levels
    for (group, label), nre in seen.items():
        if n < nre or (n == nre and not allow_n):
            message = LME4_MESSAGES["nobs.vs.nRE"].format(
                n=n, nre=nre, term=label, op="<" if allow_n else "<=",
                what="" if allow_n else " and the residual variance (or scale parameter)")
            raise ModelCheckError(
                "nobs.vs.nRE", message + f". Each level of {group} has too few observations for this random term; "
                  f"use a random intercept (1 | {group}) instead")
    cautions = []
    few = sorted({b.group for b in spec.blocks if b.n_levels < 5})
    if few:
        cautions.append(f"{LME4_MESSAGES['nlev.gtreq.5']} ({', '.join(few)})")
    return cautions


@dataclass
class OptimumCheck:
    """The verdict of :func:`verify_optimum`.

    Attributes
    ----------
    converged : bool
        True when the gradient check passes and no Newton step lowers the criterion.
    max_grad : float
        lme4's max(min(|scaled gradient|, |gradient|)) over the free parameters.
    decrease : float
        How much the Newton polish step lowered the criterion (0 when it did not).
    restart_from : ndarray or None
        θ of the polished point when it is lower (the caller refits from it).
    hessian : ndarray or None
        Hessian of the deviance in (θ, σ) (Richardson), reused by Satterthwaite's df.
    messages : list of str
        Sentences (lme4's wording where it has one).
    """

    converged: bool
    max_grad: float = 0.0
    decrease: float = 0.0
    restart_from: np.ndarray | None = None
    hessian: np.ndarray | None = None
    messages: list[str] = field(default_factory=list)


def _gradient(f: Callable[[np.ndarray], float], x: np.ndarray, f0: float,
              lower: np.ndarray) -> np.ndarray:
    g = np.empty_like(x)
    for k in range(x.size):
        h = 1e-5 * max(1.0, abs(x[k]))
        up, dn = x.copy(), x.copy()
        up[k] += h
        if lower[k] == 0.0 and x[k] - h < 0.0:  # one-sided at a bound
            g[k] = (f(up) - f0) / h
        else:
            dn[k] -= h
            g[k] = (f(up) - f(dn)) / (2 * h)
    return g


def verify_optimum(spec: ModelSpec, result: EngineResult) -> OptimumCheck:
    """Check that the engine's (θ̂, σ̂) is an optimum of its own deviance, as lme4's ``checkConv``.

    Works on ``result.devfun_varpar`` (the deviance in (θ, σ)); an engine without it gets a
    verdict of its own optimiser and a sentence saying the check could not be made.
    """
    f = result.devfun_varpar
    if f is None:
        why = result.cannot("deviance_function") or "it returned none"
        return OptimumCheck(converged=bool(result.converged),
                            messages=[f"convergence could not be verified: the engine "
                                      f"{result.engine!r} supplies no deviance function for this "
                                      f"model ({why})"])

    def safe(v: np.ndarray) -> float:
        try:
            val = float(f(v))
        except (np.linalg.LinAlgError, ValueError, FloatingPointError, ZeroDivisionError):
            return np.inf
        return val if np.isfinite(val) else np.inf

    x = np.append(np.asarray(result.theta, float), float(result.sigma))
    lower = np.append(theta_lower_bounds(spec), 0.0)
    g = H = None
    closed = False
    if result.gradient_varpar is not None and result.hessian_varpar is not None \
            and result.sigma > 0:
        try:  # the engine's closed forms (tested equal to the differences below)
            g = np.asarray(result.gradient_varpar(x), dtype=float)
            H = np.asarray(result.hessian_varpar(x), dtype=float)
            closed = bool(np.all(np.isfinite(g)) and np.all(np.isfinite(H)))
        except (np.linalg.LinAlgError, ValueError, FloatingPointError, ZeroDivisionError):
            pass
    # the deviance at the estimates: with finite closed forms there, it is the engine's own
    # criterion at its optimum (evaluated again only if a Newton step must be tried)
    f0 = float(result.objective) if closed and math.isfinite(result.objective) else safe(x)
    if not np.isfinite(f0) or not result.sigma > 0:
        return OptimumCheck(converged=False, messages=[
            "the deviance cannot be evaluated at the estimates (a residual variance of 0 or a "
            "numerical failure); the model cannot be fitted to these data"])
    if not closed:
        g = _gradient(safe, x, f0, lower)
        H = richardson_hessian(safe, x)
    H = (H + H.T) / 2
    # coordinates held at a bound by the gradient are not free (KKT), as lme4 leaves them out
    free = ~((lower == 0.0) & (x <= 1e-8) & (g >= -1e-8))
    finite_h = bool(np.all(np.isfinite(H)))
    out = OptimumCheck(converged=True, hessian=H if finite_h else None)
    if not free.any():
        return out
    if not np.all(np.isfinite(g[free])):
        out.converged = False
        out.messages.append("the gradient of the deviance cannot be evaluated")
        return out
    every = bool(free.all())  # the usual case: no copies
    gf = g if every else g[free]
    Hf = (H if every else H[np.ix_(free, free)]) if finite_h else np.eye(int(free.sum()))
    try:
        if not finite_h:
            raise np.linalg.LinAlgError("the Hessian cannot be evaluated")
        # LAPACK directly (a few k×k matrices: NumPy's linalg wrappers cost more than the work)
        R, info = _potrf(Hf, lower=0, clean=1)  # H = R'R, as R's chol()
        if info != 0:
            raise np.linalg.LinAlgError("the Hessian is not positive definite")
        scgrad = _trtrs(R, gf, lower=0)[0]  # R⁻¹ g, as R's solve(chol(H), g)
        step = -_potrs(R, gf, lower=0)[0]
    except np.linalg.LinAlgError:
        scgrad = gf  # lme4: "unable to evaluate scaled gradient"; judge the raw gradient
        step = -gf / max(np.max(np.abs(np.diag(Hf))), 1.0)
    mingrad = np.minimum(np.abs(scgrad), np.abs(gf))
    out.max_grad = float(np.max(mingrad))
    scale = max(1.0, abs(f0))
    if closed and scgrad is not gf and _newton_gain_negligible(x, free, step, scgrad, scale):
        return out  # no Newton step can lower the criterion by RESTART_RTOL: nothing to try
    if closed:
        f0 = safe(x)  # the polish compares the deviance function's own values
        if not np.isfinite(f0):
            out.converged = False
            out.messages.append("the deviance cannot be evaluated at the estimates")
            return out
    # the polish: a (projected) Newton step, halved while it does not descend
    best = np.inf
    trial = x.copy()
    for shrink in (1.0, 0.5, 0.25):
        t = x.copy()
        t[free] = x[free] + shrink * step
        t = np.where(lower == 0.0, np.maximum(t, 0.0), t)
        ft = safe(t)
        if ft < best:
            best, trial = ft, t
    out.decrease = float(max(f0 - best, 0.0))
    if out.decrease > RESTART_RTOL * scale:
        out.restart_from = trial[:-1]
    if out.decrease > POLISH_RTOL * scale:
        out.converged = False
        out.messages.append(f"the optimiser stopped short of the optimum: a Newton step lowers "
                            f"the criterion by {out.decrease:.3g}")
    if out.max_grad > GRAD_TOL:
        k = int(np.argmax(mingrad)) + 1
        grad_msg = LME4_MESSAGES["conv.grad"].format(g=out.max_grad, tol=GRAD_TOL, k=k)
        if out.decrease > RESTART_RTOL * scale:
            out.converged = False
            out.messages.append(grad_msg)
        else:  # no step lowers the criterion: a verified optimum, not a false alarm
            out.messages.append(f"lme4 would say: {grad_msg}; but no Newton step lowers the "
                                f"criterion, so the estimates are at a verified optimum")
    return out


def _newton_gain_negligible(x: np.ndarray, free: np.ndarray, step: np.ndarray,
                            scgrad: np.ndarray, scale: float) -> bool:
    """Whether the Newton step from *x* cannot lower the criterion enough to matter, judged
    without evaluating it: with the exact Hessian H = RᵀR positive definite, the quadratic model
    lowers the criterion by ½|R⁻ᵀg|² along the Newton step, and for a step this short (at most
    1e-4 of the scale of x) the model's error (third order in the step) is far smaller still.
    Used with closed-form derivatives only; a finite-difference Hessian is checked by evaluation.
    """
    gain = 0.5 * float(scgrad @ scgrad)
    short = float(np.max(np.abs(step), initial=0.0)) <= 1e-4 * max(
        1.0, float(np.max(np.abs(x[free]))))
    return short and gain < 1e-2 * RESTART_RTOL * scale


def gaussian_response_caution(y: np.ndarray, response: str) -> str | None:
    """A sentence when a Gaussian (linear) fit is given a 0/1 or count-like response.

    0/1 always; counts when the values are whole numbers ≥ 0 with a long right tail beyond a
    0–10 rating scale (max > 10, skewness > 1), so that pain ratings are not flagged.
    """
    y = np.asarray(y, float)
    if not math.isfinite(float(y.sum())):  # a finite sum: every value finite (no copy)
        y = y[np.isfinite(y)]
    if y.size == 0:
        return None
    # the range first (two passes, no sort): a 0–10 rating stops there
    lo, hi = float(y.min()), float(y.max())
    if lo >= 0.0 and hi <= 1.0 and np.all((y == 0.0) | (y == 1.0)):
        return (f"The response {response!r} is 0/1: a linear (Gaussian) mixed model of it is a "
                f"linear-probability model. For odds ratios fit family='binomial'.")
    if (lo >= 0.0 and hi > 10 and np.all(np.abs(y - np.round(y)) < 1e-12)
            and y.std() > 0):
        skew = float(np.mean((y - y.mean()) ** 3) / y.std() ** 3)
        if skew > 1.0:
            return (f"The response {response!r} looks like a count (whole numbers ≥ 0, skewed "
                    f"to the right, skewness {skew:.1f}): consider family='poisson'.")
    return None
