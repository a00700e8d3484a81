"""What the Ray dashboard shows of a local sweep, read through Ray's state API from another
process (with the sweep's token, as the dashboard's user): each trial actor named by its sweep,
grid point and axis values, and the Tune driver listed as a job."""

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
from ray.util.state import list_actors, list_jobs
actors = list_actors(address=sys.argv[1], detail=True, filters=[("state", "=", "ALIVE")])
jobs = list_jobs(address=sys.argv[1])
print(json.dumps({
    "actors": [[a.class_name, a.repr_name] for a in actors],
    "jobs": [[j.type, j.status, j.entrypoint] for j in jobs],
}))
"""


@pytest.mark.slow
def test_trial_actors_carry_readable_names_and_the_driver_is_a_job(tmp_path):
    sweep_dir = tmp_path / "null-watch"
    log = tmp_path / "driver.log"
    cmd = [sys.executable, "-m", "sweeps", "run", "sweeps.loadtest", "--scale", "long"]
    cmd += ["--sweep-dir", str(sweep_dir), "--num-cpus", "2"]
    with log.open("w") as out:
        driver = subprocess.Popen(
            cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
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
        error = ""
        while not seen:  # Ray's API server may answer an error while the cluster starts
            assert driver.poll() is None, f"no named trial actor seen: {error}"
            assert time.time() < deadline, f"no named trial actor seen: {error}"
            query = subprocess.run(
                [sys.executable, "-c", QUERY, url], capture_output=True, text=True, env=env,
                timeout=120,
            )  # fmt: skip
            error = query.stderr[-3000:]
            if query.returncode == 0:
                state = json.loads(query.stdout.splitlines()[-1])
                seen = {name for _, name in state["actors"] if name.startswith("null-watch ")}
                error = f"actors: {state['actors']}"
            time.sleep(1)
        assert seen <= expected, (seen, expected)  # e.g. "null-watch 1f3a... seed=2"
        jobs = state["jobs"]
        drivers = [e or "" for kind, status, e in jobs if (kind, status) == ("DRIVER", "RUNNING")]
        assert any("sweeps" in e and "run" in e for e in drivers), jobs
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
            driver.wait()
