"""The sparse engine's moment start, its stopping rule and the reuse of the gradient's inverse.

- ``moment_start``: on simulated crossed designs with known variances the scalar factors' start
  recovers the true θ = σ_b/σ within a factor of 1.5, a vector factor's Cholesky factor of Σ/σ²
  (intercept and slope) within a factor of 1.5 on the diagonal; the start is never below 0.05. The fit from it and from lme4's start (``moment_start=False``) reach
  the same optimum (1e-9 relative), on the 50 random designs of ``test_sparse``, REML and ML.
- The conditional variances computed after the REML gradient (from its inverse, by the rank-p
  identity) equal those computed cold (1e-10 relative).
"""
from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from test_sparse import N_CASES, _case

from mfr_outcomes.models.formula import build_spec
from mfr_outcomes.models.sparse import SparseEngine, SparseModel, moment_start
from mfr_outcomes.models.spec import theta_start


def _crossed(seed: int, s_a: float, s_b: float, n_a: int = 400, n_b: int = 30,
             slope: bool = False) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    a = np.repeat(np.arange(n_a), 8)
    b = rng.integers(0, n_b, a.size)
    x = rng.normal(size=a.size)
    y = (1.0 + 0.3 * x + rng.normal(0, s_a, n_a)[a] + rng.normal(0, s_b, n_b)[b]
         + (rng.normal(0, 0.5, n_a)[a] * x if slope else 0.0) + rng.normal(size=a.size))
    return pd.DataFrame({"a": [f"a{k}" for k in a], "b": [f"b{k}" for k in b], "x": x, "y": y})


@pytest.mark.parametrize(("s_a", "s_b"), [(0.5, 0.8), (1.2, 0.3), (0.3, 1.5)])
def test_moment_start_recovers_known_scalar_theta(s_a: float, s_b: float) -> None:
    spec = build_spec(_crossed(7, s_a, s_b), "y ~ x + (1 | a) + (1 | b)")
    x0 = moment_start(SparseModel(spec))
    truth = {"a": s_a, "b": s_b}  # σ = 1
    for blk, t in zip(spec.blocks, x0):
        assert truth[blk.group] / 1.5 <= t <= truth[blk.group] * 1.5, (blk.group, t)


@pytest.mark.parametrize("seed", [3, 4, 5])
def test_moment_start_recovers_a_vector_factor_and_stays_off_zero(seed: int) -> None:
    d = _crossed(seed, 0.8, 0.0, slope=True)  # b has no variance: its start is the floor
    spec = build_spec(d, "y ~ x + (x | a) + (1 | b)")
    x0 = moment_start(SparseModel(spec))
    assert not np.array_equal(x0[:3], theta_start(spec)[:3])
    # (x | a): Σ = diag(0.8², 0.5²), σ = 1, so Λ = chol(Σ/σ²) = [[0.8, 0], [0, 0.5]]
    assert 0.8 / 1.5 <= x0[0] <= 0.8 * 1.5
    assert abs(x0[1]) <= 0.25
    assert 0.5 / 1.5 <= x0[2] <= 0.5 * 1.5
    assert 0.05 <= x0[3] <= 0.2


@pytest.mark.parametrize("seed", range(N_CASES))
def test_moment_start_reaches_the_same_optimum_as_lme4s_start(seed: int) -> None:
    d, formula, reml = _case(seed)
    spec = build_spec(d, formula)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a = SparseEngine().fit(spec, reml=reml)
        b = SparseEngine().fit(spec, reml=reml, options={"moment_start": False})
    np.testing.assert_allclose(a.objective, b.objective, rtol=1e-9)
    np.testing.assert_allclose(a.beta, b.beta, rtol=1e-4, atol=1e-5)


def test_condvar_from_the_gradient_inverse_equals_a_cold_one() -> None:
    d = _crossed(11, 0.7, 0.6)
    d["f"] = np.where(np.arange(len(d)) % 3 == 0, "u", "v")
    spec = build_spec(d, "y ~ x + f + (x | a) + (1 | b)")
    theta = np.array([0.7, 0.1, 0.3, 0.5])
    cold = SparseModel(spec)
    _, cv_cold = cold.random_modes(theta, 1.3, condvar=True)
    warm = SparseModel(spec)
    assert warm.gradient(theta, True) is not None  # keeps the inverse of the leading m_Z + p
    assert warm.evaluate(theta).inverse[0] == warm.st.mZ + warm.p
    _, cv_warm = warm.random_modes(theta, 1.3, condvar=True)
    for x, y in zip(cv_warm, cv_cold):
        np.testing.assert_allclose(x, y, rtol=1e-10, atol=1e-14)
