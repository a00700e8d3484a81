"""`python -m cluster submit STUDY --scale S ...`: a study's sweep as one SLURM job.

    python -m cluster submit cloning_noise --scale paper --nodes 4 --slurm partition=gpu \
        --slurm time=2-00:00:00 --slurm account=lop --requeue
    python -m cluster submit bitflip --scale paper --slurm partition=cpu --dry-run  # profile cpu
    python -m cluster submit continual --scale paper optimizer.lr=0.001 --sbatch reservation=x

The job runs the same driver as `python -m sweeps run` (sweeps.driver.run_sweep) on a Ray
cluster over its nodes, and requeues itself on preemption or at its time limit. Submitting refuses
(exit 3) while the sweep's previous job is still queued or running, or another driver holds the
sweep directory; a bad study, scale, key, profile or field fails before submitting (exit 2).
See docs/cluster.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cluster.launch import SweepBusy, submit_sweep
from core.run.cli import user_error
from sweeps.profiles import PROFILES


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m cluster", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    submit = commands.add_parser("submit", help="submit a study's sweep")
    submit.add_argument("study")
    submit.add_argument("--scale", default="smoke")
    submit.add_argument("--sweep-dir", type=Path, help="default: sweeps_out/<study>-<scale>")
    submit.add_argument(
        "--profile",
        help=f"one of {', '.join(PROFILES)} (default: a100 for GPU studies, cpu otherwise)",
    )
    submit.add_argument("--nodes", type=int, default=1)
    submit.add_argument(
        "--slurm",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="SLURM knob (repeatable): time, mem, partition, account, qos, constraint, "
        "gpus-per-node, cpus-per-task, or any submitit SlurmExecutor parameter",
    )
    submit.add_argument(
        "--sbatch",
        action="append",
        default=[],
        metavar="OPTION[=VALUE]",
        help="an extra #SBATCH --OPTION[=VALUE] line (repeatable)",
    )
    submit.add_argument(
        "--setup", action="append", default=[], metavar="LINE", help="a shell line before the job"
    )
    submit.add_argument(
        "--requeue", action="store_true", help="#SBATCH --requeue: SLURM may requeue the job"
    )
    submit.add_argument("--extend", action="store_true", help="as `python -m sweeps run`")
    submit.add_argument("--dry-run", action="store_true", help="print the sbatch script only")
    return parser


def main(argv: list[str] | None = None) -> int:
    from sweeps.driver import default_sweep_dir, parse_config_overrides

    parser = _parser()
    args, config = parser.parse_known_args(argv)  # the rest: KEY=VALUE config overrides
    unknown = [t for t in config if t.startswith("-") or "=" not in t]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    overrides = parse_config_overrides(args.study, args.scale, config)
    sweep_dir = args.sweep_dir or default_sweep_dir(args.study, args.scale, overrides)
    options = ("profile", "nodes", "dry_run", "extend", "slurm", "sbatch", "setup", "requeue")
    options = {name: getattr(args, name) for name in options}
    result = submit_sweep(args.study, args.scale, sweep_dir, config=config, **options)
    if args.dry_run:
        print(result)
    else:
        print(f"submitted SLURM job {result.job_id}; log: {result.paths.stdout}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except SweepBusy as err:
        user_error("python -m cluster", err, 3)
    except (ValueError, FileNotFoundError, RuntimeError) as err:
        user_error("python -m cluster", err)
