"""Tests of ``mfr-outcomes demo``: the whole pipeline on a tiny generated study, in process."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from mfr_outcomes.cli import main


@pytest.fixture(scope="module")
def tiny_source(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tiny") / "study"
    assert main(["synth", "--patients", "24", "--seed", "5", "--out", str(out)]) == 0
    return out


def test_demo_runs_and_ends_with_its_output_paths(tiny_source, tmp_path, capsys):
    out = tmp_path / "demo"
    code = main(["demo", "--source", str(tiny_source), "--out", str(out), "--seed", "9"])
    text = capsys.readouterr().out
    assert code == 0, text
    # the summary of the study and the model come first
    assert "24 patients" in text
    assert "post - pre by technique" in text
    # it ends with the outputs, each an existing path
    tail = text.strip().splitlines()
    block = tail[tail.index("Outputs") + 2:]
    assert block and all(": " in line for line in block)
    paths = [Path(line.split(": ", 1)[1].split(" CSV file(s) in ")[-1].strip()) for line in block]
    for path in paths:
        assert path.exists(), path
    assert paths[0] == out / "report" / "report.html"
    assert block[-1].startswith("manifest:")
    listed = json.loads((out / "outputs.json").read_text(encoding="utf-8"))
    assert str(out / "report" / "report.html") in listed
    assert all(Path(p).exists() for p in listed)
    summary = (out / "summary.csv").read_text(encoding="utf-8").splitlines()
    assert summary[0] == "measure,patients,sessions,readings,pre_n,pre_mean,post_n,post_mean"
    assert any(line.startswith("pain_nrs,24,") for line in summary[1:])


def test_demo_bad_source_is_one_sentence(tmp_path, capsys):
    code = main(["demo", "--source", str(tmp_path / "nothing"), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2
    assert "Traceback" not in err and err.startswith("mfr-outcomes demo: ")
