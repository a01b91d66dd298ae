"""Marginal means and contrasts against R's emmeans (fixtures from make_reference_marginal.R)."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from mfr_outcomes.models.emmeans import adjust_p_values, contrasts, emmeans, reference_grid
from mfr_outcomes.models.fit import fit_mixed
from mfr_outcomes.warnings_ import ModelWarning

REF = Path(__file__).parent / "reference"
TECH = ["direct_pressure", "stretching", "massage", "combined"]


@pytest.fixture(scope="module")
def ref() -> dict:
    return json.loads((REF / "marginal_prepost.json").read_text())["models"]


@pytest.fixture(scope="module")
def fits(ref, marginal_prepost) -> dict:
    d = marginal_prepost
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ModelWarning)
        return {k: fit_mixed(d, ref[k]["model"]["formula"], reml=True) for k in ref}


def _compare(ours: pd.DataFrame, theirs: list[dict], keys: list[str]) -> None:
    r = pd.DataFrame(theirs)
    assert len(ours) == len(r)
    for k in keys:
        assert [str(x) for x in ours[k]] == [str(x) for x in r[k]], k
    np.testing.assert_allclose(ours["estimate"], r["estimate"], atol=1e-4)
    np.testing.assert_allclose(ours["std_error"], r["std_error"], atol=1e-3)
    # df to 0.01, or 1e-4 relative when df are in the hundreds (optimiser-level differences in
    # θ move a df of 700 by ~0.02, which changes no t quantile in the 4th digit)
    np.testing.assert_allclose(ours["df"], r["df"], atol=1e-2, rtol=1e-4)
    np.testing.assert_allclose(ours["ci_low"], r["ci_low"], atol=1e-3)
    np.testing.assert_allclose(ours["ci_high"], r["ci_high"], atol=1e-3)
    if "p_value" in r:
        np.testing.assert_allclose(ours["p_value"], r["p_value"], atol=1e-4)
    if "statistic" in r:
        np.testing.assert_allclose(ours["statistic"], r["statistic"], rtol=1e-3)


@pytest.mark.reference
@pytest.mark.parametrize("model", ["slope", "therapist"])
def test_emmeans_post_by_technique_matches_r(fits, ref, model):
    out = emmeans(fits[model], "post", by="technique")
    _compare(out, ref[model]["emm_post_by_technique"], ["post", "technique"])
    assert list(out.columns[:2]) == ["post", "technique"]


@pytest.mark.reference
def test_emmeans_averaging_and_at_match_r(fits, ref):
    fit = fits["slope"]
    _compare(emmeans(fit, "post"), ref["slope"]["emm_post"], ["post"])
    tech = emmeans(fit, "technique")
    _compare(tech, ref["slope"]["emm_technique"], ["technique"])
    # post (two values) is averaged over with equal weights, like emmeans' cov.keep = "2"
    assert tech.attrs["averaged_over"] == ["post"]
    assert any("interact" in n for n in tech.attrs["notes"])
    at = {"session_number": 3, "post": 1}
    _compare(emmeans(fit, "technique", at=at), ref["slope"]["emm_technique_at"], ["technique"])
    _compare(emmeans(fit, "technique", at=at, level=0.90), ref["slope"]["emm_technique_at_90"],
             ["technique"])
    _compare(emmeans(fits["intercept"], "technique"), ref["intercept"]["emm_technique"],
             ["technique"])


@pytest.mark.reference
@pytest.mark.parametrize("model", ["slope", "therapist"])
def test_post_minus_pre_within_technique_matches_r(fits, ref, model):
    out = contrasts(fits[model], "post", by="technique")
    _compare(out, ref[model]["con_post_by_technique"], ["contrast", "technique"])
    assert set(out["contrast"]) == {"post1 - post0"}
    if model == "slope":
        pw = contrasts(fits[model], "post", by="technique", method="pairwise")
        _compare(pw, ref[model]["con_post_by_technique_pairwise"], ["contrast", "technique"])


@pytest.mark.reference
@pytest.mark.parametrize("key,kwargs", [
    ("con_technique_tukey", {"method": "pairwise"}),
    ("con_technique_holm", {"method": "pairwise", "adjust": "holm"}),
    ("con_technique_bonferroni", {"method": "pairwise", "adjust": "bonferroni"}),
    ("con_technique_none", {"method": "pairwise", "adjust": "none"}),
    ("con_technique_revpairwise_tukey", {"method": "revpairwise", "adjust": "tukey"}),
    ("con_technique_trt_holm", {"method": "trt.vs.ctrl", "adjust": "holm"}),
    ("con_technique_custom", {"method": {"dp_vs_rest": [1, -1 / 3, -1 / 3, -1 / 3]}}),
])
def test_technique_contrasts_match_r(fits, ref, key, kwargs):
    out = contrasts(fits["slope"], "technique", **kwargs)
    _compare(out, ref["slope"][key], ["contrast"])


@pytest.mark.reference
def test_technique_contrasts_by_post_and_intercept_model_match_r(fits, ref):
    out = contrasts(fits["slope"], "technique", by="post", method="pairwise")
    _compare(out, ref["slope"]["con_technique_by_post_tukey"], ["contrast", "post"])
    _compare(contrasts(fits["intercept"], "technique", method="pairwise"),
             ref["intercept"]["con_technique_tukey"], ["contrast"])


def test_fit_methods_delegate(fits):
    fit = fits["slope"]
    pd.testing.assert_frame_equal(fit.emmeans("post", by="technique"),
                                  emmeans(fit, "post", by="technique"))
    pd.testing.assert_frame_equal(fit.contrasts("post", by="technique"),
                                  contrasts(fit, "post", by="technique"))


def test_reference_grid_shape(fits, marginal_prepost):
    grid, values = reference_grid(fits["slope"], "technique")
    assert values["technique"] == TECH
    assert values["post"] == [0, 1]
    assert values["session_number"] == [pytest.approx(marginal_prepost["session_number"].mean())]
    assert len(grid) == 8


def test_adjustments_closed_forms():
    t = np.array([2.5, -1.0, 0.3])
    df = np.array([20.0, 30.0, 40.0])
    raw = 2 * stats.t.sf(np.abs(t), df)
    np.testing.assert_allclose(adjust_p_values(t, df, "none"), raw)
    np.testing.assert_allclose(adjust_p_values(t, df, "bonferroni"), np.minimum(1, 3 * raw))
    np.testing.assert_allclose(adjust_p_values(t, df, "sidak"), 1 - (1 - raw) ** 3)
    # Holm by hand: sorted p times (k, k-1, ...), cumulative max, capped at 1
    order = np.argsort(raw)
    stepped = np.maximum.accumulate(raw[order] * np.array([3, 2, 1]))
    holm = np.empty(3)
    holm[order] = np.minimum(1, stepped)
    np.testing.assert_allclose(adjust_p_values(t, df, "holm"), holm)
    # Tukey with two means is the plain t test
    np.testing.assert_allclose(adjust_p_values(t, df, "tukey", n_means=2), raw, rtol=1e-6)


def test_bad_requests_give_sentences(fits):
    fit = fits["slope"]
    with pytest.raises(ValueError, match="not among the fixed-effect variables"):
        emmeans(fit, "therapy")
    with pytest.raises(ValueError, match="adjust must be one of"):
        contrasts(fit, "technique", adjust="scheffe")
    with pytest.raises(ValueError, match="needs 4"):
        contrasts(fit, "technique", method={"bad": [1, -1]})
    with pytest.raises(ValueError, match="not levels of"):
        emmeans(fit, "technique", at={"technique": ["cupping"]})
    with pytest.raises(ValueError, match="level must be between"):
        emmeans(fit, "post", level=95)
    with pytest.raises(ValueError, match="both specs and by"):
        emmeans(fit, "post", by="post")


def test_tukey_on_treatment_vs_control_becomes_sidak(fits):
    out = contrasts(fits["slope"], "technique", method="trt.vs.ctrl", adjust="tukey")
    assert (out["adjust"] == "sidak").all()
    assert any("sidak" in n for n in out.attrs["notes"])
    raw = contrasts(fits["slope"], "technique", method="trt.vs.ctrl", adjust="none")
    np.testing.assert_allclose(out["p_value"], 1 - (1 - raw["p_value"]) ** 3, rtol=1e-8)


def test_nonestimable_cell_warns_and_is_missing(marginal_prepost):
    d = marginal_prepost
    # no post reading for massage: post:technique[T.massage] cannot be estimated
    d = d[~((d["technique"] == "massage") & (d["post"] == 1))].reset_index(drop=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ModelWarning)
        fit = fit_mixed(d, "value ~ post * technique + session_number + (1 | patient_id)")
    with pytest.warns(ModelWarning, match="not estimable"):
        out = emmeans(fit, "post", by="technique")
    missing = out[out["estimate"].isna()]
    assert list(zip(missing["post"], missing["technique"])) == [(1, "massage")]
    assert out["estimate"].notna().sum() == 7
    with pytest.warns(ModelWarning, match="non-estimable"):
        con = contrasts(fit, "post", by="technique")
    assert con.set_index("technique").loc["massage", "estimate"] != \
        con.set_index("technique").loc["massage", "estimate"]
    assert con["estimate"].notna().sum() == 3


@pytest.mark.reference
def test_interaction_contrasts_match_r(fits, ref):
    fit = fits["slope"]
    out = contrasts(fit, ["post", "technique"], interaction=["revpairwise", "pairwise"])
    _compare(out, ref["slope"]["con_interaction"], ["post_revpairwise", "technique_pairwise"])
    assert (out["adjust"] == "none").all()
    holm = contrasts(fit, ["post", "technique"], interaction=["revpairwise", "pairwise"],
                     adjust="holm")
    _compare(holm, ref["slope"]["con_interaction_holm"],
             ["post_revpairwise", "technique_pairwise"])
    with pytest.raises(ValueError, match="interaction needs"):
        contrasts(fit, ["post", "technique"], interaction=["revpairwise"])


def _synthetic_case(name: str) -> tuple[dict, pd.DataFrame]:
    full = json.loads((REF / f"marginal_{name}.json").read_text())
    d = pd.read_csv(REF / "data" / f"marginal_{name}.csv")
    check = full["data_check"]
    if (len(d), round(d["value"].sum(), 6), int(d["post"].sum())) != \
            (check["nrow"], round(check["value_sum"], 6), check["post_sum"]):
        pytest.fail(f"tests/reference/data/marginal_{name}.csv changed since its JSON was "
                    f"written: rerun `Rscript tests/reference/make_reference_marginal.R`")
    d["technique"] = pd.Categorical(d["technique"], categories=TECH)
    return full["models"]["domain"], d


@pytest.mark.reference
@pytest.mark.parametrize("name", ["synthetic", "singular"])
def test_synthetic_prepost_matches_r(name):
    """The shipped pain data under fit_prepost's formula, and a boundary (singular) variant."""
    synthetic_ref, d = _synthetic_case(name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ModelWarning)
        fit = fit_mixed(d, synthetic_ref["model"]["formula"])
    assert synthetic_ref["model"]["singular"] == fit.diagnostics["singular"] == (name == "singular")
    _compare(emmeans(fit, "post", by="technique"), synthetic_ref["emm_post_by_technique"],
             ["post", "technique"])
    _compare(contrasts(fit, "post", by="technique"), synthetic_ref["con_post_by_technique"],
             ["contrast", "technique"])
    _compare(contrasts(fit, "technique", method="pairwise"), synthetic_ref["con_technique_tukey"],
             ["contrast"])
    _compare(contrasts(fit, ["post", "technique"], interaction=["revpairwise", "pairwise"]),
             synthetic_ref["con_interaction"], ["post_revpairwise", "technique_pairwise"])


def test_asymptotic_df_gives_z_based_tukey(marginal_prepost):
    d = marginal_prepost
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ModelWarning)
        fit = fit_mixed(d, "value ~ post * technique + session_number + (post | patient_id)",
                        df_method="asymptotic")
    out = contrasts(fit, "technique", method="pairwise")
    assert np.isinf(out["df"]).all()
    q = stats.studentized_range.ppf(0.95, 4, np.inf) / np.sqrt(2)
    np.testing.assert_allclose(out["ci_high"] - out["estimate"], q * out["std_error"], rtol=1e-8)
    p = stats.studentized_range.sf(np.sqrt(2) * np.abs(out["statistic"]), 4, np.inf)
    np.testing.assert_allclose(out["p_value"], p, rtol=1e-8)


@pytest.mark.reference
def test_weights_match_r(fits, ref):
    fit = fits["slope"]
    _compare(emmeans(fit, "technique", weights="proportional"),
             ref["slope"]["emm_technique_proportional"], ["technique"])
    _compare(emmeans(fit, "post", weights="proportional"), ref["slope"]["emm_post_proportional"],
             ["post"])
    _compare(emmeans(fit, "post", weights="cells"), ref["slope"]["emm_post_cells"], ["post"])
    _compare(contrasts(fit, "post", weights="proportional"),
             ref["slope"]["con_post_proportional"], ["contrast"])
    with pytest.raises(ValueError, match="weights must be one of"):
        emmeans(fit, "post", weights="outer")


def test_formula_style_specs(fits):
    fit = fits["slope"]
    pd.testing.assert_frame_equal(emmeans(fit, "~ post | technique"),
                                  emmeans(fit, "post", by="technique"), check_like=False)
    both = emmeans(fit, "post * technique")
    assert list(both.columns[:2]) == ["post", "technique"] and len(both) == 8
