"""Run, resume and inspect a study's sweep with Ray Tune.

`run_sweep(study, scale, sweep_dir)` is idempotent: it starts the sweep, or, when `sweep_dir`
already holds the Tune experiment, restores it with `Tuner.restore` (finished trials are kept and
never run again; unfinished and errored trials continue from their own run records).

Layout of a sweep directory:
    <sweep_dir>/sweep.json     study, scale and the resolved space (written once)
    <sweep_dir>/tune/          Tune's experiment state (what Tuner.restore reads)
    <sweep_dir>/runs/<trial>/  one run record per trial (config.json, metrics/, status.json, ...)
    <sweep_dir>/mlflow.db      the MLflow mirror (unless MLFLOW_TRACKING_URI points elsewhere)
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import subprocess
import tempfile
from collections import Counter
from pathlib import Path

from core.experiments.overrides import apply_overrides
from sweeps.configs import count_grid, first_point, validate_keys
from sweeps.studies import check_scale, get_study

TUNE_DIR = "tune"
MAX_FAILURES = 2  # a trial that raises is retried this often, from its own checkpoint


def default_sweep_dir(study: str, scale: str) -> Path:
    return Path("sweeps_out") / f"{study}-{scale}"


def resolved_space(study: str, scale: str) -> dict:
    """The study's full space (constants and grid axes), checked against the experiment config.

    Every key is validated before anything starts, and one grid point is built into the
    experiment's `Config`, so that a bad value fails here rather than inside a trial.
    """
    module = get_study(study)
    check_scale(module, scale)
    space = {**module.base_config(), **module.param_space(scale)}
    experiment = importlib.import_module(f"core.experiments.{module.EXPERIMENT}")
    validate_keys(experiment.Config, space, f"study {study} (scale {scale})")
    apply_overrides(experiment.Config, first_point(space))
    return space


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


def _init_ray(ray_address: str | None, dashboard: bool) -> str | None:
    """Connect to `ray_address`, or start a local head; returns the local head's temp dir."""
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if ray_address is not None:
        ray.init(address=ray_address, log_to_driver=False)
        return None
    # A local sweep's dashboard listens on 127.0.0.1 only; token authentication is turned off
    # for it (a cluster keeps Ray's default), so that the printed address opens in a browser.
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    temp_dir = tempfile.mkdtemp(prefix="lopray-")
    context = ray.init(
        include_dashboard=dashboard,
        dashboard_host="127.0.0.1",
        dashboard_port=8265,
        _temp_dir=temp_dir,
        log_to_driver=False,
    )
    if dashboard and context.dashboard_url:
        print(f"Ray dashboard: http://{context.dashboard_url}", flush=True)
    return temp_dir


def run_sweep(
    study: str,
    scale: str,
    sweep_dir: str | Path,
    *,
    ray_address: str | None = None,
    dashboard: bool = True,
) -> dict:
    """Run (or finish) `study` at `scale` in `sweep_dir`; returns `sweep_status(sweep_dir)`."""
    import ray
    from ray import tune

    from sweeps.tracking import MLflowTracker
    from sweeps.trainable import run_trial

    module = get_study(study)
    space = resolved_space(study, scale)
    sweep_dir = Path(sweep_dir).resolve()
    sweep_dir.mkdir(parents=True, exist_ok=True)
    manifest = sweep_dir / "sweep.json"
    if manifest.exists():
        previous = json.loads(manifest.read_text())
        if (previous["study"], previous["scale"]) != (study, scale):
            raise ValueError(
                f"{sweep_dir} holds the sweep {previous['study']} (scale {previous['scale']}); "
                "choose another --sweep-dir"
            )
    else:
        manifest.write_text(
            json.dumps({"study": study, "scale": scale, "space": space}, indent=2, default=str)
        )

    trainable = tune.with_resources(
        tune.with_parameters(run_trial, study=study, sweep_dir=str(sweep_dir)),
        module.resources(scale),
    )
    temp_dir = _init_ray(ray_address, dashboard)
    try:
        experiment_path = sweep_dir / TUNE_DIR
        if tune.Tuner.can_restore(experiment_path):
            tuner = tune.Tuner.restore(
                str(experiment_path), trainable, resume_unfinished=True, restart_errored=True
            )
        else:
            tuner = tune.Tuner(
                trainable,
                param_space=space,
                tune_config=tune.TuneConfig(reuse_actors=True),
                run_config=tune.RunConfig(
                    name=TUNE_DIR,
                    storage_path=str(sweep_dir),
                    callbacks=[MLflowTracker(sweep_dir, study, scale, git_sha())],
                    failure_config=tune.FailureConfig(max_failures=MAX_FAILURES),
                    verbose=1,
                ),
            )
        tuner.fit()
    finally:
        if temp_dir is not None:
            ray.shutdown()
            shutil.rmtree(temp_dir, ignore_errors=True)
    return sweep_status(sweep_dir)


def sweep_status(sweep_dir: str | Path) -> dict:
    """Counts of the sweep's run records by status, and the planned number of trials."""
    sweep_dir = Path(sweep_dir)
    manifest = sweep_dir / "sweep.json"
    if not manifest.exists():
        raise FileNotFoundError(f"no sweep in {sweep_dir}: run `python -m sweeps run STUDY` first")
    info = json.loads(manifest.read_text())
    counts: Counter[str] = Counter()
    for status_file in sorted((sweep_dir / "runs").glob("*/status.json")):
        counts[json.loads(status_file.read_text()).get("status", "unknown")] += 1
    planned = count_grid(info["space"])
    return {
        "study": info["study"],
        "scale": info["scale"],
        "planned": planned,
        "started": sum(counts.values()),
        **dict(sorted(counts.items())),
    }
