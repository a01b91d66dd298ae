"""Arms of a trial: carried from patients.arm into frames, compared by fit_course/fit_prepost
(by="arm") and responders, and a simulated two-arm trial's slope difference recovered."""
from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

from mfr_outcomes.effects import responder_rate, responders
from mfr_outcomes.models.domain import fit_course, fit_prepost
from mfr_outcomes.study import Study, from_frames
from mfr_outcomes.synthetic import generate, generate_trial
from mfr_outcomes.warnings_ import DataWarning, ModelWarning

TERM = "weeks:arm[T.active]"


def _quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ModelWarning)
        warnings.simplefilter("ignore", DataWarning)
        return fn(*args, **kwargs)


def _study(frames) -> Study:
    return Study(frames["patients"], frames["sessions"], frames["measurements"])


def test_trial_frames_validate_clean_with_an_arm_profile():
    frames, truth = generate_trial(n_per_arm=6, seed=3)
    study = from_frames(**frames, profile={"vocabulary": {"arm": ["placebo", "active"]}})
    assert study.report.ok, str(study.report)
    frame = study.frame("odi")
    assert list(frame["arm"].cat.categories) == ["placebo", "active"]  # the profile's order
    assert frame.groupby("arm", observed=True)["patient_id"].nunique().to_dict() == \
        {"placebo": 6, "active": 6}
    # every visit but the first is assessment-only: the course keeps them all
    fit = _quiet(fit_course, study, "odi", by="arm", therapist=False)
    assert fit.formula == "value ~ weeks * arm + (weeks | patient_id)"
    assert fit.nobs == 12 * len(truth.visit_weeks)
    assert "60 reading(s) from assessment-only visits (technique none) included" in fit.notes


def test_arm_outside_the_profile_vocabulary_is_a_finding():
    frames, _ = generate_trial(n_per_arm=3, seed=1)
    frames["patients"]["arm"] = frames["patients"]["arm"].astype(str).replace("active", "sham")
    study = _quiet(from_frames, **frames, profile={"vocabulary": {"arm": ["placebo", "active"]}})
    assert [f.message for f in study.report.findings] == [
        f"patients row {i}: arm = sham, not one of placebo, active (set to missing; row kept)"
        for i in (4, 5, 6)]


def test_arms_without_a_profile_are_open_and_sorted():
    frames, _ = generate_trial(n_per_arm=3, seed=1)
    frames["patients"]["arm"] = frames["patients"]["arm"].astype(str)
    study = from_frames(**frames)
    assert study.report.ok
    assert list(study.patients["arm"].cat.categories) == ["active", "placebo"]


def test_prepost_and_responders_compare_arms(small_study):
    arm = np.where(np.arange(len(small_study.patients)) % 2 == 0, "mfr", "sham")
    patients = small_study.patients.assign(arm=pd.Categorical(arm, categories=["sham", "mfr"]))
    study = Study(patients, small_study.sessions, small_study.measurements)
    fit = _quiet(fit_prepost, study, "pain_nrs", by="arm", therapist=False)
    assert fit.formula.startswith("value ~ post * arm + session_number")
    assert "post:arm[T.mfr]" in fit.coef.index
    resp = _quiet(responders, study, "pain_nrs")
    assert set(resp["arm"].dropna()) == {"sham", "mfr"}
    rate = responder_rate(resp, by="arm")
    assert list(rate["arm"]) == ["sham", "mfr"] and rate["n"].sum() == len(resp)


def test_course_in_hours_uses_session_time():
    # readings 0, 2, 6 and 24 hours after a procedure, on the day and the next morning
    rng = np.random.default_rng(5)
    rows_p, rows_s, rows_m = [], [], []
    hours = (0, 2, 6, 24)
    for i in range(24):
        pid = f"P{i:02d}"
        rows_p.append({"patient_id": pid, "condition": "sciatica"})
        level = rng.normal(7, 1)
        for k, h in enumerate(hours):
            sid = f"{pid}-{k}"
            stamp = pd.Timestamp("2026-03-02 08:00") + pd.Timedelta(hours=h)
            rows_s.append({"session_id": sid, "patient_id": pid, "therapist_id": "T1",
                           "session_date": stamp.strftime("%Y-%m-%d"),
                           "session_time": stamp.strftime("%H:%M"),
                           "technique": "combined" if k == 0 else "none"})
            value = float(np.clip(round(level - 0.1 * h + rng.normal(0, 0.5)), 0, 10))
            rows_m.append({"session_id": sid, "phase": "pre", "measure": "pain_nrs",
                           "value": value})
    study = from_frames(pd.DataFrame(rows_p), pd.DataFrame(rows_s), pd.DataFrame(rows_m))
    assert study.report.ok, str(study.report)
    frame = study.frame("pain_nrs")
    assert sorted(frame["hours"].unique()) == [0.0, 2.0, 6.0, 24.0]
    assert sorted(frame["days"].unique()) == [0.0, 1.0]
    fit = _quiet(fit_course, study, "pain_nrs", time="hours", therapist=False,
                 random_slope=False)
    assert fit.formula == "value ~ hours + (1 | patient_id)"
    assert ("time: hours since the patient's first visit; the hours coefficient is the change "
            "in Pain intensity (NRS) (points) per hour") in fit.notes
    lo, hi = fit.fixed_effects.set_index("term").loc["hours", ["ci_low", "ci_high"]]
    assert lo < -0.1 < hi


def test_hours_missing_a_time_is_left_out_with_a_caution():
    frames, _ = generate_trial(n_per_arm=5, seed=2)
    sessions = frames["sessions"].copy()
    sessions["session_time"] = pd.to_timedelta(["09:00:00"] * len(sessions))
    sessions.loc[3, "session_time"] = pd.NaT
    study = Study(frames["patients"], sessions, frames["measurements"])
    with pytest.warns(DataWarning, match=r"1 pre-session reading\(s\) have no hours"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ModelWarning)
            fit = fit_course(study, "odi", time="hours", therapist=False)
    assert fit.nobs == len(sessions) - 1


@pytest.mark.slow
def test_trial_slope_difference_ci_covers_the_truth_92_to_98_percent():
    covered, estimates = 0, []
    seeds = range(200)
    for seed in seeds:
        frames, truth = generate_trial(n_per_arm=20, seed=seed)
        fit = _quiet(fit_course, _study(frames), "odi", by="arm", therapist=False,
                     engine="fast")
        row = fit.fixed_effects.set_index("term").loc[TERM]
        covered += bool(row["ci_low"] <= truth.slope_difference <= row["ci_high"])
        estimates.append(row["estimate"])
    coverage = covered / len(seeds)
    assert 0.92 <= coverage <= 0.98, coverage
    # unbiased: the mean estimate is within 3 Monte Carlo SEs of the truth
    se = np.std(estimates, ddof=1) / np.sqrt(len(estimates))
    assert abs(np.mean(estimates) - truth.slope_difference) < 3 * se


def test_generate_trial_rejects_unknown_parameters():
    with pytest.raises(TypeError):
        generate_trial(n_per_arm=3, seed=1, slope_diff=-1)


def test_synthetic_study_has_no_arm_column():
    study, _ = generate(n_patients=5, seed=1)
    assert "arm" not in study.patients.columns
