"""What the Ray dashboard shows of a local sweep, read through Ray's state and job APIs from another
process (with the sweep's token, as the dashboard's user): the Tune driver as a submitted Ray job
with a readable id whose log carries Tune's status table, and each trial actor named by its sweep,
grid point and axis values. Then Ctrl-C stops the job and the sweep, and no Ray process is left."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sweeps.driver import plan
from sweeps.trainable import trial_name

ROOT = Path(__file__).resolve().parents[2]
QUERY = """
import json, sys
from ray.job_submission import JobSubmissionClient
from ray.util.state import list_actors, list_jobs
actors = list_actors(address=sys.argv[1], detail=True, filters=[("state", "=", "ALIVE")])
jobs = [
    {"type": getattr(j.type, "value", j.type), "status": getattr(j.status, "value", j.status),
     "id": j.submission_id, "entrypoint": j.entrypoint}
    for j in list_jobs(address=sys.argv[1])
]
client = JobSubmissionClient(sys.argv[1])
for job in jobs:
    job["log"] = client.get_job_logs(job["id"]) if job["type"] == "SUBMISSION" else ""
print(json.dumps({"actors": [[a.class_name, a.repr_name] for a in actors], "jobs": jobs}))
"""


def _processes_mentioning(text: str) -> list[int]:
    """PIDs of this machine's processes whose command line contains `text`."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if text.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


@pytest.mark.slow
def test_the_driver_is_a_ray_job_with_the_status_table_and_trial_actors_carry_names(tmp_path):
    sweep_dir = tmp_path / "null-watch"
    log = tmp_path / "driver.log"
    cmd = [sys.executable, "-m", "sweeps", "run", "sweeps.loadtest", "--scale", "long"]
    cmd += ["--sweep-dir", str(sweep_dir), "--num-cpus", "2"]
    with log.open("w") as out:
        driver = subprocess.Popen(
            cmd,
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            # Ctrl-C as in a terminal (a shell's background job would ignore SIGINT)
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
    points = plan("sweeps.loadtest", "long", prepare_data=False)
    expected = {trial_name("null-watch", p, v, ["seed"]) for p, v in points.items()}
    seen: set[str] = set()
    try:
        deadline = time.time() + 240
        found = None
        while found is None:
            assert driver.poll() is None, log.read_text()[-3000:]
            assert time.time() < deadline, log.read_text()[-3000:]
            found = re.search(r"Ray dashboard: (\S+) .*token from (\S+) when", log.read_text())
            time.sleep(0.5)
        url, token = found.groups()
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
        env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=token)
        error, jobs = "", []
        while not (seen and any("Trial status:" in j["log"] for j in jobs)):
            # Ray's API server may answer an error while the cluster starts
            assert driver.poll() is None, f"no named trial actor or status table seen: {error}"
            assert time.time() < deadline, f"no named trial actor or status table seen: {error}"
            query = subprocess.run(
                [sys.executable, "-c", QUERY, url], capture_output=True, text=True, env=env,
                timeout=120,
            )  # fmt: skip
            error = query.stderr[-3000:]
            if query.returncode == 0:
                state = json.loads(query.stdout.splitlines()[-1])
                seen = {name for _, name in state["actors"] if name.startswith("null-watch ")}
                jobs = state["jobs"]
                error = f"actors: {state['actors']}, jobs: {[j['id'] for j in jobs]}"
            time.sleep(1)
        assert seen <= expected, (seen, expected)  # e.g. "null-watch 1f3a... seed=2"
        [job] = [j for j in jobs if j["type"] == "SUBMISSION"]
        assert job["status"] == "RUNNING", job
        assert re.fullmatch(r"null-watch-\d{8}-\d{6}", job["id"]), job["id"]
        assert "-m sweeps run sweeps.loadtest --scale long" in job["entrypoint"], job
        assert "--ray-address" in job["entrypoint"], job
        status_table = job["log"][job["log"].index("Trial status:") :]
        assert "Trial name" in status_table and all(p in status_table for p in points)
        assert f"Ray job {job['id']}" in log.read_text()  # the terminal follows the job

        os.killpg(driver.pid, signal.SIGINT)  # Ctrl-C: the job stops, Tune saves its state
        assert driver.wait(timeout=120) == 1, log.read_text()[-3000:]  # unfinished points
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
            driver.wait()
    text = log.read_text()
    assert f"stopping the Ray job {job['id']}" in text and "Stop signal received" in text
    assert '"planned": 4' in text  # the driver's summary came through
    temp_dir = str(Path(token).parent)
    assert not Path(temp_dir).exists()
    assert _processes_mentioning(temp_dir) == [], "a Ray process of the sweep was left"
