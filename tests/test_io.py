"""Tests of mfr_outcomes.io: every reader round-trips a study; column maps; encodings and dialects."""
from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pandas as pd
import pytest
from test_study import tiny_frames

import mfr_outcomes as mfr
from mfr_outcomes.io import ColumnMapError, SourceError, read_csv_text
from mfr_outcomes.study import Study, from_frames
from mfr_outcomes.vocab import TABLES

# findings here are the point of the tests; their summary warning is expected
pytestmark = pytest.mark.filterwarnings("ignore::mfr_outcomes.warnings_.DataWarning")

DATA = Path(__file__).resolve().parents[1] / "data" / "synthetic"


@pytest.fixture(scope="module")
def study(request) -> Study:
    """The shipped synthetic study when it exists, else a small hand-built one."""
    if (DATA / "measurements.csv").exists():
        return request.getfixturevalue("synthetic_study")
    return from_frames(**tiny_frames())


@pytest.fixture(scope="module")
def part(study) -> Study:
    """The first 15 patients of *study* (keeps the slow writers, XLSX above all, quick)."""
    keep = sorted(study.patients["patient_id"])[:15]
    patients = study.patients[study.patients["patient_id"].isin(keep)]
    sessions = study.sessions[study.sessions["patient_id"].isin(keep)]
    measurements = study.measurements[study.measurements["session_id"].isin(
        sessions["session_id"])]
    sub = from_frames(patients, sessions, measurements)
    assert sub.report.ok, str(sub.report)
    return sub


def assert_same_study(a: Study, b: Study) -> None:
    for table in TABLES:
        pd.testing.assert_frame_equal(getattr(a, table), getattr(b, table), check_like=False)


def write_csv_folder(study: Study, folder: Path, **kw) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for table in TABLES:
        getattr(study, table).to_csv(folder / f"{table}.csv", index=False, **kw)
    return folder


def write_sqlite(study: Study, path: Path) -> Path:
    con = sqlite3.connect(path)
    for table in TABLES:
        frame = getattr(study, table).copy()
        for col in frame.columns:
            if str(frame[col].dtype) in ("boolean", "category", "Int64"):
                frame[col] = frame[col].astype(object)
        frame.to_sql(table, con, index=False)
    con.close()
    return path


def test_csv_folder_round_trip(study, tmp_path):
    loaded = mfr.load_study(write_csv_folder(study, tmp_path / "csv"))
    assert loaded.report.ok, str(loaded.report)
    assert_same_study(loaded, study)


def test_parquet_folder_round_trip(study, tmp_path):
    folder = tmp_path / "pq"
    folder.mkdir()
    for table in TABLES:
        getattr(study, table).to_parquet(folder / f"{table}.parquet")
    loaded = mfr.load_study(folder)
    assert loaded.report.ok, str(loaded.report)
    assert_same_study(loaded, study)


def test_xlsx_folder_and_workbook_round_trip(part, tmp_path):
    folder = tmp_path / "xlsx"
    folder.mkdir()
    for table in TABLES:
        getattr(part, table).to_excel(folder / f"{table}.xlsx", index=False)
    loaded = mfr.load_study(folder)
    assert loaded.report.ok, str(loaded.report)
    assert_same_study(loaded, part)

    book = tmp_path / "clinic.xlsx"
    with pd.ExcelWriter(book) as writer:
        for table in TABLES:
            getattr(part, table).to_excel(writer, sheet_name=table, index=False)
    loaded = mfr.load_study(book)
    assert loaded.report.ok, str(loaded.report)
    assert_same_study(loaded, part)


def test_sqlite_file_and_url_round_trip(part, tmp_path):
    path = write_sqlite(part, tmp_path / "clinic.sqlite")
    loaded = mfr.load_study(path)
    assert loaded.report.ok, str(loaded.report)
    assert_same_study(loaded, part)
    by_url = mfr.load_study(f"sqlite:///{path}")
    assert by_url.report.ok, str(by_url.report)
    assert_same_study(by_url, part)
    assert by_url.source.startswith("sqlite:///")


def test_url_with_queries(part, tmp_path):
    path = write_sqlite(part, tmp_path / "clinic.db")
    con = sqlite3.connect(path)
    con.execute("ALTER TABLE sessions RENAME COLUMN therapist_id TO clinician")
    con.commit()
    con.close()
    queries = {
        "patients": "SELECT * FROM patients",
        "sessions": "SELECT session_id, patient_id, clinician AS therapist_id, session_date, "
                    "session_number, technique, target_region, duration_min, home_program, "
                    "adverse_event FROM sessions",
        "measurements": "SELECT * FROM measurements",
    }
    loaded = mfr.load_study(f"sqlite:///{path}", queries=queries)
    assert loaded.report.ok, str(loaded.report)
    assert_same_study(loaded, part)


def test_duckdb_file_round_trip(part, tmp_path):
    duckdb = pytest.importorskip("duckdb")
    path = tmp_path / "clinic.duckdb"
    con = duckdb.connect(str(path))
    for table in TABLES:
        frame = getattr(part, table).copy()
        for col in frame.columns:
            if str(frame[col].dtype) == "category":
                frame[col] = frame[col].astype(object)
        con.register("frame", frame)
        con.execute(f"CREATE TABLE {table} AS SELECT * FROM frame")
        con.unregister("frame")
    con.close()
    loaded = mfr.load_study(path)
    assert loaded.report.ok, str(loaded.report)
    assert_same_study(loaded, part)


def test_dict_of_frames_is_a_source(part):
    loaded = mfr.load_study({t: getattr(part, t) for t in TABLES})
    assert loaded.report.ok
    assert_same_study(loaded, part)


CLINIC_MAP = {
    "patients": {"Patient": "patient_id", "Diagnosis": "condition", "Age": "age_years"},
    "sessions": {"Visit": "session_id", "Patient": "patient_id", "Therapist": "therapist_id",
                 "Date": "session_date", "Technique": "technique"},
    "measurements": {"Visit": "session_id", "When": "phase", "Scale": "measure",
                     "Score": "value", "Side": "side"},
    "technique": {"DP": "direct_pressure", "Stretch": "stretching", "Massage": "massage",
                  "Combined": "combined", "Assessment": "none"},
    "condition": {"Ischias": "sciatica", "Hip": "hip_pain", "Both": "both"},
    "phase": {"vor": "pre", "nach": "post"},
    "measure": {"NRS": "pain_nrs", "SLR": "slr_deg"},
}


def _to_clinic(study: Study) -> dict[str, pd.DataFrame]:
    """The study as a clinic would export it: its own column names and labels."""
    out = {}
    for table in TABLES:
        frame = getattr(study, table).copy()
        for col, labels in CLINIC_MAP.items():
            if col in frame.columns and col not in TABLES:
                back = {v: k for k, v in labels.items()}
                frame[col] = frame[col].astype(object).map(lambda v, b=back: b.get(v, v))
        back_cols = {v: k for k, v in CLINIC_MAP[table].items()}
        out[table] = frame.rename(columns=back_cols)
    return out


def test_column_mapped_export_gives_same_study(part, tmp_path):
    clinic = _to_clinic(part)
    assert "Technique" in clinic["sessions"].columns
    assert set(clinic["sessions"]["Technique"].dropna()) <= {"DP", "Stretch", "Massage",
                                                             "Combined", "Assessment"}
    folder = tmp_path / "clinic"
    folder.mkdir()
    for table, frame in clinic.items():
        frame.to_csv(folder / f"{table}.csv", index=False, sep=";", decimal=",")
    mapped = mfr.load_study(folder, column_map=CLINIC_MAP)
    assert mapped.report.ok, str(mapped.report)
    assert_same_study(mapped, part)
    # the same map from a JSON file (the CLI's --column-map FILE)
    map_file = tmp_path / "map.json"
    map_file.write_text(json.dumps(CLINIC_MAP), encoding="utf-8")
    assert_same_study(mfr.load_study(folder, column_map=map_file), part)
    # without the map the export is not usable
    unmapped = mfr.validate(folder)
    assert any(f.rule == "missing_column" for f in unmapped.findings)


def test_yaml_column_map(part, tmp_path):
    yaml = pytest.importorskip("yaml")
    folder = tmp_path / "clinic"
    folder.mkdir()
    for table, frame in _to_clinic(part).items():
        frame.to_csv(folder / f"{table}.csv", index=False)
    map_file = tmp_path / "map.yaml"
    map_file.write_text(yaml.safe_dump(CLINIC_MAP), encoding="utf-8")
    assert_same_study(mfr.load_study(folder, column_map=str(map_file)), part)


def test_bad_column_maps(tmp_path):
    with pytest.raises(ColumnMapError, match="neither a table"):
        mfr.load_study(tiny_frames(), column_map={"visits": {"a": "b"}})
    bad = tmp_path / "map.json"
    bad.write_text("{not json", encoding="utf-8")
    with pytest.raises(ColumnMapError, match="not valid JSON"):
        mfr.load_study(tiny_frames(), column_map=bad)
    with pytest.raises(ColumnMapError, match="does not exist"):
        mfr.load_study(tiny_frames(), column_map=tmp_path / "nope.json")


def test_latin1_bom_semicolon_and_dayfirst(tmp_path):
    frames = tiny_frames()
    frames["patients"].loc[0, "site_id"] = "Zürich"
    frames["measurements"].loc[8, "value"] = "47,5"
    for col in ("session_date",):
        frames["sessions"][col] = pd.to_datetime(frames["sessions"][col]).dt.strftime("%d/%m/%Y")
    frames["patients"]["enrolled_on"] = pd.to_datetime(
        frames["patients"]["enrolled_on"]).dt.strftime("%d.%m.%Y")
    folder = tmp_path / "export"
    folder.mkdir()
    frames["patients"].to_csv(folder / "patients.csv", sep=";", index=False, encoding="latin-1")
    frames["sessions"].to_csv(folder / "sessions.csv", sep=";", index=False,
                              encoding="utf-8-sig")
    frames["measurements"].to_csv(folder / "measurements.csv", sep=";", index=False)
    loaded = mfr.load_study(folder, dayfirst=True)
    assert loaded.report.ok, str(loaded.report)
    assert loaded.patients.loc[0, "site_id"] == "Zürich"
    assert loaded.measurements["value"].iloc[8] == 47.5
    assert loaded.sessions.loc[0, "session_date"] == pd.Timestamp("2024-01-15")
    assert loaded.patients.loc[1, "enrolled_on"] == pd.Timestamp("2024-02-01")
    # without dayfirst the day/month/year dates are findings with a hint
    report = mfr.validate(folder)
    first = next(f for f in report.findings if f.rule == "invalid_date")
    assert first.message == ("patients.csv line 2: enrolled_on = 01.01.2024, not a valid date "
                             "(write YYYY-MM-DD, or pass dayfirst=True for day/month/year) "
                             "(set to missing; row kept)")


def test_explicit_encoding_sep_decimal(tmp_path):
    text = "session_id|phase|measure|value\nS1|pre|odi|40.5\n"
    folder = tmp_path / "f"
    folder.mkdir()
    frames = tiny_frames()
    frames["patients"].to_csv(folder / "patients.csv", index=False)
    frames["sessions"].to_csv(folder / "sessions.csv", index=False)
    (folder / "measurements.csv").write_text(text, encoding="utf-16")
    with pytest.raises(SourceError):
        pass_through = mfr.load_study(folder, encoding="ascii")
        del pass_through
    (folder / "measurements.csv").write_text(text, encoding="cp1252")
    study = mfr.load_study(folder, sep=None)
    assert study.measurements["value"].tolist() == [40.5]


def test_csv_line_numbers_count_blank_lines_and_multiline_cells():
    text = ('patient_id,condition,site_id\n'
            'P1,sciatica,"north\nwing"\n'
            '\n'
            'P2,hip_pain,south\n')
    inp = read_csv_text(text, "patients", "patients.csv")
    assert inp.lines.tolist() == [2, 5]
    assert inp.frame.loc[0, "site_id"] == "north\nwing"


def test_unreadable_sources(tmp_path):
    with pytest.raises(SourceError, match="does not exist"):
        mfr.load_study(tmp_path / "missing")
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"\x00\x01 not data")
    with pytest.raises(SourceError, match="not a recognised source"):
        mfr.validate(junk)
    single = tmp_path / "sessions.csv"
    single.write_text("session_id\nS1\n")
    with pytest.raises(SourceError, match="is a single file; give the folder"):
        mfr.load_study(single)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SourceError, match="has no patients table"):
        mfr.load_study(empty)
    with pytest.raises(SourceError, match="no 'sessions' entry"):
        mfr.load_study({"patients": pd.DataFrame()})
    with pytest.raises(SourceError, match="not a usable SQLAlchemy URL"):
        mfr.load_study("nosuchdialect://x/y")
    with pytest.raises(SourceError, match="cannot read a source of type int"):
        mfr.load_study(42)


def test_sniffer_prefers_header_over_decimal_commas():
    text = "session_id;phase;measure;side;value\nS1;pre;odi;none;40,5\nS1;post;odi;none;38,0\n"
    inp = read_csv_text(text, "measurements", "measurements.csv")
    assert list(inp.frame.columns) == ["session_id", "phase", "measure", "side", "value"]
    assert inp.decimal == ","
    assert inp.frame["value"].tolist() == ["40,5", "38,0"]
    tabbed = read_csv_text("session_id\tphase\nS1\tpre\n", "measurements", "m.tsv")
    assert tabbed.frame.loc[0, "phase"] == "pre" and tabbed.decimal == "."


def test_xlsx_and_database_findings_name_rows(tmp_path):
    frames = tiny_frames()
    frames["sessions"].loc[2, "duration_min"] = "-5"  # third data row
    book = tmp_path / "clinic.xlsx"
    with pd.ExcelWriter(book) as writer:
        for table, frame in frames.items():
            frame.to_excel(writer, sheet_name=table, index=False)
    [finding] = mfr.validate(book).findings
    # sheet rows as the spreadsheet shows them: header row 1, third data row is row 4
    assert finding.message == ("clinic.xlsx sheet sessions row 4: duration_min = -5, must be "
                               "5–180 (set to missing; row kept)")
    db = tmp_path / "clinic.sqlite"
    con = sqlite3.connect(db)
    for table, frame in frames.items():
        frame.to_sql(table, con, index=False)
    con.close()
    [finding] = mfr.validate(db).findings
    # database rows are counted from 1 (no header row)
    assert finding.message == ("clinic.sqlite table sessions row 3: duration_min = -5, must be "
                               "5–180 (set to missing; row kept)")
    assert finding.line == 3


def test_loading_a_study_does_not_import_pandera():
    """pandera serves ``schema.table_schema`` only; a load (every CLI command starts with one)
    does not pay its import (0.25 s of CPU)."""
    import subprocess
    import sys

    code = ("import sys, warnings, mfr_outcomes as mfr; warnings.simplefilter('ignore'); "
            "mfr.load_study(mfr.datasets.synthetic_path()); print('pandera' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=300)
    assert out.stdout.split()[-1] == "False"
