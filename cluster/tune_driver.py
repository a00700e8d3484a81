"""The Tune driver of a sweep job, as a child process of the job on node 0.

    python -m cluster.tune_driver STUDY SCALE SWEEP_DIR [KEY=VALUE...] --ray-address HOST:PORT
        --summary FILE

It runs the sweep's driver as a Ray job on the job's Ray head (sweeps.ray_job: the dashboard lists
it under Jobs, as `<sweep dir name>-<time>`, with its live log), follows the job's log into the
SLURM log, and exits as `python -m sweeps run` does: 0 every point finished, 1 some point failed or
is unfinished, 3 another driver holds the sweep directory. The job's entrypoint is this command
with `--in-job`: it runs the sweep's unfinished points against the cluster
(sweeps.driver.run_sweep) and writes the summary to FILE. This process is a child, not the job
process itself, so that a preemption can stop the driver the graceful way: SIGUSR1 here stops the
Ray job, whose driver gets SIGINT, Tune's graceful stop (see cluster/job.py, sweeps/ray_job.py).
"""

from __future__ import annotations

import argparse
import json
import shlex
import signal
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    """The driver child: run the sweep against the job's Ray cluster."""
    parser = argparse.ArgumentParser(prog="python -m cluster.tune_driver", description=main.__doc__)
    parser.add_argument("study")
    parser.add_argument("scale")
    parser.add_argument("sweep_dir")
    parser.add_argument("--ray-address", required=True)
    parser.add_argument("--summary", type=Path, required=True)
    parser.add_argument("--extend", action="store_true")
    parser.add_argument("--in-job", action="store_true", help="the Ray job: run the driver here")
    parser.add_argument("config", nargs="*", help="overrides of the study's base config")
    args = parser.parse_intermixed_args(argv)
    if not args.in_job:
        from sweeps.ray_job import run_driver_job, submission_id

        command = [sys.executable, "-m", "cluster.tune_driver", *(argv or sys.argv[1:])]
        job = submission_id(Path(args.sweep_dir).name)
        metadata = {"study": args.study, "scale": args.scale, "sweep_dir": args.sweep_dir}
        return run_driver_job(args.ray_address, shlex.join([*command, "--in-job"]), job, metadata)
    # Until Tune installs its own SIGINT handler (a graceful stop), the stop is immediate:
    # nothing has run yet that the next run of the job would not redo.
    signal.signal(signal.SIGINT, lambda signum, frame: sys.exit(3))
    from sweeps.driver import exit_code, parse_config_overrides, run_sweep
    from sweeps.lock import SweepLocked

    try:
        summary = run_sweep(
            args.study,
            args.scale,
            args.sweep_dir,
            ray_address=args.ray_address,
            extend=args.extend,
            overrides=parse_config_overrides(args.study, args.scale, args.config),
        )
    except SweepLocked as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        return 3
    print(json.dumps(summary, indent=2), flush=True)
    args.summary.write_text(json.dumps(summary))
    return exit_code(summary)


if __name__ == "__main__":
    sys.exit(main())
