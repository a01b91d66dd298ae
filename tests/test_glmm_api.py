"""LinearMixedFit and GeneralizedMixedFit are siblings on MixedFitBase: the shared tables, tests,
predictions, comparison and displays come from the base (not written twice), only the
family-specific parts are in the subclasses, and both summaries have the same shape."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import special

from mfr_outcomes.models.base import MixedFitBase
from mfr_outcomes.models.fit import LinearMixedFit, fit_mixed
from mfr_outcomes.models.glmm import GlmmResult
from mfr_outcomes.models.glmm_fit import GeneralizedMixedFit
from mfr_outcomes.models.spec import EngineResult

REF = Path(__file__).parent / "reference"

#: Family-agnostic logic: defined once, in the base, and inherited by both fits.
SHARED = ["variance_components", "random_covariances", "fixed_effects", "linear_contrast",
          "anova", "compare", "random_effects", "model_matrix", "_random_part",
          "_linear_predictor", "df_strategy", "summary", "_repr_html_", "__repr__", "_check",
          "_warn", "_check_convergence", "_block_covs", "_safe_fixed_table",
          "_random_effects_lines", "_fixed_effects_display"]
#: Family-specific: the generalised fit adds or overrides these (and calls the base where the
#: link-scale part is the same).
FAMILY = ["fixed_effects_exp", "ratio_name", "emmeans", "contrasts", "predict", "fitted",
          "residuals", "icc", "r2", "_offset", "_check_family", "_check_comparable",
          "_fit_method", "_family_line", "_extra_tables", "_extra_diagnostics"]


@pytest.fixture(scope="module")
def cbpp() -> pd.DataFrame:
    return pd.read_csv(REF / "data" / "glmer_cbpp.csv", dtype={"herd": str, "period": str})


@pytest.fixture(scope="module")
def glmm(cbpp) -> GeneralizedMixedFit:
    return fit_mixed(cbpp, "prop ~ period + (1 | herd)", family="binomial", weights="size")


@pytest.fixture(scope="module")
def lmm() -> LinearMixedFit:
    sleep = pd.read_csv(REF / "data" / "sleepstudy.csv")
    return fit_mixed(sleep, "Reaction ~ Days + (Days | Subject)", engine="pls")


def test_both_fits_are_siblings_on_the_base():
    assert issubclass(LinearMixedFit, MixedFitBase)
    assert issubclass(GeneralizedMixedFit, MixedFitBase)
    assert not issubclass(GeneralizedMixedFit, LinearMixedFit)


@pytest.mark.parametrize("name", SHARED)
def test_shared_logic_is_the_base_s_not_a_copy(name):
    for cls in (LinearMixedFit, GeneralizedMixedFit):
        assert name not in vars(cls), f"{cls.__name__} re-implements {name}"
        assert getattr(cls, name) is getattr(MixedFitBase, name)


@pytest.mark.parametrize("name", FAMILY)
def test_family_specific_parts_live_in_the_generalised_fit(name):
    assert name in vars(GeneralizedMixedFit)


def test_the_generalised_fit_carries_an_engine_result(glmm):
    assert isinstance(glmm.result, EngineResult)
    assert isinstance(glmm.glmm_result, GlmmResult)
    assert glmm.result.internals is glmm.glmm_result
    assert glmm.result.reml is False and glmm.result.sigma == 1.0
    assert glmm.df_method == "asymptotic"
    # the base's lme4 bookkeeping on glmer's conventions: σ not counted, −2 log L = deviance
    assert glmm.npar == glmm.spec.p + glmm.spec.n_theta
    assert glmm.deviance == pytest.approx(glmm.glmm_result.objective, rel=1e-14)
    assert glmm.aic == pytest.approx(glmm.deviance + 2 * glmm.npar)
    # closures nothing here needs are listed, without a caution
    assert len(glmm.diagnostics["unavailable"]) == 2
    assert not any("cannot supply" in w for w in glmm.diagnostics["warnings"])


def test_wald_z_from_the_base_equal_the_closed_form(glmm):
    fe = glmm.fixed_effects
    se = np.sqrt(np.diag(glmm.vcov.to_numpy()))
    z = glmm.coef.to_numpy() / se
    np.testing.assert_allclose(fe["std_error"], se, rtol=1e-12)
    np.testing.assert_allclose(fe["statistic"], z, rtol=1e-12)
    np.testing.assert_allclose(fe["p_value"], 2 * special.ndtr(-np.abs(z)), rtol=1e-12)
    assert np.isinf(fe["df"]).all()
    with pytest.raises(ValueError, match="level must be between 0 and 1"):
        glmm.linear_contrast(np.eye(glmm.spec.p), level=95)


def test_link_scale_emmeans_are_the_base_s(glmm):
    ours = glmm.emmeans("period")
    base = MixedFitBase.emmeans(glmm, "period")
    pd.testing.assert_frame_equal(ours.reset_index(drop=True), base.reset_index(drop=True))


def test_prediction_at_the_rows_used_equals_the_backend_eta(glmm, cbpp):
    np.testing.assert_allclose(glmm.predict(), glmm.glmm_result.eta, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(glmm.fitted(), glmm.glmm_result.mu, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(glmm.predict(cbpp), glmm.predict(), atol=1e-10)


def test_random_effects_have_one_layout(glmm, lmm):
    a, b = glmm.random_effects(), lmm.random_effects()
    assert list(a.columns) == list(b.columns) == ["group", "level", "term", "estimate",
                                                  "cond_sd"]
    # level by level, terms within a level (as the linear fit always gave them)
    assert b["term"].iloc[:2].tolist() == ["(Intercept)", "Days"]
    assert b["level"].iloc[0] == b["level"].iloc[1]


def _shape(text: str) -> list[str]:
    """The section skeleton of a summary: its headings, in order."""
    keys = ("Formula:", "Engine:", "Random effects:", "Number of obs:", "Fixed effects:",
            "Cautions:")
    out = []
    for line in text.splitlines():
        if "fit by" in line and not out:
            out.append("title")
        if re.match(r"\s*AIC\s+BIC\s+logLik|REML criterion", line):
            out.append("criteria")
        out += [k for k in keys if line.startswith(k)]
        if line.startswith(" Groups"):
            out.append("varcorr header")
    return out


def test_summaries_have_the_same_shape(glmm, lmm, cbpp):
    ml = fit_mixed(pd.read_csv(REF / "data" / "sleepstudy.csv"),
                   "Reaction ~ Days + (Days | Subject)", engine="pls", reml=False)
    shapes = [_shape(f.summary()) for f in (lmm, ml, glmm)]
    assert shapes[0] == shapes[1] == [s for s in shapes[2] if s != "Cautions:"]
    assert shapes[2][:8] == ["title", "Formula:", "Engine:", "criteria", "Random effects:",
                             "varcorr header", "Number of obs:", "Fixed effects:"]
    # the criterion lines of an ML linear fit and a glmer fit are the same line
    crit = [next(line for line in f.summary().splitlines() if "logLik" in line)
            for f in (ml, glmm)]
    assert crit[0] == crit[1]
    # the same coefficient table, with t tests (and df) or Wald z tests
    head = [next(line for line in f.summary().splitlines() if "Estimate" in line).split()
            for f in (lmm, glmm)]
    assert head[0] == ["Estimate", "Std.", "Error", "df", "t", "value", "Pr(>|t|)"]
    assert head[1] == ["Estimate", "Std.", "Error", "z", "value", "Pr(>|z|)"]
    text = glmm.summary()
    assert "Family: binomial  ( logit )" in text and "Odds ratios (95 % CI):" in text
    assert "Laplace approximation" in text and "Wald z tests" in text
    for f in (lmm, glmm):
        html = f._repr_html_()
        assert html.count("<table") == (3 if f is glmm else 2)
        assert "Variance components" in html


def test_compare_checks_the_family_then_uses_the_base(glmm, lmm, cbpp):
    small = fit_mixed(cbpp, "prop ~ 1 + (1 | herd)", family="binomial", weights="size")
    tab = glmm.compare(small)
    assert tab["chisq"].iloc[1] == pytest.approx(2 * (glmm.loglik - small.loglik))
    with pytest.raises(ValueError, match="same family"):
        glmm.compare(lmm)


def test_a_separation_caution_is_in_the_summary():
    rng = np.random.default_rng(3)
    g = np.repeat(np.arange(30), 6)
    site = np.tile(["a", "b", "c"], 60)
    y = rng.binomial(1, 0.4, g.size).astype(float)
    y[site == "c"] = 0.0
    d = pd.DataFrame({"y": y, "site": site, "g": [f"p{i}" for i in g]})
    with pytest.warns(Warning):
        fit = fit_mixed(d, "y ~ site + (1 | g)", family="binomial")
    assert fit.diagnostics["separation"]
    assert "Complete separation" in fit.summary().split("Cautions:")[1]
