"""Run, resume and inspect a study's sweep with Ray Tune.

`run_sweep(study, scale, sweep_dir)` is idempotent: it runs every grid point whose run record is
not finished (completed or diverged) and leaves the finished ones alone, so the same command
starts a sweep, resumes it after any interruption, and retries its failed points.

    1. the plan: the study's space, validated; its grid points and their ids (sweeps.configs);
       pre-flight: every point's config built (`core.run.config.experiment_config`) and each
       dataset made ready once (`core.data.prepare_dataset`), before anything starts;
    2. the lock on the sweep directory (sweeps.lock): a second driver refuses, naming the first;
    3. the space against the one on record (sweep.json): a changed grid is refused, unless
       `extend=True` and it only adds points (more seeds, more values);
    4. a Tuner over the unfinished points (Tune's config of a trial is just its point id), the
       MLflow mirror in a thread (sweeps.mirror), Ray local (sweeps.local_ray) or the cluster's;
    5. the summary from the records: counts by status, and each failed point with its reason.
       `exit_code(summary)` is 0 only when every point finished.

Shared prefixes. A study may declare `SHARED_PREFIX`, the config fields (with their dotted keys)
that only the later part of a trial reads (cloning: the clone's, `CLONE_FIELDS`): grid points
equal in every other key share one prefix trial. The driver runs each prefix shared by two or
more points once, as a point of its own (`prefix_point`: the point without those keys, with
`part=base`; its own id and record under runs/), in a first Tuner, and then the points sharing it
with `part=clone base_from=<the prefix's record>` (`run_points`); a point whose prefix did not
finish is marked failed, naming the prefix and its reason, and runs again (after its prefix) at
the next run. A prefix of one point is no saving: that point runs whole, as does a point whose
record was started whole. `--only` runs the selected points and their prefixes; `reset` of a
prefix point leaves the points built on it (the same computation) alone.

Layout of a sweep directory:
    <sweep_dir>/sweep.json       study, scale, resolved space, point ids, MLflow experiment name,
                                 one entry per driver run (git SHA, host, pid, SLURM job)
    <sweep_dir>/sweep.lock       the live driver's lock (sweeps.lock)
    <sweep_dir>/runs/<point>/    one run record per grid point (config.json, metrics/, ...)
    <sweep_dir>/attempts.jsonl   the driver's journal of trial attempts (start and git SHA, node,
                                 end; point, time)
    <sweep_dir>/tune/run-<n>/    Tune's state of the n-th driver run (not needed to resume)
    <sweep_dir>/mlflow.db        the MLflow mirror (unless MLFLOW_TRACKING_URI points elsewhere)
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
from collections import Counter
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

from core.run import schema
from sweeps.configs import (
    canonical_space,
    grid_points,
    is_grid,
    point_id,
    validate_keys,
)
from sweeps.lock import SweepLock
from sweeps.studies import check_scale, get_study

MANIFEST = "sweep.json"
TUNE_DIR = "tune"
MAX_FAILURES = 2  # a trial that raises a retryable error is retried this often, from its record
REPORT_INTERVAL_S = 10.0  # a trial reports to Tune at most this often (the status table)
MIRROR_INTERVAL_S = 10.0  # the MLflow mirror syncs from the records this often


def default_sweep_dir(study: str, scale: str, overrides: Mapping[str, Any] | None = None) -> Path:
    """`sweeps_out/<study>-<scale>`; with config overrides `...-<8 hex digits of them>`, so that
    a changed base config never meets the sweep of the study's own."""
    name = f"{study}-{scale}"
    if overrides:
        name += f"-{point_id(dict(overrides))[:8]}"
    return Path("sweeps_out") / name


def load_study(study: str) -> ModuleType:
    """A study by name (sweeps.studies), or by module path (the load test: `sweeps.loadtest`)."""
    return importlib.import_module(study) if "." in study else get_study(study)


def _config_of(module: ModuleType, point: dict) -> Any:
    from core.run.config import apply_overrides, experiment_config

    if module.EXPERIMENT in schema.EXPERIMENTS:
        return experiment_config(module.EXPERIMENT, point)
    from sweeps.trainable import experiment_of

    return apply_overrides(experiment_of(module).Config, point)


def parse_config_overrides(study: str, scale: str, items: Sequence[str]) -> dict[str, Any]:
    """`key=value` overrides of the study's base config (the command line's), each value parsed
    as the key's type; an unknown key, a bad value or a grid axis (select those with `--only`)
    raises ValueError. Every point's config is validated with them by `plan`."""
    from core.run.config import parse_assignments
    from sweeps.trainable import experiment_of

    module = load_study(study)
    check_scale(module, scale)
    overrides = parse_assignments(experiment_of(module).Config, items)
    space = {**module.base_config(), **module.param_space(scale)}
    for key in overrides:
        if is_grid(space.get(key)):
            raise ValueError(
                f"{key} is a grid axis of {study} (scale {scale}); choose its values with "
                f"--only {key}=V1,V2"
            )
    return overrides


def resolved_space(study: str, scale: str, overrides: Mapping[str, Any] | None = None) -> dict:
    """The study's full space (constants, grid axes, then `overrides` of constants), every key
    checked against the experiment's config; an unknown key fails listing the valid ones."""
    from sweeps.trainable import experiment_of

    module = load_study(study)
    check_scale(module, scale)
    space = {**module.base_config(), **module.param_space(scale), **(overrides or {})}
    validate_keys(experiment_of(module).Config, space, f"study {study} (scale {scale})")
    return space


def prefix_point(module: ModuleType, values: Mapping[str, Any]) -> dict[str, Any] | None:
    """The prefix trial of a grid point (see the module docstring), or None when the study
    declares no SHARED_PREFIX."""
    later = getattr(module, "SHARED_PREFIX", ())
    if not later:
        return None
    shared = {k: v for k, v in values.items() if k.partition(".")[0] not in later}
    return {**shared, "part": schema.SHARED_BASE}


def run_points(study: str, points: Mapping[str, dict], sweep_dir: str | Path) -> dict[str, dict]:
    """The trials the driver runs for the grid `points` in `sweep_dir`, by id: each prefix shared
    by two or more points (`prefix_point`), each point sharing one with `part=clone` and
    `base_from` its prefix's record, every other point as planned (module docstring)."""
    from sweeps.trainable import point_dir

    module = load_study(study)
    groups: dict[str, list[str]] = {}
    prefixes: dict[str, dict] = {}
    for point, values in points.items():
        prefix = prefix_point(module, values)
        if prefix is not None:
            prefixes[point_id(prefix)] = prefix
            groups.setdefault(point_id(prefix), []).append(point)
    trials = dict(points)
    for prefix, members in groups.items():
        members = [p for p in members if not _started_whole(point_dir(sweep_dir, p))]
        if len(groups[prefix]) < 2 or not members:
            continue
        trials[prefix] = prefixes[prefix]
        record = str(point_dir(Path(sweep_dir).resolve(), prefix))
        for point in members:
            trials[point] = {**points[point], "part": "clone", "base_from": record}
    return trials


def _started_whole(run_dir: Path) -> bool:
    """Whether a record exists that was started as a whole trial (no `part`, or part=all)."""
    try:
        return schema.read_config(run_dir)["config"].get("part", "all") == "all"
    except (OSError, ValueError, KeyError):
        return False


def point_configs(study: str, points: Mapping[str, dict]) -> dict[str, Any]:
    """Every point's config, built and validated (a bad value fails naming the key)."""
    module = load_study(study)
    return {p: _config_of(module, values) for p, values in points.items()}


def trial_resources(module: ModuleType, scale: str, points: Mapping[str, dict]):
    """Tune's resources per trial: the study's `resources(scale, point)` of the trial's grid
    point (a study may size trials by architecture: sweeps/studies/continual.py)."""
    return lambda config: module.resources(scale, points[config["point"]])


def plan(
    study: str,
    scale: str,
    prepare_data: bool = True,
    overrides: Mapping[str, Any] | None = None,
) -> dict[str, dict]:
    """The grid points of `study` at `scale` (base config changed by `overrides`) by point id,
    after pre-flight: every point's config is built and validated (a bad value fails naming the
    key and the valid values) and, with `prepare_data`, each dataset the points read is made
    ready once (a missing one fails saying where to put it), so that nothing fails later for
    these reasons."""
    module = load_study(study)
    space = resolved_space(study, scale, overrides)
    points = {point_id(p): p for p in grid_points(space)}
    datasets = set()
    for point in points.values():
        cfg = _config_of(module, point)
        if hasattr(cfg, "dataset"):
            datasets.add((cfg.dataset, cfg.data_root, cfg.download))
    if datasets and prepare_data:
        from core.data import prepare_dataset

        for name, root, download in sorted(datasets, key=str):
            prepare_dataset(name, root, download)
    return points


def select(study: str, points: dict[str, dict], only: Mapping[str, Sequence[str]]) -> set[str]:
    """The ids of the points whose value of every key of `only` is one of its texts, each parsed
    as the key's type (`--only model.arch=vit,cnn`); an unknown key or value raises ValueError."""
    from core.run.config import field_types, parse_value
    from sweeps.trainable import experiment_of

    types = field_types(experiment_of(load_study(study)).Config)
    chosen = set(points)
    for key, texts in only.items():
        if key not in types:
            raise ValueError(f"--only {key}: unknown key; valid keys: {', '.join(types)}")
        values = [parse_value(text, types[key]) for text in texts]
        chosen = {p for p in chosen if points[p].get(key) in values}
    if not chosen:
        raise ValueError(f"--only {dict(only)} selects none of the {len(points)} points")
    return chosen


def git_sha() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).resolve().parent,
        )
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _changes(old: dict, new: dict) -> str:
    keys = sorted(set(old) | set(new))
    diff = [k for k in keys if old.get(k) != new.get(k)]
    return ", ".join(f"{k}: {old.get(k, '(absent)')} -> {new.get(k, '(absent)')}" for k in diff)


def open_manifest(
    sweep_dir: Path, study: str, scale: str, space: dict, points: dict, extend: bool
) -> dict:
    """sweep.json: written at the first run; later runs must match it (see the module
    docstring); returns it, with this driver run appended."""
    path = sweep_dir / MANIFEST
    canonical = canonical_space(space)
    run = {
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "git_sha": git_sha(),
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
    }
    if path.exists():
        manifest = json.loads(path.read_text())
        if (manifest.get("study"), manifest.get("scale")) != (study, scale):
            raise ValueError(
                f"{sweep_dir} holds the sweep {manifest.get('study')} (scale "
                f"{manifest.get('scale')}); choose another --sweep-dir"
            )
        if manifest.get("space") != canonical:
            recorded = set(manifest.get("points", ()))
            dropped = recorded - set(points)
            changes = _changes(manifest.get("space", {}), canonical)
            if not extend:
                raise ValueError(
                    f"the space of {study} (scale {scale}) differs from the one {sweep_dir} was "
                    f"run with ({changes}); run with --extend to add its new points (finished "
                    "points are never run again), or use another --sweep-dir"
                )
            if dropped:
                raise ValueError(
                    f"--extend only adds points, but the new space of {study} drops or changes "
                    f"{len(dropped)} of the {len(recorded)} points on record ({changes}); use "
                    "another --sweep-dir"
                )
            manifest.setdefault("history", []).append(
                {"space": manifest["space"], "replaced": run["started"]}
            )
            print(f"extending {sweep_dir}: {len(points) - len(recorded)} new points ({changes})")
    else:
        manifest = {
            "study": study,
            "scale": scale,
            "mlflow_experiment": sweep_dir.name,
            "created": run["started"],
            "runs": [],
        }
    manifest["space"] = canonical
    manifest["points"] = sorted(points)
    manifest["runs"] = [*manifest.get("runs", []), run]
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    tmp.replace(path)
    return manifest


def _finished(sweep_dir: Path, point: str) -> bool:
    from sweeps.trainable import point_dir

    status = schema.read_status(point_dir(sweep_dir, point))
    return status is not None and status.get("status") in schema.FINISHED


def _attempt_journal(sweep_dir: Path, sha: str):
    """A Tune callback appending to attempts.jsonl (written by the driver only) one line per
    trial attempt's start (the code's git SHA), first report (`placed`: the node it runs on) and
    end (whether Tune saw it fail): point, event, time, Tune trial id."""
    from ray import tune

    from sweeps.mirror import ATTEMPTS_FILE

    def write(trial, event: str, **extra) -> None:
        entry = {
            "point": trial.config["point"],
            "event": event,
            "time": datetime.now(UTC).isoformat(timespec="seconds"),
            "trial": trial.trial_id,
            **extra,
        }
        with open(sweep_dir / ATTEMPTS_FILE, "a") as f:
            f.write(json.dumps(entry) + "\n")

    class AttemptJournal(tune.Callback):
        def __init__(self) -> None:
            self.placed: set[str] = set()  # trials whose attempt has reported

        def on_trial_start(self, iteration, trials, trial, **info) -> None:
            self.placed.discard(trial.trial_id)
            write(trial, "start", git_sha=sha, host=socket.gethostname())

        def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
            if trial.trial_id not in self.placed:
                self.placed.add(trial.trial_id)
                write(trial, "placed", node_ip=result.get("node_ip"))

        def on_trial_complete(self, iteration, trials, trial, **info) -> None:
            write(trial, "end", error=False)

        def on_trial_error(self, iteration, trials, trial, **info) -> None:
            self.placed.discard(trial.trial_id)
            write(trial, "end", error=True)

    return AttemptJournal()


def run_sweep(
    study: str,
    scale: str,
    sweep_dir: str | Path,
    *,
    ray_address: str | None = None,
    dashboard: bool = True,
    extend: bool = False,
    num_cpus: int | None = None,
    report_interval_s: float = REPORT_INTERVAL_S,
    mirror_interval_s: float | None = MIRROR_INTERVAL_S,
    only: Mapping[str, Sequence[str]] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> dict:
    """Run (or finish) `study` at `scale` in `sweep_dir`; returns `summarize(sweep_dir)`.

    Raises ValueError (bad study, scale, key, value; a changed grid) and FileNotFoundError
    (missing data) before anything starts, and sweeps.lock.SweepLocked when another driver holds
    the sweep directory. `num_cpus` caps a local Ray head (default: the machine's);
    `mirror_interval_s=None` runs no MLflow mirror (`python -m sweeps mlflow-sync` later);
    `only` runs the points `select` picks (the grid on record stays the whole grid) and the
    summary is theirs; `overrides` change the study's base config (`parse_config_overrides`).
    A local sweep (no `ray_address`) whose trials need what this machine lacks (a GPU) raises
    ValueError at once (sweeps.target)."""
    module = load_study(study)
    space = resolved_space(study, scale, overrides)
    if ray_address is None:
        from sweeps.target import check_resources, local_target

        what = f"study {study} (scale {scale})"
        check_resources(module.resources(scale), local_target(num_cpus), what)
    points = plan(study, scale, overrides=overrides)
    chosen = select(study, points, only) if only else set(points)
    sweep_dir = Path(sweep_dir).resolve()
    sweep_dir.mkdir(parents=True, exist_ok=True)
    with SweepLock(sweep_dir) as lock:
        if lock.stale:
            print(
                f"stale lock: {lock.stale} ended without releasing {lock.path}; taking over",
                file=sys.stderr,
            )
        trials = run_points(study, points, sweep_dir)
        prefixes = set(trials) - set(points)
        chosen |= {Path(trials[p]["base_from"]).name for p in chosen if "base_from" in trials[p]}
        manifest = open_manifest(sweep_dir, study, scale, space, trials, extend)
        stages = pending_stages(sweep_dir, trials, prefixes, chosen)
        pending = sum(map(len, stages))
        print(
            f"sweep {study} (scale {scale}) in {sweep_dir}: {len(points)} points"
            + (f" and {len(prefixes)} shared prefixes" if prefixes else "")
            + (f", {len(chosen)} selected by --only" if only else "")
            + f", {len(chosen) - pending} finished, {pending} to run",
            flush=True,
        )
        errors: dict[str, str] = {}
        from sweeps.mirror import MirrorThread

        # the mirror syncs during the sweep and once at its end (also when nothing is left to run:
        # a killed driver's mirror may lag behind the records)
        mirror = MirrorThread(sweep_dir, mirror_interval_s) if mirror_interval_s else None
        if mirror is not None:
            mirror.start()
        try:
            if pending:
                errors = _fit(
                    module,
                    sweep_dir,
                    stages,
                    scale=scale,
                    axes=[k for k, v in space.items() if is_grid(v)],
                    run_number=len(manifest["runs"]),
                    sha=manifest["runs"][-1]["git_sha"],
                    ray_address=ray_address,
                    dashboard=dashboard,
                    num_cpus=num_cpus,
                    report_interval_s=report_interval_s,
                )
        finally:
            if mirror is not None:
                mirror.stop()
        return summarize(sweep_dir, errors, trials, chosen)


def pending_stages(
    sweep_dir: Path, trials: Mapping[str, dict], prefixes: set[str], chosen: set[str]
) -> list[dict[str, dict]]:
    """The chosen `trials` whose records are not finished, in the two Tuners' stages: the shared
    prefixes, then the other trials. Each stage keeps the grid's order, in which Tune starts its
    trials: a study lists its longest trials first (the bit-flip widths), so that they do not
    start last."""
    pending = {p: v for p, v in trials.items() if p in chosen and not _finished(sweep_dir, p)}
    first = {p: v for p, v in pending.items() if p in prefixes}
    return [first, {p: v for p, v in pending.items() if p not in first}]


def _blocked(sweep_dir: Path, points: dict[str, dict], errors: dict[str, str]) -> dict[str, dict]:
    """The `points` whose prefix (`base_from`) finished, or that have none; each other one is
    marked failed (retryable), naming its prefix point, that point's status and reason."""
    from core.run.record import RunRecord
    from sweeps.trainable import point_dir

    runnable = {}
    for point, values in points.items():
        prefix = values.get("base_from")
        status = None if prefix is None else schema.read_status(prefix)
        if prefix is None or (status is not None and status["status"] in schema.FINISHED):
            runnable[point] = values
            continue
        name = Path(prefix).name
        found = "no record" if status is None else status["status"]
        why = (status or {}).get("reason") or errors.get(name, "it did not run")
        RunRecord(point_dir(sweep_dir, point)).set_status(
            "failed", f"its prefix point {name} did not finish ({found}): {why}", retryable=True
        )
    return runnable


def _fit(
    module: ModuleType,
    sweep_dir: Path,
    stages: list[dict[str, dict]],
    *,
    scale: str,
    axes: list[str],
    run_number: int,
    sha: str,
    ray_address: str | None,
    dashboard: bool,
    num_cpus: int | None,
    report_interval_s: float,
) -> dict[str, str]:
    """One Tuner per stage of points (prefixes, then the points on them: `_blocked`), in one Ray
    session; returns Tune's error text of each trial that ended in error."""
    os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = "1"  # no CSV/JSON/TensorBoard per trial
    import ray
    from ray import tune

    from sweeps.local_ray import LocalRay
    from sweeps.trainable import named_trainable, run_trial

    head = None
    if ray_address is None:
        head = LocalRay(dashboard=dashboard, num_cpus=num_cpus).start()
        print(head.how_to_open(), flush=True)
    else:
        ray.init(address=ray_address, log_to_driver=False)
    errors: dict[str, str] = {}
    fits = 0  # Tuners run: the first is run-<n>, a later one run-<n>-<its number>
    try:
        for stage in stages:
            points = _blocked(sweep_dir, stage, errors)
            if not points:
                continue
            # resources first (on the function, read when Tune wraps it), the name last: the
            # trial actors' class, and so their process title `ray::SweepTrial.train`, is the
            # named one
            trainable = named_trainable(
                tune.with_resources(
                    tune.with_parameters(
                        run_trial,
                        study_module=module.__name__,
                        sweep_dir=str(sweep_dir),
                        points=points,
                        report_interval_s=report_interval_s,
                    ),
                    trial_resources(module, scale, points),
                ),
                study=sweep_dir.name,
                points=points,
                axes=axes,
            )
            tuner = tune.Tuner(
                trainable,
                # in the grid's order (`pending_stages`)
                param_space={"point": tune.grid_search(list(points))},
                # a fresh actor per trial: its name (set once, at creation) is its grid point's
                tune_config=tune.TuneConfig(reuse_actors=False),
                run_config=tune.RunConfig(
                    name=f"run-{run_number}" + (f"-{fits + 1}" if fits else ""),
                    storage_path=str(sweep_dir / TUNE_DIR),
                    callbacks=[_attempt_journal(sweep_dir, sha)],
                    failure_config=tune.FailureConfig(max_failures=MAX_FAILURES),
                    verbose=1,
                ),
            )
            # Tune's file loggers are off: its result table would warn that it finds no files.
            logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)
            results = tuner.fit()
            fits += 1
            errors.update(
                {
                    r.config["point"]: f"{type(r.error).__name__}: {r.error}".splitlines()[0][:2000]
                    for r in results
                    if r.error is not None and r.config
                }
            )
        return errors
    finally:
        if head is not None:
            head.stop()
        else:
            ray.shutdown()


def summarize(
    sweep_dir: str | Path,
    errors: dict[str, str] | None = None,
    points: dict[str, dict] | None = None,
    selected: set[str] | None = None,
    live: bool = False,
) -> dict:
    """The sweep's points by the status of their records (`pending`: no record, `unfinished`:
    started and not finished), the same counts per value of each grid axis (`by_axis`), and each
    failed or unfinished point with its reason and grid values. `errors`: Tune's error text of
    points whose trial ended in error; `points`: the plan (else the values come from the
    records' config.json); `selected`: summarize these points only (default: all). `live`: a
    driver is running the sweep now, so a started record is `running`, listed in `running` with
    its step, total steps and ETA (`progress`)."""
    from sweeps.trainable import point_dir

    sweep_dir = Path(sweep_dir)
    path = sweep_dir / MANIFEST
    if not path.exists():
        raise FileNotFoundError(f"no sweep in {sweep_dir}: run `python -m sweeps run STUDY` first")
    manifest = json.loads(path.read_text())
    axes = [k for k, v in manifest["space"].items() if is_grid(v)]
    errors = errors or {}
    counts: Counter[str] = Counter({s: 0 for s in (*schema.FINISHED, "failed", "unfinished")})
    counts["running"] = counts["pending"] = 0
    failures, running = [], []
    by_axis: dict[str, dict[str, Counter[str]]] = {k: {} for k in axes}
    chosen = manifest["points"] if selected is None else sorted(selected)
    for point in chosen:
        status = schema.read_status(point_dir(sweep_dir, point))
        state = "pending" if status is None else status["status"]
        if state == "running" and not (live and point not in errors):
            state = "failed" if point in errors else "unfinished"
        elif state == "pending" and point in errors:
            state = "failed"
        counts[state] += 1
        values = points[point] if points else _point_values(sweep_dir, point)
        for axis in axes:
            by_axis[axis].setdefault(_text(values.get(axis, "?")), Counter())[state] += 1
        if state == "running":
            running.append(
                {
                    "point": point,
                    **progress(point_dir(sweep_dir, point)),
                    "values": {k: values.get(k) for k in axes},
                }
            )
        if state in ("failed", "unfinished"):
            reason = (status or {}).get("reason") or errors.get(point, "interrupted")
            if point in errors and errors[point] not in reason:
                reason = f"{reason}; Tune: {errors[point]}"
            failures.append(
                {
                    "point": point,
                    "status": state,
                    "reason": reason,
                    "retryable": (status or {}).get("retryable", True),
                    "values": {k: values.get(k) for k in axes},
                }
            )
    return {
        "study": manifest["study"],
        "scale": manifest["scale"],
        "planned": len(chosen),
        **dict(counts),
        "failures": failures,
        "running_points": running,
        "by_axis": {
            axis: {value: dict(c) for value, c in sorted(found.items())}
            for axis, found in by_axis.items()
        },
    }


def progress(run_dir: Path) -> dict[str, Any]:
    """A running record's `step` (its newest written row), `total` steps (from its config) and
    `eta_s`, from the steps and modification times of its newest metric chunks (a chunk is
    written at each checkpoint); None where unknown (fewer than two chunks yet)."""
    import pyarrow.parquet as pq

    from sweeps.costs import total_steps

    chunks = schema.chunk_paths(run_dir)
    if not chunks and schema.members_dir(run_dir).exists():  # a bit-flip trial: its members
        members = sorted(schema.members_dir(run_dir).iterdir())
        chunks = schema.chunk_paths(members[0]) if members else []
    marks = []
    for path in chunks[-3:]:
        try:
            steps = pq.read_table(path, columns=["step"])["step"]
            marks.append((path.stat().st_mtime, max(steps.to_pylist(), default=0)))
        except (OSError, ValueError):  # removed or replaced while we looked
            continue
    marks.sort()
    step = marks[-1][1] if marks else 0
    total = None
    try:
        from core.run.config import experiment_config
        from sweeps.mirror import flatten

        document = schema.read_config(run_dir)
        config = flatten(document["config"])
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in config.items()}
        total = total_steps(
            document["experiment"], experiment_config(document["experiment"], values)
        )
    except (OSError, ValueError, KeyError, TypeError):
        pass
    eta = None
    if len(marks) >= 2 and total is not None:
        (t0, s0), (t1, s1) = marks[0], marks[-1]
        if s1 > s0 and t1 > t0:
            eta = (total - step) * (t1 - t0) / (s1 - s0)
    return {"step": step, "total": total, "eta_s": eta}


def _text(value: Any) -> str:
    """An axis value as the status shows it (a tuple as `a,b`, the override syntax)."""
    return ",".join(map(str, value)) if isinstance(value, list | tuple) else str(value)


def _point_values(sweep_dir: Path, point: str) -> dict:
    from sweeps.mirror import flatten
    from sweeps.trainable import point_dir

    try:
        return flatten(schema.read_config(point_dir(sweep_dir, point))["config"])
    except (OSError, ValueError):
        return {}


def reset_points(sweep_dir: str | Path, points: list[str]) -> None:
    """Delete the run records (and MLflow runs) of `points`, so that the next run starts them
    afresh; under the sweep's lock. An id that is no point of the sweep raises ValueError."""
    from sweeps.mirror import Mirror
    from sweeps.trainable import point_dir

    sweep_dir = Path(sweep_dir).resolve()
    path = sweep_dir / MANIFEST
    if not path.exists():
        raise FileNotFoundError(f"no sweep in {sweep_dir}")
    known = set(json.loads(path.read_text())["points"])
    unknown = sorted(set(points) - known)
    if unknown:
        raise ValueError(
            f"{', '.join(unknown)}: no grid point of {sweep_dir} (`python -m sweeps status` "
            "names the failed ones; sweep.json lists them all)"
        )
    with SweepLock(sweep_dir, "reset"):
        mirror = Mirror(sweep_dir)
        for point in points:
            shutil.rmtree(point_dir(sweep_dir, point), ignore_errors=True)
            mirror.forget(point)


def exit_code(summary: dict) -> int:
    """0 when every point finished (completed or diverged), else 1."""
    return 0 if summary["planned"] == sum(summary[s] for s in schema.FINISHED) else 1
