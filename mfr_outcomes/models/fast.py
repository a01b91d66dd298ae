"""The "fast" engine: lme4's profiled deviance computed from per-group sufficient statistics.

One grouping factor (any number of correlated or uncorrelated terms on it), optionally inside a
second, nesting factor (patients within therapists). The data enter once, as per-group sums of
cross-products; after that each deviance evaluation costs O(groups × small blocks), whatever the
number of rows. The algebra is that of Bates, Mächler, Bolker & Walker (2015, JSS 67(1), sec. 3):
only θ is optimised, β and σ² are profiled out.

Layout: small per-group matrices are stored with the group axis last, ``(k, m, G)``, so that every
element of the batch of k×k Cholesky factors is one contiguous vector; the factorisations and
triangular solves are unrolled over k and vectorised over groups.
"""
from __future__ import annotations

import functools
import math
import operator
from contextlib import nullcontext
from dataclasses import dataclass, field

import numpy as np
from scipy import sparse
from scipy.linalg.lapack import dpotrf as _potrf
from scipy.linalg.lapack import dpotrs as _potrs
from scipy.linalg.lapack import dsyevd as _syevd

from mfr_outcomes.models import batched, block_inference, pooled2
from mfr_outcomes.models.moment_start import moment_theta
from mfr_outcomes.models.spec import (
    EngineResult,
    ModelSpec,
    probe_inside_bounds,
    probe_points,
    register_engine,
    theta_lower_bounds,
    theta_start,
)
from mfr_outcomes.models.stacks import bsolve, chol, fsolve
from mfr_outcomes.models.threads import blas_threads

__all__ = [
    "Layout",
    "Stats",
    "FastInternals",
    "FastEngine",
    "layout_of",
    "sufficient_statistics",
    "combine",
    "profiled_deviance",
    "deviance_varpar",
    "vcov_beta_varpar",
]

_CHUNK_ROWS = 250_000  # rows per map step: bounds the memory of the row-wise products


# ----------------------------------------------------------------------------------------------
# Structure of the random effects
# ----------------------------------------------------------------------------------------------
@dataclass
class Layout:
    """Where each θ goes, for one factor (``inner``) and an optional nesting factor (``outer``).

    The random-effect columns of all blocks on the inner factor come first (``q_inner`` of them),
    then those on the outer factor (``q_outer``); ``theta_pos[k] = (level, row, col)`` puts θ_k at
    Λ_level[row, col] with level 0 = inner, 1 = outer.
    """

    inner: str
    outer: str | None
    q_inner: int
    q_outer: int
    block_level: list[int]  # per spec block: 0 inner, 1 outer
    block_offset: list[int]  # per spec block: first column inside its level
    block_q: list[int]  # per spec block: its number of columns
    theta_pos: list[tuple[int, int, int]]
    inner_codes: np.ndarray
    outer_codes: np.ndarray | None  # per row
    n_inner: int
    n_outer: int

    @property
    def q_total(self) -> int:
        return self.q_inner + self.q_outer

    @functools.cached_property
    def theta_rows(self) -> np.ndarray:
        return np.array([r for (_, r, _) in self.theta_pos], dtype=np.intp)

    @functools.cached_property
    def theta_cols(self) -> np.ndarray:
        return np.array([c for (_, _, c) in self.theta_pos], dtype=np.intp)

    @functools.cached_property
    def _inner_flat(self) -> np.ndarray | None:
        """Flat positions of θ in Λ_inner when every θ is on the inner level (else None)."""
        if any(lev != 0 for (lev, _, _) in self.theta_pos):
            return None
        return np.array([r * self.q_inner + c for (_, r, c) in self.theta_pos], dtype=np.intp)

    def lambdas(self, theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        flat = self._inner_flat
        if flat is not None:  # one factor: one scatter instead of a loop over θ
            lg = np.zeros(self.q_inner * self.q_inner)
            lg[flat] = theta
            return lg.reshape(self.q_inner, self.q_inner), np.zeros((0, 0))
        lg = np.zeros((self.q_inner, self.q_inner))
        lh = np.zeros((self.q_outer, self.q_outer))
        for t, (lev, r, c) in zip(theta, self.theta_pos):
            (lg if lev == 0 else lh)[r, c] = t
        return lg, lh


def _nested_map(inner: np.ndarray, outer: np.ndarray, n_inner: int) -> np.ndarray | None:
    """The outer level of each inner level, or None when some inner level has several."""
    m = np.full(n_inner, -1, dtype=np.int64)
    m[inner] = outer
    return m if np.array_equal(m[inner], outer) else None


def layout_of(spec: ModelSpec) -> tuple[Layout | None, str]:
    """The Layout of *spec*, or (None, why this engine cannot fit it)."""
    if not spec.blocks:
        return None, "the model has no random-effects term"
    groups: list[str] = []
    for b in spec.blocks:
        if b.group not in groups:
            groups.append(b.group)
    if len(groups) > 2:
        return None, (f"{len(groups)} grouping factors ({', '.join(groups)}); the fast engine "
                      "handles one factor, or one factor nested in another")
    first = {g: next(b for b in spec.blocks if b.group == g) for g in groups}
    for b in spec.blocks:
        f = first[b.group]
        if b.n_levels != f.n_levels or (  # the same array needs no comparison
                b.codes is not f.codes and not np.array_equal(b.codes, f.codes)):
            return None, f"blocks on '{b.group}' disagree about its levels"
    inner, outer = groups[0], None
    nmap = None
    if len(groups) == 2:
        a, b = first[groups[0]], first[groups[1]]
        nmap = _nested_map(a.codes, b.codes, a.n_levels)
        if nmap is not None:
            inner, outer = groups[0], groups[1]
        else:
            nmap = _nested_map(b.codes, a.codes, b.n_levels)
            if nmap is None:
                return None, (f"'{groups[0]}' and '{groups[1]}' are crossed (a level of each "
                              "occurs with several levels of the other); the fast engine needs "
                              "one nested in the other")
            inner, outer = groups[1], groups[0]
    level_of = {inner: 0, outer: 1}
    offsets = [0, 0]
    block_level, block_offset, theta_pos = [], [], []
    for b in spec.blocks:
        lev = level_of[b.group]
        block_level.append(lev)
        block_offset.append(offsets[lev])
        for j in range(b.q):
            for i in range(j, b.q):
                theta_pos.append((lev, offsets[lev] + i, offsets[lev] + j))
        offsets[lev] += b.q
    n_re = sum(b.q * b.n_levels for b in spec.blocks)
    if spec.n <= n_re:
        return None, (f"number of observations ({spec.n}) is not larger than the number of "
                      f"random effects ({n_re}): the residual variance is not identifiable")
    if spec.n <= spec.p:
        return None, f"{spec.n} observations for {spec.p} fixed effects"
    lay = Layout(
        inner=inner, outer=outer, q_inner=offsets[0], q_outer=offsets[1],
        block_level=block_level, block_offset=block_offset, block_q=[b.q for b in spec.blocks],
        theta_pos=theta_pos,
        inner_codes=np.asarray(first[inner].codes, dtype=np.int64),
        outer_codes=None if outer is None else np.asarray(first[outer].codes, dtype=np.int64),
        n_inner=first[inner].n_levels, n_outer=0 if outer is None else first[outer].n_levels,
    )
    return lay, ""


def _z_all(spec: ModelSpec, lay: Layout) -> np.ndarray:
    """All random-effect columns, inner level first then outer, in Layout order."""
    cols: list[np.ndarray] = [None] * len(spec.blocks)  # type: ignore[list-item]
    order = sorted(range(len(spec.blocks)),
                   key=lambda k: (lay.block_level[k], lay.block_offset[k]))
    for k in order:
        cols[k] = np.asarray(spec.blocks[k].Z, dtype=float)
    return np.column_stack([cols[k] for k in order])


# ----------------------------------------------------------------------------------------------
# Sufficient statistics: map over chunks of rows, reduce by summing
# ----------------------------------------------------------------------------------------------
@dataclass
class Stats:
    """Per-inner-group sums of cross-products, and the global ones.

    ``ZtZ`` (qt, qt, G), ``ZtX`` (qt, p, G), ``Zty`` (qt, G) over all random columns (inner then
    outer); ``outer_of`` the outer level of each inner level (-1 when it has no rows, or no outer
    level). Every field is a sum over rows, so statistics of disjoint chunks add up.
    """

    n: int
    XtX: np.ndarray
    Xty: np.ndarray
    yty: float
    ZtZ: np.ndarray
    ZtX: np.ndarray
    Zty: np.ndarray
    outer_of: np.ndarray
    n_outer: int = 0
    extra: dict = field(default_factory=dict)

    @property
    def p(self) -> int:
        return int(self.XtX.shape[0])

    @property
    def n_groups(self) -> int:
        return int(self.Zty.shape[1])


def _group_sums(values_t: np.ndarray, codes: np.ndarray, n_groups: int) -> np.ndarray:
    """Row sums of *values_t* (m, n) by the group code of each column -> (m, n_groups).

    Columns already sorted by group (each group one run, in code order: the usual frame, one
    patient's visits together) are summed run by run with one ``np.add.reduceat`` (half the
    time of the bincounts at 200 groups, the same at 10,000). Otherwise one ``bincount`` a
    row: one pass, no sorting (faster than a sparse indicator product, whose construction
    sorts and whose product copies *values_t* transposed, or than sorting for reduceat).
    """
    n = codes.shape[0]
    if 0 < n_groups <= n and values_t.shape[1] == n:
        head = np.empty(n, dtype=bool)  # the first row of each run
        head[0] = True
        np.not_equal(codes[1:], codes[:-1], out=head[1:])
        first = np.flatnonzero(head)
        if first.size == n_groups and np.array_equal(codes[first], np.arange(n_groups)):
            return np.add.reduceat(values_t, first, axis=1)
    out = np.empty((values_t.shape[0], n_groups))
    for r in range(values_t.shape[0]):
        out[r] = np.bincount(codes, weights=values_t[r], minlength=n_groups)
    return out


def sufficient_statistics(spec_or_arrays, rows=None) -> Stats:
    """Sufficient statistics of the rows *rows* (a slice, index or boolean array; all when None).

    Parameters
    ----------
    spec_or_arrays : ModelSpec or dict
        A ModelSpec, or a dict with ``y`` (n,), ``X`` (n, p), ``Z`` (n, qt: inner columns then
        outer ones), ``codes`` (n,) inner level codes, ``n_groups``, and optionally
        ``outer_codes`` (n,) and ``n_outer``.
    rows : slice, array or None
        The chunk of rows; the statistics of disjoint chunks ``combine`` into those of their union.

    Returns
    -------
    Stats
    """
    if isinstance(spec_or_arrays, ModelSpec):
        lay, why = layout_of(spec_or_arrays)
        if lay is None:
            raise ValueError(why)
        arrays = {"y": spec_or_arrays.y, "X": spec_or_arrays.X, "Z": _z_all(spec_or_arrays, lay),
                  "codes": lay.inner_codes, "n_groups": lay.n_inner,
                  "outer_codes": lay.outer_codes, "n_outer": lay.n_outer}
    else:
        arrays = spec_or_arrays
    sel = slice(None) if rows is None else rows
    y = np.asarray(arrays["y"], dtype=float)
    X = np.asarray(arrays["X"], dtype=float)
    Z = np.asarray(arrays["Z"], dtype=float)
    codes = np.asarray(arrays["codes"], dtype=np.int64)
    if rows is not None:
        y, X, Z, codes = y[sel], X[sel], Z[sel], codes[sel]
    G = int(arrays["n_groups"])
    oc = arrays.get("outer_codes")
    qt, p = Z.shape[1], X.shape[1]
    tri = [(a, b) for a in range(qt) for b in range(a, qt)]
    # row products laid out one contiguous row per product (column-wise writes are ~10x slower);
    # Z's columns as contiguous rows first (Z is usually row-major: a third off the products)
    XT, ZT = X.T, np.ascontiguousarray(Z.T)
    wide = np.empty((qt * p + len(tri) + qt, y.shape[0]))
    for a in range(qt):
        np.multiply(ZT[a], XT, out=wide[a * p:(a + 1) * p])
    for k, (a, b) in enumerate(tri):
        np.multiply(ZT[a], ZT[b], out=wide[qt * p + k])
    np.multiply(ZT, y, out=wide[qt * p + len(tri):])
    sums = _group_sums(wide, codes, G)
    ZtX = sums[:qt * p].reshape(qt, p, G)
    ZtZ = np.empty((qt, qt, G))
    for k, (a, b) in enumerate(tri):
        ZtZ[a, b] = ZtZ[b, a] = sums[qt * p + k]
    Zty = sums[qt * p + len(tri):]
    outer_of = np.full(G, -1, dtype=np.int64)
    n_outer = 0
    if oc is not None:
        oc = np.asarray(oc, dtype=np.int64)[sel]
        outer_of[codes] = oc
        n_outer = int(arrays["n_outer"])
    return Stats(n=int(y.shape[0]), XtX=X.T @ X, Xty=X.T @ y, yty=float(y @ y),
                 ZtZ=ZtZ, ZtX=ZtX, Zty=Zty, outer_of=outer_of, n_outer=n_outer)


def combine(parts: list[Stats]) -> Stats:
    """The statistics of the union of disjoint chunks of rows (the reduce step)."""
    if not parts:
        raise ValueError("nothing to combine")
    first = parts[0]
    outer_of = first.outer_of.copy()
    for s in parts[1:]:
        both = (outer_of >= 0) & (s.outer_of >= 0)
        if np.any(outer_of[both] != s.outer_of[both]):
            raise ValueError("an inner group has rows in two outer groups: not nested")
        outer_of = np.maximum(outer_of, s.outer_of)
    return Stats(
        n=sum(s.n for s in parts), XtX=sum(s.XtX for s in parts), Xty=sum(s.Xty for s in parts),
        yty=float(sum(s.yty for s in parts)), ZtZ=sum(s.ZtZ for s in parts),
        ZtX=sum(s.ZtX for s in parts), Zty=sum(s.Zty for s in parts), outer_of=outer_of,
        n_outer=first.n_outer)


def _stats_of_spec(spec: ModelSpec, lay: Layout) -> Stats:
    arrays = {"y": spec.y, "X": spec.X, "Z": _z_all(spec, lay), "codes": lay.inner_codes,
              "n_groups": lay.n_inner, "outer_codes": lay.outer_codes, "n_outer": lay.n_outer}
    n = spec.n
    if n <= _CHUNK_ROWS:
        return sufficient_statistics(arrays)
    parts = [sufficient_statistics(arrays, slice(s, min(s + _CHUNK_ROWS, n)))
             for s in range(0, n, _CHUNK_ROWS)]
    return combine(parts)


# ----------------------------------------------------------------------------------------------
# Batched small-matrix algebra, group axis last
# ----------------------------------------------------------------------------------------------
_chol, _fsolve, _bsolve = chol, fsolve, bsolve  # the engine's historical names


def _bmm(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """Batched product: A (k, l, G) times B (l, G) or (l, m, G)."""
    if B.ndim == 2:
        return sum(A[:, j] * B[j] for j in range(A.shape[1]))
    return sum(A[:, j, None, :] * B[j][None] for j in range(A.shape[1]))


def _lmul(M: np.ndarray, B: np.ndarray) -> np.ndarray:
    """M B for a fixed small matrix M (k, l) and a stack B (l, ..., G); zeros of M skipped."""
    out = np.zeros((M.shape[0],) + B.shape[1:])
    for i in range(M.shape[0]):
        for j in range(M.shape[1]):
            if M[i, j] != 0.0:
                out[i] += M[i, j] * B[j]
    return out


def _rmul(B: np.ndarray, M: np.ndarray) -> np.ndarray:
    """B M for a stack B (k, l, G) and a fixed small matrix M (l, m)."""
    out = np.zeros((B.shape[0], M.shape[1], B.shape[2]))
    for j in range(M.shape[0]):
        for c in range(M.shape[1]):
            if M[j, c] != 0.0:
                out[:, c] += M[j, c] * B[:, j]
    return out


def _lt_c_l(lam: np.ndarray, C: np.ndarray, lam2: np.ndarray) -> np.ndarray:
    """Λᵀ C Λ₂ for a stack C (k, l, G) and fixed Λ (k, k'), Λ₂ (l, l')."""
    return _rmul(_lmul(lam.T, C), lam2)


def _gram(R: np.ndarray) -> np.ndarray:
    """Σ_a Σ_g R[a, :, g] R[a, :, g]ᵀ for a stack R (k, p, G)."""
    return sum(R[a] @ R[a].T for a in range(R.shape[0]))


def _cross(R: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Σ_a Σ_g R[a, :, g] c[a, g] for R (k, p, G), c (k, G)."""
    return sum(R[a] @ c[a] for a in range(R.shape[0]))


# ----------------------------------------------------------------------------------------------
# The profiled deviance
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FastInternals:
    """The fast engine's own state behind a result: sufficient statistics and their layout."""

    stats: Stats
    layout: Layout


@dataclass
class _Eval:
    theta: np.ndarray
    logdet: float  # log |L_θ|²
    RX: np.ndarray  # p×p upper: RXᵀRX = Xᵀ V⁻¹ X (relative V)
    beta: np.ndarray
    pwrss: float  # penalised weighted residual sum of squares r²(θ)
    parts: dict


def _evaluate(stats: Stats, lay: Layout, theta: np.ndarray) -> _Eval:
    qg, qh = lay.q_inner, lay.q_outer
    lg, lh = lay.lambdas(theta)
    C = stats.ZtZ
    Cgg = C[:qg, :qg]
    Xg, yg = stats.ZtX[:qg], stats.Zty[:qg]
    A = _lt_c_l(lg, Cgg, lg)
    for a in range(qg):
        A[a, a] += 1.0
    L = _chol(A)
    cu = _fsolve(L, _lmul(lg.T, yg))
    RZX = _fsolve(L, _lmul(lg.T, Xg))
    XtVX = stats.XtX - _gram(RZX)
    XtVy = stats.Xty - _cross(RZX, cu)
    cu2 = float(np.sum(cu * cu))
    logdet = 2.0 * float(np.sum(np.log(np.diagonal(L, axis1=0, axis2=1))))
    parts: dict = {"L": L, "cu": cu, "RZX": RZX, "lg": lg, "lh": lh}
    if qh:
        H = stats.n_outer
        og = np.maximum(stats.outer_of, 0)
        Cgh = C[:qg, qg:]
        W = _fsolve(L, _lt_c_l(lg, Cgh, lh))  # (qg, qh, G): L_i⁻¹ Λgᵀ Zgᵢᵀ Zhᵢ Λh
        # Schur complement on each outer group: Σ (Λhᵀ Chh Λh − WᵀW) + I
        per = _lt_c_l(lh, C[qg:, qg:], lh) - np.einsum("akg,alg->klg", W, W)
        S = np.zeros((qh, qh, H))
        _scatter_add(S, per, og)
        for a in range(qh):
            S[a, a] += 1.0
        Lh = _chol(S)
        ch_in = _lmul(lh.T, stats.Zty[qg:]) - np.einsum("akg,ag->kg", W, cu)
        chx_in = (_lmul(lh.T, stats.ZtX[qg:])
                  - np.einsum("akg,apg->kpg", W, RZX))
        ch_sum = np.zeros((qh, H))
        _scatter_add(ch_sum, ch_in, og)
        chx_sum = np.zeros((qh, stats.p, H))
        _scatter_add(chx_sum, chx_in, og)
        cuh = _fsolve(Lh, ch_sum)
        RZXh = _fsolve(Lh, chx_sum)
        XtVX -= _gram(RZXh)
        XtVy -= _cross(RZXh, cuh)
        cu2 += float(np.sum(cuh * cuh))
        logdet += 2.0 * float(np.sum(np.log(np.diagonal(Lh, axis1=0, axis2=1))))
        parts.update(W=W, Lh=Lh, cuh=cuh, RZXh=RZXh, og=og)
    return _finish(theta, logdet, XtVX, XtVy, stats.yty - cu2, parts)


def _finish(theta, logdet, XtVX, XtVy, rest: float, parts: dict) -> _Eval:
    """β̂(θ), R_X and r²(θ) from XᵀV⁻¹X, XᵀV⁻¹y and yᵀy − |c_u|².

    LAPACK directly: the checking wrappers of scipy.linalg and numpy.linalg cost more than the
    10×10 algebra itself.
    """
    RX, info = _potrf(XtVX, lower=0, clean=1)
    if info != 0:  # rank-deficient after profiling: an infinite deviance
        return _Eval(theta, logdet, np.full_like(XtVX, np.nan), np.full(XtVX.shape[0], np.nan),
                     np.inf, parts)
    beta = _potrs(RX, XtVy, lower=0)[0]
    pwrss = max(rest - float(XtVy @ beta), 1e-300)  # |c_β|² = XᵀV⁻¹y · β̂
    return _Eval(theta, logdet, RX, beta, pwrss, parts)


def _xtvx_inv(ev: _Eval) -> np.ndarray:
    """(XᵀV⁻¹X)⁻¹ = R_X⁻¹ R_X⁻ᵀ."""
    return _potrs(ev.RX, np.eye(ev.RX.shape[0]), lower=0)[0]


def _scatter_add(out: np.ndarray, vals: np.ndarray, idx: np.ndarray) -> None:
    """out[..., idx[g]] += vals[..., g] (out's last axis is the outer groups)."""
    flat_out = out.reshape(-1, out.shape[-1])
    flat_vals = vals.reshape(-1, vals.shape[-1])
    n_out = out.shape[-1]
    for r in range(flat_out.shape[0]):
        flat_out[r] += np.bincount(idx, weights=flat_vals[r], minlength=n_out)


def _objective(ev: _Eval, n: int, p: int, reml: bool) -> float:
    if not np.isfinite(ev.pwrss):
        return np.inf
    if reml:
        nmp = n - p
        ldrx = 2.0 * float(np.log(np.abs(ev.RX.diagonal())).sum())
        return ev.logdet + ldrx + nmp * (1.0 + math.log(2.0 * math.pi * ev.pwrss / nmp))
    return ev.logdet + n * (1.0 + math.log(2.0 * math.pi * ev.pwrss / n))


def _modes(ev: _Eval, lay: Layout) -> tuple[np.ndarray, np.ndarray | None]:
    """Spherical modes û (inner (qg, G); outer (qh, H))."""
    pt = ev.parts
    uh = None
    rhs = pt["cu"] - np.matmul(ev.beta, pt["RZX"])
    if lay.q_outer:
        uh = _bsolve(pt["Lh"], pt["cuh"] - np.matmul(ev.beta, pt["RZXh"]))
        rhs = rhs - np.einsum("akg,kg->ag", pt["W"], uh[:, pt["og"]])
    return _bsolve(pt["L"], rhs), uh


def _gradient_single(stats: Stats, lay: Layout, ev: _Eval, reml: bool) -> np.ndarray:
    """Analytic gradient of the profiled deviance in θ (one grouping factor).

    With V = I + ZΛΛᵀZᵀ (relative to σ²) and θ_k the element (a, b) of Λ:
    ∂ log|V| = 2 Σ_i (A_i⁻¹ ΛᵀZᵢᵀZᵢ)[b, a];  ∂ r² = -2 Σ_i (Zᵢᵀ r_i)[a] û_i[b] (envelope theorem,
    r the conditional residual); ∂ log|XᵀV⁻¹X| = -2 (Λᵀ Σ_i B_i (XᵀV⁻¹X)⁻¹ B_iᵀ)[b, a] with
    B_i = ZᵢᵀV_i⁻¹X_i.
    """
    pt = ev.parts
    L, lam = pt["L"], pt["lg"]
    C, ZX, Zy = stats.ZtZ, stats.ZtX, stats.Zty
    n, p = stats.n, stats.p
    lamC = _lmul(lam.T, C)  # ΛᵀC (q, q, G)
    dlogdet = 2.0 * np.sum(_bsolve(L, _fsolve(L, lamC)), axis=2)  # Σ A⁻¹ΛᵀC
    u, _ = _modes(ev, lay)
    b = _lmul(lam, u)
    ztr = Zy - np.matmul(ev.beta, ZX) - _bmm(C, b)
    nn = (n - p) if reml else n
    dr2 = -2.0 * np.einsum("ag,bg->ab", ztr, u)  # [a, b]
    grad_m = dlogdet.T + (nn / ev.pwrss) * dr2  # indexed [a, b]
    if reml:
        tmp = _lmul(lam, _bsolve(L, pt["RZX"]))  # Λ A⁻¹ ΛᵀZᵀX
        B = ZX - _bmm(C, tmp)
        Pinv = _xtvx_inv(ev)
        BP = np.tensordot(B, Pinv, axes=(1, 0))  # (q, G, p)
        M = np.einsum("agp,bpg->ab", BP, B)
        grad_m = grad_m - 2.0 * (lam.T @ M).T
    return np.array([grad_m[r, c] for (_, r, c) in lay.theta_pos])


# ----------------------------------------------------------------------------------------------
# Compressed evaluation: groups that share ZᵢᵀZᵢ share every θ-dependent matrix
# ----------------------------------------------------------------------------------------------
@dataclass
class _Classes:
    """Groups pooled by their ZᵢᵀZᵢ (one grouping factor only).

    With Xa = [X, y], everything the profiled deviance and its gradient need from a group is
    ZᵢᵀZᵢ and the outer products (ZᵢᵀXa_i)[a] (ZᵢᵀXa_i)[b]ᵀ; the latter enter linearly, so they
    can be summed within a class of equal ZᵢᵀZᵢ. An evaluation then costs O(classes), not
    O(groups): a clinic where every patient has the same visits is one class.
    """

    Ck: np.ndarray  # (K, q, q): ZᵢᵀZᵢ of each class
    count: np.ndarray  # (K,)
    omega_flat: np.ndarray  # (K q q, (p+1)²): Σ_class (ZᵢᵀXa_i)[a] ⊗ (ZᵢᵀXa_i)[b], (k, a, b) rows
    omega_x_flat: np.ndarray  # (K q q, p²): its X block
    b0: np.ndarray  # (p,) least-squares β: y enters as y − X b0 (see _nested_classes)
    Xty0: np.ndarray  # Xᵀ(y − X b0)
    yty0: float  # |y − X b0|²
    p2: object = field(default=None, repr=False)  # pooled2's layout (False: not applicable)


def _centred(stats: Stats) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """b0 (least squares), Zᵀ(y − X b0), Xᵀ(y − X b0) and |y − X b0|²: with y − X b0 in place of y,
    |c_u|² and XᵀV⁻¹y are of the size of the residuals, not of yᵀy, so the rounding noise of the
    deviance and its gradient in θ is that much smaller. b0 by Cholesky where XᵀX is well
    conditioned (LAPACK directly: a fifth of lstsq's cost), else lstsq; any b0 gives the same
    fit (it is added back), only the rounding depends on it."""
    b0 = None
    R, info = _potrf(stats.XtX, lower=0, clean=1)
    if info == 0 and R.shape[0]:
        d = [abs(v) for v in R.diagonal().tolist()]
        if min(d) > 1e-6 * max(d):  # condition number of XᵀX below ~1e12
            b0 = _potrs(R, stats.Xty, lower=0)[0]
    if b0 is None:
        b0 = np.linalg.lstsq(stats.XtX, stats.Xty, rcond=None)[0]
    Zty0 = stats.Zty - np.einsum("apg,p->ag", stats.ZtX, b0)
    Xty0 = stats.Xty - stats.XtX @ b0
    yty0 = max(float(stats.yty - 2.0 * b0 @ stats.Xty + b0 @ stats.XtX @ b0), 0.0)
    return b0, Zty0, Xty0, yty0


@functools.lru_cache(maxsize=16)
def _projection(k: int) -> np.ndarray:
    """The fixed random projection that keys the classes (one Generator a size, not a call)."""
    v = np.random.default_rng(20150701).uniform(1.0, 2.0, k)
    v.flags.writeable = False
    return v


def _unique_first_inverse_counts(key: np.ndarray, with_order: bool = False) -> tuple:
    """``np.unique(key, return_index=True, return_inverse=True, return_counts=True)[1:]`` of a
    1-D array (the same stable sort, so the same first indices), in a third of its time: a
    dozen calls instead of its general machinery (~50 µs at 200 groups). *with_order* adds the
    stable sort itself (the indices sorted by class: ``np.argsort(inverse, kind="stable")``)."""
    n = key.shape[0]
    order = np.argsort(key, kind="stable")
    sk = key[order]
    head = np.empty(n, dtype=bool)
    head[:1] = True
    np.not_equal(sk[1:], sk[:-1], out=head[1:])
    starts = np.flatnonzero(head)
    inverse = np.empty(n, dtype=np.intp)
    inverse[order] = np.cumsum(head) - 1
    out = order[starts], inverse, np.diff(np.append(starts, n))
    return out + (order,) if with_order else out


def _classes(stats: Stats, lay: Layout, max_classes: int | None = None
             ) -> _Classes | _NestedClasses | None:
    """Groups pooled by class of ZᵢᵀZᵢ, or None when pooling would not make evaluations cheaper."""
    q, G, p = lay.q_total, stats.n_groups, stats.p
    flat = np.ascontiguousarray(stats.ZtZ.reshape(q * q, G).T)
    # classes by a 1-D key (a fixed random projection), verified exactly; np.unique(axis=0)
    # sorts rows lexicographically and is ~20x slower
    key = flat @ _projection(q * q)
    first, cls, count, order = _unique_first_inverse_counts(key, with_order=True)
    uniq = flat[first]
    if not np.array_equal(uniq[cls.ravel()], flat):
        uniq, cls, count = np.unique(flat, axis=0, return_inverse=True, return_counts=True)
        order = None
    K = uniq.shape[0]
    # pooled evaluations cost ~K q² (p+1)² against ~30 G q p per group; the pooled outer
    # products take K q² (p+1)² doubles of memory
    limit = min(max(8, G // 2), 4_000_000 // (q * q * (p + 1) ** 2))
    if max_classes is not None:
        limit = max_classes
    cls = cls.ravel()
    if lay.q_outer:
        qg = lay.q_inner
        limit = min(max(8, G // 2), 4_000_000 // (qg * qg * (p + 1) ** 2))
        if max_classes is not None:
            limit = max_classes
        return _nested_classes(stats, lay, uniq, cls, count, limit)
    if K > limit:
        return None
    b0, Zty0, Xty0, yty0 = _centred(stats)
    ZXa = np.concatenate([stats.ZtX, Zty0[:, None, :]], axis=1)  # (q, p+1, G)
    omega_k = _pooled_omega(ZXa, cls, count, K, order)  # (K, q, q, p+1, p+1)
    return _Classes(Ck=np.ascontiguousarray(uniq.reshape(K, q, q)), count=count.astype(float),
                    omega_flat=omega_k.reshape(K * q * q, (p + 1) ** 2),
                    omega_x_flat=omega_k[..., :p, :p].reshape(K * q * q, p * p).copy(),
                    b0=b0, Xty0=Xty0, yty0=yty0)


@dataclass
class _NestedClasses:
    """Inner groups pooled by class of equal ZᵢᵀZᵢ (all random columns, inner and outer) and by
    (outer group, class) pairs, for a factor nested in an outer factor.

    Every θ-dependent inner-group matrix depends only on ZᵢᵀZᵢ; the data enter through
    Zᵢᵀ Xa_i (Xa = [X, y]) linearly (the outer Schur complement's right-hand sides, pooled by
    pair: ``P``) and quadratically only with class coefficients (``omega_flat``, pooled by
    class over the inner rows, as in :class:`_Classes`). An evaluation then costs
    O(classes + pairs + outer groups) instead of O(inner groups).
    """

    Ck: np.ndarray  # (K, qt, qt)
    count: np.ndarray  # (K,) inner groups per class
    omega_flat: np.ndarray  # (K qg qg, (p+1)²) Σ_class (ZgᵢᵀXa_i)[a] ⊗ (ZgᵢᵀXa_i)[b]
    omega_x_flat: np.ndarray  # (K qg qg, p²)
    pair_class: np.ndarray  # (J,)
    pair_outer: np.ndarray  # (J,)
    pair_count: np.ndarray  # (J,) inner groups per (outer, class) pair
    P: np.ndarray  # (J, qt, p+1): Σ_pair Zᵢᵀ Xa_i
    to_outer: sparse.csr_matrix  # (H, J) indicator of each pair's outer group
    b0: np.ndarray  # (p,) least-squares β: y is replaced by y − X b0 in Xa (see _nested_classes)
    Xty0: np.ndarray  # Xᵀ(y − X b0)
    yty0: float  # |y − X b0|²


def _pooled_omega(ZXa: np.ndarray, cls: np.ndarray, count: np.ndarray, K: int,
                  order: np.ndarray | None = None) -> np.ndarray:
    """Σ over each class of (ZᵢᵀXa_i)[a] (ZᵢᵀXa_i)[b]ᵀ: (K, q, q, m, m) from ZXa (q, m, G).
    *order*: the groups sorted by class, stably (``np.argsort(cls, kind="stable")``), when at
    hand."""
    q, m, G = ZXa.shape
    qm = q * m
    if order is None:
        order = np.argsort(cls, kind="stable")
    counts = count.tolist()
    flat = ZXa.reshape(qm, G)[:, order]  # groups of a class side by side
    omega = np.empty((K, qm, qm))
    single = [k for k, c in enumerate(counts) if c == 1]
    start = 0
    starts = []
    for c in counts:
        starts.append(start)
        start += c
    if len(single) > 1:  # classes of one group: their outer products in one call
        v = flat[:, [starts[k] for k in single]].T
        omega[single] = v[:, :, None] * v[:, None, :]
    for k in range(K):  # one product a class: every (a, b) block at once
        c = counts[k]
        if c == 1 and len(single) > 1:
            continue
        sub = flat[:, starts[k]:starts[k] + c]
        np.matmul(sub, sub.T, out=omega[k])
    return omega.reshape(K, q, m, q, m).transpose(0, 1, 3, 2, 4)


def _nested_classes(stats: Stats, lay: Layout, uniq: np.ndarray, cls: np.ndarray,
                    count: np.ndarray, limit: int) -> _NestedClasses | None:
    qg, qt, p, G = lay.q_inner, lay.q_total, stats.p, stats.n_groups
    K = uniq.shape[0]
    og = np.maximum(stats.outer_of, 0)
    H = max(stats.n_outer, int(og.max()) + 1 if og.size else 1)
    pair_key = og * K + cls
    pairs, pair_idx, pair_count = np.unique(pair_key, return_inverse=True, return_counts=True)
    pair_idx = pair_idx.ravel()
    J = pairs.size
    if K > limit or J > max(8, G // 2):
        return None
    # The response enters as y − X b0 (b0 the least-squares β): the same β̂ − b0, residuals and
    # deviance, with less rounding (the optimiser's line search stalls on noise otherwise).
    b0, Zty0, Xty0, yty0 = _centred(stats)
    ZXa = np.concatenate([stats.ZtX, Zty0[:, None, :]], axis=1)  # (qt, p+1, G)
    P = _group_sums(ZXa.reshape(qt * (p + 1), G), pair_idx, J)
    P = np.ascontiguousarray(P.reshape(qt, p + 1, J).transpose(2, 0, 1))
    omega = _pooled_omega(ZXa[:qg], cls, count, K)
    pair_outer = (pairs // K).astype(np.int64)
    to_outer = sparse.csr_matrix((np.ones(J), (pair_outer, np.arange(J))), shape=(H, J))
    return _NestedClasses(
        Ck=np.ascontiguousarray(uniq.reshape(K, qt, qt)), count=count.astype(float),
        omega_flat=omega.reshape(K * qg * qg, (p + 1) ** 2),
        omega_x_flat=omega[..., :p, :p].reshape(K * qg * qg, p * p).copy(),
        pair_class=(pairs % K).astype(np.int64), pair_outer=pair_outer,
        pair_count=pair_count.astype(float), P=P, to_outer=to_outer, b0=b0, Xty0=Xty0,
        yty0=yty0)


def _evaluate_nested_classes(cl: _NestedClasses, stats: Stats, lay: Layout, theta: np.ndarray
                             ) -> _Eval:
    """``_evaluate`` for the nested model with inner groups pooled by class and (outer, class).

    Per class: A = I + ΛgᵀCggΛg, N = ΛgA⁻¹Λgᵀ, R = A⁻¹ΛgᵀCghΛh; per outer group h:
    S_h = I + Σ_pairs n (ΛhᵀChhΛh − (CghΛh)ᵀN(CghΛh)) and the right-hand sides
    c_h = Σ_pairs (Λhᵀ P_h − (CghΛh)ᵀN P_g), so that XaᵀV⁻¹Xa = XaᵀXa − Σ_class ⟨N, Ω⟩
    − Σ_h c_hᵀ S_h⁻¹ c_h and log|L_θ|² = Σ_class n log|A| + Σ_h log|S_h|.
    """
    qg, qh, p = lay.q_inner, lay.q_outer, stats.p
    lg, lh = lay.lambdas(theta)
    C = cl.Ck
    Cgg, Cgh, Chh = C[:, :qg, :qg], C[:, :qg, qg:], C[:, qg:, qg:]
    A = lg.T @ (Cgg @ lg)
    A[:, range(qg), range(qg)] += 1.0
    Ainv = np.linalg.inv(A)
    _, logdetA = np.linalg.slogdet(A)
    Q = Ainv @ lg.T  # A⁻¹Λgᵀ
    N = lg @ Q  # ΛgA⁻¹Λgᵀ
    CghLh = Cgh @ lh  # (K, qg, qh)
    CghLh_t = CghLh.transpose(0, 2, 1)
    R = Q @ CghLh  # A⁻¹ΛgᵀCghΛh
    Sper = lh.T @ Chh @ lh - CghLh_t @ N @ CghLh  # (K, qh, qh)
    Mg = -(CghLh_t @ N)  # (K, qh, qg)
    pk, J = cl.pair_class, cl.pair_class.size
    chxa_j = Mg[pk] @ cl.P[:, :qg] + lh.T @ cl.P[:, qg:]  # (J, qh, p+1)
    Hn = cl.to_outer.shape[0]
    chxa = np.asarray(cl.to_outer @ chxa_j.reshape(J, -1)).reshape(Hn, qh, p + 1)
    S = np.asarray(cl.to_outer @ (cl.pair_count[:, None, None] * Sper[pk]).reshape(J, -1))
    S = S.reshape(Hn, qh, qh)
    S[:, range(qh), range(qh)] += 1.0
    Sinv = np.linalg.inv(S)
    _, logdetS = np.linalg.slogdet(S)
    S1 = (N.reshape(-1) @ cl.omega_flat).reshape(p + 1, p + 1)
    S2 = np.tensordot(chxa, Sinv @ chxa, axes=([0, 1], [0, 1]))  # Σ_h c_hᵀ S_h⁻¹ c_h
    St = S1 + S2
    XtVX = stats.XtX - St[:p, :p]
    XtVy = cl.Xty0 - St[:p, p]
    logdet = float(cl.count @ logdetA) + float(np.sum(logdetS))
    parts = {"lg": lg, "lh": lh, "Ainv": Ainv, "Q": Q, "R": R, "Sinv": Sinv, "chxa": chxa}
    ev = _finish(theta, logdet, XtVX, XtVy, cl.yty0 - float(St[p, p]), parts)
    parts["beta0"] = ev.beta  # β̂ − b0, for the centred response
    ev.beta = ev.beta + cl.b0
    return ev


def _gradient_nested_classes(cl: _NestedClasses, stats: Stats, lay: Layout, ev: _Eval,
                             reml: bool) -> np.ndarray:
    """``_gradient_nested`` with inner groups pooled (same terms, summed class and pair-wise).

    With e_i = Zᵢᵀ(y − Xβ̂), the modes are u_i = Q e_g,i − R uh_h (Q = A⁻¹Λgᵀ,
    uh_h = S_h⁻¹ c_h w, w = [−β̂, 1]) and the residual products are
    Zgᵢᵀr_i = F e_g,i + G uh_h, Zhᵢᵀr_i = e_h,i − J e_g,i + K uh_h with class matrices
    F = I − CggΛgQ, G = CggΛgR − CghΛh, J = ChgΛgQ, K = ChgΛgR − ChhΛh. Their products
    are quadratic in e only through F(Σ e_g e_gᵀ)Qᵀ (pooled by class) and linear otherwise
    (pooled by pair); the REML term has the same form with ZᵢᵀX in place of e_i.
    """
    qg, qh, p, n = lay.q_inner, lay.q_outer, stats.p, stats.n
    pt = ev.parts
    lg, lh, Ainv, Q, R, Sinv, chxa = (pt[k] for k in ("lg", "lh", "Ainv", "Q", "R", "Sinv",
                                                     "chxa"))
    C = cl.Ck
    K = C.shape[0]
    Cgg, Cgh, Chg, Chh = C[:, :qg, :qg], C[:, :qg, qg:], C[:, qg:, :qg], C[:, qg:, qg:]
    pk, ph, nj = cl.pair_class, cl.pair_outer, cl.pair_count
    Sj = Sinv[ph]  # (J, qh, qh)
    Rj, Qj = R[pk], Q[pk]
    Rt = Rj.transpose(0, 2, 1)
    # ∂ log|V|
    LgtCgg = lg.T @ Cgg  # (K, qg, qg)
    Dg = np.einsum("k,kab->ab", cl.count, Ainv @ LgtCgg)
    Dg += np.einsum("j,jab->ab", nj, Rj @ Sj @ (Rt @ LgtCgg[pk] - lh.T @ Chg[pk]))
    Dh = np.einsum("j,jab->ab", nj, Sj @ (lh.T @ Chh[pk] - Rt @ (lg.T @ Cgh[pk])))
    grad_g, grad_h = 2.0 * Dg.T, 2.0 * Dh.T
    # ∂ r²
    w = np.r_[-pt["beta0"], 1.0]  # the data hold y − X b0
    uh = np.einsum("hab,hb->ha", Sinv, chxa @ w)  # (H, qh)
    uj = uh[ph]
    CggLg, ChgLg = Cgg @ lg, Chg @ lg
    F = -(CggLg @ Q)
    F[:, range(qg), range(qg)] += 1.0
    Gm = CggLg @ R - Cgh @ lh  # (K, qg, qh)
    Jm = ChgLg @ Q  # (K, qh, qg)
    Km = ChgLg @ R - Chh @ lh  # (K, qh, qh)
    E2 = (cl.omega_flat @ np.outer(w, w).ravel()).reshape(K, qg, qg)
    E1 = cl.P[:, :qg] @ w  # (J, qg)
    Eh1 = cl.P[:, qg:] @ w  # (J, qh)
    Fj, Gj = F[pk], Gm[pk]
    a = np.einsum("jab,jb->ja", Fj, E1)
    ru = np.einsum("jab,jb->ja", Rj, uj)
    gu = np.einsum("jab,jb->ja", Gj, uj)
    qe = np.einsum("jab,jb->ja", Qj, E1)
    sg = np.sum(F @ E2 @ Q.transpose(0, 2, 1), axis=0)
    sg += -a.T @ ru + gu.T @ qe - (nj[:, None] * gu).T @ ru
    zh = Eh1 - np.einsum("jab,jb->ja", Jm[pk], E1) + nj[:, None] * np.einsum(
        "jab,jb->ja", Km[pk], uj)
    sh = zh.T @ uj
    nn = (n - p) if reml else n
    c = 2.0 * nn / ev.pwrss
    grad_g -= c * sg
    grad_h -= c * sh
    # ∂ log|XᵀV⁻¹X|
    if reml:
        Pinv = _xtvx_inv(ev)
        Th = Sinv @ chxa[:, :, :p]  # (H, qh, p)
        Thj = Th[ph]
        Xg1, Xh1 = cl.P[:, :qg, :p], cl.P[:, qg:, :p]
        Pi = (cl.omega_x_flat @ Pinv.ravel()).reshape(K, qg, qg)
        Mg = np.sum(F @ Pi @ F.transpose(0, 2, 1), axis=0)
        FX = Fj @ Xg1
        GT = Gj @ Thj
        GP = GT @ Pinv
        cross = np.tensordot(GP, FX, axes=([0, 2], [0, 2]))
        Mg += cross + cross.T + np.tensordot(nj[:, None, None] * GP, GT, axes=([0, 2], [0, 2]))
        Bj = Xh1 - Jm[pk] @ Xg1 + nj[:, None, None] * (Km[pk] @ Thj)
        Hn = Sinv.shape[0]
        Bh = np.asarray(cl.to_outer @ Bj.reshape(Bj.shape[0], -1)).reshape(Hn, qh, p)
        Mh = np.tensordot(Bh @ Pinv, Bh, axes=([0, 2], [0, 2]))
        grad_g -= 2.0 * (lg.T @ Mg).T
        grad_h -= 2.0 * (lh.T @ Mh).T
    return np.array([(grad_g if lev == 0 else grad_h)[r, c_] for (lev, r, c_) in lay.theta_pos])


def _inv_logdet(A: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Inverses and log-determinants of a (K, q, q) stack of SPD matrices; the 2×2 case written
    into one flat buffer (a third of the NumPy calls of ``batched._inv_logdet``, same values)."""
    K, q = A.shape[0], A.shape[-1]
    if q != 2:
        return batched._inv_logdet(A)
    f = A.reshape(K, 4)
    a, b, c = f[:, 0], f[:, 1], f[:, 3]
    det = a * c - b * b
    inv = np.empty((K, 4))
    np.divide(c, det, out=inv[:, 0])
    np.divide(a, det, out=inv[:, 3])
    np.divide(b, det, out=inv[:, 1])
    np.negative(inv[:, 1], out=inv[:, 1])
    inv[:, 2] = inv[:, 1]
    return inv.reshape(K, 2, 2), np.log(det)


def _pooled_terms(cl: _Classes, stats: Stats, lay: Layout, theta: np.ndarray, inv_logdet
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, float]:
    """What every pooled evaluation starts from: Λ, CΛ, H = A⁻¹Λᵀ (A = ΛᵀCΛ + I, inverted by
    *inv_logdet*), S = Σ_k Ω_k-weighted ΛA⁻¹Λᵀ ((p+1)×(p+1)) and Σ log|A_k|, stacks laid out
    (K, q, q). K is small here, so the cost is the number of NumPy calls, not arithmetic."""
    q, p = lay.q_inner, stats.p
    lam, _ = lay.lambdas(theta)
    CL = cl.Ck @ lam
    A = lam.T @ CL
    A.reshape(A.shape[0], q * q)[:, ::q + 1] += 1.0  # the diagonals, as one strided view
    Ainv, logdets = inv_logdet(A)
    H = Ainv @ lam.T
    S = ((lam @ H).reshape(-1) @ cl.omega_flat).reshape(p + 1, p + 1)
    return lam, CL, H, S, float(cl.count @ logdets)


def _evaluate_classes(cl: _Classes, stats: Stats, lay: Layout, theta: np.ndarray) -> _Eval:
    """Profiled-deviance pieces with groups pooled by class; stacks laid out (K, q, q).

    K is small here, so the cost is the number of NumPy calls, not arithmetic: batched matmul
    and 2×2 inverses on (K, q, q) stacks keep that number at about a dozen.
    """
    p = stats.p
    lam, CL, H, S, logdet = _pooled_terms(cl, stats, lay, theta, _inv_logdet)
    XtVX = stats.XtX - S[:p, :p]
    XtVy = cl.Xty0 - S[:p, p]
    parts = {"H": H, "CL": CL, "lg": lam}
    ev = _finish(theta, logdet, XtVX, XtVy, cl.yty0 - float(S[p, p]), parts)
    parts["beta0"] = ev.beta  # β̂ − b0, for the centred response
    ev.beta = ev.beta + cl.b0
    return ev


def _gradient_classes(cl: _Classes, stats: Stats, lay: Layout, ev: _Eval, reml: bool
                      ) -> np.ndarray:
    """The gradient of ``_gradient_single`` summed class by class (same formulas)."""
    q, p, n = lay.q_inner, stats.p, stats.n
    lam, H, CL = ev.parts["lg"], ev.parts["H"], ev.parts["CL"]
    K = cl.count.size
    HC = H @ cl.Ck
    grad_m = 2.0 * (cl.count @ HC.reshape(K, q * q)).reshape(q, q).T
    F = -(CL @ H)  # I - C Λ A⁻¹ Λᵀ
    F.reshape(K, q * q)[:, ::q + 1] += 1.0
    w = np.append(-ev.parts["beta0"], 1.0)  # the data hold y − X b0
    E = (cl.omega_flat @ np.outer(w, w).ravel()).reshape(K, q, q)  # Σ e eᵀ, e = Zᵀ(y - Xβ)
    Ht = H.transpose(0, 2, 1)
    nn = (n - p) if reml else n
    grad_m -= (2.0 * nn / ev.pwrss) * np.sum(F @ E @ Ht, axis=0)
    if reml:
        Pinv = _xtvx_inv(ev)
        Pi = (cl.omega_x_flat @ Pinv.ravel()).reshape(K, q, q)  # tr(P⁻¹ Ω) per class
        M = np.sum(F @ Pi @ F.transpose(0, 2, 1), axis=0)
        grad_m -= 2.0 * (lam.T @ M).T
    return grad_m[lay.theta_rows, lay.theta_cols]


def _inv_logdet_sym2(A: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Inverses and log-determinants of a (K, 2, 2) stack of symmetric matrices: the adjugate is
    A with both axes reversed and the off-diagonal negated (fewer NumPy calls than
    ``_inv_logdet``, same arithmetic)."""
    det = A[:, 0, 0] * A[:, 1, 1]
    det -= A[:, 0, 1] * A[:, 0, 1]
    inv = A[:, ::-1, ::-1] * _ADJ_SIGN
    inv /= det[:, None, None]
    return inv, np.log(det)


_ADJ_SIGN = np.array([[1.0, -1.0], [-1.0, 1.0]])


def _pooled_core(cl: _Classes, stats: Stats, lay: Layout, theta: np.ndarray) -> tuple | None:
    """The pooled classes' pieces at θ: log|L_θ|², r², R_X, β̂ − b0 and, for the gradient, Λ,
    CΛ and H = A⁻¹Λᵀ (A = ΛᵀCΛ + I); None when XᵀV⁻¹X is not positive definite. Like
    ``_evaluate_classes``, from ``_pooled_terms``, without building an ``_Eval``."""
    p = stats.p
    inv = _inv_logdet_sym2 if lay.q_inner == 2 else _inv_logdet
    lam, CL, H, S, logdet = _pooled_terms(cl, stats, lay, theta, inv)
    solved = pooled2.fixed_solve(stats.XtX, cl.Xty0, cl.yty0, S, p)
    if solved is None:
        return None
    RX, beta0, pwrss = solved
    return logdet, pwrss, RX, beta0, lam, CL, H


def _logdet_rx(RX: np.ndarray) -> float:
    """log |XᵀV⁻¹X| = 2 log |prod diag R_X| (the sum of logs when the product leaves the range)."""
    d = RX.diagonal()
    pr = abs(float(d.prod()))
    if 1e-280 < pr < 1e280:
        return 2.0 * math.log(pr)
    return 2.0 * float(np.log(np.abs(d)).sum())


def pooled_of_classes(cl: _Classes, stats: Stats, lay: Layout) -> batched.Pooled:
    """The classes as :mod:`~mfr_outcomes.models.batched` reads them (one study, centred sums):
    what the optimiser's start, the checks and Satterthwaite's derivatives use."""
    return batched.pooled_from_classes(
        cl.count, cl.Ck, cl.omega_flat, stats.XtX, cl.Xty0, cl.yty0, stats.n,
        [(r, c) for (_, r, c) in lay.theta_pos], oxx=cl.omega_x_flat, centred=True)


def _pooled2_of(cl: _Classes, stats: Stats, lay: Layout) -> pooled2.Pooled2 | None:
    """The classes laid out for :mod:`~mfr_outcomes.models.pooled2` (built once, kept on *cl*),
    or None: one random-effect column (a scalar per class, where the stacked code is as fast) or
    a layout it does not cover."""
    if cl.p2 is None:
        got = pooled2.pooled2(cl, stats, lay) if lay.q_inner >= 2 else None
        cl.p2 = False if got is None else got
    return cl.p2 or None


def _pooled2_eval(cl, stats: Stats, lay: Layout, theta: np.ndarray) -> _Eval | None:
    """β̂, r², R_X and log|L_θ|² at θ from :func:`pooled2.core2` (what the fit reports), or None
    where pooled2 does not apply or XᵀV⁻¹X is not positive definite."""
    p2 = _pooled2_of(cl, stats, lay) if isinstance(cl, _Classes) else None
    core = None if p2 is None else pooled2.core2(p2, theta)
    if core is None:
        return None
    logdet, pwrss, RX, beta0 = core[:4]
    return _Eval(np.asarray(theta, dtype=float), logdet, RX, beta0 + cl.b0, pwrss, {})


def _fg_classes(cl: _Classes, stats: Stats, lay: Layout, theta: np.ndarray, reml: bool,
                gradient: bool = True) -> tuple[float, np.ndarray | None]:
    """Criterion and gradient of the pooled classes in one pass (the optimiser's inner loop):
    :func:`pooled2.fg2` (every product by Λ one product over all classes) where it applies,
    else :func:`_fg_classes_stacked` (same formulas, on (K, q, q) stacks)."""
    p2 = _pooled2_of(cl, stats, lay)
    if p2 is not None:
        return pooled2.fg2(p2, theta, reml, _logdet_rx, gradient)
    return _fg_classes_stacked(cl, stats, lay, theta, reml, gradient)


def _fg_classes_stacked(cl: _Classes, stats: Stats, lay: Layout, theta: np.ndarray, reml: bool,
                        gradient: bool = True) -> tuple[float, np.ndarray | None]:
    """Criterion and gradient of the pooled classes in one pass (the optimiser's inner loop): the
    formulas of ``_evaluate_classes`` and ``_gradient_classes`` with their two data terms merged.

    With F = I − C Λ A⁻¹ Λᵀ and H = A⁻¹ Λᵀ, FᵀΛ = Λ A⁻¹ = Hᵀ (ΛᵀCΛ = A − I), so the REML term
    (Λᵀ Σ F Πₖ Fᵀ)ᵀ = Σ F Πₖ Hᵀ and the residual term Σ F Eₖ Hᵀ share one product with Ω:
    Σ F (α Eₖ + 2 Πₖ) Hᵀ, α = 2 (n − p) / r², with Eₖ and Πₖ both linear in Ω. Returns
    (inf, None) where the criterion is not finite, (f, None) when *gradient* is false.
    """
    core = _pooled_core(cl, stats, lay, theta)
    if core is None:
        return np.inf, None
    logdet, pwrss, RX, beta0, lam, CL, H = core
    q, p, n = lay.q_inner, stats.p, stats.n
    m = p + 1
    nn = (n - p) if reml else n
    f = pooled2.criterion(logdet, pwrss, RX, n, p, reml, _logdet_rx)
    if not math.isfinite(f):
        return np.inf, None
    if not gradient:
        return f, None
    w = np.empty(m)
    w[:p] = beta0
    w[p] = -1.0  # the data hold y − X b0; (−w)(−w)ᵀ = w wᵀ
    W = (2.0 * nn / pwrss) * (w[:, None] * w)
    if reml:
        W[:p, :p] += 2.0 * _potrs(RX, np.eye(p), lower=0)[0]
    C = cl.Ck
    K = C.shape[0]
    T = (cl.omega_flat @ W.reshape(-1)).reshape(K, q, q)
    F = -(CL @ H)  # I − C Λ A⁻¹ Λᵀ
    F.reshape(K, q * q)[:, ::q + 1] += 1.0
    grad_m = 2.0 * (cl.count @ (H @ C).reshape(K, q * q)).reshape(q, q).T
    grad_m -= (F @ T @ H.transpose(0, 2, 1)).sum(axis=0)
    return f, grad_m[lay.theta_rows, lay.theta_cols]


def _eval_any(stats: Stats, lay: Layout, theta: np.ndarray,
              classes: _Classes | _NestedClasses | None) -> _Eval:
    theta = np.asarray(theta, dtype=float)
    if isinstance(classes, _NestedClasses):
        return _evaluate_nested_classes(classes, stats, lay, theta)
    if classes is not None:
        return _evaluate_classes(classes, stats, lay, theta)
    return _evaluate(stats, lay, theta)


def _gradient_nested(stats: Stats, lay: Layout, ev: _Eval, reml: bool) -> np.ndarray:
    """Analytic gradient of the profiled deviance for a factor nested in an outer factor.

    The terms of ``_gradient_single`` for both levels: V is block diagonal over outer groups, and
    the blocks of A⁻¹ needed (inner i, its outer h) come from the block Cholesky factor
    [[L_i, 0], [W_iᵀ, L_h]]: (A⁻¹)_ii = L_i⁻ᵀL_i⁻¹ + L_i⁻ᵀW_i S_h⁻¹W_iᵀL_i⁻¹,
    (A⁻¹)_ih = −L_i⁻ᵀW_i S_h⁻¹, (A⁻¹)_hh = S_h⁻¹. With ΛᵀZᵀV⁻¹Z = A⁻¹ΛᵀZᵀZ,
    ZᵀV⁻¹X = ZᵀX − ZᵀZΛ A⁻¹ΛᵀZᵀX and Zᵀr from the modes, each term is a sum over inner groups.
    """
    pt = ev.parts
    qg, qh = lay.q_inner, lay.q_outer
    L, Lh, W, og = pt["L"], pt["Lh"], pt["W"], pt["og"]
    lg, lh = pt["lg"], pt["lh"]
    C = stats.ZtZ
    Cgg, Cgh, Chg, Chh = C[:qg, :qg], C[:qg, qg:], C[qg:, :qg], C[qg:, qg:]
    n, p = stats.n, stats.p
    G, H = L.shape[2], Lh.shape[2]
    Linv = _fsolve(L, np.broadcast_to(np.eye(qg)[:, :, None], (qg, qg, G)).copy())
    Lhinv = _fsolve(Lh, np.broadcast_to(np.eye(qh)[:, :, None], (qh, qh, H)).copy())
    Sg = np.einsum("kag,kbg->abg", Lhinv, Lhinv)[:, :, og]  # S_h⁻¹ at each inner group
    T1 = _bsolve(L, W)  # L_i⁻ᵀ W_i
    Aih = -_bmm(T1, Sg)
    Aii = np.einsum("kag,kbg->abg", Linv, Linv) - _bmm(Aih, T1.transpose(1, 0, 2))
    Ahi = Aih.transpose(1, 0, 2)
    # ∂ log|V|
    Dg = _bmm(Aii, _lmul(lg.T, Cgg)) + _bmm(Aih, _lmul(lh.T, Chg))
    Dh = _bmm(Sg, _lmul(lh.T, Chh)) + _bmm(Ahi, _lmul(lg.T, Cgh))
    grad_g = 2.0 * Dg.sum(axis=2).T
    grad_h = 2.0 * Dh.sum(axis=2).T
    # ∂ r²
    u, uh = _modes(ev, lay)
    uhg = uh[:, og]
    bg, bh = _lmul(lg, u), _lmul(lh, uhg)
    zr_g = (stats.Zty[:qg] - np.matmul(ev.beta, stats.ZtX[:qg]) - _bmm(Cgg, bg)
            - _bmm(Cgh, bh))
    zr_h = (stats.Zty[qg:] - np.matmul(ev.beta, stats.ZtX[qg:]) - _bmm(Chg, bg)
            - _bmm(Chh, bh))
    nn = (n - p) if reml else n
    c = 2.0 * nn / ev.pwrss
    grad_g -= c * np.einsum("ag,bg->ab", zr_g, u)
    grad_h -= c * np.einsum("ag,bg->ab", zr_h, uhg)
    # ∂ log|XᵀV⁻¹X|
    if reml:
        Th = _bsolve(Lh, pt["RZXh"])[:, :, og]
        Ti = _bsolve(L, pt["RZX"] - np.einsum("akg,kpg->apg", W, Th))
        lTi, lTh = _lmul(lg, Ti), _lmul(lh, Th)
        Bg = stats.ZtX[:qg] - _bmm(Cgg, lTi) - _bmm(Cgh, lTh)
        Bh = np.zeros((qh, p, H))
        _scatter_add(Bh, stats.ZtX[qg:] - _bmm(Chg, lTi) - _bmm(Chh, lTh), og)
        Pinv = _xtvx_inv(ev)
        Mg = np.einsum("apg,pq,bqg->ab", Bg, Pinv, Bg)
        Mh = np.einsum("apg,pq,bqg->ab", Bh, Pinv, Bh)
        grad_g -= 2.0 * (lg.T @ Mg).T
        grad_h -= 2.0 * (lh.T @ Mh).T
    return np.array([(grad_g if lev == 0 else grad_h)[r, c_] for (lev, r, c_) in lay.theta_pos])


def profiled_deviance(stats: Stats, lay: Layout, theta: np.ndarray, reml: bool = True,
                      classes: _Classes | _NestedClasses | None = None) -> float:
    """REML criterion (reml=True) or deviance at θ, profiled over β and σ² (lme4's devfun)."""
    return _objective(_eval_any(stats, lay, theta, classes), stats.n, stats.p, reml)


def deviance_varpar(stats: Stats, lay: Layout, varpar: np.ndarray, reml: bool = True,
                    classes: _Classes | _NestedClasses | None = None) -> float:
    """Deviance at varpar = (θ..., σ), not profiled in σ (lmerTest's ``devfun_vp``)."""
    varpar = np.asarray(varpar, dtype=float)
    sigma2 = varpar[-1] ** 2
    n, p = stats.n, stats.p
    if isinstance(classes, _Classes):  # the pooled pieces alone (no _Eval)
        p2 = _pooled2_of(classes, stats, lay)
        core = (_pooled_core(classes, stats, lay, varpar[:-1]) if p2 is None
                else pooled2.core2(p2, varpar[:-1]))
        if core is None:
            return np.inf
        logdet, pwrss, RX = core[:3]
        dev = logdet + pwrss / sigma2 + n * math.log(2.0 * math.pi * sigma2)
        if reml:
            dev += _logdet_rx(RX) - p * math.log(2.0 * math.pi * sigma2)
        return float(dev)
    ev = _eval_any(stats, lay, varpar[:-1], classes)
    dev = ev.logdet + ev.pwrss / sigma2 + n * np.log(2.0 * np.pi * sigma2)
    if not reml:
        return float(dev)
    ldrx = 2.0 * float(np.sum(np.log(np.abs(np.diag(ev.RX)))))
    return float(dev + ldrx - p * np.log(2.0 * np.pi * sigma2))


def vcov_beta_varpar(stats: Stats, lay: Layout, varpar: np.ndarray,
                     classes: _Classes | _NestedClasses | None = None) -> np.ndarray:
    """Var(β̂) at varpar = (θ..., σ): σ² (XᵀV⁻¹X)⁻¹ (lmerTest's ``get_covbeta``)."""
    varpar = np.asarray(varpar, dtype=float)
    ev = _eval_any(stats, lay, varpar[:-1], classes)
    return varpar[-1] ** 2 * _xtvx_inv(ev)


# ----------------------------------------------------------------------------------------------
# The engine
# ----------------------------------------------------------------------------------------------
class FastEngine:
    """Engine "fast": one grouping factor (+ one nesting level), REML or ML, exact.

    Options (``options`` dict of ``fit``): ``gtol`` (default 1e-7, on the projected gradient of
    the deviance), ``ftol`` (1e-13, relative change of the deviance), ``maxiter`` (1000),
    ``boundary_tol`` (1e-4: lme4's ``isSingular`` tolerance on diagonal θ), ``compress``
    (default True: pool groups with equal ZᵢᵀZᵢ when that makes evaluations cheaper),
    ``blas_one_thread`` (default True: BLAS on one thread during the fit; False leaves BLAS's
    own thread count, for measuring what the scope saves),
    ``analytic_gradient`` (default True; False: central differences, for checking),
    ``moment_start`` (default True: with groups pooled by class and no start given, the
    optimiser starts from the classes' moment estimate of Λ where its criterion is below
    Λ = I's; False: lme4's start Λ = I).

    Examples
    --------
    >>> from mfr_outcomes.models.fast import FastEngine
    >>> from mfr_outcomes.models.formula import build_spec
    >>> from mfr_outcomes.synthetic import generate_frames
    >>> from mfr_outcomes.study import analysis_frame
    >>> f, _ = generate_frames(n_patients=40, seed=1, measures=["pain_nrs"])
    >>> d = analysis_frame(f["patients"], f["sessions"], f["measurements"], "pain_nrs")
    >>> spec = build_spec(d[d["technique"] != "none"], "value ~ post + (post | patient_id)")
    >>> res = FastEngine().fit(spec)
    >>> res.engine, len(res.theta)
    ('fast', 3)
    """

    name = "fast"
    priority = 30  # exact where it applies, and the fastest

    def supports(self, spec: ModelSpec) -> tuple[bool, str]:
        lay, why = layout_of(spec)
        if lay is None:
            return False, why
        # a finite sum means every value is finite (one reduction, no mask); a sum that
        # overflowed is checked value by value
        if not (math.isfinite(float(spec.y.sum())) and math.isfinite(float(spec.X.sum()))) and not (
                np.all(np.isfinite(spec.y)) and np.all(np.isfinite(spec.X))):
            return False, "the response or the fixed-effects matrix holds non-finite values"
        return True, ""

    def prepare(self, spec: ModelSpec) -> tuple[Stats, Layout]:
        """The layout and sufficient statistics of *spec* (one pass over the rows)."""
        lay, why = layout_of(spec)
        if lay is None:
            raise ValueError(why)
        return _stats_of_spec(spec, lay), lay

    def fit(self, spec: ModelSpec, reml: bool = True, *, start: np.ndarray | None = None,
            options: dict | None = None) -> EngineResult:
        scope = blas_threads() if (options or {}).get("blas_one_thread", True) else nullcontext()
        with scope:  # the statistics' products too (X'X on two threads waits on a busy core)
            stats, lay = self.prepare(spec)
            return self.fit_stats(stats, lay, reml=reml, start=start, options=options,
                                  lower=theta_lower_bounds(spec),
                                  theta0=theta_start(spec) if start is None else start)

    def fit_stats(self, stats: Stats, lay: Layout, *, reml: bool = True,
                  start: np.ndarray | None = None, options: dict | None = None,
                  lower: np.ndarray | None = None, theta0: np.ndarray | None = None,
                  light: bool = False) -> EngineResult:
        """Fit from sufficient statistics. ``light=True`` skips modes and conditional variances.

        BLAS runs on one thread for the fit (every block is small; see
        :mod:`mfr_outcomes.models.threads`), restored after.
        """
        scope = blas_threads() if (options or {}).get("blas_one_thread", True) else nullcontext()
        with scope:
            return self._fit_stats(stats, lay, reml=reml, start=start, options=options,
                                   lower=lower, theta0=theta0, light=light)

    def _fit_stats(self, stats: Stats, lay: Layout, *, reml: bool, start: np.ndarray | None,
                   options: dict | None, lower: np.ndarray | None, theta0: np.ndarray | None,
                   light: bool) -> EngineResult:
        opts = {"gtol": 1e-7, "ftol": 1e-13, "maxiter": 1000, "boundary_tol": 1e-4}
        opts.update(options or {})
        n, p = stats.n, stats.p
        nth = len(lay.theta_pos)
        if lower is None:
            lower = np.array([0.0 if r == c else -np.inf for (_, r, c) in lay.theta_pos])
        if theta0 is None:
            theta0 = np.where(lower == 0.0, 1.0, 0.0)
        theta0 = np.asarray(theta0 if start is None else start, dtype=float)
        bounds = [(0.0 if lo == 0.0 else None, None) for lo in lower]
        analytic = bool(opts.get("analytic_gradient", True))
        classes = _classes(stats, lay) if opts.get("compress", True) else None
        nev = [0]
        pooled_fg = isinstance(classes, _Classes)

        def fg(th: np.ndarray):
            nev[0] += 1
            if pooled_fg:
                f, g = _fg_classes(classes, stats, lay, np.asarray(th, dtype=float), reml)
                return (1e300, np.zeros(nth)) if g is None else (f, g)
            ev = _eval_any(stats, lay, th, classes)
            f = _objective(ev, n, p, reml)
            if not np.isfinite(f):
                return 1e300, np.zeros(nth)
            if isinstance(classes, _NestedClasses) and analytic:
                return f, _gradient_nested_classes(classes, stats, lay, ev, reml)
            if isinstance(classes, _Classes):
                return f, _gradient_classes(classes, stats, lay, ev, reml)
            if lay.q_outer == 0:
                return f, _gradient_single(stats, lay, ev, reml)
            if analytic:
                return f, _gradient_nested(stats, lay, ev, reml)
            return f, _fd_gradient(
                lambda t: _objective(_eval_any(stats, lay, t, classes), n, p, reml), th, f, lower)

        lbfgs = {"ftol": opts["ftol"], "gtol": opts["gtol"], "maxiter": opts["maxiter"],
                 "maxcor": 20}

        def objective_only(th: np.ndarray) -> float:
            nev[0] += 1
            if pooled_fg:
                return _fg_classes(classes, stats, lay, np.asarray(th, dtype=float), reml,
                                   gradient=False)[0]
            return _objective(_eval_any(stats, lay, th, classes), n, p, reml)

        p2 = _pooled2_of(classes, stats, lay) if pooled_fg else None
        grads = None  # gradients at several θ in one stacked pass (pooled2's layout only)
        if p2 is not None:

            def grads(ths: np.ndarray) -> np.ndarray | None:
                nev[0] += ths.shape[0]  # one gradient a θ
                return pooled2.gradients(p2, ths, reml)

        def criteria(points: list[np.ndarray]) -> list[float]:
            """The criterion at several θ: pooled2's q = 2 form where it applies, else one by
            one through objective_only."""
            if points and p2 is not None:
                fs = pooled2.criteria(p2, np.array(points), reml)
                if fs is not None:
                    nev[0] += len(points)
                    return fs.tolist()
            return [objective_only(t) for t in points]
        pooled = newton = None
        if isinstance(classes, _Classes) and analytic:
            # groups pooled by class: quasi-Newton from the Hessian at the start (the moment
            # start where it is lower), in θ unconstrained (see _quasi_newton); the pooled
            # closed forms (models/batched.py) then give the checks and Satterthwaite's
            # derivatives
            pooled = pooled_of_classes(classes, stats, lay)
            with np.errstate(all="ignore"):
                x0 = np.asarray(theta0, dtype=float)
                fg0 = None
                if start is None and opts.get("moment_start", True) and lay.q_outer == 0:
                    tm = _moment_start(classes, stats, lay)
                    if tm is not None:
                        fm, gm = fg(tm)
                        if fm < objective_only(x0):
                            x0, fg0 = tm, (fm, gm)
                newton = _quasi_newton(fg, pooled, x0, reml, lay,
                                       min(int(opts["maxiter"]), 200), fg0=fg0, grads=grads)
                for _ in range(4):  # a diagonal θ at (or next to) 0 may sit on a saddle
                    if newton is None:
                        break
                    th0, _, f_th0 = newton  # f_th0: the optimiser's last criterion, at θ0
                    tiny = (lower == 0.0) & (th0 < opts["boundary_tol"] * max(
                        1.0, float(np.max(np.abs(th0)))))
                    if not tiny.any():
                        break
                    snapped = np.where(tiny, 0.0, th0)
                    # 0 itself first (its evaluation's pieces are kept for the fit's β̂ and
                    # derivatives when it is taken), then the probe's trials together
                    f_snapped = objective_only(snapped)
                    best, _ = probe_inside_bounds(objective_only, snapped, f_th0, lower,
                                                  values=criteria(probe_points(snapped, lower)))
                    if best is None:
                        # on the bound (θ within rounding of 0, as L-BFGS-B lands there): 0
                        # itself when it is no worse than the iterate to the criterion's rounding
                        if f_snapped <= f_th0 + 1e-13 * max(1.0, abs(f_th0)):
                            newton = (snapped, newton[1], f_snapped)
                        else:
                            objective_only(th0)  # the fit reads its pieces at θ0 (kept)
                        break
                    newton = _quasi_newton(fg, pooled, best, reml, lay,
                                           min(int(opts["maxiter"]), 200), grads=grads)
        messages = []
        if newton is not None:
            theta, n_iter, _ = newton
            # the classes' evaluation (centred sums) gives β̂, σ and Var(β̂); the per-group pass
            # the conditional modes need runs when they are first read (_ModesOnDemand)
            ev = _pooled2_eval(classes, stats, lay, theta)
            if ev is None:
                ev = _eval_any(stats, lay, theta, classes)
            f = _objective(ev, n, p, reml)
            converged = True
            optimizer, opt_message = "BFGS from the start's Hessian (analytic gradient)", "converged"
        else:
            from scipy import optimize  # not on the pooled path: SciPy's optimisers load slowly

            res = optimize.minimize(fg, theta0, jac=True, method="L-BFGS-B", bounds=bounds,
                                    options=lbfgs)
            # restart from inside the bound while a probe there beats a diagonal θ stopped at 0
            restarts = 0
            while restarts < 4:
                theta = np.where((lower == 0.0) & (res.x < 0), 0.0, res.x)
                best, best_f = probe_inside_bounds(objective_only, theta, float(res.fun), lower)
                if best is None:
                    break
                res = optimize.minimize(fg, best, jac=True, method="L-BFGS-B", bounds=bounds,
                                        options=lbfgs)
                restarts += 1
            theta = np.asarray(res.x, dtype=float)
            theta = np.where((lower == 0.0) & (theta < 0), 0.0, theta)
            ev = (_evaluate(stats, lay, theta) if not light
                  else _eval_any(stats, lay, theta, classes))
            f = _objective(ev, n, p, reml)
            # a projected-gradient check: L-BFGS-B sometimes stops on ftol with a usable optimum
            _, g = fg(theta)
            pg = np.where((lower == 0.0) & (theta == 0.0), np.minimum(g, 0.0), g)
            converged = bool(res.success) or float(np.max(np.abs(pg))) < 1e-3
            if not converged:
                messages.append(f"optimizer (L-BFGS-B) did not converge: {res.message}")
            n_iter, opt_message = int(res.nit), str(res.message)
            optimizer = "L-BFGS-B (" + ("analytic gradient" if analytic else
                                        "finite-difference gradient") + ")"
        diag = lower == 0.0
        singular = bool(np.any(theta[diag] < opts["boundary_tol"]))
        if singular:
            messages.append("boundary (singular) fit: a random-effect variance is at or near 0")
        nn = (n - p) if reml else n
        sigma = float(np.sqrt(ev.pwrss / nn))
        vcov = sigma ** 2 * _xtvx_inv(ev)
        modes = None
        if not light:
            ev_modes = ev if classes is None or newton is None else None

            def modes(ev_modes=ev_modes, theta=theta, sigma=sigma):
                with blas_threads():
                    return _blups(_evaluate(stats, lay, theta) if ev_modes is None else ev_modes,
                                  lay, sigma)

        def devfun_varpar(varpar: np.ndarray) -> float:
            # the classes' own evaluation (centred sums, as the pooled one; a third of its cost)
            return deviance_varpar(stats, lay, varpar, reml, classes)

        def vcov_varpar(varpar: np.ndarray) -> np.ndarray:
            return vcov_beta_varpar(stats, lay, varpar, classes)

        hess = jac = grad = None
        if pooled is not None:  # closed forms summed by class, computed once per varpar
            cache: dict = {}

            def _at(varpar: np.ndarray) -> tuple:
                v = np.asarray(varpar, dtype=float)
                key = v.tobytes()
                if key not in cache:
                    cache.clear()
                    # at θ̂ the pieces of the optimiser's last evaluation are at hand
                    kept = None if p2 is None else pooled2.kept_at(p2, v[:-1])
                    core = None if kept is None else batched.core_of_pieces(
                        pooled, kept.lam, kept.N, kept.XtVX, kept.beta0, kept.pwrss)
                    with np.errstate(all="ignore"):
                        cache[key] = batched.varpar_derivatives(pooled, v, reml, core=core)
                return cache[key]

            def grad(varpar: np.ndarray) -> np.ndarray:
                return _at(varpar)[0]

            def hess(varpar: np.ndarray) -> np.ndarray:
                return _at(varpar)[1]

            def jac(varpar: np.ndarray) -> np.ndarray:
                return _at(varpar)[2]
        elif block_inference.supports(lay):  # closed forms (the nested layout keeps differences)

            def hess(varpar: np.ndarray) -> np.ndarray:
                with blas_threads():
                    return block_inference.hessian_varpar(stats, lay, varpar, reml)

            def jac(varpar: np.ndarray) -> np.ndarray:
                with blas_threads():
                    return block_inference.jacobian_vcov_varpar(stats, lay, varpar)

        out = _ModesOnDemand(
            engine=self.name, reml=reml, theta=theta, beta=ev.beta.copy(), sigma=sigma,
            vcov_beta=vcov, objective=float(f), converged=converged, messages=messages,
            optimizer=optimizer, n_evaluations=nev[0],
            devfun_varpar=devfun_varpar, vcov_varpar=vcov_varpar, hessian_varpar=hess,
            jacobian_vcov_varpar=jac, gradient_varpar=grad,
            pwrss=float(ev.pwrss), internals=FastInternals(stats, lay),
            n_classes=None if classes is None else int(classes.count.size),
            optimizer_message=opt_message, n_iterations=n_iter)
        out._pending = modes
        return out


class _ModesOnDemand(EngineResult):
    """An EngineResult whose conditional modes (``blups``, ``blup_condvar``: one per-group pass
    over every group) are computed when first read, with the values they would have had; a fit
    whose caller wants only the fixed effects never pays for them. Assigning either attribute
    first resolves the pending pass."""

    _pending = None

    def _resolve(self) -> None:
        fn = self.__dict__.pop("_pending", None)
        if fn is not None:
            self.__dict__["_blups"], self.__dict__["_blup_condvar"] = fn()

    @property
    def blups(self) -> list[np.ndarray]:
        self._resolve()
        return self.__dict__.get("_blups", [])

    @blups.setter
    def blups(self, value: list[np.ndarray]) -> None:
        self._resolve()
        self.__dict__["_blups"] = value

    @property
    def blup_condvar(self) -> list[np.ndarray] | None:
        self._resolve()
        return self.__dict__.get("_blup_condvar")

    @blup_condvar.setter
    def blup_condvar(self, value: list[np.ndarray] | None) -> None:
        self._resolve()
        self.__dict__["_blup_condvar"] = value


def _quasi_newton(fg, pooled, theta0: np.ndarray, reml: bool, lay: Layout, maxiter: int,
                  gtol: float = 1e-6, fg0: tuple | None = None, grads=None
                  ) -> tuple[np.ndarray, int, float] | None:
    """Minimise the profiled criterion by BFGS started from its Hessian at θ0: (θ̂, iterations,
    the criterion at θ̂), or None.

    The start's Hessian: forward differences of the analytic gradient for up to three θ (*grads*
    gives the gradients at several θ in one pass), else the closed form (``batched``); *fg0*
    is (f, g) at θ0 when already evaluated.

    θ is left unconstrained: changing the sign of a column of Λ leaves ΛΛᵀ and the criterion
    unchanged, so a step past a diagonal's bound of 0 lands on a mirror image of a feasible point
    and an optimum at 0 is an interior stationary point. At the end every column with a negative
    diagonal changes sign (lme4's θ, diagonal ≥ 0).
    """
    x = theta0.copy()
    f, g = fg(x) if fg0 is None else fg0
    if not np.isfinite(f) or f >= 1e300:
        return None
    # up to three θ (q ≤ 2) the gradient's differences cost less than the closed form
    Hp = _start_hessian(grads, x, g) if grads is not None and x.size <= 3 else None
    if Hp is None:  # more θ, or a difference left the criterion's domain: the closed form
        Hp = batched._profiled(batched._core_one(pooled, x[None], reml), pooled, reml)[2][0]
    if not math.isfinite(float(Hp.sum())):
        return None
    w, V, info = _syevd(Hp, compute_v=1, lower=1)  # NumPy's eigh, without its wrapper
    if info != 0:
        return None
    wl = [abs(v) for v in w.tolist()]
    floor = 1e-8 * max(max(wl), 1e-12)
    w = np.array([max(v, floor) for v in wl])
    # the loop runs on Python floats: with a handful of θ, NumPy's per-call overhead on 3-vectors
    # cost more than the criterion's own evaluation (same formulas as NumPy's BFGS update)
    Hinv = ((V / w) @ V.T).tolist()
    k = x.size
    dot = _dot3 if k == 3 else _dot  # (q = 2: the usual size) the same sums, unrolled
    x = x.tolist()
    g = np.asarray(g, dtype=float).tolist()
    rk = range(k)
    converged = False
    it = 0
    for it in range(1, maxiter + 1):  # noqa: B007
        if max(map(abs, g)) < gtol:
            converged = True
            break
        d = [-dot(Hi, g) for Hi in Hinv]
        if not dot(g, d) < 0:
            Hinv = [[float(i == j) for j in rk] for i in rk]
            d = [-v for v in g]
        # a step of at most a quarter of the scale of θ: far from the optimum the criterion is
        # not convex and a full Newton step can overshoot by an order of magnitude (a diagonal
        # θ thrown onto its symmetry point 0, where the gradient vanishes, costs many steps;
        # 0.25 took 25-35 % fewer evaluations than 0.5 on the benchmark clinics, 60-10,000
        # patients)
        cap = 0.25 * max(1.0, max(map(abs, x)))
        big = max(map(abs, d))
        if big > cap:
            d = [v * (cap / big) for v in d]
        slope = dot(g, d)
        t = 1.0
        for _ in range(50):
            xn = [x[j] + t * d[j] for j in rk]
            fn, gn = fg(np.array(xn))
            if fn <= f + 1e-4 * t * slope:
                break
            # next to the optimum the decrease is below the criterion's rounding: a trial within
            # rounding of f whose gradient already meets gtol is taken (backtracking from it
            # only re-evaluates the same point)
            if abs(fn - f) <= 1e-14 * max(1.0, abs(f)) and float(np.abs(gn).max()) < gtol:
                break
            if math.isfinite(fn) and fn < 1e300:
                tq = _line_min(f, slope, fn, dot(np.asarray(gn, dtype=float).tolist(), d), t)
                t = min(max(tq, 0.1 * t), 0.5 * t)  # in [t/10, t/2]
            else:
                t /= 2
        else:
            converged = max(map(abs, g)) < 1e-3  # no descent left: rounding level
            break
        gn = np.asarray(gn, dtype=float).tolist()
        sv = [xn[j] - x[j] for j in rk]
        yv = [gn[j] - g[j] for j in rk]
        sy = dot(sv, yv)
        if sy > 1e-12 * math.sqrt(dot(sv, sv)) * math.sqrt(dot(yv, yv)):
            rho = 1.0 / sy
            Hy = [dot(Hi, yv) for Hi in Hinv]
            cc = rho * rho * dot(yv, Hy) + rho
            Hinv = [[Hinv[i][j] - rho * (sv[i] * Hy[j] + Hy[i] * sv[j]) + cc * sv[i] * sv[j]
                     for j in rk] for i in rk]
        small = abs(f - fn) <= 1e-15 * max(1.0, abs(f)) and max(map(abs, sv)) < 1e-10
        x, f, g = xn, fn, gn
        if small:
            converged = True
            break
    x = np.array(x)
    if not converged:
        return None
    for j, (_, r, c) in enumerate(lay.theta_pos):
        if r == c and x[j] < 0:
            col = [i for i, (_, _, c2) in enumerate(lay.theta_pos) if c2 == c]
            x[col] = -x[col]
    return x, it, f


def _line_min(f0: float, s0: float, f1: float, s1: float, t: float) -> float:
    """The minimiser in t of the cubic through f0, slope s0 at 0 and f1, slope s1 at *t*
    (Nocedal & Wright, eq. 3.59), or of the quadratic through f0, s0 and f1 where the cubic has
    no minimum or its slopes are not finite. BFGS's backtracking: a rejected trial's gradient
    comes with its criterion, and the cubic's step took 11 evaluations fewer than the
    quadratic's over the benchmark clinics (1,358 -> 1,347: 32 sizes × 4 formulas) and one
    fewer at the 200-patient benchmark fit (θ̂ within 6e-10)."""
    if math.isfinite(s1):
        d1 = s0 + s1 - 3.0 * (f1 - f0) / t
        disc = d1 * d1 - s0 * s1
        if disc >= 0.0:
            d2 = math.sqrt(disc)
            den = s1 - s0 + 2.0 * d2
            if den != 0.0:
                tc = t - t * (s1 + d2 - d1) / den
                if math.isfinite(tc):
                    return tc
    return -s0 * t * t / (2.0 * (f1 - f0 - s0 * t))


def _start_hessian(grads, x: np.ndarray, g) -> np.ndarray | None:
    """The Hessian of the criterion at *x* by forward differences of its analytic gradient
    (step 1e-4 of each θ's scale; *grads* gives the gradients at several θ, the rows of its
    argument, or None), or None where a step leaves the criterion's domain. Only BFGS's start:
    the k gradients, stacked in one pass (:func:`pooled2.gradients`), cost about a third of the
    closed-form Hessian in (θ, σ) (``batched._profiled``) at k = 3 and took as many iterations
    on the benchmark clinics (60-5,000 patients, four random-effect structures)."""
    h = 1e-4 * np.maximum(1.0, np.abs(x))
    G = grads(x[None] + np.diag(h))
    if G is None:
        return None
    H = (G - np.asarray(g, dtype=float)).T / h  # column j: (g(x + h_j e_j) − g(x)) / h_j
    return 0.5 * (H + H.T)


def _dot(u: list, v: list) -> float:
    """Σ uᵢvᵢ of two short lists of floats (the terms in order, as the generator sum it replaces:
    the same value, a third of the interpreter's work)."""
    return sum(map(operator.mul, u, v))


def _dot3(u: list, v: list) -> float:
    """:func:`_dot` of two lists of three floats, unrolled (the same sum in the same order)."""
    return u[0] * v[0] + u[1] * v[1] + u[2] * v[2]


def _moment_start(cl: _Classes, stats: Stats, lay: Layout) -> np.ndarray | None:
    """θ from the classes' moments (:func:`moment_start.moment_theta`), or None."""
    K, q, m = cl.Ck.shape[0], lay.q_inner, stats.p + 1
    U = cl.omega_flat.reshape(K, q, q, m, m)[:, :, :, m - 1, m - 1]
    blocks = [(o, b) for o, b, lev in zip(lay.block_offset, lay.block_q, lay.block_level)
              if lev == 0]
    return moment_theta(cl.Ck, cl.count, U, cl.yty0, stats.n, stats.p, blocks,
                        [(r, c) for (_, r, c) in lay.theta_pos])


def _fd_gradient(f, th: np.ndarray, f0: float, lower: np.ndarray) -> np.ndarray:
    """Central differences, one-sided at a lower bound of 0."""
    g = np.empty_like(th)
    for k in range(th.size):
        h = 1e-6 * max(1.0, abs(th[k]))
        up = th.copy()
        up[k] += h
        if lower[k] == 0.0 and th[k] - h < 0.0:
            g[k] = (f(up) - f0) / h
        else:
            dn = th.copy()
            dn[k] -= h
            g[k] = (f(up) - f(dn)) / (2 * h)
    return g


def _blups(ev: _Eval, lay: Layout, sigma: float) -> tuple[list, list]:
    """Conditional modes b = Λû and conditional covariances σ² Λ (A⁻¹)_blk Λᵀ, per spec block."""
    pt = ev.parts
    u, uh = _modes(ev, lay)
    lg, lh = pt["lg"], pt["lh"]
    bg = _lmul(lg, u)  # (qg, G)
    L = pt["L"]
    qg = lay.q_inner
    eye = np.broadcast_to(np.eye(qg)[:, :, None], (qg, qg, L.shape[2])).copy()
    Linv = _fsolve(L, eye)  # L⁻¹ (qg, qg, G)
    Ainv = np.einsum("kag,kbg->abg", Linv, Linv)
    bh = None
    Sinv = None
    if lay.q_outer:
        Lh = pt["Lh"]
        qh = lay.q_outer
        eyeh = np.broadcast_to(np.eye(qh)[:, :, None], (qh, qh, Lh.shape[2])).copy()
        Lhinv = _fsolve(Lh, eyeh)
        Sinv = np.einsum("kag,kbg->abg", Lhinv, Lhinv)
        # (A⁻¹)_ii = L_i⁻ᵀL_i⁻¹ + L_i⁻ᵀ W_i S_h⁻¹ W_iᵀ L_i⁻¹
        T = _bsolve(L, pt["W"])  # L⁻ᵀ W (qg, qh, G)
        Sg = Sinv[:, :, pt["og"]]
        Ainv = Ainv + np.einsum("akg,klg,blg->abg", T, Sg, T)
        bh = _lmul(lh, uh)
    cv_g = sigma ** 2 * _lt_c_l(lg.T, Ainv, lg.T)  # Λ A⁻¹ Λᵀ
    cv_h = None if Sinv is None else sigma ** 2 * _lt_c_l(lh.T, Sinv, lh.T)
    blups, condvar = [], []
    for k in range(len(lay.block_level)):
        lev, off, q = lay.block_level[k], lay.block_offset[k], lay.block_q[k]
        bb, cv = (bg, cv_g) if lev == 0 else (bh, cv_h)
        sl = slice(off, off + q)
        blups.append(np.ascontiguousarray(bb[sl].T))
        condvar.append(np.ascontiguousarray(cv[sl, sl].transpose(2, 0, 1)))
    return blups, condvar


ENGINE = register_engine(FastEngine())
