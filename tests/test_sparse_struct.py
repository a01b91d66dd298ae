"""The sparse engine's fixed structure (``models.sparse_struct``) against a direct dense computation.

The elimination of the first grouping factor updates the trailing block by Σ_l B_l W_l B_lᵀ, B_l
the rows of [Z_rest X y]ᵀZ_1 in level l's columns. The structure keeps that update in parts — the
pair matrix T on the random-effect rows, the sparse B_Z for the cross block, the dense per-level
B_X for the rows of X and y — and ``gram_update`` puts them together. On seeded random designs
(several factors, vector terms, ``||``, nested, partially crossed, a slope whose products cancel
within a cell) and random symmetric W_l, it must equal Σ_l B_l W_l B_lᵀ formed from the dense model
matrices, to 1e-10 relative; and the Gram blocks A11, Arr and B must be those of the dense matrices.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mfr_outcomes.models.formula import build_spec
from mfr_outcomes.models.sparse_struct import build_structure, factors_of, gram_update

FORMULAS = [
    ("crossed", "y ~ x + (1 | a) + (1 | b)"),
    ("crossed", "y ~ x + (x | a) + (1 | b) + (1 | c)"),
    ("crossed", "y ~ x + (1 | a) + (x | b)"),
    ("crossed", "y ~ x + f + (x || a) + (0 + f | b)"),
    ("crossed", "y ~ x + (x | a) + (x | b)"),
    ("nested", "y ~ x + (1 | b/a)"),
    ("nested", "y ~ x + (x | a) + (1 | b)"),
    ("partial", "y ~ x * f + (x | a) + (1 | b)"),
    ("partial", "y ~ x + (1 | a) + (0 + x | a) + (1 | b) + (1 | c)"),
    ("cancel", "y ~ x + (x | a) + (1 | b)"),
]


def _data(kind: str, rng: np.random.Generator) -> pd.DataFrame:
    n_a, n_b = int(rng.integers(15, 40)), int(rng.integers(4, 12))
    per = rng.integers(2, 8, n_a)
    a = np.repeat(np.arange(n_a), per)
    n = a.size
    home = rng.integers(0, n_b, n_a)
    if kind == "nested":
        b = home[a]
    elif kind == "partial":
        b = np.where(rng.random(n) < 0.3, rng.integers(0, n_b, n), home[a])
    else:
        b = rng.integers(0, n_b, n)
    x = rng.normal(size=n)
    if kind == "cancel":  # pairs of readings with x = ±1 in one (a, b) cell: Σ x over it is 0
        b = home[a]
        x = np.where(np.arange(n) % 2 == 0, 1.0, -1.0)
        x[np.r_[np.diff(a) != 0, True] & (np.arange(n) % 2 == 0)] = 0.5
    return pd.DataFrame({"a": [f"a{k}" for k in a], "b": [f"b{k}" for k in b],
                         "c": [f"c{k}" for k in rng.integers(0, 3, n)], "x": x,
                         "f": rng.choice(["u", "v", "w"], n), "y": rng.normal(size=n)})


def _dense(spec):
    """Z_1 (n × ℓ1 q1, column l q1 + a) and V = [Z_rest X y] (n × m), dense."""
    factors = factors_of(spec)
    n = spec.n

    def zmat(f):
        out = np.zeros((n, f.size))
        for j in range(f.q):
            out[np.arange(n), f.codes * f.q + j] = f.Z[:, j]
        return out

    rest = [zmat(f) for f in factors[1:]]
    return zmat(factors[0]), np.column_stack(rest + [spec.X, spec.y])


@pytest.mark.parametrize("seed", range(30))
def test_update_equals_dense_sum_over_levels(seed):
    rng = np.random.default_rng(7000 + seed)
    kind, formula = FORMULAS[seed % len(FORMULAS)]
    spec = build_spec(_data(kind, rng), formula)
    st = build_structure(spec)
    Z1, V = _dense(spec)
    q1, nl = st.first.q, st.first.n_levels
    assert V.shape[1] == st.m
    B = V.T @ Z1  # (m, ℓ1 q1)
    # the Gram blocks themselves
    np.testing.assert_allclose(st.Arr, V.T @ V, rtol=0, atol=1e-10 * np.abs(V.T @ V).max())
    for lv in range(nl):
        blk = slice(lv * q1, (lv + 1) * q1)
        np.testing.assert_allclose(st.A11[:, :, lv], Z1[:, blk].T @ Z1[:, blk], atol=1e-10)
    Bz = st.Bz.toarray()
    np.testing.assert_allclose(Bz, B[:st.mZ], rtol=0, atol=1e-12)
    np.testing.assert_allclose(st.Bx.transpose(2, 0, 1).reshape(nl * q1, -1), B[st.mZ:].T,
                               rtol=0, atol=1e-10 * max(1.0, np.abs(B).max()))
    # a level's columns share their pattern (the T pairs are made from it)
    pattern = st.Bz.indptr
    for lv in range(nl):
        cols = [st.Bz.indices[pattern[lv * q1 + j]:pattern[lv * q1 + j + 1]] for j in range(q1)]
        assert all(np.array_equal(cols[0], c) for c in cols[1:])
    # random symmetric W_l (indefinite too: the update is linear in W)
    M = rng.normal(size=(q1, q1, nl))
    W = M + M.transpose(1, 0, 2)
    direct = sum(B[:, lv * q1:(lv + 1) * q1] @ W[:, :, lv] @ B[:, lv * q1:(lv + 1) * q1].T
                 for lv in range(nl))
    got = gram_update(st, W)
    scale = np.abs(direct).max()
    np.testing.assert_allclose(got, np.tril(direct), rtol=0, atol=1e-10 * scale)
    # T holds random-effect pairs only (its rows index the m × m block below mZ)
    assert np.all(st.pair_r < st.mZ) and np.all(st.pair_s <= st.pair_r)


def test_cancelling_products_keep_the_structural_pattern():
    """A cell whose Z_restᵀZ_1 sum is exactly 0 for the slope column keeps its entry (an explicit
    zero) so that every column of the level has the same rows."""
    d = pd.DataFrame({"a": ["a1"] * 4 + ["a2"] * 4, "b": ["b1", "b1", "b2", "b2"] * 2,
                      "x": [1.0, -1.0, 1.0, 2.0, 0.5, 1.0, -1.0, 1.0],
                      "y": [1.0, 2.0, 0.5, 1.5, 2.5, 0.0, 1.0, 2.0]})
    spec = build_spec(d, "y ~ 1 + (x | a) + (1 | b)")
    st = build_structure(spec)
    assert st.first.group == "a"
    Bz = st.Bz.toarray()
    assert Bz[0, 1] == 0.0  # a1's slope column, b1: 1 - 1
    counts = np.diff(st.Bz.indptr)
    assert counts[0] == counts[1] == 2  # a1: both b-levels in both columns, zero included
