"""The fixed structure of the sparse engine: factors, the Gram matrix of [Z X y] and its layout.

Random-effect terms are amalgamated by grouping factor (several ``RandomBlock`` on one group become
one factor with q columns per level, Λ block diagonal between the blocks). The factor with the most
random effects comes first: its block of Λ'Z'ZΛ + I is block diagonal (one q×q block per level)
and is eliminated level by level. Everything else — the other factors' columns, X and y — forms the
"trailing" part of m = Σ_k ℓ_k q_k + p + 1 columns, which is dense after the elimination.

The elimination's update of the trailing block, Σ_l B_l W_l B_lᵀ (B_l the trailing rows of the
Gram matrix in the columns of level l, W_l a q×q matrix that depends on θ), is linear in the W_l:
on the random-effect rows it is one sparse matrix-vector product ``T @ w`` with a fixed matrix T
built here once; the rows of X and y (p + 1 for every level) are dense per-level products instead,
which keeps T to a few pairs per level (memory: most of a level's pairs would have an X or y row).
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from mfr_outcomes.models.spec import ModelSpec

__all__ = ["Factor", "Structure", "assemble_structure", "build_structure", "cached_model", "deviance_at_sigma", "factors_of",
           "gram_update", "per_block", "probe_zero_diagonals", "profiled_sigma",
           "trailing_size"]


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


def probe_zero_diagonals(factors: list[Factor], f: Callable[[np.ndarray], float],
                         theta: np.ndarray, fx: float) -> tuple[np.ndarray | None, float]:
    """A lower deviance *f* with a diagonal θ at 0 moved inside its bound, with the rest of its
    column of Λ as it is and negated, or (None, fx).

    With Λ[j, j] = 0 the sign of column j is arbitrary (b = Λu, u_j ↦ −u_j), while moving
    Λ[j, j] off 0 picks one sign of the correlations it brings: a gradient optimiser can stop at
    the saddle between the two, and ``spec.probe_inside_bounds`` (which moves the diagonal
    alone) can miss the side that descends. Optimisers with difference gradients can also stop
    a hair above 0, where the criterion is flat (even in a scalar θ).
    """
    scale = max(float(np.max(np.abs(theta))), 1.0)
    best, best_f = None, fx
    for fac in factors:
        pos = dict(zip(fac.theta_pos, fac.theta_index))
        for j in range(fac.q):
            t_jj = pos[(j, j)]
            if theta[t_jj] > 0.0:
                continue
            below = [pos[(i, j)] for i in range(j + 1, fac.q) if (i, j) in pos]
            signs = (1.0, -1.0) if np.any(theta[below] != 0.0) else (1.0,)
            for sign in signs:
                for delta in (1e-3, 1e-2, 0.1):
                    trial = theta.copy()
                    trial[below] = sign * trial[below]
                    trial[t_jj] = delta * scale
                    ft = f(trial)
                    if ft < best_f - 1e-12 * max(1.0, abs(best_f)):
                        best, best_f = trial, ft
    return best, best_f


def trailing_size(spec: ModelSpec) -> int:
    """m: the number of dense trailing columns (all factors but the first, X and y)."""
    sizes = sorted((f.size for f in factors_of(spec)), reverse=True)
    return int(sum(sizes[1:]) + spec.p + 1)


@dataclass
class Structure:
    """Everything about a spec that does not depend on θ.

    ``first`` is eliminated level by level; ``rest`` are the other factors, whose columns start at
    ``rest_offset`` in the trailing part (mZ columns), followed by X (p) and y (1).

    The trailing rows of the Gram matrix in the first factor's columns are kept in two parts:
    ``Bz`` (sparse, Z_restᵀZ_1: column l q1 + a holds the rest's rows that level l meets, the same
    rows for every a) and ``Bx`` (dense per level, [X y]ᵀZ_1). ``T`` holds the random-effect by
    random-effect pairs of the update Σ_l B_l W_l B_lᵀ only; its X-and-y rows are dense products
    of ``Bx`` (with ``Bz`` for the cross block), done per evaluation.
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
    Vz: sp.csr_matrix  # (n, mZ): Z_rest (no rows: (0, mZ), out of memory)
    Bz: sp.csc_matrix  # (mZ, ℓ1 q1): Z_restᵀZ_1, structural pattern shared by a level's columns
    Bx: np.ndarray  # (q1, p + 1, ℓ1): [X y]ᵀ Z_1 per level
    T: sp.csc_matrix  # (n_pairs, ℓ1 · nw): Σ_l B_l W_l B_lᵀ on the Z-by-Z pairs = T @ w
    level_order: np.ndarray  # (ℓ1,) the level of each nw columns of T: w[level_order].ravel()
    pair_flat: np.ndarray  # (n_pairs,) flat index r·m + s (r ≥ s, both < mZ) in an m×m matrix
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
    k = sum(f.q for f in rest)
    idx = np.empty((n, k), dtype=np.int32)
    val = np.empty((n, k))
    c = 0
    for f, off in zip(rest, offsets):
        for j in range(f.q):
            idx[:, c] = off + f.codes * f.q + j
            val[:, c] = f.Z[:, j]
            c += 1
    indptr = np.arange(n + 1, dtype=np.int64) * k
    if indptr[-1] < np.iinfo(np.int32).max:
        indptr = indptr.astype(np.int32)
    return sp.csr_matrix((val.ravel(), idx.ravel(), indptr), shape=(n, mZ))


def _pair_matrix(indptr: np.ndarray, indices: np.ndarray, Bdata: np.ndarray, m: int, mZ: int,
                 w_index: list[tuple[int, int]]
                 ) -> tuple[sp.csc_matrix, np.ndarray, np.ndarray]:
    """T with T[(r, s), (l, a, b)] = B_rla B_slb + [a < b] B_rlb B_sla over the pairs r ≥ s of
    level l's random-effect rows (``indices[indptr[l]:indptr[l + 1]]``, increasing; values
    ``Bdata`` (nnz, q1)), the flat index r·m + s of each pair in an m×m matrix, and the order
    of the levels in T's columns.

    Built in CSC directly with the levels ordered by their number of rows, so that the levels
    of one count fill one contiguous block (level, (a, b), pair) by strided writes: column
    i·nw + t holds level ``order[i]``'s pairs for the t-th (a, b). The pairs are numbered with a
    marker over the mZ×mZ block (no sort) where that is small, else by a sort of their keys.
    """
    nl, nw = indptr.size - 1, len(w_index)
    counts = np.diff(indptr).astype(np.int64)
    order = np.argsort(counts, kind="stable")
    kpl = (counts * (counts + 1) // 2)[order]  # pairs per column, in T's level order
    base = np.zeros(nl + 1, dtype=np.int64)
    np.cumsum(kpl * nw, out=base[1:])
    total = int(base[-1])
    if total == 0:
        return sp.csc_matrix((0, nl * nw)), np.zeros(0, dtype=np.int64), order
    cs = counts[order]
    cmax = int(cs[-1])
    ti, tj = np.tril_indices(cmax)  # tril_indices(c) is the first c(c + 1)/2 of these
    bounds = np.flatnonzero(np.diff(cs)) + 1
    groups = [(int(cs[r0]), r0, r1) for r0, r1 in zip(np.r_[0, bounds], np.r_[bounds, nl])
              if cs[r0] > 0]
    keys = []
    for c, r0, r1 in groups:  # rows increase within a level: r ≥ s
        R = indices[indptr[order[r0:r1]][:, None] + np.arange(c)[None, :]].astype(np.int64)
        k = c * (c + 1) // 2
        keys.append(R[:, ti[:k]] * mZ + R[:, tj[:k]])
    if mZ * mZ <= 1 << 24:
        idmap = np.zeros(mZ * mZ, dtype=np.int32)
        for kk in keys:
            idmap[kk] = 1
        pair_key = np.flatnonzero(idmap)
        np.cumsum(idmap, out=idmap)
        idmap -= 1
    else:
        idmap = None
        pair_key = np.unique(np.concatenate([kk.ravel() for kk in keys]))
    n_pairs = pair_key.size
    itype = np.int32 if max(n_pairs, total) < np.iinfo(np.int32).max else np.int64
    t_indptr = np.empty(nl * nw + 1, dtype=np.int64)
    t_indptr[:-1] = (base[:-1, None] + np.arange(nw)[None, :] * kpl[:, None]).ravel()
    t_indptr[-1] = total
    t_ind = np.empty(total, dtype=itype)
    vals = np.empty(total)
    for (c, r0, r1), kk in zip(groups, keys):
        k, n_c = c * (c + 1) // 2, r1 - r0
        blk = slice(int(base[r0]), int(base[r1]))
        ind_v = t_ind[blk].reshape(n_c, nw, k)
        ind_v[:] = (idmap[kk] if idmap is not None else
                    np.searchsorted(pair_key, kk).astype(itype))[:, None, :]
        Bv = Bdata[indptr[order[r0:r1]][:, None] + np.arange(c)[None, :]]  # (n_c, c, q1)
        val_v = vals[blk].reshape(n_c, nw, k)
        ii, jj = ti[:k], tj[:k]
        for comp, (a, b) in enumerate(w_index):
            out = val_v[:, comp, :]
            np.multiply(Bv[:, ii, a], Bv[:, jj, b], out=out)
            if a != b:
                out += Bv[:, ii, b] * Bv[:, jj, a]
    T = sp.csc_matrix((vals, t_ind, t_indptr.astype(itype)), shape=(n_pairs, nl * nw))
    pair_flat = (pair_key // mZ) * m + pair_key % mZ
    return T, pair_flat, order


def assemble_structure(*, n: int, p: int, first: Factor, rest: list[Factor],
                       rest_offset: list[int], A11: np.ndarray, Arr: np.ndarray,
                       Vz: sp.csr_matrix, Bx: np.ndarray, lev: np.ndarray, rows: np.ndarray,
                       Bvals: np.ndarray) -> Structure:
    """A :class:`Structure` from its blocks; Z_restᵀZ_1 given per entry: level ``lev``
    (non-decreasing), rest row ``rows`` (increasing within a level), values ``Bvals`` (nnz, q1).

    Shared by :func:`build_structure` (from rows) and ``scale.gram`` (from aggregated blocks).
    """
    mZ = int(sum(f.size for f in rest))
    m = mZ + p + 1
    q1, l1 = first.q, first.n_levels
    rows = np.asarray(rows, dtype=np.int32)
    cz = np.bincount(lev, minlength=l1)
    indptr = np.zeros(l1 + 1, dtype=np.int64)
    np.cumsum(cz, out=indptr[1:])
    w_index = [(a, b) for a in range(q1) for b in range(a, q1)]
    T, pair_flat, order = _pair_matrix(indptr, rows, Bvals, m, mZ, w_index)
    # Bz in CSC, column l q1 + a: level l's rows, once per a
    nnz = rows.size
    bz_ptr = (indptr[:-1, None] * q1 + cz[:, None] * np.arange(q1)[None, :]).ravel()
    bz_ptr = np.append(bz_ptr, nnz * q1)
    at = (indptr[lev] * q1 + (np.arange(nnz) - indptr[lev]))[:, None] + \
        (cz[lev][:, None] * np.arange(q1)[None, :])  # (nnz, q1): position of entry, column a
    bz_ind = np.empty(nnz * q1, dtype=np.int32)
    bz_val = np.empty(nnz * q1)
    bz_ind[at] = rows[:, None]
    bz_val[at] = Bvals
    del at
    itype = np.int32 if nnz * q1 < np.iinfo(np.int32).max else np.int64
    Bz = sp.csc_matrix((bz_val, bz_ind.astype(itype, copy=False), bz_ptr.astype(itype)),
                       shape=(mZ, l1 * q1))
    return Structure(n=n, p=p, first=first, rest=rest, rest_offset=list(rest_offset), mZ=mZ,
                     m=m, A11=A11, Arr=Arr, Vz=Vz, Bz=Bz, Bx=Bx, T=T, level_order=order,
                     pair_flat=pair_flat,
                     pair_r=pair_flat // m, pair_s=pair_flat % m, w_index=w_index)


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
    codes = first.codes
    A11 = np.empty((q1, q1, l1))
    for a in range(q1):
        for b in range(a, q1):
            A11[a, b] = A11[b, a] = np.bincount(codes, first.Z[:, a] * first.Z[:, b],
                                                minlength=l1)
    # [X y]ᵀ Z_1 per level, dense: the X-and-y rows of the update are products of these; one
    # sparse product with Z_1 laid out by level (column l q1 + a)
    zr = np.arange(n + 1, dtype=np.int64) * q1
    z1 = sp.csr_matrix((np.ascontiguousarray(first.Z, dtype=float).ravel(),
                        (codes[:, None] * q1 + np.arange(q1)[None, :]).ravel(), zr),
                       shape=(n, l1 * q1))
    Bx = np.ascontiguousarray(np.asarray(z1.T @ XY).reshape(l1, q1, p + 1).transpose(1, 2, 0))
    del z1
    # Z_restᵀZ_1 by level: the pattern from ones (ones never cancel), each a's values aligned
    # to it (a product may drop an entry that cancels to zero)
    lev, rows, Bvals = np.zeros(0, np.int64), np.zeros(0, np.int32), np.zeros((0, q1))
    if mZ:
        zr = np.arange(n + 1, dtype=np.int64)
        ind = sp.csr_matrix((np.ones(n), codes, zr), shape=(n, l1))
        ones = sp.csr_matrix((np.ones_like(Vz.data), Vz.indices, Vz.indptr), shape=Vz.shape)
        patz = (ones.T @ ind).tocsc()
        del ones
        patz.sort_indices()
        lev = np.repeat(np.arange(l1, dtype=np.int64), np.diff(patz.indptr))
        rows = patz.indices
        Bvals = np.zeros((patz.nnz, q1))
        for a in range(q1):
            za = ind if np.all(first.Z[:, a] == 1.0) else \
                sp.csr_matrix((first.Z[:, a], codes, zr), shape=(n, l1))
            Bvals[:, a] = _aligned(Vz, za, patz, lev, m)
        del patz
    return assemble_structure(n=n, p=p, first=first, rest=rest, rest_offset=offsets, A11=A11,
                              Arr=Arr, Vz=Vz, Bx=Bx, lev=lev, rows=rows, Bvals=Bvals)


def _aligned(Vz: sp.csr_matrix, za: sp.csr_matrix, patz: sp.csc_matrix, lev: np.ndarray,
             m: int) -> np.ndarray:
    """The values of Vzᵀ za on the pattern *patz* (zeros where the product dropped an entry)."""
    Ba = (Vz.T @ za).tocsc()
    Ba.sort_indices()
    if Ba.nnz == patz.nnz:
        return Ba.data
    pkeys = lev * m + patz.indices
    bkeys = np.repeat(np.arange(Ba.shape[1], dtype=np.int64), np.diff(Ba.indptr)) * m + Ba.indices
    out = np.zeros(patz.nnz)
    out[np.searchsorted(pkeys, bkeys)] = Ba.data
    return out


def gram_update(st: Structure, W: np.ndarray) -> np.ndarray:
    """Σ_l B_l W_l B_lᵀ (m × m, lower triangle) for W (q1, q1, ℓ1), symmetric per level, from
    the structure's parts as the engine combines them: ``T`` on the random-effect pairs, the
    sparse ``Bz`` times W_l B_x,l for the cross block, dense ``Bx`` for the X-and-y block.
    (The engine's evaluation fuses the same steps with W_l = G_lᵀG_l; this is its reference.)"""
    q1, nl = st.first.q, st.first.n_levels
    mZ, m = st.mZ, st.m
    U = np.zeros((m, m))
    if st.T.shape[0]:
        w = np.stack([W[a, b] for a, b in st.w_index], axis=1)  # (ℓ1, nw)
        U.flat[st.pair_flat] = st.T @ w[st.level_order].ravel()
    WB = np.einsum("abl,bjl->laj", W, st.Bx)  # (ℓ1, q1, p + 1): W_l B_x,l
    if mZ:
        U[mZ:, :mZ] = (st.Bz @ WB.reshape(nl * q1, -1)).T
    U[mZ:, mZ:] = np.einsum("ail,laj->ij", st.Bx, WB)
    return np.tril(U)


def per_block(spec: ModelSpec, factors: list[Factor], modes: list[np.ndarray],
              cvs: list[np.ndarray] | None):
    """Conditional modes (and variances) of amalgamated factors split back into the spec's blocks."""
    blups: list[np.ndarray] = [None] * len(spec.blocks)  # type: ignore[list-item]
    condvar: list[np.ndarray] | None = None if cvs is None else [None] * len(spec.blocks)
    for k, f in enumerate(factors):
        for blk, off in zip(f.blocks, f.block_offset):
            sl = slice(off, off + spec.blocks[blk].q)
            blups[blk] = np.ascontiguousarray(modes[k][sl].T)
            if cvs is not None:
                condvar[blk] = np.ascontiguousarray(cvs[k][sl, sl].transpose(2, 0, 1))
    return blups, condvar


def profiled_sigma(model, theta: np.ndarray, reml: bool) -> float:
    """σ̂ at θ from a sparse model's evaluation (``pwrss``): lme4's √(r²/(n − p)) or √(r²/n)."""
    ev = model.evaluate(theta)
    return float(np.sqrt(ev.pwrss / (model.n - model.p if reml else model.n)))


def deviance_at_sigma(model, varpar: np.ndarray, reml: bool) -> float:
    """lmerTest's ``devfun_vp`` for the sparse models: the deviance at (θ, σ) = *varpar*, not
    profiled over σ, from one evaluation (``ok``, ``ldL2``, ``ldRX2``, ``pwrss``)."""
    varpar = np.asarray(varpar, dtype=float)
    sigma2 = varpar[-1] ** 2
    ev = model.evaluate(varpar[:-1])
    if not ev.ok:
        return np.inf
    dev = ev.ldL2 + ev.pwrss / sigma2 + model.n * np.log(2.0 * np.pi * sigma2)
    if reml:
        dev += ev.ldRX2 - model.p * np.log(2.0 * np.pi * sigma2)
    return float(dev)


def cached_model(cache: OrderedDict, spec: ModelSpec, build):
    """``build(spec)``, kept in *cache* by the spec's identity; the cache keeps the last few."""
    key = id(spec)
    hit = cache.get(key)
    if hit is not None and hit[0] is spec:
        cache.move_to_end(key)
        return hit[1]
    model = build(spec)
    cache[key] = (spec, model)
    while len(cache) > 3:
        cache.popitem(last=False)
    return model
