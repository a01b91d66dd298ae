"""Tests of mfr_outcomes.schema: one bad file a validation rule, each with the exact sentence.

Each case folder under ``tests/data/bad/`` holds only the faulty table; the other tables come
from ``tests/data/bad/base/`` (a clean three-patient study). Line numbers are those a text editor
shows: the header is line 1.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pandera.errors import SchemaErrors

import mfr_outcomes as mfr
from mfr_outcomes.schema import TABLE_SPECS, required_columns, table_schema

# findings here are the point of the tests; their summary warning is expected
pytestmark = pytest.mark.filterwarnings("ignore::mfr_outcomes.warnings_.DataWarning")

BAD = Path(__file__).resolve().parent / "data" / "bad"

EXCL, KEPT, CAUT = "(row excluded)", "(set to missing; row kept)", "(row kept with a caution)"
HINT = "(write YYYY-MM-DD, or pass dayfirst=True for day/month/year)"

# case -> (expected messages in order, {table: (read, used, excluded)} for tables that change)
CASES = {
    "missing_column": (
        ["sessions.csv: required column technique is missing; all 5 rows excluded",
         "measurements.csv lines 2, 3, 4, 5: excluded because session S1 was excluded",
         "measurements.csv lines 6, 7: excluded because session S2 was excluded",
         "measurements.csv lines 8, 9: excluded because session S3 was excluded",
         "measurements.csv line 10: excluded because session S4 was excluded",
         "measurements.csv lines 11, 12, 13: excluded because session S5 was excluded"],
        {"sessions": (5, 0, 5), "measurements": (12, 0, 12)}),
    "unexpected_column": (
        ["patients.csv: unexpected column bmi (not part of the patients table) is kept as is"],
        {}),
    "missing_value": (
        [f"sessions.csv line 4: therapist_id is empty, but it is required {EXCL}",
         "measurements.csv lines 8, 9: excluded because session S3 was excluded"],
        {"sessions": (5, 4, 1), "measurements": (12, 10, 2)}),
    "not_a_number": (
        [f"sessions.csv line 3: duration_min = forty-five, not a number {KEPT}"], {}),
    "out_of_range": (
        [f"sessions.csv line 4: duration_min = -5, must be 5–180 {KEPT}"], {}),
    "value_out_of_range": (
        [f"measurements.csv line 8: value = 11, must be 0–10 for pain_nrs {EXCL}",
         "measurements.csv line 9: post reading of pain_nrs (side none) in session S3 has no "
         f"pre reading {CAUT}"],
        {"measurements": (12, 11, 1)}),
    "not_integer": (
        [f"patients.csv line 3: age_years = 55.5, must be a whole number {KEPT}"], {}),
    "value_not_integer": (
        [f"measurements.csv line 2: value = 6.5, must be a whole number for pain_nrs {EXCL}",
         "measurements.csv line 3: post reading of pain_nrs (side none) in session S1 has no "
         f"pre reading {CAUT}"],
        {"measurements": (12, 11, 1)}),
    "unknown_category": (
        ["sessions.csv line 6: technique = cupping, not one of direct_pressure, stretching, "
         f"massage, combined, none {EXCL}",
         "measurements.csv lines 11, 12, 13: excluded because session S5 was excluded"],
        {"sessions": (5, 4, 1), "measurements": (12, 9, 3)}),
    "optional_category": (
        [f"patients.csv line 2: sex = woman, not one of female, male, other, unknown {KEPT}"], {}),
    "unknown_measure": (
        ["measurements.csv line 14: measure = vas, not a registered measure (known: pain_nrs, "
         "leg_pain_nrs, odi, slr_deg, hip_ir_deg, hip_flexion_deg, ppt_kgcm2, paresthesia) "
         f"{EXCL}"],
        {"measurements": (13, 12, 1)}),
    "duplicate_key": (
        [f"patients.csv line 5: patient_id = P2 repeats line 3 {EXCL}"],
        {"patients": (4, 3, 1)}),
    "duplicate_reading": (
        ["measurements.csv line 14: reading (session_id S2, phase pre, measure pain_nrs, side "
         f"none) repeats line 6 {EXCL}"],
        {"measurements": (13, 12, 1)}),
    "orphan_session": (
        [f"sessions.csv line 7: patient_id = P9 is not in patients {EXCL}"],
        {"sessions": (6, 5, 1)}),
    "orphan_measurement": (
        [f"measurements.csv line 14: session_id = S7 is not in sessions {EXCL}"],
        {"measurements": (13, 12, 1)}),
    "invalid_date": (
        [f"sessions.csv line 3: session_date = 2024-02-30, not a valid date {HINT} {EXCL}",
         "measurements.csv lines 6, 7: excluded because session S2 was excluded"],
        {"sessions": (5, 4, 1), "measurements": (12, 10, 2)}),
    "before_enrolment": (
        ["sessions.csv line 6: session_date = 2023-12-20 is before enrolled_on 2024-01-03 of "
         f"patient P3 {CAUT}"], {}),
    "session_order": (
        ["sessions.csv line 3: session_number = 1 (session_date 2024-01-15) disagrees with date "
         "order for patient P1: session_number 1 (line 2) is dated 2024-01-08, before it; "
         "session_number 1 is given twice: likely a typo in one of them; the given numbers are "
         f"kept {CAUT}"], {}),
    "post_without_pre": (
        ["measurements.csv line 6: post reading of pain_nrs (side none) in session S2 has no "
         f"pre reading {CAUT}"],
        {"measurements": (11, 11, 0)}),
    "post_on_assessment": (
        ["measurements.csv line 14: post reading of pain_nrs in session S4, an assessment-only "
         f"visit (technique none) {EXCL}"],
        {"measurements": (13, 12, 1)}),
    "wrong_type": (
        [f"sessions.csv line 2: home_program = maybe, not true/false (yes/no, 1/0) {KEPT}"], {}),
    "cascade": (
        [f"patients.csv line 2: condition = lumbago, not one of sciatica, hip_pain, both {EXCL}",
         "sessions.csv lines 2, 3: excluded because patient P1 was excluded",
         "measurements.csv lines 2, 3, 4, 5: excluded because session S1 was excluded",
         "measurements.csv lines 6, 7: excluded because session S2 was excluded"],
        {"patients": (3, 2, 1), "sessions": (5, 3, 2), "measurements": (12, 6, 6)}),
    "malformed_row": (
        ["measurements.csv line 4: 6 fields but the header has 5; extra values extra ignored "
         f"{CAUT}"], {}),
}

CLEAN = {"patients": (3, 3, 0), "sessions": (5, 5, 0), "measurements": (12, 12, 0)}


def assemble(case: str, tmp_path: Path) -> Path:
    folder = tmp_path / case
    folder.mkdir()
    for f in (BAD / "base").iterdir():
        shutil.copy(f, folder / f.name)
    for f in (BAD / case).iterdir():
        shutil.copy(f, folder / f.name)
    return folder


def accounting(report) -> dict[str, tuple[int, int, int]]:
    return {t: (a.read, a.used, a.excluded) for t, a in report.accounting.items()}


def test_base_is_clean():
    report = mfr.validate(BAD / "base")
    assert report.ok, str(report)
    assert accounting(report) == CLEAN


def test_every_case_folder_is_tested():
    folders = {p.name for p in BAD.iterdir() if p.is_dir()} - {"base", "many_faults"}
    assert folders == set(CASES)


@pytest.mark.parametrize("case", sorted(CASES))
def test_rule_gives_exact_sentence(case, tmp_path):
    expected, changed = CASES[case]
    report = mfr.validate(assemble(case, tmp_path))
    assert [f.message for f in report.findings] == expected
    assert report.findings[0].rule == RULE[case]
    if case == "cascade":
        assert {f.rule for f in report.findings[1:]} == {"cascade"}
    assert accounting(report) == {**CLEAN, **changed}
    for f in report.findings:  # the structured fields agree with the sentence
        assert f.message.startswith(f.file)
        if f.line is not None:
            assert f" {f.line}" in f.message
        assert f.action == ("kept" if f.message.endswith((KEPT, CAUT)) or f.rule in (
            "unexpected_column",) else "excluded")
        if f.value is not None and f.rule not in ("cascade", "duplicate_reading",
                                                  "post_without_pre", "post_on_assessment"):
            assert f"= {f.value}" in f.message


# case -> the rule code its first finding carries
RULE = {case: case for case in CASES} | {
    "value_out_of_range": "out_of_range", "value_not_integer": "not_integer",
    "optional_category": "unknown_category", "orphan_session": "orphan",
    "orphan_measurement": "orphan", "cascade": "unknown_category"}


def test_rule_codes_cover_the_design():
    assert set(RULE.values()) >= {
        "missing_column", "unexpected_column", "missing_value", "not_a_number", "wrong_type",
        "not_integer", "out_of_range", "unknown_category", "unknown_measure", "duplicate_key",
        "duplicate_reading", "orphan", "invalid_date", "before_enrolment",
        "session_order", "post_without_pre", "post_on_assessment", "malformed_row"}


def test_many_faults_in_one_file_all_reported_with_editor_lines(tmp_path):
    # line 3-4 is one record (a quoted therapist name over two lines), line 7 is blank
    report = mfr.validate(assemble("many_faults", tmp_path))
    sessions = [f.message for f in report.findings if f.table == "sessions"]
    assert sessions == [
        f"sessions.csv line 3: duration_min = 450, must be 5–180 {KEPT}",
        f"sessions.csv line 5: session_date = 09/01/2024, not a valid date {HINT} {EXCL}",
        "sessions.csv line 7: blank or whitespace-only line, no data (counted as read, not as "
        "rows)",
        f"sessions.csv line 8: duration_min = sixty, not a number {KEPT}",
        f"sessions.csv line 8: home_program = perhaps, not true/false (yes/no, 1/0) {KEPT}",
        "sessions.csv line 8: target_region = elbow, not one of lower_back, piriformis, hip, "
        f"multiple {KEPT}",
        "sessions.csv line 8: adverse_event = bleeding, not one of none, soreness, bruising, "
        f"symptom_flare, other {KEPT}",
    ]
    assert [f.line for f in report.findings if f.table == "sessions"] == [3, 5, 7, 8, 8, 8, 8]
    # read = used + excluded + blank
    assert accounting(report)["sessions"] == (6, 4, 1)
    assert report.accounting["sessions"].blank == 1
    assert report.accounting["sessions"].reasons == {"invalid_date": 1}
    assert accounting(report)["measurements"] == (12, 10, 2)


def test_many_faults_read_dayfirst_keeps_the_date(tmp_path):
    study = mfr.load_study(assemble("many_faults", tmp_path), dayfirst=True)
    s = study.sessions.set_index("session_id")
    assert s.loc["S3", "session_date"] == pd.Timestamp("2024-01-09")
    assert s.loc["S2", "therapist_id"] == "T1\n(senior)"
    assert np.isnan(s.loc["S2", "duration_min"])  # 450 set to missing
    assert pd.isna(s.loc["S5", "home_program"]) and pd.isna(s.loc["S5", "target_region"])
    assert study.report.accounting["sessions"].used == 5


def test_unexpected_column_is_kept_in_the_frame(tmp_path):
    study = mfr.load_study(assemble("unexpected_column", tmp_path))
    assert list(study.patients["bmi"]) == ["24", "27", "31"]


def test_session_order_keeps_the_given_numbers(tmp_path):
    # nothing is renumbered silently: the caution names both visits and the given numbers stay
    study = mfr.load_study(assemble("session_order", tmp_path))
    numbers = dict(zip(study.sessions["session_id"], study.sessions["session_number"]))
    assert numbers == {"S1": 1, "S2": 1, "S3": 1, "S4": 2, "S5": 1}


def test_strict_raises_with_every_finding(tmp_path):
    with pytest.raises(mfr.DataValidationError) as info:
        mfr.load_study(assemble("many_faults", tmp_path), strict=True)
    assert len(info.value.report.findings) == 8  # 7 problems and the blank line
    assert "sessions.csv line 3: duration_min = 450" in str(info.value)


def test_pandera_schema_is_lazy_and_names_failures():
    frame = pd.DataFrame({
        "session_id": ["S1", "S2"], "patient_id": ["P1", "P1"], "therapist_id": ["T", "T"],
        "session_date": pd.to_datetime(["2024-01-01", "2024-01-02"]),
        "session_number": [1.0, 2.5], "technique": ["massage", "cupping"],
        "target_region": ["hip", None], "duration_min": [4.0, 200.0],
        "home_program": pd.array([True, None], dtype="boolean"), "adverse_event": ["none", None]})
    with pytest.raises(SchemaErrors) as info:
        table_schema("sessions").validate(frame, lazy=True)
    cases = info.value.failure_cases
    failed = set(zip(cases["column"], cases["index"].astype(int)))
    assert failed == {("session_number", 1), ("technique", 1), ("duration_min", 0),
                      ("duration_min", 1)}


def test_specs_match_the_design():
    assert required_columns("patients") == ["patient_id", "condition"]
    assert required_columns("sessions") == ["session_id", "patient_id", "therapist_id",
                                            "session_date", "technique"]
    assert required_columns("measurements") == ["session_id", "phase", "measure", "value"]
    defaults = {(t, s.name): s.default for t, specs in TABLE_SPECS.items() for s in specs
                if s.default}
    assert defaults == {("patients", "site_id"): "site-1", ("measurements", "side"): "none"}


def test_frames_and_files_give_the_same_findings(tmp_path):
    folder = assemble("many_faults", tmp_path)
    frames = {t: pd.read_csv(folder / f"{t}.csv", dtype=str, keep_default_na=False)
              for t in ("patients", "sessions", "measurements")}
    from_files = mfr.validate(folder)
    from_frames = mfr.validate(frames)
    # a frame has no blank lines; every other finding is the same
    assert [f.rule for f in from_frames.findings] == [f.rule for f in from_files.findings
                                                      if f.rule != "blank_line"]
    # frames are numbered by row (first data row 1), files by editor line
    assert from_frames.findings[0].message.startswith("sessions row 2: duration_min = 450")


# ---------------------------------------------------------------------------- many columns


def _wide_inputs(tmp_path: Path, n_extra: int):
    """The base study read from CSV, its patients table carrying *n_extra* unexpected columns."""
    from mfr_outcomes.io import read_tables

    folder = tmp_path / f"wide{n_extra}"
    shutil.copytree(BAD / "base", folder)
    lines = (folder / "patients.csv").read_text(encoding="utf-8").splitlines()
    extra = [f"x{k}" for k in range(n_extra)]
    text = "\n".join([",".join([lines[0], *extra])]
                     + [",".join([line, *(str(k % 7) for k in range(n_extra))])
                        for line in lines[1:]]) + "\n"
    (folder / "patients.csv").write_text(text, encoding="utf-8")
    inputs, _ = read_tables(folder)
    return inputs


def _calls(inputs) -> tuple[int, list]:
    """Python function calls made by validating *inputs* (a count, not a time: the same on a
    busy machine and an idle one), and the unexpected-column findings."""
    import cProfile
    import pstats

    from mfr_outcomes.schema import validate_tables

    # one thread: cProfile counts the calls of the thread it runs in only
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MFR_OUTCOMES_THREADS", "1")
        prof = cProfile.Profile()
        prof.enable()
        frames, findings, _ = validate_tables(inputs)
        prof.disable()
    found = [f for f in findings if f.rule == "unexpected_column"]
    return pstats.Stats(prof).total_calls, found, frames


def test_unexpected_columns_cost_grows_linearly(tmp_path):
    """Matching, reporting and keeping n unexpected columns is linear in n: going from 1,000 to
    10,000 columns adds ten times the calls going from 0 to 1,000 did (a quadratic step would
    add a hundred times), and it stays one caution naming them."""
    base, none, _ = _calls(_wide_inputs(tmp_path, 0))
    small, [f1], _ = _calls(_wide_inputs(tmp_path, 1_000))
    big, [f10], frames = _calls(_wide_inputs(tmp_path, 10_000))
    assert not none
    per_column_small = (small - base) / 1_000
    per_column_big = (big - base) / 10_000
    assert per_column_big <= 1.1 * per_column_small, (base, small, big)
    # pandas' selection and conversion of each Arrow column: some tens of calls a column, never
    # a loop over the other columns
    assert per_column_big < 100, per_column_big
    assert f10.message.startswith("patients.csv: 10000 unexpected columns x0, x1, ")
    assert f10.message.endswith("and 9980 more (not part of the patients table) are kept as is")
    assert f1.message.startswith("patients.csv: 1000 unexpected columns x0, x1, ")
    kept = frames["patients"]
    assert kept.shape[1] == 8 + 10_000
    assert list(kept["x9999"]) == [str(9999 % 7)] * len(kept)
