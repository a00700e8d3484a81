"""Shared prefixes (sweeps.driver, "Shared prefixes"): the trials the driver runs for a study that
declares SHARED_PREFIX, the model-steps `sweeps plan` prints against a hand count, a failed prefix
failing its points with the reason, and a real sweep whose clone records equal the same trials
run whole.

This module is also the small study the end-to-end test runs (`python -m sweeps run
tests.sweeps.test_prefix --scale ci`): one base shared by two clone settings."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from ray import tune

from core.experiments import cloning
from core.run import schema
from core.run.config import apply_overrides
from core.run.record import RunRecord
from sweeps.configs import grid_points, point_id
from sweeps.costs import describe_saving, model_steps, trial_work
from sweeps.driver import _blocked, plan, point_configs, prefix_point, resolved_space, run_points
from sweeps.trainable import point_dir
from tests.core.experiments.runs import comparable

ROOT = Path(__file__).resolve().parents[2]

# --- the study of the end-to-end test ------------------------------------------------------------
EXPERIMENT = "cloning"
SCALES = ("ci",)
SHARED_PREFIX = cloning.CLONE_FIELDS


def base_config() -> dict:
    return {
        "dataset": "synthetic",
        "synthetic.classes": 4,
        "synthetic.train_per_class": 32,
        "synthetic.test_per_class": 8,
        "batch_size": 16,
        "base_epochs": 1,
        "clone_epochs": 2,
        "probe_every": 1,
        "probe_size": 16,
        "probe.metrics": ("dead_fraction",),
        "model.arch": "mlp",
        "model.hidden_sizes": (8, 8),
        "model.norm": "batch",
        "model.dropout": 0.1,
        "clone_optimizer.name": "noisy_sgd",
        "device": "cpu",
    }


def param_space(scale: str) -> dict:
    return {"clone_optimizer.sigma0": tune.grid_search([0.01, 0.1])}


def resources(scale: str, point: dict | None = None) -> dict:
    return {"cpu": 1}


# --- the tests ---------------------------------------------------------------------------------
def _works(study: str, points: dict) -> dict:
    return {p: trial_work("cloning", c) for p, c in point_configs(study, points).items()}


def _grid(study: str, scale: str) -> dict:
    """The study's grid points by id (`plan` without its pre-flight of every config)."""
    return {point_id(p): p for p in grid_points(resolved_space(study, scale))}


def _clone_key(key: str) -> bool:
    return key.partition(".")[0] in cloning.CLONE_FIELDS


def test_model_steps_of_cloning_noise_against_a_hand_count(tmp_path):
    # smoke: 4 x 32 synthetic images in batches of 16 are 8 steps an epoch; 2 epochs of the
    # base, then 3 of base and clone (2 models); every point its own base (seeds and archs
    # differ), so nothing is shared
    points = plan("cloning_noise", "smoke", prepare_data=False)
    trials = run_points("cloning_noise", points, tmp_path)
    assert trials == points
    before = _works("cloning_noise", points)
    assert model_steps(before) == 4 * (2 * 8 + 3 * 8 * 2) == 256
    assert describe_saving(before, _works("cloning_noise", trials)) == (
        "model-steps: 256 -> 256 (-0.0%)"
    )
    # paper: 391 steps an epoch (50,000 / 128); 900 points of 20 + 2 x 500 epochs; as run, 60
    # bases (4 archs x 3 norms x 5 seeds) of 20 + 500 epochs and 900 clones of 500 epochs
    points = _grid("cloning_noise", "paper")
    trials = run_points("cloning_noise", points, tmp_path)
    assert len(points) == 900 and len(trials) == 960
    before, after = _works("cloning_noise", points), _works("cloning_noise", trials)
    assert model_steps(before) == 900 * (20 + 2 * 500) * 391 == 358_938_000
    assert model_steps(after) == (60 * (20 + 500) + 900 * 500) * 391 == 188_149_200
    assert describe_saving(before, after) == "model-steps: 358,938,000 -> 188,149,200 (-47.6%)"
    # cloning_dropout: every axis changes the base too
    points = _grid("cloning_dropout", "paper")
    assert len(points) == 1080 and run_points("cloning_dropout", points, tmp_path) == points


def test_the_paper_grid_runs_60_bases_each_shared_by_its_15_clone_settings(tmp_path):
    points = _grid("cloning_noise", "paper")
    trials = run_points("cloning_noise", points, tmp_path)
    prefixes = {p: v for p, v in trials.items() if p not in points}
    assert len(prefixes) == 60
    for prefix, values in prefixes.items():
        assert values["part"] == "base" and not any(_clone_key(k) for k in values)
        members = [p for p, v in trials.items() if v.get("base_from", "").endswith(prefix)]
        assert len(members) == 15
        assert {(trials[p]["clone_optimizer.sigma0"], trials[p]["clone_optimizer.decay"])
                for p in members} == {(s, d) for s in (0.01, 0.02, 0.05)
                                      for d in (0.0, 0.9, 0.99, 0.999, 1.0)}  # fmt: skip
        for p in members:  # the grid point's values, its id, and the split keys
            assert trials[p] == {
                **points[p],
                "part": "clone",
                "base_from": str(point_dir(tmp_path.resolve(), prefix)),
            }
            assert {k: v for k, v in points[p].items() if not _clone_key(k)} == {
                k: v for k, v in values.items() if k != "part"
            }
    configs = point_configs("cloning_noise", dict(list(trials.items())[:3]))
    assert all(isinstance(c, cloning.Config) for c in configs.values())  # valid configs


def test_a_point_started_whole_keeps_running_whole(tmp_path):
    points = _grid("cloning_noise", "paper")
    first = sorted(points)[0]
    cfg = apply_overrides(cloning.Config, points[first])
    RunRecord(point_dir(tmp_path, first)).write_config(cfg, "cloning")  # part=all
    trials = run_points("cloning_noise", points, tmp_path)
    assert trials[first] == points[first]
    prefix = point_id(prefix_point(sys.modules["sweeps.studies.cloning_noise"], points[first]))
    assert trials[prefix]["part"] == "base"  # the other 14 points still share their base


def test_a_failed_prefix_marks_its_points_failed_with_the_reason(tmp_path):
    failed, done, missing = (str(point_dir(tmp_path, p)) for p in ("base1", "base2", "base3"))
    RunRecord(failed).set_status("failed", "ValueError: bad data", retryable=False)
    RunRecord(done).set_status("completed", summary={})
    stage = {
        "a": {"part": "clone", "base_from": failed},
        "b": {"part": "clone", "base_from": done},
        "c": {"part": "clone", "base_from": missing},
        "d": {"seed": 1},
    }
    runnable = _blocked(tmp_path, stage, {"base3": "RayTaskError: the worker died"})
    assert set(runnable) == {"b", "d"}
    a = schema.read_status(point_dir(tmp_path, "a"))
    assert a["status"] == "failed" and a["retryable"]
    assert a["reason"] == "its prefix point base1 did not finish (failed): ValueError: bad data"
    c = schema.read_status(point_dir(tmp_path, "c"))["reason"]
    assert c == "its prefix point base3 did not finish (no record): RayTaskError: the worker died"


@pytest.mark.slow
def test_a_sweep_runs_the_base_once_and_its_clones_equal_the_trials_run_whole(tmp_path):
    sweep_dir = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "sweeps", "run", __name__, "--scale", "ci", "--no-dashboard"]
    cmd += ["--num-cpus", "2", "--sweep-dir", str(sweep_dir)]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "2 points and 1 shared prefixes, 0 finished, 3 to run" in out.stdout
    points = plan(__name__, "ci", prepare_data=False)
    trials = run_points(__name__, points, sweep_dir)
    (prefix,) = set(trials) - set(points)
    manifest = json.loads((sweep_dir / "sweep.json").read_text())
    assert manifest["points"] == sorted(trials)
    starts = [json.loads(line) for line in (sweep_dir / "attempts.jsonl").read_text().splitlines()]
    order = [e["point"] for e in starts if e["event"] == "start"]
    assert order[0] == prefix and sorted(order[1:]) == sorted(points)  # the base first, once
    for point, values in points.items():
        record = point_dir(sweep_dir, point)
        assert schema.read_status(record)["status"] == "completed"
        assert schema.read_config(record)["config"]["base_from"] == str(
            point_dir(sweep_dir, prefix)
        )
        whole = tmp_path / f"whole-{point}"
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # as the trials (one CPU each)
        try:
            cloning.run(apply_overrides(cloning.Config, values), RunRecord(whole))
        finally:
            torch.set_num_threads(threads)
        pd.testing.assert_frame_equal(comparable(record), comparable(whole), check_exact=True)
    again = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "3 finished, 0 to run" in again.stdout
