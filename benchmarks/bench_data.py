"""Scale of the data layer and of the out-of-memory fits.

Data layer: for each size, the synthetic study is written as CSV and as Parquet; in a fresh process
each, the three files are read with Arrow alone (the floor), and then loaded with ``load_study``
(read, validate, type). The table gives rows, source kind, seconds (best of --reps), the ratio
to Arrow's read in wall clock and in CPU time (the process's, all threads: less moved by other
processes on a loaded machine than the wall clock), and the peak memory added by the load (RSS
high-water mark minus RSS after imports and Arrow's reads).

Registry scale (``--registry``, readings): a registry written as Parquet by DuckDB (rows never in
pandas; 8 visits a patient, pre and post of two measures, four techniques, twelve therapists),
then in a fresh process each: Arrow's read of the three files (the floor), ``validate(...,
engine="duckdb")`` (the rules as SQL), ``load_study`` in memory (up to ``--memory-max``
readings), and ``fit_prepost`` on a ``ScaleStudy`` kept in DuckDB (validation included): seconds,
peak memory added (RSS high-water mark minus RSS after imports) and the ratio to Arrow's read.

Out of memory: ``fit_mixed`` on a Dask DataFrame on a local cluster (workers, partitions,
seconds, largest difference of β̂ from the in-memory fit) and on a Parquet source inside DuckDB.

    python benchmarks/bench_data.py --patients 2000 10000 15000 --out benchmarks/results
    python benchmarks/bench_data.py --patients 10000 --reps 3 --workers --threads 1 2
    python benchmarks/bench_data.py --patients --registry 1000000 5000000 20000000 --workers
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

FORMULA = "value ~ post * technique + session_number + (post | patient_id)"

_LOAD = textwrap.dedent("""
    import json, resource, sys, time, warnings
    warnings.simplefilter("ignore")
    import pyarrow.csv as pacsv, pyarrow.parquet as pq
    import mfr_outcomes.io as mio
    src, kind, reps, what = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    def run():
        if what == "validate":  # the validate command's work: the report, no Study kept
            report = mio.validate(src, engine="memory")
            return report.accounting["measurements"].used
        return len(mio.load_study(src).measurements)
    def rss():
        return int(open("/proc/self/status").read().split("VmRSS:")[1].split()[0]) / 1024
    def arrow():
        t, c = time.perf_counter(), time.process_time()
        for k in ("patients", "sessions", "measurements"):
            if kind == "csv":
                pacsv.read_csv(f"{src}/{k}.csv")
            else:
                pq.read_table(f"{src}/{k}.parquet")
        return time.perf_counter() - t, time.process_time() - c
    ta = [arrow() for _ in range(reps)]
    base = rss()
    tl = []
    for _ in range(reps):
        t, c = time.perf_counter(), time.process_time()
        rows = run()
        tl.append((time.perf_counter() - t, time.process_time() - c))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"arrow": min(a for a, _ in ta), "load": min(w for w, _ in tl),
                      "arrow_cpu": min(c for _, c in ta), "load_cpu": min(c for _, c in tl),
                      "peak_mb": peak - base, "rows": rows}))
""")


_REGISTRY = textwrap.dedent("""
    import json, resource, sys, time, tracemalloc, warnings
    warnings.simplefilter("ignore")
    import pyarrow.parquet as pq
    import mfr_outcomes as mfr
    from mfr_outcomes.io import validate
    from mfr_outcomes.scale.study_scale import ScaleStudy
    src, what = sys.argv[1], sys.argv[2]
    def rss():
        return int(open("/proc/self/status").read().split("VmRSS:")[1].split()[0]) / 1024
    base = rss()
    formula = ""
    tracemalloc.start()
    t = time.perf_counter()
    if what == "arrow":
        n = sum(pq.read_table(f"{src}/{k}.parquet").num_rows for k in ("measurements",))
        for k in ("patients", "sessions"):
            pq.read_table(f"{src}/{k}.parquet")
    elif what == "validate":
        n = validate(src, engine="duckdb").accounting["measurements"].used
    elif what == "load_study":
        n = len(mfr.load_study(src).measurements)
    else:
        study = ScaleStudy.from_duckdb(src)
        fit = mfr.fit_prepost(study, "pain_nrs")
        n, formula = int(fit.nobs), fit.formula
    sec = time.perf_counter() - t
    py_peak = tracemalloc.get_traced_memory()[1] / 2**20
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": sec, "peak_mb": peak - base, "python_peak_mb": py_peak,
                      "rss_peak_mb": peak, "rows": n, "formula": formula}))
""")


def write_registry(folder: Path, readings: int) -> dict[str, float]:
    """A registry of about *readings* readings as Parquet, written by DuckDB (no pandas)."""
    import duckdb

    patients = max(readings // 32, 10)
    folder.mkdir(parents=True)
    q = lambda name: str(folder / f"{name}.parquet")  # noqa: E731
    con = duckdb.connect()
    con.execute(f"""COPY (SELECT 'P' || i AS patient_id, 'site-' || (i % 7) AS site_id,
        20 + i % 60 AS age_years, CASE WHEN i % 2 = 0 THEN 'female' ELSE 'male' END AS sex,
        'sciatica' AS condition, DATE '2024-01-01' AS enrolled_on
        FROM range({patients}) t(i)) TO '{q("patients")}'""")
    con.execute(f"""COPY (SELECT 'S' || i || '-' || k AS session_id, 'P' || i AS patient_id,
        'T' || ((i + k // 4) % 12) AS therapist_id,
        DATE '2024-01-02' + CAST(7 * k AS INTEGER) AS session_date, k + 1 AS session_number,
        (['direct_pressure', 'stretching', 'massage', 'combined'])[1 + (i % 4)] AS technique,
        30.0 AS duration_min FROM range({patients}) a(i), range(8) b(k)) TO '{q("sessions")}'""")
    con.execute(f"""COPY (SELECT 'S' || i || '-' || k AS session_id, ph AS phase, ms AS measure,
        'none' AS side, greatest(0, least(10, round(6 - 0.2 * k - CASE WHEN ph = 'post' THEN
        1 + 0.1 * (i % 4) ELSE 0 END + (hash(i) % 200) / 100.0 + (hash(i * 131 + k * 7 + length(ph)
        + length(ms)) % 100) / 100.0))) AS value
        FROM range({patients}) a(i), range(8) b(k), (VALUES ('pre'), ('post')) c(ph),
        (VALUES ('pain_nrs'), ('leg_pain_nrs')) d(ms)) TO '{q("measurements")}'""")
    con.close()
    return {"parquet": sum(f.stat().st_size for f in folder.iterdir()) / 2**20}


STEPS = ("arrow", "validate", "load_study", "fit_prepost")


def registry_table(sizes: list[int], memory_max: int, steps: tuple[str, ...] = STEPS
                   ) -> list[dict]:
    out = []
    for n in sizes:
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp) / "registry"
            mb = write_registry(folder, n)
            arrow = None
            for what in ("arrow", *[s for s in steps if s != "arrow"]):
                if what == "load_study" and n > memory_max:
                    continue
                res = subprocess.run([sys.executable, "-c", _REGISTRY, str(folder), what],
                                     capture_output=True, text=True, check=True)
                r = json.loads(res.stdout.strip().splitlines()[-1])
                arrow = r["seconds"] if what == "arrow" else arrow
                r.update(what=what, readings=n, size_mb=mb["parquet"],
                         ratio=r["seconds"] / arrow)
                out.append(r)
                print(r, flush=True)
    return out


def registry_markdown(rows: list[dict]) -> str:
    lines = ["| readings | Parquet (MB) | what | seconds | ratio to Arrow | peak RSS added (MB) "
             "| peak Python (tracemalloc, MB) |", "|---:|---:|---|---:|---:|---:|---:|"]
    names = {"arrow": "Arrow read (floor)", "validate": "validate, engine duckdb",
             "load_study": "load_study (in memory)",
             "fit_prepost": "ScaleStudy.from_duckdb + fit_prepost"}
    for r in rows:
        lines.append(f"| {r['readings']:,} | {r['size_mb']:.0f} | {names[r['what']]} | "
                     f"{r['seconds']:.1f} | {r['ratio']:.1f} | {r['peak_mb']:.0f} | "
                     f"{r.get('python_peak_mb', float('nan')):.0f} |")
    return "\n".join(lines) + "\n"


def _write(n_patients: int, folder: Path, seed: int) -> dict[str, float]:
    from mfr_outcomes.synthetic import generate_frames

    frames, _ = generate_frames(n_patients=n_patients, seed=seed)
    (folder / "csv").mkdir(parents=True)
    (folder / "parquet").mkdir()
    for name, frame in frames.items():
        frame.to_csv(folder / "csv" / f"{name}.csv", index=False)
        frame.to_parquet(folder / "parquet" / f"{name}.parquet", index=False)
    return {kind: sum(f.stat().st_size for f in (folder / kind).iterdir()) / 2**20
            for kind in ("csv", "parquet")}


def data_layer(sizes: list[int], reps: int, seed: int, threads: list[str] | None = None,
               whats: tuple[str, ...] = ("load_study",)) -> list[dict]:
    """One row a size, source kind, thread count (``MFR_OUTCOMES_THREADS``; "" = the
    default) and call (``load_study``, or ``validate`` with ``engine="memory"``), with the
    1-minute load average when the row was measured."""
    out = []
    for n in sizes:
        with tempfile.TemporaryDirectory() as tmp:
            mb = _write(n, Path(tmp), seed)
            for kind, th, what in [(k, t, w) for k in ("csv", "parquet")
                                   for t in (threads or [""]) for w in whats]:
                env = dict(os.environ)
                env.pop("MFR_OUTCOMES_THREADS", None)
                if th:
                    env["MFR_OUTCOMES_THREADS"] = th
                res = subprocess.run([sys.executable, "-c", _LOAD, str(Path(tmp) / kind), kind,
                                      str(reps), what], capture_output=True, text=True,
                                     check=True,
                                     env=env)
                r = json.loads(res.stdout.strip().splitlines()[-1])
                r.update(kind=kind, patients=n, size_mb=mb[kind], ratio=r["load"] / r["arrow"],
                         cpu_ratio=r["load_cpu"] / r["arrow_cpu"],
                         peak_over_size=r["peak_mb"] / mb["csv"], threads=th or "default", what=what,
                         loadavg=os.getloadavg()[0])
                out.append(r)
                print(f"{n} patients, {kind}: {r}", flush=True)
    return out


def dask_table(patients: int, workers: list[int], partitions: list[int], seed: int) -> list[dict]:
    import dask.dataframe as dd
    import distributed
    import numpy as np

    from mfr_outcomes.models.fit import fit_mixed
    from mfr_outcomes.study import analysis_frame
    from mfr_outcomes.synthetic import generate_frames

    f, _ = generate_frames(n_patients=patients, seed=seed, measures=["pain_nrs"])
    frame = analysis_frame(f["patients"], f["sessions"], f["measurements"], "pain_nrs")
    frame = frame[frame["technique"].astype(str) != "none"].reset_index(drop=True)
    t = time.perf_counter()
    ref = fit_mixed(frame, FORMULA)
    t_mem = time.perf_counter() - t
    out = [{"workers": 0, "partitions": 1, "seconds": t_mem, "max_diff": 0.0,
            "rows": len(frame)}]
    for w in workers:
        cluster = distributed.LocalCluster(n_workers=w, threads_per_worker=1, processes=True,
                                           dashboard_address=None, silence_logs=40)
        with distributed.Client(cluster):
            fit_mixed(dd.from_pandas(frame.head(2000), npartitions=2), FORMULA)  # warm workers
            for k in partitions:
                ddf = dd.from_pandas(frame, npartitions=k)
                t = time.perf_counter()
                fit = fit_mixed(ddf, FORMULA)
                sec = time.perf_counter() - t
                diff = float(np.max(np.abs(fit.coef.to_numpy() - ref.coef.to_numpy())))
                out.append({"workers": w, "partitions": k, "seconds": sec, "max_diff": diff,
                            "rows": len(frame)})
                print(out[-1], flush=True)
        cluster.close()
    return out


def markdown(data: list[dict], dask_rows: list[dict]) -> str:
    lines = ["| patients | readings | source | threads | call | size (MB) | Arrow read (s) | "
             "call (s) | ratio | call CPU (s) | CPU ratio | peak added (MB) | "
             "peak / CSV size | load average |",
             "|---:|---:|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in data:
        lines.append(f"| {r['patients']:,} | {r['rows']:,} | {r['kind']} | "
                     f"{r.get('threads', 'default')} | {r.get('what', 'load_study')} | "
                     f"{r['size_mb']:.1f} | {r['arrow']:.3f} | "
                     f"{r['load']:.2f} | {r['ratio']:.1f} | {r['load_cpu']:.2f} | "
                     f"{r['cpu_ratio']:.1f} | {r['peak_mb']:.0f} | {r['peak_over_size']:.1f} | "
                     f"{r.get('loadavg', float('nan')):.1f} |")
    lines += ["", "| workers | partitions | rows | seconds | max abs difference of β̂ |",
              "|---:|---:|---:|---:|---:|"]
    for r in dask_rows:
        label = "in memory" if r["workers"] == 0 else str(r["workers"])
        lines.append(f"| {label} | {r['partitions']} | {r['rows']:,} | {r['seconds']:.2f} | "
                     f"{r['max_diff']:.1e} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--patients", type=int, nargs="*", default=[2_000, 10_000, 15_000])
    p.add_argument("--registry", type=int, nargs="*", default=[],
                   help="readings of DuckDB-written registries (e.g. 1000000 20000000)")
    p.add_argument("--steps", nargs="*", default=list(STEPS), choices=STEPS,
                   help="registry steps to run (Arrow's read always runs: the floor)")
    p.add_argument("--memory-max", type=int, default=2_000_000,
                   help="largest registry also loaded in memory with load_study")
    p.add_argument("--reps", type=int, default=2)
    p.add_argument("--dask-patients", type=int, default=2_000)
    p.add_argument("--workers", type=int, nargs="*", default=[1, 2])
    p.add_argument("--partitions", type=int, nargs="*", default=[4, 16])
    p.add_argument("--seed", type=int, default=2026)
    p.add_argument("--threads", nargs="*", default=[],
                   help="MFR_OUTCOMES_THREADS values to load with, one row each (default: "
                        "the variable unset)")
    p.add_argument("--calls", nargs="*", default=["load_study", "validate"],
                   choices=["load_study", "validate"],
                   help="what each data-layer row times: load_study, validate (in memory)")
    p.add_argument("--out", default="benchmarks/results")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.registry:
        reg = registry_table(args.registry, args.memory_max, tuple(args.steps))
        (out / "registry.md").write_text(registry_markdown(reg), encoding="utf-8")
        (out / "registry.json").write_text(json.dumps(reg, indent=1), encoding="utf-8")
        print(registry_markdown(reg))
    if not args.patients and not args.workers:
        return 0
    data = data_layer(args.patients, args.reps, args.seed, args.threads, tuple(args.calls))
    dask_rows = dask_table(args.dask_patients, args.workers, args.partitions, args.seed) \
        if args.workers else []
    (out / "data_layer.md").write_text(markdown(data, dask_rows), encoding="utf-8")
    (out / "data_layer.json").write_text(json.dumps({"data": data, "dask": dask_rows}, indent=1),
                                         encoding="utf-8")
    print(markdown(data, dask_rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
