"""The exclusive lock of a sweep directory: one live driver (or MLflow sync) per sweep.

    with SweepLock(sweep_dir, "driver") as lock:   # SweepLocked when another process holds it
        ...                                        # lock.stale: the dead previous holder, if any

The lock is `fcntl.flock` on `<sweep>/sweep.lock`, held for the life of the process and released by
the kernel however the process ends (also on NFS, where Linux maps it to a POSIX lock), so a killed
driver never leaves the sweep locked. The file also names its holder (host, pid, SLURM job, role,
start time) for the message the next driver prints. A holder that ended without clearing the file
(killed) leaves its name behind: the next holder reports it as a stale lock of a dead owner and
takes over.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

LOCK_FILE = "sweep.lock"


class SweepLocked(RuntimeError):
    """Another live process holds the sweep directory."""


def _describe(holder: dict[str, Any]) -> str:
    job = holder.get("slurm_job_id")
    return (
        f"{holder.get('role', 'driver')} pid {holder.get('pid')} on host {holder.get('host')}"
        + (f", SLURM job {job}" if job else "")
        + f", since {holder.get('since')}"
    )


class SweepLock:
    """See the module docstring."""

    def __init__(self, sweep_dir: str | Path, role: str = "driver") -> None:
        self.path = Path(sweep_dir) / LOCK_FILE
        self.role = role
        self.stale: str | None = None  # the dead previous holder, as text
        self._fd: int | None = None

    def acquire(self) -> SweepLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read(fd)
            os.close(fd)
            raise SweepLocked(
                f"{self.path.parent} is in use by {_describe(holder) if holder else 'a process'}; "
                "wait for it to end (or stop it), then run again"
            ) from None
        previous = _read(fd)
        if previous:
            self.stale = _describe(previous)
        me = {
            "role": self.role,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
            "since": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(me) + "\n").encode(), 0)
        os.fsync(fd)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        os.ftruncate(self._fd, 0)  # a clean exit leaves no holder to report as stale
        os.close(self._fd)  # closing the last descriptor drops the flock
        self._fd = None

    def __enter__(self) -> SweepLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def held_by(sweep_dir: str | Path) -> str | None:
    """Who holds the sweep directory's lock now (as text), or None; changes nothing."""
    path = Path(sweep_dir) / LOCK_FILE
    if not path.exists():
        return None
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _read(fd)
        return _describe(holder) if holder else "a process"
    finally:
        os.close(fd)
    return None


def _read(fd: int) -> dict[str, Any] | None:
    text = os.pread(fd, 4096, 0).decode(errors="replace").strip()
    if not text:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return {"pid": "?", "host": "?", "since": f"(unreadable lock file: {text[:80]!r})"}
