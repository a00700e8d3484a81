"""The sweep layer's own load at the programme's scale, next to what the programme demands.

The null experiment (sweeps.loadtest: real run records at a paper-scale cloning run's cadence, no
compute) runs through the real driver (`sweeps.driver.run_sweep`, local Ray, the MLflow mirror in
its thread) over `--points` grid points, with Tune's reports throttled as in a real sweep. Then 2
points of 5,000 log calls run twice, throttled and with every log call reported to Tune: the extra
reports over the extra time are the driver's report capacity. The sweeps run without the mirror;
it is timed on its own, syncing `--mirror-points` finished records into a fresh store.
Then the MLflow mirror syncs a few finished records into a fresh store: its rows/s.

    python benchmarks/bench_sweeps.py                       # 2,000 points: ~30-60 min on 2 cores
    python benchmarks/bench_sweeps.py --scale bench200      # 200 points, a few minutes

Measured: points/s through the driver, the driver process's CPU seconds per point and peak
memory, files per run (the run record after completion) and Tune's files per trial, Tune reports/s
the driver takes, MLflow rows/s the mirror writes. Demand, from the studies' paper scales on 8
nodes x 8 GPUs: the trials running at once (each study's GPU share per trial), the reports/s they
send (one per trial per `REPORT_INTERVAL_S`), and the rows/s the mirror must write (each run's rows
over its duration; `--run-hours`, default 4: the short end of a cloning run on an A100 share).
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import tempfile
import time
from pathlib import Path

NODES, GPUS_PER_NODE = 8, 8


def _rows_and_logs_per_run(cfg) -> tuple[int, int]:
    """Rows and log calls of one null run (the cadence of a paper-scale cloning run)."""
    log_points = cfg.steps // cfg.log_every
    probes = sum(
        1
        for s in range(cfg.log_every, cfg.steps + 1, cfg.log_every)
        if s % cfg.probe_every < cfg.log_every
    )
    rows = log_points * cfg.splits * cfg.scalars + probes * cfg.probe_splits * cfg.probe_values
    return rows, log_points * cfg.splits + probes * cfg.probe_splits


def _files(folder: Path) -> int:
    return sum(1 for p in folder.rglob("*") if p.is_file())


def _driver_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scale", default="bench", help="a sweeps.loadtest scale")
    parser.add_argument("--mirror-points", type=int, default=5)
    parser.add_argument("--run-hours", type=float, default=4.0)
    parser.add_argument("--num-cpus", type=int, default=None)
    args = parser.parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

    from sweeps import loadtest
    from sweeps.driver import REPORT_INTERVAL_S, plan, run_sweep
    from sweeps.mirror import Mirror
    from sweeps.studies import STUDIES, get_study

    rows_per_run, logs_per_run = _rows_and_logs_per_run(loadtest.Config())
    root = Path(tempfile.mkdtemp(prefix="bench-sweeps-"))
    try:
        sweep_dir = root / "sweep"
        points = len(plan("sweeps.loadtest", args.scale))
        cpu0, t0 = _driver_cpu_s(), time.perf_counter()
        summary = run_sweep(
            "sweeps.loadtest",
            args.scale,
            sweep_dir,
            dashboard=False,
            num_cpus=args.num_cpus,
            mirror_interval_s=None,  # measured on its own below
        )
        wall, cpu = time.perf_counter() - t0, _driver_cpu_s() - cpu0
        assert summary["completed"] == points, summary
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        runs = sorted((sweep_dir / "runs").iterdir())
        files_per_run = sum(_files(r) for r in runs) / len(runs)
        tune_files = _files(sweep_dir / "tune") / len(runs)

        # capacity: the same points with every log call a Tune report, less the throttled run
        walls = []
        for interval in (REPORT_INTERVAL_S, 0.0):
            t0 = time.perf_counter()
            run_sweep(
                "sweeps.loadtest",
                "capacity",
                root / f"capacity-{interval:g}",
                dashboard=False,
                num_cpus=args.num_cpus,
                report_interval_s=interval,
                mirror_interval_s=None,
            )
            walls.append(time.perf_counter() - t0)
        capacity = plan("sweeps.loadtest", "capacity")
        one = loadtest.Config(**next(iter(capacity.values())))
        extra_reports = len(capacity) * (_rows_and_logs_per_run(one)[1] - 1)
        capacity = extra_reports / max(walls[1] - walls[0], 1e-9)

        # the mirror into a fresh store
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{root}/fresh.db"
        mirror = Mirror(sweep_dir)
        chosen = [r.name for r in runs[: args.mirror_points]]
        t0 = time.perf_counter()
        written = mirror.sync(chosen)
        mirror_rows_s = written["rows"] / (time.perf_counter() - t0)
        del os.environ["MLFLOW_TRACKING_URI"]
    finally:
        shutil.rmtree(root, ignore_errors=True)

    concurrent = 0.0
    for name in STUDIES:
        gpu = get_study(name).resources("paper").get("gpu", 0) or 1
        concurrent = max(concurrent, NODES * GPUS_PER_NODE / gpu)
    run_s = args.run_hours * 3600
    print(f"sweep layer at scale: null experiment, {points} points of {rows_per_run:,} rows and")
    print(f"  {logs_per_run:,} log calls each (a paper-scale cloning run's cadence), this machine")
    print(f"{'figure':44s} {'measured':>14s} {'demand':>14s}")
    demand_points = concurrent / run_s
    print(f"{'points finished /s':44s} {points / wall:14.2f} {demand_points:14.4f}")
    print(f"{'driver CPU s per point':44s} {cpu / points:14.3f} {'':>14s}")
    print(f"{'driver peak memory (MB)':44s} {peak_mb:14.0f} {'':>14s}")
    print(f"{'files per run record (after completion)':44s} {files_per_run:14.1f} {'':>14s}")
    print(f"{'Tune files per trial':44s} {tune_files:14.2f} {'':>14s}")
    demand_reports = concurrent / REPORT_INTERVAL_S
    print(f"{'Tune reports /s the driver takes':44s} {capacity:14.1f} {demand_reports:14.1f}")
    demand_rows = concurrent * rows_per_run / run_s
    print(f"{'MLflow mirror rows /s':44s} {mirror_rows_s:14.0f} {demand_rows:14.0f}")
    print(
        f"demand: {concurrent:.0f} trials at once on {NODES} x {GPUS_PER_NODE} GPUs, one report "
        f"per trial per {REPORT_INTERVAL_S:g} s, runs of {args.run_hours:g} h"
    )


if __name__ == "__main__":
    main()
