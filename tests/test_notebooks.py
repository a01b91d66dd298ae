"""The teaching notebooks: paired with their jupytext sources, and each one executed from a fresh
kernel with papermill on a small simulated study, its key results checked against the truth of
the simulation.

Each execution starts a kernel and fits mixed models (~10–25 s), so those tests are marked slow.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
NAMES = ["01_data_tour", "02_pain_pre_post", "03_range_of_motion", "04_course_of_care",
         "05_qi_report", "06_your_clinic_data"]
SMALL = {"n_patients": 40, "seed": 7}

jupytext = pytest.importorskip("jupytext")
pytest.importorskip("papermill")


# ---------------------------------------------------------------------------- static checks


@pytest.mark.parametrize("name", NAMES)
def test_notebook_is_paired_in_sync_and_clean(name):
    py, ipynb = NOTEBOOKS / f"{name}.py", NOTEBOOKS / f"{name}.ipynb"
    assert py.exists() and ipynb.exists()
    a, b = jupytext.read(py), jupytext.read(ipynb)
    assert [c.cell_type for c in a.cells] == [c.cell_type for c in b.cells]
    assert [c.source for c in a.cells] == [c.source for c in b.cells], \
        f"run `jupytext --sync notebooks/{name}.py`"
    assert "ipynb,py:percent" in a.metadata["jupytext"]["formats"]
    raw = json.loads(ipynb.read_text(encoding="utf-8"))
    assert raw["metadata"]["kernelspec"]["name"] == "python3"
    for cell in raw["cells"]:
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [] and cell["execution_count"] is None, \
                "commit notebooks without outputs"
    params = [c for c in b.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1
    for key in ("source", "seed", "measure", "n_patients"):
        assert f"{key} = " in params[0].source
    assert b.cells[0].cell_type == "markdown" and "Question" in b.cells[0].source
    assert "Limits" in "".join(c.source for c in b.cells if c.cell_type == "markdown")
    assert "print(json.dumps(results))" in b.cells[-1].source


def test_runner_finds_the_notebooks_in_order():
    from mfr_outcomes.notebooks_runner import notebook_paths

    assert [p.stem for p in notebook_paths(NOTEBOOKS)] == NAMES
    assert [p.stem for p in notebook_paths(NOTEBOOKS, ["03", "05"])] == [NAMES[2], NAMES[4]]


def test_kernel_resolves_to_this_interpreter():
    """papermill's "python3" kernel must start the venv's python, not a system one."""
    import sys

    from jupyter_client.kernelspec import KernelSpecManager

    from mfr_outcomes.notebooks_runner import _ensure_kernel

    _ensure_kernel("python3")
    spec = KernelSpecManager().get_kernel_spec("python3")
    exe = spec.argv[0]
    assert exe in ("python", "python3") or Path(exe).resolve() == Path(sys.executable).resolve()


# ---------------------------------------------------------------------------- executions


def _run(name: str, out: Path, html: bool = False, **extra):
    from mfr_outcomes.notebooks_runner import run_notebook

    return run_notebook(NOTEBOOKS / f"{name}.py", out, parameters={**SMALL, **extra}, html=html)


@pytest.fixture(scope="module")
def truth():
    from mfr_outcomes.synthetic import generate_frames

    frames, truth = generate_frames(SMALL["n_patients"], SMALL["seed"])
    return frames, truth


@pytest.mark.slow
def test_01_data_tour(tmp_path, truth):
    frames, _ = truth
    run = _run(NAMES[0], tmp_path, html=True)
    r = run.results
    assert r["n_patients"] == SMALL["n_patients"]
    assert r["n_sessions"] == len(frames["sessions"])
    assert r["n_measurements"] == len(frames["measurements"])
    assert r["n_findings"] == 0
    assert 0 < r["paired_patients"] <= r["n_patients"]
    assert r["measures"][0] == "pain_nrs"
    assert run.html is not None and run.html.stat().st_size > 10_000
    assert "Baseline characteristics" in run.html.read_text(encoding="utf-8")


@pytest.mark.slow
def test_02_pain_pre_post_recovers_the_simulated_effects(tmp_path, truth):
    import nbformat

    _, t = truth
    run = _run(NAMES[1], tmp_path)
    r = run.results
    nb = nbformat.read(str(run.ipynb), as_version=4)
    images = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs
              if "image/png" in o.get("data", {})]
    assert len(images) >= 3, "figures must be embedded even when the caller uses Agg"
    assert "(post | patient_id)" in r["formula"]
    assert set(r["change_by_technique"]) == set(t.immediate_effect)
    for tech, effect in t.immediate_effect.items():
        lo, hi = r["ci_by_technique"][tech]
        assert lo < effect < hi, (tech, effect, lo, hi)
        assert r["change_by_technique"][tech] < 0
    assert 0 < r["icc_adjusted"] < 1 and 0 < r["r2_marginal"] < 1
    assert 0 <= r["responder_rate"] <= 1


@pytest.mark.slow
def test_03_range_of_motion(tmp_path, truth):
    _, t = truth
    r = _run(NAMES[2], tmp_path).results
    assert r["measure"] == "slr_deg" and r["mdc"] == 5.7
    assert all(g > 0 for g in r["gain_by_technique"].values())
    assert r["affected_pre_difference"] < 0  # the affected leg rises less
    assert r["hip_ir_gain"] > 0
    assert abs(sum(r["gain_by_technique"].values()) / 4 - t.rom_immediate_gain_deg) < 2.5


@pytest.mark.slow
def test_04_course_of_care(tmp_path):
    r = _run(NAMES[3], tmp_path).results
    lo, hi = r["slope_ci"]
    assert lo < r["slope_per_week"] < hi < 0  # pain falls over the weeks of care
    assert r["odi_followup_change"] < 0
    assert 0 < r["n_completers"] <= r["n_patients"] == SMALL["n_patients"]
    assert r["slope_completers"] < 0
    # the simulated course levels off (exponential in visits): log(1 + weeks) fits better
    assert r["aic_log"] < r["aic_linear"]


@pytest.mark.slow
def test_05_qi_report(tmp_path):
    from bs4 import BeautifulSoup

    r = _run(NAMES[4], tmp_path / "nb", out_dir=str(tmp_path / "report")).results
    assert "shift" in r["shift_demo_signals"]
    assert r["n_months"] >= 3
    report = Path(r["report"])
    assert report.exists() and report.parent == tmp_path / "report"
    soup = BeautifulSoup(report.read_text(encoding="utf-8"), "html.parser")
    assert not soup.find_all("script")
    from mfr_outcomes.report import SECTION_TITLES

    assert len(soup.find_all("section")) == len(SECTION_TITLES)
    assert r["rebased_icons"] == ["common_cause", "hit_or_miss"]
    assert r["n_csv"] == len(list((tmp_path / "report" / "tables").glob("*.csv")))


@pytest.mark.slow
def test_06_your_clinic_data(tmp_path):
    export = tmp_path / "export"
    r = _run(NAMES[5], tmp_path / "nb", export_dir=str(export)).results
    assert r["rules"] == ["orphan", "out_of_range"]
    assert r["excluded"]["sessions"] == 1 and r["excluded"]["measurements"] == 1
    assert r["n_patients"] == SMALL["n_patients"]
    assert r["max_abs_difference"] < 0.1  # one reading fewer barely moves the estimates
    # the clinic profile holds the same map: the same tables and findings, 23 columns and 11
    # labels renamed
    assert r["profile_matches_map"] is True and r["profile_entries"] == 34
    assert (export / "clinic.toml").exists()
    first = (export / "sessions.csv").read_text(encoding="utf-8").splitlines()[0]
    assert first.startswith("Besuch;PatNr;Therapeut;Datum")


def test_output_folders_default_inside_the_run_folder(tmp_path):
    from mfr_outcomes.notebooks_runner import _with_output_folders

    nb = jupytext.read(NOTEBOOKS / "05_qi_report.py")
    params = _with_output_folders(nb, "05_qi_report", tmp_path, {"seed": 1})
    assert params == {"seed": 1, "out_dir": str((tmp_path / "05_qi_report_out").resolve())}
    given = _with_output_folders(nb, "05_qi_report", tmp_path, {"out_dir": "x"})
    assert given == {"out_dir": "x"}
    nb6 = jupytext.read(NOTEBOOKS / "06_your_clinic_data.py")
    assert "export_dir" in _with_output_folders(nb6, "06", tmp_path, None)
