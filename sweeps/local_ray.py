"""The Ray head of a local sweep, started inside the driver: token-protected, on free ports.

    with LocalRay(dashboard=True) as head:    # ray.init(...) with the settings below
        print(head.how_to_open())             # the dashboard's address and the token file

Security. Ray 2.60 cannot bind its GCS, raylet, object manager and agents to loopback (it
replaces 127.0.0.1 by the machine's address and listens on all interfaces), so a local sweep is
protected by Ray's token authentication instead: a fresh random token per head, in a file only its
owner can read, handed to every Ray process through `RAY_AUTH_TOKEN_PATH`. Without it no gRPC
service and no HTTP endpoint of the head answers (tests/sweeps/test_local_ray.py probes every port
from another process). The dashboard listens on 127.0.0.1 only and asks for the token in the
browser. Ray's two Prometheus exporters (autoscaler, dashboard) serve metrics without a token on
all interfaces on fixed ports 44217 and 44227 and Ray has no switch for them: they are given an
invalid port, so they do not start (Ray logs the failed start), and metrics collection is off.

Ports. The dashboard takes a free port (printed), every other port is Ray's random free one
(the dashboard agent's too, whose job service runs the sweep's driver job: sweeps.ray_job), so two
local sweeps on one machine do not collide.

Signals. The head's processes ignore SIGINT: a Ctrl-C at the terminal reaches the whole
foreground process group, and only the driver's follower should act on it (it stops the driver's
Ray job through the dashboard). They get `sweeps.ray_job.JOB_ENV`: a stopped driver job gets
SIGINT, Tune's graceful stop.

Temp dirs. Each head gets a fresh `/tmp/lopray-<random>` (short: Unix socket paths are limited to
107 bytes; fresh: a head killed without cleanup leaves state that breaks the next head using it),
with an `owner.json` naming its process. Starting a head removes the lopray-* dirs of this user
whose owner process is gone (a driver that was killed), and says so.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import secrets
import shutil
import signal
import socket
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

from sweeps.ray_job import JOB_ENV

TEMP_PREFIX = "lopray-"
OWNER_FILE = "owner.json"
TOKEN_FILE = "auth_token"
NO_PORT = "65536"  # not a TCP port: the exporter given it fails to start


def _process_start(pid: int) -> str | None:
    """The start time of process `pid` (clock ticks since boot), None when there is none."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def clean_stale_temp_dirs(root: str | Path | None = None) -> list[Path]:
    """Remove this user's lopray-* dirs under `root` (default: the system temp dir) whose owner
    process on this host is gone; returns the removed ones."""
    root = Path(root or tempfile.gettempdir())
    host, uid, removed = socket.gethostname(), os.getuid(), []
    for path in sorted(root.glob(f"{TEMP_PREFIX}*")):
        try:
            if not path.is_dir() or path.stat().st_uid != uid:
                continue
            owner = json.loads((path / OWNER_FILE).read_text())
        except (OSError, ValueError):
            continue  # no owner file: not ours to judge (or still being created)
        if owner.get("host") != host:
            continue
        if _process_start(int(owner["pid"])) == owner.get("start"):
            continue  # alive
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed


@functools.cache
def _process_token() -> str:
    """The token of this process's heads: Ray reads a process's token once and keeps it, so
    every head a process starts (one after the other) gets the same fresh token."""
    return secrets.token_hex(32)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def _agent_on_a_free_port() -> Iterator[None]:
    """`ray.init` with the head's dashboard agent's HTTP server on a free port: Ray's default is
    the fixed port 52365, which a second head on the machine cannot bind (its agent then serves no
    HTTP, and no job can be submitted to it), and `ray.init` has no argument for it (`ray start`
    has `--dashboard-agent-listen-port`). Port 0 is the agent's own free choice."""
    from ray._private import parameter

    original = parameter.RayParams

    class RayParams(original):
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, **kwargs)
            self.dashboard_agent_listen_port = 0

    parameter.RayParams = RayParams
    try:
        yield
    finally:
        parameter.RayParams = original


@contextlib.contextmanager
def _sigint_ignored() -> Iterator[None]:
    """SIGINT ignored in this process while it starts the head: the head's processes inherit
    that, so that a Ctrl-C at the terminal (SIGINT to the whole foreground process group) reaches
    the driver only, which then stops the sweep's job through the dashboard (whose job service,
    a child process that restores Python's SIGINT handler, would otherwise die of the Ctrl-C)."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers belong to the main thread
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


class LocalRay:
    """See the module docstring."""

    def __init__(self, *, dashboard: bool = True, num_cpus: int | None = None) -> None:
        self.dashboard = dashboard
        self.num_cpus = num_cpus
        self.temp_dir: Path | None = None
        self.dashboard_url: str | None = None
        self.address: str | None = None  # the GCS, host:port (what a driver connects to)

    @property
    def token_file(self) -> Path:
        assert self.temp_dir is not None
        return self.temp_dir / TOKEN_FILE

    def start(self) -> LocalRay:
        import ray

        for path in clean_stale_temp_dirs():
            print(f"removed the Ray temp dir {path} of a driver that is gone", file=sys.stderr)
        self.temp_dir = Path(tempfile.mkdtemp(prefix=TEMP_PREFIX))  # mode 0700
        owner = {"host": socket.gethostname(), "pid": os.getpid()}
        owner["start"] = _process_start(os.getpid())
        (self.temp_dir / OWNER_FILE).write_text(json.dumps(owner))
        fd = os.open(self.token_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(_process_token())
        if os.environ.get("RAY_AUTH_MODE", "token") != "token":
            print(
                f"ignoring RAY_AUTH_MODE={os.environ['RAY_AUTH_MODE']}: a local sweep's Ray "
                "always uses token authentication",
                file=sys.stderr,
            )
        # Unset, Ray turns token authentication on for the new local head, in this process too
        # (set after `import ray`, the variable would reach the head's processes only).
        os.environ.pop("RAY_AUTH_MODE", None)
        os.environ.update(
            RAY_AUTH_TOKEN_PATH=str(self.token_file),
            RAY_USAGE_STATS_ENABLED="0",
            AUTOSCALER_METRIC_PORT=NO_PORT,
            DASHBOARD_METRIC_PORT=NO_PORT,
            **JOB_ENV,
        )
        try:
            with _agent_on_a_free_port(), _sigint_ignored():
                context = ray.init(
                    num_cpus=self.num_cpus,
                    include_dashboard=self.dashboard,
                    dashboard_host="127.0.0.1",
                    dashboard_port=free_port() if self.dashboard else None,
                    _temp_dir=str(self.temp_dir),
                    _system_config={"enable_metrics_collection": False},
                    log_to_driver=False,
                )
        except BaseException:
            self.stop()
            raise
        self.address = context.address_info["gcs_address"]
        if self.dashboard and context.dashboard_url:
            self.dashboard_url = f"http://{context.dashboard_url}"
        return self

    def how_to_open(self) -> str:
        if self.dashboard_url is None:
            return "Ray dashboard: off (--no-dashboard)"
        return (
            f"Ray dashboard: {self.dashboard_url} (127.0.0.1 only; Ray's token authentication "
            f"is on: paste the token from {self.token_file} when the page asks)"
        )

    def stop(self) -> None:
        import ray

        ray.shutdown()
        if self.temp_dir is not None:
            shutil.rmtree(self.temp_dir, ignore_errors=True)

    def __enter__(self) -> LocalRay:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
