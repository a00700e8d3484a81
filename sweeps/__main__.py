"""`python -m sweeps run|resume|status|list [STUDY] --scale S --backend local|slurm`.

run      start the sweep, or finish it if the sweep directory already holds it
resume   finish an interrupted sweep (refuses when there is nothing to resume)
status   counts of the sweep's run records by status
list     the studies, their scales and their number of trials
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from sweeps.configs import count_grid
from sweeps.driver import TUNE_DIR, default_sweep_dir, resolved_space, run_sweep, sweep_status
from sweeps.studies import STUDIES, get_study


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m sweeps", description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=["run", "resume", "status", "list"])
    parser.add_argument("study", nargs="?", choices=STUDIES)
    parser.add_argument("--scale", default="smoke", help="smoke (default) or paper")
    parser.add_argument("--backend", default="local", choices=["local", "slurm"])
    parser.add_argument("--sweep-dir", type=Path, help="default: sweeps_out/<study>-<scale>")
    parser.add_argument("--no-dashboard", action="store_true", help="local Ray without dashboard")
    parser.add_argument("--profile", default="a100", help="SLURM resource profile (cluster/)")
    parser.add_argument("--nodes", type=int, default=1, help="SLURM nodes for the Ray cluster")
    parser.add_argument("--dry-run", action="store_true", help="SLURM: print the sbatch script")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "list":
        for name in STUDIES:
            study = get_study(name)
            counts = ", ".join(f"{s}: {count_grid(resolved_space(name, s))}" for s in study.SCALES)
            print(f"{name:16s} experiment={study.EXPERIMENT:10s} trials by scale: {counts}")
        return 0
    if args.study is None:
        print(f"error: {args.command} needs a study: {', '.join(STUDIES)}", file=sys.stderr)
        return 2
    sweep_dir = args.sweep_dir or default_sweep_dir(args.study, args.scale)
    if args.command == "status":
        print(json.dumps(sweep_status(sweep_dir), indent=2))
        return 0
    if args.command == "resume" and not (sweep_dir / TUNE_DIR).exists():
        print(f"error: nothing to resume in {sweep_dir}; use `run`", file=sys.stderr)
        return 2
    if args.backend == "slurm":
        from cluster import submit_sweep

        job = submit_sweep(
            args.study,
            args.scale,
            sweep_dir,
            profile=args.profile,
            nodes=args.nodes,
            dry_run=args.dry_run,
        )
        print(
            job if args.dry_run else f"submitted SLURM job {job.job_id}; logs: {job.paths.stdout}"
        )
        return 0
    summary = run_sweep(args.study, args.scale, sweep_dir, dashboard=not args.no_dashboard)
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (ValueError, FileNotFoundError) as err:  # bad study, scale, key, profile or sweep dir
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
