"""The study-level models: formulas built from the data, the cautions, and recovery of the
simulator's known immediate effects."""
from __future__ import annotations

import warnings

import numpy as np
import pytest

from mfr_outcomes.models.domain import (
    FOLLOWUP_STAGES,
    MIN_THERAPISTS,
    fit_course,
    fit_followup,
    fit_prepost,
    followup_frame,
)
from mfr_outcomes.study import Study
from mfr_outcomes.synthetic import Truth
from mfr_outcomes.warnings_ import DataWarning, ModelWarning


def _quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ModelWarning)
        warnings.simplefilter("ignore", DataWarning)
        return fn(*args, **kwargs)


def _subset(study, n=None, sessions=None):
    ses = study.sessions if sessions is None else sessions
    pts = study.patients
    if n is not None:
        keep = set(pts["patient_id"].iloc[:n])
        pts = pts[pts["patient_id"].isin(keep)]
        ses = ses[ses["patient_id"].isin(keep)]
    meas = study.measurements[study.measurements["session_id"].isin(set(ses["session_id"]))]
    return Study(pts, ses, meas)


@pytest.fixture(scope="module")
def prepost_fit(synthetic_study):
    return _quiet(fit_prepost, synthetic_study, "pain_nrs")


def test_prepost_formula_and_metadata(prepost_fit, synthetic_study):
    fit = prepost_fit
    assert fit.formula == ("value ~ post * technique + session_number + (post | patient_id) "
                           "+ (1 | therapist_id)")
    assert fit.measure == "pain_nrs" and fit.model == "prepost"
    assert fit.notes[0] == f"formula: {fit.formula}"
    assert any("assessment-only" in n for n in fit.notes)
    assert any("nested in" in n for n in fit.notes)
    # treatment visits only
    assert set(fit.spec.data["technique"].astype(str)) == {"direct_pressure", "stretching",
                                                           "massage", "combined"}


def test_prepost_recovers_the_immediate_effects(prepost_fit):
    """post − pre per technique within 3.5 SE of the simulator's truth."""
    truth = Truth().immediate_effect
    con = prepost_fit.contrasts("post", by="technique").set_index("technique")
    for tech, effect in truth.items():
        est, se = con.loc[tech, "estimate"], con.loc[tech, "std_error"]
        assert abs(est - effect) < 3.5 * se, (tech, est, effect, se)
    assert (con["estimate"] < 0).all()


def test_prepost_refuses_measures_without_post(synthetic_study):
    with pytest.raises(ValueError, match="fit_followup"):
        fit_prepost(synthetic_study, "odi")
    with pytest.raises(ValueError, match="paresthesia_gee"):
        fit_prepost(synthetic_study, "paresthesia")
    with pytest.raises(ValueError, match="unknown measure"):
        fit_prepost(synthetic_study, "vas_pain")


def test_too_few_patients(synthetic_study):
    with pytest.raises(ValueError, match="at least 5"):
        fit_prepost(_subset(synthetic_study, 3), "pain_nrs")
    small = _subset(synthetic_study, 12)
    with pytest.warns(ModelWarning, match="only 12 patients"):
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="^(?!only 12).*", category=ModelWarning)
            fit = fit_prepost(small, "pain_nrs", by=None, therapist=False)
    assert fit.formula == "value ~ post + session_number + (post | patient_id)"
    assert any("only 12 patients" in n for n in fit.notes)
    assert any("only 12 patients" in w for w in fit.diagnostics["warnings"])


def test_therapist_level_rules(synthetic_study):
    ses = synthetic_study.sessions.copy()
    # every patient also sees T99 on their second visit: not nested
    second = ses["session_number"] == 2
    ses.loc[second, "therapist_id"] = "T99"
    crossed = _subset(synthetic_study, 20, sessions=ses)
    fit = _quiet(fit_prepost, crossed, "pain_nrs", by=None)
    assert "therapist_id" not in fit.formula
    assert any("not nested" in n for n in fit.notes)
    ses2 = synthetic_study.sessions.copy()
    ses2["therapist_id"] = np.where(ses2["patient_id"] < "P010", "T01", "T02")
    few = _subset(synthetic_study, 20, sessions=ses2)
    fit = _quiet(fit_prepost, few, "pain_nrs", by=None)
    assert "therapist_id" not in fit.formula
    assert any(f"fewer than {MIN_THERAPISTS}" in n for n in fit.notes)


def test_per_side_measures(synthetic_study):
    study = _subset(synthetic_study, 20)
    fit = _quiet(fit_prepost, study, "slr_deg", by=None, therapist=False)
    assert fit.formula == "value ~ post + session_number + side + (post | patient_id)"
    fits = _quiet(fit_prepost, study, "slr_deg", by=None, therapist=False, side="separate")
    assert set(fits) == {"left", "right"}
    assert set(fits["left"].spec.data["side"].astype(str)) == {"left"}
    assert fits["right"].measure == "slr_deg"
    with pytest.warns(ModelWarning, match="pools left and right"):
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="^(?!.*pools).*", category=ModelWarning)
            pooled = fit_prepost(study, "slr_deg", by=None, therapist=False, side=None)
    assert "side" not in pooled.formula
    left = _quiet(fit_prepost, study, "slr_deg", by=None, therapist=False, side="left")
    assert left.nobs == fits["left"].nobs
    with pytest.raises(ValueError, match="side must be"):
        fit_prepost(study, "slr_deg", side="both")
    with pytest.raises(ValueError, match="covariate"):
        fit_prepost(study, "pain_nrs", covariates=["bmi"])


def test_prepost_covariates(synthetic_study):
    fit = _quiet(fit_prepost, _subset(synthetic_study, 20), "pain_nrs", by=None,
                 covariates=["age_years", "home_program"], therapist=False)
    assert "+ age_years + home_program" in fit.formula
    assert "age_years" in fit.coef.index
    weeks = _quiet(fit_prepost, _subset(synthetic_study, 20), "pain_nrs", by=None, time="weeks",
                   therapist=False)
    assert weeks.formula == "value ~ post + weeks + (post | patient_id)"
    with pytest.raises(ValueError, match="time must be"):
        fit_prepost(synthetic_study, "pain_nrs", time="days")


def test_course_model(synthetic_study):
    fit = _quiet(fit_course, synthetic_study, "pain_nrs")
    assert fit.formula == "value ~ weeks + (weeks | patient_id) + (1 | therapist_id)"
    assert fit.model == "course"
    fe = fit.fixed_effects.set_index("term")
    assert fe.loc["weeks", "estimate"] < 0 and fe.loc["weeks", "ci_high"] < 0
    assert set(fit.spec.data["post"]) == {0}
    by = _quiet(fit_course, _subset(synthetic_study, 30), "pain_nrs", time="session_number",
                by="condition", therapist=False)
    assert by.formula == ("value ~ session_number * condition + (session_number | patient_id)")
    with pytest.raises(ValueError, match="time must be"):
        fit_course(synthetic_study, "pain_nrs", time="months")


def test_course_on_sparse_measure_drops_slope(synthetic_study):
    # ODI without the assessment-only (follow-up) visits: two readings a patient at most
    treat = synthetic_study.sessions[synthetic_study.sessions["technique"] != "none"]
    with pytest.warns(ModelWarning, match="random intercept only"):
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="^(?!.*random intercept only).*",
                                    category=ModelWarning)
            fit = fit_course(_subset(synthetic_study, sessions=treat), "odi", therapist=False)
    assert fit.formula == "value ~ weeks + (1 | patient_id)"


def test_followup_model(synthetic_study):
    frame = followup_frame(synthetic_study, "odi")
    assert list(frame["stage"].cat.categories) == list(FOLLOWUP_STAGES)
    assert frame.groupby(["patient_id", "stage"], observed=True).size().max() == 1
    fit = _quiet(fit_followup, synthetic_study)
    assert fit.formula == "value ~ stage + (1 | patient_id) + (1 | therapist_id)"
    assert fit.measure == "odi" and fit.model == "followup"
    con = fit.contrasts("stage", method="trt.vs.ctrl", adjust="none").set_index("contrast")
    # ODI falls with pain over the course and stays lower at follow-up
    assert con.loc["discharge - baseline", "ci_high"] < 0
    assert con.loc["follow_up - baseline", "estimate"] < 0
    # the contrast equals the coefficient of the stage dummy
    assert con.loc["discharge - baseline", "estimate"] == pytest.approx(
        fit.coef["stage[T.discharge]"], abs=1e-10)
    assert any("have every stage" in n for n in fit.notes)


def test_followup_without_followup_visits_warns(synthetic_study):
    ses = synthetic_study.sessions
    study = _subset(synthetic_study, 60, sessions=ses[ses["technique"].astype(str) != "none"])
    with pytest.warns(DataWarning, match="no follow_up readings"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ModelWarning)
            fit = fit_followup(study, "odi", therapist=False)
    assert "follow_up" not in set(fit.spec.data["stage"].astype(str))


def test_thin_level_of_by_warns(synthetic_study):
    ses = synthetic_study.sessions.copy()
    tech = ses["technique"].astype(str)
    first = ses["patient_id"] == "P001"
    ses.loc[(tech == "massage") & ~first, "technique"] = "direct_pressure"
    ses.loc[first & (tech != "none"), "technique"] = "massage"
    study = _subset(synthetic_study, 20, sessions=ses)
    with pytest.warns(ModelWarning, match="fewer than 3 patients"):
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="^(?!.*fewer than 3).*",
                                    category=ModelWarning)
            fit = fit_prepost(study, "pain_nrs", therapist=False)
    assert any("['massage']" in n for n in fit.notes)


def test_only_cautions_go_to_diagnostics(prepost_fit):
    # informational notes stay in fit.notes; only cautions are diagnostics warnings
    assert not any("assessment-only" in w for w in prepost_fit.diagnostics["warnings"])
    assert all(type(n) is str for n in prepost_fit.notes)
