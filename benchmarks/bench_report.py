"""Speed and memory of the QI report at registry scale.

For each size the simulator writes a study of about that many readings as CSV; in a fresh
process the study is loaded with ``load_study`` and the report is written with
``build_report`` (all sites, all periods, the default measure). The table gives readings, the
seconds of the load and of the report (wall clock, and the CPU time of the process and of the
child process that builds the other scopes' counts, best of --reps), the peak memory added
(RSS high-water mark minus RSS after imports) and the child's peak RSS (its pages are the
parent's, shared, until it writes to them, so this overstates what it adds).

``--compare DIR`` runs the same in the same session with the ``mfr_outcomes`` package found in
DIR (for example an export of an older commit: ``git archive REV mfr_outcomes | tar -x -C DIR``),
so the two columns share the machine's load: only their ratio means something on a shared
machine.

    python benchmarks/bench_report.py --readings 200000 1000000 2000000 --out benchmarks/results

``--cli REPS`` also runs the whole command ``mfr-outcomes report`` in fresh processes and splits
its time into phases (imports, reading, validation and typing, the report; inside the report the
optimisers, the figures, the CSV tables and the HTML), wall clock and CPU time of each.

    python benchmarks/bench_report.py --readings 2000000 --cli 3
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

#: Readings a simulated patient has on average with the simulator's defaults (all measures).
READINGS_PER_PATIENT = 131

_RUN = textwrap.dedent("""
    import json, os, resource, sys, time, warnings
    warnings.simplefilter("ignore")
    import matplotlib
    matplotlib.use("Agg")
    import mfr_outcomes as mfr
    from mfr_outcomes.report import build_report
    import mfr_outcomes.plots  # imported before the baseline, as any report needs it
    src, out, reps = sys.argv[1], sys.argv[2], int(sys.argv[3])
    def rss():
        return int(open("/proc/self/status").read().split("VmRSS:")[1].split()[0]) / 1024
    base = rss()
    res = {"load": [], "report": [], "report_cpu": []}
    for r in range(reps):
        t = time.perf_counter(); study = mfr.load_study(src)
        res["load"].append(time.perf_counter() - t)
        t, c = time.perf_counter(), os.times()
        build_report(study, f"{out}/{r}")
        res["report"].append(time.perf_counter() - t)
        e = os.times()  # this process and the child that builds the other scopes' counts
        res["report_cpu"].append(sum(e[:4]) - sum(c[:4]))
        rows = len(study.measurements); del study
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    child = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(json.dumps({k: min(v) for k, v in res.items()} | {"peak_mb": peak - base,
                                                             "child_peak_mb": child,
                                                             "rows": rows}))
""")


#: The whole ``mfr-outcomes report`` command in a fresh process, its time split into phases by
#: wrapping the functions that do them (wall clock and CPU time of each, summed over calls).
_CLI = textwrap.dedent("""
    import time
    t0, c0 = time.perf_counter(), time.process_time()
    import json, sys, warnings
    phases = {}
    def wrap(owner, name, label):
        fn = getattr(owner, name)
        def timed(*a, **k):
            t, c = time.perf_counter(), time.process_time()
            try:
                return fn(*a, **k)
            finally:
                p = phases.setdefault(label, [0.0, 0.0])
                p[0] += time.perf_counter() - t
                p[1] += time.process_time() - c
        setattr(owner, name, timed)
    import mfr_outcomes.cli, mfr_outcomes.io as mio, mfr_outcomes.report as rep
    import mfr_outcomes.report.builder as builder, mfr_outcomes.report.context as ctx
    import mfr_outcomes.models.fit as mfit, mfr_outcomes.models.glmm_api as gapi
    import mfr_outcomes.plots, matplotlib.pyplot  # noqa: F401 (imported by any report)
    phases["imports"] = [time.perf_counter() - t0, time.process_time() - c0]
    wrap(mio, "read_tables", "read files")
    wrap(mio, "build_study", "validate and type")
    wrap(rep, "build_report", "report (all of it)")
    wrap(mfit, "fit_engine", "report: mixed-model optimisation and checks")
    wrap(mfit, "verify_optimum", "report: of which verifying the optimum")
    wrap(gapi, "fit_glmm", "report: GLMM optimisation")
    wrap(ctx.ReportContext, "figure", "report: figures (draw and PNG)")
    import matplotlib.figure
    wrap(matplotlib.figure.Figure, "savefig", "report: of which savefig (layout, PNG)")
    wrap(builder, "_write_tables", "report: CSV tables (ledger decided)")
    wrap(builder, "render_html", "report: HTML")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        code = mfr_outcomes.cli.main(["report", sys.argv[1], "--out", sys.argv[2]])
    phases["total"] = [time.perf_counter() - t0, time.process_time() - c0]
    print(json.dumps({"code": code, "phases": phases}))
""")


def _write(readings: int, folder: Path, seed: int) -> int:
    from mfr_outcomes.synthetic import generate_frames

    frames, _ = generate_frames(n_patients=max(10, round(readings / READINGS_PER_PATIENT)),
                                seed=seed)
    folder.mkdir(parents=True)
    for name, frame in frames.items():
        frame.to_csv(folder / f"{name}.csv", index=False)
    return len(frames["measurements"])


def _run(src: Path, out: Path, reps: int, package: str | None) -> dict:
    env = dict(os.environ, MPLBACKEND="Agg", PYTHONHASHSEED="0")
    if package:
        env["PYTHONPATH"] = os.pathsep.join([package, env.get("PYTHONPATH", "")])
    res = subprocess.run([sys.executable, "-c", _RUN, str(src), str(out), str(reps)],
                         capture_output=True, text=True, check=True, env=env,
                         cwd=src.parent)  # not the checkout: it would shadow PYTHONPATH
    return json.loads(res.stdout.strip().splitlines()[-1])


def _cli(src: Path, out: Path, reps: int, package: str | None = None) -> dict:
    """Best of *reps* runs of the whole command (fresh processes): the run with the least
    total wall clock, its phases, and the whole process's wall clock seen from outside."""
    import time

    env = dict(os.environ, MPLBACKEND="Agg", PYTHONHASHSEED="0")
    if package:
        env["PYTHONPATH"] = os.pathsep.join([package, env.get("PYTHONPATH", "")])
    best: dict | None = None
    for r in range(reps):
        t = time.perf_counter()
        res = subprocess.run([sys.executable, "-c", _CLI, str(src), str(out / f"cli{r}")],
                             capture_output=True, text=True, check=True, env=env, cwd=src.parent)
        got = json.loads(res.stdout.strip().splitlines()[-1])
        got["process"] = time.perf_counter() - t
        if best is None or got["process"] < best["process"]:
            best = got
    assert best is not None
    return best


def cli_markdown(readings: int, got: dict) -> str:
    lines = [f"Whole command `mfr-outcomes report` on {readings:,} readings (fresh process; "
             f"{got['process']:.1f} s seen from outside)", "",
             "| phase | wall (s) | CPU (s) |", "|---|---:|---:|"]
    for name, (wall, cpu) in got["phases"].items():
        lines.append(f"| {name} | {wall:.2f} | {cpu:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--readings", type=int, nargs="+", default=[200_000, 1_000_000, 2_000_000])
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--compare", help="folder holding another mfr_outcomes package")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    ap.add_argument("--cli", type=int, default=0, metavar="REPS",
                    help="also time the whole `mfr-outcomes report` command by phase, best of "
                         "REPS fresh processes")
    args = ap.parse_args(argv)
    rows = []
    for n in args.readings:
        with tempfile.TemporaryDirectory() as tmp:
            got = _write(n, Path(tmp) / "study", args.seed)
            for label, package in (("this", None), ("compare", args.compare)):
                if not args.cli or (label == "compare" and not package):
                    continue
                whole = _cli(Path(tmp) / "study", Path(tmp), args.cli, package)
                print(f"[{label}] " + cli_markdown(got, whole), flush=True)
                args.out.mkdir(parents=True, exist_ok=True)
                (args.out / f"bench_report_cli_{label}_{got}.json").write_text(
                    json.dumps(whole, indent=1))
            for label, package in (("this", None), ("compare", args.compare)):
                if label == "compare" and not package:
                    continue
                r = _run(Path(tmp) / "study", Path(tmp) / f"out-{label}", args.reps, package)
                r.update(code=label, target=n, readings=got)
                rows.append(r)
                print(json.dumps(r), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench_report.json").write_text(json.dumps(rows, indent=1))
    print("\n| readings | code | load s | report s | report CPU s | peak MB | child peak MB |")
    print("|---:|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['readings']:,} | {r['code']} | {r['load']:.1f} | {r['report']:.1f} | "
              f"{r['report_cpu']:.1f} | {r['peak_mb']:.0f} | "
              f"{r.get('child_peak_mb', 0):.0f} |")


if __name__ == "__main__":
    main()
