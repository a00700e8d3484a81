"""The Tune driver of a sweep job, as a child process of the job on node 0.

    python -m cluster.tune_driver STUDY SCALE SWEEP_DIR --ray-address HOST:PORT --summary FILE

It runs (or resumes) the sweep against the job's Ray cluster and writes the summary to FILE. It is
a child, not the job process itself, so that a preemption can stop it the graceful way: SIGUSR1
makes Tune stop, save its experiment state one last time and return (see cluster/job.py).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    """The driver child: run (or resume) the sweep against the job's Ray cluster."""
    parser = argparse.ArgumentParser(prog="python -m cluster.tune_driver", description=main.__doc__)
    parser.add_argument("study")
    parser.add_argument("scale")
    parser.add_argument("sweep_dir")
    parser.add_argument("--ray-address", required=True)
    parser.add_argument("--summary", type=Path, required=True)
    args = parser.parse_args(argv)
    # Until Tune installs its own SIGUSR1 handler (a graceful stop), the stop is immediate:
    # nothing has run yet that the next run of the job would not redo.
    signal.signal(signal.SIGUSR1, lambda signum, frame: sys.exit(3))
    from sweeps.driver import run_sweep

    summary = run_sweep(args.study, args.scale, args.sweep_dir, ray_address=args.ray_address)
    print(json.dumps(summary, indent=2), flush=True)
    args.summary.write_text(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
