"""The README's short tour runs as written (the lines that need site summary files aside)."""
from __future__ import annotations

import re
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _tour() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## A short tour", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_short_tour_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    code = "\n".join(line for line in _tour().splitlines() if ".npz" not in line)
    assert "fit_mixed" in code and "family=\"binomial\"" in code  # the tour is what we run
    monkeypatch.chdir(ROOT)
    names: dict = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        exec(compile(code, "README.md", "exec"), names)  # the project's own README, not user text
    assert names["glmm"].family.name == "binomial"
    assert len(names["fit"].fixed_effects) == 9
