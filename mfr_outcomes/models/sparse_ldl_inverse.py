"""The selected inverse of a sparse LDLᵀ factor: Ω⁻¹ on the pattern of L, never a dense inverse.

Takahashi, Fagan & Chen (1973): with Ω = (I + L) D (I + L)ᵀ, L strictly lower, Σ = Ω⁻¹ satisfies
(I + L)ᵀ Σ = D⁻¹(I + L)⁻¹, lower triangular. Read above the diagonal and on it, column i from the
last to the first, with J = struct(L[:, i]):

    Σ[J, i] = −Σ[J, J] L[J, i],        Σ[i, i] = 1/D_i − L[J, i]ᵀ Σ[J, i],

and every Σ[J, J] entry needed lies on the pattern of L (the elimination tree's closure), so the
recurrence computes Σ on that pattern only. It serves the conditional variances of the modes,
the diagonal level blocks of (Λ'Z'ZΛ + I)⁻¹ (lme4's ``condVar``).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

__all__ = ["SelectedInverse", "selected_inverse", "level_blocks"]


@dataclass
class SelectedInverse:
    """Σ = Ω⁻¹ (Ω in the factor's permuted order) on the strictly lower pattern of L (CSC,
    sorted rows) and its diagonal."""

    indptr: np.ndarray
    indices: np.ndarray
    data: np.ndarray
    diag: np.ndarray

    def entries(self, i: np.ndarray, j: np.ndarray) -> np.ndarray:
        """Σ[i, j] for permuted positions (i, j) on the pattern (or the diagonal)."""
        i, j = np.asarray(i, dtype=np.int64), np.asarray(j, dtype=np.int64)
        lo, hi = np.minimum(i, j), np.maximum(i, j)
        out = np.empty(i.shape)
        on = lo == hi
        out[on] = self.diag[lo[on]]
        off = ~on
        if off.any():
            n = self.diag.size
            keys = np.repeat(np.arange(n, dtype=np.int64), np.diff(self.indptr)) * n + \
                self.indices
            want = lo[off] * n + hi[off]
            pos = np.searchsorted(keys, want)
            pos = np.minimum(pos, keys.size - 1)
            if not np.all(keys[pos] == want):
                raise ValueError("an entry asked of the selected inverse is off the factor's "
                                 "pattern")
            out[off] = self.data[pos]
        return out


def selected_inverse(L: sp.csc_matrix, D: np.ndarray, max_pairs: int = 1 << 22,
                     min_tail: int = 200) -> SelectedInverse:
    """Ω⁻¹ on the pattern of the strictly lower unit factor *L* (Ω = (I + L) D (I + L)ᵀ).

    Column i needs Σ only in the columns of struct(L[:, i]), its ancestors in the elimination
    tree, so all columns at one depth of the tree are done at once (vectorised over the pairs
    (s, t) of each column's rows; at most *max_pairs* pairs at a time): the Python loop runs
    over depths, not columns. A (nearly) dense trailing block of at least *min_tail* columns
    is inverted densely first (``_dense_tail``).
    """
    L = sp.csc_matrix(L)
    L.sort_indices()
    n = D.size
    indptr, indices, lv_all = L.indptr.astype(np.int64), L.indices.astype(np.int64), L.data
    lens = np.diff(indptr)
    keys = np.repeat(np.arange(n, dtype=np.int64), lens) * n + indices
    data = np.zeros(indices.size)
    diag = np.empty(n)
    # the elimination tree: parent(i) = the first row below the diagonal in column i
    parent = np.where(lens > 0, indices[np.minimum(indptr[:-1], max(indices.size - 1, 0))], -1)
    depth = np.zeros(n, dtype=np.int64)
    par = parent.tolist()
    dl = depth.tolist()
    for i in range(n - 1, -1, -1):  # parent(i) > i: ancestors first
        if par[i] >= 0:
            dl[i] = dl[par[i]] + 1
    depth = np.asarray(dl, dtype=np.int64)
    t0, tail = _dense_tail(indptr, indices, lv_all, lens, D, n, data, diag,
                           min_size=min_tail)
    leaves = (lens == 0) & (np.arange(n) < t0)
    diag[leaves] = 1.0 / D[leaves]
    order = np.argsort(depth, kind="stable")
    order = order[~leaves[order] & (order < t0)]
    cuts = np.flatnonzero(np.diff(depth[order])) + 1
    for cols in np.split(order, cuts) if order.size else []:
        # chunks of columns with at most max_pairs pairs (a column alone may exceed it)
        pairs = np.cumsum(lens[cols] ** 2)
        start = 0
        while start < cols.size:
            stop = max(int(np.searchsorted(pairs, pairs[start] - lens[cols[start]] ** 2
                                           + max_pairs, side="right")), start + 1)
            _takahashi_columns(cols[start:stop], indptr, indices, lv_all, lens, keys, data,
                               diag, D, n, t0, tail)
            start = stop
    return SelectedInverse(indptr=indptr, indices=indices, data=data, diag=diag)


def _dense_tail(indptr: np.ndarray, indices: np.ndarray, lv_all: np.ndarray, lens: np.ndarray,
                D: np.ndarray, n: int, data: np.ndarray, diag: np.ndarray,
                min_size: int = 200, max_size: int = 5000, density: float = 0.5):
    """Σ on the trailing columns t0.. where the factor is (nearly) dense, by a dense inverse
    (LAPACK), written into *data* and *diag*; returns (t0, Σ_tail) or (n, None).

    Heavy fill (randomly crossed factors) leaves a dense trailing block whose pairs the
    recurrence would look up one by one; a dense triangular inverse does them at BLAS speed.
    """
    tot = np.cumsum(lens[::-1])[::-1]  # entries of L in columns j.. (all in rows > j)
    size = n - np.arange(n)
    full = size * (size - 1) / 2.0
    ok = (tot >= density * np.maximum(full, 1.0)) & (size <= max_size)
    cand = np.flatnonzero(ok)
    if cand.size == 0 or n - cand[0] < min_size:
        return n, None
    import scipy.linalg as sla

    t0 = int(cand[0])
    t = n - t0
    Lt = np.eye(t)
    cols = np.repeat(np.arange(t0, n), lens[t0:])
    ent = np.arange(indptr[t0], indptr[n])
    Lt[indices[ent] - t0, cols - t0] = lv_all[ent]
    Li = sla.solve_triangular(Lt, np.eye(t), lower=True, unit_diagonal=True,
                              check_finite=False, overwrite_b=True)
    del Lt  # the tail can be 5,000 columns: 200 MB a copy
    Li /= np.sqrt(D[t0:])[:, None]
    tail = Li.T @ Li  # (I + L)⁻ᵀ D⁻¹ (I + L)⁻¹ on the tail
    data[ent] = tail[indices[ent] - t0, cols - t0]
    diag[t0:] = np.diag(tail)
    return t0, tail


def _takahashi_columns(cols: np.ndarray, indptr: np.ndarray, indices: np.ndarray,
                       lv_all: np.ndarray, lens: np.ndarray, keys: np.ndarray, data: np.ndarray,
                       diag: np.ndarray, D: np.ndarray, n: int, t0: int = 0,
                       tail: np.ndarray | None = None) -> None:
    """One step of the recurrence for columns whose ancestors are all done, in place."""
    k = lens[cols]
    nc = cols.size
    first = np.cumsum(k) - k
    K = int(k.sum())
    seg = np.repeat(np.arange(nc), k)
    ent = np.repeat(indptr[cols] - first, k) + np.arange(K)  # entries of L, column by column
    J, lv = indices[ent], lv_all[ent]
    kk = k * k
    P = int(kk.sum())
    pseg = np.repeat(np.arange(nc), kk)
    local = np.arange(P) - np.repeat(np.cumsum(kk) - kk, kk)
    kp = k[pseg]
    es = first[pseg] + local // kp  # (s, t) over each column's rows
    et = first[pseg] + local % kp
    a, b = J[es], J[et]
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    val = np.empty(P)
    on = lo == hi
    val[on] = diag[lo[on]]
    off = ~on
    if tail is not None:  # both in the dense tail: read the dense inverse
        dense = off & (lo >= t0)
        val[dense] = tail[hi[dense] - t0, lo[dense] - t0]
        off &= ~dense
    val[off] = data[np.searchsorted(keys, lo[off] * n + hi[off])]
    y = np.bincount(es, val * lv[et], minlength=K)
    data[ent] = -y
    diag[cols] = 1.0 / D[cols] + np.bincount(seg, lv * y, minlength=nc)


def level_blocks(sig: SelectedInverse, perm: np.ndarray, offset: int, n_levels: int, q: int
                 ) -> np.ndarray:
    """The diagonal q×q blocks (ℓ, q, q) of Ω⁻¹ in the original order for the columns
    offset + l q + a of one grouping factor; *perm* is the factor's ordering (original column
    perm[i] at permuted position i)."""
    pinv = np.empty(perm.size, dtype=np.int64)
    pinv[np.asarray(perm, dtype=np.int64)] = np.arange(perm.size)
    out = np.empty((n_levels, q, q))
    cols = offset + np.arange(n_levels) * q
    for a in range(q):
        for b in range(a, q):
            v = sig.entries(pinv[cols + a], pinv[cols + b])
            out[:, a, b] = out[:, b, a] = v
    return out
