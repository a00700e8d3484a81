"""The Tune driver as a Ray job: the dashboard lists it under Jobs, with its live log.

    code = run_driver_job(address, entrypoint, submission_id("cloning_noise-smoke"), metadata)

`run_driver_job` submits the driver command `entrypoint` through Ray's Job Submission API to the
head at `address` (its dashboard URL, or its GCS `host:port`), authenticated with the token of
this process's environment (`RAY_AUTH_TOKEN_PATH`, as every process of the head has it), prints
the job's log as it grows (Tune's status table, the summary, the failed points), and returns the
driver's exit status (`python -m sweeps run`'s: 0, 1, 2, 3); after a non-zero one, the end of
the log again on stderr (the log merges the driver's stdout and stderr: the failed points, an
error, a traceback). The job's entrypoint runs on the head's node, in the environment and working
directory of the process that started the head.

Stopping. Ctrl-C, SIGTERM or SIGUSR1 (a SLURM preemption, cluster/job.py) stop the job: Ray sends
the driver SIGINT, Tune's graceful stop (it saves the experiment state one last time, then the
driver prints the summary and exits 1), and kills it `RAY_JOB_STOP_WAIT_TIME_S` later. The log is
followed to the end; a second request stops waiting at once. Both settings are read by the head's
processes (`JOB_ENV`): a head gets them when it starts (sweeps.local_ray, cluster.ray_cluster).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Mapping
from datetime import UTC, datetime

# The environment of a head's processes: how its job supervisor stops a driver job.
JOB_ENV = {"RAY_JOB_STOP_SIGNAL": "SIGINT", "RAY_JOB_STOP_WAIT_TIME_S": "30"}
STOPPED_EXIT = 1  # a stopped sweep is unfinished
POLL_S = 0.25  # the job's status: a local HTTP call
TAIL_LINES = 40  # of a failed job's log, repeated on stderr
AGENT_WAIT_S = 120.0  # how long a submission waits for the head's job agent


class StopRequested(Exception):
    """SIGTERM or SIGUSR1 reached the process that follows the driver job."""


def submission_id(name: str) -> str:
    """A readable, unique job id: `<sweep dir name>-<UTC time>`, e.g.
    `cloning_noise-smoke-20261201-222130`."""
    return f"{name}-{datetime.now(UTC):%Y%m%d-%H%M%S}"


def _raise_stop(signum: int, frame: object) -> None:
    raise StopRequested(signal.Signals(signum).name)


class _LogFollower(threading.Thread):
    """Writes the job's log to stdout as Ray streams it (`tail_job_logs`, from its start)."""

    def __init__(self, client, job: str) -> None:
        super().__init__(daemon=True)
        self.client, self.job = client, job
        self.written = 0  # characters of the log written so far
        self.lock = threading.Lock()
        self.closed = False

    def write(self, text: str) -> None:
        with self.lock:
            if not self.closed:
                sys.stdout.write(text)
                sys.stdout.flush()
                self.written += len(text)

    def run(self) -> None:
        async def follow() -> None:
            async for chunk in self.client.tail_job_logs(self.job):
                self.write(chunk)

        try:
            asyncio.run(follow())
        except Exception:  # noqa: BLE001 - a lost stream: `finish` writes the rest
            pass

    def finish(self, timeout_s: float = 2.0) -> None:
        """After the job ended: wait for the stream's end, then write what it missed."""
        self.join(timeout_s)
        with self.lock:
            self.closed = True
            rest = self.client.get_job_logs(self.job)[self.written :]
        sys.stdout.write(rest)
        sys.stdout.flush()


def end_with(pid: int, poll_s: float = 1.0) -> threading.Thread:
    """End this process (exit status 1) as soon as process `pid` is gone: a driver job whose
    command was killed (SIGKILL, and with it the local head it started) would otherwise live on,
    holding the sweep's lock, until Ray noticed its head gone. Its records stay resumable."""

    def watch() -> None:
        while True:
            time.sleep(poll_s)
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                print(f"the sweep's command (pid {pid}) is gone: the driver ends", flush=True)
                os._exit(1)
            except PermissionError:  # alive, another user's: cannot be ours, but alive
                pass

    thread = threading.Thread(target=watch, name="end-with-command", daemon=True)
    thread.start()
    return thread


def run_driver_job(address: str, entrypoint: str, job: str, metadata: Mapping[str, str]) -> int:
    """Submit `entrypoint` as the job `job`, follow its log, return its exit status (above)."""
    from ray.job_submission import JobSubmissionClient

    logging.getLogger("ray.dashboard.modules.job.sdk").setLevel(logging.WARNING)  # "closed"
    client = JobSubmissionClient(address)
    deadline = time.monotonic() + AGENT_WAIT_S
    while True:  # a fresh head's job agent registers a few seconds after its dashboard
        try:
            client.submit_job(entrypoint=entrypoint, submission_id=job, metadata=dict(metadata))
            break
        except RuntimeError as err:
            if "No available agent" not in str(err) or time.monotonic() > deadline:
                raise
            time.sleep(POLL_S)
    print(f"Ray job {job}: the sweep's driver (its log follows; the dashboard's Jobs list it)")
    sys.stdout.flush()
    follower = _LogFollower(client, job)
    follower.start()
    previous = {s: signal.signal(s, _raise_stop) for s in (signal.SIGTERM, signal.SIGUSR1)}
    stopping = False
    try:
        while True:
            try:
                if client.get_job_status(job).is_terminal():
                    break
                time.sleep(POLL_S)
            except (KeyboardInterrupt, StopRequested) as err:
                if stopping:
                    raise
                stopping = True
                what = "Ctrl-C" if isinstance(err, KeyboardInterrupt) else str(err)
                print(f"\n{what}: stopping the Ray job {job} (Tune saves its state)", flush=True)
                client.stop_job(job)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    follower.finish()
    info = client.get_job_info(job)
    if info.status == "SUCCEEDED":
        return 0
    if info.status != "STOPPED" and info.driver_exit_code is None:  # the entrypoint never ran
        print(f"Ray job {job} {info.status}: {info.message}", file=sys.stderr)
        return 1
    code = STOPPED_EXIT if info.status == "STOPPED" else info.driver_exit_code
    # The job's log merges the driver's stdout and stderr; its end (the failed points, an error,
    # a traceback) goes to stderr too, where a caller of the command looks for it.
    tail = client.get_job_logs(job).splitlines()[-TAIL_LINES:]
    print(f"Ray job {job} {info.status} (exit {code}); the end of its log:", file=sys.stderr)
    print("\n".join(tail), file=sys.stderr, flush=True)
    return code
