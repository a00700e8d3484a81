"""Against the real 2-node SLURM of conftest.py: plain submitit jobs; a one-node smoke sweep
through submitit and Ray that is preempted (USR2), requeued, and finishes without running any
finished trial again; a sweep job whose driver fails; a smoke sweep on two nodes."""

from __future__ import annotations

import json
import math
import re
import shutil
import time
from pathlib import Path

import pandas as pd
import pytest
import submitit

from cluster import submit_sweep
from tests.cluster.slurm_local import PARTITION, LocalSlurm
from tests.cluster.test_launch import normalised
from tests.cluster.test_ray_cluster import ray_processes

KEY = ["run_id", "step", "split", "layer", "metric"]


def test_submitit_round_trip_and_failure_names_the_logs(slurm: LocalSlurm, tmp_path):
    executor = submitit.SlurmExecutor(folder=tmp_path / "jobs")
    executor.update_parameters(partition=PARTITION, time=5, cpus_per_task=1, mem="1GB")
    ok = executor.submit(math.factorial, 5)
    bad = executor.submit(math.sqrt, -1)
    assert ok.result() == 120
    assert ok.state == "COMPLETED"
    with pytest.raises(submitit.core.utils.FailedJobError, match="math domain error") as failed:
        bad.result()
    assert str(bad.paths.stderr) in str(failed.value)


def _statuses(sweep_dir: Path) -> dict[str, str]:
    """The status of each grid point's run record."""
    return {
        p.parent.name: json.loads(p.read_text())["status"]
        for p in (sweep_dir / "runs").glob("*/status.json")
    }


def _journal(sweep_dir: Path, event: str) -> list[dict]:
    """The driver's journal of trial starts or ends (attempts.jsonl)."""
    path = sweep_dir / "attempts.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return [entry for entry in map(json.loads, lines) if entry["event"] == event]


def _files(run_dir: Path) -> dict[str, tuple[int, int]]:
    """Every file of a run record (members' included) with its mtime and size."""
    return {
        str(p.relative_to(run_dir)): (p.stat().st_mtime_ns, p.stat().st_size)
        for p in sorted(run_dir.rglob("*"))
        if p.is_file()
    }


def _job_log(job: submitit.Job) -> str:
    paths = [Path(job.paths.stdout), Path(job.paths.stderr)]
    return "".join(p.read_text() for p in paths if p.exists())


def _finish_after_requeue(job) -> str:
    """Wait for a preempted smoke bit-flip sweep job through its requeue; check that it ran
    again and completed all 4 trials; return its log."""
    deadline = time.monotonic() + 300
    while not job.done():  # through the requeue and the second run
        assert time.monotonic() < deadline, f"the sweep did not finish\n{_job_log(job)[-3000:]}"
        time.sleep(0.25)
    summary = job.result()  # raises with the log paths if the job failed
    log = _job_log(job)
    assert f"Requeued job {job.job_id}" in log
    assert f"sweep job {job.job_id} (run 1)" in log, "the job did not run again after requeue"
    counts = ("study", "scale", "planned", "completed", "failed", "unfinished", "pending")
    assert {k: summary[k] for k in counts} == {
        "study": "bitflip",
        "scale": "smoke",
        "planned": 4,
        "completed": 4,
        "failed": 0,
        "unfinished": 0,
        "pending": 0,
    }, log[-3000:]
    assert summary["failures"] == []
    return log


def _completed(sweep_dir: Path) -> list[str]:
    """The points whose run records say completed."""
    return [point for point, status in _statuses(sweep_dir).items() if status == "completed"]


@pytest.mark.slow
def test_smoke_sweep_is_preempted_requeued_and_finishes_without_rerunning(
    slurm: LocalSlurm, tmp_path
):
    sweep_dir = tmp_path / "bitflip-smoke"
    resources = {"profile": "local", "cpus_per_task": min(2, slurm.cpus)}
    job = submit_sweep("bitflip", "smoke", sweep_dir, **resources)
    submitted = (sweep_dir / "slurm" / f"{job.job_id}_submission.sh").read_text()
    dry = submit_sweep("bitflip", "smoke", sweep_dir, dry_run=True, **resources)
    assert normalised(submitted, sweep_dir) == normalised(dry, sweep_dir)

    # Preempt once a point's record says completed: the records decide what runs again.
    deadline = time.monotonic() + 240
    while not (finished := _completed(sweep_dir)):
        assert job.state in ("PENDING", "RUNNING", "UNKNOWN"), _job_log(job)[-3000:]
        assert time.monotonic() < deadline, f"no trial finished in time\n{_job_log(job)[-3000:]}"
        time.sleep(0.2)
    snapshots = {run: _files(sweep_dir / "runs" / run) for run in finished}
    slurm.run("scancel", "--signal=USR2", job.job_id)
    assert len(finished) < 4, "the sweep finished before it could be preempted"

    log = _finish_after_requeue(job)
    assert "this job is preempted" in log
    assert re.search(r"ssh -N -L 8265:127\.0\.0\.\d+:\d+ ", log) and "ray_auth_token" in log
    starts = [entry["point"] for entry in _journal(sweep_dir, "start")]
    for point in finished:  # a point finished before the preemption was not run again
        assert starts.count(point) == 1, point
        assert _files(sweep_dir / "runs" / point) == snapshots[point], point
    rows = pd.concat(
        [pd.read_parquet(p) for p in sorted(sweep_dir.glob("runs/*/members/*/metrics/*.parquet"))]
    )
    assert not rows.duplicated(KEY).any()
    assert not ray_processes(f"/tmp/ray-{job.job_id}-"), "Ray processes outlived the job"
    assert not list(Path("/tmp").glob(f"ray-{job.job_id}-*")), "a Ray temp dir was left behind"


@pytest.mark.slow
def test_failed_sweep_job_names_its_logs_and_keeps_ray_logs(slurm: LocalSlurm, tmp_path):
    sweep_dir = tmp_path / "taken"
    sweep_dir.mkdir()
    (sweep_dir / "sweep.json").write_text(json.dumps({"study": "continual", "scale": "smoke"}))
    job = submit_sweep("bitflip", "smoke", sweep_dir, profile="local", cpus_per_task=1)
    with pytest.raises(submitit.core.utils.FailedJobError) as failed:
        job.result()
    message = str(failed.value)
    assert "the sweep driver exited with 1" in message
    assert str(job.paths.stderr) in message and f"{job.job_id}_0_ray_head.log" in message
    assert "holds the sweep continual" in Path(job.paths.stderr).read_text()
    temp_dir = Path(f"/tmp/ray-{job.job_id}-0-0")
    assert (temp_dir / "session_latest" / "logs").is_dir(), "Ray's logs of a failed run are kept"
    assert not ray_processes(temp_dir), "Ray processes outlived the job"
    shutil.rmtree(temp_dir)


# Job states of accounting that are not final (slurmdbd records the end a moment after the job
# has left the queue).
_NOT_FINAL = {"", "PENDING", "RUNNING", "REQUEUED", "COMPLETING", "SUSPENDED", "RESIZING"}


def _wait_until_gone(slurm: LocalSlurm, job_id: str, timeout_s: float = 120) -> str:
    """Wait until every task of the job has ended; its final state from accounting."""
    deadline = time.monotonic() + timeout_s
    while True:
        queued = slurm.run("squeue", "-h", "-j", job_id, "-o", "%T", check=False).stdout.strip()
        state = ""
        if not queued:
            state = slurm.run("sacct", "-j", job_id, "-X", "-n", "-o", "State").stdout.strip()
            if state.split(" ")[0] not in _NOT_FINAL:
                return state
        assert time.monotonic() < deadline, f"job {job_id}: {queued or state or 'no record'}"
        time.sleep(0.25)


@pytest.mark.slow
def test_smoke_sweep_on_two_nodes_uses_both_and_resumes_on_both_after_requeue(
    slurm: LocalSlurm, tmp_path
):
    sweep_dir = tmp_path / "bitflip-2nodes"
    # One CPU per node and per trial: the two trials that run at once are on different nodes.
    job = submit_sweep("bitflip", "smoke", sweep_dir, profile="local", nodes=2, cpus_per_task=1)
    deadline = time.monotonic() + 240
    while not (finished := _completed(sweep_dir)):
        assert job.state in ("PENDING", "RUNNING", "UNKNOWN"), _job_log(job)[-3000:]
        assert time.monotonic() < deadline, f"no trial finished in time\n{_job_log(job)[-3000:]}"
        time.sleep(0.2)
    slurm.run("scancel", "--signal=USR2", job.job_id)  # reaches both nodes' tasks
    assert len(finished) < 4, "the sweep finished before it could be preempted"
    log = _finish_after_requeue(job)

    # Both runs had a Ray cluster of two nodes of one CPU each, with distinct addresses (Ray
    # replaces the head's 127.0.0.1 by this machine's own address; the worker keeps 127.0.0.2).
    clusters = re.findall(r"Ray cluster: 2 nodes: (\S+) \(1 CPUs, 0 GPUs\), (\S+) \(1 CPUs", log)
    assert len(clusters) == 2, log[-3000:]
    head_ip, worker_ip = clusters[0]
    assert clusters[1] == clusters[0] and worker_ip == slurm.nodes[1] != head_ip
    # Where the trials ran: the node of each attempt's first report (the driver's journal).
    placed = _journal(sweep_dir, "placed")
    assert {entry["point"] for entry in placed} == set(_statuses(sweep_dir))
    assert {entry["node_ip"] for entry in placed} == {head_ip, worker_ip}, "trials on one node"

    # Every run record is complete: 4 points x 3 seeds, each member to its last step, once; the
    # points finished before the preemption were not run again.
    starts = [entry["point"] for entry in _journal(sweep_dir, "start")]
    assert all(starts.count(point) == 1 for point in finished)
    members = sorted(sweep_dir.glob("runs/*/members/*"))
    assert len(members) == 12
    assert set(_statuses(sweep_dir).values()) == {"completed"}
    for member in members:
        assert json.loads((member / "status.json").read_text())["status"] == "completed"
        rows = pd.concat([pd.read_parquet(p) for p in member.glob("metrics/*.parquet")])
        assert rows["step"].max() == 20_000, member
        assert not rows.duplicated(KEY).any(), member

    # The worker leaves once the head is gone; then the job ends, with nothing left behind.
    assert _wait_until_gone(slurm, job.job_id) == "COMPLETED", _job_log(job)[-3000:]
    assert not ray_processes(f"/tmp/ray-{job.job_id}-"), "Ray processes outlived the job"
    assert not list(Path("/tmp").glob(f"ray-{job.job_id}-*")), "a Ray temp dir was left behind"
