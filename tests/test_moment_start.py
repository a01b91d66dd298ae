"""The moment start of the pooled optimiser: it recovers the simulated variance components, and
the fit it starts gives lme4's start's optimum in fewer evaluations."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mfr_outcomes.models.formula import build_spec
from mfr_outcomes.models.moment_start import moment_theta
from mfr_outcomes.models.spec import ENGINES


def _simulate(G: int, lam: np.ndarray, sigma: float, seed: int) -> pd.DataFrame:
    """Pre/post readings at 4-7 visits a patient, random intercept and post effect with
    covariance σ² ΛΛᵀ, a visit trend and a post effect in the fixed part."""
    rng = np.random.default_rng(seed)
    visits = rng.integers(4, 8, G)
    pid = np.repeat(np.arange(G), 2 * visits)
    session = np.concatenate([np.repeat(np.arange(1, v + 1), 2) for v in visits])
    post = np.tile([0.0, 1.0], int(visits.sum()))
    b = sigma * rng.standard_normal((G, 2)) @ lam.T
    y = (5.0 - 0.2 * session - 1.5 * post + b[pid, 0] + b[pid, 1] * post
         + sigma * rng.standard_normal(pid.size))
    return pd.DataFrame({"patient_id": [f"p{i:05d}" for i in pid], "session_number": session,
                         "post": post, "value": y})


def _moments(d: pd.DataFrame) -> tuple:
    """ZᵢᵀZᵢ by class, the groups per class and Σ uᵢuᵢᵀ (uᵢ = Zᵢᵀ(y − X b_OLS)), computed
    here group by group (independent of the engine's pooled sums)."""
    X = np.column_stack([np.ones(len(d)), d["session_number"], d["post"]])
    y = d["value"].to_numpy()
    b = np.linalg.lstsq(X, y, rcond=None)[0]
    r = y - X @ b
    Z = np.column_stack([np.ones(len(d)), d["post"]])
    by_class: dict[bytes, list] = {}
    for _, idx in d.groupby("patient_id").indices.items():
        C = Z[idx].T @ Z[idx]
        u = Z[idx].T @ r[idx]
        entry = by_class.setdefault(C.tobytes(), [C, 0, np.zeros((2, 2))])
        entry[1] += 1
        entry[2] += np.outer(u, u)
    Ck = np.array([e[0] for e in by_class.values()])
    count = np.array([float(e[1]) for e in by_class.values()])
    U = np.array([e[2] for e in by_class.values()])
    return Ck, count, U, float(r @ r), len(d), X.shape[1]


def test_moment_theta_recovers_the_simulated_lambda() -> None:
    lam = np.array([[1.2, 0.0], [-0.3, 0.5]])
    d = _simulate(4000, lam, sigma=1.5, seed=11)
    theta = moment_theta(*_moments(d), blocks=[(0, 2)], theta_pos=[(0, 0), (1, 0), (1, 1)])
    assert theta is not None
    np.testing.assert_allclose(theta, [1.2, -0.3, 0.5], atol=0.08)


def test_moment_theta_declines_without_within_group_information() -> None:
    """One reading a patient: no within-group degrees of freedom, no estimate."""
    Ck = np.array([[[1.0]]])
    assert moment_theta(Ck, np.array([50.0]), np.array([[[80.0]]]), 100.0, 50, 1,
                        blocks=[(0, 1)], theta_pos=[(0, 0)]) is None


@pytest.mark.parametrize("formula", [
    "value ~ session_number + post + (post | patient_id)",
    "value ~ session_number + post + (1 | patient_id)",
    "value ~ session_number + post + (1 | patient_id) + (0 + post | patient_id)",
])
@pytest.mark.parametrize("seed, lam", [
    (1, np.array([[1.2, 0.0], [-0.3, 0.5]])),
    (2, np.array([[0.4, 0.0], [0.1, 0.05]])),  # a post variance next to its bound of 0
])
def test_the_moment_start_reaches_lme4s_starts_optimum(formula, seed, lam) -> None:
    """From the moment start and from Λ = I: the same optimum (θ, β̂, criterion), the moment
    start in no more evaluations (one of them the comparison with Λ = I's criterion)."""
    spec = build_spec(_simulate(150, lam, sigma=1.0, seed=seed), formula)
    eng = ENGINES["fast"]
    got = eng.fit(spec, options={"moment_start": True})
    ref = eng.fit(spec, options={"moment_start": False})
    assert got.converged and ref.converged
    assert got.objective == pytest.approx(ref.objective, rel=1e-12, abs=1e-9)
    np.testing.assert_allclose(got.theta, ref.theta, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got.beta, ref.beta, rtol=1e-7, atol=1e-9)
    assert got.n_evaluations <= ref.n_evaluations + 1


@pytest.mark.parametrize("D", [
    [[1.6, -0.02], [-0.02, 0.016]],  # one eigenvalue below 1 % of the other
    [[0.3, 0.29], [0.29, 0.3]],  # nearly singular
    [[-0.5, 0.1], [0.1, -0.2]],  # no positive eigenvalue
    [[2.0, 0.3], [0.3, 1.0]],  # well inside
])
def test_the_two_column_factor_equals_the_eigendecomposition(D) -> None:
    """The by-hand 2×2 factor against the general route (NumPy's eigh and Cholesky)."""
    from mfr_outcomes.models.moment_start import _chol_floored

    D = np.array(D)
    w, V = np.linalg.eigh(D)
    w = np.maximum(w, max(1e-2 * w.max(), 1e-2))
    want = np.linalg.cholesky((V * w) @ V.T)
    np.testing.assert_allclose(_chol_floored(D, 1e-2), want, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("reml", [True, False])
@pytest.mark.parametrize("formula", [
    "value ~ session_number + post + (post | patient_id)",
    "value ~ session_number * post + (1 + post + session_number | patient_id)",
])
def test_stacked_gradients_equal_one_at_a_time(formula, reml) -> None:
    """pooled2.gradients (the start Hessian's differences, all θ in one pass) gives fg2's
    gradient at each θ, q = 2 and 3, at random θ of either sign (seeded)."""
    from mfr_outcomes.models import fast, pooled2

    spec = build_spec(_simulate(120, np.array([[1.0, 0.0], [0.3, 0.6]]), 1.0, seed=5), formula)
    stats, lay = fast.FastEngine().prepare(spec)
    cl = fast._classes(stats, lay)
    p2 = fast._pooled2_of(cl, stats, lay)
    thetas = np.random.default_rng(9).normal(size=(4, len(lay.theta_pos)))
    got = pooled2.gradients(p2, thetas, reml)
    for th, g in zip(thetas, got):
        want = pooled2.fg2(p2, th, reml, fast._logdet_rx)[1]
        np.testing.assert_allclose(g, want, rtol=1e-9, atol=1e-9 * float(np.abs(want).max()))


def test_fit_mixed_takes_the_option_and_gives_the_same_table() -> None:
    """``fit_mixed(..., options={"moment_start": False})`` (lme4's start) gives the default
    fit's fixed-effects table: estimates, SEs and Satterthwaite df."""
    from mfr_outcomes.models import fit_mixed

    d = _simulate(150, np.array([[1.2, 0.0], [-0.3, 0.5]]), 1.0, seed=3)
    formula = "value ~ session_number + post + (post | patient_id)"
    a = fit_mixed(d, formula).fixed_effects
    b = fit_mixed(d, formula, options={"moment_start": False}).fixed_effects
    for col in ("estimate", "std_error", "df"):
        np.testing.assert_allclose(a[col], b[col], rtol=1e-6)
