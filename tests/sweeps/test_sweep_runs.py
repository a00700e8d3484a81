"""Smoke sweeps end to end through local Ray: run records, the MLflow mirror, and resuming a
sweep whose driver was killed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

ROOT = Path(__file__).resolve().parents[2]
KEY = ["run_id", "step", "split", "layer", "metric"]


def sweep_cmd(study: str, sweep_dir: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "sweeps", "run", study, "--sweep-dir", str(sweep_dir), *extra]


def statuses(sweep_dir: Path) -> dict[str, str]:
    return {
        p.parent.name: json.loads(p.read_text())["status"]
        for p in (sweep_dir / "runs").glob("*/status.json")
    }


def all_rows(sweep_dir: Path) -> pd.DataFrame:
    return pd.concat(
        [pd.read_parquet(p) for p in sorted(sweep_dir.glob("runs/*/metrics/*.parquet"))],
        ignore_index=True,
    )


def mlflow_runs(sweep_dir: Path):
    client = MlflowClient(f"sqlite:///{sweep_dir}/mlflow.db")
    experiment = client.get_experiment_by_name(sweep_dir.name)
    return client, client.search_runs([experiment.experiment_id])


@pytest.mark.slow
@pytest.mark.parametrize("study", ["cloning_noise", "continual"])
def test_smoke_sweep_leaves_records_and_mlflow_runs(tmp_path, study):
    sweep_dir = tmp_path / f"{study}-smoke"
    out = subprocess.run(
        sweep_cmd(study, sweep_dir, "--no-dashboard"),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads(out.stdout[out.stdout.rindex("{\n") :])
    assert summary["planned"] == summary["completed"] == 4

    runs = statuses(sweep_dir)
    assert sorted(runs.values()) == ["completed"] * 4
    rows = all_rows(sweep_dir)
    assert list(rows.columns) == ["run_id", "step", "split", "layer", "metric", "value"]
    assert set(rows["run_id"]) == set(runs)
    assert not rows.duplicated(KEY).any()

    client, mruns = mlflow_runs(sweep_dir)
    assert len(mruns) == 4
    for run in mruns:
        tags, params = run.data.tags, run.data.params
        assert run.info.status == "FINISHED"
        assert tags["study"] == study and tags["scale"] == "smoke"
        assert tags["status"] == "completed" and tags["trial_id"] in runs
        assert len(tags["git_sha"]) == 40 and tags["seed"] == params["seed"]
        assert params["model.arch"] in ("mlp", "cnn")
        assert run.data.metrics, "no metrics mirrored"
        key = next(iter(run.data.metrics))
        assert len(client.get_metric_history(run.info.run_id, key)) >= 2  # metrics over steps


def _snapshot(run_dir: Path) -> dict[str, int]:
    files = [run_dir / "status.json", run_dir / "config.json", *run_dir.glob("metrics/*")]
    return {str(p.relative_to(run_dir)): p.stat().st_mtime_ns for p in files}


@pytest.mark.slow
def test_killed_driver_resumes_without_rerunning_finished_trials(tmp_path):
    sweep_dir = tmp_path / "continual-smoke"
    log = (tmp_path / "first.log").open("w")
    driver = subprocess.Popen(
        sweep_cmd("continual", sweep_dir),
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.time() + 300
        while time.time() < deadline and "completed" not in statuses(sweep_dir).values():
            assert driver.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
            time.sleep(0.1)
        os.killpg(driver.pid, signal.SIGKILL)
    finally:
        driver.wait()
        log.close()
    first = (tmp_path / "first.log").read_text()
    assert "Ray dashboard: http://127.0.0.1:" in first
    before = statuses(sweep_dir)
    finished = {run for run, status in before.items() if status == "completed"}
    assert finished and len(finished) < 4, before
    snapshots = {run: _snapshot(sweep_dir / "runs" / run) for run in finished}

    out = subprocess.run(
        sweep_cmd("continual", sweep_dir, "--no-dashboard"),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    after = statuses(sweep_dir)
    assert sorted(after.values()) == ["completed"] * 4 and set(before) <= set(after)
    for run in finished:  # finished trials were not run again: their records are untouched
        assert _snapshot(sweep_dir / "runs" / run) == snapshots[run]
    rows = all_rows(sweep_dir)
    assert not rows.duplicated(KEY).any()
    # every run logged the same steps as an uninterrupted one would: compare two seeds' step sets
    steps = rows.groupby("run_id")["step"].apply(lambda s: tuple(sorted(set(s))))
    assert steps.nunique() == 1
