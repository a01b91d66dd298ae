"""Kenward-Roger from per-group blocks (models/kr_blocks.py): equal to the dense computation and to
pbkrtest's fixtures, and running at 20,000 readings where the dense one cannot."""
from __future__ import annotations

import json
import warnings

import numpy as np
import pandas as pd
import pytest
from test_reference_lme4 import CASES, REF, load_data

from mfr_outcomes.models import dfmethods, fit_mixed
from mfr_outcomes.models.kr_blocks import KenwardRogerData


def kenward_roger_dense(fit) -> KenwardRogerData:
    """pbkrtest's computation on dense n×n matrices (refuses above dfmethods.KR_MAX_N)."""
    if fit.spec.n > dfmethods.KR_MAX_N:
        raise ValueError(f"dense KR needs {fit.spec.n}×{fit.spec.n} matrices")
    covs = dfmethods.block_covariances(fit.spec, fit.theta, fit.sigma)
    return dfmethods.kenward_roger_data(fit.spec, covs, float(fit.sigma), fit.result.vcov_beta)


def kr_of(fit) -> KenwardRogerData:
    """The KR data the fit's own df strategy computed."""
    return fit.df_strategy.data()


def _fit(data: pd.DataFrame, formula: str, reml: bool = True):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fit_mixed(data, formula, reml=reml, engine="fast", df_method="kenward-roger")


def _same(a: KenwardRogerData, b: KenwardRogerData, L: np.ndarray) -> None:
    np.testing.assert_allclose(a.PhiA, b.PhiA, rtol=1e-8, atol=1e-12 * np.abs(b.PhiA).max())
    np.testing.assert_allclose(a.W, b.W, rtol=1e-7, atol=1e-10 * np.abs(b.W).max())
    for row in L:
        assert a.df(row) == pytest.approx(b.df(row), rel=1e-7)
    assert a.adjust(L)[0] == pytest.approx(b.adjust(L)[0], rel=1e-7)


@pytest.mark.parametrize("case", ["sleepstudy_slope", "unbalanced"])
def test_blocks_match_pbkrtest_and_dense(case: str) -> None:
    ref = pd.DataFrame(json.loads((REF / "lme4_sleepstudy_tests.json").read_text())
                       ["kenward_roger"][case])
    formula, reml = CASES[case]
    fit = _fit(load_data(case), formula, reml)
    assert fit.engine == "fast"
    fe = fit.fixed_effects
    np.testing.assert_allclose(fe["std_error"], ref["std_error"], rtol=1e-3)
    np.testing.assert_allclose(fe["df"], ref["df"], rtol=1e-2)
    np.testing.assert_allclose(fe["p_value"], ref["p_value"], rtol=2e-2, atol=1e-12)
    _same(kr_of(fit), kenward_roger_dense(fit), np.eye(fit.spec.p))


def _design(n_patients: int, seed: int) -> pd.DataFrame:
    """Patients with 4-12 pre/post readings, a binary arm and a random intercept and slope."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(2, 7, n_patients) * 2
    pid = np.repeat(np.arange(n_patients), sizes)
    post = np.concatenate([np.tile([0, 1], s // 2) for s in sizes])
    arm = (rng.random(n_patients) < 0.5).astype(int)[pid]
    age = rng.normal(50, 10, n_patients)[pid]
    b = rng.normal(size=(n_patients, 2)) @ np.array([[1.0, 0.0], [-0.3, 0.5]]).T
    y = (5 - 0.8 * post - 0.4 * post * arm + 0.01 * age + b[pid, 0] + b[pid, 1] * post
         + rng.normal(size=pid.size))
    return pd.DataFrame({"id": [f"p{i:05d}" for i in pid], "post": post, "arm": arm,
                         "age": age, "y": y})


def test_twenty_thousand_readings_and_a_subsample_against_dense() -> None:
    formula = "y ~ post * arm + age + (post | id)"
    big = _design(2700, seed=7)
    assert len(big) >= 20_000
    fit = _fit(big, formula)
    with pytest.raises(ValueError, match="dense"):
        kenward_roger_dense(fit)
    kr = kr_of(fit)
    fe = fit.fixed_effects
    assert np.all(np.isfinite(fe["df"])) and np.all(fe["df"] > 0)
    # with 2,700 patients the small-sample adjustment is tiny: Φ_A ≈ Φ, and the KR df of the
    # between-patient arm effect is close to Satterthwaite's
    np.testing.assert_allclose(np.diag(kr.PhiA), np.diag(kr.Phi), rtol=1e-2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sat = fit_mixed(big, formula, engine="fast").fixed_effects
    arm = list(fe["term"]).index("arm")
    assert fe["df"].iloc[arm] == pytest.approx(sat["df"].iloc[arm], rel=0.02)
    small_ids = big["id"].unique()[:200]
    small = big[big["id"].isin(small_ids)]
    assert len(small) <= 4000
    fs = _fit(small, formula)
    _same(kr_of(fs), kenward_roger_dense(fs), np.eye(fs.spec.p))
