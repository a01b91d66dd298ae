"""Large crossed models past the "sparse" engine's dense trailing block: "sparse_ldl" against lme4
and the Python peers (glmm, mixedlm; the ``bench`` dependency group, skipped with a note when
absent).

Data: patients crossed with therapists within sites (20 therapists a site, each patient 3
sessions with pre and post readings, a session with the home therapist or another of the site,
half and half), as tests/reference/make_reference_bigcrossed.R but larger. Every method fits the
same CSV in a child process (one BLAS thread for Python), REML. Times: wall seconds of the fit
(data in memory; ours includes ``build_spec``) and, for Python, CPU seconds of the process; lme4
is timed with ``system.time`` around ``lmer`` with its default optimiser (CPU: user + system),
then refitted with ``bobyqa``, ``rhoend = 1e-10`` (not timed) as the reference for Δβ and
Δ log-likelihood. Peak MB: the child's peak resident memory (Python), ``gc()`` "max used" (R).

    uv run python benchmarks/bench_bigcrossed.py --out /tmp/bigcrossed --timeout 900
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from bench_crossed import _fmt, one_thread_env, run_rscript, spawn_json

HERE = Path(__file__).resolve().parent
#: patients x therapists; "r": crossed at random over all therapists (heavy fill) instead of
#: within sites
SIZES = ["5000x4500", "10000x6000", "20000x10000", "5000x4500r"]
FORMULAS = {
    "intercepts": "value ~ post + session_number + (1 | patient_id) + (1 | therapist_id)",
    "slope": "value ~ post + session_number + (post | patient_id) + (1 | therapist_id)",
}
PEERS = ["glmm", "mixedlm"]


def site_crossed(n_patients: int, n_therapists: int, per_site: int = 20, sessions: int = 3,
                 seed: int = 2026):
    """Patients crossed with therapists within sites (one site of all therapists when
    *per_site* is *n_therapists*: crossed at random); a seeded simulation (numpy Generator)."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    n_site = n_therapists // per_site
    site = np.arange(n_patients) % n_site
    home = site * per_site + rng.integers(0, per_site, n_patients)
    b0, b1 = rng.normal(0, 1.0, n_patients), rng.normal(0, 0.5, n_patients)
    bt = rng.normal(0, 0.6, n_site * per_site)
    pid = np.repeat(np.arange(n_patients), 2 * sessions)
    sess = np.tile(np.repeat(np.arange(1, sessions + 1), 2), n_patients)
    post = np.tile([0, 1], n_patients * sessions)
    other = site[pid] * per_site + rng.integers(0, per_site, pid.size)
    switch = np.repeat(rng.random(n_patients * sessions) < 0.5, 2)
    ther = np.where(switch, other, home[pid])
    value = 6 + b0[pid] + bt[ther] + (-1.5 + b1[pid]) * post - 0.1 * sess + \
        rng.normal(0, 0.8, pid.size)
    return pd.DataFrame({"patient_id": [f"P{v:05d}" for v in pid],
                         "therapist_id": [f"T{v:05d}" for v in ther],
                         "session_number": sess, "post": post, "value": np.round(value, 4)})


# ----------------------------------------------------------------------------------------------
# Python children
# ----------------------------------------------------------------------------------------------
def _child(method: str, case: str, path: str) -> dict:
    import resource
    import warnings

    import pandas as pd

    warnings.simplefilter("ignore")
    formula = FORMULAS[case]
    data = pd.read_csv(path)
    out: dict = {"method": method}
    # imports before the clock, as lme4's library() is before system.time
    if method == "sparse_ldl":
        import scipy.optimize  # noqa: F401 (imported by the engine's optimiser on first use)

        from mfr_outcomes.models.formula import build_spec
        from mfr_outcomes.models.sparse_ldl import SparseLDLEngine, ldl_model
        from mfr_outcomes.models.sparse_struct import trailing_size
    elif method in PEERS:
        __import__(method)
    c0, t0 = time.process_time(), time.perf_counter()
    if method == "sparse_ldl":
        spec = build_spec(data, formula)
        res = SparseLDLEngine().fit(spec, reml=True)
        model = ldl_model(spec)
        nnz_a, nnz_l = model.fill()
        out.update(evaluations=res.n_evaluations, beta=[float(v) for v in res.beta],
                   names=spec.fixed_names, loglik=-0.5 * res.objective,
                   converged=bool(res.converged), trailing=trailing_size(spec),
                   q=model.q, nnz_omega=nnz_a, nnz_factor=nnz_l)
    elif method == "glmm":
        import glmm

        fit = glmm.fit(data, formula, reml=True, satterthwaite=False)
        out.update(evaluations=int(fit.n_eval), beta=[float(v) for v in fit.beta],
                   names=list(fit.names), loglik=float(fit.loglik),
                   converged=bool(fit.converged))
    elif method == "mixedlm":
        import mixedlm

        fit = mixedlm.lmer(formula, data, REML=True)
        fe = fit.fixef()
        ll = fit.logLik()
        out.update(evaluations=None, beta=[float(v) for v in fe.values()], names=list(fe.keys()),
                   loglik=float(ll.value if hasattr(ll, "value") else ll), converged=None)
    else:
        raise ValueError(method)
    out["seconds"] = time.perf_counter() - t0
    out["cpu_seconds"] = time.process_time() - c0
    out["peak_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def run_child(method: str, case: str, path: str, timeout: float) -> dict:
    if method in PEERS:
        import importlib.util

        if importlib.util.find_spec(method) is None:
            return {"method": method, "error": f"{method} is not installed (uv sync --group "
                                               f"bench): skipped"}
    return spawn_json(method, [sys.executable, __file__, "--child", method, case, path],
                      timeout, one_thread_env())


# ----------------------------------------------------------------------------------------------
# lme4
# ----------------------------------------------------------------------------------------------
R_SCRIPT = r"""
suppressPackageStartupMessages({library(lme4); library(jsonlite)})
args <- commandArgs(trailingOnly = TRUE)
d <- read.csv(args[1], stringsAsFactors = TRUE)
f <- as.formula(args[2])
invisible(gc(reset = TRUE))
tm <- system.time(m <- lmer(f, d, REML = TRUE))
mem <- sum(gc()[, 6])
tight <- lmer(f, d, REML = TRUE,
              control = lmerControl(optimizer = "bobyqa", optCtrl = list(rhoend = 1e-10)))
cat(toJSON(list(seconds = tm[["elapsed"]], cpu_seconds = tm[["user.self"]] + tm[["sys.self"]],
                evaluations = m@optinfo$feval, peak_mb = mem, names = names(fixef(m)),
                beta = unname(fixef(m)), loglik = as.numeric(logLik(m)),
                tight_beta = unname(fixef(tight)), tight_loglik = as.numeric(logLik(tight)),
                tight_evaluations = tight@optinfo$feval, optimizer = m@optinfo$optimizer,
                lme4 = as.character(packageVersion("lme4"))),
           digits = NA, auto_unbox = TRUE), "\n")
"""


def run_lme4(case: str, path: str, timeout: float) -> dict:
    return run_rscript(R_SCRIPT, [path, FORMULAS[case]], timeout)


# ----------------------------------------------------------------------------------------------
# Table
# ----------------------------------------------------------------------------------------------


def table(results: list[dict]) -> str:
    head = ("| case | rows | method | time (s) | CPU (s) | vs lme4 | evaluations | peak MB | "
            "max abs Δβ vs lme4 (bobyqa 1e-10) | Δ loglik | note |")
    lines = [head, "|" + "---|" * 11]
    for r in results:
        ref = r["reference"]
        for m in r["methods"]:
            if "error" in m:
                lines.append(f"| {r['label']} | {r['rows']:,} | {m['method']} | — | — | — | — |"
                             f" — | — | — | {m['error']} |")
                continue
            ratio = (m["seconds"] / ref["seconds"]) if ref and "seconds" in ref else None
            dbeta = dll = None
            if ref and "tight_beta" in ref and len(m["beta"]) == len(ref["tight_beta"]):
                dbeta = max(abs(a - b) for a, b in zip(m["beta"], ref["tight_beta"]))
                dll = m["loglik"] - ref["tight_loglik"]
            note = ""
            if m["method"] == "sparse_ldl":
                note = (f"{m['q']:,} random effects; trailing block of 'sparse' would be "
                        f"{m['trailing']:,}; factor nnz {m['nnz_factor']:,}")
            elif m["method"] == "lme4":
                note = (f"default optimiser ({m['optimizer']}); bobyqa 1e-10 took "
                        f"{m['tight_evaluations']} evaluations")
            ratio_s = f"{ratio:.2f}×" if ratio is not None else "—"
            lines.append(
                f"| {r['label']} | {r['rows']:,} | {m['method']} | {m['seconds']:.2f} | "
                f"{_fmt(m.get('cpu_seconds'), '.2f')} | {ratio_s} | {_fmt(m.get('evaluations'))}"
                f" | {m['peak_mb']:.0f} | {_fmt(dbeta, '.1e')} | {_fmt(dll, '.1e')} | {note} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default=str(HERE / "results" / "bigcrossed"))
    p.add_argument("--timeout", type=float, default=900.0)
    p.add_argument("--sizes", nargs="*", default=SIZES)
    p.add_argument("--cases", nargs="*", default=list(FORMULAS))
    p.add_argument("--methods", nargs="*", default=["sparse_ldl", "lme4"] + PEERS)
    p.add_argument("--child", nargs=3, metavar=("METHOD", "CASE", "PATH"))
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(_child(*args.child)))
        return 0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for size in args.sizes:
        at_random = size.endswith("r")
        n_p, n_t = (int(v) for v in size.rstrip("r").split("x"))
        path = out / f"{'random' if at_random else 'site'}_crossed_{n_p}x{n_t}.csv"
        if not path.exists():
            site_crossed(n_p, n_t, per_site=n_t if at_random else 20).to_csv(path, index=False)
        rows = sum(1 for _ in open(path)) - 1
        for case in args.cases:
            methods = []
            for method in args.methods:
                res = run_lme4(case, str(path), args.timeout) if method == "lme4" else \
                    run_child(method, case, str(path), args.timeout)
                methods.append(res)
                print(json.dumps({"size": size, "case": case, **{k: v for k, v in res.items()
                                                               if "beta" not in k}}), flush=True)
            ref = next((m for m in methods if m["method"] == "lme4" and "error" not in m), None)
            label = f"{case}, {n_p:,} × {n_t:,}" + (" at random" if at_random else "")
            results.append({"label": label, "rows": rows,
                            "methods": methods, "reference": ref,
                            "load": os.getloadavg()})
    (out / "results.json").write_text(json.dumps(results, indent=1))
    print(table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
