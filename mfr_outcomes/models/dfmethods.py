"""Degrees-of-freedom methods for t and F tests of fixed effects, as strategies over an engine result.

A strategy (:class:`DfMethod`) is built from the :class:`~mfr_outcomes.models.spec.ModelSpec` and
the :class:`~mfr_outcomes.models.spec.EngineResult` alone: it never imports the fit classes and
never builds another engine's model. What it needs and the engine cannot supply (the deviance as a
function of (θ, σ) for Satterthwaite) is an explicit :class:`DfUnavailable`.

- ``satterthwaite``: lmerTest's method (Kuznetsova, Brockhoff & Christensen 2017, JSS 82(13)):
  with varpar = (θ, σ), A = 2 H⁻¹ where H is the Hessian of the (REML or ML) deviance in varpar at
  the optimum, and for a contrast row l the df are 2 (l'Vl)² / (g'Ag) with g the gradient of
  l'V(varpar)l. Derivatives are numDeriv's Richardson extrapolation (``genD``, ``jacobian``).
- ``kenward-roger``: pbkrtest's ``vcovAdj`` and ``.KR_adjust`` on dense n×n matrices.
- ``residual``: n − p; ``asymptotic``: ∞ (z tests).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import numpy as np

from mfr_outcomes.models.kr_blocks import KenwardRogerData, kenward_roger_blocks
from mfr_outcomes.models.spec import EngineResult, ModelSpec, block_lambda

__all__ = [
    "DF_METHODS",
    "DF_LABELS",
    "DfMethod",
    "DfUnavailable",
    "SatterthwaiteDf",
    "KenwardRogerDf",
    "ResidualDf",
    "AsymptoticDf",
    "make_df_method",
    "block_covariances",
    "richardson_hessian",
    "richardson_jacobian",
    "SatterthwaiteData",
    "satterthwaite_data",
    "satterthwaite_df",
    "KenwardRogerData",
    "kenward_roger_data",
]

DF_METHODS = ("satterthwaite", "kenward-roger", "residual", "asymptotic")
DF_LABELS = {"satterthwaite": "Satterthwaite's method",
             "kenward-roger": "Kenward-Roger's method", "residual": "residual df (n - p)",
             "asymptotic": "normal approximation (z)"}
#: Largest n for Kenward-Roger's dense n×n matrices.
KR_MAX_N = 4000


class DfUnavailable(ValueError):
    """A df method needs something the engine result cannot supply (the sentence says what)."""


def block_covariances(spec: ModelSpec, theta: np.ndarray, sigma: float) -> list[np.ndarray]:
    """σ²ΛΛ' of each random block, in block order."""
    out, k = [], 0
    for b in spec.blocks:
        lam = block_lambda(np.asarray(theta, float)[k:k + b.n_theta], b.q)
        k += b.n_theta
        out.append(float(sigma) ** 2 * lam @ lam.T)
    return out


_ZERO_TOL = np.sqrt(np.finfo(float).eps / 7e-7)


def richardson_hessian(f: Callable[[np.ndarray], float], x: np.ndarray, *, d: float = 0.1,
                       eps: float = 1e-4, r: int = 4, v: float = 2.0) -> np.ndarray:
    """Hessian of a scalar function by numDeriv's ``genD`` (central differences, Richardson)."""
    x = np.asarray(x, dtype=float)
    n = x.size
    f0 = f(x)
    h0 = np.abs(d * x) + eps * (np.abs(x) < _ZERO_TOL)
    hdiag = np.zeros(n)
    H = np.zeros((n, n))

    def extrapolate(a: np.ndarray) -> float:
        a = a.copy()
        for m in range(1, r):
            for k in range(r - m):
                a[k] = (a[k + 1] * 4.0 ** m - a[k]) / (4.0 ** m - 1)
        return float(a[0])

    for i in range(n):
        h = h0.copy()
        ha = np.zeros(r)
        for k in range(r):
            e = np.zeros(n)
            e[i] = h[i]
            ha[k] = (f(x + e) - 2 * f0 + f(x - e)) / h[i] ** 2
            h = h / v
        hdiag[i] = extrapolate(ha)
        H[i, i] = hdiag[i]
    for i in range(n):
        for j in range(i):
            h = h0.copy()
            da = np.zeros(r)
            for k in range(r):
                e = np.zeros(n)
                e[i], e[j] = h[i], h[j]
                da[k] = (f(x + e) - 2 * f0 + f(x - e) - hdiag[i] * h[i] ** 2
                         - hdiag[j] * h[j] ** 2) / (2 * h[i] * h[j])
                h = h / v
            H[i, j] = H[j, i] = extrapolate(da)
    return H


def richardson_jacobian(f: Callable[[np.ndarray], np.ndarray], x: np.ndarray, *,
                        d: float = 1e-4, eps: float = 1e-4, r: int = 4,
                        v: float = 2.0) -> list[np.ndarray]:
    """Derivatives of an array-valued function, one array per coordinate of x (numDeriv's
    ``jacobian`` with Richardson extrapolation)."""
    x = np.asarray(x, dtype=float)
    out = []
    for i in range(x.size):
        h = abs(d * x[i]) + eps * (abs(x[i]) < _ZERO_TOL)
        approx = []
        for _ in range(r):
            e = np.zeros(x.size)
            e[i] = h
            approx.append((np.asarray(f(x + e)) - np.asarray(f(x - e))) / (2 * h))
            h /= v
        for m in range(1, r):
            for k in range(r - m):
                approx[k] = (approx[k + 1] * 4.0 ** m - approx[k]) / (4.0 ** m - 1)
        out.append(approx[0])
    return out


class SatterthwaiteData:
    """What Satterthwaite df need, computed once per fit: A = 2H⁻¹ and ∂Var(β̂)/∂varpar."""

    def __init__(self, vcov: np.ndarray, A: np.ndarray, jac: list[np.ndarray],
                 messages: list[str]):
        self.vcov = vcov
        self.A = A
        self.jac = jac
        self.messages = messages

    def df_1d(self, row: np.ndarray) -> float:
        row = np.asarray(row, dtype=float)
        var = float(row @ self.vcov @ row)
        g = np.array([float(row @ J @ row) for J in self.jac])
        denom = float(g @ self.A @ g)
        if not np.isfinite(denom) or denom <= 0:
            return np.inf
        return 2.0 * var ** 2 / denom


def satterthwaite_data(devfun: Callable[[np.ndarray], float],
                       vcovfun: Callable[[np.ndarray], np.ndarray], varpar: np.ndarray,
                       vcov: np.ndarray, *, hessian: np.ndarray | None = None,
                       jacobian: Callable[[np.ndarray], np.ndarray] | None = None
                       ) -> SatterthwaiteData:
    """Hessian of the deviance in varpar and the Jacobian of Var(β̂), as lmerTest's ``as_lmerModLT``
    (*hessian*: that Hessian when already computed — by :func:`richardson_hessian` or an engine's
    closed form; *jacobian*: an engine's closed-form Jacobian of Var(β̂), (k, p, p), which then
    replaces the finite differences of *vcovfun*)."""
    messages: list[str] = []
    H = richardson_hessian(devfun, varpar) if hessian is None else np.asarray(hessian, float)
    H = (H + H.T) / 2
    # lmerTest (as_lmerModLT, tol = 1e-8): warn on negative or near-zero eigenvalues and invert H
    # on its positive eigen-space only.
    tol = 1e-8
    ev, vec = np.linalg.eigh(H)
    neg, zero, pos = ev < -tol, np.abs(ev) <= tol, ev > tol
    if neg.any():
        messages.append(f"the model may not have converged: the Hessian of the deviance in "
                        f"(θ, σ) has {int(neg.sum())} negative eigenvalue(s) "
                        f"({', '.join(f'{v:.1e}' for v in ev[neg])})")
    if zero.any():
        messages.append(f"the model may not have converged: the Hessian of the deviance in "
                        f"(θ, σ) has {int(zero.sum())} eigenvalue(s) close to zero")
    if pos.all():  # the usual case: the same products without copying by a mask
        A = 2.0 * (vec / ev) @ vec.T
    else:
        A = 2.0 * (vec[:, pos] / ev[pos]) @ vec[:, pos].T
    jac = (richardson_jacobian(vcovfun, varpar) if jacobian is None
           else list(np.asarray(jacobian(varpar), dtype=float)))
    return SatterthwaiteData(np.asarray(vcov), A, jac, messages)


def satterthwaite_df(sd: SatterthwaiteData, L: np.ndarray) -> np.ndarray:
    """Satterthwaite df of each row of L."""
    L = np.atleast_2d(np.asarray(L, dtype=float))
    if not len(sd.jac):
        return np.array([sd.df_1d(row) for row in L])
    # every row at once (df_1d's formula, one einsum a quantity instead of a loop of rows)
    V = np.asarray(sd.vcov, dtype=float)
    var = np.einsum("ip,pq,iq->i", L, V, L)
    g = np.einsum("ip,kpq,iq->ik", L, np.asarray(sd.jac, dtype=float), L)
    denom = np.einsum("ik,kl,il->i", g, sd.A, g)
    ok = np.isfinite(denom) & (denom > 0)
    return np.where(ok, 2.0 * var ** 2 / np.where(ok, denom, 1.0), np.inf)


class DfMethod(Protocol):
    """A degrees-of-freedom strategy: the Var(β̂) its tests use and the df of any contrast."""

    name: str
    label: str
    cautions: list[str]  # sentences found while computing (e.g. a Hessian that is not positive)

    def vcov(self) -> np.ndarray:
        """Var(β̂) used by the t and F tests."""

    def df(self, L: np.ndarray) -> np.ndarray:
        """df of the t test of each row of L."""

    def f_denominator(self, L: np.ndarray, PtL: np.ndarray, qrank: int) -> tuple[float, float]:
        """(denominator df, F scaling) of the joint F test of L (PtL: its eigen-rotated rows)."""


class _Fixed:
    """Residual and asymptotic df: one number for every contrast."""

    name = ""
    value = np.inf

    def __init__(self, spec: ModelSpec, result: EngineResult):
        self._vcov = np.asarray(result.vcov_beta, dtype=float)
        self.cautions: list[str] = []
        self.label = DF_LABELS[self.name]

    def vcov(self) -> np.ndarray:
        return self._vcov

    def df(self, L: np.ndarray) -> np.ndarray:
        return np.full(np.atleast_2d(L).shape[0], float(self.value))

    def f_denominator(self, L: np.ndarray, PtL: np.ndarray, qrank: int) -> tuple[float, float]:
        return float(self.value), 1.0


class ResidualDf(_Fixed):
    """n − p for every contrast."""

    name = "residual"

    def __init__(self, spec: ModelSpec, result: EngineResult):
        super().__init__(spec, result)
        self.value = float(spec.n - spec.p)


class AsymptoticDf(_Fixed):
    """∞ for every contrast (z tests)."""

    name = "asymptotic"


class SatterthwaiteDf:
    """lmerTest's Satterthwaite df from the engine's deviance and Var(β̂) closures.

    Parameters
    ----------
    spec, result
        The model and its engine result; ``result.devfun_varpar`` and ``result.vcov_varpar`` are
        required (else :class:`DfUnavailable`).
    hessian : ndarray, optional
        The Hessian of the deviance in (θ, σ) at the optimum when already computed (the fit
        layer's convergence check computes the same one).
    """

    name = "satterthwaite"
    label = DF_LABELS["satterthwaite"]

    def __init__(self, spec: ModelSpec, result: EngineResult, hessian: np.ndarray | None = None):
        if result.devfun_varpar is None or result.vcov_varpar is None:
            why = (result.cannot("deviance_function") or result.cannot("vcov_function")
                   or "it returned no deviance function")
            raise DfUnavailable(f"Satterthwaite df need the deviance and Var(β̂) as functions of "
                                f"the variance parameters, which the engine {result.engine!r} "
                                f"cannot supply for this model ({why})")
        self._result = result
        self._hessian = hessian
        self._data: SatterthwaiteData | None = None
        self.cautions: list[str] = []

    def data(self) -> SatterthwaiteData:
        if self._data is None:
            r = self._result
            varpar = np.append(r.theta, r.sigma)
            # the engine's closed forms, when it has them, replace finite differences
            hessian = (self._hessian if r.hessian_varpar is None
                       else np.asarray(r.hessian_varpar(varpar), dtype=float))
            self._data = satterthwaite_data(r.devfun_varpar, r.vcov_varpar, varpar, r.vcov_beta,
                                            hessian=hessian, jacobian=r.jacobian_vcov_varpar)
            self.cautions.extend(f"Satterthwaite df: {m}." for m in self._data.messages)
        return self._data

    def vcov(self) -> np.ndarray:
        return np.asarray(self._result.vcov_beta, dtype=float)

    def df(self, L: np.ndarray) -> np.ndarray:
        return satterthwaite_df(self.data(), L)

    def f_denominator(self, L: np.ndarray, PtL: np.ndarray, qrank: int) -> tuple[float, float]:
        nu = self.df(PtL)
        finite = nu[np.isfinite(nu)]
        if qrank == 1:
            return float(nu[0]), 1.0
        E = float(np.sum(np.where(nu > 2, nu / np.maximum(nu - 2, 1e-12), 0.0)))
        den = 2 * E / (E - qrank) if E > qrank else 0.0
        if den <= 0 or not finite.size:
            den = float(np.min(nu))
        return den, 1.0


class KenwardRogerDf:
    """pbkrtest's Kenward-Roger df and adjusted Var(β̂) (REML fits, n ≤ 4000)."""

    name = "kenward-roger"
    label = DF_LABELS["kenward-roger"]

    def __init__(self, spec: ModelSpec, result: EngineResult):
        if not result.reml:
            raise DfUnavailable("Kenward-Roger df need a REML fit, as pbkrtest does")
        self._blocks = _kr_block_source(result)
        if self._blocks is None and spec.n > KR_MAX_N:
            raise DfUnavailable(f"Kenward-Roger needs dense {spec.n}×{spec.n} matrices; use "
                                f"'satterthwaite' for more than {KR_MAX_N} observations")
        self._spec, self._result = spec, result
        self._data: KenwardRogerData | None = None
        self.cautions: list[str] = []

    def data(self) -> KenwardRogerData:
        if self._data is None:
            r = self._result
            if self._blocks is not None:
                stats, lay = self._blocks
                self._data = kenward_roger_blocks(stats, lay, r.theta, float(r.sigma))
                return self._data
            self._data = kenward_roger_data(self._spec,
                                            block_covariances(self._spec, r.theta, r.sigma),
                                            float(r.sigma), np.asarray(r.vcov_beta))
        return self._data

    def vcov(self) -> np.ndarray:
        return self.data().PhiA

    def df(self, L: np.ndarray) -> np.ndarray:
        kr = self.data()
        return np.array([kr.df(row) for row in np.atleast_2d(L)])

    def f_denominator(self, L: np.ndarray, PtL: np.ndarray, qrank: int) -> tuple[float, float]:
        return self.data().adjust(L)


def _kr_block_source(result: EngineResult) -> tuple | None:
    """(stats, layout) when Kenward-Roger can be computed from per-group blocks (the fast engine
    on one grouping factor: any size), else None (dense n×n matrices)."""
    from mfr_outcomes.models import block_inference

    internals = result.internals
    stats, lay = getattr(internals, "stats", None), getattr(internals, "layout", None)
    if stats is None or lay is None or not block_inference.supports(lay):
        return None
    return stats, lay


def make_df_method(name: str, spec: ModelSpec, result: EngineResult, *,
                   hessian: np.ndarray | None = None) -> DfMethod:
    """The strategy called *name* (one of ``DF_METHODS``) for this engine result.

    Raises
    ------
    DfUnavailable
        The engine result lacks what the method needs.
    ValueError
        Unknown name.
    """
    if name == "satterthwaite":
        return SatterthwaiteDf(spec, result, hessian)
    if name == "kenward-roger":
        return KenwardRogerDf(spec, result)
    if name == "residual":
        return ResidualDf(spec, result)
    if name == "asymptotic":
        return AsymptoticDf(spec, result)
    raise ValueError(f"df_method must be one of {', '.join(DF_METHODS)}; got {name!r}.")


def kenward_roger_data(spec: ModelSpec, covariances: list[np.ndarray], sigma: float,
                       vcov_beta: np.ndarray) -> KenwardRogerData:
    """Φ_A = Φ + 2Φ U Φ (pbkrtest's ``vcovAdj16_internal``) on dense n×n matrices.

    *covariances*: σ²ΛΛ' per random block (:func:`block_covariances`); *vcov_beta*: lme4's Φ.
    """
    n = spec.n
    G: list[np.ndarray] = []
    gamma: list[float] = []
    for b, cov in zip(spec.blocks, covariances):
        same = (b.codes[:, None] == b.codes[None, :]).astype(float)
        for j in range(b.q):
            for i in range(j, b.q):
                zz = np.outer(b.Z[:, i], b.Z[:, j])
                Gi = (zz + zz.T) if i != j else zz
                G.append(Gi * same)
                gamma.append(cov[i, j])
    G.append(np.eye(n))
    gamma.append(float(sigma) ** 2)
    Sigma = sum(g * Gi for g, Gi in zip(gamma, G))
    SigmaInv = np.linalg.inv(Sigma)
    X = spec.X
    Phi = np.asarray(vcov_beta, dtype=float)
    TT = SigmaInv @ X
    H = [Gi @ SigmaInv for Gi in G]
    HX = [Hi @ X for Hi in H]
    k = len(G)
    P = [-(Oi.T @ TT) for Oi in HX]
    P = [(Pi + Pi.T) / 2 for Pi in P]
    Q = {}
    for r in range(k):
        for s in range(r, k):
            Q[r, s] = HX[r].T @ SigmaInv @ HX[s]
    IE2 = np.zeros((k, k))
    for i in range(k):
        PhiPi = Phi @ P[i]
        for j in range(i, k):
            kt = float(np.sum(H[i].T * H[j]))
            IE2[i, j] = IE2[j, i] = (kt - 2 * np.sum(Phi * Q[i, j])
                                     + np.sum(PhiPi * (P[j] @ Phi)))
    ev = np.linalg.eigvalsh(IE2)
    W = 2 * (np.linalg.inv(IE2) if np.min(np.abs(ev)) > 1e-10 else np.linalg.pinv(IE2))
    U = np.zeros_like(Phi)
    for i in range(k - 1):
        for j in range(i + 1, k):
            U += W[i, j] * (Q[i, j] - P[i] @ Phi @ P[j])
    U = U + U.T
    for i in range(k):
        U += W[i, i] * (Q[i, i] - P[i] @ Phi @ P[i])
    PhiA = Phi + 2 * Phi @ U @ Phi
    return KenwardRogerData(PhiA, Phi, P, W)
