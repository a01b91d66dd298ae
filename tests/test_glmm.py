"""Generalised mixed models: the API of fit_mixed(family=...), GeneralizedMixedFit, cautions, and
the domain functions fit_binary / fit_adverse_events (numbers checked against glmer fixtures)."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mfr_outcomes.models.binary import (
    WHY_ODDS_RATIOS_DIFFER,
    attenuation_factor,
    fit_adverse_events,
    fit_binary,
)
from mfr_outcomes.models.fit import fit_mixed
from mfr_outcomes.models.glmm_fit import GeneralizedMixedFit
from mfr_outcomes.warnings_ import ModelWarning

REF = Path(__file__).parent / "reference"


def _ref(case: str) -> dict:
    return json.loads((REF / f"glmer_{case}.json").read_text())


@pytest.fixture(scope="module")
def cbpp() -> pd.DataFrame:
    d = pd.read_csv(REF / "data" / "glmer_cbpp.csv")
    d["herd"] = d["herd"].astype(str)
    d["period"] = d["period"].astype(str)
    return d


@pytest.fixture(scope="module")
def cbpp_fit(cbpp) -> GeneralizedMixedFit:
    return fit_mixed(cbpp, "prop ~ period + (1 | herd)", family="binomial", weights="size")


def _binary_data(seed: int, n_groups: int = 40, per: int = 8, sd: float = 1.0,
                 beta=(-0.5, 0.8)) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    g = np.repeat(np.arange(n_groups), per)
    trt = np.tile(np.repeat([0, 1], per // 2), n_groups)
    eta = beta[0] + beta[1] * trt + rng.normal(0, sd, n_groups)[g]
    return pd.DataFrame({"y": rng.binomial(1, 1 / (1 + np.exp(-eta))).astype(float),
                         "trt": np.where(trt == 1, "b", "a"), "g": [f"p{i:03d}" for i in g],
                         "x": rng.normal(size=g.size)})


# ------------------------------------------------------------------------------ API
def test_weights_as_column_or_array_agree(cbpp, cbpp_fit):
    other = fit_mixed(cbpp, "prop ~ period + (1 | herd)", family="binomial",
                      weights=cbpp["size"].to_numpy())
    np.testing.assert_allclose(other.coef, cbpp_fit.coef, rtol=1e-10)
    assert other.deviance == pytest.approx(cbpp_fit.deviance, rel=1e-12)


def test_fixed_effects_exp_are_odds_ratios(cbpp_fit):
    fe, ex = cbpp_fit.fixed_effects, cbpp_fit.fixed_effects_exp
    assert list(fe.columns) == ["term", "estimate", "std_error", "df", "statistic", "p_value",
                                "ci_low", "ci_high"]
    np.testing.assert_allclose(ex["estimate"], np.exp(fe["estimate"]))
    np.testing.assert_allclose(ex["ci_low"], np.exp(fe["ci_low"]))
    np.testing.assert_allclose(ex["p_value"], fe["p_value"])
    assert ex.attrs["scale"] == "odds ratio"
    # Wald 95 % CI: estimate ± 1.96 SE
    np.testing.assert_allclose(fe["ci_high"] - fe["estimate"], 1.959964 * fe["std_error"],
                               rtol=1e-6)


def test_probit_has_no_ratio_scale(cbpp):
    fit = fit_mixed(cbpp, "prop ~ period + (1 | herd)", family="binomial", link="probit",
                    weights="size")
    with pytest.raises(ValueError, match="odds or rate ratios"):
        _ = fit.fixed_effects_exp
    with pytest.raises(ValueError, match="type='link'"):
        fit.contrasts("period", type="response")


def test_predict_link_and_response(cbpp, cbpp_fit):
    eta = cbpp_fit.predict(cbpp, type="link")
    np.testing.assert_allclose(eta, cbpp_fit.predict(type="link"), atol=1e-10)
    np.testing.assert_allclose(cbpp_fit.predict(cbpp, type="response"),
                               1 / (1 + np.exp(-eta)), rtol=1e-12)
    ref = _ref("cbpp_nagq1")
    np.testing.assert_allclose(eta[:10], ref["predict_link_head"], rtol=1e-4)
    new = cbpp.head(3).assign(herd="not-a-herd")  # unseen level: random effect 0
    np.testing.assert_allclose(cbpp_fit.predict(new),
                               cbpp_fit.predict(new, include_random=False))
    with pytest.raises(ValueError, match="type must be"):
        cbpp_fit.predict(cbpp, type="odds")


def test_compare_is_a_likelihood_ratio_test(cbpp, cbpp_fit):
    small = fit_mixed(cbpp, "prop ~ 1 + (1 | herd)", family="binomial", weights="size")
    tab = cbpp_fit.compare(small)
    assert tab["npar"].tolist() == [2, 5]
    chisq = 2 * (cbpp_fit.loglik - small.loglik)
    assert tab["chisq"].iloc[1] == pytest.approx(chisq)
    assert tab["df"].iloc[1] == 3
    assert 0 < tab["p_value"].iloc[1] < 0.001  # lme4's anova: Chisq 20.6 on 3 df


def test_summary_and_html(cbpp_fit):
    text = cbpp_fit.summary()
    assert "Laplace" in text and "binomial" in text and "Odds ratios" in text
    assert "herd" in text
    assert "<table" in cbpp_fit._repr_html_()
    assert "GeneralizedMixedFit" in repr(cbpp_fit)


def test_random_effects_frame(cbpp_fit):
    re = cbpp_fit.random_effects()
    assert list(re.columns) == ["group", "level", "term", "estimate", "cond_sd"]
    assert len(re) == 15 and (re["cond_sd"] > 0).all()


def test_vector_random_effects_backends_agree():
    d = pd.read_csv(REF / "data" / "glmer_slope.csv")
    a = fit_mixed(d, "y ~ x + trt + (x | g)", family="binomial")
    b = fit_mixed(d, "y ~ x + trt + (x | g)", family="binomial",
                  options={"backend": "general"})
    assert a.diagnostics["backend"] == "OneFactorPirls"
    assert b.diagnostics["backend"] == "GeneralPirls"
    assert a.deviance == pytest.approx(b.deviance, rel=1e-9)
    np.testing.assert_allclose(a.coef, b.coef, rtol=1e-5)
    ra, rb = a.random_effects(), b.random_effects()
    np.testing.assert_allclose(ra["estimate"], rb["estimate"], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(ra["cond_sd"], rb["cond_sd"], rtol=1e-4)


# ------------------------------------------------------------------------------ bad input
def test_unknown_options_are_errors(cbpp):
    with pytest.raises(ValueError, match="Unknown option"):
        fit_mixed(cbpp, "prop ~ period + (1 | herd)", options={"family": "binomial"})
    with pytest.raises(ValueError, match="Unknown option"):
        fit_mixed(cbpp, "prop ~ period + (1 | herd)", family="binomial", weights="size",
                  options={"tolerance": 1})


def test_bad_family_link_and_nagq(cbpp):
    with pytest.raises(ValueError, match="family must be one of"):
        fit_mixed(cbpp, "prop ~ period + (1 | herd)", family="gamma")
    with pytest.raises(ValueError, match="takes link"):
        fit_mixed(cbpp, "prop ~ period + (1 | herd)", family="poisson", link="logit")
    d = pd.read_csv(REF / "data" / "glmer_verbagg.csv")
    with pytest.raises(ValueError, match="single, scalar random-effects term"):
        fit_mixed(d, "r2 ~ Anger + (1 | id) + (1 | item)", family="binomial", nagq=5)
    with pytest.raises(ValueError, match="apply to family"):
        fit_mixed(cbpp, "prop ~ period + (1 | herd)", weights="size")


def test_binomial_response_out_of_range_is_an_error(cbpp):
    with pytest.raises(ValueError, match="0/1 or a proportion"):
        fit_mixed(cbpp, "incidence ~ period + (1 | herd)", family="binomial")
    with pytest.raises(ValueError, match="weights has 3 values"):
        fit_mixed(cbpp, "prop ~ period + (1 | herd)", family="binomial", weights=[1, 2, 3])


# ------------------------------------------------------------------------------ cautions
def test_non_integer_binomial_response_warns(cbpp):
    with pytest.warns(ModelWarning, match="Non-integer number of successes"):
        fit_mixed(cbpp, "prop ~ period + (1 | herd)", family="binomial")


def test_non_integer_poisson_response_warns():
    d = pd.read_csv(REF / "data" / "glmer_poisson.csv")
    d["ticks"] = d["ticks"] + 0.5
    with pytest.warns(ModelWarning, match="Non-integer counts"):
        fit_mixed(d, "ticks ~ height + (1 | site)", family="poisson")
    with pytest.raises(ValueError, match="count ≥ 0"):
        fit_mixed(d.assign(ticks=-d["ticks"]), "ticks ~ height + (1 | site)", family="poisson")


def test_gaussian_fit_of_binary_or_count_names_family():
    d = _binary_data(1)
    with pytest.warns(ModelWarning, match="family='binomial'"):
        fit_mixed(d, "y ~ trt + (1 | g)")
    rng = np.random.default_rng(3)
    d["count"] = rng.negative_binomial(1, 0.1, len(d)).astype(float)
    with pytest.warns(ModelWarning, match="family='poisson'"):
        fit_mixed(d, "count ~ trt + (1 | g)")


def test_separation_names_the_level():
    d = _binary_data(2)
    d["site"] = np.where(np.arange(len(d)) % 3 == 0, "c", np.where(np.arange(len(d)) % 3 == 1,
                                                                   "a", "b"))
    d.loc[d["site"] == "c", "y"] = 0.0
    with pytest.warns(ModelWarning, match="every response for site = c is 0"):
        fit = fit_mixed(d, "y ~ trt + site + (1 | g)", family="binomial")
    assert any("site = c" in s for s in fit.diagnostics["separation"])
    assert any("site[T.c]" in s for s in fit.diagnostics["separation"])


def test_singular_fit_warns():
    d = _binary_data(4, sd=0.0)
    with pytest.warns(ModelWarning, match="singular"):
        fit = fit_mixed(d, "y ~ trt + (1 | g)", family="binomial")
    assert fit.diagnostics["singular"]


def test_non_convergence_warns():
    d = _binary_data(5, sd=1.5)
    with pytest.warns(ModelWarning, match="may not have converged"):
        fit = fit_mixed(d, "y ~ trt + x + (1 | g)", family="binomial",
                        options={"max_newton": 0, "maxiter": 1})
    assert not fit.diagnostics["converged"]


def test_poisson_overdispersion_caution():
    rng = np.random.default_rng(6)
    g = np.repeat(np.arange(30), 10)
    mu = np.exp(1.0 + rng.normal(0, 0.3, 30)[g]) * rng.gamma(0.5, 2.0, g.size)
    d = pd.DataFrame({"y": rng.poisson(mu).astype(float), "g": g.astype(str)})
    with pytest.warns(ModelWarning, match="Overdispersion"):
        fit = fit_mixed(d, "y ~ 1 + (1 | g)", family="poisson")
    od = fit.diagnostics["overdispersion"]
    assert od["ratio"] > 1.5 and od["p_value"] < 1e-6
    assert od["df"] == len(d) - 2


# ------------------------------------------------------------------------------ domain
@pytest.fixture(scope="module")
def binary_fit(synthetic_study):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fit_binary(synthetic_study, "paresthesia", by="technique", time="session_number")


def test_fit_binary_is_glmers_paresthesia_model(binary_fit):
    ref = _ref("paresthesia")
    assert binary_fit.glmm.deviance == pytest.approx(ref["minus2loglik"], rel=1e-6)
    ors = binary_fit.odds_ratios.set_index("term")
    fe = pd.DataFrame(ref["fixef"]).set_index("term")
    np.testing.assert_allclose(ors["odds_ratio"], np.exp(fe["estimate"].iloc[1:]), rtol=1e-4)


def test_fit_binary_shows_the_gee_beside_it(binary_fit):
    ors = binary_fit.odds_ratios
    assert {"gee_odds_ratio", "gee_ci_low", "gee_ci_high", "expected_gee_odds_ratio"} <= \
        set(ors.columns)
    assert ors["gee_odds_ratio"].notna().all()
    assert binary_fit.explanation == WHY_ODDS_RATIOS_DIFFER
    assert "population-averaged" in binary_fit.summary()
    # attenuation: the population-averaged log odds ratios are closer to 0 on average
    ss = np.abs(np.log(ors["odds_ratio"])).sum()
    pa = np.abs(np.log(ors["gee_odds_ratio"])).sum()
    assert pa < ss
    assert attenuation_factor(binary_fit.patient_variance) == pytest.approx(
        1 / np.sqrt(1 + 0.3463 * binary_fit.patient_variance), rel=1e-3)


def test_fit_adverse_events_matches_glmer(synthetic_study):
    with pytest.warns(ModelWarning, match="singular"):
        ae = fit_adverse_events(synthetic_study)
    ref = _ref("adverse")
    assert ae.glmm.deviance == pytest.approx(ref["minus2loglik"], rel=1e-6)
    np.testing.assert_allclose(np.log(ae.odds_ratios["odds_ratio"]),
                               [f["estimate"] for f in ref["fixef"]][1:], rtol=1e-4)
    assert ae.table["sessions"].sum() == ref["nobs"]
    assert (ae.table["events"] <= ae.table["sessions"]).all()
    inside = (ae.table["ci_low"] <= ae.table["probability"]) & \
        (ae.table["probability"] <= ae.table["ci_high"])
    assert inside.all()


@pytest.mark.parametrize("family,link", [("binomial", "logit"), ("binomial", "probit"),
                                         ("binomial", "cloglog"), ("poisson", "log")])
def test_analytic_laplace_gradient_matches_finite_differences(cbpp, family, link):
    from mfr_outcomes.models.families import get_family
    from mfr_outcomes.models.formula import build_spec
    from mfr_outcomes.models.glmm import make_backend
    from mfr_outcomes.models.glmm_pirls import GlmmData

    spec = build_spec(cbpp, "prop ~ period + (1 | herd)")
    y = spec.y if family == "binomial" else spec.data["incidence"].to_numpy(float)
    w = spec.data["size"].to_numpy(float) if family == "binomial" else np.ones(spec.n)
    off = np.zeros(spec.n) if family == "binomial" else np.log(w)
    data = GlmmData(y, spec.X, w if family == "binomial" else np.ones(spec.n), off,
                    get_family(family, link))
    be = make_backend(spec, data)
    x = np.array([0.7, -1.3, -0.9, -1.1, -1.5])

    def f(v):
        return be.modes(v[:1], v[1:], None).laplace(data.const)

    fd = np.array([(f(x + h) - f(x - h)) / 2e-5 for h in np.eye(5) * 1e-5])
    exact = be.laplace_gradient(x[:1], be.modes(x[:1], x[1:], None))
    np.testing.assert_allclose(exact, fd, rtol=1e-5, atol=1e-6)

