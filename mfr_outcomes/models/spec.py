"""The contract between formula parsing, fitting engines and MixedFit.

``ModelSpec`` is what a formula becomes on a data frame (y, X, and one ``RandomBlock`` per random
term). An engine turns a ModelSpec into an ``EngineResult``. Every engine uses lme4's
parametrisation: the random effects of a block are b = Λθ u with u ~ N(0, σ² I), θ the elements of
the lower-triangular Λ of each block, column-major (for q = 2: [Λ11, Λ21, Λ22]), blocks in the
order of ``ModelSpec.blocks``. Diagonal elements of Λ have lower bound 0; off-diagonals are free.
"""
from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, Protocol

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from mfr_outcomes.models.design import Design

__all__ = [
    "RandomBlock",
    "ModelSpec",
    "EngineResult",
    "Unavailable",
    "Capability",
    "Engine",
    "ENGINES",
    "register_engine",
    "theta_lower_bounds",
    "theta_start",
    "block_lambda",
    "probe_inside_bounds",
    "probe_points",
]


@dataclass
class RandomBlock:
    """One random-effects term ``(terms | group)``.

    ``(a + b || g)`` is split, as lme4 does, into one uncorrelated block per term.
    """

    group: str  # grouping factor as written ("patient_id"; "therapist_id:patient_id" when nested)
    terms: list[str]  # names of Z's columns: "(Intercept)", "post", ...
    Z: np.ndarray  # (n, q) float64: the raw model matrix of the terms, row-aligned with y
    codes: np.ndarray  # (n,) int64 in 0 .. n_levels-1: the level of each row
    levels: pd.Index  # level labels, in code order
    correlated: bool = True

    @property
    def q(self) -> int:
        return self.Z.shape[1]

    @property
    def n_levels(self) -> int:
        # read a score of times a fit; len() of an Arrow-backed Index is three calls deep, so
        # the count is kept beside the Index it was taken from (a new Index is counted anew)
        lv = self.levels
        kept = self.__dict__.get("_n_levels_of")
        if kept is None or kept[0] is not lv:
            kept = self.__dict__["_n_levels_of"] = (lv, len(lv))
        return kept[1]

    @property
    def n_theta(self) -> int:
        return self.q * (self.q + 1) // 2


@dataclass
class ModelSpec:
    """A formula evaluated on data: everything an engine needs, and what MixedFit needs to explain it."""

    formula: str
    response: str
    y: np.ndarray  # (n,)
    X: np.ndarray  # (n, p)
    fixed_names: list[str]
    blocks: list[RandomBlock]
    data: pd.DataFrame  # the rows used, original index kept, all columns of the input
    excluded: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=["row", "reason"]))
    design: Design | None = None  # the typed Design: rebuilds X and Z for new data; None by hand
    fixed_formula: str = ""
    notes: list[str] = field(default_factory=list)  # cautions found while building (dropped levels…)
    offset: np.ndarray | None = None  # (n,) the sum of offset(...) terms, or None
    weights: np.ndarray | None = None  # (n,) prior weights: s + f of cbind(s, f), or None

    @property
    def n(self) -> int:
        return int(self.y.shape[0])

    @property
    def p(self) -> int:
        return int(self.X.shape[1])

    @property
    def n_theta(self) -> int:
        return sum(b.n_theta for b in self.blocks)


def theta_lower_bounds(spec: ModelSpec) -> np.ndarray:
    """0 for diagonal elements of each Λ block, -inf for off-diagonal ones (lme4's lower)."""
    return _lower_bounds(tuple(b.q for b in spec.blocks)).copy()


@functools.lru_cache(maxsize=64)
def _lower_bounds(qs: tuple[int, ...]) -> np.ndarray:
    # by the blocks' dimensions (a fit asks three or four times; each caller gets a copy)
    out = []
    for q in qs:
        for j in range(q):  # column-major lower triangle
            for i in range(j, q):
                out.append(0.0 if i == j else -np.inf)
    return np.asarray(out, dtype=float)


def theta_start(spec: ModelSpec) -> np.ndarray:
    """lme4's start: identity Λ in every block."""
    lb = theta_lower_bounds(spec)
    return np.where(lb == 0.0, 1.0, 0.0)


def block_lambda(theta_block: np.ndarray, q: int) -> np.ndarray:
    """The q×q lower-triangular Λ of one block from its θ elements (column-major)."""
    lam = np.zeros((q, q))
    k = 0
    for j in range(q):
        for i in range(j, q):
            lam[i, j] = theta_block[k]
            k += 1
    return lam


#: What an engine result may be unable to supply (see ``EngineResult.unavailable``).
Capability = Literal["conditional_modes", "deviance_function", "vcov_function"]


@dataclass(frozen=True)
class Unavailable:
    """Something an engine result cannot supply, and why (a sentence)."""

    what: Capability
    reason: str


@dataclass
class EngineResult:
    """What an engine returns. Everything is on lme4's conventions.

    An engine that cannot supply conditional modes or the deviance/Var(β̂) closures says so in
    ``unavailable`` (one :class:`Unavailable` per missing capability); the fit layer then refuses
    or cautions instead of degrading silently.
    """

    engine: str
    reml: bool
    theta: np.ndarray
    beta: np.ndarray
    sigma: float
    vcov_beta: np.ndarray  # (p, p)
    objective: float  # REML criterion when reml, else deviance (-2 log-likelihood)
    converged: bool
    messages: list[str] = field(default_factory=list)
    optimizer: str = ""
    n_evaluations: int = 0
    blups: list[np.ndarray] = field(default_factory=list)  # per block: (n_levels, q) modes of b
    blup_condvar: list[np.ndarray] | None = None  # per block: (n_levels, q, q) conditional covariances
    # Deviance (REML or ML, as fitted) and Var(β̂) as functions of varpar = (θ..., σ), the inputs of
    # lmerTest's Satterthwaite df, of profile intervals and of the convergence check. None: the
    # engine cannot supply them (say why in ``unavailable``).
    devfun_varpar: Callable[[np.ndarray], float] | None = None
    vcov_varpar: Callable[[np.ndarray], np.ndarray] | None = None
    unavailable: list[Unavailable] = field(default_factory=list)
    n_iterations: int = 0  # optimiser iterations (0: not reported)
    optimizer_message: str = ""  # the optimiser's own last message
    pwrss: float | None = None  # penalised residual sum of squares at the optimum, when known
    n_classes: int | None = None  # fast engine: patterns of equal sufficient statistics pooled
    objective_source: str = ""  # how ``objective`` was obtained, when not the engine's own deviance
    internals: object | None = None  # the engine's own state (opaque to the fit layer)
    # Closed forms at varpar = (θ..., σ): the Hessian of devfun_varpar (k, k) and the Jacobian of
    # Var(β̂), (k, p, p). None: Satterthwaite uses finite differences of the two functions above.
    hessian_varpar: Callable[[np.ndarray], np.ndarray] | None = None
    jacobian_vcov_varpar: Callable[[np.ndarray], np.ndarray] | None = None
    # The gradient of devfun_varpar in closed form (None: the convergence check differentiates).
    gradient_varpar: Callable[[np.ndarray], np.ndarray] | None = None

    def cannot(self, what: Capability) -> str | None:
        """The reason this result cannot supply *what*, or None when it can."""
        for u in self.unavailable:
            if u.what == what:
                return u.reason
        return None


class Engine(Protocol):
    """A fitting engine. ``priority``: higher is preferred by ``engine="auto"`` among the engines
    whose ``supports`` accepts the model (engines without one rank by ``AUTO_ORDER``)."""

    name: str
    priority: int

    def supports(self, spec: ModelSpec) -> tuple[bool, str]:
        """(True, "") when this engine fits *spec* exactly; else (False, the reason in a sentence)."""

    def fit(self, spec: ModelSpec, reml: bool = True, *, start: np.ndarray | None = None,
            options: dict | None = None) -> EngineResult: ...


class _Registry(dict):
    """name -> engine instance; the engines shipped with the package are imported on first use.

    ``fit_mixed`` asks the engines in order of priority and stops at the first that fits the
    model, so a fit by the "fast" engine never imports the others (nor SciPy's optimisers, which
    they import): start-up pays only for what it uses. ``name in ENGINES`` and the priorities do
    not import; listing or reading an engine does.
    """

    def __init__(self, lazy: dict[str, tuple[str, int]]):
        super().__init__()
        self._lazy = dict(lazy)  # name -> (module, priority)

    def _load(self, name: str) -> None:
        if name in self._lazy and not dict.__contains__(self, name):
            import importlib

            importlib.import_module(self._lazy[name][0])  # registers itself
        self._lazy.pop(name, None)

    def _load_all(self) -> None:
        for name in list(self._lazy):
            self._load(name)

    def priority(self, name: str) -> float | None:
        """The engine's priority, without importing an engine that is not loaded yet."""
        if dict.__contains__(self, name):
            return getattr(dict.__getitem__(self, name), "priority", None)
        return float(self._lazy[name][1]) if name in self._lazy else None

    def names(self) -> list[str]:
        """Every engine name, loaded or not (nothing is imported)."""
        return list(dict.keys(self)) + [n for n in self._lazy if not dict.__contains__(self, n)]

    def __getitem__(self, name: str) -> Engine:
        self._load(name)
        return dict.__getitem__(self, name)

    def get(self, name: str, default=None):
        return self[name] if name in self else default

    def __contains__(self, name: object) -> bool:
        return dict.__contains__(self, name) or name in self._lazy

    def __iter__(self):
        self._load_all()
        return dict.__iter__(self)

    def __len__(self) -> int:
        return len(self.names())

    def keys(self):
        self._load_all()
        return dict.keys(self)

    def values(self):
        self._load_all()
        return dict.values(self)

    def items(self):
        self._load_all()
        return dict.items(self)

    def __setitem__(self, name: str, engine: Engine) -> None:
        self._lazy.pop(name, None)
        dict.__setitem__(self, name, engine)

    def __delitem__(self, name: str) -> None:
        self._lazy.pop(name, None)
        if dict.__contains__(self, name):
            dict.__delitem__(self, name)


#: name -> engine instance. engine="auto" tries them by priority and takes the first that
#: supports the model; the shipped engines other than "fast" load on first use.
ENGINES: _Registry = _Registry({"fast": ("mfr_outcomes.models.fast", 30),
                                "sparse": ("mfr_outcomes.models.sparse", 25),
                                "sparse_ldl": ("mfr_outcomes.models.sparse_ldl", 22),
                                "pls": ("mfr_outcomes.models.pls", 20),
                                "statsmodels": ("mfr_outcomes.models.statsmodels_engine", 10)})
AUTO_ORDER: list[str] = ["fast", "sparse", "sparse_ldl", "pls", "statsmodels"]


def register_engine(engine: Engine) -> Engine:
    ENGINES[engine.name] = engine
    return engine


def probe_points(theta: np.ndarray, lower: np.ndarray) -> list[np.ndarray]:
    """The trial points of :func:`probe_inside_bounds` at *theta*, in the order it tries them:
    for each diagonal θ at 0, that θ moved to 1e-3, 1e-2, 0.1 and 0.5 of θ's scale."""
    at_bound = np.flatnonzero((lower == 0.0) & (theta <= 0.0))
    scale = max(float(np.max(np.abs(theta))), 1.0) if theta.size else 1.0
    out = []
    for k in at_bound:
        for delta in (1e-3, 1e-2, 0.1, 0.5):
            trial = theta.copy()
            trial[k] = delta * scale
            out.append(trial)
    return out


def probe_inside_bounds(f: Callable[[np.ndarray], float], theta: np.ndarray, f_theta: float,
                        lower: np.ndarray, values: Sequence[float] | None = None
                        ) -> tuple[np.ndarray | None, float]:
    """Look for a lower deviance just inside the bound of each diagonal θ that sits at 0.

    A diagonal θ at 0 is a stationary point in its own direction (the deviance depends on it
    through its square) even when the deviance falls away from it, so a gradient optimiser can
    stop there. Returns (the best trial point, its deviance), or (None, f_theta) when no trial is
    lower; the caller restarts its optimiser from the point returned. *values*, when given, are
    the deviances at :func:`probe_points` (evaluated together by the caller); else *f* gives
    them one by one.
    """
    best, best_f = None, f_theta
    points = probe_points(theta, lower)
    for i, trial in enumerate(points):
        ft = f(trial) if values is None else values[i]
        if ft < best_f - 1e-10 * max(1.0, abs(best_f)):
            best, best_f = trial, ft
    return best, best_f
