"""Power-simulation speed: the fast engine against lme4 refits in R (simr's way).

One study of 60 patients (6 treatment visits, pre/post pain) is simulated and fitted with
``value ~ post + session_number + (post | patient_id)``; 1,000 responses are then drawn from the
fitted model on that fixed design (what simr does) and refitted
- in Python: sufficient statistics + REML fit by the fast engine, then also with the
  Satterthwaite df of ``post`` (as in ``mfr_outcomes.power``);
- in R: ``refit(fit, newresp)`` in a loop (simr's inner loop), then ``lmerTest`` refits with
  Satterthwaite p-values (on --lmertest-n responses, per-study time reported).
- batched: ``mfr_outcomes.power.simulate_from`` (simulate + fit + Satterthwaite df of every
  study, studies side by side, models/batched.py), and the same batched fitter on the very
  responses R refits (estimates compared).
Finally the whole ``mfr_outcomes.power.simulate`` loop (a new clinic simulated for every study,
fitted in batches of one design) is timed on one core. BLAS runs on one thread throughout.

    python benchmarks/bench_power.py --out benchmarks/results
"""
from __future__ import annotations

import argparse
import os
import sys


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--studies", type=int, default=1000)
    p.add_argument("--patients", type=int, default=60)
    p.add_argument("--lmertest-n", type=int, default=200,
                   help="refits timed with lmerTest's Satterthwaite test in R (per-study time)")
    p.add_argument("--seed", type=int, default=2026)
    p.add_argument("--simulate-studies", type=int, default=200,
                   help="studies of the power.simulate loop (new clinics; per-study time)")
    p.add_argument("--skip-simulate", action="store_true",
                   help="do not time the whole power.simulate loop")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = "1"
    import json
    import shutil
    import subprocess
    import tempfile
    import time

    import numpy as np
    import pandas as pd

    from mfr_outcomes import power
    from mfr_outcomes.models.fast import FastEngine
    from mfr_outcomes.models.spec import block_lambda

    formula = power._FORMULAS["post"]
    cfg = power._Config(parameter="post", formula=formula, measure="pain_nrs", alpha=0.05,
                        generator=None, lean=True)
    rng = np.random.default_rng(args.seed)
    data = power._synthetic_study(cfg, args.patients, 6, -0.5, rng)
    spec = power._lean_spec(data, formula)
    engine = FastEngine()
    base = engine.fit(spec)
    y_observed = spec.y.copy()
    # responses from the fitted model on this design
    blk = spec.blocks[0]
    lam = block_lambda(base.theta, blk.q)
    X, Z, codes = spec.X, blk.Z, blk.codes
    mu = X @ base.beta
    ys = np.empty((spec.n, args.studies))
    for i in range(args.studies):
        u = rng.normal(size=(blk.n_levels, blk.q)) * base.sigma
        b = u @ lam.T
        ys[:, i] = mu + np.sum(Z * b[codes], axis=1) + rng.normal(0, base.sigma, spec.n)
    j = spec.fixed_names.index("post")
    row = np.zeros(spec.p)
    row[j] = 1.0

    def refit_loop(with_df: bool, warm: bool) -> tuple[float, np.ndarray, np.ndarray]:
        est = np.empty(args.studies)
        crit = np.empty(args.studies)
        start = base.theta if warm else None
        t0 = time.perf_counter()
        for i in range(args.studies):
            spec.y = ys[:, i]
            stats, lay = engine.prepare(spec)
            res = engine.fit_stats(stats, lay, reml=True, light=True, start=start)
            est[i], crit[i] = res.beta[j], res.objective
            if with_df:
                power.satterthwaite_df_1d(res.devfun_varpar, res.vcov_varpar,
                                          np.r_[res.theta, res.sigma], row)
        return time.perf_counter() - t0, est, crit

    import warnings

    from mfr_outcomes.models import batched, fit_mixed
    from mfr_outcomes.models.spec import theta_start

    spec.y = y_observed
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit0 = fit_mixed(data, formula)
    power.simulate_from(fit0, parameter="post", effect=-0.5, n_sims=20, seed=args.seed)  # warm
    t0, c0 = time.perf_counter(), time.process_time()
    sf, _ = power.simulate_from(fit0, parameter="post", effect=-0.5, n_sims=args.studies,
                                seed=args.seed, batch_size=args.studies, return_studies=True)
    batched_s = time.perf_counter() - t0
    batched_cpu = time.process_time() - c0
    # the batched fitter on the responses R refits
    C, ZX, XtX, ind = batched.design_arrays(X, Z, codes, blk.n_levels)
    bd = batched.BatchDesign(C=C[None], ZX=ZX[None], XtX=XtX[None], n=spec.n,
                             theta_pos=[(0, 0), (1, 0), (1, 1)], q=2)
    t0, c0 = time.perf_counter(), time.process_time()
    bf = batched.fit_batch(bd, *batched.response_sums(X, ind, ys, 2), theta_start(spec))
    batched_df = batched.satterthwaite_df(bf, row)
    batched_fit_s = time.perf_counter() - t0
    batched_fit_cpu = time.process_time() - c0
    batched_est = bf.beta[:, j]
    fast_s, fast_est, fast_crit = refit_loop(False, False)
    warm_s, _, _ = refit_loop(False, True)
    fast_df_s, _, _ = refit_loop(True, False)
    rows = [{"what": f"batched: power.simulate_from, {args.studies} studies simulated + fitted + "
                     "Satterthwaite df", "seconds": batched_s, "cpu_seconds": batched_cpu,
             "ms_per_study": 1e3 * batched_s / args.studies},
            {"what": f"batched: fit + Satterthwaite df of the {args.studies} responses R refits",
             "seconds": batched_fit_s, "cpu_seconds": batched_fit_cpu,
             "ms_per_study": 1e3 * batched_fit_s / args.studies},
            {"what": f"fast engine: {args.studies} refits (statistics + REML fit), start θ = 1",
             "seconds": fast_s, "ms_per_study": 1e3 * fast_s / args.studies},
            {"what": f"fast engine: {args.studies} refits started at the fitted θ (as refit())",
             "seconds": warm_s, "ms_per_study": 1e3 * warm_s / args.studies},
            {"what": f"fast engine: {args.studies} refits + Satterthwaite df (differences)",
             "seconds": fast_df_s, "ms_per_study": 1e3 * fast_df_s / args.studies}]
    note = ""
    if shutil.which("Rscript"):
        with tempfile.TemporaryDirectory() as tmp:
            dpath, ypath, opath = (os.path.join(tmp, f) for f in ("d.csv", "y.csv", "o.json"))
            data.assign(value=y_observed).to_csv(dpath, index=False)
            pd.DataFrame(ys).to_csv(ypath, index=False)
            script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "power_lme4.R")
            proc = subprocess.run(["Rscript", script, dpath, ypath, opath, formula, "post",
                                   str(args.lmertest_n)], capture_output=True, text=True)
            if proc.returncode == 0:
                with open(opath) as fh:
                    r = json.load(fh)
                diff = float(np.max(np.abs(np.asarray(r["estimates"]) - fast_est)))
                diff_b = float(np.max(np.abs(np.asarray(r["estimates"]) - batched_est)))
                diff_bf = float(np.max(np.abs(batched_est - fast_est)))
                dcrit = fast_crit - np.asarray(r["reml_criterion"])
                lower = int(np.sum(dcrit < -1e-6))
                higher = int(np.sum(dcrit > 1e-6))
                rows += [{"what": f"lme4 refit() loop (simr's way): {r['n']} refits",
                          "seconds": r["refit_seconds"],
                          "ms_per_study": 1e3 * r["refit_seconds"] / r["n"]},
                         {"what": f"lme4 refit + lmerTest Satterthwaite: {r['n_lmertest']} refits",
                          "seconds": r["lmertest_seconds"],
                          "ms_per_study": 1e3 * r["lmertest_seconds"] / r["n_lmertest"]}]
                # lme4 1.1-31's refit() reports REML criteria a few units off lmer()'s on the
                # same response (its devfun disagrees at the same θ), so only estimates compare
                note = (f"largest |difference| of the {r['n']} estimates of post: fast vs lme4 "
                        f"refit() {diff:.1e}, batched vs lme4 refit() {diff_b:.1e} (refit() "
                        f"stops at nloptwrap's default ftol), batched vs fast engine "
                        f"{diff_bf:.1e}; median Satterthwaite df (batched) "
                        f"{np.median(batched_df):.2f}")
                del lower, higher
            else:
                note = "lme4 failed: " + proc.stderr.strip()[-300:]
    else:
        note = "Rscript not found: lme4 not timed"
    if not args.skip_simulate:
        t0 = time.perf_counter()
        res = power.simulate(effect=-0.5, n_patients=[args.patients], sessions=6,
                             n_sims=args.simulate_studies, seed=args.seed, n_jobs=1,
                             progress=False)
        sim_s = time.perf_counter() - t0
        rows.append({"what": f"power.simulate: {args.simulate_studies} new clinics simulated "
                             "(synthetic.generate_frames) + fitted in batches + Satterthwaite",
                     "seconds": sim_s, "ms_per_study": 1e3 * sim_s / args.simulate_studies})
        note += f"; simulated power at effect -0.5: {res['power'].iloc[0]:.3f}"
    note += f"; simulate_from power at effect -0.5: {sf['power'].iloc[0]:.3f}"
    t = pd.DataFrame(rows)
    lme4_ms = next((r["ms_per_study"] for r in rows if r["what"].startswith("lme4 refit()")),
                   np.nan)
    t["lme4_refit_over_this"] = lme4_ms / t["ms_per_study"]
    os.makedirs(args.out, exist_ok=True)
    t.to_csv(os.path.join(args.out, "bench_power.csv"), index=False)
    if "cpu_seconds" not in t:
        t["cpu_seconds"] = np.nan

    def cpu(v: float) -> str:
        return "" if not np.isfinite(v) else f"{v:.2f}"

    md = ("| what | seconds (wall) | CPU seconds (this process) | ms per study | "
          "lme4 refit() loop ÷ this (per study) |\n"
          "|---|---:|---:|---:|---:|\n"
          + "\n".join(f"| {r['what']} | {r['seconds']:.2f} | {cpu(r['cpu_seconds'])} | "
                      f"{r['ms_per_study']:.2f} | {r['lme4_refit_over_this']:.1f}× |"
                      for r in t.to_dict("records"))
          + f"\n\n{args.patients} patients, {spec.n} rows a study; load average "
            f"{os.getloadavg()[0]:.1f} at the end. {note}\n")
    with open(os.path.join(args.out, "bench_power.md"), "w") as fh:
        fh.write(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
