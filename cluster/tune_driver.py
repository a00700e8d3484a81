"""The Tune driver of a sweep job, as a child process of the job on node 0.

    python -m cluster.tune_driver STUDY SCALE SWEEP_DIR [KEY=VALUE...] --ray-address HOST:PORT
        --summary FILE

It runs the sweep's unfinished points against the job's Ray cluster (sweeps.driver.run_sweep),
writes the summary to FILE and exits as `python -m sweeps run` does: 0 every point finished, 1 some
point failed or is unfinished, 3 another driver holds the sweep directory. It is a child, not the
job process itself, so that a preemption can stop it the graceful way: SIGUSR1 makes Tune stop and
return (see cluster/job.py).
"""

from __future__ import annotations

import argparse
import json
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
    parser.add_argument("config", nargs="*", help="overrides of the study's base config")
    args = parser.parse_intermixed_args(argv)
    # Until Tune installs its own SIGUSR1 handler (a graceful stop), the stop is immediate:
    # nothing has run yet that the next run of the job would not redo.
    signal.signal(signal.SIGUSR1, lambda signum, frame: sys.exit(3))
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
