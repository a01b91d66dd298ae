"""Model-matrix rows of any chunk of data, and the fast engine's statistics of a chunk.

One reference :class:`~mfr_outcomes.models.spec.ModelSpec` (built on a sample that holds every
level of every factor) fixes the design; each chunk (a Dask partition, a batch of rows) is then
turned into y, X, Z and group codes with the same columns. This module is the one place to switch
to the row-free ``Design`` of the model layer when it lands (``chunk_arrays``).

Chunks are split by patient: every row of a patient is in one chunk, so the per-patient
statistics of chunks are concatenated, and the global ones summed (:func:`merge`).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pandas as pd

from mfr_outcomes.models.spec import ModelSpec

__all__ = [
    "ChunkStats",
    "group_names",
    "single_group",
    "reference_spec",
    "factors_of",
    "with_categories",
    "chunk_arrays",
    "chunk_stats",
    "merge",
    "to_engine",
    "chunk_blups",
    "stats_blups",
]


@dataclass
class ChunkStats:
    """Sufficient statistics of a set of whole patients (per-patient arrays, group axis last)."""

    n: int
    XtX: np.ndarray
    Xty: np.ndarray
    yty: float
    ZtZ: np.ndarray  # (q, q, G)
    ZtX: np.ndarray  # (q, p, G)
    Zty: np.ndarray  # (q, G)
    rows: np.ndarray  # (G,) readings per patient
    excluded: int = 0  # rows with a missing value in a used variable
    labels: Any = None  # group labels (pd.Index) in the order of the group axis, when known


def group_names(formula: str) -> list[str]:
    """The grouping factors of *formula*'s random terms, sorted."""
    from mfr_outcomes.models.formula import parse_formula

    return sorted({t.group.strip() for t in parse_formula(formula).random})


def single_group(formula: str) -> str:
    """The one grouping factor of *formula*; ValueError naming the others when there are more."""
    groups = group_names(formula)
    if len(groups) != 1 or ":" in groups[0] or "/" in groups[0]:
        raise ValueError(f"out of memory, the fast engine fits random terms on one grouping "
                         f"factor; {formula!r} has {', '.join(groups) or 'none'}")
    return groups[0]


def reference_spec(sample: pd.DataFrame, formula: str) -> ModelSpec:
    """The design every chunk is coded with: ``build_spec`` on a sample holding every level."""
    from mfr_outcomes.models.formula import build_spec

    return build_spec(sample, formula)


def with_categories(frame: pd.DataFrame, categories: dict[str, list[str]] | None
                    ) -> pd.DataFrame:
    """*frame* with the columns of *categories* (column -> levels in order) as categoricals, so
    that a design built on it takes the first level as the reference."""
    for col, levels in (categories or {}).items():
        if col in frame.columns:
            frame[col] = pd.Categorical(frame[col].astype(object), categories=list(levels))
    return frame


def factors_of(ref: ModelSpec) -> list[str]:
    """The factor columns of a design (their levels must all be in the reference sample)."""
    return list(ref.design.categories)


def chunk_arrays(ref: ModelSpec, frame: pd.DataFrame) -> dict[str, Any]:
    """y, X, Z (all random columns, block order), group codes and labels of one chunk."""
    design = ref.design
    used = list(design.variables)
    keep = frame[used].notna().all(axis=1).to_numpy()
    df = frame.loc[keep]
    y = df[ref.response].to_numpy(dtype=float)
    X = design.fixed_matrix(df) if len(df) else np.zeros((0, ref.p))
    zs = design.random_matrices(df) if len(df) else []
    Z = np.column_stack(zs) if zs else np.zeros((len(df), 0))
    codes, labels = pd.factorize(df[ref.blocks[0].group].astype(str), sort=True)
    return {"y": y, "X": X, "Z": Z, "codes": codes.astype(np.int64), "labels": labels,
            "excluded": int((~keep).sum()), "frame": df}


def chunk_stats(frame: pd.DataFrame, ref: ModelSpec) -> ChunkStats:
    """Statistics of one chunk of whole patients (the map step)."""
    from mfr_outcomes.models.fast import sufficient_statistics

    a = chunk_arrays(ref, frame)
    G = len(a["labels"])
    st = sufficient_statistics({"y": a["y"], "X": a["X"], "Z": a["Z"], "codes": a["codes"],
                                "n_groups": G})
    return ChunkStats(n=st.n, XtX=st.XtX, Xty=st.Xty, yty=st.yty, ZtZ=st.ZtZ, ZtX=st.ZtX,
                      Zty=st.Zty, rows=np.bincount(a["codes"], minlength=G),
                      excluded=a["excluded"], labels=pd.Index(a["labels"]))


def merge(parts: list[ChunkStats]) -> ChunkStats:
    """Statistics of the union of chunks of disjoint patients (the reduce step)."""
    parts = [p for p in parts if p is not None]
    return ChunkStats(
        n=sum(p.n for p in parts), XtX=sum(p.XtX for p in parts), Xty=sum(p.Xty for p in parts),
        yty=float(sum(p.yty for p in parts)), ZtZ=np.concatenate([p.ZtZ for p in parts], axis=2),
        ZtX=np.concatenate([p.ZtX for p in parts], axis=2),
        Zty=np.concatenate([p.Zty for p in parts], axis=1),
        rows=np.concatenate([p.rows for p in parts]), excluded=sum(p.excluded for p in parts),
        labels=None if any(p.labels is None for p in parts) else
        pd.Index(np.concatenate([np.asarray(p.labels, dtype=object) for p in parts])))


def to_engine(stats: ChunkStats, ref: ModelSpec):
    """The fast engine's Stats and Layout for the merged statistics."""
    from mfr_outcomes.models.fast import Stats, layout_of

    lay, why = layout_of(ref)
    if lay is None:
        raise ValueError(f"the fast engine cannot fit this model: {why}")
    G = stats.Zty.shape[1]
    lay = replace(lay, inner_codes=np.zeros(0, np.int64), n_inner=G)
    eng = Stats(n=stats.n, XtX=stats.XtX, Xty=stats.Xty, yty=stats.yty, ZtZ=stats.ZtZ,
                ZtX=stats.ZtX, Zty=stats.Zty, outer_of=np.full(G, -1, np.int64))
    return eng, lay


def chunk_blups(frame: pd.DataFrame, ref: ModelSpec, theta: np.ndarray, beta: np.ndarray,
                sigma: float) -> pd.DataFrame:
    """Conditional modes and standard deviations of the patients of one chunk (second pass).

    Columns group, level, term, estimate, cond_sd (as ``MixedFit.random_effects``).
    """
    a = chunk_arrays(ref, frame)
    G = len(a["labels"])
    q = a["Z"].shape[1]
    r = a["y"] - a["X"] @ beta
    ZtZ = np.zeros((G, q, q))
    np.add.at(ZtZ, a["codes"], a["Z"][:, :, None] * a["Z"][:, None, :])
    Ztr = np.zeros((G, q))
    np.add.at(Ztr, a["codes"], a["Z"] * r[:, None])
    return _modes(ref, theta, sigma, ZtZ, Ztr, a["labels"])


def stats_blups(stats: ChunkStats, ref: ModelSpec, theta: np.ndarray, beta: np.ndarray,
                sigma: float) -> pd.DataFrame:
    """The same table from per-group statistics (Zᵢᵀr = Zᵢᵀy − ZᵢᵀXβ̂): no pass over rows."""
    ZtZ = np.moveaxis(stats.ZtZ, 2, 0)
    Ztr = (stats.Zty - np.einsum("qpg,p->qg", stats.ZtX, beta)).T
    labels = stats.labels if stats.labels is not None else pd.RangeIndex(ZtZ.shape[0])
    return _modes(ref, theta, sigma, ZtZ, Ztr, labels)


def _modes(ref: ModelSpec, theta: np.ndarray, sigma: float, ZtZ: np.ndarray, Ztr: np.ndarray,
           labels: Any) -> pd.DataFrame:
    """For group i: A = I + ΛᵀZᵢᵀZᵢΛ, b̂ = ΛA⁻¹ΛᵀZᵢᵀr, Var(b | y) = σ²ΛA⁻¹Λᵀ."""
    from mfr_outcomes.models.spec import block_lambda

    q = ZtZ.shape[1]
    lam = np.zeros((q, q))
    k = off = 0
    for b in ref.blocks:
        lam[off:off + b.q, off:off + b.q] = block_lambda(theta[k:k + b.n_theta], b.q)
        k += b.n_theta
        off += b.q
    A = lam.T @ ZtZ @ lam + np.eye(q)
    Ainv = np.linalg.inv(A)
    b = np.einsum("ij,gjk,lk,gl->gi", lam, Ainv, lam, Ztr)
    cv = sigma ** 2 * (lam @ Ainv @ lam.T)
    rows = []
    off = 0
    for blk in ref.blocks:
        for j, term in enumerate(blk.terms):
            c = off + j
            rows.append(pd.DataFrame({"group": blk.group, "level": list(labels),
                                      "term": term, "estimate": b[:, c],
                                      "cond_sd": np.sqrt(cv[:, c, c])}))
        off += blk.q
    return pd.concat(rows, ignore_index=True)
