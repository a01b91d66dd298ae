"""Tests of mfr_outcomes.study: Study, ValidationReport, from_frames and analysis_frame."""
from __future__ import annotations

import json

import pandas as pd
import pytest

from mfr_outcomes import vocab
from mfr_outcomes.schema import TABLE_SPECS
from mfr_outcomes.study import (
    ANALYSIS_COLUMNS,
    DataValidationError,
    MeasureNotFoundError,
    Study,
    ValidationReport,
    analysis_frame,
    from_frames,
)
from mfr_outcomes.warnings_ import DataWarning


def tiny_frames() -> dict[str, pd.DataFrame]:
    """Two patients, four visits, hand-checkable readings."""
    patients = pd.DataFrame({
        "patient_id": ["P1", "P2"], "site_id": ["north", ""], "age_years": ["40", "55"],
        "sex": ["female", "male"], "condition": ["sciatica", "hip_pain"],
        "affected_side": ["left", "right"], "symptom_weeks": ["6", "12.5"],
        "enrolled_on": ["2024-01-01", "2024-02-01"],
    })
    sessions = pd.DataFrame({
        "session_id": ["S1", "S2", "S3", "S4"], "patient_id": ["P1", "P1", "P2", "P2"],
        "therapist_id": ["T1", "T1", "T2", "T2"],
        "session_date": ["2024-01-15", "2024-01-01", "2024-02-01", "2024-02-15"],
        "technique": ["massage", "direct_pressure", "stretching", "none"],
        "target_region": ["hip", "piriformis", "lower_back", ""],
        "duration_min": ["30", "45", "30", ""], "home_program": ["yes", "no", "true", ""],
        "adverse_event": ["none", "soreness", "none", "none"],
    })
    measurements = pd.DataFrame({
        "session_id": ["S1", "S1", "S2", "S2", "S3", "S3", "S4", "S3", "S3"],
        "phase": ["pre", "post", "pre", "post", "pre", "post", "pre", "pre", "post"],
        "measure": ["pain_nrs"] * 7 + ["slr_deg", "slr_deg"],
        "side": ["", "", "", "", "", "", "", "left", "left"],
        "value": ["6", "4", "8", "5", "7", "6", "5", "40", "47.5"],
    })
    return {"patients": patients, "sessions": sessions, "measurements": measurements}


@pytest.fixture()
def tiny() -> Study:
    return from_frames(**tiny_frames())


def test_clean_frames_give_no_findings_and_full_accounting(tiny):
    assert tiny.report.ok, str(tiny.report)
    for table, n in {"patients": 2, "sessions": 4, "measurements": 9}.items():
        acc = tiny.report.accounting[table]
        assert (acc.read, acc.used, acc.excluded) == (n, n, 0)


def test_types_follow_internals(tiny):
    p, s, m = tiny.patients, tiny.sessions, tiny.measurements
    assert p["age_years"].dtype == "Int64"
    assert list(p["sex"].cat.categories) == list(vocab.SEX)
    assert p["symptom_weeks"].dtype == "float64"
    assert pd.api.types.is_datetime64_any_dtype(p["enrolled_on"])
    assert list(p["site_id"]) == ["north", "site-1"]  # DESIGN default
    assert s["session_number"].dtype == "int64"
    assert list(s["technique"].cat.categories) == list(vocab.TECHNIQUE)
    assert s["home_program"].dtype == "boolean"
    assert list(s["home_program"].isna()) == [False, False, False, True]
    assert s["duration_min"].dtype == "float64"
    assert list(m["phase"].cat.categories) == ["pre", "post"]
    assert list(m["side"].cat.categories) == list(vocab.SIDE)
    assert (m.loc[m["measure"] == "pain_nrs", "side"] == "none").all()  # DESIGN default
    assert m["value"].dtype == "float64"


def test_session_number_derived_from_date_order(tiny):
    numbers = dict(zip(tiny.sessions["session_id"], tiny.sessions["session_number"]))
    # S2 (1 Jan) comes before S1 (15 Jan) for P1
    assert numbers == {"S1": 2, "S2": 1, "S3": 1, "S4": 2}


def test_analysis_frame_columns_order_and_values(tiny):
    f = tiny.frame("pain_nrs")
    assert list(f.columns) == list(ANALYSIS_COLUMNS)
    assert len(f) == 7
    assert list(f["session_id"]) == ["S2", "S2", "S1", "S1", "S3", "S3", "S4"]
    assert list(f["phase"].astype(str)) == ["pre", "post"] * 3 + ["pre"]
    assert list(f["post"]) == [0, 1, 0, 1, 0, 1, 0]
    assert f["post"].dtype == "int64"
    assert list(f["value"]) == [8.0, 5.0, 6.0, 4.0, 7.0, 6.0, 5.0]
    # weeks since each patient's first visit: P1 15 Jan is 14 days after 1 Jan
    assert list(f["weeks"]) == [0.0, 0.0, 2.0, 2.0, 0.0, 0.0, 2.0]
    assert list(f["site_id"]) == ["north"] * 4 + ["site-1"] * 3
    assert f["technique"].dtype == "category"
    assert list(f["technique"].cat.categories) == list(vocab.TECHNIQUE)
    assert f["age_years"].tolist() == [40, 40, 40, 40, 55, 55, 55]


def test_frame_by_side(tiny):
    f = tiny.frame("slr_deg", side="left")
    assert list(f["value"]) == [40.0, 47.5]
    with pytest.raises(KeyError, match="sides present: left"):
        tiny.frame("slr_deg", side="right")


def test_unknown_measure_names_measures_present(tiny):
    with pytest.raises(KeyError, match="measures present: pain_nrs, slr_deg"):
        tiny.frame("odi")
    with pytest.raises(ValueError, match="measures present"):
        tiny.frame("no_such")
    assert issubclass(MeasureNotFoundError, KeyError)
    assert tiny.measures == ["pain_nrs", "slr_deg"]


def test_analysis_frame_is_pure_and_equals_study_frame(tiny):
    direct = analysis_frame(tiny.patients, tiny.sessions, tiny.measurements, "pain_nrs")
    pd.testing.assert_frame_equal(direct, tiny.frame("pain_nrs"))


def test_summary_counts_and_means(tiny):
    s = tiny.summary().set_index("measure")
    assert s.loc["pain_nrs", "readings"] == 7
    assert s.loc["pain_nrs", "patients"] == 2
    assert s.loc["pain_nrs", "pre_mean"] == pytest.approx((6 + 8 + 7 + 5) / 4)
    assert s.loc["pain_nrs", "post_mean"] == pytest.approx((4 + 5 + 6) / 3)
    assert s.loc["slr_deg", "post_n"] == 1
    assert "<table" in tiny._repr_html_()


def test_strict_raises_with_report():
    frames = tiny_frames()
    frames["sessions"].loc[0, "duration_min"] = "-5"
    with pytest.raises(DataValidationError) as info:
        from_frames(**frames, strict=True)
    report = info.value.report
    assert [f.message for f in report.findings] == [
        "sessions row 1: duration_min = -5, must be 5–180 (set to missing; row kept)"]
    assert not report.ok


def test_report_exports():
    frames = tiny_frames()
    frames["measurements"].loc[1, "value"] = "eleven"
    with pytest.warns(DataWarning, match="1 row"):
        study = from_frames(**frames)
    report = study.report
    assert isinstance(report, ValidationReport)
    table = report.to_frame()
    assert list(table.columns) == ["table", "file", "line", "column", "value", "rule", "action",
                                   "message"]
    assert table.loc[0, "line"] == 2 and table.loc[0, "rule"] == "not_a_number"
    data = json.loads(report.to_json())
    assert data["accounting"]["measurements"] == {"read": 9, "used": 8, "excluded": 1,
                                                  "blank": 0, "reasons": {"not_a_number": 1}}
    assert "eleven" in report.to_csv()
    summary = report.summary().set_index("table")
    assert summary.loc["measurements", "excluded"] == 1
    assert summary.loc["measurements", "findings"] == 1
    assert "measurements row 2: value = eleven, not a number (row excluded)" in str(report)
    assert "<table" in report._repr_html_()


def test_typed_frames_round_trip(tiny):
    again = from_frames(tiny.patients, tiny.sessions, tiny.measurements)
    assert again.report.ok, str(again.report)
    pd.testing.assert_frame_equal(again.sessions, tiny.sessions)
    pd.testing.assert_frame_equal(again.measurements, tiny.measurements)
    pd.testing.assert_frame_equal(again.patients, tiny.patients)


def test_non_frame_input_is_a_type_error():
    frames = tiny_frames()
    with pytest.raises(TypeError, match="patients must be a pandas DataFrame"):
        from_frames([1, 2], frames["sessions"], frames["measurements"])


def test_empty_tables_give_empty_study():
    empty = {name: pd.DataFrame(columns=[s.name for s in spec])
             for name, spec in TABLE_SPECS.items()}
    study = from_frames(**empty)
    assert study.report.ok
    assert len(study.patients) == 0 and study.measures == []
    assert study.summary().empty
    assert study.sessions["session_number"].dtype == "int64"


def test_findings_raise_one_data_warning():
    frames = tiny_frames()
    frames["measurements"].loc[0, "value"] = "99"
    with pytest.warns(DataWarning, match=r"<frames>: 1 row\(s\) excluded and 1 caution\(s\)"):
        study = from_frames(**frames)
    # the post reading of S1 lost its pre: a caution
    assert [f.rule for f in study.report.findings] == ["out_of_range", "post_without_pre"]


def test_given_session_numbers_kept_when_in_date_order_with_gaps():
    frames = tiny_frames()
    frames["sessions"]["session_number"] = ["5", "3", "1", "2"]  # P1: 1 Jan is 3, 15 Jan is 5
    study = from_frames(**frames)
    assert study.report.ok, str(study.report)
    numbers = dict(zip(study.sessions["session_id"], study.sessions["session_number"]))
    assert numbers == {"S1": 5, "S2": 3, "S3": 1, "S4": 2}


def test_partly_numbered_patient_falls_back_to_date_order():
    frames = tiny_frames()
    frames["sessions"]["session_number"] = ["5", "", "1", "2"]
    with pytest.warns(DataWarning):
        study = from_frames(**frames)
    assert [f.message for f in study.report.findings] == [
        "sessions row 2: session_number is empty while other visits of patient P1 are numbered; "
        "numbers of this patient are taken from date order (row kept with a caution)"]
    numbers = dict(zip(study.sessions["session_id"], study.sessions["session_number"]))
    assert numbers == {"S1": 2, "S2": 1, "S3": 1, "S4": 2}


def test_analysis_frame_on_raw_simulated_frames_matches_validated_study():
    from mfr_outcomes.synthetic import generate_frames

    frames, _ = generate_frames(n_patients=12, seed=11)
    study = from_frames(**frames)
    assert study.report.ok, str(study.report)
    raw = analysis_frame(frames["patients"], frames["sessions"], frames["measurements"],
                         "pain_nrs")
    typed = study.frame("pain_nrs")
    assert len(raw) == len(typed) > 0
    for col in ("patient_id", "session_id", "session_number", "weeks", "post", "value"):
        assert raw[col].astype(str).tolist() == typed[col].astype(str).tolist(), col
    assert raw["phase"].astype(str).tolist() == typed["phase"].astype(str).tolist()


def test_labels_are_matched_ignoring_case_spaces_and_hyphens():
    frames = tiny_frames()
    frames["sessions"]["technique"] = ["Massage", "Direct pressure", " STRETCHING ", "none"]
    frames["sessions"]["adverse_event"] = ["None", "Soreness", "symptom-flare", "none"]
    frames["patients"]["sex"] = ["Female", "MALE"]
    study = from_frames(**frames)
    assert study.report.ok, str(study.report)
    assert list(study.sessions["technique"]) == ["massage", "direct_pressure", "stretching",
                                                 "none"]
    assert list(study.sessions["adverse_event"]) == ["none", "soreness", "symptom_flare", "none"]
    assert list(study.patients["sex"]) == ["female", "male"]
