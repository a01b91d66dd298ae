"""The model layer's shape: every module of mfr_outcomes/models imports alone, and the import
graph among them (built with ast, every import statement wherever it sits) is acyclic."""
from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

MODELS = Path(__file__).resolve().parents[1] / "mfr_outcomes" / "models"
PKG = "mfr_outcomes.models"
MODULES = sorted(p.stem for p in MODELS.glob("*.py") if p.stem != "__init__")


def imports_of(module: str) -> set[str]:
    """The sibling modules of mfr_outcomes.models that *module* imports (any scope)."""
    tree = ast.parse((MODELS / f"{module}.py").read_text())
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == PKG:  # from mfr_outcomes.models import x, y
                out.update(a.name for a in node.names if a.name in MODULES)
            elif node.module.startswith(PKG + "."):
                out.add(node.module.split(".")[2])
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith(PKG + "."):
                    out.add(a.name.split(".")[2])
    out.discard(module)
    return out & set(MODULES)


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph[n]):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state:
                found = visit(m)
                if found:
                    return found
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state:
            found = visit(n)
            if found:
                return found
    return None


def test_no_import_cycle_among_model_modules() -> None:
    graph = {m: imports_of(m) for m in MODULES}
    assert {"fit", "inference", "dfmethods", "base"} <= set(MODULES)
    assert "fit" not in graph["inference"] and "fit" not in graph["dfmethods"]
    assert find_cycle(graph) is None, f"import cycle: {' -> '.join(find_cycle(graph))}"


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


# A fresh interpreter imports the third-party libraries once, then forks one child per module:
# each child starts with no mfr_outcomes module loaded and imports only its module (so a cycle
# shows as an ImportError of a partly initialised module), without paying numpy/pandas/statsmodels
# again per module.
_FORK_EACH = """
import importlib, json, os, sys, traceback
import numpy, pandas, scipy.linalg, scipy.optimize, scipy.sparse, scipy.stats  # noqa: F401
import formulaic, statsmodels.regression.mixed_linear_model, threadpoolctl  # noqa: F401
assert not any(m.startswith("mfr_outcomes") for m in sys.modules)
codes = {}
for mod in sys.argv[1:]:
    pid = os.fork()
    if pid == 0:
        try:
            importlib.import_module("mfr_outcomes.models." + mod)
        except BaseException:
            traceback.print_exc()
            os._exit(1)
        os._exit(0)
    codes[mod] = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
print(json.dumps(codes))
"""


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs os.fork")
def test_each_model_module_imports_alone() -> None:
    run = subprocess.run([sys.executable, "-c", _FORK_EACH, *MODULES], capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    codes = json.loads(run.stdout.strip().splitlines()[-1])
    assert set(codes) == set(MODULES)
    failed = [m for m, c in codes.items() if c != 0]
    assert not failed, f"these modules fail to import alone: {failed}\n{run.stderr[-3000:]}"
