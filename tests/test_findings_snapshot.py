"""A frozen snapshot of what validation finds in the bad-file corpus.

Every bad file the suite uses (``tests/data/bad/``, each case laid over the clean ``base``) and a
few messier exports (Latin-1 with semicolons and decimal commas, blank lines, an unterminated
quote, ``NaN`` cells, many unexpected columns, a mistyped year, frames instead of files) go
through :func:`mfr_outcomes.validate`; the full findings (table, file, line, column, value, rule,
action, message) and the row accounting must equal ``tests/data/snapshot_findings.json``.

The snapshot was made from the row-by-row data layer before it was vectorised, so the rewrite is
held to the same reports. Regenerate it deliberately (and say in the commit which entries changed
and why) with ``MFR_UPDATE_SNAPSHOT=1 pytest tests/test_findings_snapshot.py``.
"""
from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest

import mfr_outcomes as mfr

pytestmark = pytest.mark.filterwarnings("ignore::mfr_outcomes.warnings_.DataWarning")

HERE = Path(__file__).resolve().parent
BAD = HERE / "data" / "bad"
SNAPSHOT = HERE / "data" / "snapshot_findings.json"

PATIENTS_HEAD = "patient_id,site_id,age_years,sex,condition,affected_side,symptom_weeks,enrolled_on"
SESSIONS_HEAD = ("session_id,patient_id,therapist_id,session_date,session_number,technique,"
                 "target_region,duration_min,home_program,adverse_event")


def _base(folder: Path) -> Path:
    folder.mkdir(parents=True)
    for f in (BAD / "base").iterdir():
        shutil.copy(f, folder / f.name)
    return folder


def _write(folder: Path, name: str, text: str, encoding: str = "utf-8") -> None:
    (folder / name).write_bytes(text.encode(encoding))


def _semicolon_latin1(folder: Path) -> dict:
    _base(folder)
    p = (BAD / "base" / "patients.csv").read_text().replace(",", ";").replace("north", "Zürich")
    p = p.replace("12.5", "12,5").replace("2024-01-02", "02.01.2024")
    _write(folder, "patients.csv", p, "latin-1")
    m = (BAD / "base" / "measurements.csv").read_text().replace(",", ";").replace(".", ",")
    m = m.replace("S2;post;pain_nrs;none;4", "S2;post;pain_nrs;none;10,5")
    _write(folder, "measurements.csv", "\ufeff" + m)
    return {}


def _blank_lines(folder: Path) -> dict:
    _base(folder)
    lines = (BAD / "base" / "patients.csv").read_text().splitlines()
    _write(folder, "patients.csv", "\n".join([lines[0], lines[1], "", "   ", lines[2], "\t",
                                              lines[3], "", ""]) + "\n")
    return {}


def _unterminated_quote(folder: Path) -> dict:
    _base(folder)
    rows = [PATIENTS_HEAD, "P1,north,40,female,sciatica,left,6,2024-01-01",
            'P2,"north,55,male,hip_pain,right,12.5,2024-01-02',
            "P3,south,63,female,both,bilateral,30,2024-01-03"]
    rows += [f"P{i},south,50,male,sciatica,left,3,2024-01-04" for i in range(4, 14)]
    _write(folder, "patients.csv", "\n".join(rows) + "\n")
    return {}


def _nan_cells(folder: Path) -> dict:
    _base(folder)
    m = (BAD / "base" / "measurements.csv").read_text()
    m = m.replace("S2,post,pain_nrs,none,4", "S2,post,pain_nrs,none,NaN")
    m = m.replace("S3,pre,pain_nrs,none,8", "S3,pre,pain_nrs,none,nan")
    _write(folder, "measurements.csv", m)
    s = (BAD / "base" / "sessions.csv").read_text().replace("S3,P2,T2", "S3,P2,NaN")
    _write(folder, "sessions.csv", s)
    return {}


def _many_unexpected(folder: Path) -> dict:
    _base(folder)
    lines = (BAD / "base" / "patients.csv").read_text().splitlines()
    extra = [f"x{k}" for k in range(40)]
    out = [lines[0] + "," + ",".join(extra)]
    out += [line + "," + ",".join(str(k) for k in range(40)) for line in lines[1:]]
    _write(folder, "patients.csv", "\n".join(out) + "\n")
    return {}


def _year_typo(folder: Path) -> dict:
    _base(folder)
    rows = [SESSIONS_HEAD,
            "S1,P1,T1,2023-03-14,1,direct_pressure,piriformis,30,yes,none",
            "S2,P1,T1,2021-08-15,2,stretching,hip,45,no,soreness",
            "S3,P2,T2,2024-01-09,1,massage,lower_back,30,yes,none",
            "S4,P2,T2,2024-02-20,2,none,,,,none",
            "S5,P3,T1,2024-01-10,1,combined,multiple,60,no,none"]
    _write(folder, "sessions.csv", "\n".join(rows) + "\n")
    p = (BAD / "base" / "patients.csv").read_text().replace("2024-01-01", "2021-01-01")
    _write(folder, "patients.csv", p)
    return {}


def _far_date_derived(folder: Path) -> dict:
    _base(folder)
    head = SESSIONS_HEAD.replace("session_number,", "")
    rows = [head,
            "S1,P1,T1,2024-01-08,direct_pressure,piriformis,30,yes,none",
            "S2,P1,T1,2026-01-15,stretching,hip,45,no,soreness",
            "S3,P2,T2,2024-01-09,massage,lower_back,30,yes,none",
            "S4,P2,T2,2024-02-20,none,,,,none",
            "S5,P3,T1,2024-01-10,combined,multiple,60,no,none"]
    _write(folder, "sessions.csv", "\n".join(rows) + "\n")
    return {}


def _frames_many_faults(folder: Path) -> pd.DataFrame | dict:
    src = _base(folder)
    for f in (BAD / "many_faults").iterdir():
        shutil.copy(f, src / f.name)
    return {t: pd.read_csv(src / f"{t}.csv", dtype=str, keep_default_na=False)
            for t in ("patients", "sessions", "measurements")}


def _typed_frames(folder: Path) -> dict:
    frames = {t: pd.read_csv(BAD / "base" / f"{t}.csv") for t in
              ("patients", "sessions", "measurements")}
    frames["measurements"].loc[3, "value"] = float("nan")
    frames["sessions"].loc[1, "duration_min"] = 500.0
    frames["patients"]["enrolled_on"] = pd.to_datetime(frames["patients"]["enrolled_on"])
    return frames


EXTRA: dict[str, Callable[[Path], dict]] = {
    "x_semicolon_latin1": _semicolon_latin1,
    "x_blank_lines": _blank_lines,
    "x_unterminated_quote": _unterminated_quote,
    "x_nan_cells": _nan_cells,
    "x_many_unexpected": _many_unexpected,
    "x_year_typo": _year_typo,
    "x_far_date_derived": _far_date_derived,
    "x_frames_many_faults": _frames_many_faults,
    "x_typed_frames": _typed_frames,
}
CASES = sorted(p.name for p in BAD.iterdir() if p.is_dir() and p.name != "base") + sorted(EXTRA)


def _source(case: str, tmp_path: Path) -> object:
    folder = tmp_path / case
    if case in EXTRA:
        frames = EXTRA[case](folder)
        return frames if frames else folder
    _base(folder)
    for f in (BAD / case).iterdir():
        shutil.copy(f, folder / f.name)
    return folder


def _snapshot_of(case: str, tmp_path: Path) -> dict:
    source = _source(case, tmp_path)
    options = {"dayfirst": True} if case == "x_semicolon_latin1" else {}
    report = mfr.validate(source, **options)
    out = report.to_dict()
    out["source"] = case
    return out


def test_snapshot_covers_every_case():
    if os.environ.get("MFR_UPDATE_SNAPSHOT"):
        pytest.skip("regenerating")
    assert sorted(json.loads(SNAPSHOT.read_text(encoding="utf-8"))) == sorted(CASES)


@pytest.mark.parametrize("case", CASES)
def test_findings_equal_the_snapshot(case, tmp_path):
    got = _snapshot_of(case, tmp_path)
    if os.environ.get("MFR_UPDATE_SNAPSHOT"):
        data = json.loads(SNAPSHOT.read_text(encoding="utf-8")) if SNAPSHOT.exists() else {}
        data[case] = got
        SNAPSHOT.write_text(json.dumps(dict(sorted(data.items())), indent=1, ensure_ascii=False)
                            + "\n", encoding="utf-8")
        return
    want = json.loads(SNAPSHOT.read_text(encoding="utf-8"))[case]
    assert got["accounting"] == want["accounting"]
    assert got["findings"] == want["findings"]
