"""Speed and scale of the "fast" engine against statsmodels MixedLM and lme4 (R).

Fits ``value ~ post * technique + session_number + (post | patient_id)`` (REML) to simulated clinic
data of several sizes (6 treatment visits a patient, a pain reading before and after each) with the
three engines in one run, and writes a markdown and a CSV table: rows, seconds (best of --reps, fit
only, no file I/O), ratios, the largest difference in the fixed effects, peak memory. Then times the
fast engine alone up to millions of rows.

    python benchmarks/bench_fit.py --out benchmarks/results
    python benchmarks/bench_fit.py --sizes 200 2000 --skip-statsmodels-above 2000 --no-scaling
"""
from __future__ import annotations

import argparse
import os
import sys

FORMULA = "value ~ post * technique + session_number + (post | patient_id)"
NESTED = FORMULA + " + (1 | therapist_id)"
SM_FIXED = "value ~ post * technique + session_number"
LEVELS = ["direct_pressure", "stretching", "massage", "combined"]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="benchmarks/results", help="folder for the tables")
    p.add_argument("--sizes", type=int, nargs="+", default=[200, 2000, 10_000, 100_000],
                   help="numbers of patients")
    p.add_argument("--skip-statsmodels-above", type=int, default=10_000, metavar="N",
                   help="do not run statsmodels above N patients (it takes minutes at 100k)")
    p.add_argument("--skip-lme4-above", type=int, default=10**9, metavar="N")
    p.add_argument("--reps", type=int, default=3, help="timed repetitions (best is reported)")
    p.add_argument("--scaling", type=int, nargs="*",
                   default=[12_500, 25_000, 50_000, 100_000, 200_000],
                   help="patients for the fast-engine-alone scaling table (empty: skip)")
    p.add_argument("--no-scaling", action="store_true")
    p.add_argument("--nested", type=int, nargs="*", default=[200, 2_000, 10_000, 100_000],
                   help="patients for the nested (patients within therapists) table vs lme4 "
                        "(empty: skip)")
    p.add_argument("--seed", type=int, default=2026)
    p.add_argument("--threads", type=int, default=1,
                   help="BLAS threads (default 1: R's reference BLAS is single-threaded too)")
    return p.parse_args(argv)


# --------------------------------------------------------------------------------------------
def make_data(n_patients: int, seed: int):
    """The benchmark frame: treatment visits only (follow-up visits have no post reading)."""
    import numpy as np
    import pandas as pd

    try:
        from mfr_outcomes.study import analysis_frame
        from mfr_outcomes.synthetic import generate_frames
    except ImportError:  # pragma: no cover - the package without its simulator
        return _numpy_data(n_patients, seed)
    frames, _ = generate_frames(n_patients=n_patients, seed=seed, measures=["pain_nrs"],
                                n_sessions=(6, 6))
    d = analysis_frame(frames["patients"], frames["sessions"], frames["measurements"],
                       "pain_nrs")
    d = d[d["technique"].astype(str) != "none"]
    d = d[["patient_id", "therapist_id", "technique", "session_number", "post", "value"]].copy()
    d["technique"] = pd.Categorical(d["technique"].astype(str), categories=LEVELS)
    d["patient_id"] = d["patient_id"].astype(str)
    d["post"] = d["post"].astype(np.int64)
    return d.reset_index(drop=True)


def _numpy_data(n_patients: int, seed: int):
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    n_s = 6
    pid = np.repeat(np.arange(n_patients), 2 * n_s)
    sess = np.tile(np.repeat(np.arange(1, n_s + 1), 2), n_patients)
    post = np.tile([0, 1], n_patients * n_s)
    tech = rng.integers(0, 4, n_patients * n_s).repeat(2)
    b0 = rng.normal(0, 1.5, n_patients)[pid]
    b1 = rng.normal(0, 0.5, n_patients)[pid]
    eff = np.array([-1.0, -0.6, -0.8, -0.75])[tech]
    value = 6 + b0 - 0.2 * sess + (eff + b1) * post + rng.normal(0, 0.85, pid.size)
    return pd.DataFrame({"patient_id": [f"p{i:06d}" for i in pid],
                         "technique": pd.Categorical.from_codes(tech, LEVELS),
                         "session_number": sess, "post": post, "value": value})


def _best(fn, reps: int):
    import time

    times, out = [], None
    for _ in range(reps):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), out


def _peak_mb(fn) -> float:
    import tracemalloc

    tracemalloc.start()
    fn()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak / 2**20


def _r_name(name: str) -> str:
    return name.replace("[T.", "").replace("]", "")


def run_lme4(d, reps: int, workdir: str, formula: str = FORMULA) -> dict | None:
    import json
    import shutil
    import subprocess

    if shutil.which("Rscript") is None:
        return {"note": "Rscript not found: lme4 not timed"}
    csv = os.path.join(workdir, "data.csv")
    out = os.path.join(workdir, "lme4.json")
    d.to_csv(csv, index=False)
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fit_lme4.R")
    proc = subprocess.run(["Rscript", script, csv, out, formula, "TRUE", ",".join(LEVELS),
                           str(reps)], capture_output=True, text=True)
    if proc.returncode != 0:
        return {"note": "lme4 failed: " + proc.stderr.strip().splitlines()[-1]
                if proc.stderr.strip() else "lme4 failed"}
    with open(out) as fh:
        return json.load(fh)


def run_statsmodels(d, reps: int):
    import warnings

    import statsmodels.formula.api as smf

    def fit():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = smf.mixedlm(SM_FIXED, d, groups="patient_id", re_formula="~post")
            return model.fit(reml=True)

    secs, res = _best(fit, reps)
    return secs, res


def bench(args) -> None:
    import tempfile

    import numpy as np
    import pandas as pd

    from mfr_outcomes.models.fast import FastEngine
    from mfr_outcomes.models.formula import build_spec

    engine = FastEngine()
    rows = []
    os.makedirs(args.out, exist_ok=True)
    for n_pat in args.sizes:
        d = make_data(n_pat, args.seed)
        spec = build_spec(d, FORMULA)
        fast_s, res = _best(lambda spec=spec: engine.fit(spec, reml=True), args.reps)
        total_s, _ = _best(lambda d=d: engine.fit(build_spec(d, FORMULA), reml=True), args.reps)
        mem = _peak_mb(lambda spec=spec: engine.fit(spec, reml=True))
        beta = pd.Series(res.beta, index=spec.fixed_names)
        row = {"patients": n_pat, "rows": spec.n, "fast_s": fast_s, "fast_with_formula_s": total_s,
               "fast_peak_mb": mem, "fast_evaluations": res.n_evaluations,
               "fast_classes": res.n_classes}
        print(f"{n_pat:>7} patients, {spec.n:>9} rows: fast {fast_s:.3f} s "
              f"(with build_spec {total_s:.3f} s)", file=sys.stderr, flush=True)
        # lme4
        if n_pat <= args.skip_lme4_above:
            with tempfile.TemporaryDirectory() as tmp:
                lm = run_lme4(d, args.reps, tmp)
        else:
            lm = {"note": f"skipped (> {args.skip_lme4_above:,} patients)"}
        if lm and "seconds" in lm:
            rb = pd.Series(lm["beta"], index=lm["fixed_names"])
            diff = max(abs(beta[k] - rb[_r_name(k)]) for k in beta.index)
            row.update(lme4_s=lm["seconds"], lme4_over_fast=lm["seconds"] / fast_s,
                       lme4_over_fast_with_formula=lm["seconds"] / total_s,
                       max_abs_diff_beta_lme4=diff,
                       diff_objective_lme4=res.objective - lm["objective"],
                       lme4_peak_mb=lm["peak_mb"], lme4_note="")
            print(f"    lme4 {lm['seconds']:.3f} s, max |Δβ| {diff:.2e}", file=sys.stderr)
        else:
            row.update(lme4_s=np.nan, lme4_over_fast=np.nan, lme4_over_fast_with_formula=np.nan,
                       max_abs_diff_beta_lme4=np.nan,
                       diff_objective_lme4=np.nan, lme4_peak_mb=np.nan,
                       lme4_note=(lm or {}).get("note", ""))
        # statsmodels
        if n_pat <= args.skip_statsmodels_above:
            sm_s, sm = run_statsmodels(d, args.reps)
            smb = sm.fe_params
            diff = max(abs(beta[k] - smb["Intercept" if k == "(Intercept)" else k])
                       for k in beta.index)
            sm_mem = _peak_mb(lambda d=d: run_statsmodels(d, 1)) if n_pat <= 2000 else np.nan
            row.update(statsmodels_s=sm_s, statsmodels_over_fast=sm_s / fast_s,
                       max_abs_diff_beta_statsmodels=diff, statsmodels_peak_mb=sm_mem,
                       statsmodels_converged=bool(sm.converged), statsmodels_note="")
            print(f"    statsmodels {sm_s:.3f} s, max |Δβ| {diff:.2e}", file=sys.stderr)
        else:
            row.update(statsmodels_s=np.nan, statsmodels_over_fast=np.nan,
                       max_abs_diff_beta_statsmodels=np.nan, statsmodels_peak_mb=np.nan,
                       statsmodels_converged=None,
                       statsmodels_note=f"skipped: > {args.skip_statsmodels_above:,} patients "
                       "(--skip-statsmodels-above)")
        rows.append(row)
        table = pd.DataFrame(rows)
        table.to_csv(os.path.join(args.out, "bench_fit.csv"), index=False)
    table = pd.DataFrame(rows)
    md = fit_markdown(table)
    with open(os.path.join(args.out, "bench_fit.md"), "w") as fh:
        fh.write(md)
    print(md)
    if args.nested:
        nested(args, engine)
    if args.scaling and not args.no_scaling:
        scaling(args, engine)


def nested(args, engine) -> None:
    """Patients within therapists, the second model: pooled path, patient-by-patient path, lme4."""
    import tempfile

    import numpy as np
    import pandas as pd

    from mfr_outcomes.models.formula import build_spec

    rows = []
    for n_pat in args.nested:
        d = make_data(n_pat, args.seed)
        spec = build_spec(d, NESTED)
        fast_s, res = _best(lambda spec=spec: engine.fit(spec, reml=True), args.reps)
        total_s, _ = _best(lambda d=d: engine.fit(build_spec(d, NESTED), reml=True), args.reps)
        grouped_s, _ = _best(lambda spec=spec: engine.fit(spec, reml=True,
                                                          options={"compress": False}), args.reps)
        mem = _peak_mb(lambda spec=spec: engine.fit(spec, reml=True))
        stats, lay = engine.prepare(spec)
        from mfr_outcomes.models.fast import _classes

        cl = _classes(stats, lay)
        with tempfile.TemporaryDirectory() as tmp:
            lm = run_lme4(d, args.reps, tmp, NESTED)
        row = {"patients": n_pat, "therapists": int(d["therapist_id"].nunique()), "rows": spec.n,
               "fast_s": fast_s, "fast_with_formula_s": total_s,
               "fast_per_patient_s": grouped_s, "fast_peak_mb": mem,
               "fast_evaluations": res.n_evaluations, "fast_classes": res.n_classes,
               "fast_pairs": None if cl is None or not hasattr(cl, "pair_class")
               else int(cl.pair_class.size)}
        if lm and "seconds" in lm:
            row.update(lme4_s=lm["seconds"], lme4_over_fast=lm["seconds"] / fast_s,
                       lme4_over_fast_with_formula=lm["seconds"] / total_s,
                       max_abs_diff_beta_lme4=float(np.max(np.abs(res.beta - np.asarray(
                           lm["beta"])))), diff_objective_lme4=res.objective - lm["objective"],
                       lme4_peak_mb=lm["peak_mb"])
        rows.append(row)
        print(f"nested {n_pat} patients: fast {fast_s:.3f} s (with build_spec {total_s:.3f} s, "
              f"patient by patient {grouped_s:.3f} s), lme4 {row.get('lme4_s', float('nan')):.2f}"
              " s", file=sys.stderr, flush=True)
    t = pd.DataFrame(rows)
    t.to_csv(os.path.join(args.out, "bench_nested.csv"), index=False)
    md = ("| patients | therapists | rows | fast (s) | fast incl. build_spec (s) "
          "| fast, patient by patient (s) | lme4 (s) | lme4 / fast | lme4 / fast incl. build_spec "
          "| max abs Δβ vs lme4 | Δ REML crit vs lme4 | peak MB fast / lme4 "
          "| classes / (therapist, class) pairs | deviance evaluations |\n"
          "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|---:|\n")
    md += "\n".join(
        f"| {r['patients']:,} | {r['therapists']} | {r['rows']:,} | {r['fast_s']:.3f} | "
        f"{r['fast_with_formula_s']:.3f} | {r['fast_per_patient_s']:.3f} | "
        f"{_fmt(r.get('lme4_s'), '.2f')} | {_fmt(r.get('lme4_over_fast'), '.1f', '×')} | "
        f"{_fmt(r.get('lme4_over_fast_with_formula'), '.1f', '×')} | "
        f"{_fmt(r.get('max_abs_diff_beta_lme4'), '.1e')} | "
        f"{_fmt(r.get('diff_objective_lme4'), '.1e')} | "
        f"{_fmt(r.get('fast_peak_mb'), '.0f')} / {_fmt(r.get('lme4_peak_mb'), '.0f')} | "
        f"{_fmt(r.get('fast_classes'), '.0f')} / {_fmt(r.get('fast_pairs'), '.0f')} | "
        f"{r['fast_evaluations']} |" for r in t.to_dict("records")) + "\n"
    with open(os.path.join(args.out, "bench_nested.md"), "w") as fh:
        fh.write(md)
    print(md)


def _fmt(x, spec: str, suffix: str = "") -> str:
    import math

    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "—"
    return format(x, spec) + suffix


def fit_markdown(t) -> str:
    head = ("| patients | rows | fast (s) | fast incl. build_spec (s) | lme4 (s) | statsmodels (s) "
            "| lme4 / fast | lme4 / fast incl. build_spec | statsmodels / fast "
            "| max abs Δβ vs lme4 | Δ REML crit vs lme4 "
            "| max abs Δβ vs statsmodels | peak MB fast / lme4 / statsmodels |\n"
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n")
    lines = []
    for r in t.to_dict("records"):
        sm = _fmt(r["statsmodels_s"], ".2f") if not r["statsmodels_note"] else "skipped"
        lines.append(
            f"| {r['patients']:,} | {r['rows']:,} | {r['fast_s']:.3f} | "
            f"{r['fast_with_formula_s']:.3f} | {_fmt(r['lme4_s'], '.2f')} | {sm} | "
            f"{_fmt(r['lme4_over_fast'], '.1f', '×')} | "
            f"{_fmt(r['lme4_over_fast_with_formula'], '.1f', '×')} | "
            f"{_fmt(r['statsmodels_over_fast'], '.0f', '×')} | "
            f"{_fmt(r['max_abs_diff_beta_lme4'], '.1e')} | {_fmt(r['diff_objective_lme4'], '.1e')} | "
            f"{_fmt(r['max_abs_diff_beta_statsmodels'], '.1e')} | "
            f"{_fmt(r['fast_peak_mb'], '.0f')} / {_fmt(r['lme4_peak_mb'], '.0f')} / "
            f"{_fmt(r['statsmodels_peak_mb'], '.0f')} |")
    notes = sorted({n for n in t["statsmodels_note"] if n} | {n for n in t["lme4_note"] if n})
    foot = "".join(f"\n- {n}" for n in notes)
    return head + "\n".join(lines) + "\n" + foot + "\n"


def scaling(args, engine) -> None:
    import pandas as pd

    from mfr_outcomes.models.formula import build_spec

    rows = []
    for n_pat in args.scaling:
        d = make_data(n_pat, args.seed)
        spec = build_spec(d, FORMULA)
        del d
        prep_s, (stats, lay) = _best(lambda spec=spec: engine.prepare(spec), args.reps)
        opt_s, res = _best(lambda st=stats, ly=lay: engine.fit_stats(st, ly, reml=True,
                                                                     light=True), args.reps)
        full_s, _ = _best(lambda spec=spec: engine.fit(spec, reml=True), args.reps)
        mem = _peak_mb(lambda spec=spec: engine.fit(spec, reml=True))
        rows.append({"patients": n_pat, "rows": spec.n, "statistics_s": prep_s,
                     "optimisation_s": opt_s, "fit_s": full_s,
                     "s_per_million_rows": full_s / spec.n * 1e6, "peak_mb": mem,
                     "classes": res.n_classes, "evaluations": res.n_evaluations})
        print(f"scaling {n_pat} patients {spec.n} rows: {full_s:.3f} s", file=sys.stderr,
              flush=True)
        del spec
    t = pd.DataFrame(rows)
    t.to_csv(os.path.join(args.out, "bench_scaling.csv"), index=False)
    md = ("| patients | rows | sufficient statistics (s) | optimisation (s) | whole fit (s) "
          "| s per million rows | peak MB | classes of ZᵢᵀZᵢ | deviance evaluations |\n"
          "|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
    md += "\n".join(
        f"| {r['patients']:,} | {r['rows']:,} | {r['statistics_s']:.3f} | "
        f"{r['optimisation_s']:.3f} | {r['fit_s']:.3f} | {r['s_per_million_rows']:.2f} | "
        f"{r['peak_mb']:.0f} | {r['classes']} | {r['evaluations']} |"
        for r in t.to_dict("records")) + "\n"
    with open(os.path.join(args.out, "bench_scaling.md"), "w") as fh:
        fh.write(md)
    print(md)


def main(argv=None) -> int:
    args = parse_args(argv)
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(args.threads)  # before NumPy is imported
    if args.no_scaling:
        args.scaling = []
    bench(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
