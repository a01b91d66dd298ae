"""Scale of the data layer and of the out-of-memory fits.

Data layer: for each size, the synthetic study is written as CSV and as Parquet; in a fresh process
each, the three files are read with Arrow alone (the floor), and then loaded with ``load_study``
(read, validate, type). The table gives rows, source kind, seconds (best of --reps), the peak
memory added by the load (RSS high-water mark minus RSS after imports) and the ratio to Arrow.

Out of memory: ``fit_mixed`` on a Dask DataFrame on a local cluster (workers, partitions,
seconds, largest difference of β̂ from the in-memory fit) and on a Parquet source inside DuckDB.

    python benchmarks/bench_data.py --patients 2000 10000 15000 --out benchmarks/results
"""
from __future__ import annotations

import argparse
import json
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
    src, kind, reps = sys.argv[1], sys.argv[2], int(sys.argv[3])
    def rss():
        return int(open("/proc/self/status").read().split("VmRSS:")[1].split()[0]) / 1024
    def arrow():
        t = time.perf_counter()
        for k in ("patients", "sessions", "measurements"):
            if kind == "csv":
                pacsv.read_csv(f"{src}/{k}.csv")
            else:
                pq.read_table(f"{src}/{k}.parquet")
        return time.perf_counter() - t
    ta = min(arrow() for _ in range(reps))
    base = rss()
    tl = []
    for _ in range(reps):
        t = time.perf_counter(); s = mio.load_study(src); tl.append(time.perf_counter() - t)
        rows = len(s.measurements); del s
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"arrow": ta, "load": min(tl), "peak_mb": peak - base, "rows": rows}))
""")


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


def data_layer(sizes: list[int], reps: int, seed: int) -> list[dict]:
    out = []
    for n in sizes:
        with tempfile.TemporaryDirectory() as tmp:
            mb = _write(n, Path(tmp), seed)
            for kind in ("csv", "parquet"):
                res = subprocess.run([sys.executable, "-c", _LOAD, str(Path(tmp) / kind), kind,
                                      str(reps)], capture_output=True, text=True, check=True)
                r = json.loads(res.stdout.strip().splitlines()[-1])
                r.update(kind=kind, patients=n, size_mb=mb[kind], ratio=r["load"] / r["arrow"],
                         peak_over_size=r["peak_mb"] / mb["csv"])
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
    lines = ["| patients | readings | source | size (MB) | Arrow read (s) | load_study (s) | "
             "ratio | peak added (MB) | peak / CSV size |", "|---:|---:|---|---:|---:|---:|---:|"
             "---:|---:|"]
    for r in data:
        lines.append(f"| {r['patients']:,} | {r['rows']:,} | {r['kind']} | {r['size_mb']:.1f} | "
                     f"{r['arrow']:.3f} | {r['load']:.2f} | {r['ratio']:.1f} | "
                     f"{r['peak_mb']:.0f} | {r['peak_over_size']:.1f} |")
    lines += ["", "| workers | partitions | rows | seconds | max abs difference of β̂ |",
              "|---:|---:|---:|---:|---:|"]
    for r in dask_rows:
        label = "in memory" if r["workers"] == 0 else str(r["workers"])
        lines.append(f"| {label} | {r['partitions']} | {r['rows']:,} | {r['seconds']:.2f} | "
                     f"{r['max_diff']:.1e} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--patients", type=int, nargs="+", default=[2_000, 10_000, 15_000])
    p.add_argument("--reps", type=int, default=2)
    p.add_argument("--dask-patients", type=int, default=2_000)
    p.add_argument("--workers", type=int, nargs="*", default=[1, 2])
    p.add_argument("--partitions", type=int, nargs="*", default=[4, 16])
    p.add_argument("--seed", type=int, default=2026)
    p.add_argument("--out", default="benchmarks/results")
    args = p.parse_args(argv)
    data = data_layer(args.patients, args.reps, args.seed)
    dask_rows = dask_table(args.dask_patients, args.workers, args.partitions, args.seed) \
        if args.workers else []
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "data_layer.md").write_text(markdown(data, dask_rows), encoding="utf-8")
    (out / "data_layer.json").write_text(json.dumps({"data": data, "dask": dask_rows}, indent=1),
                                         encoding="utf-8")
    print(markdown(data, dask_rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
