"""Where the shipped synthetic study and the teaching notebooks are, installed or checked out.

The wheel carries them as package data (``mfr_outcomes/data/synthetic`` and
``mfr_outcomes/notebooks``, copied at build time from the repository's canonical ``data/synthetic``
and ``notebooks``); a source checkout has them beside the package. These functions return
whichever exists, so examples, ``mfr-outcomes demo`` and the notebook runner work in both.
"""
from __future__ import annotations

from pathlib import Path

__all__ = ["synthetic_path", "notebooks_path"]

_PACKAGE = Path(__file__).resolve().parent


def _first(kind: str, parts: tuple[str, ...], marker: str) -> Path:
    candidates = (_PACKAGE.joinpath(*parts), _PACKAGE.parent.joinpath(*parts))
    for folder in candidates:
        if (folder / marker).is_file():
            return folder
    raise FileNotFoundError(f"the {kind} is neither packaged ({candidates[0]}) nor in a source "
                            f"checkout ({candidates[1]}); reinstall mfr-outcomes")


def synthetic_path() -> Path:
    """Folder of the shipped synthetic study (patients.csv, sessions.csv, measurements.csv).

    Examples
    --------
    >>> import mfr_outcomes as mfr
    >>> sorted(p.name for p in mfr.datasets.synthetic_path().glob("*.csv"))
    ['measurements.csv', 'patients.csv', 'sessions.csv']
    """
    return _first("synthetic study", ("data", "synthetic"), "patients.csv")


def notebooks_path() -> Path:
    """Folder of the teaching notebooks (jupytext ``NN_*.py`` files and their ``.ipynb``)."""
    return _first("notebooks folder", ("notebooks",), "01_data_tour.py")
