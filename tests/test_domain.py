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
    # the shipped data has switching (Truth.p_other_therapist): a crossed therapist term
    ses = synthetic_study.sessions
    n_multi = int((ses.groupby("patient_id")["therapist_id"].nunique() > 1).sum())
    assert n_multi > 0
    assert any("crossed" in n and f"{n_multi} of 120 patient(s)" in n for n in fit.notes)
    assert fit.engine == "sparse" and "fast: refused" in fit.diagnostics["engine_reason"]
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
    assert fit.formula.endswith("(post | patient_id) + (1 | therapist_id)")
    n_multi = int((crossed.sessions.groupby("patient_id")["therapist_id"].nunique() > 1).sum())
    assert any("crossed" in n and f"{n_multi} of 20 patient(s) saw more than one therapist" in n
               for n in fit.notes)
    assert {b.group for b in fit.spec.blocks} == {"patient_id", "therapist_id"}
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


def _single_session(study):
    """Each patient's first treatment visit only (the one-visit pre/post design)."""
    ses = study.sessions
    treat = ses[ses["technique"].astype(str) != "none"]
    first = treat.sort_values("session_number").groupby("patient_id").head(1)
    return _subset(study, sessions=first)


def test_single_session_fits_a_random_intercept_the_paired_t_test(synthetic_study):
    """One pre/post pair per patient: (post | patient_id) would be refused by lme4 (as many
    random effects as readings); fit_prepost fits (1 | patient_id) and says why, and on complete
    pairs its SE and df are the paired t-test's (scipy's ttest_rel)."""
    from scipy import stats

    one = _single_session(synthetic_study)
    frame = one.frame("pain_nrs")
    both = frame.groupby("patient_id")["post"].transform("nunique") == 2
    keep = set(frame.loc[both, "patient_id"])
    pts = one.patients[one.patients["patient_id"].isin(keep)]
    ses = one.sessions[one.sessions["patient_id"].isin(keep)]
    paired = _subset(Study(pts, ses, one.measurements), sessions=ses)
    fit = _quiet(fit_prepost, paired, "pain_nrs", by=None, therapist=False)
    assert fit.formula == "value ~ post + (1 | patient_id)"
    assert any("one treatment session per patient" in n and "(1 | patient_id)" in n
               for n in fit.notes)
    wide = paired.frame("pain_nrs").pivot(index="patient_id", columns="post", values="value")
    t = stats.ttest_rel(wide[1], wide[0])
    diff = (wide[1] - wide[0]).to_numpy()
    fe = fit.fixed_effects.set_index("term").loc["post"]
    assert fe["estimate"] == pytest.approx(diff.mean(), rel=1e-8)
    assert fe["std_error"] == pytest.approx(diff.std(ddof=1) / np.sqrt(len(diff)), rel=1e-4)
    assert fe["statistic"] == pytest.approx(t.statistic, rel=1e-4)
    assert fe["df"] == pytest.approx(len(diff) - 1, rel=1e-3)


def test_single_session_with_therapists_and_techniques_is_never_refused(synthetic_study):
    """The one-visit design with the default by=technique and a therapist level: a model lme4
    accepts (random intercepts only), fitted by whatever engine auto picks."""
    fit = _quiet(fit_prepost, _single_session(synthetic_study), "pain_nrs")
    assert "(post | patient_id)" not in fit.formula
    assert "(1 | patient_id)" in fit.formula
    assert "session_number" not in fit.formula
    assert fit.diagnostics["converged"]
