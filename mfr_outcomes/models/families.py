"""Response families and links of generalised mixed models, on R's conventions.

Each :class:`Family` evaluates what glmer's ``glmResp`` needs on numpy arrays: the inverse link
and its derivative (clamped exactly as R's ``binomial()``/``poisson()`` clamp them), the variance
function, deviance residuals, and ``aic`` terms (−2 × the full log-likelihood of each row, R's
``family$aic``), with prior weights (binomial trials).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import special

__all__ = ["Family", "get_family", "FAMILIES", "LINKS", "latent_variance"]

_EPS = np.finfo(float).eps
_THRESH = 30.0  # R's logit thresholds (family.c)
_PROBIT_THRESH = -special.ndtri(_EPS)

#: family -> (default link, allowed links)
LINKS: dict[str, tuple[str, tuple[str, ...]]] = {
    "binomial": ("logit", ("logit", "probit", "cloglog")),
    "poisson": ("log", ("log",)),
    "gaussian": ("identity", ("identity",)),
}
FAMILIES = tuple(LINKS)


def _xlogy_ratio(y: np.ndarray, mu: np.ndarray) -> np.ndarray:
    """y log(y / mu) with 0 log 0 = 0 (R's ``y_log_y``)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        out = special.xlogy(y, y) - special.xlogy(y, mu)
    return np.where(y > 0, out, 0.0)


@dataclass(frozen=True)
class Family:
    """A response family with its link.

    Attributes
    ----------
    name : {"binomial", "poisson"}
    link : {"logit", "probit", "cloglog", "log"}
    """

    name: str
    link: str

    @property
    def canonical(self) -> bool:
        return (self.name, self.link) in (("binomial", "logit"), ("poisson", "log"))

    # ------------------------------------------------------------------ link
    def linkfun(self, mu: np.ndarray) -> np.ndarray:
        mu = np.asarray(mu, dtype=float)
        if self.link == "logit":
            return special.logit(mu)
        if self.link == "probit":
            return special.ndtri(mu)
        if self.link == "cloglog":
            return np.log(-np.log1p(-mu))
        return np.log(mu)

    def linkinv(self, eta: np.ndarray) -> np.ndarray:
        """μ = g⁻¹(η), clamped as R clamps it."""
        if self.link == "logit":  # R clamps to [eps, 1 - eps] beyond |η| = 30
            return np.clip(special.expit(eta), _EPS, 1.0 - _EPS)
        if self.link == "probit":
            return special.ndtr(np.clip(eta, -_PROBIT_THRESH, _PROBIT_THRESH))
        if self.link == "cloglog":
            return np.clip(-np.expm1(-np.exp(np.minimum(eta, 700.0))), _EPS, 1.0 - _EPS)
        return np.maximum(np.exp(np.minimum(eta, 700.0)), _EPS)

    def mu_eta(self, eta: np.ndarray) -> np.ndarray:
        """dμ/dη."""
        if self.link == "logit":
            e = np.exp(-np.abs(eta))
            out = e / (1.0 + e) ** 2
            return np.where(np.abs(eta) > _THRESH, _EPS, out)
        if self.link == "probit":
            return np.maximum(np.exp(-0.5 * eta * eta) / np.sqrt(2 * np.pi), _EPS)
        if self.link == "cloglog":
            e = np.minimum(eta, 700.0)
            return np.maximum(np.exp(e - np.exp(e)), _EPS)
        return np.maximum(np.exp(np.minimum(eta, 700.0)), _EPS)

    def mu_eta_eta(self, eta: np.ndarray, mu: np.ndarray, mu_eta: np.ndarray) -> np.ndarray:
        """d²μ/dη² (for the analytic gradient of the Laplace approximation)."""
        if self.link == "logit":
            return mu_eta * (1.0 - 2.0 * mu)
        if self.link == "probit":
            return -eta * mu_eta
        if self.link == "cloglog":
            return mu_eta * (1.0 - np.exp(np.minimum(eta, 700.0)))
        return mu_eta

    def variance_deriv(self, mu: np.ndarray) -> np.ndarray:
        """dV/dμ."""
        return 1.0 - 2.0 * mu if self.name == "binomial" else np.ones_like(mu)

    # ------------------------------------------------------------------ variance, deviance
    def variance(self, mu: np.ndarray) -> np.ndarray:
        if self.name == "binomial":
            return mu * (1.0 - mu)
        return mu

    def saturated(self, y: np.ndarray) -> np.ndarray:
        """The μ-free part of the deviance residuals: y log y (+ (1−y) log(1−y))."""
        if self.name == "binomial":
            return _xlogy_ratio(y, np.ones_like(y)) + _xlogy_ratio(1.0 - y, np.ones_like(y))
        return _xlogy_ratio(y, np.ones_like(y))

    def dev_resid(self, y: np.ndarray, mu: np.ndarray, wt: np.ndarray,
                  sat: np.ndarray | None = None) -> np.ndarray:
        """Squared deviance residuals (R's ``family$dev.resids``); *sat* is
        :meth:`saturated` (y), precomputed by callers that evaluate them many times."""
        sat = self.saturated(y) if sat is None else sat
        if self.name == "binomial":
            return 2.0 * wt * (sat - y * np.log(mu) - (1.0 - y) * np.log1p(-mu))
        return 2.0 * wt * (sat - y * np.log(mu) - (y - mu))

    def aic_terms(self, y: np.ndarray, mu: np.ndarray, wt: np.ndarray) -> np.ndarray:
        """−2 log p(yᵢ | μᵢ) per row (R's ``family$aic`` before summing), continuous in y."""
        if self.name == "binomial":
            m = wt
            k = m * y
            logchoose = special.gammaln(m + 1) - special.gammaln(k + 1) - special.gammaln(m - k + 1)
            with np.errstate(divide="ignore", invalid="ignore"):
                ll = logchoose + special.xlogy(k, mu) + special.xlogy(m - k, 1.0 - mu)
            return np.where(m > 0, -2.0 * ll, 0.0)
        ll = special.xlogy(y, mu) - mu - special.gammaln(y + 1.0)
        return -2.0 * wt * ll

    def saturated_constant(self, y: np.ndarray, wt: np.ndarray) -> float:
        """Σ aic_terms − Σ dev_resid, which does not depend on μ."""
        mu0 = np.full_like(y, 0.5 if self.name == "binomial" else 1.0)
        return float(np.sum(self.aic_terms(y, mu0, wt) - self.dev_resid(y, mu0, wt)))

    def start_mu(self, y: np.ndarray, wt: np.ndarray) -> np.ndarray:
        """R's ``family$initialize`` starting values of μ."""
        if self.name == "binomial":
            return (wt * y + 0.5) / (wt + 1.0)
        return y + 0.1

    @property
    def label(self) -> str:
        return f"{self.name}({self.link})"


def get_family(name: str, link: str | None = None) -> Family:
    """The :class:`Family` *name* with *link* (its canonical link when None).

    Raises
    ------
    ValueError
        An unknown family or a link the family does not take.
    """
    if name not in LINKS:
        raise ValueError(f"family must be one of {', '.join(FAMILIES)}; got {name!r}.")
    default, allowed = LINKS[name]
    link = default if link is None else link
    if link not in allowed:
        raise ValueError(f"The {name} family takes link {' or '.join(allowed)}; got {link!r}.")
    return Family(name, link)


def latent_variance(family: Family, null_intercept: float | None = None) -> float:
    """Distribution-specific (level-1) variance on the latent scale, as performance computes it.

    Binomial: π²/3 (logit), 1 (probit), π²/6 (cloglog). Poisson with a log link: the lognormal
    approximation log(1 + 1/λ), λ = exp(β₀) of the null model (intercept and the same random
    part), as ``insight::get_variance`` (0.19) computes it for ``r2_nakagawa`` and ``icc``.
    """
    if family.name == "binomial":
        return {"logit": np.pi ** 2 / 3.0, "probit": 1.0, "cloglog": np.pi ** 2 / 6.0}[family.link]
    if null_intercept is None:
        raise ValueError("The Poisson latent variance needs the null model's intercept.")
    return float(np.log1p(np.exp(-null_intercept)))
