"""Installed, not only checked out: the built wheel, installed into a fresh virtual environment
outside the checkout, carries the synthetic study and the notebooks, and runs
``mfr-outcomes demo``, ``mfr-outcomes validate`` and the docstring examples on them."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
UV = shutil.which("uv")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(UV is None, reason="uv is needed to build and install the wheel"),
]


def _run(cmd: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "MPLBACKEND": "Agg", "PYTHONHASHSEED": "0", **env}
    full_env.pop("VIRTUAL_ENV", None)
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=600,
                          env=full_env)


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, Path, Path]:
    """(wheel, the venv's bin folder, a working folder outside the checkout)."""
    root = tmp_path_factory.mktemp("wheel")
    proc = _run([UV, "build", "--wheel", "--out-dir", str(root / "dist")], cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    [wheel] = (root / "dist").glob("mfr_outcomes-*.whl")
    proc = _run([sys.executable, "-m", "venv", "--without-pip", str(root / "venv")], cwd=root)
    assert proc.returncode == 0, proc.stderr
    python = root / "venv" / "bin" / "python"
    proc = _run([UV, "pip", "install", "--python", str(python), str(wheel)], cwd=root)
    assert proc.returncode == 0, proc.stderr
    work = root / "elsewhere"
    work.mkdir()
    return wheel, python.parent, work


def test_packaged_files_are_byte_identical_to_the_canonical_copies(installed):
    wheel, _, _ = installed
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        for folder, packaged in (("data/synthetic", "mfr_outcomes/data/synthetic"),
                                 ("notebooks", "mfr_outcomes/notebooks")):
            canonical = sorted(p for p in (REPO / folder).iterdir() if p.is_file())
            assert canonical
            for path in canonical:
                name = f"{packaged}/{path.name}"
                assert name in names, name
                assert zf.read(name) == path.read_bytes(), name


def test_installed_package_finds_its_data_outside_the_checkout(installed):
    _, bin_dir, work = installed
    proc = _run([str(bin_dir / "python"), "-c",
                 "import mfr_outcomes, mfr_outcomes.datasets as d, mfr_outcomes.notebooks_runner"
                 " as r; print(mfr_outcomes.__file__); print(d.synthetic_path()); "
                 "print(r.NOTEBOOKS_DIR)"], cwd=work)
    assert proc.returncode == 0, proc.stderr
    module, data, notebooks = (Path(x) for x in proc.stdout.split())
    site = module.parent
    assert REPO not in module.parents  # the installed copy, not the checkout
    assert data == site / "data" / "synthetic"
    assert notebooks == site / "notebooks"


def test_installed_validate_and_demo_run(installed):
    _, bin_dir, work = installed
    data = _run([str(bin_dir / "python"), "-c",
                 "import mfr_outcomes.datasets as d; print(d.synthetic_path())"], cwd=work)
    proc = _run([str(bin_dir / "mfr-outcomes"), "validate", data.stdout.strip()], cwd=work)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "No findings: every row is used." in proc.stdout
    proc = _run([str(bin_dir / "mfr-outcomes"), "demo", "--out", str(work / "demo")], cwd=work)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    assert (work / "demo" / "report" / "report.html").is_file()
    assert (work / "demo" / "fit_prepost_pain_nrs.txt").is_file()


def test_installed_docstring_examples_run(installed):
    _, bin_dir, work = installed
    script = (
        "import doctest, importlib, sys, warnings\n"
        "warnings.simplefilter('ignore')\n"
        "failed = 0\n"
        "for name in ('mfr_outcomes.io', 'mfr_outcomes.study', 'mfr_outcomes.datasets',\n"
        "             'mfr_outcomes.profile', 'mfr_outcomes.vocab', 'mfr_outcomes.schema_doc'):\n"
        "    r = doctest.testmod(importlib.import_module(name),\n"
        "                        optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)\n"
        "    print(name, r.attempted, r.failed)\n"
        "    failed += r.failed\n"
        "sys.exit(1 if failed else 0)\n")
    proc = _run([str(bin_dir / "python"), "-c", script], cwd=work)
    assert proc.returncode == 0, proc.stdout + proc.stderr
