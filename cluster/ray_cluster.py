"""A Ray cluster on a SLURM allocation: a head on the first node, a worker on each other node.

Inside a sweep job (one task per node), `Allocation.from_env(hostnames)` reads what SLURM
granted, and:

    env = ray_environment(token_file)
    head = RayNode.head(allocation, log_dir, env)  # node 0: `ray start --head --block ...`
    head.wait_for_nodes(allocation.num_nodes)       # every worker has joined: [{ip, cpus, gpus}]
    ...                                             # the Tune driver connects to head.address
    head.stop(remove_temp_dir=True)                 # SIGTERM to its PID, then its process group

    run_worker(allocation, log_dir, env)            # nodes 1..N-1: join; return when head is gone

Ports come from the SLURM job id (`ray_ports`), so that two sweep jobs sharing a node do not
collide (nor two nodes of one job on one machine: `Allocation.host_slot`); the temp dir is short
and fresh for every run of the job and every node of it (`/tmp/ray-<job>-<restart>-<node>`: Unix
socket paths inside it are limited to 107 bytes, and a head killed without `ray stop` leaves
state behind that breaks the next head with the same temp dir). Ray gets the CPUs, GPUs and
memory of the allocation, never what it would detect on the (shared) node. Processes are
stopped by PID: `ray stop` kills every Ray process on the node, other users' included.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from sweeps.local_ray import NO_PORT
from sweeps.ray_job import JOB_ENV

PORT_BASE = 20000  # ports PORT_BASE .. PORT_BASE + 9999, below Linux's ephemeral range
PORT_SLOTS = 500  # jobs whose ids differ by a multiple of this share ports: not on one node
PORTS_PER_JOB = 20
HEAD_PORTS = ("gcs", "dashboard", "client_server")  # of the head's cluster-wide services
NODE_PORTS = (  # of the Ray processes of each node
    "node_manager",
    "object_manager",
    "metrics_export",
    "dashboard_agent_grpc",
    "dashboard_agent_listen",
    "runtime_env_agent",
)
# Nodes of one job on one machine (never on a real cluster, where SLURM gives each node of a
# job its own host; a test cluster of several slurmd on one host does).
MAX_NODES_PER_HOST = (PORTS_PER_JOB - len(HEAD_PORTS)) // len(NODE_PORTS)
OBJECT_STORE_SHARE = 0.3  # of the allocation's memory
HEAD_WAIT_S = 300  # a worker waits this long for the head to come up
HEAD_POLL_S = 1  # a worker checks the head this often, and leaves after 3 misses in a row
NODES_POLL_S = 0.5  # the head checks this often whether every node has joined
# Wait until ARGV[2] nodes of the Ray cluster at ARGV[1] are alive, for at most ARGV[3] seconds;
# print the alive nodes, head first, as JSON. One client connects once and polls (importing Ray
# and connecting take seconds: a fresh one per poll slowed the nodes' own start), in a child
# process, so that no Ray client of the job process outlives the cluster.
_WAIT_FOR_ALIVE_NODES = """
import json, sys, time
import ray
address, count, deadline = sys.argv[1], int(sys.argv[2]), time.monotonic() + float(sys.argv[3])
ray.init(address=address, log_to_driver=False)
while True:
    nodes = sorted(ray.nodes(), key=lambda n: "node:__internal_head__" not in n["Resources"])
    alive = [
        {"ip": n["NodeManagerAddress"], "cpus": n["Resources"].get("CPU", 0),
         "gpus": n["Resources"].get("GPU", 0)}
        for n in nodes if n["Alive"]
    ]
    if len(alive) >= count or time.monotonic() > deadline:
        break
    time.sleep(float(sys.argv[4]))
print(json.dumps(alive))
"""


def ray_ports(job_id: str, host_slot: int = 0) -> dict[str, int]:
    """The ports of the Ray processes of SLURM job `job_id`: its head's, and those of the job's
    `host_slot`-th node on one machine (0 unless several of the job's nodes share a machine)."""
    if not 0 <= host_slot < MAX_NODES_PER_HOST:
        raise ValueError(
            f"job {job_id}: {host_slot + 1} of its nodes on one machine; at most "
            f"{MAX_NODES_PER_HOST} fit the job's {PORTS_PER_JOB} ports"
        )
    first = PORT_BASE + (int(job_id) % PORT_SLOTS) * PORTS_PER_JOB
    node_first = first + len(HEAD_PORTS) + host_slot * len(NODE_PORTS)
    return {
        **{name: first + i for i, name in enumerate(HEAD_PORTS)},
        **{name: node_first + i for i, name in enumerate(NODE_PORTS)},
    }


@dataclass(frozen=True)
class Allocation:
    """What SLURM granted this job, as seen by one of its tasks (one task per node)."""

    job_id: str  # SLURM_JOB_ID (an array task has its own)
    restart: int  # SLURM_RESTART_COUNT: 0, then 1, 2, ... after each requeue
    hostnames: tuple[str, ...]  # the job's nodes; the first runs the head
    node_rank: int  # SLURM_NODEID of this task
    cpus: int  # per node: SLURM_CPUS_PER_TASK (else SLURM_CPUS_ON_NODE)
    gpus: int  # per node: SLURM_GPUS_ON_NODE
    mem_mb: int | None  # per node: SLURM_MEM_PER_NODE, None when the job did not ask
    submit_host: str  # SLURM_SUBMIT_HOST: the login node the dashboard tunnel goes through

    @classmethod
    def from_env(
        cls, hostnames: Sequence[str], environ: Mapping[str, str] | None = None
    ) -> Allocation:
        """The allocation from the SLURM variables of a job step's environment; `hostnames`
        from submitit's `JobEnvironment().hostnames` (SLURM_JOB_NODELIST expanded)."""
        env = os.environ if environ is None else environ
        if "SLURM_JOB_ID" not in env:
            raise RuntimeError(
                "SLURM_JOB_ID not set: a sweep job runs inside a SLURM job "
                "(submit it with cluster.submit_sweep)"
            )
        cpus = env.get("SLURM_CPUS_PER_TASK") or env.get("SLURM_CPUS_ON_NODE") or "1"
        mem = env.get("SLURM_MEM_PER_NODE")
        return cls(
            job_id=env["SLURM_JOB_ID"],
            restart=int(env.get("SLURM_RESTART_COUNT", "0")),
            hostnames=tuple(hostnames),
            node_rank=int(env.get("SLURM_NODEID", "0")),
            cpus=int(cpus),
            gpus=int(env.get("SLURM_GPUS_ON_NODE", "0") or 0),
            mem_mb=int(mem) if mem else None,
            submit_host=env.get("SLURM_SUBMIT_HOST", "LOGIN_HOST"),
        )

    @property
    def num_nodes(self) -> int:
        return len(self.hostnames)

    @property
    def head_ip(self) -> str:
        return socket.gethostbyname(self.hostnames[0])

    @property
    def node_ip(self) -> str:
        return socket.gethostbyname(self.hostnames[self.node_rank])

    @property
    def host_slot(self) -> int:
        """How many of the job's lower-ranked nodes are on this machine (their addresses are
        this machine's own): 0 on a real cluster."""
        return sum(
            _is_own_address(socket.gethostbyname(h)) for h in self.hostnames[: self.node_rank]
        )

    @property
    def ports(self) -> dict[str, int]:
        return ray_ports(self.job_id, self.host_slot)

    @property
    def head_address(self) -> str:
        return f"{self.head_ip}:{self.ports['gcs']}"

    @property
    def temp_dir(self) -> Path:
        """Short, and fresh for every run of the job and every node of it."""
        return Path("/tmp") / f"ray-{self.job_id}-{self.restart}-{self.node_rank}"

    def tunnel_command(self, user: str, local_port: int = 8265) -> str:
        """The ssh command that forwards the head's dashboard to `local_port` on a laptop."""
        dashboard = f"{self.head_ip}:{self.ports['dashboard']}"
        return f"ssh -N -L {local_port}:{dashboard} {user}@{self.submit_host}"


def ray_environment(token_file: Path) -> dict[str, str]:
    """The environment of every Ray process and driver of a sweep job.

    Token authentication is on: a cluster's dashboard and GCS are reachable by every user of the
    cluster network. The token lives in a file of the sweep's (shared) SLURM folder, readable by
    its owner only; the dashboard asks for it in the browser.
    """
    return {
        **os.environ,
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": str(token_file),
        # Ray drains a node on SIGTERM (up to 30 s) for Ray Serve's sake; a sweep has nothing to
        # drain, and a worker whose head is gone would wait out the whole timeout.
        "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0",
        # Ray's Prometheus exporters serve without the token on all interfaces: each node's
        # dashboard agent on --metrics-export-port, which metrics collection being off keeps
        # closed (as for a local head), and two on fixed ports (44217, 44227) that cannot be
        # switched off: an invalid port keeps them from starting.
        "RAY_enable_metrics_collection": "false",
        "AUTOSCALER_METRIC_PORT": NO_PORT,
        "DASHBOARD_METRIC_PORT": NO_PORT,
        **JOB_ENV,  # the driver's Ray job stops on SIGINT, Tune's graceful stop
    }


def ignore_usr2() -> None:
    """In a child before exec: USR2 (SLURM's preemption notice) is for the job process only.

    `scancel --signal=USR2` and `--signal=USR2@90` reach every process of the job step; Ray's
    processes and the Tune driver would die of it before the job could stop them in order.
    """
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)


class RayNode:
    """One `ray start --block` process of this job on this node (and the Ray processes it owns)."""

    def __init__(
        self, role: str, cmd: list[str], log_path: Path, env: dict[str, str], address: str
    ) -> None:
        self.role = role
        self.log_path = log_path
        self.env = env
        self.address = address  # the cluster's GCS, host:port
        self.temp_dir = Path(next(a for a in cmd if a.startswith("--temp-dir=")).split("=")[1])
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as log:
            self.process = subprocess.Popen(
                cmd,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,  # its own process group: the fallback kill reaches all
                preexec_fn=ignore_usr2,
            )

    @classmethod
    def head(cls, allocation: Allocation, log_dir: Path, env: dict[str, str]) -> RayNode:
        ip, ports = allocation.head_ip, allocation.ports
        cmd = [
            *_ray_start(allocation, ip),
            "--head",
            f"--port={ports['gcs']}",
            f"--dashboard-host={ip}",
            f"--dashboard-port={ports['dashboard']}",
            f"--ray-client-server-port={ports['client_server']}",
            "--include-dashboard=true",
        ]
        log = log_dir / f"{allocation.job_id}_{allocation.restart}_ray_head.log"
        return cls("head", cmd, log, env, allocation.head_address)

    @classmethod
    def worker(cls, allocation: Allocation, log_dir: Path, env: dict[str, str]) -> RayNode:
        cmd = [*_ray_start(allocation, allocation.node_ip), f"--address={allocation.head_address}"]
        name = f"{allocation.job_id}_{allocation.restart}_ray_worker{allocation.node_rank}.log"
        return cls("worker", cmd, log_dir / name, env, allocation.head_address)

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def failure(self, what: str) -> RuntimeError:
        """An error that names this node's logs."""
        return RuntimeError(
            f"Ray {self.role} on {socket.gethostname()}: {what}; see {self.log_path} and the "
            f"Ray logs in {self.temp_dir}/session_latest/logs"
        )

    def wait_for_nodes(self, count: int, timeout_s: float = 300) -> list[dict]:
        """Block until `count` Ray nodes are alive in this head's cluster; returns them
        (`ip`, `cpus`, `gpus`: what each node offers Ray), head first."""
        host, port = self.address.rsplit(":", 1)
        deadline = time.monotonic() + timeout_s
        alive: list[dict] = []
        while time.monotonic() < deadline:
            if not self.alive:
                raise self.failure(f"exited with {self.process.returncode} while starting")
            if _port_open(host, int(port)):
                left = max(deadline - time.monotonic(), 0)
                client = subprocess.Popen(
                    [sys.executable, "-c", _WAIT_FOR_ALIVE_NODES, self.address, str(count)]
                    + [f"{left:.1f}", str(NODES_POLL_S)],
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                    env=self.env,
                )
                while True:
                    try:
                        stdout, _ = client.communicate(timeout=NODES_POLL_S)
                        break
                    except subprocess.TimeoutExpired:
                        if not self.alive or time.monotonic() > deadline + 30:
                            client.kill()
                            client.communicate()
                            stdout = ""
                            break
                lines = stdout.splitlines() if client.returncode == 0 else []
                alive = json.loads(lines[-1]) if lines else []
                if len(alive) >= count:
                    return alive
            time.sleep(NODES_POLL_S)  # not up yet, or the client failed to connect: again
        workers = self.log_path.name.replace("_ray_head.log", "_ray_worker<node>.log")
        raise self.failure(
            f"{len(alive)} of {count} nodes alive after {timeout_s:.0f} s (the other nodes' "
            f"logs: {self.log_path.parent / workers})"
        )

    def stop(self, remove_temp_dir: bool, timeout_s: float = 30) -> None:
        """SIGTERM to the `ray start` process (it stops the Ray processes it started), then
        SIGKILL to its process group if it is not gone within `timeout_s`. Keep the temp dir
        (Ray's logs) where something failed."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.process.pid, signal.SIGKILL)  # leftovers of our own group only
        except ProcessLookupError:
            pass
        self.process.wait()
        if remove_temp_dir:
            shutil.rmtree(self.temp_dir, ignore_errors=True)


def _ray_start(allocation: Allocation, ip: str) -> list[str]:
    ports = allocation.ports
    cmd = [
        sys.executable,
        "-m",
        "ray.scripts.scripts",
        "start",
        "--block",
        "--disable-usage-stats",
        f"--node-ip-address={ip}",
        f"--temp-dir={allocation.temp_dir}",
        f"--num-cpus={allocation.cpus}",
        f"--num-gpus={allocation.gpus}",
        f"--node-manager-port={ports['node_manager']}",
        f"--object-manager-port={ports['object_manager']}",
        f"--metrics-export-port={ports['metrics_export']}",
        f"--dashboard-agent-grpc-port={ports['dashboard_agent_grpc']}",
        f"--dashboard-agent-listen-port={ports['dashboard_agent_listen']}",
        f"--runtime-env-agent-port={ports['runtime_env_agent']}",
    ]
    if allocation.mem_mb is not None:
        total = allocation.mem_mb * 2**20
        store = int(total * OBJECT_STORE_SHARE)
        cmd += [f"--object-store-memory={store}", f"--memory={total - store}"]
    return cmd


def _is_own_address(ip: str) -> bool:
    """Whether `ip` is an address of this machine (it can bind to it)."""
    with socket.socket() as s:
        try:
            s.bind((ip, 0))
        except OSError:
            return False
    return True


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


def run_worker(allocation: Allocation, log_dir: Path, env: dict[str, str]) -> None:
    """On nodes 1..N-1: wait for the head, join it, and leave once the head is gone."""
    host, port = allocation.head_ip, allocation.ports["gcs"]
    deadline = time.monotonic() + HEAD_WAIT_S
    while not _port_open(host, port):
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"the Ray head {host}:{port} did not come up within {HEAD_WAIT_S} s; see the "
                f"head's log {log_dir}/{allocation.job_id}_{allocation.restart}_ray_head.log"
            )
        time.sleep(HEAD_POLL_S)
    node = RayNode.worker(allocation, log_dir, env)
    misses = 0
    while node.alive and misses < 3:  # the head stops at the end of the sweep
        misses = 0 if _port_open(host, port) else misses + 1
        time.sleep(HEAD_POLL_S)
    head_gone = not _port_open(host, port)
    node.stop(remove_temp_dir=head_gone)
    if not head_gone:
        raise node.failure(f"exited with {node.process.returncode} while the head runs")
