"""Property tests: garbage in any cell never raises unexpectedly, and row accounting always holds."""
from __future__ import annotations

import csv
import io
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import mfr_outcomes as mfr
from mfr_outcomes.io import SourceError, read_csv_text
from mfr_outcomes.schema import TABLE_SPECS, WHEN_GIVEN
from mfr_outcomes.study import from_frames
from mfr_outcomes.vocab import TABLES

# findings here are the point of the tests; their summary warning is expected
pytestmark = pytest.mark.filterwarnings("ignore::mfr_outcomes.warnings_.DataWarning")

BASE = Path(__file__).resolve().parent / "data" / "bad" / "base"
FRAMES = {t: pd.read_csv(BASE / f"{t}.csv", dtype=str, keep_default_na=False) for t in TABLES}

SETTINGS = settings(max_examples=50, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])

garbage = st.one_of(
    st.text(max_size=12),
    st.sampled_from(["", " ", "NA", "nan", "-5", "1e999", "-0", "0x10", "3,5", "1.5", "2024-02-30",
                     "31/12/2024", "2024-13-01", "none", "None", "post", "P1", "S1", "S4", "true",
                     "∞", "١٢", "\x00", "'", '"', "\n", ";", "pain_nrs", "vas", "99999999999999999999"]),
    st.integers(-10**6, 10**6).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
)


def cell_edits(table: str):
    frame = FRAMES[table]
    return st.lists(st.tuples(st.integers(0, len(frame) - 1),
                              st.sampled_from(list(frame.columns)), garbage), max_size=6)


def check_accounting(study, frames) -> None:
    report = study.report
    for table in TABLES:
        acc = report.accounting[table]
        assert acc.read == len(frames[table])
        assert acc.read == acc.used + acc.excluded
        assert acc.used == len(getattr(study, table))
        assert sum(acc.reasons.values()) == acc.excluded
    excluded_findings = [f for f in report.findings if f.action == "excluded"]
    assert bool(excluded_findings) == bool(report.n_excluded)
    for f in report.findings:
        assert isinstance(f.message, str) and f.message.startswith(f.file)
    # the typed frames keep their contract whatever came in
    assert study.sessions["session_number"].dtype == "int64"
    assert study.measurements["value"].dtype == "float64"
    assert study.patients["age_years"].dtype == "Int64"
    for table in TABLES:
        names = [s.name for s in TABLE_SPECS[table] if s.name not in WHEN_GIVEN]
        assert list(getattr(study, table).columns[:len(names)]) == names


@SETTINGS
@given(p=cell_edits("patients"), s=cell_edits("sessions"), m=cell_edits("measurements"))
def test_garbage_cells_in_frames(p, s, m):
    frames = {t: f.copy() for t, f in FRAMES.items()}
    for table, edits in (("patients", p), ("sessions", s), ("measurements", m)):
        for row, col, value in edits:
            frames[table].loc[row, col] = value
    study = from_frames(**frames)
    check_accounting(study, frames)
    # every used reading is inside its measure's range, and analysis frames can be built
    for code in study.measures:
        measure = mfr.get_measure(code)
        values = study.measurements.loc[study.measurements["measure"] == code, "value"]
        assert values.between(measure.low, measure.high).all()
        assert len(study.frame(code)) <= len(values)


@SETTINGS
@given(m=cell_edits("measurements"), sep=st.sampled_from([",", ";", "\t"]))
def test_garbage_cells_through_csv_text(m, sep):
    frame = FRAMES["measurements"].copy()
    for row, col, value in m:
        frame.loc[row, col] = value
    buf = io.StringIO()
    frame.to_csv(buf, index=False, sep=sep, quoting=csv.QUOTE_MINIMAL)
    try:
        inp = read_csv_text(buf.getvalue(), "measurements", "measurements.csv")
    except SourceError:
        return
    # each record's line is where it starts; lines increase strictly
    lines = inp.lines.tolist()
    assert lines == sorted(set(lines))
    assert all(line >= 2 for line in lines)


@SETTINGS
@given(data=st.binary(max_size=200))
def test_garbage_bytes_as_a_csv_file(tmp_path_factory, data):
    folder = tmp_path_factory.mktemp("bytes")
    for table in TABLES:
        (folder / f"{table}.csv").write_bytes((BASE / f"{table}.csv").read_bytes())
    (folder / "sessions.csv").write_bytes(data)
    try:
        report = mfr.validate(folder)
    except SourceError as exc:
        assert str(exc)
        return
    for acc in report.accounting.values():
        assert acc.read == acc.used + acc.excluded + acc.blank  # blank lines count as read
