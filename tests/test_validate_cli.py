"""Tests of ``mfr-outcomes validate``: exit status, output formats, one-sentence errors."""
from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest

from mfr_outcomes.cli import main

BAD = Path(__file__).resolve().parent / "data" / "bad"


def run_cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        try:
            code = main(list(argv))
        except SystemExit as exc:  # argparse --help and usage errors
            code = exc.code
    return code, out.getvalue(), err.getvalue()


@pytest.fixture()
def faulty(tmp_path) -> Path:
    folder = tmp_path / "faulty"
    shutil.copytree(BAD / "base", folder)
    shutil.copy(BAD / "out_of_range" / "sessions.csv", folder / "sessions.csv")
    return folder


def test_clean_source_exits_0_with_accounting():
    code, out, err = run_cli("validate", str(BAD / "base"))
    assert code == 0, err
    assert "No findings" in out
    assert "measurements" in out and "12" in out
    assert err == ""


def test_caution_only_exits_0_and_prints_it(faulty):
    # a bad optional value is set missing and the row kept: a caution, nothing excluded
    code, out, _ = run_cli("validate", str(faulty))
    assert code == 0
    assert "duration_min = -5" in out
    assert "out_of_range" in out
    assert "0 row(s) excluded, 1 caution(s) (rows kept)." in out


def test_fail_on_caution_exits_1(faulty):
    code, out, _ = run_cli("validate", str(faulty), "--fail-on", "caution")
    assert code == 1
    assert "duration_min = -5" in out


def test_exclusion_exits_1(tmp_path):
    folder = tmp_path / "excl"
    shutil.copytree(BAD / "base", folder)
    shutil.copy(BAD / "value_out_of_range" / "measurements.csv", folder / "measurements.csv")
    code, out, _ = run_cli("validate", str(folder), "--format", "json")
    assert code == 1
    data = json.loads(out)
    assert data["accounting"]["measurements"]["excluded"] >= 1


def test_extra_column_is_a_caution_and_exits_0(tmp_path):
    folder = tmp_path / "extra"
    shutil.copytree(BAD / "base", folder)
    shutil.copy(BAD / "unexpected_column" / "patients.csv", folder / "patients.csv")
    code, out, _ = run_cli("validate", str(folder))
    assert code == 0
    assert "unexpected column" in out


def test_json_format(faulty):
    code, out, _ = run_cli("validate", str(faulty), "--format", "json")
    assert code == 0
    data = json.loads(out)
    assert data["ok"] is False
    assert data["accounting"]["sessions"] == {"read": 5, "used": 5, "excluded": 0,
                                                "blank": 0, "reasons": {}}
    [finding] = data["findings"]
    assert finding["message"] == ("sessions.csv line 4: duration_min = -5, must be 5–180 "
                                  "(set to missing; row kept)")
    assert finding["line"] == 4 and finding["action"] == "kept"


def test_csv_format(faulty):
    code, out, _ = run_cli("validate", str(faulty), "--format", "csv")
    assert code == 0
    lines = out.strip().splitlines()
    assert lines[0] == "table,file,line,column,value,rule,action,message"
    assert lines[1].startswith("sessions,sessions.csv,4,duration_min,-5,out_of_range,kept,")


def test_strict_adds_a_sentence_on_stderr(faulty):
    code, _, err = run_cli("validate", str(faulty), "--strict")
    assert code == 1
    assert err.strip().startswith("mfr-outcomes validate: 1 validation finding(s)")


def test_dayfirst_and_column_map(tmp_path):
    folder = tmp_path / "clinic"
    shutil.copytree(BAD / "base", folder)
    sessions = (folder / "sessions.csv").read_text().replace("2024-01-08", "08/01/2024")
    sessions = sessions.replace("therapist_id", "Therapist").replace(",massage,", ",MSG,")
    (folder / "sessions.csv").write_text(sessions)
    cmap = tmp_path / "map.json"
    cmap.write_text(json.dumps({"sessions": {"Therapist": "therapist_id"},
                                "technique": {"MSG": "massage"}}))
    code, out, err = run_cli("validate", str(folder), "--column-map", str(cmap))
    assert code == 1 and "08/01/2024" in out  # session_date is required: the row is excluded
    code, out, err = run_cli("validate", str(folder), "--column-map", str(cmap), "--dayfirst")
    assert code == 0, out + err


@pytest.mark.parametrize("source, sentence", [
    ("does/not/exist", "does not exist"),
    ("nosuchdialect://host/db", "not a usable SQLAlchemy URL"),
])
def test_unreadable_source_exits_2_with_one_sentence(source, sentence):
    code, out, err = run_cli("validate", source)
    assert code == 2
    assert out == ""
    assert sentence in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_not_a_source_and_bad_map_exit_2(tmp_path):
    junk = tmp_path / "notes.txt"
    junk.write_text("hello")
    code, _, err = run_cli("validate", str(junk))
    assert code == 2 and "not a recognised source" in err
    bad_map = tmp_path / "map.json"
    bad_map.write_text("[1, 2]")
    code, _, err = run_cli("validate", str(BAD / "base"), "--column-map", str(bad_map))
    assert code == 2 and "must be a mapping" in err


def test_help():
    code, out, _ = run_cli("validate", "--help")
    assert code == 0
    for option in ("--column-map", "--format", "--dayfirst", "--strict", "--fail-on",
                   "--profile", "SOURCE"):
        assert option in out


def _command() -> list[str]:
    script = Path(sys.executable).with_name("mfr-outcomes")
    if script.exists():  # the installed console script
        return [str(script)]
    return [sys.executable, "-c", "import sys; from mfr_outcomes.cli import main; "
            "sys.exit(main())"]


def test_subprocess_run(faulty):
    proc = subprocess.run([*_command(), "validate", str(faulty), "--format", "json",
                           "--fail-on", "caution"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert json.loads(proc.stdout)["findings"][0]["rule"] == "out_of_range"
