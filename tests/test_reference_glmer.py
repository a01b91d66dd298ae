"""Generalised mixed models against lme4's glmer (fixtures from tests/reference/make_reference_glmer.R).

Tolerances: estimates 1e-4 relative, standard errors and variances 1e-3, −2 log-likelihood
1e-6 relative (glmer run with a tight optimiser; the fixture records the control).
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mfr_outcomes.models.fit import fit_mixed
from mfr_outcomes.warnings_ import ModelWarning

REF = Path(__file__).parent / "reference"
TECHNIQUES = ["direct_pressure", "stretching", "massage", "combined"]

# case -> (data file, formula as fit here, family, link, weights column, offset)
CASES = {
    "cbpp_nagq0": ("cbpp", "prop ~ period + (1 | herd)", "binomial", None, "size", None),
    "cbpp_nagq1": ("cbpp", "prop ~ period + (1 | herd)", "binomial", None, "size", None),
    "cbpp_nagq10": ("cbpp", "prop ~ period + (1 | herd)", "binomial", None, "size", None),
    "cbpp_nagq25": ("cbpp", "prop ~ period + (1 | herd)", "binomial", None, "size", None),
    "cbpp_probit": ("cbpp", "prop ~ period + (1 | herd)", "binomial", "probit", "size", None),
    "cbpp_cloglog": ("cbpp", "prop ~ period + (1 | herd)", "binomial", "cloglog", "size", None),
    "slope": ("slope", "y ~ x + trt + (x | g)", "binomial", None, None, None),
    "paresthesia": ("paresthesia", "value ~ technique + session_number + (1 | patient_id)",
                    "binomial", None, None, None),
    "paresthesia_nagq10": ("paresthesia",
                           "value ~ technique + session_number + (1 | patient_id)",
                           "binomial", None, None, None),
    "adverse": ("adverse", "event ~ technique + (1 | patient_id)", "binomial", None, None, None),
    "poisson": ("poisson", "ticks ~ height + year + (1 | site)", "poisson", None, None,
                "log_exposure"),
    "verbagg": ("verbagg", "r2 ~ Anger + Gender + btype + situ + (1 | id) + (1 | item)",
                "binomial", None, None, None),
}


def load_ref(case: str) -> dict:
    return json.loads((REF / f"glmer_{case}.json").read_text())


def load_data(name: str) -> pd.DataFrame:
    d = pd.read_csv(REF / "data" / f"glmer_{name}.csv")
    for col in ("herd", "period", "patient_id", "g", "site", "id", "item"):
        if col in d:
            d[col] = d[col].astype(str)
    if "technique" in d:
        d["technique"] = pd.Categorical(d["technique"], TECHNIQUES)
    if "exposure" in d:
        d["log_exposure"] = np.log(d["exposure"])
    return d


_FITS: dict[str, object] = {}
_CAUGHT: dict[str, list[str]] = {}


def fitted(case: str):
    if case not in _FITS:
        name, formula, family, link, w, off = CASES[case]
        ref = load_ref(case)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            _FITS[case] = fit_mixed(load_data(name), formula, family=family, link=link,
                                    nagq=ref["nagq"], weights=w, offset=off)
        _CAUGHT[case] = [str(c.message) for c in caught if issubclass(c.category, ModelWarning)]
    return _FITS[case]


@pytest.mark.parametrize("case", sorted(CASES))
def test_cautions_only_where_glmer_has_them(case):
    ref, fit = load_ref(case), fitted(case)
    singular = [m for m in _CAUGHT[case] if "singular" in m]
    assert bool(singular) == ref["is_singular"]
    assert fit.diagnostics["converged"]


@pytest.mark.parametrize("case", sorted(CASES))
def test_glmer_estimates(case):
    ref, fit = load_ref(case), fitted(case)
    fe = pd.DataFrame(ref["fixef"])
    ours = fit.fixed_effects.set_index("term")
    assert len(ours) == len(fe)
    est = ours["estimate"].to_numpy()
    scale = np.max(np.abs(fe["estimate"]))
    np.testing.assert_allclose(est, fe["estimate"], rtol=1e-4, atol=1e-6 * scale)
    np.testing.assert_allclose(ours["std_error"], fe["std_error"], rtol=1e-3)
    np.testing.assert_allclose(ours["statistic"], fe["statistic"], rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(ours["p_value"], fe["p_value"], rtol=5e-3, atol=1e-8)
    assert np.all(np.isinf(ours["df"]))


@pytest.mark.parametrize("case", sorted(CASES))
def test_glmer_likelihood_and_variances(case):
    ref, fit = load_ref(case), fitted(case)
    # glmer's optimum to 1e-6 relative (ours may only be lower: a tighter optimum)
    assert fit.deviance == pytest.approx(ref["minus2loglik"], rel=1e-6)
    assert fit.loglik == pytest.approx(ref["loglik"], rel=1e-6)
    assert fit.aic == pytest.approx(ref["aic"], rel=1e-6)
    assert fit.bic == pytest.approx(ref["bic"], rel=1e-6)
    assert fit.conditional_deviance == pytest.approx(ref["deviance"], rel=1e-4)
    assert fit.nobs == ref["nobs"]
    vc = pd.DataFrame(ref["varcorr"])
    ours = fit.variance_components
    var_ref = vc[vc["var2"].isna()]["vcov"].to_numpy()
    var_ours = ours[ours["term2"].isna()]["variance"].to_numpy()
    np.testing.assert_allclose(var_ours, var_ref, rtol=1e-3, atol=1e-6)
    np.testing.assert_allclose(fit.theta, ref["theta"], rtol=1e-3, atol=1e-5)
    assert fit.diagnostics["singular"] == ref["is_singular"]


@pytest.mark.parametrize("case", ["cbpp_nagq1", "slope", "paresthesia", "poisson", "verbagg"])
def test_glmer_conditional_modes(case):
    ref, fit = load_ref(case), fitted(case)
    re_ref = pd.DataFrame(ref["ranef"])
    ours = fit.random_effects()
    merged = re_ref.merge(ours, left_on=["grpvar", "term", "level"],
                          right_on=["group", "term", "level"], suffixes=("_ref", ""))
    assert len(merged) == len(re_ref)
    np.testing.assert_allclose(merged["estimate"], merged["estimate_ref"], rtol=1e-3, atol=1e-5)
    np.testing.assert_allclose(merged["cond_sd"], merged["cond_sd_ref"], rtol=1e-3)
    np.testing.assert_allclose(fit.fitted()[:10], ref["fitted_head"], rtol=1e-4)


def test_paresthesia_emmeans_and_odds_ratios():
    ref, fit = load_ref("paresthesia"), fitted("paresthesia")
    emm = fit.emmeans("technique", type="response")
    r = pd.DataFrame(ref["emmeans_response"])
    np.testing.assert_allclose(emm["estimate"], r["prob"], rtol=1e-4)
    np.testing.assert_allclose(emm["std_error"], r["se"], rtol=1e-3)
    np.testing.assert_allclose(emm["ci_low"], r["lcl"], rtol=1e-3)
    np.testing.assert_allclose(emm["ci_high"], r["ucl"], rtol=1e-3)
    np.testing.assert_allclose(emm["statistic"], r["z"], rtol=1e-3)
    link = fit.emmeans("technique")
    np.testing.assert_allclose(link["estimate"], pd.DataFrame(ref["emmeans_link"])["emmean"],
                               rtol=1e-4)
    pairs = fit.contrasts("technique", type="response", adjust="none")
    p = pd.DataFrame(ref["pairs_response"])
    assert pairs["contrast"].tolist() == p["contrast"].tolist()
    np.testing.assert_allclose(pairs["estimate"], p["odds_ratio"], rtol=1e-4)
    np.testing.assert_allclose(pairs["std_error"], p["se"], rtol=1e-3)
    np.testing.assert_allclose(pairs["ci_low"], p["lcl"], rtol=1e-3)
    np.testing.assert_allclose(pairs["ci_high"], p["ucl"], rtol=1e-3)
    np.testing.assert_allclose(pairs["p_value"], p["p"], rtol=1e-3)


@pytest.mark.parametrize("case", ["paresthesia", "poisson"])
def test_icc_r2_as_performance(case):
    ref, fit = load_ref(case), fitted(case)
    icc, r2 = fit.icc(), fit.r2()
    assert icc["icc_adjusted"] == pytest.approx(ref["icc_adjusted"], rel=1e-3)
    assert icc["icc_unadjusted"] == pytest.approx(ref["icc_unadjusted"], rel=1e-3)
    assert r2["r2_marginal"] == pytest.approx(ref["r2_marginal"], rel=1e-3)
    assert r2["r2_conditional"] == pytest.approx(ref["r2_conditional"], rel=1e-3)


def test_cbpp_one_factor_and_general_backends_agree():
    ref = load_ref("cbpp_nagq1")
    d = load_data("cbpp")
    fit = fit_mixed(d, "prop ~ period + (1 | herd)", family="binomial", weights=d["size"],
                    options={"backend": "general"})
    assert fit.diagnostics["backend"] == "GeneralPirls"
    assert fit.deviance == pytest.approx(ref["minus2loglik"], rel=1e-6)
    np.testing.assert_allclose(fit.coef, [f["estimate"] for f in ref["fixef"]], rtol=1e-4)


def test_cbpp_cbind_formula():
    ref = load_ref("cbpp_nagq1")
    d = load_data("cbpp")
    fit = fit_mixed(d, "cbind(incidence, size - incidence) ~ period + (1 | herd)",
                    family="binomial")
    assert fit.deviance == pytest.approx(ref["minus2loglik"], rel=1e-6)
    np.testing.assert_allclose(fit.coef, [f["estimate"] for f in ref["fixef"]], rtol=1e-4)


def test_poisson_offset_in_formula():
    ref = load_ref("poisson")
    fit = fit_mixed(load_data("poisson"),
                    "ticks ~ height + year + offset(log(exposure)) + (1 | site)",
                    family="poisson")
    assert fit.deviance == pytest.approx(ref["minus2loglik"], rel=1e-6)
    np.testing.assert_allclose(fit.coef, [f["estimate"] for f in ref["fixef"]], rtol=1e-4)
