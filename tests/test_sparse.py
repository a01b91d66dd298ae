"""The sparse engine against the dense reference engine "pls" on seeded random designs.

Each case draws a design (crossed, nested, partially crossed, three-level nesting), a random
structure (scalar or vector, correlated or ``||``, a factor slope) and REML or ML. At the same θ
the profiled deviance, the deviance in (θ, σ), Var(β̂), β̂, the modes and their conditional
variances must agree to rounding (1e-10 relative); the optima to 1e-8 relative.
"""
from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

from mfr_outcomes.models import ENGINES, fit_mixed
from mfr_outcomes.models.formula import build_spec
from mfr_outcomes.models.pls import PLSEngine, PLSModel
from mfr_outcomes.models.sparse import MAX_TRAILING, SparseEngine, SparseModel
from mfr_outcomes.models.spec import AUTO_ORDER, theta_lower_bounds

STRUCTURES = [
    ("crossed", "y ~ x + (1 | a) + (1 | b)"),
    ("crossed", "y ~ x + (x | a) + (1 | b)"),
    ("crossed", "y ~ x + (1 | a) + (x | b)"),
    ("crossed", "y ~ x + (x || a) + (1 | b)"),
    ("crossed", "y ~ x + f + (1 | a) + (0 + f | b)"),
    ("crossed", "y ~ x + (x | a) + (x | b)"),
    ("crossed", "y ~ x + (1 | a) + (1 | b) + (1 | c)"),
    ("nested", "y ~ x + (1 | b/a)"),
    ("nested", "y ~ x + (x | a) + (1 | b)"),
    ("partial", "y ~ x + (1 | a) + (1 | b)"),
    ("partial", "y ~ x * f + (x | a) + (1 | b)"),
    ("three", "y ~ x + (1 | c/b/a)"),
    ("crossed", "y ~ x + (1 | a) + (0 + x | a) + (1 | b)"),
    ("single", "y ~ x + (x | a)"),
]
N_CASES = 50


def _design(kind: str, rng: np.random.Generator) -> pd.DataFrame:
    n_a = int(rng.integers(12, 28))
    n_b = int(rng.integers(4, 10))
    per = rng.integers(3, 7, n_a)
    a = np.repeat(np.arange(n_a), per)
    n = a.size
    if kind in ("crossed", "single"):
        b = rng.integers(0, n_b, n)
    elif kind == "nested":
        home = rng.integers(0, n_b, n_a)
        b = home[a]
    elif kind == "partial":  # most a-levels with one b-level, a quarter with a second one
        home = rng.integers(0, n_b, n_a)
        other = rng.integers(0, n_b, n_a)
        switch = (rng.random(n_a) < 0.25)[a] & (rng.random(n) < 0.4)
        b = np.where(switch, other[a], home[a])
    else:  # three levels: a in b in c
        home = rng.integers(0, n_b, n_a)
        b = home[a]
    c = (b % 3) if kind == "three" else rng.integers(0, 3, n)
    x = rng.normal(size=n)
    f = rng.choice(["u", "v", "w"], n)
    s_a, s_b = rng.uniform(0.2, 1.5), rng.uniform(0.2, 1.5)
    ua, ub = rng.normal(0, s_a, n_a), rng.normal(0, s_b, n_b)
    va, vb = rng.normal(0, 0.5, n_a), rng.normal(0, 0.5, n_b)
    fe = {"u": 0.0, "v": 0.4, "w": -0.3}
    y = (1.0 + 0.5 * x + np.vectorize(fe.get)(f) + ua[a] + ub[b] + va[a] * x + vb[b] * x
         + rng.normal(0, 0.3, 3)[c] + rng.normal(0, 1.0, n))
    return pd.DataFrame({"a": [f"a{k}" for k in a], "b": [f"b{k}" for k in b],
                         "c": [f"c{k}" for k in c], "x": x, "f": f, "y": y})


def _case(seed: int):
    rng = np.random.default_rng(1000 + seed)
    kind, formula = STRUCTURES[seed % len(STRUCTURES)]
    reml = bool(seed % 2 == 0) if seed % 4 < 2 else bool(seed % 3)
    return _design(kind, rng), formula, reml


@pytest.mark.parametrize("seed", range(N_CASES))
def test_sparse_matches_dense_engine(seed: int) -> None:
    data, formula, reml = _case(seed)
    spec = build_spec(data, formula)
    assert SparseEngine().supports(spec)[0]
    sm, pm = SparseModel(spec), PLSModel(spec)
    rng = np.random.default_rng(seed)
    lb = theta_lower_bounds(spec)
    for _ in range(2):
        theta = np.where(lb == 0.0, rng.uniform(0.0, 2.0, spec.n_theta),
                         rng.uniform(-0.8, 0.8, spec.n_theta))
        for r in (True, False):
            np.testing.assert_allclose(sm.objective(theta, r), pm.profiled_deviance(theta, r),
                                       rtol=1e-10)
        vp = np.append(theta, rng.uniform(0.5, 2.0))
        np.testing.assert_allclose(sm.deviance_varpar(vp, reml), pm.deviance_varpar(vp, reml),
                                   rtol=1e-10)
        np.testing.assert_allclose(sm.vcov_beta(vp), pm.vcov_beta(vp), rtol=1e-8, atol=1e-12)
        np.testing.assert_allclose(sm.beta(theta), pm.solve(theta)["beta"], rtol=1e-8,
                                   atol=1e-10)
        bs, cs = sm.random_modes(theta, vp[-1])
        bp, cp = pm.random_modes(theta, vp[-1])
        for x, y in zip(bs, bp):
            np.testing.assert_allclose(x, y, rtol=1e-8, atol=1e-10)
        for x, y in zip(cs, cp):
            np.testing.assert_allclose(x, y, rtol=1e-8, atol=1e-12)
    rs = SparseEngine().fit(spec, reml=reml)
    rp = PLSEngine().fit(spec, reml=reml)
    assert rs.objective <= rp.objective + 1e-8 * abs(rp.objective)
    if not np.isclose(rs.objective, rp.objective, rtol=1e-8):
        # a lower optimum than pls's optimiser found: pls must agree that it is one
        rp = PLSEngine().fit(spec, reml=reml, start=rs.theta)
    np.testing.assert_allclose(rs.objective, rp.objective, rtol=1e-8)
    assert rs.n_evaluations > 0
    assert [b.shape for b in rs.blups] == [(b.n_levels, b.q) for b in spec.blocks]
    assert [c.shape for c in rs.blup_condvar] == [(b.n_levels, b.q, b.q) for b in spec.blocks]


def test_sparse_is_registered_after_fast() -> None:
    assert "sparse" in ENGINES
    assert AUTO_ORDER.index("fast") < AUTO_ORDER.index("sparse") < AUTO_ORDER.index("pls")


def test_auto_takes_sparse_for_crossed_models_beyond_the_dense_limit() -> None:
    """3,200 crossed random effects: more than 'pls' takes; 'auto' fits it with 'sparse'."""
    rng = np.random.default_rng(5)
    n_a, per = 3200, 3
    a = np.repeat(np.arange(n_a), per)
    b = rng.integers(0, 30, a.size)
    y = rng.normal(0, 0.8, n_a)[a] + rng.normal(0, 0.5, 30)[b] + rng.normal(size=a.size)
    data = pd.DataFrame({"a": a.astype(str), "b": b.astype(str), "y": y})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fit = fit_mixed(data, "y ~ 1 + (1 | a) + (1 | b)")
    assert fit.engine == "sparse"
    assert "pls" not in fit.diagnostics["engine_reason"] or "sparse: chosen" in \
        fit.diagnostics["engine_reason"]
    vc = fit.variance_components.set_index("group")["variance"]
    assert abs(vc["a"] - 0.64) < 0.15 and abs(vc["b"] - 0.25) < 0.15
    df = fit.fixed_effects["df"].iloc[0]
    assert 10 < df < 60  # Satterthwaite through the engine's closures: about the 30 b-levels


def test_supports_refuses_with_reasons() -> None:
    rng = np.random.default_rng(2)
    d = pd.DataFrame({"a": rng.integers(0, 5000, 6000).astype(str),
                      "b": rng.integers(0, 4500, 6000).astype(str), "y": rng.normal(size=6000)})
    ok, why = SparseEngine().supports(build_spec(d, "y ~ 1 + (1 | a) + (1 | b)"))
    assert not ok and "not larger than the number of random effects" in why
    d2 = pd.DataFrame({"a": np.repeat(np.arange(5000), 4).astype(str),
                       "b": rng.integers(0, MAX_TRAILING + 50, 20000).astype(str),
                       "y": rng.normal(size=20000)})
    spec = build_spec(d2, "y ~ 1 + (1 | a) + (1 | b)")
    ok, why = SparseEngine().supports(spec)
    assert not ok and f"at most {MAX_TRAILING}" in why
