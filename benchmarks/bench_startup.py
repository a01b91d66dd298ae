"""Cold start: fresh processes timed from outside, with and without a bytecode cache.

Each row runs a new interpreter (``subprocess``) --runs times and reports the wall time and the
CPU time of the child (user + system, from ``resource.getrusage``): on a shared machine the wall
time mostly measures the wait for a core, the CPU time is the comparable figure. "bytecode
cached" sets ``PYTHONPYCACHEPREFIX`` to a private folder and clears ``PYTHONDONTWRITEBYTECODE``,
after one untimed run fills the cache (what a normal install, or ``uv sync --compile-bytecode`` /
``UV_COMPILE_BYTECODE=1``, gives); "no bytecode" sets ``PYTHONDONTWRITEBYTECODE=1`` with an empty
cache folder, so every module is compiled from source at every start.

    python benchmarks/bench_startup.py --out benchmarks/results
"""
from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

FIT_CODE = ("import mfr_outcomes as m; s = m.load_study('data/synthetic'); "
            "m.fit_prepost(s, 'pain_nrs').fixed_effects")
FIRST_FIT = """
import numpy as np, pandas as pd
import mfr_outcomes as mfr
rng = np.random.default_rng(1)
g = np.repeat(np.arange(200), 12)
d = pd.DataFrame({"g": g, "post": np.tile([0, 1], 1200)})
d["y"] = 0.5 * d["post"] + rng.normal(size=200)[g] + rng.normal(size=g.size)
mfr.fit_mixed(d, "y ~ post + (post | g)").fixed_effects
"""


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--skip-uncached", action="store_true",
                   help="only the bytecode-cached rows (the uncached ones take ~10x longer)")
    return p.parse_args(argv)


def _cli() -> list[str]:
    exe = shutil.which("mfr-outcomes", path=os.path.dirname(sys.executable))
    return [exe] if exe else [sys.executable, "-c",
                              "import sys; from mfr_outcomes.cli import main; sys.exit(main())"]


def _run(cmd: list[str], env: dict) -> tuple[float, float]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def _span(xs: list[float], digits: int = 2) -> str:
    lo, hi = min(xs), max(xs)
    return f"{lo:.{digits}f}" if abs(hi - lo) < 10 ** -digits else \
        f"{lo:.{digits}f}–{hi:.{digits}f}"


def main(argv=None) -> int:
    args = parse_args(argv)
    rows = [("`import mfr_outcomes`", [sys.executable, "-c", "import mfr_outcomes"]),
            ("first `fit_mixed(...).fixed_effects` (200 patients, fast engine), imports included",
             [sys.executable, "-c", FIRST_FIT]),
            ("`load_study('data/synthetic')` + `fit_prepost(...).fixed_effects`",
             [sys.executable, "-c", FIT_CODE]),
            ("`mfr-outcomes fit data/synthetic`", _cli() + ["fit", "data/synthetic"])]
    base = dict(os.environ, OPENBLAS_NUM_THREADS=os.environ.get("OPENBLAS_NUM_THREADS", "1"))
    out = []
    with tempfile.TemporaryDirectory() as cache, tempfile.TemporaryDirectory() as empty:
        cached = dict(base, PYTHONPYCACHEPREFIX=cache)
        cached.pop("PYTHONDONTWRITEBYTECODE", None)
        nocache = dict(base, PYTHONPYCACHEPREFIX=empty, PYTHONDONTWRITEBYTECODE="1")
        modes = [("bytecode cached", cached)] + ([] if args.skip_uncached
                                                  else [("no bytecode", nocache)])
        for label, env in modes:
            for what, cmd in rows:
                if env is cached:
                    _run(cmd, env)  # fills the cache, untimed
                res = [_run(cmd, env) for _ in range(args.runs)]
                out.append((what, label, [w for w, _ in res], [c for _, c in res]))
                print(f"{what} [{label}]: wall {_span(out[-1][2])} s, cpu {_span(out[-1][3])} s",
                      flush=True)
    load = os.getloadavg()[0]
    md = [f"# Start-up: fresh processes, best and worst of {args.runs} (load average {load:.1f} "
          f"on {os.cpu_count()} cores)", "",
          "| what | bytecode | wall (s) | CPU user+sys (s) |", "|---|---|---:|---:|"]
    md += [f"| {w} | {lab} | {_span(ws)} | {_span(cs)} |" for w, lab, ws, cs in out]
    md += ["", "Wall time is mostly the wait for a core on a shared machine; CPU time is the "
               "comparable figure. `python benchmarks/bench_startup.py`.", ""]
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "bench_startup.md"), "w") as fh:
        fh.write("\n".join(md))
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
