"""ICC and Nakagawa R² against R's performance (fixtures from make_reference_marginal.R)."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mfr_outcomes.models.fit import fit_mixed
from mfr_outcomes.models.r2 import icc, r2_nakagawa, variance_parts
from mfr_outcomes.warnings_ import ModelWarning

REF = Path(__file__).parent / "reference"
TECH = ["direct_pressure", "stretching", "massage", "combined"]


@pytest.fixture(scope="module")
def data(marginal_prepost):
    return marginal_prepost


@pytest.fixture(scope="module")
def ref() -> dict:
    return json.loads((REF / "marginal_prepost.json").read_text())["models"]


@pytest.fixture(scope="module")
def fits(ref, data) -> dict:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ModelWarning)
        return {k: fit_mixed(data, ref[k]["model"]["formula"], reml=True) for k in ref}


@pytest.mark.reference
@pytest.mark.parametrize("model", ["slope", "therapist", "intercept"])
def test_icc_and_r2_match_performance(fits, ref, model):
    r = ref[model]["icc_r2"]
    res = icc(fits[model])
    assert res.adjusted == pytest.approx(r["icc_adjusted"], abs=1e-3)
    assert res.unadjusted == pytest.approx(r["icc_unadjusted"], abs=1e-3)
    assert res["adjusted"] == res.adjusted
    r2 = r2_nakagawa(fits[model])
    assert r2.marginal == pytest.approx(r["r2_marginal"], abs=1e-3)
    assert r2.conditional == pytest.approx(r["r2_conditional"], abs=1e-3)
    parts = res.parts
    assert parts.var_fixed == pytest.approx(r["var_fixed"], rel=1e-3)
    assert parts.var_random == pytest.approx(r["var_random"], rel=1e-3)
    assert parts.var_residual == pytest.approx(r["var_residual"], rel=1e-3)
    if model == "intercept":
        by = icc(fits[model], by_group=True)
    else:
        with pytest.warns(ModelWarning, match="random slopes"):
            by = icc(fits[model], by_group=True)
    theirs = pd.DataFrame(r["icc_by_group"]) if isinstance(r["icc_by_group"], list) else \
        pd.DataFrame([r["icc_by_group"]])
    assert list(by["group"]) == list(theirs["group"])
    np.testing.assert_allclose(by["icc"], theirs["icc"], atol=1e-3)
    frame = r2.to_frame()
    assert list(frame.columns) == ["r2_marginal", "r2_conditional", "var_fixed", "var_random",
                                   "var_residual"]


def test_random_intercept_icc_is_the_textbook_ratio(fits):
    """With only a random intercept, σ²_r is the intercept variance (no slope averaging)."""
    fit = fits["intercept"]
    tau = fit.random_covariances[0][2][0, 0]
    res = icc(fit)
    assert res.adjusted == pytest.approx(tau / (tau + fit.sigma ** 2), rel=1e-12)


def test_random_slope_variance_is_mean_of_z_sigma_z(fits, data):
    """Johnson (2014): σ²_r = mean over rows of z_iᵀ Σ z_i, by hand for (post | patient)."""
    fit = fits["slope"]
    S = fit.random_covariances[0][2]
    post = fit.spec.data["post"].to_numpy(float)
    by_hand = np.mean(S[0, 0] + 2 * post * S[0, 1] + post ** 2 * S[1, 1])
    assert variance_parts(fit).var_random == pytest.approx(by_hand, rel=1e-12)
    eta = fit.spec.X @ fit.coef.to_numpy()
    assert variance_parts(fit).var_fixed == pytest.approx(np.var(eta, ddof=1), rel=1e-12)


def test_fit_methods_delegate(fits):
    assert fits["slope"].icc().adjusted == icc(fits["slope"]).adjusted
    assert fits["slope"].r2().marginal == r2_nakagawa(fits["slope"]).marginal


def test_singular_fit_gives_nan_with_warning():
    rng = np.random.default_rng(3)
    n_g, n_per = 30, 4
    d = pd.DataFrame({"g": np.repeat([f"g{i}" for i in range(n_g)], n_per),
                      "x": rng.normal(size=n_g * n_per)})
    # x and the noise centred within groups: every group mean of y is exactly 1, so the
    # between-group variance is estimated at the boundary (0)
    d["x"] -= d.groupby("g")["x"].transform("mean")
    e = pd.Series(rng.normal(size=len(d)))
    e -= e.groupby(d["g"]).transform("mean")
    d["y"] = 1.0 + 0.5 * d["x"] + e
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ModelWarning)
        fit = fit_mixed(d, "y ~ x + (1 | g)")
    assert float(np.min(fit.theta)) < 1e-5
    with pytest.warns(ModelWarning, match="singular"):
        res = icc(fit)
    assert np.isnan(res.adjusted) and np.isnan(res.unadjusted)
    with pytest.warns(ModelWarning, match="singular"):
        r2 = r2_nakagawa(fit)
    assert np.isnan(r2.conditional)
    eta = fit.spec.X @ fit.coef.to_numpy()
    vf = np.var(eta, ddof=1)
    assert r2.marginal == pytest.approx(vf / (vf + fit.sigma ** 2))
    assert any("random effects" in n for n in r2.notes)


def test_random_slope_not_in_fixed_part_warns(data):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ModelWarning)
        fit = fit_mixed(data, "value ~ technique + (post | patient_id)")
    with pytest.warns(ModelWarning, match="not fixed effects"):
        res = icc(fit)
    assert any("inflates" in n for n in res.notes)


def test_icc_by_group_with_slopes_warns(fits):
    with pytest.warns(ModelWarning, match="random slopes"):
        icc(fits["slope"], by_group=True)


@pytest.mark.reference
def test_boundary_fit_matches_performance_on_synthetic_data():
    """performance gives NA ICC and conditional R² for a singular fit, and σ²_f/(σ²_f + σ²_e)."""
    ref = json.loads((REF / "marginal_singular.json").read_text())["models"]["domain"]
    d = pd.read_csv(REF / "data" / "marginal_singular.csv")
    d["technique"] = pd.Categorical(d["technique"], categories=TECH)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ModelWarning)
        fit = fit_mixed(d, ref["model"]["formula"])
    r = ref["icc_r2"]
    assert r["icc_adjusted"] is None and r["r2_conditional"] is None
    with pytest.warns(ModelWarning, match="singular"):
        res = icc(fit)
    assert np.isnan(res.adjusted)
    with pytest.warns(ModelWarning, match="singular"):
        r2 = r2_nakagawa(fit)
    assert np.isnan(r2.conditional)
    assert r2.marginal == pytest.approx(r["r2_marginal"], abs=1e-3)
    assert r2.parts.var_fixed == pytest.approx(r["var_fixed"], rel=1e-3)
    assert r2.parts.var_residual == pytest.approx(r["var_residual"], rel=1e-3)


@pytest.mark.reference
def test_icc_on_synthetic_data_matches_performance():
    ref = json.loads((REF / "marginal_synthetic.json").read_text())["models"]["domain"]
    d = pd.read_csv(REF / "data" / "marginal_synthetic.csv")
    d["technique"] = pd.Categorical(d["technique"], categories=TECH)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ModelWarning)
        fit = fit_mixed(d, ref["model"]["formula"])
    r = ref["icc_r2"]
    res, r2 = icc(fit), r2_nakagawa(fit)
    assert res.adjusted == pytest.approx(r["icc_adjusted"], abs=1e-3)
    assert res.unadjusted == pytest.approx(r["icc_unadjusted"], abs=1e-3)
    assert r2.marginal == pytest.approx(r["r2_marginal"], abs=1e-3)
    assert r2.conditional == pytest.approx(r["r2_conditional"], abs=1e-3)
