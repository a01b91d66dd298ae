"""Start-up: ``import mfr_outcomes`` and a first ``fit_mixed`` import only what they use.

Each check runs in a fresh interpreter (a subprocess) and reads ``sys.modules`` after the import.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

HEAVY = ["pandera", "statsmodels", "matplotlib", "seaborn", "duckdb", "dask", "jinja2",
         "sqlalchemy", "papermill", "distributed", "joblib"]


def _loaded(code: str) -> dict[str, bool]:
    probe = (f"{code}\nimport sys, json\n"
             f"print(json.dumps({{m: m in sys.modules for m in {HEAVY + ['scipy.stats']!r}}}))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         check=True, timeout=300)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_import_package_loads_nothing_heavy() -> None:
    loaded = _loaded("import mfr_outcomes")
    assert not any(loaded.values()), {m for m, v in loaded.items() if v}
    # the package itself does not even import NumPy or pandas until a verb is used
    out = subprocess.run([sys.executable, "-c", "import mfr_outcomes, sys; "
                          "print('pandas' in sys.modules, 'numpy' in sys.modules)"],
                         capture_output=True, text=True, check=True, timeout=300)
    assert out.stdout.split() == ["False", "False"]


def test_first_fit_loads_only_the_model_layer() -> None:
    code = """
import numpy as np, pandas as pd
import mfr_outcomes as mfr
rng = np.random.default_rng(1)
g = np.repeat(np.arange(30), 4)
d = pd.DataFrame({"g": g, "x": rng.normal(size=g.size)})
d["y"] = d["x"] + rng.normal(size=30)[g] + rng.normal(size=g.size)
fe = mfr.fit_mixed(d, "y ~ x + (1 | g)").fixed_effects
assert np.isfinite(fe["df"]).all()
"""
    loaded = _loaded(code)
    assert not any(loaded.values()), {m for m, v in loaded.items() if v}


def test_fast_engine_fit_loads_no_other_engine() -> None:
    """The engines load on first use (spec.ENGINES): a fit the fast engine takes imports neither
    the other engines nor SciPy's optimisers; asking for another engine loads it."""
    code = """
import numpy as np, pandas as pd, sys, json
import mfr_outcomes as mfr
from mfr_outcomes.models import ENGINES
rng = np.random.default_rng(1)
g = np.repeat(np.arange(30), 4)
d = pd.DataFrame({"g": g, "x": rng.normal(size=g.size)})
d["y"] = d["x"] + rng.normal(size=30)[g] + rng.normal(size=g.size)
fit = mfr.fit_mixed(d, "y ~ x + (1 | g)")
assert fit.diagnostics["engine"] == "fast" and np.isfinite(fit.fixed_effects["df"]).all()
mods = ["scipy.optimize", "mfr_outcomes.models.pls", "mfr_outcomes.models.sparse",
        "mfr_outcomes.models.statsmodels_engine", "mfr_outcomes.models.glmm"]
before = {m: m in sys.modules for m in mods}
names = sorted(ENGINES)
print(json.dumps({"before": before, "after": "mfr_outcomes.models.pls" in sys.modules,
                  "names": names}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=300)
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert not any(res["before"].values()), res["before"]
    assert res["after"] and res["names"] == ["fast", "pls", "sparse", "sparse_ldl", "statsmodels"]


def test_package_verbs_resolve_lazily() -> None:
    out = subprocess.run([sys.executable, "-c", "import mfr_outcomes as m, sys; "
                          "f = m.fit_mixed; print(f.__module__, 'mfr_outcomes.qi' in sys.modules)"],
                         capture_output=True, text=True, check=True, timeout=300)
    assert out.stdout.split() == ["mfr_outcomes.models.fit", "False"]


def test_shipped_study_fit_by_the_sparse_engine_needs_no_scipy_optimize() -> None:
    """The shipped study's pre/post model is crossed (patients see several therapists), so the
    sparse engine fits it; its Newton path does without scipy.optimize (about half a second of a
    cold start), which is imported only for the L-BFGS-B or COBYQA fallbacks."""
    code = """
import sys, json
import mfr_outcomes as mfr
fit = mfr.fit_prepost(mfr.load_study("data/synthetic"), "pain_nrs")
print(json.dumps({"engine": fit.diagnostics["engine"],
                  "optimize": "scipy.optimize" in sys.modules}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=300, cwd=Path(__file__).resolve().parents[1])
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res == {"engine": "sparse", "optimize": False}
