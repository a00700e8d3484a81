"""The null experiment: real run records at a paper run's cadence, no compute.

It measures the sweep layer itself (driver, Tune, the records, the MLflow mirror) and drives the
failure tests: `python -m sweeps run sweeps.loadtest --scale ci` runs it through the real driver.
A run writes what a paper-scale cloning run writes (paper §2: 520 epochs of 391 steps; a log point
per epoch with 4 splits of 6 scalars, a probe every 5 epochs of 150 per-layer values on 2 splits,
a checkpoint every 2,000 steps), as fast as the files allow. `fail_at` raises a deterministic
error (a corrupt input) at that step, `crash_at` a retryable one in the first attempt only, and
`pause_s` waits at each log point, so that tests can catch a run between two checkpoints.

Scales: `ci` 6 points of a short run; `fail` 3 points of which one (seed 1) fails; `slow` 4
points of about 5 s each, `long` 4 points of about 20 s each; `capacity` 2 points of 5,000 log
calls of one value; at the paper's cadence (benchmarks/bench_sweeps.py) `bench200` 200 points,
`bench` 2,000.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from ray import tune

EXPERIMENT = "null"
EXPERIMENT_MODULE = "sweeps.loadtest"
SCALES = ("ci", "fail", "slow", "long", "capacity", "bench200", "bench")


@dataclass(frozen=True)
class Config:
    """A null run's cadence (defaults: a paper-scale cloning run)."""

    seed: int = 0  # tells the grid points apart; also the values' offset
    steps: int = 203_320  # steps of the run (520 epochs x 391)
    log_every: int = 391  # steps between log points (an epoch)
    splits: int = 4  # splits logged at each log point
    scalars: int = 6  # whole-model scalars per split and log point
    probe_every: int = 1955  # steps between probes (5 epochs)
    probe_splits: int = 2  # splits probed
    probe_values: int = 150  # per-layer values per probed split
    checkpoint_every: int = 2000  # steps between checkpoints
    pause_s: float = 0.0  # wall time to wait at each log point
    fail_at: int | None = None  # raise ValueError (a corrupt input) at this step ...
    fail_seeds: tuple[int, ...] = ()  # ... in the runs of these seeds (empty: every seed)
    crash_at: int | None = None  # raise RuntimeError at this step, first attempt only

    def __post_init__(self) -> None:
        small = [
            k
            for k in ("steps", "log_every", "probe_every", "checkpoint_every")
            if getattr(self, k) < 1
        ]
        if small:
            raise ValueError(f"{', '.join(small)} must be >= 1")


def run(cfg: Config, sink) -> dict:
    """Write the record of a null run (resuming from its checkpoint, as the experiments do)."""
    if sink.status in ("completed", "diverged"):
        return sink.status_info["summary"]
    sink.set_status("running")
    saved = sink.load_checkpoint()
    start, attempt = (saved[1]["step"], saved[1]["attempt"] + 1) if saved else (0, 0)
    last_checkpoint = start
    step = start
    try:
        for step in range(start + cfg.log_every, cfg.steps + 1, cfg.log_every):
            if cfg.pause_s:
                time.sleep(cfg.pause_s)
            failing = not cfg.fail_seeds or cfg.seed in cfg.fail_seeds
            if cfg.fail_at is not None and step >= cfg.fail_at and failing:
                raise ValueError(f"corrupt input at step {step} (the load test's fail_at)")
            if cfg.crash_at is not None and step >= cfg.crash_at and attempt == 0:
                raise RuntimeError(f"crash at step {step} (the load test's crash_at)")
            value = cfg.seed + step / cfg.steps
            for s in range(cfg.splits):
                sink.log(step, {f"m{k}": value + k for k in range(cfg.scalars)}, f"split{s}")
            if step % cfg.probe_every < cfg.log_every:
                for s in range(cfg.probe_splits):
                    values = {f"layer{k % 10}/v{k // 10}": value for k in range(cfg.probe_values)}
                    sink.log(step, values, f"probe{s}")
            if step - last_checkpoint >= cfg.checkpoint_every:
                sink.save_checkpoint(step, {"step": step, "attempt": attempt})
                last_checkpoint = step
    except Exception as err:
        sink.set_status("failed", f"{type(err).__name__}: {err}", step=step)
        raise
    summary = {"step": step, "attempts": attempt + 1}
    sink.finish("completed", summary=summary)
    return summary


def base_config() -> dict:
    return {}


def param_space(scale: str) -> dict:
    short = {"steps": 2000, "log_every": 100, "probe_every": 500, "checkpoint_every": 500}
    if scale == "ci":
        return {**short, "seed": tune.grid_search(list(range(6)))}
    if scale == "fail":
        return {**short, "seed": tune.grid_search([0, 1, 2]), "fail_at": 1000, "fail_seeds": (1,)}
    if scale == "slow":
        return {**short, "pause_s": 0.25, "seed": tune.grid_search(list(range(4)))}
    if scale == "long":
        return {**short, "pause_s": 1.0, "seed": tune.grid_search(list(range(4)))}
    if scale == "capacity":  # many reports, few rows: 5,000 log calls of one value each
        one = {"splits": 1, "scalars": 1, "probe_every": 10**9, "checkpoint_every": 1000}
        return {**one, "steps": 5000, "log_every": 1, "seed": tune.grid_search([0, 1])}
    sizes = {"bench200": 200, "bench": 2000}
    return {"seed": tune.grid_search(list(range(sizes[scale])))}


def resources(scale: str, point: dict | None = None) -> dict:
    return {"cpu": 1}
