"""The sparse engine's analytic gradient and average-information Hessian.

The gradient of the profiled REML and ML criteria must equal central finite differences (relative
1e-6) on the seeded random designs of ``test_sparse`` (crossed, nested, partially crossed,
three-level; scalar, vector, ``||`` and factor slopes); the spherical modes it uses must equal the
engine's modes; the average information must be a symmetric positive definite approximation of the
finite-difference Hessian at the optimum.
"""
from __future__ import annotations

import numpy as np
import pytest
from test_sparse import N_CASES, _case

from mfr_outcomes.models.formula import build_spec
from mfr_outcomes.models.sparse import SparseEngine, SparseModel
from mfr_outcomes.models.spec import theta_lower_bounds


def _fd_gradient(sm: SparseModel, theta: np.ndarray, reml: bool) -> np.ndarray:
    g = np.empty_like(theta)
    for i in range(theta.size):
        h = 1e-5 * max(1.0, abs(theta[i]))
        e = np.zeros_like(theta)
        e[i] = h
        g[i] = (sm.objective(theta + e, reml) - sm.objective(theta - e, reml)) / (2 * h)
    return g


@pytest.mark.parametrize("seed", range(N_CASES))
def test_gradient_matches_finite_differences(seed: int) -> None:
    data, formula, _ = _case(seed)
    spec = build_spec(data, formula)
    sm = SparseModel(spec)
    rng = np.random.default_rng(seed)
    lb = theta_lower_bounds(spec)
    theta = np.where(lb == 0.0, rng.uniform(0.1, 2.0, spec.n_theta),
                     rng.uniform(-0.8, 0.8, spec.n_theta))
    for reml in (True, False):
        g = sm.gradient(theta, reml)
        assert g is not None
        fd = _fd_gradient(sm, theta, reml)
        np.testing.assert_allclose(g, fd, rtol=1e-6, atol=1e-6 * max(1.0, np.abs(fd).max()))
    # the spherical modes behind the gradient are the engine's modes: b = Λu
    us = sm.modes_u(theta)
    blups, _ = sm.random_modes(theta, 1.0, condvar=False)
    st = sm.st
    for f, u in zip([st.first] + st.rest, us):
        b = f.lam(theta) @ u
        for blk, off in zip(f.blocks, f.block_offset):
            q = spec.blocks[blk].q
            np.testing.assert_allclose(b[off:off + q].T, blups[blk], rtol=1e-8, atol=1e-10)


def test_gradient_at_the_boundary() -> None:
    """A scalar θ at 0 has derivative 0 (the criterion is even in it); a vector term with a
    singular Λ has no analytic gradient (the optimiser then differences)."""
    data, formula, _ = _case(0)  # (1 | a) + (1 | b)
    spec = build_spec(data, formula)
    sm = SparseModel(spec)
    theta = np.array([0.0, 0.7])
    g = sm.gradient(theta, True)
    assert g[0] == 0.0
    h = 1e-6
    assert abs(sm.objective(np.array([h, 0.7]), True) - sm.objective(theta, True)) < 1e-6
    np.testing.assert_allclose(g[1], _fd_gradient(sm, theta, True)[1], rtol=1e-6)
    data, formula, _ = _case(1)  # (x | a) + (1 | b)
    spec = build_spec(data, formula)
    assert SparseModel(spec).gradient(np.array([0.5, 0.2, 0.0, 0.6]), True) is None


@pytest.mark.parametrize("seed", [0, 1, 3, 7, 10, 12])
def test_average_information_approximates_the_hessian(seed: int) -> None:
    data, formula, reml = _case(seed)
    spec = build_spec(data, formula)
    res = SparseEngine().fit(spec, reml=reml)
    sm = SparseModel(spec)
    theta = res.theta
    if sm.gradient(theta, reml) is None or np.any(theta[theta_lower_bounds(spec) == 0] < 1e-3):
        pytest.skip("optimum on the boundary")
    H = sm.average_information(theta, reml)
    np.testing.assert_allclose(H, H.T, rtol=1e-12)
    assert np.all(np.linalg.eigvalsh(H) > 0)
    k = theta.size
    Hfd = np.empty((k, k))
    for i in range(k):
        e = np.zeros(k)
        e[i] = 1e-5
        Hfd[:, i] = (sm.gradient(theta + e, reml) - sm.gradient(theta - e, reml)) / 2e-5
    # an approximation (expected, not observed, information), close at the optimum
    scale = np.sqrt(np.outer(np.diag(Hfd), np.diag(Hfd)))
    assert np.max(np.abs(H - Hfd) / scale) < 0.25
