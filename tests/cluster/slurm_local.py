"""A real SLURM cluster with accounting on localhost, for the tests of `cluster/`.

    cluster = start_local_slurm(Path("/tmp/lop-slurm-xyz"), nodes=2)   # munged, MariaDB, ...
    os.environ.update(cluster.env)                              # SLURM_CONF for sbatch, sacct, ...
    ...
    cluster.stop()

Its nodes are named 127.0.0.1, 127.0.0.2, ...: one slurmd each (`slurmd -N <node>`, with its own
port, spool, pid and log file), all on this machine and all reached by SLURM at 127.0.0.1. A
job's code resolves its node names to distinct loopback addresses, as it would resolve a real
cluster's hosts, so that Ray sees one node address per SLURM node. Every node declares all of
this machine's CPUs and memory: a job asks for its share, and one-node jobs see the whole machine.

Everything lives in one private directory: a fresh munge key and socket, a MariaDB data directory
bound to 127.0.0.1 on a free port, slurm.conf/slurmdbd.conf with free ports, and every state,
spool, pid and log file. Nothing under /etc or /run is touched, so it cannot clash with a site's
SLURM or with a second copy of itself. Every daemon runs in the foreground as a child of this
process and is stopped by its PID, never by name.

Order (see shared/reference/infra_notes.md): munged -> MariaDB -> slurmdbd (then `sacctmgr add
cluster`) -> slurmctld -> one slurmd per node -> `sinfo` shows every node idle. Accounting is not
optional: without slurmdbd, `sacct` is disabled, submitit sees every job as UNKNOWN and a job
that dies without a result makes `job.result()` wait forever.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

APT_PACKAGES = ("slurmctld", "slurmd", "slurm-client", "slurmdbd", "munge", "mariadb-server")
BINARIES = ("munged", "mungekey", "mariadbd", "mariadb-install-db", "slurmdbd", "slurmctld")
BINARIES += ("slurmd", "sbatch", "sacct", "sacctmgr", "sinfo", "scontrol")
CLUSTER_NAME = "lopslurm"
PARTITION = "debug"


class SlurmUnavailable(RuntimeError):
    """SLURM cannot be installed or run on this machine (the tests skip with this reason)."""


def ensure_installed() -> None:
    """Install the Debian packages if a binary is missing; SlurmUnavailable when that fails."""
    if os.geteuid() != 0:
        raise SlurmUnavailable("it needs root (slurmd runs jobs as root; munged as user munge)")
    missing = [b for b in BINARIES if _which(b) is None]
    if not missing:
        return
    if shutil.which("apt-get") is None:
        raise SlurmUnavailable(f"{', '.join(missing)} missing and no apt-get to install them")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (
        ["apt-get", "update", "-qq"],
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *APT_PACKAGES],
    ):
        out = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if out.returncode != 0:
            raise SlurmUnavailable(f"`{' '.join(cmd)}` failed: {out.stderr.strip()[-500:]}")
    still = [b for b in BINARIES if _which(b) is None]
    if still:
        raise SlurmUnavailable(f"installed {' '.join(APT_PACKAGES)} but {still} still missing")


def _which(binary: str) -> str | None:
    return shutil.which(binary, path=f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class LocalSlurm:
    """The running cluster: its directory, the environment that points SLURM commands at it,
    and its daemons (name -> process), in start order."""

    root: Path
    env: dict[str, str]
    nodes: tuple[str, ...] = ("127.0.0.1",)
    cpus: int = 1  # of each node (all of this machine's)
    daemons: dict[str, subprocess.Popen] = field(default_factory=dict)

    def run(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess:
        """A SLURM client command (sinfo, squeue, scancel, ...) against this cluster."""
        out = subprocess.run(
            list(cmd), capture_output=True, text=True, env={**os.environ, **self.env}, timeout=60
        )
        if check and out.returncode != 0:
            raise RuntimeError(f"`{' '.join(cmd)}` failed: {out.stderr.strip()}\n{self.logs()}")
        return out

    def logs(self, lines: int = 15) -> str:
        """The tail of every daemon's log, for error messages."""
        parts = []
        for path in sorted((self.root / "log").glob("*.log")):
            tail = path.read_text(errors="replace").splitlines()[-lines:]
            parts.append(f"--- {path}\n" + "\n".join(tail))
        return "\n".join(parts)

    def stop(self) -> None:
        """Cancel every job, then stop the daemons by PID in reverse start order."""
        if "slurmctld" in self.daemons and self.daemons["slurmctld"].poll() is None:
            self.run("scancel", "--full", "--partition", PARTITION, check=False)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                if not self.run("squeue", "-h", "-o", "%i", check=False).stdout.strip():
                    break
                time.sleep(0.5)
        for process in reversed(self.daemons.values()):
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        self.daemons.clear()


def start_local_slurm(root: Path, nodes: int = 1, timeout_s: float = 120) -> LocalSlurm:
    """Start munged, MariaDB, slurmdbd, slurmctld and `nodes` slurmd with everything under `root`.

    `root` should be short (munge's and MariaDB's socket paths live in it) and is made traversable
    by the munge user. On failure every daemon started so far is stopped and the error carries
    the daemons' log tails.
    """
    ensure_installed()
    root.mkdir(parents=True, exist_ok=True)
    root.chmod(0o711)
    for sub in ("log", "state", "spool", "run", "db"):
        (root / sub).mkdir(exist_ok=True)
    conf = root / "slurm.conf"
    cluster = LocalSlurm(
        root=root,
        env={"SLURM_CONF": str(conf)},
        nodes=tuple(f"127.0.0.{i}" for i in range(1, nodes + 1)),
        cpus=os.cpu_count() or 1,
    )
    try:
        munge_socket = _start_munge(cluster)
        db_port, db_password = _start_mariadb(cluster)
        ctld_port, dbd_port = _free_port(), _free_port()
        slurmd_ports = [_free_port() for _ in cluster.nodes]
        # cred_expire: a requeued job is held this long (+1 s) before it may start again, so
        # that its old job credential has expired (120 s by default); 5 is the least SLURM
        # accepts (it falls back to 120 below that), and ample for launches on localhost.
        auth = f"AuthType=auth/munge\nAuthInfo=socket={munge_socket},cred_expire=5\n"
        dbd_conf = root / "slurmdbd.conf"
        dbd_conf.write_text(
            auth + f"DbdHost=localhost\nDbdAddr=127.0.0.1\nDbdPort={dbd_port}\nSlurmUser=root\n"
            "StorageType=accounting_storage/mysql\nStorageHost=127.0.0.1\n"
            f"StoragePort={db_port}\nStorageUser=slurm\nStoragePass={db_password}\n"
            f"StorageLoc=slurm_acct_db\nPidFile={root}/run/slurmdbd.pid\n"
            f"LogFile={root}/log/slurmdbd.log\nDebugLevel=info\n"
            "CommunicationParameters=NoInAddrAny\n"
        )
        dbd_conf.chmod(0o600)
        memory_mb = int(_meminfo_kb("MemTotal") / 1024 * 0.9)
        node_lines = "".join(
            f"NodeName={name} NodeAddr=127.0.0.1 Port={port} "
            f"CPUs={cluster.cpus} RealMemory={memory_mb} State=UNKNOWN\n"
            for name, port in zip(cluster.nodes, slurmd_ports)
        )
        conf.write_text(
            f"ClusterName={CLUSTER_NAME}\nSlurmctldHost=localhost(127.0.0.1)\n"
            # Job ids name Ray's temp dirs and pick its ports: two local clusters on one machine
            # (two test sessions) must not both start at job 1.
            f"FirstJobId={secrets.randbelow(9_000_000) + 1000}\n"
            f"SlurmctldPort={ctld_port}\n"
            "SlurmUser=root\nSlurmdUser=root\n" + auth + "CredType=cred/munge\n"
            # One spool, pid and log file per slurmd (%n: its node name).
            f"StateSaveLocation={root}/state\nSlurmdSpoolDir={root}/spool/%n\n"
            f"SlurmctldPidFile={root}/run/slurmctld.pid\nSlurmdPidFile={root}/run/slurmd-%n.pid\n"
            f"SlurmctldLogFile={root}/log/slurmctld.log\nSlurmdLogFile={root}/log/slurmd-%n.log\n"
            "ProctrackType=proctrack/linuxproc\nTaskPlugin=task/none\n"
            "AccountingStorageType=accounting_storage/slurmdbd\n"
            f"AccountingStorageHost=localhost\nAccountingStoragePort={dbd_port}\n"
            f"AccountingStoragePass={munge_socket}\n"  # the munge socket for slurmdbd traffic
            "JobAcctGatherType=jobacct_gather/linux\n"
            "SchedulerType=sched/backfill\nSchedulerParameters=bf_interval=2,sched_interval=2\n"
            "SelectType=select/cons_tres\nSelectTypeParameters=CR_Core\n"
            "ReturnToService=2\nMpiDefault=none\nSwitchType=switch/none\nKillWait=5\n"
            "CommunicationParameters=NoCtldInAddrAny,NoInAddrAny\n"  # bind 127.0.0.1 only
            + node_lines
            + f"PartitionName={PARTITION} Nodes={','.join(cluster.nodes)} Default=YES "
            "MaxTime=INFINITE State=UP\n"
        )
        deadline = time.monotonic() + timeout_s
        _spawn(cluster, "slurmdbd", ["slurmdbd", "-D"])
        _wait(
            cluster,
            "slurmdbd",
            deadline,
            lambda: cluster.run("sacctmgr", "-n", "show", "cluster", check=False).returncode == 0,
        )
        cluster.run("sacctmgr", "-i", "add", "cluster", CLUSTER_NAME)
        _spawn(cluster, "slurmctld", ["slurmctld", "-D", "-i"])
        for name in cluster.nodes:
            (root / "spool" / name).mkdir(exist_ok=True)
            _spawn(cluster, f"slurmd-{name}", ["slurmd", "-D", "-N", name])
        _wait(cluster, "sinfo idle", deadline, lambda: _node_states(cluster) == ["idle"] * nodes)
    except BaseException:
        cluster.stop()
        raise
    return cluster


def _node_states(cluster: LocalSlurm) -> list[str]:
    return cluster.run("sinfo", "-h", "-N", "-o", "%t", check=False).stdout.split()


def _meminfo_kb(key: str) -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def _spawn(cluster: LocalSlurm, name: str, cmd: list[str], **kwargs) -> None:
    with open(cluster.root / "log" / f"{name}.out.log", "ab") as log:
        cluster.daemons[name] = subprocess.Popen(
            [_which(cmd[0]) or cmd[0], *cmd[1:]],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **cluster.env},
            start_new_session=True,
            **kwargs,
        )


def _wait(cluster: LocalSlurm, what: str, deadline: float, ready: Callable[[], bool]) -> None:
    while not ready():
        dead = [n for n, p in cluster.daemons.items() if p.poll() is not None]
        if dead or time.monotonic() > deadline:
            why = f"{', '.join(dead)} exited" if dead else "timed out"
            raise RuntimeError(f"local SLURM: waiting for {what}: {why}\n{cluster.logs()}")
        time.sleep(0.1)


def _start_munge(cluster: LocalSlurm) -> Path:
    """A fresh key and a private socket; munged runs as the munge user, as it insists."""
    munge_dir = cluster.root / "munge"
    munge_dir.mkdir(exist_ok=True)
    key = munge_dir / "munge.key"
    subprocess.run([_which("mungekey"), "--create", "--keyfile", str(key)], check=True)
    shutil.chown(munge_dir, "munge", "munge")
    shutil.chown(key, "munge", "munge")
    munge_dir.chmod(0o711)
    sock = munge_dir / "munge.socket"
    log = cluster.root / "log" / "munged.log"
    log.touch()
    shutil.chown(log, "munge", "munge")
    _spawn(
        cluster,
        "munged",
        [
            "munged",
            "--foreground",
            f"--socket={sock}",
            f"--key-file={key}",
            f"--log-file={log}",
            f"--pid-file={munge_dir}/munged.pid",
            f"--seed-file={munge_dir}/munged.seed",
        ],
        user="munge",
        group="munge",
    )

    def ready() -> bool:
        cred = subprocess.run(["munge", "-n", "--socket", str(sock)], capture_output=True)
        check = subprocess.run(
            ["unmunge", "--socket", str(sock)], input=cred.stdout, capture_output=True
        )
        return cred.returncode == 0 and check.returncode == 0

    _wait(cluster, "munged", time.monotonic() + 30, ready)
    return sock


def _start_mariadb(cluster: LocalSlurm) -> tuple[int, str]:
    """MariaDB with its own datadir and socket, on 127.0.0.1:<free port>; a `slurm` user."""
    datadir = cluster.root / "db"
    sock = cluster.root / "run" / "mariadb.sock"
    install = subprocess.run(
        [
            _which("mariadb-install-db"),
            "--no-defaults",
            f"--datadir={datadir}",
            "--user=root",
            "--auth-root-authentication-method=normal",
            "--skip-test-db",
        ],
        capture_output=True,
        text=True,
    )
    if install.returncode != 0:
        raise RuntimeError(f"mariadb-install-db failed: {install.stderr[-2000:]}")
    port = _free_port()
    _spawn(
        cluster,
        "mariadbd",
        [
            "mariadbd",
            "--no-defaults",
            f"--datadir={datadir}",
            f"--socket={sock}",
            f"--port={port}",
            "--bind-address=127.0.0.1",
            "--skip-name-resolve",
            "--user=root",
            f"--pid-file={cluster.root}/run/mariadb.pid",
            f"--log-error={cluster.root}/log/mariadb.log",
            "--innodb-buffer-pool-size=32M",
        ],
    )

    def sql(statement: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["mariadb", "--no-defaults", f"--socket={sock}", "-uroot", "-e", statement],
            capture_output=True,
            text=True,
        )

    _wait(cluster, "MariaDB", time.monotonic() + 60, lambda: sql("SELECT 1").returncode == 0)
    password = secrets.token_hex(12)
    out = sql(
        f"CREATE USER 'slurm'@'127.0.0.1' IDENTIFIED BY '{password}'; "
        "GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';"
    )
    if out.returncode != 0:
        raise RuntimeError(f"MariaDB: creating the slurm user failed: {out.stderr}")
    return port, password
