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
import torch
from mlflow.tracking import MlflowClient

from core.experiments import continual
from core.experiments.overrides import apply_overrides
from core.records import RunRecord, checkpoint_paths, load_metrics

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


# Student-t 0.975 quantiles for the smoke scales' seed counts (2 and 3 seeds), from tables.
T_975 = {2: 12.706204736174707, 3: 4.302652729749464}
# What each make target runs, and the (split, metric) its aggregate table reports by default.
MAKE_TARGETS = {
    "sweep-cloning": {
        "cloning_noise": ("clone_train", "loss"),
        "cloning_dropout": ("clone_train", "loss"),
    },
    "sweep-continual": {"continual": ("val", "acc")},
    "sweep-bitflip": {"bitflip": ("train", "loss")},
}


def expected_table(sweep_dir: Path, split: str, metric: str, by: list[str]) -> pd.DataFrame:
    """The aggregate table computed here from the run records: the final `metric` of `split` per
    run, grouped by `by`, mean, std and the t-interval of the seeds."""
    values = []
    for status in sweep_dir.glob("runs/**/status.json"):
        run_dir = status.parent
        rows = load_metrics(run_dir)
        rows = rows[(rows["split"] == split) & (rows["layer"] == "") & (rows["metric"] == metric)]
        if rows.empty:  # a bit-flip trial's own record: ensemble summaries only
            continue
        config = json.loads((run_dir / "config.json").read_text())["config"]
        flat = pd.json_normalize(config).iloc[0]
        values.append({**{k: flat[k] for k in by}, "value": rows.iloc[-1]["value"]})
    table = pd.DataFrame(values).groupby(by)["value"].agg(["count", "mean", "std"]).reset_index()
    half = table["count"].map(T_975) * table["std"] / table["count"] ** 0.5
    return table.assign(ci_low=table["mean"] - half, ci_high=table["mean"] + half)


@pytest.mark.slow
@pytest.mark.parametrize("target", list(MAKE_TARGETS))
def test_make_target_runs_the_smoke_sweeps_and_prints_their_intervals(tmp_path, target):
    """`make sweep-*` as a user runs it (the venv already built): local Ray, run records,
    MLflow runs in each sweep's SQLite store, and the printed aggregate table."""
    out = subprocess.run(
        ["make", "-o", "install", target, f"PY={sys.executable}", f"SWEEPS_OUT={tmp_path}"]
        + ["SWEEP_ARGS=--no-dashboard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    for study, (split, metric) in MAKE_TARGETS[target].items():
        sweep_dir = tmp_path / f"{study}-smoke"
        runs = statuses(sweep_dir)
        assert sorted(runs.values()) == ["completed"] * 4, runs  # every smoke study: 4 trials
        rows = all_rows(sweep_dir)
        assert list(rows.columns) == ["run_id", "step", "split", "layer", "metric", "value"]
        assert set(rows["run_id"]) == set(runs) and not rows.duplicated(KEY).any()

        client, mruns = mlflow_runs(sweep_dir)
        assert len(mruns) == 4
        for run in mruns:
            tags, params = run.data.tags, run.data.params
            assert run.info.status == "FINISHED"
            assert tags["study"] == study and tags["scale"] == "smoke"
            assert tags["status"] == "completed" and tags["trial_id"] in runs
            assert len(tags["git_sha"]) == 40 and tags["seed"] == params["seed"]
            key = next(iter(run.data.metrics))
            assert len(client.get_metric_history(run.info.run_id, key)) >= 2  # over steps

        # the table printed for this sweep is the CSV the aggregate wrote; its numbers are right
        table = sweep_dir / "analysis" / f"{split}-{metric}-final.csv"
        end = out.stdout.index(f"written: {table}")
        title = f"{metric} (split {split}, at final): mean, std and 95% t-interval across seeds"
        printed = out.stdout[out.stdout.rindex(title, 0, end) : end].splitlines()[1:]
        written = pd.read_csv(table)
        by = list(written.columns[: list(written.columns).index("n")])
        assert printed[0].split() == [*by, "n", "mean", "std", "ci_low", "ci_high", "note"]
        assert len(printed) == 1 + len(written)
        for line, row in zip(printed[1:], written.itertuples(index=False)):
            cells = line.split()
            assert cells[: len(by)] == [str(v) for v in row[: len(by)]]
            assert int(cells[len(by)]) == row.n
            assert [float(c) for c in cells[len(by) + 1 :]] == pytest.approx(row[-5:-1], 1e-5)
        expected = expected_table(sweep_dir, split, metric, by)
        assert list(written["n"]) == list(expected["count"])
        for column in ("mean", "std", "ci_low", "ci_high"):
            assert written[column].to_numpy() == pytest.approx(expected[column].to_numpy(), 1e-9)


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


def _descendants(pid: int) -> list[int]:
    """Every live process below `pid` (via /proc: the driver's Ray head and its workers)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # the process ended while we looked
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        below = children.get(todo.pop(), [])
        found += below
        todo += below
    return found


def _trial_workers(driver_pid: int) -> list[int]:
    """The Ray worker processes of this driver that run a trial (`ray::ImplicitFunc.train`)."""
    workers = []
    for pid in _descendants(driver_pid):
        try:
            title = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if title.startswith(b"ray::ImplicitFunc"):
            workers.append(pid)
    return workers


@pytest.mark.slow
def test_a_trial_whose_worker_dies_is_retried_from_its_own_checkpoint(tmp_path):
    """SIGKILL the worker processes running trials once a trial has a mid-run checkpoint: Tune
    retries the trial (FailureConfig), the retry continues from the trial's run record, and the
    record ends equal to an uninterrupted run of the same config."""
    sweep_dir = tmp_path / "continual-smoke"
    log = (tmp_path / "driver.log").open("w")
    driver = subprocess.Popen(
        sweep_cmd("continual", sweep_dir, "--no-dashboard"),
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    victim = None
    try:
        deadline = time.time() + 300
        while victim is None and time.time() < deadline:
            assert driver.poll() is None, (tmp_path / "driver.log").read_text()[-3000:]
            for run, status in statuses(sweep_dir).items():
                steps = list(checkpoint_paths(sweep_dir / "runs" / run))
                if status == "running" and steps and steps[-1] < 18:  # 18: the last step
                    workers = _trial_workers(driver.pid)
                    for pid in workers:
                        os.kill(pid, signal.SIGKILL)
                    victim = run if workers else None
                    break
            time.sleep(0.05)
        assert victim is not None, "no trial was caught between two checkpoints"
        assert driver.wait(timeout=600) == 0, (tmp_path / "driver.log").read_text()[-3000:]
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
            driver.wait()
        log.close()

    runs = statuses(sweep_dir)
    assert sorted(runs.values()) == ["completed"] * 4
    rows = all_rows(sweep_dir)
    assert not rows.duplicated(KEY).any()
    # the victim's reports come from two processes; the second began after the checkpoint,
    # not from step 0
    (trial_dir,) = (sweep_dir / "tune").glob(f"run_trial_{victim}_*")
    reports = [json.loads(line) for line in (trial_dir / "result.json").read_text().splitlines()]
    pids = list(dict.fromkeys(r["pid"] for r in reports))
    assert len(pids) == 2, pids
    first_steps = [r["step"] for r in reports if r["pid"] == pids[0]]
    retry_steps = [r["step"] for r in reports if r["pid"] == pids[1]]
    assert min(retry_steps) > min(first_steps)

    params = json.loads((trial_dir / "params.json").read_text())
    torch.set_num_threads(1)  # as the trial ran (one CPU)
    continual.run(apply_overrides(continual.Config, params), RunRecord(tmp_path / "uninterrupted"))
    key = [k for k in KEY if k != "run_id"]
    expected = load_metrics(tmp_path / "uninterrupted").drop(columns="run_id")
    got = load_metrics(sweep_dir / "runs" / victim).drop(columns="run_id")
    pd.testing.assert_frame_equal(
        got.sort_values(key).reset_index(drop=True),
        expected.sort_values(key).reset_index(drop=True),
    )
