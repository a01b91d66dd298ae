"""Penalised iteratively reweighted least squares (lme4's ``pwrssUpdate``) for GLMMs: the
pieces both backends share.

Two backends (``glmm_onefactor.py``, ``glmm_general.py``) compute the same things on the
spherical random effects u (b = Λθ u, u ~ N(0, I)):

* ``OneFactorPirls`` — one grouping factor: the Laplace blocks of the groups are independent,
  so PIRLS, log-determinants and adaptive Gauss–Hermite quadrature run as batched q×q algebra over
  all groups at once (``np.bincount`` sums, no matrix of size groups × groups).
* ``GeneralPirls`` — any random structure (several factors, crossed, nested): a sparse
  Z, Λ'Z'WZΛ + I factorised densely (up to :data:`DENSE_MAX` random effects) or by sparse LU.

Both give, for given θ and β, the conditional modes û (``modes``), and for given θ the joint
modes of (u, β) (``joint_modes``, glmer's ``nAGQ = 0`` stage), with −2 log-likelihood pieces on
glmer's conventions: Σ deviance residuals + ‖û‖² + log|L|² + the family's saturated constant.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from mfr_outcomes.models.families import Family

__all__ = ["GlmmData", "Modes", "irls_quantities", "laplace_derivs", "pirls", "DENSE_MAX",
           "PIRLS_TOL", "PIRLS_MAXIT", "MAX_HALVINGS", "SAFE_STEP"]

#: largest number of random effects factorised densely by the general backend.
DENSE_MAX = 3000
#: PIRLS stops after a full Newton step smaller than this in every u (the error left is then
#: of the order of its square: Newton converges quadratically).
PIRLS_TOL = 1e-8
PIRLS_MAXIT = 60
MAX_HALVINGS = 12
#: a full PIRLS step smaller than this in every u is taken without the penalised-deviance check
#: (deep in Newton's quadratic region, as from a warm start; the deviance residuals, a logarithm
#: per row, are then computed once at the end instead of at every step)
SAFE_STEP = 1e-3


@dataclass
class GlmmData:
    """What the PIRLS backends need besides the random structure."""

    y: np.ndarray
    X: np.ndarray
    weights: np.ndarray  # prior weights (binomial trials)
    offset: np.ndarray
    family: Family

    def __post_init__(self) -> None:
        self.const = self.family.saturated_constant(self.y, self.weights)
        self.sat = self.family.saturated(self.y)
        # 0/1 responses: d = −2w log P(y | μ), one logarithm instead of two
        self._binary = self.family.name == "binomial" and bool(np.all((self.y == 0.0) |
                                                                      (self.y == 1.0)))
        self._is_one = self.y == 1.0
        self._w2 = -2.0 * self.weights

    def dev_resid(self, mu: np.ndarray) -> np.ndarray:
        if self._binary:
            return self._w2 * np.log(np.where(self._is_one, mu, 1.0 - mu))
        return self.family.dev_resid(self.y, mu, self.weights, self.sat)


@dataclass
class Modes:
    """The state at the conditional modes for one (θ, β)."""

    u: np.ndarray  # (n_re,) spherical modes, lme4's order (block, level, term)
    beta: np.ndarray
    eta: np.ndarray
    mu: np.ndarray
    devres: float  # Σ deviance residuals (lme4's drsum / deviance())
    ussq: float  # ‖u‖²
    ldL2: float  # log|Λ'Z'WZΛ + I|
    converged: bool
    iterations: int
    #: the backend's factorisation of Λ'Z'WZΛ + I at the modes, reused by the gradient
    factor: object | None = field(default=None, repr=False, compare=False)

    def laplace(self, const: float) -> float:
        """−2 log-likelihood by the Laplace approximation (glmer's ``dev``)."""
        return self.devres + self.ussq + self.ldL2 + const


def irls_quantities(data: GlmmData, eta: np.ndarray, mu: np.ndarray | None = None):
    """μ, the IRLS weights W = w μ_η² / V(μ) and the working residual (y − μ) / μ_η."""
    fam = data.family
    mu = fam.linkinv(eta) if mu is None else mu
    if fam.canonical:  # μ_η = V(μ): one pass fewer
        v = np.maximum(fam.variance(mu), np.finfo(float).eps)
        return mu, data.weights * v, (data.y - mu) / v
    mu_eta = fam.mu_eta(eta)
    var = fam.variance(mu)
    W = data.weights * mu_eta ** 2 / np.maximum(var, 1e-300)
    r = (data.y - mu) / mu_eta
    return mu, W, r


def laplace_derivs(data: GlmmData, eta: np.ndarray, mu: np.ndarray):
    """What the exact Laplace gradient needs per row: d′ and d″ (first and second derivatives
    in η of the deviance residual d), the IRLS weight W and its derivative W′ in η."""
    fam = data.family
    w = data.weights
    if fam.canonical:  # μ_η = V(μ): d′ = −2w(y − μ), d″ = 2W, W′ = W V′(μ)
        W = w * np.maximum(fam.variance(mu), np.finfo(float).eps)
        return -2.0 * w * (data.y - mu), 2.0 * W, W, W * fam.variance_deriv(mu)
    me = fam.mu_eta(eta)
    mee = fam.mu_eta_eta(eta, mu, me)
    V = np.maximum(fam.variance(mu), 1e-300)
    Vp = fam.variance_deriv(mu)
    res = data.y - mu
    d1 = -2.0 * w * res * me / V
    d2 = 2.0 * w * me ** 2 / V - 2.0 * w * res * (mee * V - me ** 2 * Vp) / V ** 2
    W = w * me ** 2 / V
    W1 = w * (2.0 * me * mee / V - me ** 3 * Vp / V ** 2)
    return d1, d2, W, W1


def pirls(data: GlmmData, fixed: np.ndarray, u: np.ndarray, rand, step, pdev_of, expand=None):
    """The PIRLS loop both backends run for given θ and β (lme4's ``pwrssUpdate``).

    ``rand(u)`` is the random part of η, ``step(W, z)`` the solution of
    (Λ'Z'WZΛ + I) u = Λ'Z'W z for the working response z = η − fixed + (y − μ)/μ_η, and
    ``pdev_of(dr, u)`` the penalised deviance, a scalar or one per independent group (then each
    group halves its own step; ``expand`` maps the groups' step lengths onto u).
    Returns u, η, μ, W, the deviance residuals, converged, iterations.
    """
    fam = data.family
    eta = fixed + rand(u)
    mu, W, r = irls_quantities(data, eta)
    dr = pdev = None
    converged, its = False, 0
    for it in range(1, PIRLS_MAXIT + 1):
        its = it
        delta = step(W, eta - fixed + r) - u
        size = float(np.max(np.abs(delta), initial=0.0))
        full = True
        if size < SAFE_STEP:
            u = u + delta
            eta = fixed + rand(u)
            mu = fam.linkinv(eta)
            dr = pdev = None
        else:
            if pdev is None:
                dr = data.dev_resid(mu)
                pdev = pdev_of(dr, u)
            t = np.ones_like(pdev) if np.ndim(pdev) else 1.0
            for _ in range(MAX_HALVINGS):
                u_new = u + (t if expand is None else expand(t)) * delta
                eta_new = fixed + rand(u_new)
                mu_new = fam.linkinv(eta_new)
                dr_new = data.dev_resid(mu_new)
                pdev_new = pdev_of(dr_new, u_new)
                worse = pdev_new > pdev + 1e-10 * (1.0 + np.abs(pdev))
                if not np.any(worse):
                    break
                t = np.where(worse, t * 0.5, t)
            u, eta, mu, dr, pdev = u_new, eta_new, mu_new, dr_new, pdev_new
            full = bool(np.all(t == 1.0))
        mu, W, r = irls_quantities(data, eta, mu)
        if size < PIRLS_TOL and full:
            converged = True
            break
    if dr is None:
        dr = data.dev_resid(mu)
    return u, eta, mu, W, dr, converged, its
