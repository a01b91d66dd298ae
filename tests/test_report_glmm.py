"""The QI report's GLMM parts: the yes/no reading (paresthesia) by subject-specific odds ratios
with the GEE's population-averaged ones beside them, and adverse events per session as rate
ratios from a Poisson GLMM with an offset; numbers checked against glmer fixtures
(tests/reference/make_reference_glmer.R, make_reference_glmer_adverse_rate.R), cautions shown in
the section, and the disclosure rules kept for every count."""
from __future__ import annotations

import csv
import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import mfr_outcomes as mfr
from mfr_outcomes.models.binary import WHY_ODDS_RATIOS_DIFFER, fit_adverse_events
from mfr_outcomes.report import build_report
from mfr_outcomes.study import from_frames
from mfr_outcomes.warnings_ import ModelWarning

ROOT = Path(__file__).resolve().parents[1]
REF = Path(__file__).parent / "reference"
SYNTHETIC = ROOT / "data" / "synthetic"
#: Sections the GLMM parts need (the flow table of the cohort feeds the safety section).
NEEDED = ("data_quality", "cohort", "outcomes", "safety", "methods")


def _ref(case: str) -> dict:
    return json.loads((REF / f"glmer_{case}.json").read_text())


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _text(result, key: str) -> str:
    return " ".join(b if isinstance(b, str) else " ".join(map(str, b))
                    for k, b in result.sections[key].blocks if k in ("para", "list"))


def _report(study, out: Path, **kwargs):
    import mfr_outcomes.report.sections as sections

    with pytest.MonkeyPatch.context() as mp, warnings.catch_warnings():
        for key in list(sections.SECTIONS):
            if key not in NEEDED:
                mp.setitem(sections.SECTIONS, key,
                           (sections.SECTIONS[key][0], lambda ctx, sec: None))
        warnings.simplefilter("ignore")
        return build_report(study, out, seed=1, **kwargs)


@pytest.fixture(scope="module")
def study():
    return mfr.load_study(SYNTHETIC)


@pytest.fixture(scope="module")
def paresthesia_report(study, tmp_path_factory):
    out = tmp_path_factory.mktemp("par")
    return _report(study, out, measure="paresthesia"), out


@pytest.fixture(scope="module")
def pain_report(study, tmp_path_factory):
    out = tmp_path_factory.mktemp("pain")
    return _report(study, out), out


# ------------------------------------------------------------------ the model, against glmer
def test_poisson_adverse_events_match_glmer(study):
    ref = _ref("adverse_rate")
    with pytest.warns(ModelWarning, match="singular"):
        ae = fit_adverse_events(study, family="poisson")
    assert ae.formula == "events ~ technique + offset(log(sessions)) + (1 | patient_id)"
    assert ae.glmm.family.name == "poisson" and ae.glmm.nobs == ref["nobs"]
    assert ae.glmm.deviance == pytest.approx(ref["minus2loglik"], rel=1e-6)
    fe = ae.glmm.fixed_effects
    np.testing.assert_allclose(fe["estimate"], [f["estimate"] for f in ref["fixef"]], rtol=1e-4)
    np.testing.assert_allclose(fe["std_error"], [f["std_error"] for f in ref["fixef"]],
                               rtol=1e-3)
    assert ae.glmm.diagnostics["singular"] == ref["is_singular"]
    assert any("singular" in n for n in ae.notes)  # the caution is kept
    np.testing.assert_allclose(np.log(ae.rate_ratios["rate_ratio"]),
                               [f["estimate"] for f in ref["fixef"]][1:], rtol=1e-4)
    emm = pd.DataFrame(ref["emmeans_response"])
    np.testing.assert_allclose(ae.table["rate_model"], emm["rate"], rtol=1e-4)
    np.testing.assert_allclose(ae.table["ci_low"], emm["lcl"], rtol=1e-3)
    np.testing.assert_allclose(ae.table["ci_high"], emm["ucl"], rtol=1e-3)
    assert ae.table["sessions"].sum() == ref["sessions"]
    assert ae.table["events"].sum() == ref["events"]
    assert ae.ratios is ae.rate_ratios


def test_adverse_events_family_is_checked(study):
    with pytest.raises(ValueError, match="family must be 'binomial' or 'poisson'"):
        fit_adverse_events(study, family="gaussian")


# ------------------------------------------------------------------ the safety section
def test_safety_section_shows_rate_ratios_of_the_poisson_glmm(pain_report):
    result, out = pain_report
    ref = _ref("adverse_rate")
    rows = _rows(out / "tables" / "safety_model.csv")
    assert [r["technique"] for r in rows] == ["direct pressure", "stretching", "massage",
                                              "combined"]
    assert float(rows[0]["rate_ratio"]) == 1.0 and rows[0]["ci_low"] == ""
    np.testing.assert_allclose([float(r["rate_ratio"]) for r in rows[1:]],
                               np.exp([f["estimate"] for f in ref["fixef"]][1:]), rtol=1e-4)
    np.testing.assert_allclose([float(r["p_value"]) for r in rows[1:]],
                               [f["p_value"] for f in ref["fixef"]][1:], rtol=1e-3)
    np.testing.assert_allclose([float(r["rate_per_100"]) for r in rows],
                               100 * pd.DataFrame(ref["emmeans_response"])["rate"], rtol=1e-4)
    # the counts are those of the table above it, tied in the ledger
    by_tech = _rows(out / "tables" / "safety_by_technique.csv")
    assert [r["with_event"] for r in rows] == [r["with_event"] for r in by_tech]
    text = _text(result, "safety")
    assert "Poisson mixed model" in text and "offset" in text
    # the singular fit is said in the section and in the methods' cautions, never swallowed
    assert "Boundary (singular) fit" in text and "plain Poisson regression" in text
    # (one line for every fit with the same warning, naming each)
    assert any("Adverse events per session (Poisson GLMM)" in c.split(": ", 1)[0].split("; ")
               and c.split(": ", 1)[1].startswith("boundary (singular)")
               for c in result.cautions)
    models = _rows(out / "tables" / "methods_models.csv")
    row = next(r for r in models if r["model"] == "Adverse events per session (Poisson GLMM)")
    assert row["singular"] == "True" and row["engine"] == "glmm"


def test_safety_section_shows_odds_ratios_of_the_logistic_glmm(pain_report):
    """The chance of an event at a session (one row a session): glmer's odds ratios and
    p-values, the counts tied to the table above, the model's cautions in the section."""
    result, out = pain_report
    ref = _ref("adverse")
    rows = _rows(out / "tables" / "safety_model_binomial.csv")
    assert [r["technique"] for r in rows] == ["direct pressure", "stretching", "massage",
                                              "combined"]
    assert float(rows[0]["odds_ratio"]) == 1.0 and rows[0]["ci_low"] == ""
    np.testing.assert_allclose([float(r["odds_ratio"]) for r in rows[1:]],
                               np.exp([f["estimate"] for f in ref["fixef"]][1:]), rtol=1e-4)
    np.testing.assert_allclose([float(r["p_value"]) for r in rows[1:]],
                               [f["p_value"] for f in ref["fixef"]][1:], rtol=1e-3)
    by_tech = _rows(out / "tables" / "safety_by_technique.csv")
    assert [r["with_event"] for r in rows] == [r["with_event"] for r in by_tech]
    text = _text(result, "safety")
    assert "logistic mixed model" in text and "plain logistic regression" in text
    models = _rows(out / "tables" / "methods_models.csv")
    assert any(r["model"] == "Adverse event at a session (logistic GLMM)" for r in models)


def test_safety_model_keeps_the_disclosure_rules(study, tmp_path):
    """With min_cell 60, direct pressure (51 sessions with an event, the reference) and
    stretching (5) are small: their counts are '<60', every model number computed from them is
    hidden, and no rate ratio is shown (a ratio to a hidden count would reveal it)."""
    result = _report(study, tmp_path, min_cell=60)
    rows = {r["technique"]: r for r in _rows(tmp_path / "tables" / "safety_model.csv")}
    for tech in ("direct pressure", "stretching", "massage"):
        assert rows[tech]["with_event"] == "<60"
        assert rows[tech]["rate_per_100"] in ("", "<60", "suppressed")
    for r in rows.values():
        assert r["rate_ratio"] in ("", "<60", "suppressed")
        assert r["p_value"] in ("", "<60", "suppressed")
    odds = {r["technique"]: r for r in
            _rows(tmp_path / "tables" / "safety_model_binomial.csv")}
    for tech in ("direct pressure", "stretching", "massage"):
        assert odds[tech]["with_event"] == "<60"
        assert odds[tech]["percent_typical"] in ("", "<60", "suppressed")
    for r in odds.values():
        assert r["odds_ratio"] in ("", "<60", "suppressed")
    text = _text(result, "safety")
    assert "reference technique, so no rate ratios are shown" in text
    assert "reference technique, so no odds ratios are shown" in text
    html = (tmp_path / "report.html").read_text()
    assert "0.16" not in html.split('id="safety"')[1].split("</section>")[0]


# ------------------------------------------------------------------ the yes/no reading
def test_binary_section_gives_subject_specific_odds_ratios_beside_the_gee(paresthesia_report,
                                                                          study):
    result, out = paresthesia_report
    ref = _ref("paresthesia")
    rows = _rows(out / "tables" / "outcomes_binary_model.csv")
    assert [r["term"] for r in rows] == ["stretching vs direct pressure",
                                         "massage vs direct pressure",
                                         "combined vs direct pressure",
                                         "per session (session number)"]
    np.testing.assert_allclose([np.log(float(r["odds_ratio"])) for r in rows],
                               [f["estimate"] for f in ref["fixef"]][1:], rtol=1e-4)
    np.testing.assert_allclose([float(r["p_value"]) for r in rows],
                               [f["p_value"] for f in ref["fixef"]][1:], rtol=1e-3)
    gee = mfr.effects.paresthesia_gee(study, time="session_number").set_index("term")
    np.testing.assert_allclose([float(r["gee_odds_ratio"]) for r in rows],
                               gee["odds_ratio"].iloc[1:].to_numpy(), rtol=1e-8)
    text = _text(result, "outcomes")
    assert WHY_ODDS_RATIOS_DIFFER in text and "subject-specific" in text
    assert "logistic mixed model" in text
    models = [r["model"] for r in _rows(out / "tables" / "methods_models.csv")]
    assert "Yes/no reading (logistic GLMM, subject-specific)" in models
    assert "Yes/no reading (GEE logistic, population-averaged)" in models


def _separated_study():
    """data/synthetic with every pre-session paresthesia reading at a stretching session set
    to 0: complete separation of that technique."""
    p = pd.read_csv(SYNTHETIC / "patients.csv")
    s = pd.read_csv(SYNTHETIC / "sessions.csv")
    m = pd.read_csv(SYNTHETIC / "measurements.csv")
    stretching = set(s.loc[s["technique"] == "stretching", "session_id"])
    hit = m["measure"].eq("paresthesia") & m["session_id"].isin(stretching)
    m.loc[hit, "value"] = 0.0
    return from_frames(p, s, m)


def test_separation_is_shown_in_the_binary_section(tmp_path):
    result = _report(_separated_study(), tmp_path, measure="paresthesia")
    text = _text(result, "outcomes")
    assert "Cautions of this model:" in text
    assert "Complete separation: every response for technique = stretching is 0" in text
    assert "readings)" in text  # the count is said as readings, under the small-count rule
    assert any("Complete separation" in c for c in result.cautions)


def test_non_convergence_is_shown_in_both_sections(study, tmp_path, monkeypatch):
    """An optimiser stopped early: both sections say so in their model's cautions (the
    optimiser's own message included) instead of printing the numbers silently."""
    import mfr_outcomes.models.binary as binary

    real = binary.fit_generalized

    def stopped(*args, **kwargs):
        return real(*args, **kwargs, options={"max_newton": 0, "maxiter": 1})

    monkeypatch.setattr(binary, "fit_generalized", stopped)
    result = _report(study, tmp_path, measure="paresthesia")
    assert "may not have converged" in _text(result, "outcomes")
    safety = _text(result, "safety")
    assert "Cautions of this model:" in safety
    assert "Newton stage: no convergence" in safety
    models = {r["model"]: r for r in _rows(tmp_path / "tables" / "methods_models.csv")}
    assert models["Yes/no reading (logistic GLMM, subject-specific)"]["converged"] == "False"
    assert any("may not have converged" in c for c in result.cautions)
