"""Shared fixtures: the shipped synthetic study, a small simulated study with its truth, and
figures closed after every test."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("MPLBACKEND", "Agg")

# Property tests draw the same examples on every run (a seed, as every random step here has):
# a counterexample is found by a developer changing the test, never by chance in CI.
from hypothesis import settings  # noqa: E402

settings.register_profile("mfr_outcomes", derandomize=True, database=None)
settings.load_profile("mfr_outcomes")

#: The repository root (tests/..), so fixtures work from any working directory.
REPO_ROOT = Path(__file__).resolve().parent.parent
SYNTHETIC_DIR = REPO_ROOT / "data" / "synthetic"


@pytest.fixture(scope="session")
def repo_root() -> Path:
    """Absolute path of the repository root."""
    return REPO_ROOT


@pytest.fixture(scope="session")
def synthetic_dir() -> Path:
    """Absolute path of the shipped ``data/synthetic`` folder."""
    return SYNTHETIC_DIR


@pytest.fixture(scope="session")
def synthetic_study():
    """The shipped ``data/synthetic`` tables, loaded and validated (120 patients, seed 2026)."""
    import mfr_outcomes as mfr

    if not (SYNTHETIC_DIR / "patients.csv").exists():
        pytest.fail(f"{SYNTHETIC_DIR} has no patients.csv: run `make synth`")
    return mfr.load_study(SYNTHETIC_DIR)


@pytest.fixture(scope="session")
def _small():
    from mfr_outcomes.synthetic import generate

    return generate(n_patients=40, seed=7)


@pytest.fixture(scope="session")
def small_study(_small):
    """A validated simulated study of 40 patients (seed 7); treat it as read-only."""
    return _small[0]


@pytest.fixture(scope="session")
def small_truth(_small):
    """The :class:`~mfr_outcomes.synthetic.Truth` behind ``small_study``."""
    return _small[1]


@pytest.fixture(scope="session")
def marginal_prepost():
    """The frozen input of the emmeans/performance fixtures (tests/reference/data); read-only."""
    import pandas as pd

    from mfr_outcomes.vocab import TREATMENT_TECHNIQUES

    d = pd.read_csv(REPO_ROOT / "tests" / "reference" / "data" / "marginal_prepost.csv")
    d["technique"] = pd.Categorical(d["technique"], categories=list(TREATMENT_TECHNIQUES))
    return d


@pytest.fixture(autouse=True)
def _close_figures():
    """Close every matplotlib figure after each test (only when matplotlib was imported)."""
    yield
    if "matplotlib.pyplot" in sys.modules:
        sys.modules["matplotlib.pyplot"].close("all")
