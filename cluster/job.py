"""The sweep job: what runs inside the SLURM allocation (submitit calls it once per node).

    SweepJob()(study, scale, sweep_dir, extend=False, config=("key=value", ...))

Node 0 starts the Ray head, waits for every node, prints the Ray cluster's nodes (address,
CPUs, GPUs) and the ssh tunnel command of the dashboard, and runs the Tune driver
(`sweeps.driver.run_sweep(..., ray_address=...)`) in a child process; nodes 1..N-1 run a Ray
worker until the head is gone. The return value (node 0) is the sweep's summary: its points by
status (sweeps.driver.summarize). A sweep that ends with failed or unfinished points fails the
job, its error naming them; so does a driver that finds the sweep directory held by another.

Preemption and time limits. SLURM sends USR2 (`scancel --signal=USR2`, or `signal_delay_s`
before the time limit). submitit's handler in this process calls `checkpoint()`, which
interrupts the driver with SIGUSR1 (Tune's own graceful stop: it saves the experiment state one
last time), stops the Ray processes by PID, and returns a fresh `SweepJob` with the same
arguments; submitit then requeues the job. The rerun runs the sweep's unfinished points again:
finished points are not run again (their records say so), interrupted ones continue from their
run records' checkpoints. The driver and Ray ignore USR2 themselves (SLURM signals every
process of the step); only this process acts on it.
"""

from __future__ import annotations

import getpass
import json
import secrets
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import submitit
from submitit.helpers import Checkpointable, DelayedSubmission

from cluster.ray_cluster import Allocation, RayNode, ignore_usr2, ray_environment, run_worker

DRIVER_STOP_TIMEOUT_S = 45  # of the default 90 s between USR2 and SLURM's kill
TOKEN_FILE = "ray_auth_token"


class SweepJob(Checkpointable):
    """A submitit callable that runs a study's Tune sweep on a Ray cluster over its nodes."""

    # Set while node 0 runs; a fresh instance is submitted and requeued, so none is pickled.
    _driver: subprocess.Popen | None = None
    _head: RayNode | None = None

    def __call__(
        self,
        study: str,
        scale: str,
        sweep_dir: str,
        extend: bool = False,
        config: tuple[str, ...] = (),
    ) -> dict | None:
        job_env = submitit.JobEnvironment()
        allocation = Allocation.from_env(job_env.hostnames)
        log_dir = Path(job_env.paths.folder)
        if allocation.node_rank != 0:  # joins once the head is up, after its token is written
            run_worker(allocation, log_dir, ray_environment(log_dir / TOKEN_FILE))
            return None
        env = ray_environment(_auth_token(log_dir))
        print(
            f"sweep job {allocation.job_id} (run {allocation.restart}) on "
            f"{', '.join(allocation.hostnames)}: {allocation.cpus} CPUs, {allocation.gpus} GPUs "
            "per node",
            flush=True,
        )
        self._head = RayNode.head(allocation, log_dir, env)
        finished = False
        try:
            nodes = self._head.wait_for_nodes(allocation.num_nodes)
            print(
                f"Ray cluster: {len(nodes)} nodes: "
                + ", ".join(f"{n['ip']} ({n['cpus']:g} CPUs, {n['gpus']:g} GPUs)" for n in nodes),
                flush=True,
            )
            print(
                "Ray dashboard: on your machine run\n"
                f"    {allocation.tunnel_command(getpass.getuser())}\n"
                "then open http://127.0.0.1:8265 and enter the token in "
                f"{log_dir / TOKEN_FILE}",
                flush=True,
            )
            summary = self._run_driver(
                study, scale, sweep_dir, extend, config, allocation, log_dir, env
            )
            finished = True
            return summary
        finally:
            self._stop(remove_temp_dir=finished)

    def _run_driver(
        self,
        study: str,
        scale: str,
        sweep_dir: str,
        extend: bool,
        config: tuple[str, ...],
        allocation: Allocation,
        log_dir: Path,
        env: dict[str, str],
    ) -> dict:
        summary = log_dir / f"{allocation.job_id}_{allocation.restart}_summary.json"
        self._driver = subprocess.Popen(
            [sys.executable, "-m", "cluster.tune_driver", study, scale, sweep_dir]
            + ["--ray-address", self._head.address, "--summary", str(summary)]
            + (["--extend"] if extend else [])
            + list(config),
            env=env,
            preexec_fn=ignore_usr2,
        )
        # A thread reaps the driver, so that this (main) thread never holds the Popen's lock
        # when submitit's USR2 handler runs here and waits for the driver in `checkpoint()`.
        threading.Thread(target=self._driver.wait, daemon=True).start()
        while self._driver.returncode is None:
            if not self._head.alive:
                raise self._head.failure("exited during the sweep")
            time.sleep(0.2)
        if self._driver.returncode == 1 and summary.exists():  # the sweep ran; points failed
            failures = json.loads(summary.read_text())["failures"]
            raise RuntimeError(
                f"{len(failures)} points of the sweep did not finish: "
                + "; ".join(f"{f['point']} {f['values']}: {f['reason']}" for f in failures[:10])
                + f" (all in {summary}). Submitting the same sweep again retries them."
            )
        if self._driver.returncode != 0 or not summary.exists():
            paths = submitit.JobEnvironment().paths
            raise RuntimeError(
                f"the sweep driver exited with {self._driver.returncode}: its traceback is in "
                f"{paths.stderr}; Ray's logs are in {self._head.log_path} and "
                f"{self._head.temp_dir}/session_latest/logs. Submitting the same sweep again "
                "resumes it."
            )
        return json.loads(summary.read_text())

    def checkpoint(self, *args: Any, **kwargs: Any) -> DelayedSubmission:
        """Called by submitit on USR2 with the arguments of `__call__`: stop the driver
        gracefully, stop Ray, requeue a fresh job with the same arguments."""
        driver = self._driver
        if driver is not None and driver.returncode is None:
            print("preempted: stopping the Tune driver (it saves the sweep's state)", flush=True)
            driver.send_signal(signal.SIGUSR1)
            deadline = time.monotonic() + DRIVER_STOP_TIMEOUT_S
            while driver.returncode is None and time.monotonic() < deadline:
                time.sleep(0.1)
            if driver.returncode is None:
                print("the driver did not stop in time: killing it", flush=True)
                driver.kill()
        self._stop(remove_temp_dir=True)
        return DelayedSubmission(SweepJob(), *args, **kwargs)

    def _stop(self, remove_temp_dir: bool) -> None:
        """Stop this run's driver and Ray processes by PID (once: later calls do nothing)."""
        if self._driver is not None and self._driver.returncode is None:
            self._driver.kill()
        if self._head is not None:
            self._head.stop(remove_temp_dir)
            self._head = None


def _auth_token(folder: Path) -> Path:
    """The sweep's Ray token file (created once, owner-only), shared by all its jobs' runs."""
    path = folder / TOKEN_FILE
    if not path.exists():
        folder.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{TOKEN_FILE}.{secrets.token_hex(4)}.tmp")
        tmp.touch(mode=0o600)
        tmp.write_text(secrets.token_hex(32))
        tmp.replace(path)
    return path
