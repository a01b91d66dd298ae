"""Crossed random effects: the "sparse" engine against lme4 and the Python peers, in one run.

Three benchmarks, each fitted by REML with every method in the same run:

(a) lme4's InstEval, ``y ~ service + (1 | s) + (1 | d) + (1 | dept)`` (73,421 ratings; the CSV is
    written by ``benchmarks/export_insteval.R``, run automatically when R is there; skipped with a
    note otherwise);
(b) a crossed clinic: 10,000 patients, 40 therapists, 20 % of sessions given by another therapist,
    ``value ~ post * technique + session_number + (post | patient_id) + (1 | therapist_id)``
    (simulated below with numpy and a seed);
(c) a size sweep of ``y ~ x + (x | a) + (1 | b)`` (a: 200 ... 10,000 levels, b: 40 levels).

Every method runs in a child process of its own (peak resident memory is the child's), times the
fit alone (best of --reps; the data are in memory) and reports its estimates; lme4 runs through
Rscript and is timed with ``system.time`` around ``lmer`` only, with its default optimiser, then
refitted with bobyqa (rhoend = 1e-10) as the accuracy reference. statsmodels' MixedLM cannot
express crossed factors (it has one grouping factor; variance components nest in it).

    uv run python benchmarks/bench_crossed.py --out benchmarks/results
    uv run python benchmarks/bench_crossed.py --sizes 200 2000 --no-insteval --clinic 2000
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
INSTEVAL_CSV = HERE / "data" / "insteval.csv"
PEERS = ["glmm", "mixedlm", "interlace"]
LEVELS = ["direct_pressure", "stretching", "massage", "combined"]

CASES = {
    "insteval": ("y ~ service + (1 | s) + (1 | d) + (1 | dept)", "y ~ service",
                 ["(1 | s)", "(1 | d)", "(1 | dept)"]),
    "clinic": ("value ~ post * technique + session_number + (post | patient_id) "
               "+ (1 | therapist_id)", "value ~ post * technique + session_number",
               ["(post | patient_id)", "(1 | therapist_id)"]),
    "sweep": ("y ~ x + (x | a) + (1 | b)", "y ~ x", ["(x | a)", "(1 | b)"]),
}
STATSMODELS_NOTE = ("statsmodels MixedLM: cannot express crossed factors (one grouping factor; "
                    "its variance components are nested in it)")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--sizes", type=int, nargs="*", default=[200, 2000, 10_000],
                   help="levels of a in the sweep (empty: skip)")
    p.add_argument("--clinic", type=int, default=10_000, help="patients (0: skip)")
    p.add_argument("--no-insteval", action="store_true")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--lme4-reps", type=int, default=3,
                   help="timed lme4 fits (InstEval uses 1: one fit takes half a minute)")
    p.add_argument("--peers", nargs="*", default=PEERS)
    p.add_argument("--timeout", type=float, default=900.0, help="seconds per method and case")
    p.add_argument("--seed", type=int, default=2026)
    return p.parse_args(argv)


# ----------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------
def crossed_clinic(n_patients: int, n_therapists: int = 40, switch: float = 0.2,
                   n_sessions: int = 6, seed: int = 2026):
    """Patients with a home therapist; each session is given by another one with prob. *switch*."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    home = rng.integers(0, n_therapists, n_patients)
    b = rng.multivariate_normal([0, 0], [[1.0, -0.2], [-0.2, 0.4]], n_patients)
    bt = rng.normal(0, 0.5, n_therapists)
    pid = np.repeat(np.arange(n_patients), n_sessions)
    sess = np.tile(np.arange(1, n_sessions + 1), n_patients)
    other = rng.integers(0, n_therapists - 1, pid.size)
    other = np.where(other >= home[pid], other + 1, other)
    ther = np.where(rng.random(pid.size) < switch, other, home[pid])
    tech = rng.integers(0, 4, pid.size)
    teff = np.array([0.0, 0.3, -0.2, 0.4])
    rows = np.repeat(np.arange(pid.size), 2)
    post = np.tile([0, 1], pid.size)
    p, t = pid[rows], ther[rows]
    val = (6 + b[p, 0] + bt[t] + (-1.5 + b[p, 1] + teff[tech[rows]]) * post
           - 0.1 * sess[rows] + rng.normal(0, 0.8, rows.size))
    return pd.DataFrame({"patient_id": [f"P{k:05d}" for k in p],
                         "therapist_id": [f"T{k:02d}" for k in t],
                         "session_number": sess[rows], "post": post,
                         "technique": np.array(LEVELS)[tech[rows]], "value": val})


def sweep_data(n_a: int, n_b: int = 40, per: int = 6, seed: int = 2026):
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed + n_a)
    a = np.repeat(np.arange(n_a), per)
    b = rng.integers(0, n_b, a.size)
    x = rng.normal(size=a.size)
    ua = rng.multivariate_normal([0, 0], [[1.0, 0.3], [0.3, 0.5]], n_a)
    y = 2 + 0.5 * x + ua[a, 0] + ua[a, 1] * x + rng.normal(0, 0.6, n_b)[b] + \
        rng.normal(size=a.size)
    return pd.DataFrame({"a": [f"a{k:05d}" for k in a], "b": [f"b{k:02d}" for k in b], "x": x,
                         "y": y})


def read_case(case: str, path: str):
    import pandas as pd

    d = pd.read_csv(path, dtype={"s": str, "d": str, "dept": str, "patient_id": str,
                                 "therapist_id": str, "a": str, "b": str})
    if "technique" in d:
        d["technique"] = pd.Categorical(d["technique"], categories=LEVELS)
    return d


# ----------------------------------------------------------------------------------------------
# Children: one method, one case; print a JSON line
# ----------------------------------------------------------------------------------------------
def _child(method: str, case: str, path: str, reps: int) -> dict:
    import resource
    import warnings

    import numpy as np

    warnings.simplefilter("ignore")
    formula, fixed, random = CASES[case]
    data = read_case(case, path)
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out: dict = {"method": method}

    if method == "sparse":
        from mfr_outcomes.models.formula import build_spec
        from mfr_outcomes.models.sparse import SparseEngine, sparse_model

        def run():
            spec = build_spec(data, formula)
            t0 = time.perf_counter()
            res = SparseEngine().fit(spec, reml=True)
            return res, time.perf_counter() - t0, spec

        best, best_fit = np.inf, np.inf
        for _ in range(reps):
            t0 = time.perf_counter()
            res, t_fit, spec = run()
            best = min(best, time.perf_counter() - t0)
            best_fit = min(best_fit, t_fit)
        out.update(seconds=best, seconds_fit_only=best_fit, evaluations=res.n_evaluations,
                   gradients=sparse_model(spec).n_gradients,  # the last fit's (cached model)
                   beta=[float(v) for v in res.beta], names=build_spec(data, formula).fixed_names, loglik=-0.5 * res.objective,
                   converged=bool(res.converged))
    elif method == "glmm":
        import glmm

        def run():
            return glmm.fit(data, formula, reml=True, satterthwaite=False)

        best, fit = _best(run, reps)
        out.update(seconds=best, evaluations=int(fit.n_eval), beta=[float(v) for v in fit.beta],
                   names=list(fit.names),
                   loglik=float(fit.loglik), converged=bool(fit.converged))
    elif method == "mixedlm":
        import mixedlm

        best, fit = _best(lambda: mixedlm.lmer(formula, data, REML=True), reps)
        fe = fit.fixef()
        out.update(seconds=best, evaluations=None, beta=[float(v) for v in fe.values()],
                   names=list(fe.keys()),
                   loglik=float(fit.logLik().value if hasattr(fit.logLik(), "value")
                                else fit.logLik()), converged=None)
    elif method == "interlace":
        import interlace

        best, fit = _best(lambda: interlace.fit(fixed, data, random=random, method="REML"),
                          reps)
        out.update(seconds=best, evaluations=None,
                   beta=[float(v) for v in np.asarray(fit.fe_params)],
                   names=[str(v) for v in fit.fe_params.index], loglik=float(fit.llf),
                   converged=None)
    else:
        raise ValueError(method)
    out["peak_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out["peak_mb_over_data"] = out["peak_mb"] - base_rss
    return out


def _best(fn, reps: int):
    best, res = float("inf"), None
    for _ in range(reps):
        t0 = time.perf_counter()
        res = fn()
        best = min(best, time.perf_counter() - t0)
    return best, res


def one_thread_env() -> dict:
    """The environment of a child process: one BLAS / OpenMP / Rayon thread, fixed hashing."""
    return dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1",
                RAYON_NUM_THREADS="1", PYTHONHASHSEED="0")


def spawn_json(method: str, cmd: list[str], timeout: float, env: dict | None = None) -> dict:
    """Run *cmd* and read the last JSON line it prints; a timeout, a failure or no JSON line is
    a row with an ``error`` sentence instead."""
    try:
        cp = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"method": method, "error": f"no result within {timeout:.0f} s"}
    lines = [ln for ln in cp.stdout.splitlines() if ln.startswith("{")]
    if cp.returncode != 0 or not lines:
        err = (cp.stderr.strip().splitlines() or ["(no message)"])[-1]
        return {"method": method, "error": err[:200]}
    out = json.loads(lines[-1])
    out["method"] = method
    return out


def run_rscript(script: str, args: list[str], timeout: float) -> dict:
    """lme4's row: *script* run by Rscript with *args* (skipped with a note without R)."""
    if shutil.which("Rscript") is None:
        return {"method": "lme4", "error": "Rscript not found: lme4 skipped"}
    with tempfile.NamedTemporaryFile("w", suffix=".R", delete=False) as fh:
        fh.write(script)
    try:
        return spawn_json("lme4", ["Rscript", fh.name, *args], timeout)
    finally:
        os.unlink(fh.name)


def run_child(method: str, case: str, path: str, reps: int, timeout: float) -> dict:
    return spawn_json(method, [sys.executable, __file__, "--child", method, case, path,
                               str(reps)], timeout, one_thread_env())


# ----------------------------------------------------------------------------------------------
# lme4
# ----------------------------------------------------------------------------------------------
R_SCRIPT = r"""
suppressPackageStartupMessages({library(lme4); library(jsonlite)})
args <- commandArgs(trailingOnly = TRUE)
d <- read.csv(args[1], stringsAsFactors = FALSE,
              colClasses = c(s = "character", d = "character", dept = "character",
                             patient_id = "character", therapist_id = "character",
                             a = "character", b = "character"))
if ("technique" %in% names(d))
  d$technique <- factor(d$technique,
                        levels = c("direct_pressure", "stretching", "massage", "combined"))
f <- as.formula(args[2]); reps <- as.integer(args[3])
gc(reset = TRUE)
best <- Inf
for (i in seq_len(reps)) {
  tm <- system.time(m <- lmer(f, d, REML = TRUE))[["elapsed"]]
  best <- min(best, tm)
}
mem <- sum(gc()[, 6])   # "max used" (Mb) since the reset: data + fits
tight <- lmer(f, d, REML = TRUE,
              control = lmerControl(optimizer = "bobyqa", optCtrl = list(rhoend = 1e-10)))
cat(toJSON(list(seconds = best, evaluations = m@optinfo$feval, peak_mb = mem,
                names = names(fixef(m)),
                beta = unname(fixef(m)), loglik = as.numeric(logLik(m)),
                tight_beta = unname(fixef(tight)), tight_loglik = as.numeric(logLik(tight)),
                tight_evaluations = tight@optinfo$feval,
                optimizer = m@optinfo$optimizer), digits = NA, auto_unbox = TRUE), "\n")
"""


def run_lme4(case: str, path: str, reps: int, timeout: float) -> dict:
    return run_rscript(R_SCRIPT, [path, CASES[case][0], str(reps)], timeout)


# ----------------------------------------------------------------------------------------------
# One case, all methods; tables
# ----------------------------------------------------------------------------------------------
def bench_case(label: str, case: str, path: str, rows: int, args) -> list[dict]:
    print(f"[{label}] lme4 ...", file=sys.stderr, flush=True)
    lme4 = run_lme4(case, path, 1 if case == "insteval" else args.lme4_reps, args.timeout * 2)
    results = [lme4]
    for method in ["sparse"] + list(args.peers):
        print(f"[{label}] {method} ...", file=sys.stderr, flush=True)
        results.append(run_child(method, case, path, args.reps, args.timeout))
    ref_ll = lme4.get("tight_loglik")
    ref = (dict(zip(map(_norm, lme4["names"]), lme4["tight_beta"]))
           if "tight_beta" in lme4 else None)
    for r in results:
        r.update(label=label, case=case, rows=rows)
        if "error" in r or ref is None:
            continue
        mine = dict(zip(map(_norm, r.get("names", [])), r.get("beta", [])))
        r["max_abs_dbeta"] = (max(abs(mine[k] - v) for k, v in ref.items())
                              if set(mine) == set(ref) else None)
        r["rel_dloglik"] = (r["loglik"] - ref_ll) / abs(ref_ll)
    return results


def _norm(name: str) -> str:
    """A fixed-effect name comparable across packages: techniquemassage, technique[T.massage],
    technique[massage] and an interaction in either order are one name."""
    import re

    name = re.sub(r"\[(?:T\.)?(.*?)\]", r"\1", str(name)).replace(" ", "").lower()
    name = name.replace("(intercept)", "intercept")
    return ":".join(sorted(name.split(":")))


def _fmt(v, spec: str = ".3g") -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return format(v, spec)
    return str(v)


def table(results: list[dict]) -> str:
    head = ("| case | rows | method | time (s) | vs sparse | evaluations | peak MB | "
            "max abs Δβ vs lme4 (bobyqa 1e-10) | rel. Δ loglik | note |")
    lines = [head, "|" + "---|" * 10]
    by_label: dict[str, list[dict]] = {}
    for r in results:
        by_label.setdefault(r["label"], []).append(r)
    for label, rs in by_label.items():
        ours = next((r for r in rs if r["method"] == "sparse" and "seconds" in r), None)
        for r in rs:
            ratio = (r["seconds"] / ours["seconds"] if ours and "seconds" in r else None)
            note = r.get("error", "")
            if not note and r.get("max_abs_dbeta") is None and r["method"] != "lme4":
                names = ", ".join(r.get("names", [])[:3])
                note = f"its coefficients are coded differently ({names}, …): Δβ not compared"
            if r["method"] == "sparse" and "seconds_fit_only" in r:
                note = f"fit only (without build_spec): {r['seconds_fit_only']:.3f} s"
            if r["method"] == "lme4" and "optimizer" in r:
                note = (f"default optimiser ({r['optimizer']}); bobyqa 1e-10 took "
                        f"{r.get('tight_evaluations')} evaluations")
            grads = f" (+{r['gradients']} gradients)" if r.get("gradients") else ""
            cell = label.replace("|", "\\|")  # a formula's bar would end the table cell
            lines.append(
                f"| {cell} | {r['rows']:,} | {r['method']} | {_fmt(r.get('seconds'), '.3f')} | "
                f"{_fmt(ratio, '.1f')}{'×' if ratio else ''} | {_fmt(r.get('evaluations'))}{grads} | "
                f"{_fmt(r.get('peak_mb'), '.0f')} | {_fmt(r.get('max_abs_dbeta'), '.1e')} | "
                f"{_fmt(r.get('rel_dloglik'), '.1e')} | {note} |")
        cell = label.replace("|", "\\|")
        lines.append(f"| {cell} | | statsmodels | — | — | — | — | — | — | {STATSMODELS_NOTE} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="bench_crossed_"))
    results: list[dict] = []
    notes: list[str] = []
    try:
        if not args.no_insteval:
            if not INSTEVAL_CSV.exists() and shutil.which("Rscript"):
                subprocess.run(["Rscript", str(HERE / "export_insteval.R")], cwd=HERE.parent,
                               check=False, capture_output=True)
            if INSTEVAL_CSV.exists():
                results += bench_case("InstEval", "insteval", str(INSTEVAL_CSV), 73_421, args)
            else:
                notes.append("InstEval skipped: R (lme4) is not installed to export it.")
        if args.clinic:
            d = crossed_clinic(args.clinic, seed=args.seed)
            path = tmp / "clinic.csv"
            d.to_csv(path, index=False)
            results += bench_case(f"clinic {args.clinic:,} patients", "clinic", str(path),
                                  len(d), args)
        for n_a in args.sizes:
            d = sweep_data(n_a, seed=args.seed)
            path = tmp / f"sweep_{n_a}.csv"
            d.to_csv(path, index=False)
            results += bench_case(f"(x|a)+(1|b), a: {n_a:,}", "sweep", str(path), len(d), args)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    md = table(results)
    if notes:
        md += "\n\n" + "\n".join(f"- {n}" for n in notes)
    (out / "bench_crossed.md").write_text(md + "\n")
    (out / "bench_crossed.json").write_text(json.dumps(results, indent=1, default=float))
    print(md)
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        res = _child(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]))
        print(json.dumps(res, default=float))
        sys.exit(0)
    sys.exit(main())
