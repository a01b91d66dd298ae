"""The fixed structure of the sparse engine: factors, the Gram matrix of [Z X y] and its layout.

Random-effect terms are amalgamated by grouping factor (several ``RandomBlock`` on one group become
one factor with q columns per level, Λ block diagonal between the blocks). The factor with the most
random effects comes first: its block of Λ'Z'ZΛ + I is block diagonal (one q×q block per level)
and is eliminated level by level. Everything else — the other factors' columns, X and y — forms the
"trailing" part of m = Σ_k ℓ_k q_k + p + 1 columns, which is dense after the elimination.

The elimination's update of the trailing block, Σ_l B_l W_l B_lᵀ (B_l the trailing rows of the
Gram matrix in the columns of level l, W_l a q×q matrix that depends on θ), is linear in the W_l:
it is one sparse matrix-vector product ``T @ w`` with a fixed matrix T built here once.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from mfr_outcomes.models.spec import ModelSpec

__all__ = ["Factor", "Structure", "build_structure", "factors_of", "trailing_size"]


@dataclass
class Factor:
    """One grouping factor with all random terms on it amalgamated.

    ``theta_pos[t] = (i, j)`` places the factor's t-th θ (``theta_index[t]`` in the spec's θ) at
    Λ_k[i, j]; ``blocks`` are the spec blocks on this factor and ``block_offset`` the first column
    of each inside the factor's q.
    """

    group: str
    codes: np.ndarray
    n_levels: int
    q: int
    Z: np.ndarray  # (n, q) the amalgamated raw columns
    blocks: list[int]
    block_offset: list[int]
    theta_index: np.ndarray
    theta_pos: list[tuple[int, int]]

    @property
    def size(self) -> int:
        return self.n_levels * self.q

    def lam(self, theta: np.ndarray) -> np.ndarray:
        out = np.zeros((self.q, self.q))
        for t, (i, j) in zip(self.theta_index, self.theta_pos):
            out[i, j] = theta[t]
        return out


def factors_of(spec: ModelSpec) -> list[Factor]:
    """The spec's blocks amalgamated by grouping factor, largest (ℓ q) first."""
    starts = np.cumsum([0] + [b.n_theta for b in spec.blocks])
    groups: dict[str, list[int]] = {}
    for k, b in enumerate(spec.blocks):
        key = b.group
        if key in groups and not np.array_equal(spec.blocks[groups[key][0]].codes, b.codes):
            key = f"{b.group}#{k}"  # same name, different coding: keep it a factor of its own
        groups.setdefault(key, []).append(k)
    out = []
    for key, ks in groups.items():
        first = spec.blocks[ks[0]]
        offs, tidx, tpos, zs, q = [], [], [], [], 0
        for k in ks:
            b = spec.blocks[k]
            offs.append(q)
            t = int(starts[k])
            for j in range(b.q):  # column-major lower triangle, as spec.block_lambda
                for i in range(j, b.q):
                    tidx.append(t)
                    tpos.append((q + i, q + j))
                    t += 1
            zs.append(np.asarray(b.Z, dtype=float))
            q += b.q
        out.append(Factor(group=key, codes=np.asarray(first.codes, dtype=np.int64),
                          n_levels=first.n_levels, q=q, Z=np.column_stack(zs), blocks=ks,
                          block_offset=offs, theta_index=np.asarray(tidx, dtype=np.intp),
                          theta_pos=tpos))
    # stable: ties keep lme4's block order (most levels first)
    out.sort(key=lambda f: -f.size)
    return out


def trailing_size(spec: ModelSpec) -> int:
    """m: the number of dense trailing columns (all factors but the first, X and y)."""
    sizes = sorted((f.size for f in factors_of(spec)), reverse=True)
    return int(sum(sizes[1:]) + spec.p + 1)


@dataclass
class Structure:
    """Everything about a spec that does not depend on θ.

    ``first`` is eliminated level by level; ``rest`` are the other factors, whose columns start at
    ``rest_offset`` in the trailing part (mZ columns), followed by X (p) and y (1).
    """

    n: int
    p: int
    first: Factor
    rest: list[Factor]
    rest_offset: list[int]
    mZ: int
    m: int
    A11: np.ndarray  # (q1, q1, ℓ1): Z_1ᵀZ_1 per level, level axis last
    Arr: np.ndarray  # (m, m) dense: [Z_rest X y]ᵀ[Z_rest X y]
    Vz: sp.csr_matrix  # (n, mZ): Z_rest
    pat: sp.csc_matrix  # (m, ℓ1): which trailing rows meet each level of the first factor
    Bdata: np.ndarray  # (nnz(pat), q1): B = Vᵀ Z_1 on pat's pattern, per column a of level l
    Bx: np.ndarray  # (q1, p + 1, ℓ1): [X y]ᵀ Z_1 per level
    T: sp.csc_matrix  # (n_pairs, ℓ1 · nw): Σ_l B_l W_l B_lᵀ on the pairs = T @ w
    pair_flat: np.ndarray  # (n_pairs,) flat index r·m + s (r ≥ s) of each pair in an m×m matrix
    pair_r: np.ndarray
    pair_s: np.ndarray
    w_index: list[tuple[int, int]]  # the nw (a, b), a ≤ b, elements of W_l in w

    @property
    def nw(self) -> int:
        return len(self.w_index)


def _rest_matrix(n: int, rest: list[Factor], offsets: list[int], mZ: int) -> sp.csr_matrix:
    """Z_rest (n × mZ) in CSR, built directly: every row has the same number of entries, in
    increasing column order (explicit zeros kept, so the pattern is structural)."""
    if not rest:
        return sp.csr_matrix((n, 0))
    idx, val = [], []
    for f, off in zip(rest, offsets):
        for j in range(f.q):
            idx.append(off + f.codes * f.q + j)
            val.append(f.Z[:, j])
    k = len(idx)
    return sp.csr_matrix((np.column_stack(val).ravel(), np.column_stack(idx).ravel(),
                          np.arange(n + 1, dtype=np.int64) * k), shape=(n, mZ))


def _pair_matrix(pat: sp.csc_matrix, Bdata: np.ndarray, m: int, mZ: int,
                 w_index: list[tuple[int, int]]):
    """T with T[(r, s), (l, a, b)] = B_rla B_slb + [a < b] B_rlb B_sla over r ≥ s in level l,
    for the pairs with a random-effect row (s < mZ); the X-and-y block is done densely.

    Built in CSC directly, column (l, a, b) holding level l's pairs: no sort of the entries.
    """
    nl = pat.shape[1]
    nw = len(w_index)
    counts = np.diff(pat.indptr)
    groups = []
    kpl = np.zeros(nl, dtype=np.int64)  # pairs per level
    # tril_indices(c) is the first c(c + 1)/2 pairs of tril_indices(c_max) (row-major): made once
    ti, tj = np.tril_indices(int(counts.max()) if counts.size else 0)
    for c in np.unique(counts):
        if c == 0:
            continue
        levels = np.flatnonzero(counts == c)
        ii, jj = ti[:c * (c + 1) // 2], tj[:c * (c + 1) // 2]
        pos = pat.indptr[levels][:, None] + np.arange(c)[None, :]  # (n_c, c)
        R = pat.indices[pos]
        zpair = R[0, jj] < mZ  # X and y rows are the last of every column: same for all levels
        ii, jj = ii[zpair], jj[zpair]
        if ii.size == 0:
            continue
        kpl[levels] = ii.size
        groups.append((levels, ii, jj, R, Bdata[pos]))
    base = np.concatenate([[0], np.cumsum(kpl * nw)])
    indptr = np.append((base[:-1, None] + np.arange(nw)[None, :] * kpl[:, None]).ravel(),
                       base[-1])
    vals = np.empty(base[-1])
    slots = np.empty(base[-1], dtype=np.int64)  # index into keys, per entry
    keys_parts, start = [], 0
    for levels, ii, jj, R, Bv in groups:
        k = ii.size
        keys_parts.append((R[:, ii] * m + R[:, jj]).ravel())  # rows sorted: r ≥ s
        kidx = start + np.arange(levels.size * k).reshape(levels.size, k)
        start += levels.size * k
        for comp, (a, b) in enumerate(w_index):
            v = Bv[:, ii, a] * Bv[:, jj, b]
            if a != b:
                v = v + Bv[:, ii, b] * Bv[:, jj, a]
            pos = (base[levels] + comp * k)[:, None] + np.arange(k)[None, :]
            vals[pos] = v
            slots[pos] = kidx
    if not keys_parts:
        return sp.csc_matrix((0, nl * nw)), np.zeros(0, dtype=np.int64)
    keys = np.concatenate(keys_parts)
    if m * m <= 1 << 24:  # a dense marker over the m×m block: no sort
        mark = np.zeros(m * m, dtype=bool)
        mark[keys] = True
        pair_flat = np.flatnonzero(mark)
        ids = (np.cumsum(mark, dtype=np.int32) - 1)[keys]
    else:
        pair_flat, ids = np.unique(keys, return_inverse=True)
    T = sp.csc_matrix((vals, ids[slots], indptr), shape=(pair_flat.size, nl * nw))
    return T, pair_flat


def build_structure(spec: ModelSpec, X: np.ndarray | None = None, y: np.ndarray | None = None
                    ) -> Structure:
    """The θ-free part of the sparse engine's computation for *spec* (one pass over the rows).

    *X* and *y* replace ``spec.X`` and ``spec.y`` (the engine passes a better-conditioned
    equivalent: orthonormal columns spanning X, and y's least-squares residual).
    """
    X = spec.X if X is None else X
    y = spec.y if y is None else y
    factors = factors_of(spec)
    first, rest = factors[0], factors[1:]
    offsets, mZ = [], 0
    for f in rest:
        offsets.append(mZ)
        mZ += f.size
    n, p = spec.n, spec.p
    m = mZ + p + 1
    q1, l1 = first.q, first.n_levels
    Vz = _rest_matrix(n, rest, offsets, mZ)
    XY = np.column_stack([X, y])
    Arr = np.empty((m, m))
    Arr[:mZ, :mZ] = (Vz.T @ Vz).toarray()
    zx = np.asarray(Vz.T @ XY)
    Arr[:mZ, mZ:], Arr[mZ:, :mZ] = zx, zx.T
    Arr[mZ:, mZ:] = XY.T @ XY
    A11 = np.empty((q1, q1, l1))
    for a in range(q1):
        for b in range(a, q1):
            A11[a, b] = A11[b, a] = np.bincount(first.codes, first.Z[:, a] * first.Z[:, b],
                                                minlength=l1)
    # [X y]ᵀ Z_1 per level, dense: the X-and-y block of the update is one matrix product
    Bx = np.empty((q1, p + 1, l1))
    for a in range(q1):
        for j in range(p + 1):
            Bx[a, j] = np.bincount(first.codes, XY[:, j] * first.Z[:, a], minlength=l1)
    # which rows of Z_rest meet each level of Z_1 (from ones: ones never cancel), and the
    # values of Z_restᵀ Z_1 aligned to that pattern
    ind = sp.csr_matrix((np.ones(n), (np.arange(n), first.codes)), shape=(n, l1))
    ones = Vz.copy()
    ones.data = np.ones_like(ones.data)
    patz = (ones.T @ ind).tocsc()
    patz.sort_indices()
    cz = np.diff(patz.indptr)
    lev_z = np.repeat(np.arange(l1, dtype=np.int64), cz)
    pkeys = lev_z * m + patz.indices
    Bz = np.zeros((patz.nnz, q1))
    for a in range(q1):
        za = sp.csr_matrix((first.Z[:, a], (np.arange(n), first.codes)), shape=(n, l1))
        Ba = (Vz.T @ za).tocsc()
        Ba.sort_indices()
        bkeys = np.repeat(np.arange(l1, dtype=np.int64), np.diff(Ba.indptr)) * m + Ba.indices
        Bz[np.searchsorted(pkeys, bkeys), a] = Ba.data
    # the full pattern: each level's Z_rest rows, then the p + 1 rows of X and y
    counts = cz + p + 1
    indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    indices = np.empty(indptr[-1], dtype=np.int64)
    Bdata = np.empty((indptr[-1], q1))
    zpos = np.arange(patz.nnz) + (p + 1) * lev_z
    indices[zpos] = patz.indices
    Bdata[zpos] = Bz
    xpos = (indptr[:-1] + cz)[:, None] + np.arange(p + 1)[None, :]  # (ℓ1, p + 1)
    indices[xpos] = mZ + np.arange(p + 1)[None, :]
    Bdata[xpos] = Bx.transpose(2, 1, 0)
    pat = sp.csc_matrix((np.ones(indptr[-1]), indices, indptr), shape=(m, l1))
    w_index = [(a, b) for a in range(q1) for b in range(a, q1)]
    T, pair_flat = _pair_matrix(pat, Bdata, m, mZ, w_index)
    return Structure(n=n, p=p, first=first, rest=rest, rest_offset=offsets, mZ=mZ, m=m, A11=A11,
                     Arr=Arr, Vz=Vz, pat=pat, Bdata=Bdata, Bx=Bx, T=T, pair_flat=pair_flat,
                     pair_r=pair_flat // m, pair_s=pair_flat % m, w_index=w_index)
