"""The sweep directory's lock: one holder at a time, named to the next; a dead holder's stale
lock is reported and taken over. Holders are real processes (the lock is the kernel's flock)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from sweeps.lock import SweepLock, SweepLocked, held_by

HOLD = """
import sys, time
from sweeps.lock import SweepLock
lock = SweepLock(sys.argv[1]).acquire()
print("held", flush=True)
time.sleep(600)
"""


def _holder(sweep_dir, env=None) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(sweep_dir)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_holder_is_refused_with_the_first_ones_name(tmp_path):
    holder = _holder(tmp_path, {"SLURM_JOB_ID": "777"})
    try:
        with pytest.raises(SweepLocked) as err:
            SweepLock(tmp_path).acquire()
        message = str(err.value)
        assert f"driver pid {holder.pid} on host {socket.gethostname()}" in message
        assert "SLURM job 777" in message and "wait for it to end" in message
        assert held_by(tmp_path) is not None and str(holder.pid) in held_by(tmp_path)
    finally:
        holder.terminate()
        holder.wait()


def test_a_killed_holder_leaves_a_stale_lock_that_is_reported_and_taken_over(tmp_path):
    holder = _holder(tmp_path)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert held_by(tmp_path) is None  # the kernel dropped the lock with the process
    with SweepLock(tmp_path) as lock:
        assert lock.stale is not None and f"pid {holder.pid}" in lock.stale
        assert json.loads((tmp_path / "sweep.lock").read_text())["pid"] == os.getpid()
    # a clean release leaves nothing stale behind
    with SweepLock(tmp_path) as lock:
        assert lock.stale is None


def test_release_lets_the_next_holder_in_at_once(tmp_path):
    with SweepLock(tmp_path):
        assert held_by(tmp_path) is not None
    start = time.monotonic()
    SweepLock(tmp_path).acquire().release()
    assert time.monotonic() - start < 1
