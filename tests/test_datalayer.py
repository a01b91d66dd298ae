"""Tests of the vectorised data layer (csvread, cells, rules): blank lines counted, a quote never
closed, given session numbers kept, missing-value markers shown, many unexpected columns, and the
byte-scan CSV reader against Python's csv module on messy text."""
from __future__ import annotations

import csv
import io
import shutil
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import mfr_outcomes as mfr
from mfr_outcomes.csvread import parse_csv

pytestmark = pytest.mark.filterwarnings("ignore::mfr_outcomes.warnings_.DataWarning")

BASE = Path(__file__).resolve().parent / "data" / "bad" / "base"


def _folder(tmp_path: Path, **tables: str) -> Path:
    folder = tmp_path / "export"
    folder.mkdir()
    for f in BASE.iterdir():
        shutil.copy(f, folder / f.name)
    for name, text in tables.items():
        (folder / f"{name}.csv").write_text(text, encoding="utf-8")
    return folder


def test_blank_lines_are_counted_and_named(tmp_path):
    lines = (BASE / "patients.csv").read_text().splitlines()
    text = "\n".join([lines[0], lines[1], "", "  \t ", lines[2], ",,,", lines[3]]) + "\n"
    report = mfr.validate(_folder(tmp_path, patients=text))
    acc = report.accounting["patients"]
    assert (acc.read, acc.used, acc.excluded, acc.blank) == (6, 3, 0, 3)
    [finding] = [f for f in report.findings if f.rule == "blank_line"]
    assert finding.message == ("patients.csv lines 3, 4, 6: blank or whitespace-only lines, no "
                               "data (counted as read, not as rows)")
    assert "patients: 6 rows read, 3 used, 0 excluded, 3 blank" in str(report)


def test_an_unclosed_quote_swallows_nothing(tmp_path):
    rows = ["patient_id,condition", "P1,sciatica", 'P2,"hip_pain', "P3,both"]
    rows += [f"P{i},sciatica" for i in range(4, 14)]
    report = mfr.validate(_folder(tmp_path, patients="\n".join(rows) + "\n"))
    assert report.accounting["patients"].read == 13  # every data line is a row
    [finding] = [f for f in report.findings if f.table == "patients" and f.line == 3]
    assert finding.message.startswith('patients.csv line 3: a quote (") opened here is never '
                                      'closed, so lines 3–14 would be read as one cell')


def test_a_mistyped_year_keeps_the_given_numbers(tmp_path):
    text = ("session_id,patient_id,therapist_id,session_date,session_number,technique\n"
            "S1,P1,T1,2023-03-14,1,massage\nS2,P1,T1,2021-08-15,2,massage\n"
            "S3,P2,T2,2024-01-09,1,massage\nS4,P2,T2,2024-02-20,2,none\n"
            "S5,P3,T1,2024-01-10,1,combined\n")
    study = mfr.load_study(_folder(tmp_path, sessions=text))
    numbers = dict(zip(study.sessions["session_id"], study.sessions["session_number"]))
    assert numbers["S1"] == 1 and numbers["S2"] == 2  # not renumbered by date
    [f] = [f for f in study.report.findings if f.rule == "session_order"]
    assert "session_number = 1 (session_date 2023-03-14)" in f.message
    assert "session_number 2 (line 3) is dated 2021-08-15" in f.message
    assert "likely a mistyped year" in f.message and "the given numbers are kept" in f.message


def test_a_date_far_from_the_other_visits_is_a_finding_when_numbers_are_derived(tmp_path):
    text = ("session_id,patient_id,therapist_id,session_date,technique\n"
            "S1,P1,T1,2024-01-08,massage\nS2,P1,T1,2024-01-15,massage\n"
            "S6,P1,T1,2026-01-20,massage\n"
            "S3,P2,T2,2024-01-09,massage\nS4,P2,T2,2024-02-20,none\n"
            "S5,P3,T1,2024-01-10,combined\n")
    report = mfr.validate(_folder(tmp_path, sessions=text))
    [f] = [f for f in report.findings if f.rule == "distant_date"]
    assert f.line == 4 and f.value == "2026-01-20" and "nearest 2024-01-15" in f.message


def test_a_missing_value_marker_is_shown(tmp_path):
    m = (BASE / "measurements.csv").read_text().replace("S2,post,pain_nrs,none,4",
                                                         "S2,post,pain_nrs,none,NaN")
    [f] = mfr.validate(_folder(tmp_path, measurements=m)).findings
    assert f.value == "NaN"
    assert f.message == ("measurements.csv line 7: value = NaN, a missing-value marker, but it "
                         "is required (row excluded)")


def test_ten_thousand_unexpected_columns_are_one_caution(tmp_path):
    lines = (BASE / "patients.csv").read_text().splitlines()
    extra = [f"x{k}" for k in range(10_000)]
    text = "\n".join([lines[0] + "," + ",".join(extra)]
                     + [line + "," + ",".join("1" for _ in extra) for line in lines[1:]]) + "\n"
    with warnings.catch_warnings():
        warnings.simplefilter("error", pd.errors.PerformanceWarning)
        study = mfr.load_study(_folder(tmp_path, patients=text))
    [f] = [f for f in study.report.findings if f.rule == "unexpected_column"]
    assert f.message.startswith("patients.csv: 10000 unexpected columns x0, x1, ")
    assert f.message.endswith("and 9980 more (not part of the patients table) are kept as is")
    assert study.patients.shape == (3, 8 + 10_000)


def _python_csv(text: str) -> tuple[list[list[str]], list[int], list[int]]:
    reader = csv.reader(io.StringIO(text, newline=""))
    rows, lines, blank, last, header = [], [], [], 0, None
    for record in reader:
        start, last = last + 1, reader.line_num
        if not record or all(not c.strip() for c in record):
            if header is not None:
                blank.append(start)
            continue
        if header is None:
            header = record
            continue
        rows.append((record + [""] * len(header))[:len(header)])
        lines.append(start)
    return rows, lines, blank


@pytest.mark.parametrize("seed", range(25))
def test_byte_scan_reader_agrees_with_pythons_csv_module(seed):
    rng = np.random.default_rng(seed)
    cells = ["a", "b c", "", " ", '"q,uoted"', '"two\nlines"', '"say ""hi"""', "1.5", "é"]
    lines = ["h1,h2,h3"]
    for _ in range(int(rng.integers(1, 30))):
        kind = rng.random()
        if kind < 0.1:
            lines.append("" if rng.random() < 0.5 else "  ")
        else:
            n = 3 if kind < 0.85 else int(rng.integers(1, 3))
            lines.append(",".join(cells[int(rng.integers(len(cells)))] for _ in range(n)))
    text = "\n".join(lines) + ("\n" if rng.random() < 0.5 else "")
    got = parse_csv(text.encode("utf-8"), "f.csv", sep=",")
    rows, line_numbers, blank = _python_csv(text)
    assert got.frame.to_numpy(dtype=object).tolist() == rows
    assert got.lines.tolist() == line_numbers
    assert got.blank_lines.tolist() == blank


def _plain_parquet(path: Path) -> pd.DataFrame:
    """The Parquet reading before text columns were read as dictionaries (the reference)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    text = pd.StringDtype("pyarrow")
    mapping = {pa.string(): text, pa.large_string(): text}
    return pq.read_table(path).to_pandas(types_mapper=mapping.get)


def _factorized_text(series: pd.Series):
    import pyarrow as pa

    from mfr_outcomes.cells import text_and_markers

    text, marker = text_and_markers(series)
    codes, uniques = pd.factorize(text)
    return text, marker, (codes.astype(np.int64), pa.array(list(uniques), type=pa.string()))


@pytest.mark.parametrize("case", ["many_faults", "duplicate_reading", "cascade", "base"])
def test_parquet_text_read_as_dictionaries_gives_the_same_study(case, tmp_path, monkeypatch):
    """Text columns of Parquet are read as Arrow dictionaries (one per row group) and their
    codes serve the key rules, and timestamps are dates without a round trip through text: the
    same findings, accounting and frames as plain strings read as text, with untrimmed text,
    NA tokens, timestamps at midnight and not, and a large_string column."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from mfr_outcomes import io as mio
    from mfr_outcomes import schema

    src = Path(__file__).resolve().parent / "data" / "bad" / case
    folder = tmp_path / "pq"
    folder.mkdir()
    for name in ("patients", "sessions", "measurements"):
        file = src / f"{name}.csv" if (src / f"{name}.csv").exists() else BASE / f"{name}.csv"
        frame = pd.read_csv(file, dtype=str, keep_default_na=False)
        if name == "measurements":  # untrimmed labels and a marker, spread over row groups
            frame.loc[frame.index[::3], "phase"] = " " + frame["phase"].iloc[::3] + " "
            frame.loc[frame.index[-1:], "side"] = "NaN"
            again = frame.iloc[[0, 1]].assign(session_id=lambda f: f["session_id"] + "  ")
            frame = pd.concat([frame, again], ignore_index=True)  # repeats once trimmed
        if name == "sessions":
            frame["session_date"] = pd.to_datetime(frame["session_date"], errors="coerce")
        table = pa.Table.from_pandas(frame, preserve_index=False)
        if name == "patients":
            stamps = pd.to_datetime(frame["enrolled_on"], errors="coerce")
            stamps.iloc[:1] += pd.Timedelta(hours=9)  # one not at midnight
            table = table.set_column(table.schema.get_field_index("enrolled_on"), "enrolled_on",
                                     pa.array(stamps))
            table = table.set_column(0, "patient_id", table["patient_id"].cast(pa.large_string()))
        pq.write_table(table, folder / f"{name}.parquet", row_group_size=4)
    got = mio.load_study(folder)
    # the reference: plain strings, codes from pandas' factorize of the text, and timestamps
    # read back from their text
    monkeypatch.setattr(mio, "_read_parquet", _plain_parquet)
    monkeypatch.setattr(schema, "text_codes", _factorized_text)
    monkeypatch.setattr(schema, "stamps_as_dates", lambda stamps: None)
    ref = mio.load_study(folder)
    assert len(got.report.findings) > (case != "base")
    assert [f.message for f in got.report.findings] == [f.message for f in ref.report.findings]
    assert got.report.accounting == ref.report.accounting
    for name in ("patients", "sessions", "measurements"):
        pd.testing.assert_frame_equal(getattr(got, name), getattr(ref, name), check_exact=True)


def test_an_empty_parent_table_makes_every_child_row_an_orphan(tmp_path):
    """Orphans are matched by position in the parent; a parent without rows has none (found by
    hypothesis: a sessions file of one NUL byte)."""
    header = (BASE / "sessions.csv").read_text().splitlines()[0]
    report = mfr.validate(_folder(tmp_path, sessions=header + "\n"))
    acc = report.accounting["measurements"]
    assert acc.used == 0 and acc.reasons == {"orphan": acc.read}
    assert all(f.rule == "orphan" for f in report.findings if f.table == "measurements")
