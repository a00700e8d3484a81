"""`python -m sweeps run|resume|status|list|mlflow-sync ...`: the paper's studies on local Ray.

plan STUDY [KEY=VALUE...]   the pre-flight, the grid points, axes, resources and the cost
                           (device-hours, wall time) on the target; runs nothing
run STUDY [KEY=VALUE...]    run the sweep's unfinished points (start, resume, retry failed points)
resume STUDY [KEY=VALUE...] the same, refusing when the sweep directory holds no sweep yet
status SWEEP_DIR|STUDY     the sweep's points by status (per grid axis too), each failed point
                           with its reason, each running point with its step and ETA
list               the studies, their scales and their number of grid points
mlflow-sync DIR    bring the sweep's MLflow mirror up to date with its run records
reset DIR POINT..  delete grid points' records and MLflow runs: the next run starts them afresh

Exit status: 0 every point finished (completed or diverged); 1 some point failed or is
unfinished (the summary says which and why); 2 a usage error (bad study, scale, key or value,
missing data, a changed grid without --extend); 3 another driver holds the sweep directory.
On SLURM, `python -m cluster submit STUDY ...` submits the same sweep (docs/cluster.md).

`run` and `resume` start a local Ray head and run the driver as a Ray job on it (the dashboard
lists it under Jobs with its live log, which is printed here too; Ctrl-C stops it), unless
`--no-dashboard` (the driver runs in this process) or `--ray-address` (this process is the driver,
against that cluster: what the job runs).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import sys
from pathlib import Path

from sweeps.configs import count_grid, is_grid
from sweeps.driver import (
    MANIFEST,
    default_sweep_dir,
    exit_code,
    load_study,
    parse_config_overrides,
    plan,
    point_configs,
    reset_points,
    resolved_space,
    run_points,
    run_sweep,
    summarize,
)
from sweeps.lock import SweepLock, SweepLocked
from sweeps.studies import STUDIES, get_study

EXIT_USAGE = 2
EXIT_LOCKED = 3


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m sweeps",
        description=__doc__.split("\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n", 2)[2],
    )
    commands = parser.add_subparsers(dest="command", required=True)
    for name in ("plan", "run", "resume", "status"):
        sub = commands.add_parser(name)
        sub.add_argument(
            "study",
            help=f"{', '.join(STUDIES)} (or a study's module path: sweeps.loadtest)"
            + ("; or the sweep directory" if name == "status" else ""),
        )
        sub.add_argument("--scale", default="smoke", help="smoke (default), paper, ...")
        if name != "plan":
            sub.add_argument(
                "--sweep-dir", type=Path, help="default: sweeps_out/<study>-<scale>[-<overrides>]"
            )
        if name in ("plan", "run", "resume"):
            sub.add_argument("--num-cpus", type=int, help="CPUs of the local Ray (default: all)")
        if name == "plan":
            sub.add_argument("--backend", choices=("local", "slurm"), default="local")
            sub.add_argument(
                "--profile", help="SLURM profile (default: a100, or cpu for CPU studies)"
            )
            sub.add_argument("--nodes", type=int, default=1, help="SLURM nodes")
            sub.add_argument(
                "--costs", type=Path, help="the cost table (default: sweeps/costs.json)"
            )
            sub.add_argument(
                "--slurm",
                action="append",
                default=[],
                metavar="KEY=VALUE",
                help="SLURM knob, as for python -m cluster submit (partition=gpu, time=4:00:00)",
            )
        if name in ("run", "resume"):
            sub.add_argument(
                "--no-dashboard",
                action="store_true",
                help="no Ray dashboard: the driver runs in this process, not as a Ray job",
            )
            sub.add_argument(
                "--ray-address",
                metavar="HOST:PORT",
                help="run the driver in this process against the running Ray cluster at "
                "HOST:PORT (what the driver's Ray job runs)",
            )
            sub.add_argument(
                "--command-pid",
                type=int,
                metavar="PID",
                help="with --ray-address: the command that submitted this driver job; the driver "
                "ends when that process is gone (sweeps.ray_job.end_with)",
            )
            sub.add_argument(
                "--extend",
                action="store_true",
                help="accept a space that adds points (seeds, values) to the one on record",
            )
            sub.add_argument(
                "--only",
                action="append",
                default=[],
                metavar="KEY=V1[,V2]",
                help="run only the points with one of these values of KEY (repeatable: all hold)",
            )
    commands.add_parser("list")
    sync = commands.add_parser("mlflow-sync")
    sync.add_argument("sweep_dir", type=Path)
    reset = commands.add_parser("reset")
    reset.add_argument("sweep_dir", type=Path)
    reset.add_argument("points", nargs="+", help="point ids (sweep.json, `status`)")
    return parser


def _print_summary(summary: dict) -> None:
    print(json.dumps(summary, indent=2))
    for failure in summary["failures"]:
        values = ", ".join(f"{k}={v}" for k, v in failure["values"].items())
        print(
            f"{failure['status']}: point {failure['point']} ({values}): {failure['reason']}",
            file=sys.stderr,
        )


def _only(items: list[str]) -> dict[str, list[str]]:
    only: dict[str, list[str]] = {}
    for item in items:
        key, sep, values = item.partition("=")
        if not sep or not values:
            raise ValueError(f"--only {item!r}: expected KEY=VALUE[,VALUE...]")
        only.setdefault(key, []).extend(values.split(","))
    return only


def _print_plan(args: argparse.Namespace, overrides: dict) -> None:
    """The pre-flight (configs, data, resources on the target) and the plan with its cost."""
    from sweeps.costs import (
        COSTS_FILE,
        describe,
        describe_saving,
        estimate,
        load_costs,
        trial_work,
    )
    from sweeps.profiles import profile_fields
    from sweeps.target import check_resources, local_target, slurm_target

    study, scale = args.study, args.scale
    module = load_study(study)
    resources = module.resources(scale)
    if args.backend == "slurm":
        # the profile's fields shape the plan; `python -m cluster submit` checks the other keys
        fields, _ = profile_fields(args.slurm)
        profile = args.profile or ("a100" if resources.get("gpu") else "cpu")
        target = slurm_target(profile, args.nodes, fields)
    else:
        target = local_target(args.num_cpus)
    check_resources(resources, target, f"study {study} (scale {scale})")
    # the pre-flight: every point's config; the data (where it will be read: a local sweep)
    points = plan(study, scale, prepare_data=args.backend == "local", overrides=overrides)
    space = resolved_space(study, scale, overrides)
    data = "data ready" if args.backend == "local" else "data not checked (read on the cluster)"
    print(f"{study} (scale {scale}): {len(points)} grid points, each config valid, {data}")
    for key, value in space.items():
        if is_grid(value):
            print(f"  {key}: {', '.join(map(str, value['grid_search']))}")
    for key, value in overrides.items():
        print(f"  {key} = {value} (override)")
    print(
        f"  per point: {resources}; target: {target.name} ({target.device}, "
        f"{target.cpus_per_node} CPUs, {target.gpus_per_node} GPUs per node)"
    )
    experiment = module.EXPERIMENT
    alone = {p: trial_work(experiment, cfg) for p, cfg in point_configs(study, points).items()}
    trials = run_points(study, points, default_sweep_dir(study, scale, overrides))  # as it runs
    works = {p: trial_work(experiment, cfg) for p, cfg in point_configs(study, trials).items()}
    print(describe_saving(alone, works))
    table = load_costs(args.costs or COSTS_FILE)
    for line in describe(estimate(works, target.device, target.devices, table)):
        print(line)


def _args(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    """The options, and the `KEY=VALUE` config overrides given anywhere after the study."""
    parser = _parser()
    args, rest = parser.parse_known_args(argv)
    unknown = [t for t in rest if t.startswith("-") or "=" not in t]
    if unknown or (rest and args.command not in ("plan", "run", "resume")):
        parser.error(f"unrecognized arguments: {' '.join(unknown or rest)}")
    return args, rest


def _status_dir(args: argparse.Namespace) -> Path:
    if args.sweep_dir is not None:
        return args.sweep_dir
    given = Path(args.study)
    if (given / MANIFEST).exists() or given.is_dir():
        return given
    return default_sweep_dir(args.study, args.scale)


def _print_running(summary: dict) -> None:
    for entry in summary["running_points"]:
        values = ", ".join(f"{k}={v}" for k, v in entry["values"].items())
        total = f"/{entry['total']:,}" if entry["total"] else ""
        eta = "ETA unknown" if entry["eta_s"] is None else f"ETA {entry['eta_s'] / 60:.1f} min"
        print(f"running: point {entry['point']} ({values}): step {entry['step']:,}{total}, {eta}")


def _run_as_job(
    args: argparse.Namespace, sweep_dir: Path, overrides: dict, override_items: list[str]
) -> int:
    """A local sweep with its dashboard: the pre-flight here (nothing starts on a bad config,
    missing data, a trial this machine cannot run, a held sweep), then a local Ray head and the
    driver (`... --ray-address HEAD`) as a Ray job on it, its log followed here (sweeps.ray_job);
    the driver's exit status."""
    from sweeps.driver import select
    from sweeps.local_ray import LocalRay
    from sweeps.lock import held_by
    from sweeps.ray_job import run_driver_job, submission_id
    from sweeps.target import check_resources, local_target

    what = f"study {args.study} (scale {args.scale})"
    check_resources(load_study(args.study).resources(args.scale), local_target(args.num_cpus), what)
    points = plan(args.study, args.scale, overrides=overrides)
    if args.only:
        select(args.study, points, _only(args.only))
    sweep_dir = sweep_dir.resolve()
    holder = held_by(sweep_dir)
    if holder is not None:
        raise SweepLocked(f"{sweep_dir} is in use by {holder}; wait for it to end (or stop it)")
    head = LocalRay(dashboard=True, num_cpus=args.num_cpus).start()
    try:
        print(head.how_to_open(), flush=True)
        command = [sys.executable, "-m", "sweeps", args.command, args.study]
        command += ["--scale", args.scale, "--sweep-dir", str(sweep_dir)]
        command += ["--ray-address", head.address, "--command-pid", str(os.getpid())]
        command += ["--extend"] if args.extend else []
        command += [f"--only={item}" for item in args.only] + override_items
        metadata = {"study": args.study, "scale": args.scale, "sweep_dir": str(sweep_dir)}
        job = submission_id(sweep_dir.name)
        return run_driver_job(head.dashboard_url, shlex.join(command), job, metadata)
    finally:
        head.stop()


def main(argv: list[str] | None = None) -> int:
    args, override_items = _args(argv)
    if args.command == "list":
        for name in STUDIES:
            study = get_study(name)
            counts = ", ".join(f"{s}: {count_grid(resolved_space(name, s))}" for s in study.SCALES)
            print(f"{name:16s} experiment={study.EXPERIMENT:10s} points by scale: {counts}")
        return 0
    if args.command == "mlflow-sync":
        from sweeps.mirror import Mirror

        with SweepLock(args.sweep_dir, "mlflow-sync"):
            mirror = Mirror(args.sweep_dir)
            written = mirror.sync()
        print(
            f"MLflow {mirror.uri}, experiment {mirror.experiment_name}: {written['rows']} rows "
            f"of {written['runs']} runs written"
        )
        return 0
    if args.command == "reset":
        reset_points(args.sweep_dir, args.points)
        print(f"reset {len(args.points)} points of {args.sweep_dir}: the next run starts them")
        return 0
    if args.command == "status":
        from sweeps.lock import held_by

        sweep_dir = _status_dir(args)
        summary = summarize(sweep_dir, live=held_by(sweep_dir) is not None)
        _print_summary(summary)
        _print_running(summary)
        return 0
    overrides = parse_config_overrides(args.study, args.scale, override_items)
    if args.command == "plan":
        _print_plan(args, overrides)
        return 0
    sweep_dir = args.sweep_dir or default_sweep_dir(args.study, args.scale, overrides)
    if args.command == "resume" and not (sweep_dir / MANIFEST).exists():
        print(f"error: nothing to resume in {sweep_dir}; use `run`", file=sys.stderr)
        return EXIT_USAGE
    if args.ray_address is None and not args.no_dashboard:
        return _run_as_job(args, sweep_dir, overrides, override_items)
    if args.ray_address is not None:  # a driver job inherits the head's ignored SIGINT: Ray's
        signal.signal(signal.SIGINT, signal.default_int_handler)  # stop is a SIGINT
    if args.command_pid is not None:
        from sweeps.ray_job import end_with

        end_with(args.command_pid)
    summary = run_sweep(
        args.study,
        args.scale,
        sweep_dir,
        ray_address=args.ray_address,
        dashboard=not args.no_dashboard,
        extend=args.extend,
        num_cpus=args.num_cpus,
        only=_only(args.only),
        overrides=overrides,
    )
    _print_summary(summary)
    return exit_code(summary)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except SweepLocked as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(EXIT_LOCKED)
    except (ValueError, FileNotFoundError) as err:  # bad study, scale, key, value, data, grid
        print(f"error: {err}", file=sys.stderr)
        sys.exit(EXIT_USAGE)
