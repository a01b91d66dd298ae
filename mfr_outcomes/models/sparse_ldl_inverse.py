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


def selected_inverse(L: sp.csc_matrix, D: np.ndarray) -> SelectedInverse:
    """Ω⁻¹ on the pattern of the strictly lower unit factor *L* (Ω = (I + L) D (I + L)ᵀ)."""
    L = sp.csc_matrix(L)
    L.sort_indices()
    n = D.size
    indptr, indices, lv_all = L.indptr.astype(np.int64), L.indices.astype(np.int64), L.data
    data = np.zeros(indices.size)
    diag = np.empty(n)
    mark = np.full(n, -1, dtype=np.int64)
    lens = np.diff(indptr)
    for i in range(n - 1, -1, -1):
        s, e = indptr[i], indptr[i + 1]
        if s == e:
            diag[i] = 1.0 / D[i]
            continue
        J = indices[s:e]
        lv = lv_all[s:e]
        k = J.size
        # every entry of the columns in J: positions of their ranges, concatenated
        cl = lens[J]
        tot = int(cl.sum())
        y = diag[J] * lv
        if tot:
            starts = indptr[J]
            col_t = np.repeat(np.arange(k), cl)
            idx = np.arange(tot) - np.repeat(np.cumsum(cl) - cl, cl) + np.repeat(starts, cl)
            mark[J] = np.arange(k)
            pos = mark[indices[idx]]
            mark[J] = -1
            keep = pos >= 0
            pos, ct, v = pos[keep], col_t[keep], data[idx[keep]]
            y += np.bincount(pos, v * lv[ct], minlength=k)
            y += np.bincount(ct, v * lv[pos], minlength=k)
        data[s:e] = -y
        diag[i] = 1.0 / D[i] + float(lv @ y)
    return SelectedInverse(indptr=indptr, indices=indices, data=data, diag=diag)


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
