"""Speed of the GLMM fit (glmer's method) against lme4's glmer and the Python peers.

Models, in one run:
* the paresthesia model ``value ~ technique + session_number + (1 | patient_id)`` (binomial,
  logit; pre-session readings on treatment visits, as ``fit_binary`` builds them) on simulated
  clinics of 2,000 and 10,000 patients (``mfr_outcomes.synthetic``);
* lme4's VerbAgg ``r2 ~ Anger + Gender + btype + situ + (1 | id) + (1 | item)`` (crossed),
  exported by ``benchmarks/export_verbagg.R``.

Comparators: glmer (Laplace with its default control, and nAGQ = 0; timed inside R around the
glmer call only, by an Rscript subprocess), and the Python peers ``glmm``, ``interlace``
(``interlace-lme``) and ``mixedlm`` when installed (``make bench`` installs the bench group);
a peer that is absent or fails is listed with the reason. Our deviance (−2 log-likelihood) is
compared with glmer's run with a tight optimiser (bobyqa, rhoend 1e-10, tolPwrss 1e-12).

    python benchmarks/bench_glmm.py --out benchmarks/results
    python benchmarks/bench_glmm.py --sizes 2000 --no-verbagg --reps 1
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

FORMULA = "value ~ technique + session_number + (1 | patient_id)"
VERBAGG = "r2 ~ Anger + Gender + btype + situ + (1 | id) + (1 | item)"
LEVELS = ["direct_pressure", "stretching", "massage", "combined"]

R_CODE = r"""
suppressPackageStartupMessages({library(lme4); library(jsonlite)})
a <- commandArgs(trailingOnly = TRUE)
d <- read.csv(a[[1]], stringsAsFactors = FALSE)
form <- as.formula(a[[2]]); out <- a[[3]]; reps <- as.integer(a[[4]])
for (v in names(d)) if (is.character(d[[v]])) d[[v]] <- factor(d[[v]])
if ("technique" %in% names(d))
  d$technique <- droplevels(factor(d$technique, levels = c(@LEVELS@)))
if ("Gender" %in% names(d)) d$Gender <- factor(d$Gender, levels = c("F", "M"))
if ("btype" %in% names(d)) d$btype <- factor(d$btype, levels = c("curse", "scold", "shout"))
if ("situ" %in% names(d)) d$situ <- factor(d$situ, levels = c("other", "self"))
best <- function(f) min(sapply(seq_len(reps), function(i) system.time(f())[["elapsed"]]))
m1 <- NULL; m0 <- NULL
t_laplace <- best(function() m1 <<- glmer(form, d, binomial))
t_nagq0 <- best(function() m0 <<- glmer(form, d, binomial, nAGQ = 0))
tight <- glmerControl(optimizer = "bobyqa", optCtrl = list(rhoend = 1e-10), tolPwrss = 1e-12)
t_tight <- system.time(mt <- glmer(form, d, binomial, control = tight))[["elapsed"]]
write_json(list(t_laplace = t_laplace, t_nagq0 = t_nagq0, t_tight = t_tight,
                dev_laplace = -2 * as.numeric(logLik(m1)), dev_nagq0 = -2 * as.numeric(logLik(m0)),
                dev_tight = -2 * as.numeric(logLik(mt)), beta_tight = unname(fixef(mt)),
                theta_tight = unname(getME(mt, "theta")),
                version = as.character(packageVersion("lme4"))),
           out, digits = NA, auto_unbox = TRUE)
""".replace("@LEVELS@", ", ".join(f'"{x}"' for x in LEVELS))


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="benchmarks/results", help="folder for the tables")
    p.add_argument("--sizes", type=int, nargs="+", default=[2_000, 10_000],
                   help="numbers of patients of the paresthesia model")
    p.add_argument("--reps", type=int, default=3, help="timed repetitions (best is reported)")
    p.add_argument("--r-reps", type=int, default=2,
                   help="timed repetitions of each glmer fit (best is reported)")
    p.add_argument("--no-verbagg", action="store_true")
    p.add_argument("--no-r", action="store_true", help="skip glmer")
    p.add_argument("--peers", nargs="*", default=["glmm", "interlace", "mixedlm"])
    p.add_argument("--seed", type=int, default=2026)
    return p.parse_args(argv)


def paresthesia_frame(n_patients: int, seed: int):
    """The frame fit_binary models, from simulated raw tables (no validation pass)."""
    from mfr_outcomes.study import analysis_frame, model_dtypes
    from mfr_outcomes.synthetic import generate_frames

    frames, _ = generate_frames(n_patients=n_patients, seed=seed, measures=["paresthesia"])
    f = analysis_frame(frames["patients"], frames["sessions"], frames["measurements"],
                       "paresthesia")
    f = f[(f["post"] == 0) & (f["technique"].astype(str) != "none")]
    f = model_dtypes(f[["value", "technique", "session_number", "patient_id"]].dropna())
    return f.sort_values(["patient_id", "session_number"]).reset_index(drop=True)


def verbagg_frame(path: Path):
    import pandas as pd

    if not path.exists():
        subprocess.run(["Rscript", "benchmarks/export_verbagg.R", str(path)], check=True)
    d = pd.read_csv(path)
    d["Gender"] = pd.Categorical(d["Gender"], ["F", "M"])
    d["btype"] = pd.Categorical(d["btype"], ["curse", "scold", "shout"])
    d["situ"] = pd.Categorical(d["situ"], ["other", "self"])
    d["id"] = d["id"].astype(str)
    return d


def best_of(fn, reps: int):
    times, out = [], None
    for _ in range(reps):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), out


def run_glmer(frame, formula: str, reps: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        csv, out, code = Path(tmp, "d.csv"), Path(tmp, "o.json"), Path(tmp, "b.R")
        frame.to_csv(csv, index=False)
        code.write_text(R_CODE)
        subprocess.run(["Rscript", str(code), str(csv), formula, str(out), str(reps)],
                       check=True, capture_output=True, text=True)
        return json.loads(out.read_text())


def run_ours(frame, formula: str, reps: int, nagq: int = 1) -> dict:
    from mfr_outcomes.models.fit import fit_mixed

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t, fit = best_of(lambda: fit_mixed(frame, formula, family="binomial", nagq=nagq), reps)
    return {"seconds": t, "deviance": fit.deviance, "backend": fit.diagnostics["backend"],
            "evaluations": fit.result.n_evaluations, "converged": fit.diagnostics["converged"]}


def run_peer(name: str, frame, formula: str, reps: int) -> dict:
    """Time one Python peer; {"error": reason} when absent or unable."""
    import numpy as np

    fixed, _, rand = formula.partition(" + (")
    randoms = ["(" + r.strip().rstrip("+").strip() for r in ("(" + rand).split("+ (")]
    randoms = [r if r.endswith(")") else r + ")" for r in (x.replace("((", "(") for x in randoms)]
    try:
        if name == "glmm":
            import glmm

            def fn():
                return glmm.fit(frame, formula, family="binomial")

            dev = lambda f: -2.0 * float(f.loglik)  # noqa: E731
        elif name == "interlace":
            import interlace

            def fn():
                return interlace.glmer(fixed, frame, family="binomial", random=randoms)

            dev = lambda f: -2.0 * float(np.asarray(f.llf if hasattr(f, "llf")  # noqa: E731
                                                    else f.loglik))
        elif name == "mixedlm":
            import mixedlm

            def fn():
                return mixedlm.glmer(formula, frame, family=mixedlm.families.Binomial())

            dev = lambda f: -2.0 * float(np.asarray(f.logLik().value if hasattr(  # noqa: E731
                f.logLik(), "value") else f.logLik()))
        else:
            return {"error": "unknown peer"}
    except ImportError as exc:
        return {"error": f"not installed ({exc})"}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t, fit = best_of(fn, reps)
        try:
            d = dev(fit)
        except Exception as exc:  # a peer's result without a log-likelihood we can read
            d = float("nan")
            return {"seconds": t, "deviance": d, "note": f"deviance not read: {exc}"}
        return {"seconds": t, "deviance": d}
    except Exception as exc:  # noqa: BLE001 - report, not crash: a peer unable to fit
        return {"error": f"{type(exc).__name__}: {str(exc)[:160]}"}


def bench_case(label: str, frame, formula: str, args) -> list[dict]:
    rows = []
    print(f"== {label}: {len(frame)} rows", file=sys.stderr)
    r = None if args.no_r else run_glmer(frame, formula, max(1, args.r_reps))
    ours = run_ours(frame, formula, args.reps)
    ref = r["dev_tight"] if r else float("nan")
    rows.append({"case": label, "rows": len(frame), "method": "mfr_outcomes (Laplace)",
                 "seconds": ours["seconds"], "deviance": ours["deviance"],
                 "rel_dev_diff": (ours["deviance"] - ref) / abs(ref) if r else float("nan"),
                 "note": f"{ours['backend']}, {ours['evaluations']} deviance evaluations"})
    if r:
        rows.append({"case": label, "rows": len(frame), "method": "glmer Laplace",
                     "seconds": r["t_laplace"], "deviance": r["dev_laplace"],
                     "rel_dev_diff": (r["dev_laplace"] - ref) / abs(ref),
                     "note": f"lme4 {r['version']}, default control"})
        rows.append({"case": label, "rows": len(frame), "method": "glmer nAGQ=0",
                     "seconds": r["t_nagq0"], "deviance": r["dev_nagq0"],
                     "rel_dev_diff": (r["dev_nagq0"] - ref) / abs(ref),
                     "note": "a different (cruder) criterion"})
    for peer in args.peers:
        res = run_peer(peer, frame, formula, args.reps)
        rows.append({"case": label, "rows": len(frame), "method": peer,
                     "seconds": res.get("seconds", float("nan")),
                     "deviance": res.get("deviance", float("nan")),
                     "rel_dev_diff": ((res.get("deviance", float("nan")) - ref) / abs(ref)
                                      if r else float("nan")),
                     "note": res.get("error", res.get("note", ""))})
    ours_t = ours["seconds"]
    for row in rows:
        row["ratio_to_ours"] = row["seconds"] / ours_t if row["seconds"] == row["seconds"] \
            else float("nan")
    return rows


def main(argv=None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("PYTHONHASHSEED", "0")
    import pandas as pd
    from threadpoolctl import threadpool_limits

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    with threadpool_limits(limits=1, user_api="blas"):
        for n in args.sizes:
            rows += bench_case(f"paresthesia, {n:,} patients", paresthesia_frame(n, args.seed),
                               FORMULA, args)
        if not args.no_verbagg:
            rows += bench_case("VerbAgg (crossed)", verbagg_frame(out / "verbagg.csv"),
                               VERBAGG, args)
    tab = pd.DataFrame(rows)
    tab.to_csv(out / "bench_glmm.csv", index=False)
    lines = ["| case | rows | method | seconds | × ours | deviance − glmer (tight), relative | "
             "note |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['case']} | {r['rows']:,} | {r['method']} | {r['seconds']:.3g} | "
                     f"{r['ratio_to_ours']:.3g} | {r['rel_dev_diff']:.2g} | {r['note']} |")
    (out / "bench_glmm.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
