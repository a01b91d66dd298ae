"""Validation inside DuckDB (``scale.sql_validate``) gives the in-memory validator's report.

The same data is written as a folder of Parquet tables and as a DuckDB file, and validated both
ways: ``validate(..., engine="memory")`` reads it into pandas, ``engine="duckdb"`` runs the rules
as SQL. Findings (table, file, line, column, value, rule, action, sentence) and row accounting
must be equal: on the bad-file corpus of ``tests/data/bad`` (and the messier cases of the
snapshot test), and on the shipped synthetic data with faults of every kind planted at seeded
random rows, as text and as typed columns. A large generated source is validated with little
Python memory (tracemalloc), its rows never in pandas.
"""
from __future__ import annotations

import tracemalloc
import warnings
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest

import mfr_outcomes as mfr
from mfr_outcomes.io import SourceError, validate
from mfr_outcomes.scale import sql_validate
from mfr_outcomes.vocab import TABLES

pytestmark = pytest.mark.filterwarnings("ignore::mfr_outcomes.warnings_.DataWarning")

HERE = Path(__file__).resolve().parent
BAD = HERE / "data" / "bad"
#: CSV-only faults (a line with too many fields) have no Parquet form.
CORPUS = sorted(p.name for p in BAD.iterdir() if p.is_dir() and p.name not in ("base",
                                                                             "malformed_row"))


def _corpus_frames(case: str) -> dict[str, pd.DataFrame]:
    out = {}
    for t in TABLES:
        f = BAD / case / f"{t}.csv"
        f = f if f.exists() else BAD / "base" / f"{t}.csv"
        out[t] = pd.read_csv(f, dtype=str, keep_default_na=False)
    return out


def _write_parquet(frames: dict[str, pd.DataFrame], folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for t, f in frames.items():
        f.to_parquet(folder / f"{t}.parquet", index=False)
    return folder


def _write_duckdb(frames: dict[str, pd.DataFrame], path: Path) -> Path:
    con = duckdb.connect(str(path))
    for t, f in frames.items():
        con.register("frame", f)
        con.execute(f"CREATE TABLE {t} AS SELECT * FROM frame")
        con.unregister("frame")
    con.close()
    return path


def _same(source: Path, **options) -> dict:
    mem = validate(source, engine="memory", **options).to_dict()
    sql = validate(source, engine="duckdb", **options).to_dict()
    assert sql["accounting"] == mem["accounting"]
    assert sql["findings"] == mem["findings"]
    return sql


@pytest.mark.parametrize("case", CORPUS)
def test_corpus_as_parquet_gives_the_same_findings(case, tmp_path):
    got = _same(_write_parquet(_corpus_frames(case), tmp_path / case))
    assert (case == "base") == (not got["findings"])


@pytest.mark.parametrize("case", ["many_faults", "cascade", "session_order", "missing_column",
                                  "post_without_pre", "duplicate_reading"])
def test_corpus_as_duckdb_file_gives_the_same_findings(case, tmp_path):
    _same(_write_duckdb(_corpus_frames(case), tmp_path / f"{case}.duckdb"))


def _sessions(rows: list[str], head: str) -> pd.DataFrame:
    return pd.DataFrame([r.split(",") for r in rows], columns=head.split(","), dtype=str)


HEAD = ("session_id,patient_id,therapist_id,session_date,session_number,technique,target_region,"
        "duration_min,home_program,adverse_event")


def test_year_typo_far_dates_nan_markers_and_many_columns(tmp_path):
    base = _corpus_frames("base")
    year = dict(base, sessions=_sessions([
        "S1,P1,T1,2023-03-14,1,direct_pressure,piriformis,30,yes,none",
        "S2,P1,T1,2021-08-15,2,stretching,hip,45,no,soreness",
        "S3,P2,T2,2024-01-09,1,massage,lower_back,30,yes,none",
        "S4,P2,T2,2024-02-20,2,none,,,,none",
        "S5,P3,T1,2024-01-10,1,combined,multiple,60,no,none"], HEAD))
    year["patients"] = base["patients"].replace("2024-01-01", "2021-01-01")
    _same(_write_parquet(year, tmp_path / "year"))
    far = dict(base, sessions=_sessions([
        "S1,P1,T1,2024-01-08,direct_pressure,piriformis,30,yes,none",
        "S2,P1,T1,2026-01-15,stretching,hip,45,no,soreness",
        "S3,P2,T2,2024-01-09,massage,lower_back,30,yes,none",
        "S4,P2,T2,2024-02-20,none,,,,none",
        "S5,P3,T1,2024-01-10,combined,multiple,60,no,none"], HEAD.replace("session_number,", "")))
    got = _same(_write_parquet(far, tmp_path / "far"))
    assert any(f["rule"] == "distant_date" for f in got["findings"])
    nan = dict(base)
    nan["measurements"] = base["measurements"].copy()
    nan["measurements"].loc[1, "value"] = "NaN"
    nan["measurements"].loc[2, "session_id"] = " n/a "
    wide = dict(base, patients=base["patients"].assign(**{f"x{k}": str(k) for k in range(30)}))
    _same(_write_parquet(nan, tmp_path / "nan"))
    _same(_write_parquet(wide, tmp_path / "wide"))


def faulty_synthetic(seed: int, typed: bool = False) -> dict[str, pd.DataFrame]:
    """The shipped synthetic study with faults of every kind planted at seeded random rows."""
    rng = np.random.default_rng(seed)
    root = Path(mfr.datasets.synthetic_path())
    f = {t: pd.read_csv(root / f"{t}.csv", dtype=str, keep_default_na=False) for t in TABLES}
    p, s, m = f["patients"], f["sessions"], f["measurements"]

    def rows(frame: pd.DataFrame, k: int) -> np.ndarray:
        return rng.choice(len(frame), size=k, replace=False)
    r = rows(p, 6)
    p.loc[r[0], "age_years"] = "abc"
    p.loc[r[1], "sex"] = "Alien"
    p.loc[r[2], "condition"] = "NA"
    p.loc[r[3], "enrolled_on"] = "2026-13-45"
    p.loc[r[4], "age_years"] = "12"
    p.loc[r[5], "affected_side"] = " Left "
    p = pd.concat([p, p.iloc[[int(rng.integers(len(p)))]]], ignore_index=True)  # duplicate key
    r = rows(s, 9)
    s.loc[r[0], "patient_id"] = "PX"
    s.loc[r[1], "session_date"] = "31/02/2026"
    s.loc[r[2], "duration_min"] = "500"
    s.loc[r[3], "home_program"] = "maybe"
    s.loc[r[4], "technique"] = "reiki"
    s.loc[r[5], "therapist_id"] = ""
    s.loc[r[6], "session_number"] = "1.5"
    s.loc[r[7], "session_date"] = "1500-01-01"
    pid = s.loc[r[8], "patient_id"]
    mine = s.index[s["patient_id"] == pid]
    if len(mine) > 1:  # two visits' numbers swapped
        a, b = mine[0], mine[1]
        s.loc[a, "session_number"], s.loc[b, "session_number"] = \
            s.loc[b, "session_number"], s.loc[a, "session_number"]
    r = rows(m, 10)
    m.loc[r[0], "value"] = "99"
    m.loc[r[1], "value"] = "n/a"
    m.loc[r[2], "measure"] = "vas"
    m.loc[r[3], "session_id"] = "SX"
    m.loc[r[4], "phase"] = "during"
    m.loc[r[5], "value"] = "4.5"
    m.loc[r[6], "side"] = "middle"
    m.loc[r[7], "value"] = "seven"
    pre = m.index[(m["phase"] == "pre") & m["session_id"].isin(
        m.loc[m["phase"] == "post", "session_id"])]
    m = m.drop(index=rng.choice(pre, size=3, replace=False))  # posts without a pre
    m = pd.concat([m, m.iloc[rng.choice(len(m), size=2, replace=False)]], ignore_index=True)
    out = {"patients": p, "sessions": s, "measurements": m}
    if typed:  # numbers as numbers where every cell is one, dates as timestamps
        for frame in out.values():
            for col in frame.columns:
                num = pd.to_numeric(frame[col], errors="coerce")
                if num.notna().all() and col not in ("patient_id", "session_id"):
                    frame[col] = num
        out["patients"]["enrolled_on"] = pd.to_datetime(p["enrolled_on"], errors="coerce")
    return out


@pytest.mark.parametrize("seed", [1, 2])
@pytest.mark.parametrize("typed", [False, True])
def test_faulty_synthetic_study_gives_the_same_findings(seed, typed, tmp_path):
    frames = faulty_synthetic(seed, typed)
    got = _same(_write_parquet(frames, tmp_path / "pq"))
    rules = {f["rule"] for f in got["findings"]}
    assert {"not_a_number", "unknown_category", "missing_value", "invalid_date", "out_of_range",
            "duplicate_key", "orphan", "cascade", "wrong_type", "unknown_measure",
            "post_without_pre", "duplicate_reading"} <= rules
    _same(_write_duckdb(frames, tmp_path / "db.duckdb"))


def test_shipped_synthetic_data_has_no_findings_either_way(tmp_path):
    root = Path(mfr.datasets.synthetic_path())
    frames = {t: pd.read_csv(root / f"{t}.csv") for t in TABLES}
    got = _same(_write_parquet(frames, tmp_path / "pq"))
    assert got["findings"] == []
    assert got["accounting"]["measurements"]["used"] == len(frames["measurements"])


def test_findings_of_one_rule_are_capped_and_the_rest_counted(tmp_path):
    frames = _corpus_frames("base")
    m = pd.concat([frames["measurements"]] * 3, ignore_index=True)  # every reading repeated
    folder = _write_parquet(dict(frames, measurements=m), tmp_path / "rep")
    mem = validate(folder, engine="memory")
    got = sql_validate.validate_sql(folder, cap=3)
    assert got.accounting == mem.accounting
    dup = [f for f in got.findings if f.rule == "duplicate_reading"]
    n = sum(f.rule == "duplicate_reading" for f in mem.findings)
    assert [f.message for f in dup[:3]] == [f.message for f in mem.findings
                                            if f.rule == "duplicate_reading"][:3]
    assert len(dup) == 4 and f"and {n - 3} more row(s)" in dup[3].message


def test_row_rules_past_the_cap_are_listed_then_counted(tmp_path):
    """All row rules of a table run in one scan: with several rules past the cap, each lists its
    first rows with the in-memory sentences and counts the rest; the accounting is exact."""
    frames = _corpus_frames("base")
    m = pd.concat([frames["measurements"]] * 5, ignore_index=True)  # repeats: duplicates too
    m.loc[m.index[:15:2], "value"] = "99"  # out of range
    m.loc[m.index[1:15:2], "value"] = "abc"  # not a number
    m.loc[m.index[20:30], "phase"] = "middle"  # unknown category
    s = frames["sessions"].copy()
    s.loc[s.index[:5], "duration_min"] = "-4"  # optional: set missing
    folder = _write_parquet(dict(frames, measurements=m, sessions=s), tmp_path / "many")
    mem = validate(folder, engine="memory")
    got = sql_validate.validate_sql(folder, cap=3)
    assert got.accounting == mem.accounting
    for table, rule in (("measurements", "out_of_range"), ("measurements", "not_a_number"),
                        ("measurements", "unknown_category"), ("sessions", "out_of_range")):
        want = [f.message for f in mem.findings if f.rule == rule and f.table == table]
        have = [f.message for f in got.findings if f.rule == rule and f.table == table]
        assert len(want) > 3 and have[:3] == want[:3], rule
        assert len(have) == 4 and f"{len(want) - 3} more" in have[3], rule


def test_engine_choice_and_refusals(tmp_path):
    folder = _write_parquet(_corpus_frames("many_faults"), tmp_path / "pq")
    assert validate(folder).to_dict() == validate(folder, engine="memory").to_dict()
    with pytest.raises(SourceError, match="cannot be validated inside DuckDB: a profile"):
        validate(folder, engine="duckdb", column_map={"patients": {"x": "y"}})
    with pytest.raises(SourceError, match="not a folder of Parquet tables"):
        validate(BAD / "base", engine="duckdb")
    with pytest.raises(SourceError, match="engine 'spark'"):
        validate(folder, engine="spark")


def test_cli_validate_engine_duckdb(tmp_path, capsys):
    from mfr_outcomes.cli import main

    folder = _write_parquet(_corpus_frames("many_faults"), tmp_path / "pq")
    assert main(["validate", str(folder), "--engine", "duckdb", "--format", "json"]) == 1
    import json

    got = json.loads(capsys.readouterr().out)
    assert got == json.loads(validate(folder, engine="memory").to_json())


def _large_source(folder: Path, patients: int) -> int:
    """A registry written by DuckDB (rows never in pandas): 4 sessions a patient, pre and post of
    pain and leg pain each, with a few planted faults; returns the number of readings."""
    folder.mkdir()
    con = duckdb.connect()
    q = lambda name: str(folder / f"{name}.parquet")  # noqa: E731
    con.execute(f"""COPY (SELECT 'P' || i AS patient_id, 'site-' || (i % 7) AS site_id,
        CAST(20 + i % 60 AS VARCHAR) AS age_years, CASE WHEN i % 2 = 0 THEN 'female' ELSE 'male'
        END AS sex, CASE WHEN i = 17 THEN 'flu' ELSE 'sciatica' END AS condition,
        '2024-01-01' AS enrolled_on FROM range({patients}) t(i)) TO '{q("patients")}'""")
    con.execute(f"""COPY (SELECT 'S' || i || '-' || k AS session_id, 'P' || i AS patient_id,
        'T' || (i % 9) AS therapist_id, CAST(DATE '2024-01-02' + CAST(7 * k AS INTEGER) AS VARCHAR) AS
        session_date, CAST(k + 1 AS VARCHAR) AS session_number, 'massage' AS technique,
        CASE WHEN i = 5 AND k = 1 THEN '900' ELSE '30' END AS duration_min
        FROM range({patients}) a(i), range(4) b(k)) TO '{q("sessions")}'""")
    con.execute(f"""COPY (SELECT 'S' || i || '-' || k AS session_id, ph AS phase, ms AS measure,
        'none' AS side, CASE WHEN i = 3 AND k = 0 AND ph = 'pre' AND ms = 'pain_nrs' THEN '11' ELSE
        CAST((i + k) % 10 AS VARCHAR) END AS value
        FROM range({patients}) a(i), range(4) b(k), (VALUES ('pre'), ('post')) c(ph),
        (VALUES ('pain_nrs'), ('leg_pain_nrs')) d(ms)) TO '{q("measurements")}'""")
    con.close()
    return patients * 16


def test_large_parquet_source_is_validated_with_little_python_memory(tmp_path):
    folder = tmp_path / "registry"
    n = _large_source(folder, 60_000)  # 960,000 readings
    tracemalloc.start()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            report = validate(folder, engine="duckdb")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    acc = report.accounting["measurements"]
    assert acc.read == n and acc.used == n - 1 - 16  # one bad value, one flu patient's 16
    assert report.accounting["patients"].reasons == {"unknown_category": 1}
    assert report.accounting["sessions"].reasons == {"cascade": 4}
    rules = [(f.table, f.rule) for f in report.findings]
    assert sorted(rules) == sorted([("patients", "unknown_category"),
                                    ("sessions", "out_of_range"), ("sessions", "cascade"),
                                    ("measurements", "out_of_range"),
                                    ("measurements", "post_without_pre")]
                                   + [("measurements", "cascade")] * 4)
    # the rows of ~1 M readings as pandas text would take hundreds of MB
    assert peak < 30 * 2**20, f"peak Python memory {peak / 2**20:.1f} MB"
