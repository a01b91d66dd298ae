"""The "Therapists and sites" section on a yes/no main measure (paresthesia): a funnel of the
patients with the condition at their latest reading (exact binomial limits) and therapist and
site effects from a binomial GLMM, both checked against an independent answer
(tests/reference/make_reference_glmer_comparisons.R: glmer with a tight optimiser, and
Spiegelhalter's limits written out in R)."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import test_report_glmm
from scipy.special import expit
from test_report_glmm import _report, _rows

from mfr_outcomes.report.sections.comparisons import binary_effects

ROOT = Path(__file__).resolve().parents[1]
REF = json.loads((Path(__file__).parent / "reference" / "glmer_comparisons.json").read_text())
NEEDED = ("data_quality", "cohort", "comparisons", "methods")


@pytest.fixture(scope="module")
def report(synthetic_study, tmp_path_factory):
    out = tmp_path_factory.mktemp("cmp")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(test_report_glmm, "NEEDED", NEEDED)
        return _report(synthetic_study, out, measure="paresthesia", name_therapists=True), out


@pytest.mark.parametrize("case, sites", [("therapist", False), ("therapist_site", True)])
def test_binomial_glmm_effects_match_glmer(synthetic_study, case, sites):
    ref = REF[case]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit, re = binary_effects(synthetic_study.frame("paresthesia"), sites)
    assert fit.family.name == "binomial" and fit.nobs == ref["nobs"]
    # our optimum is at least as good as glmer's tight one, and the same point
    assert fit.deviance <= ref["minus2loglik"] + 1e-6
    assert fit.deviance == pytest.approx(ref["minus2loglik"], abs=1e-4)
    assert float(fit.coef.iloc[0]) == pytest.approx(ref["intercept"], abs=1e-4)
    got = {(g, lv): row for g, lv, row in zip(re["group"], re["level"].astype(str),
                                               re.to_dict("records"))}
    for r in ref["ranef"]:
        row = got[(r["grpvar"], r["level"])]
        assert row["log_odds"] == pytest.approx(r["estimate"], abs=2e-5)
        assert row["cond_sd"] == pytest.approx(r["cond_sd"], abs=2e-5)
        # the odds-ratio and typical-patient scales are transforms of glmer's numbers
        assert row["odds_ratio"] == pytest.approx(np.exp(r["estimate"]), rel=1e-4)
        assert row["ci_high"] == pytest.approx(np.exp(r["estimate"] + 1.959964 * r["cond_sd"]),
                                               rel=1e-4)
        assert row["percent_typical"] == pytest.approx(
            100 * expit(ref["intercept"] + r["estimate"]), abs=1e-3)
    # a therapist's patients: those with a pre-session reading on a visit with that therapist
    assert set(re["patients"]) <= set(range(1, 121)) and (re["patients"] > 0).all()


def test_binary_report_uses_the_glmm_not_a_gaussian_model(report):
    result, out = report
    assert not any("linear-probability" in c or "Gaussian" in c for c in result.cautions)
    assert not any("rank deficient" in c for c in result.cautions)
    fits = {r["model"]: r for r in _rows(out / "tables" / "methods_models.csv")}
    row = fits["Therapists and sites (binomial GLMM)"]
    assert row["formula"] == REF["therapist_site"]["formula"]
    assert int(row["observations"]) == REF["therapist_site"]["nobs"]
    # site has 3 levels and no variance: said, not swallowed
    assert any("binomial GLMM" in c and "singular" in c for c in result.cautions)
    tab = {r["unit"]: r for r in _rows(out / "tables" / "comparisons_glmm_therapist.csv")}
    ref = {r["level"]: r for r in REF["therapist_site"]["ranef"] if r["grpvar"] == "therapist_id"}
    assert set(tab) == set(ref)
    for unit, r in ref.items():
        assert float(tab[unit]["odds_ratio"]) == pytest.approx(np.exp(r["estimate"]), rel=1e-4)
    sec = result.sections["comparisons"]
    assert sec.ok, sec.problems
    assert len(sec.figures) >= 3  # two funnels and the therapist caterpillar


@pytest.mark.parametrize("noun", ["therapist", "site"])
def test_binary_funnel_counts_and_limits_match_r(report, noun):
    _, out = report
    rows = {r["unit"]: r for r in _rows(out / "tables" / f"comparisons_funnel_present_{noun}.csv")}
    ref = REF[f"funnel_{noun}"]
    assert set(rows) == {r["unit"] for r in ref}
    for r in ref:
        got = rows[r["unit"]]
        assert int(got["patients"]) == r["patients"]
        # a count below the smallest shown is published as "<5", never as the number
        assert got["present"] == (str(r["present"]) if r["present"] >= 5 else "<5")
        for c in ("lo95", "hi95", "lo998", "hi998"):
            assert float(got[c]) == pytest.approx(100 * r[c], abs=1e-9)
