"""Time of the formula step (build_spec) against the fast engine's fit, on the benchmark frame.

    PYTHONHASHSEED=0 OPENBLAS_NUM_THREADS=1 uv run --locked python benchmarks/bench_design.py \
        --patients 100000

Prints the best of --reps runs of build_spec, of FastEngine.fit on the built spec, and of
formulaic's model matrix of the fixed part alone (what build_spec used before the typed Design).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def _best(fn, reps: int) -> float:
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--patients", type=int, default=100_000)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--seed", type=int, default=2026)
    args = ap.parse_args()
    from bench_fit import FORMULA, make_data
    from formulaic import model_matrix

    from mfr_outcomes.models.fast import FastEngine
    from mfr_outcomes.models.formula import build_spec, parse_formula

    d = make_data(args.patients, args.seed)
    spec = build_spec(d, FORMULA)
    build_s = _best(lambda: build_spec(d, FORMULA), args.reps)
    fit_s = _best(lambda: FastEngine().fit(spec, reml=True), args.reps)
    fixed = parse_formula(FORMULA).fixed
    formulaic_s = _best(lambda: model_matrix(fixed, d), args.reps)
    print(f"{args.patients} patients, {spec.n} rows, {FORMULA}")
    print(f"build_spec (typed Design, lean path): {build_s:.3f} s")
    print(f"fast engine fit (REML):               {fit_s:.3f} s")
    print(f"formulaic model matrix, fixed part:   {formulaic_s:.3f} s")


if __name__ == "__main__":
    main()
