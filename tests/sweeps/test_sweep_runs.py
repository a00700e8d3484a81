"""Sweeps end to end through `python -m sweeps run` and a real local Ray, real run records and a
real MLflow store: the make targets, kills of the driver and of trial workers, a failing grid
point, two sweeps side by side, a second driver on a running sweep, and Ray's ports probed from
another process without the token.

Most use the null experiment (sweeps.loadtest): real records at a short cadence, no compute."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from mlflow.tracking import MlflowClient

from core.experiments import continual
from core.run import schema
from core.run.config import apply_overrides
from core.run.record import RunRecord, load_metrics
from sweeps.driver import plan
from sweeps.mirror import flatten, metric_key
from tests.sweeps.ray_probe import descendants, listening, own_address, probe

ROOT = Path(__file__).resolve().parents[2]
KEY = list(schema.KEY)


def sweep_cmd(study: str, sweep_dir: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "sweeps", "run", study, "--sweep-dir", str(sweep_dir), *extra]


def start(cmd: list[str], log: Path) -> subprocess.Popen:
    with log.open("w") as out:
        return subprocess.Popen(
            cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def stop(proc: subprocess.Popen) -> None:
    """SIGKILL `proc`'s process group (a driver and its Ray) if it still runs."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def wait(proc: subprocess.Popen, log: Path, timeout: float = 600) -> int:
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        stop(proc)
        raise AssertionError(f"the driver did not finish\n{log.read_text()[-3000:]}") from None


def run_null_sweep(sweep_dir: Path, scale: str, timeout: float = 600):
    """The null study (`sweeps.loadtest`) at `scale` through the real driver, no dashboard."""
    cmd = sweep_cmd("sweeps.loadtest", sweep_dir, "--scale", scale, "--no-dashboard")
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def tails(out: subprocess.CompletedProcess) -> str:
    return out.stdout[-3000:] + out.stderr[-3000:]


def summary_of(stdout: str) -> dict:
    """The summary a driver prints last (pretty-printed JSON from a line `{` to the end)."""
    lines = stdout.splitlines()
    first = len(lines) - 1 - lines[::-1].index("{")
    return json.loads("\n".join(lines[first:]))


def statuses(sweep_dir: Path) -> dict[str, str]:
    runs = sweep_dir / "runs"
    found = {p.name: schema.read_status(p) for p in runs.iterdir()} if runs.exists() else {}
    return {point: status["status"] for point, status in found.items() if status}


def all_rows(sweep_dir: Path) -> pd.DataFrame:
    return pd.concat([load_metrics(p) for p in (sweep_dir / "runs").iterdir()], ignore_index=True)


def mlflow_runs(sweep_dir: Path):
    client = MlflowClient(f"sqlite:///{sweep_dir}/mlflow.db")
    experiment = client.get_experiment_by_name(sweep_dir.name)
    return client, client.search_runs([experiment.experiment_id])


def assert_mirror_equals_records(sweep_dir: Path) -> None:
    """One MLflow run per point, FINISHED, whose metric histories are the record's rows."""
    client, runs = mlflow_runs(sweep_dir)
    points = sorted(r.data.tags["lop.point"] for r in runs)
    assert points == sorted(statuses(sweep_dir)), "not one MLflow run per grid point"
    for run in runs:
        assert run.info.status == "FINISHED"
        rows = load_metrics(sweep_dir / "runs" / run.data.tags["lop.point"])
        expected = {
            (metric_key(s, la, m), step, value)
            for s, la, m, step, value in zip(
                rows["split"], rows["layer"], rows["metric"], rows["step"], rows["value"]
            )
        }
        got = [
            (m.key, m.step, m.value)
            for key in run.data.metrics
            for m in client.get_metric_history(run.info.run_id, key)
        ]
        assert len(got) == len(set(got)) == len(rows), "MLflow history != the record's rows"
        assert set(got) == expected


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
    for run_dir in schema.find_records(sweep_dir / "runs"):
        rows = load_metrics(run_dir)
        rows = rows[(rows["split"] == split) & (rows["layer"] == "") & (rows["metric"] == metric)]
        if rows.empty:  # a bit-flip trial's own record: ensemble summaries only
            continue
        flat = pd.json_normalize(schema.read_config(run_dir)["config"]).iloc[0]
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
        assert sorted(runs.values()) == ["completed"] * 4, runs  # every smoke study: 4 points
        rows = all_rows(sweep_dir)
        assert list(rows.columns) == list(schema.COLUMNS)
        assert set(rows["run_id"]) == set(runs) and not rows.duplicated(KEY).any()

        _, mruns = mlflow_runs(sweep_dir)
        assert len(mruns) == 4
        for run in mruns:
            tags, params = run.data.tags, run.data.params
            assert run.info.status == "FINISHED"
            assert tags["study"] == study and tags["scale"] == "smoke"
            assert tags["status"] == "completed" and tags["lop.point"] in runs
            # the record's code (its provenance) and the driver's at the trial's start
            assert len(tags["git_sha"]) == len(tags["attempt.1.git_sha"]) == 40
            assert tags["seed"] == params["seed"] and tags["package.torch"]
            config = schema.read_config(sweep_dir / "runs" / tags["lop.point"])["config"]
            assert params == {k: str(v) for k, v in flatten(config).items()}  # the full config

        # the table printed for this sweep is the CSV the aggregate wrote; its numbers are right
        table = sweep_dir / "analysis" / f"{split}-{metric}-final.csv"
        end = out.stdout.index(f"written: {table}")
        title = f"{metric} (split {split}, at final): mean, std and 95% t-interval across seeds"
        printed = out.stdout[out.stdout.rindex(title, 0, end) : end].splitlines()[1:]
        written = pd.read_csv(table)
        by = list(written.columns[: list(written.columns).index("n")])
        header = printed[0].split()
        assert header == list(written.columns)
        assert len(printed) == 1 + len(written)
        numbers = ["mean", "std", "ci_low", "ci_high"]
        for line, (_, row) in zip(printed[1:], written.iterrows()):
            cells = dict(zip(header, line.split()))
            assert [cells[k] for k in by] == [str(row[k]) for k in by]
            assert int(cells["n"]) == row["n"]
            assert [float(cells[k]) for k in numbers] == pytest.approx(row[numbers], 1e-5)
        expected = expected_table(sweep_dir, split, metric, by)
        assert list(written["n"]) == list(expected["count"])
        for column in ("mean", "std", "ci_low", "ci_high"):
            assert written[column].to_numpy() == pytest.approx(expected[column].to_numpy(), 1e-9)


def _snapshot(run_dir: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(run_dir)): (p.stat().st_mtime_ns, p.stat().st_size)
        for p in sorted(run_dir.rglob("*"))
        if p.is_file()
    }


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _trial_workers(driver_pid: int) -> list[int]:
    """The Ray worker processes of this driver that run a trial (`ray::SweepTrial...`)."""
    return [p for p in descendants(driver_pid) if _cmdline(p).startswith(b"ray::SweepTrial")]


def _kill_a_trial_mid_run(driver, log: Path, sweep_dir: Path, last_step: int, deadline) -> str:
    """SIGKILL the workers of the first trial caught between two checkpoints; its point."""
    while time.time() < deadline:
        assert driver.poll() is None, log.read_text()[-3000:]
        point = _caught_between_checkpoints(sweep_dir, last_step)
        workers = _trial_workers(driver.pid) if point else []
        for pid in workers:
            os.kill(pid, signal.SIGKILL)
        time.sleep(0.05)
        if workers:
            return point
    raise AssertionError("no trial was caught between two checkpoints")


def _caught_between_checkpoints(sweep_dir: Path, last_step: int) -> str | None:
    """A point whose record is running and has a checkpoint before its last step."""
    for point, status in statuses(sweep_dir).items():
        steps = list(schema.checkpoint_paths(sweep_dir / "runs" / point))
        if status == "running" and steps and steps[-1] < last_step:
            return point
    return None


@pytest.mark.slow
def test_kills_of_workers_and_driver_and_reruns_leave_one_record_and_mlflow_run_per_point(
    tmp_path,
):
    """Worker SIGKILL (Tune retries the trial from its record's checkpoint), driver SIGKILL
    (with its Ray), a re-run, and a re-run of the finished sweep: one record per point with every
    row once, finished points never run again, one MLflow run per point equal to its rows."""
    sweep_dir = tmp_path / "null-slow"
    log = tmp_path / "first.log"
    driver = start(sweep_cmd("sweeps.loadtest", sweep_dir, "--scale", "slow"), log)
    deadline = time.time() + 300
    victim = _kill_a_trial_mid_run(driver, log, sweep_dir, 2000, deadline)  # one worker
    while time.time() < deadline and list(statuses(sweep_dir).values()).count("completed") < 2:
        assert driver.poll() is None, log.read_text()[-3000:]
        time.sleep(0.05)
    os.killpg(driver.pid, signal.SIGKILL)  # the driver and its Ray, mid-sweep
    driver.wait()
    assert "Ray dashboard: http://127.0.0.1:" in log.read_text()
    before = statuses(sweep_dir)
    finished = {p for p, s in before.items() if s == "completed"}
    assert 2 <= len(finished) < 4, before
    snapshots = {p: _snapshot(sweep_dir / "runs" / p) for p in finished}

    for n in (2, 3):  # a re-run finishes the sweep; a re-run of the finished sweep does nothing
        rerun = run_null_sweep(sweep_dir, "slow")
        assert rerun.returncode == 0, tails(rerun)
        assert "stale lock: driver pid" in rerun.stderr or n == 3  # the killed driver's lock
        assert summary_of(rerun.stdout)["completed"] == 4
    assert "4 finished, 0 to run" in rerun.stdout
    after = statuses(sweep_dir)
    assert sorted(after) == sorted(json.loads((sweep_dir / "sweep.json").read_text())["points"])
    assert set(after.values()) == {"completed"}
    for point in finished:  # finished points were not run again: their records are untouched
        assert _snapshot(sweep_dir / "runs" / point) == snapshots[point]
    rows = all_rows(sweep_dir)
    assert not rows.duplicated(KEY).any()
    # every point logged the rows of an uninterrupted run: 20 log points of 4 x 6 scalars, 4
    # probes of 2 x 150 values
    assert (rows.groupby("run_id").size() == 20 * 4 * 6 + 4 * 2 * 150).all()
    # the victim continued from a checkpoint of its first attempt (the attempt counter it saved)
    summary = schema.read_status(sweep_dir / "runs" / victim)["summary"]
    assert summary["attempts"] >= 2
    assert_mirror_equals_records(sweep_dir)


@pytest.mark.slow
def test_a_failing_grid_point_fails_the_sweep_once_and_is_named(tmp_path):
    sweep_dir = tmp_path / "null-fail"
    out = run_null_sweep(sweep_dir, "fail")
    assert out.returncode == 1, tails(out)
    summary = summary_of(out.stdout)
    assert (summary["completed"], summary["failed"]) == (2, 1)
    (failure,) = summary["failures"]
    assert failure["values"] == {"seed": 1} and not failure["retryable"]
    assert "ValueError: corrupt input at step 1000" in failure["reason"]
    assert f"failed: point {failure['point']} (seed=1): ValueError" in out.stderr
    attempts = [
        json.loads(line) for line in (sweep_dir / "attempts.jsonl").read_text().splitlines()
    ]
    started = [a["point"] for a in attempts if a["event"] == "start"]
    assert started.count(failure["point"]) == 1, "a deterministic error was retried"
    status = schema.read_status(sweep_dir / "runs" / failure["point"])
    assert status["status"] == "failed" and status["retryable"] is False


@pytest.mark.slow
def test_two_sweeps_side_by_side_a_second_driver_and_no_port_without_the_token(tmp_path):
    """Two local sweeps (dashboards on) run at once on one machine and both finish. Meanwhile a
    second driver on the first sweep's directory is refused, naming the first; and from another
    process without the token, no Ray port of the first sweep on this machine's non-loopback
    address serves anything (HTTP, gRPC, ray.init)."""
    if own_address() is None:
        pytest.skip("this machine has no non-loopback address to probe")
    dirs = [tmp_path / "a", tmp_path / "b"]
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    drivers = [
        start(sweep_cmd("sweeps.loadtest", d, "--scale", "slow", "--num-cpus", "1"), log)
        for d, log in zip(dirs, logs)
    ]
    try:
        deadline = time.time() + 300
        while "running" not in statuses(dirs[0]).values():
            assert drivers[0].poll() is None, logs[0].read_text()[-3000:]
            assert time.time() < deadline, "the first sweep started no trial"
            time.sleep(0.1)

        second = run_null_sweep(dirs[0], "slow", timeout=300)
        assert second.returncode == 3, second.stderr[-3000:]
        holder = re.search(r"in use by driver pid (\d+) on host (\S+),", second.stderr)
        assert holder and holder[2] == socket.gethostname(), second.stderr
        # the driver is the first sweep's Ray job, a descendant of its command (docs/sweeps.md)
        assert int(holder[1]) in descendants(drivers[0].pid), second.stderr

        pids = [drivers[0].pid, *descendants(drivers[0].pid)]
        gcs = [port for _, port, pid in listening(pids) if b"gcs_server" in _cmdline(pid)]
        assert gcs, listening(pids)
        exposed, result = probe(pids, gcs[0], tmp_path)
        assert exposed, "no Ray port outside loopback: nothing was probed"
        assert result["open"] == [], result
        assert gcs[0] in result["unauthenticated"]  # the probe reached Ray's token check
        assert result["ray_init"].startswith("refused"), result
        assert drivers[0].poll() is None, "the sweep ended before the probe finished"

        for driver, log in zip(drivers, logs):
            assert wait(driver, log) == 0, log.read_text()[-3000:]
    finally:
        for driver in drivers:
            stop(driver)
    for sweep_dir in dirs:
        assert sorted(statuses(sweep_dir).values()) == ["completed"] * 4
        assert not all_rows(sweep_dir).duplicated(KEY).any()
    dashboards = [log.read_text().split("Ray dashboard: ")[1].split()[0] for log in logs]
    assert dashboards[0] != dashboards[1]  # each on its own free port


@pytest.mark.slow
def test_a_trial_whose_worker_dies_is_retried_from_its_own_checkpoint(tmp_path):
    """A real experiment: SIGKILL the workers running trials once a trial has a mid-run
    checkpoint; Tune retries the trial, the retry continues from the point's run record, and the
    record ends equal to an uninterrupted run of the same config."""
    sweep_dir = tmp_path / "continual-smoke"
    log = tmp_path / "driver.log"
    driver = start(sweep_cmd("continual", sweep_dir, "--no-dashboard"), log)
    try:
        victim = _kill_a_trial_mid_run(driver, log, sweep_dir, 18, time.time() + 300)  # 18: last
        assert wait(driver, log) == 0, log.read_text()[-3000:]
    finally:
        stop(driver)

    assert sorted(statuses(sweep_dir).values()) == ["completed"] * 4
    assert not all_rows(sweep_dir).duplicated(KEY).any()
    assert "errored after" in log.read_text()  # Tune saw the kill and retried the trial
    torch.set_num_threads(1)  # as the trial ran (one CPU)
    cfg = apply_overrides(continual.Config, plan("continual", "smoke")[victim])
    continual.run(cfg, RunRecord(tmp_path / "uninterrupted"))
    key = [k for k in KEY if k != "run_id"]
    expected = load_metrics(tmp_path / "uninterrupted").drop(columns="run_id")
    got = load_metrics(sweep_dir / "runs" / victim).drop(columns="run_id")
    pd.testing.assert_frame_equal(
        got.sort_values(key).reset_index(drop=True),
        expected.sort_values(key).reset_index(drop=True),
    )
    assert_mirror_equals_records(sweep_dir)


@pytest.mark.slow
def test_the_null_sweep_at_ci_scale_leaves_few_files_and_no_tune_logs(tmp_path):
    """The CI version of the scale test (benchmarks/bench_sweeps.py at 2,000 points): the null
    experiment's 6 points through the real driver; the files a sweep leaves per point."""
    sweep_dir = tmp_path / "null-ci"
    out = run_null_sweep(sweep_dir, "ci")
    assert out.returncode == 0, tails(out)
    runs = sorted((sweep_dir / "runs").iterdir())
    assert len(runs) == 6
    for run_dir in runs:  # a finished null record: its status and one compacted chunk
        files = sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("*") if p.is_file())
        assert len(files) == 2 and files[0].startswith("metrics/part-"), files
        assert files[1] == "status.json"
    tune_files = [p.name for p in (sweep_dir / "tune").rglob("*") if p.is_file()]
    logged = [n for n in tune_files if n in ("result.json", "progress.csv", "params.json")]
    assert not logged and not [n for n in tune_files if n.startswith("events.out")], tune_files
    assert len(tune_files) <= 5  # the experiment's own state only, not per trial
