"""Crossed and nested random effects out of memory: the sparse engine's Gram blocks, aggregated.

The sparse engine (``models.sparse``) needs the rows only to form the Gram matrix of [Z X y] once;
every evaluation after that works on it. That matrix is made of sums over the rows of products of
model-matrix columns, grouped by the levels they meet:

- per level of each grouping factor: ZₖᵀZₖ, ZₖᵀX, Zₖᵀy (for the patient, the fast engine's
  per-patient statistics);
- per pair of levels of two factors that share rows (a patient and a therapist who saw them):
  ZₖᵀZₖ' — sparse, one entry per pair seen;
- XᵀX, Xᵀy, yᵀy and n.

All of them are sums over the *cells* of the data (the distinct combinations of the factors'
levels), so one ``GROUP BY`` of every factor inside DuckDB — or per Dask partition, summed in a
tree: no shuffle — gives a cell table of at most one row per patient and therapist seen together,
from which the blocks are added up here. :func:`gram_model` then builds the sparse engine's
``Structure`` from them (in the engine's basis: X replaced by Q = XR⁻¹ with XᵀX = RᵀR, y by its
residual from X) and :func:`fit_gram` fits with the engine's own optimiser, modes and
Satterthwaite df: the same model as ``fit_mixed`` on the rows in memory.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pandas as pd
import scipy.linalg as sla
import scipy.sparse as sp

from mfr_outcomes.models.sparse import SparseModel
from mfr_outcomes.models.sparse_struct import Structure, assemble_structure, factors_of

__all__ = ["Gram", "random_groups", "cell_columns", "cells_sql", "frame_cells", "merge_cells",
           "gram_from_cells", "gram_model", "fit_gram"]


@dataclass
class Gram:
    """The Gram blocks of [Z X y], by grouping factor (plain column names, ``groups``).

    ``q[k]`` random columns of factor k (its terms, in the reference spec's block order);
    ``labels[k]`` its levels (sorted as text), ``rows[k]`` readings per level, ``ZtZ[k]``
    (q, q, L), ``ZtX[k]`` (q, p, L), ``Zty[k]`` (q, L); ``cross[(k, k')]`` for k < k' the
    level codes of the pairs seen and ZₖᵀZₖ' per pair (q_k, q_k', pairs).
    """

    groups: list[str]
    q: list[int]
    labels: list[pd.Index]
    rows: list[np.ndarray]
    ZtZ: list[np.ndarray]
    ZtX: list[np.ndarray]
    Zty: list[np.ndarray]
    cross: dict[tuple[int, int], tuple[np.ndarray, np.ndarray, np.ndarray]]
    XtX: np.ndarray
    Xty: np.ndarray
    yty: float
    n: int
    excluded: int = 0


def random_groups(ref: Any) -> tuple[list[str], list[int]]:
    """The grouping factors of a spec in order of first appearance, and the factor of each of
    its random columns (blocks in order, terms in order); a ValueError for a grouping factor
    that is not a plain column (``a:b``, ``a/b``)."""
    groups: list[str] = []
    owner: list[int] = []
    for b in ref.blocks:
        if ":" in b.group or "/" in b.group:
            raise ValueError(f"out of memory, grouping factors must be plain columns; "
                             f"{b.group!r} is an interaction (make it one column first)")
        if b.group not in groups:
            groups.append(b.group)
        owner += [groups.index(b.group)] * b.q
    return groups, owner


def cell_columns(q_total: int, p: int) -> list[tuple[str, str, int, int]]:
    """The sums of a cell: (name, kind, i, j) with kind zz (zᵢzⱼ, i ≤ j), zx, zy, n."""
    out = [(f"zz_{a}_{b}", "zz", a, b) for a in range(q_total) for b in range(a, q_total)]
    out += [(f"zx_{a}_{j}", "zx", a, j) for a in range(q_total) for j in range(p)]
    out += [(f"zy_{a}", "zy", a, 0) for a in range(q_total)]
    return out + [("n_rows", "n", 0, 0)]


def cells_sql(n_groups: int, q_total: int, p: int) -> tuple[str, str, str]:
    """(keys, cell aggregates, global aggregates) as SQL over a relation with columns g0..,
    y, x0.., z0..: ``GROUP BY keys`` gives the cell table, the global ones XᵀX, Xᵀy, yᵀy, n."""
    keys = ", ".join(f"g{k}" for k in range(n_groups))
    expr = {"zz": "z{i} * z{j}", "zx": "z{i} * x{j}", "zy": "z{i} * y"}
    sums = [f"SUM({expr[k].format(i=i, j=j)}) AS {name}" if k != "n" else f"COUNT(*) AS {name}"
            for name, k, i, j in cell_columns(q_total, p)]
    glob = [f"SUM(x{a} * x{b})" for a in range(p) for b in range(a, p)] + \
        [f"SUM(x{a} * y)" for a in range(p)] + ["SUM(y * y)", "COUNT(*)"]
    return keys, f"{keys}, {', '.join(sums)}", ", ".join(glob)


def global_from_row(row: Any, p: int) -> tuple[np.ndarray, np.ndarray, float, int]:
    """XᵀX, Xᵀy, yᵀy, n from the global query's one row."""
    XtX = np.zeros((p, p))
    k = 0
    for a in range(p):
        for b in range(a, p):
            XtX[a, b] = XtX[b, a] = row[k] or 0.0
            k += 1
    Xty = np.array([v or 0.0 for v in row[k:k + p]], dtype=float)
    return XtX, Xty, float(row[k + p] or 0.0), int(row[k + p + 1])


def frame_cells(frame: pd.DataFrame, ref: Any) -> tuple[pd.DataFrame, tuple]:
    """The cell table and global sums of one chunk of rows (any split: a Dask partition)."""
    from mfr_outcomes.scale.chunks import chunk_arrays

    groups, _owner = random_groups(ref)
    a = chunk_arrays(ref, frame)
    X, y, Z = a["X"], a["y"], a["Z"]
    p, qt = X.shape[1], Z.shape[1]
    cols: dict[str, Any] = {f"g{k}": a["frame"][g].astype(str).to_numpy()
                            for k, g in enumerate(groups)}
    for name, kind, i, j in cell_columns(qt, p):
        cols[name] = (Z[:, i] * Z[:, j] if kind == "zz" else Z[:, i] * X[:, j] if kind == "zx"
                      else Z[:, i] * y if kind == "zy" else np.ones(len(y), np.int64))
    keys = [f"g{k}" for k in range(len(groups))]
    cells = pd.DataFrame(cols).groupby(keys, sort=False).sum().reset_index()
    glob = (X.T @ X, X.T @ y, float(y @ y), len(y), a["excluded"])
    return cells, glob


def merge_cells(parts: list[tuple[pd.DataFrame, tuple]]) -> tuple[pd.DataFrame, tuple]:
    """Cell tables and global sums of several chunks added up (the reduce step)."""
    cells = pd.concat([c for c, _ in parts], ignore_index=True)
    keys = [c for c in cells.columns if c.startswith("g") and c[1:].isdigit()]
    cells = cells.groupby(keys, sort=False).sum().reset_index()
    glob = tuple(sum(g[i] for _, g in parts) for i in range(5))
    return cells, glob


def gram_from_cells(cells: dict[str, np.ndarray], glob: tuple, ref: Any) -> Gram:
    """The Gram blocks from a cell table (columns g0.., then :func:`cell_columns`)."""
    groups, owner = random_groups(ref)
    owner_a = np.asarray(owner)
    p = ref.p
    qt = len(owner)
    XtX, Xty, yty, n, excluded = glob
    codes, labels = [], []
    for k in range(len(groups)):
        lab, cod = np.unique(np.asarray(cells[f"g{k}"]).astype(str), return_inverse=True)
        codes.append(cod.astype(np.int64))
        labels.append(pd.Index(lab, dtype=object))
    n_rows = np.asarray(cells["n_rows"], dtype=float)
    zz = {(i, j): np.asarray(cells[f"zz_{i}_{j}"], float) for i in range(qt)
          for j in range(i, qt)}
    out = Gram(groups=groups, q=[], labels=labels, rows=[], ZtZ=[], ZtX=[], Zty=[], cross={},
               XtX=np.asarray(XtX, float), Xty=np.asarray(Xty, float), yty=float(yty), n=int(n),
               excluded=int(excluded))
    for k in range(len(groups)):
        cols = np.flatnonzero(owner_a == k)
        L, c = len(labels[k]), codes[k]
        out.q.append(len(cols))
        out.rows.append(np.bincount(c, n_rows, minlength=L).astype(np.int64))
        ztz = np.empty((len(cols), len(cols), L))
        for a, ia in enumerate(cols):
            for b, ib in enumerate(cols):
                ztz[a, b] = np.bincount(c, zz[min(ia, ib), max(ia, ib)], minlength=L)
        out.ZtZ.append(ztz)
        out.ZtX.append(np.stack([np.stack([np.bincount(
            c, np.asarray(cells[f"zx_{ia}_{j}"], float), minlength=L) for j in range(p)])
            for ia in cols]) if p else np.zeros((len(cols), 0, L)))
        out.Zty.append(np.stack([np.bincount(c, np.asarray(cells[f"zy_{ia}"], float),
                                             minlength=L) for ia in cols]))
    for k in range(len(groups)):
        for k2 in range(k + 1, len(groups)):
            pair, inv = np.unique(np.column_stack([codes[k], codes[k2]]), axis=0,
                                  return_inverse=True)
            inv = inv.ravel()
            ck, ck2 = np.flatnonzero(owner_a == k), np.flatnonzero(owner_a == k2)
            v = np.empty((len(ck), len(ck2), len(pair)))
            for a, ia in enumerate(ck):
                for b, ib in enumerate(ck2):
                    v[a, b] = np.bincount(inv, zz[min(ia, ib), max(ia, ib)],
                                          minlength=len(pair))
            out.cross[(k, k2)] = (pair[:, 0].astype(np.int64), pair[:, 1].astype(np.int64), v)
    return out


def _rowfree_spec(ref: Any, gram: Gram) -> Any:
    """The reference spec with the full data's levels, no rows, blocks in lme4's order (by
    decreasing number of levels, stable), as ``build_spec`` orders them on the rows."""
    from mfr_outcomes.models.spec import RandomBlock
    from mfr_outcomes.scale.rowfree import RowFreeSpec

    blocks = []
    for b in ref.blocks:
        k = gram.groups.index(b.group)
        codes = np.repeat(np.arange(len(gram.labels[k]), dtype=np.int64), gram.rows[k])
        blocks.append(RandomBlock(group=b.group, terms=list(b.terms), Z=np.zeros((0, b.q)),
                                  codes=codes, levels=gram.labels[k], correlated=b.correlated))
    blocks.sort(key=lambda b: -b.n_levels)
    return RowFreeSpec(formula=ref.formula, response=ref.response, y=np.zeros(0),
                       X=np.zeros((0, ref.p)), fixed_names=list(ref.fixed_names), blocks=blocks,
                       data=pd.DataFrame(), design=ref.design, fixed_formula=ref.fixed_formula,
                       notes=list(ref.notes), n_rows=int(gram.n))


class GramModel(SparseModel):
    """A :class:`~mfr_outcomes.models.sparse.SparseModel` whose Gram matrix was aggregated
    elsewhere (no rows): the structure comes from :func:`gram_model`, and Zᵀ(y − Xβ) for the
    modes from the stored ZᵀX and Zᵀy."""

    def __init__(self, spec: Any, st: Structure, R: np.ndarray, qty: np.ndarray,
                 zx1: np.ndarray, zy1: np.ndarray, zxr: np.ndarray, zyr: np.ndarray) -> None:
        self.spec = spec
        self.n, self.p = spec.n, spec.p
        self._R, self._Q, self.st_y = R, None, None
        self._beta_ols = sla.solve_triangular(R, qty, check_finite=False)
        self._ldR2 = 2.0 * float(np.sum(np.log(np.abs(np.diag(R)))))
        self._zx1, self._zy1, self._zxr, self._zyr = zx1, zy1, zxr, zyr
        self._setup(st)

    def _z_resid(self, beta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self._zy1 - np.einsum("apl,p->al", self._zx1, beta), self._zyr - self._zxr @ beta


def gram_model(gram: Gram, ref: Any) -> tuple[GramModel, Any]:
    """The sparse engine's model of *ref*'s formula on the data *gram* summarises, and the
    row-free spec it belongs to."""
    spec = _rowfree_spec(ref, gram)
    light = replace(spec, blocks=[replace(b, codes=np.zeros(0, np.int64)) for b in spec.blocks])
    factors = factors_of(light)  # theta positions and amalgamation, largest first
    p = ref.p
    if gram.n <= p:
        raise ValueError(f"there are {gram.n} observations for {p} fixed effects")
    try:
        R = np.linalg.cholesky(gram.XtX).T  # XᵀX = RᵀR
    except np.linalg.LinAlgError:
        raise ValueError("the fixed-effects model matrix is rank deficient on the full data "
                         "(a column is a combination of others); fit a sample in memory to see "
                         "which") from None
    qty = sla.solve_triangular(R, gram.Xty, trans="T", check_finite=False)  # Qᵀy
    yres2 = gram.yty - float(qty @ qty)

    def basis(k: int) -> tuple[np.ndarray, np.ndarray]:
        """ZₖᵀQ (q, p, L) and Zₖᵀ(y − QQᵀy) (q, L)."""
        zx = gram.ZtX[k]
        q, _, L = zx.shape
        flat = zx.transpose(0, 2, 1).reshape(q * L, p)
        zq = sla.solve_triangular(R, flat.T, trans="T", check_finite=False).T
        zq = zq.reshape(q, L, p).transpose(0, 2, 1)
        return zq, gram.Zty[k] - np.einsum("apl,p->al", zq, qty)

    idx = {g: k for k, g in enumerate(gram.groups)}
    first, rest = factors[0], factors[1:]
    offsets, mZ = [], 0
    for f in rest:
        offsets.append(mZ)
        mZ += f.size
    m = mZ + p + 1
    q1, k1 = first.q, idx[first.group]
    Arr = np.zeros((m, m))
    Arr[mZ:mZ + p, mZ:mZ + p] = np.eye(p)
    Arr[-1, -1] = yres2
    zxr, zyr = np.zeros((mZ, p)), np.zeros(mZ)
    for f, off in zip(rest, offsets):
        k = idx[f.group]
        zq, zy = basis(k)
        rows = off + np.arange(f.n_levels)[:, None] * f.q + np.arange(f.q)[None, :]  # (L, q)
        for a in range(f.q):
            for b in range(f.q):
                Arr[rows[:, a], rows[:, b]] = gram.ZtZ[k][a, b]
            Arr[rows[:, a], mZ:mZ + p] = zq[a].T
            Arr[mZ:mZ + p, rows[:, a]] = zq[a]
            Arr[rows[:, a], -1] = Arr[-1, rows[:, a]] = zy[a]
            zxr[rows[:, a]] = gram.ZtX[k][a].T
            zyr[rows[:, a]] = gram.Zty[k][a]
    for (i, f), oi in zip(enumerate(rest), offsets):
        for f2, oj in zip(rest[i + 1:], offsets[i + 1:]):
            ci, cj, v = _cross(gram, idx[f.group], idx[f2.group])
            for a in range(f.q):
                for b in range(f2.q):
                    r, s = oi + ci * f.q + a, oj + cj * f2.q + b
                    Arr[r, s] = Arr[s, r] = v[a, b]
    zq1, zy1 = basis(k1)
    Bx = np.concatenate([zq1, zy1[:, None, :]], axis=1)  # (q1, p + 1, ℓ1)
    # Z_restᵀZ_1: per level of the first factor, the rest's rows it meets
    lev, rr, vals = [], [], []
    for f, off in zip(rest, offsets):
        c1, ck, v = _cross(gram, k1, idx[f.group])  # v (q1, q_k, pairs)
        for b in range(f.q):
            lev.append(c1)
            rr.append(off + ck * f.q + b)
            vals.append(v[:, b, :].T)
    lev_z = np.concatenate(lev) if lev else np.zeros(0, np.int64)
    r_z = np.concatenate(rr) if rr else np.zeros(0, np.int64)
    Bz = np.concatenate(vals) if vals else np.zeros((0, q1))
    del lev, rr, vals
    order = np.lexsort((r_z, lev_z))
    st = assemble_structure(n=gram.n, p=p, first=first, rest=rest, rest_offset=offsets,
                            A11=gram.ZtZ[k1], Arr=Arr, Vz=sp.csr_matrix((0, mZ)), Bx=Bx,
                            lev=lev_z[order], rows=r_z[order], Bvals=Bz[order])
    model = GramModel(spec, st, R, qty, gram.ZtX[k1], gram.Zty[k1], zxr, zyr)
    return model, spec


def _cross(gram: Gram, k: int, k2: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Codes of factor k, of factor k2, and ZₖᵀZₖ₂ (q_k, q_k2, pairs) of the pairs seen."""
    if k < k2:
        return gram.cross[(k, k2)]
    c2, c1, v = gram.cross[(k2, k)]
    return c1, c2, v.transpose(1, 0, 2)


def fit_gram(gram: Gram, ref: Any, *, reml: bool, df_method: str, options: dict | None,
             notes: list[str]) -> Any:
    """The sparse engine's fit of *ref*'s formula from the Gram blocks (BLUPs included)."""
    from mfr_outcomes.models.fit import MixedFit
    from mfr_outcomes.models.sparse import MAX_TRAILING, SparseEngine

    if df_method == "kenward-roger":
        raise ValueError("Kenward-Roger df need the rows in memory; use satterthwaite")
    model, spec = gram_model(gram, ref)
    n_re = sum(b.q * b.n_levels for b in spec.blocks)
    if spec.n <= n_re:
        raise ValueError(f"number of observations ({spec.n}) is not larger than the number of "
                         f"random effects ({n_re}): the residual variance is not identifiable")
    if model.st.m > MAX_TRAILING:
        raise ValueError(f"after the largest grouping factor the other factors and X make a "
                         f"dense block of {model.st.m} columns; the sparse engine handles at "
                         f"most {MAX_TRAILING}")
    result = SparseEngine().fit(spec, reml=reml, options=options, model=model)
    if gram.excluded:
        notes.append(f"{gram.excluded} row(s) with a missing value in the model's variables "
                     f"excluded")
    notes.append("BLUPs (conditional modes) computed from the Gram blocks; fitted values, "
                 "residuals and Kenward-Roger df need the rows and are not computed")
    fit = MixedFit(spec, result, reml=reml, df_method=df_method,
                   engine_reason="sparse: Gram blocks of [Z X y] aggregated out of memory")
    fit.notes = notes
    fit.diagnostics["notes"] = list(notes)
    return fit
