"""The Ray cluster of a sweep job: the allocation it reads, its ports, and a real head."""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from cluster.job import _auth_token
from cluster.ray_cluster import (
    MAX_NODES_PER_HOST,
    NODE_PORTS,
    PORT_BASE,
    Allocation,
    RayNode,
    ray_environment,
    ray_ports,
)
from tests.sweeps.ray_probe import descendants, own_address, probe

ENV = {
    "SLURM_JOB_ID": "4242",
    "SLURM_RESTART_COUNT": "2",
    "SLURM_NODEID": "1",
    "SLURM_CPUS_PER_TASK": "32",
    "SLURM_CPUS_ON_NODE": "64",
    "SLURM_GPUS_ON_NODE": "4",
    "SLURM_MEM_PER_NODE": "245760",
    "SLURM_SUBMIT_HOST": "login1",
}


def test_allocation_counts_what_slurm_granted_not_the_node():
    a = Allocation.from_env(["localhost", "gpu07"], ENV)
    assert (a.job_id, a.restart, a.node_rank, a.num_nodes) == ("4242", 2, 1, 2)
    assert (a.cpus, a.gpus, a.mem_mb) == (32, 4, 245760)  # the task's CPUs, not the node's 64
    assert a.temp_dir == Path("/tmp/ray-4242-2-1")  # fresh per run and node of the job, short
    assert a.head_address == f"127.0.0.1:{a.ports['gcs']}"
    assert a.tunnel_command("ada") == f"ssh -N -L 8265:127.0.0.1:{a.ports['dashboard']} ada@login1"
    bare = Allocation.from_env(["localhost"], {"SLURM_JOB_ID": "7", "SLURM_CPUS_ON_NODE": "3"})
    assert (bare.cpus, bare.gpus, bare.mem_mb, bare.restart) == (3, 0, None, 0)


def test_allocation_outside_slurm_says_how_to_submit():
    with pytest.raises(RuntimeError, match="SLURM_JOB_ID not set.*cluster.submit_sweep"):
        Allocation.from_env(["localhost"], {})


def test_ports_are_distinct_per_job_and_in_range():
    ports = ray_ports("12345")
    assert len(set(ports.values())) == len(ports)
    both = set(ports.values()) | set(ray_ports("12345", host_slot=1).values())
    assert len(both) == len(ports) + len(NODE_PORTS)  # a second node adds its own node ports
    neighbour = set(ray_ports("12346").values()) | set(ray_ports("12346", host_slot=1).values())
    assert not neighbour & both
    for job in ("0", "499", "12345"):
        for slot in range(MAX_NODES_PER_HOST):
            assert all(PORT_BASE <= p < PORT_BASE + 10_000 for p in ray_ports(job, slot).values())
    assert ray_ports("499") == {k: v + 499 * 20 for k, v in ray_ports("0").items()}
    with pytest.raises(ValueError, match="3 of its nodes on one machine; at most 2"):
        ray_ports("12345", host_slot=2)


def test_nodes_of_one_job_on_one_machine_do_not_share_ports_or_temp_dirs():
    """As on the test cluster (tests/cluster/slurm_local.py): several slurmd on one machine."""
    hosts = ["127.0.0.1", "127.0.0.2"]
    head = Allocation.from_env(hosts, {**ENV, "SLURM_NODEID": "0"})
    worker = Allocation.from_env(hosts, ENV)
    assert (head.host_slot, worker.host_slot) == (0, 1)
    assert worker.head_address == head.head_address == f"127.0.0.1:{ray_ports('4242')['gcs']}"
    assert not {worker.ports[n] for n in NODE_PORTS} & set(head.ports.values())
    assert head.temp_dir != worker.temp_dir
    # A head on another machine (a documentation address, never this machine's): no shift.
    remote = Allocation.from_env(["203.0.113.7", "127.0.0.2"], ENV)
    assert remote.host_slot == 0
    assert remote.ports == head.ports


def ray_processes(temp_dir: str | Path) -> list[int]:
    """PIDs of the processes whose command line names `temp_dir` (Ray's give their session's)."""
    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if str(temp_dir).encode() in cmdline.read_bytes():
                pids.append(int(cmdline.parent.name))
        except OSError:
            continue
    return pids


@pytest.mark.slow
def test_head_starts_with_token_auth_and_stops_by_pid(tmp_path):
    job_id = str(os.getpid())  # not another live test session's: ports and temp dir follow it
    env = {"SLURM_JOB_ID": job_id, "SLURM_CPUS_PER_TASK": "1", "SLURM_MEM_PER_NODE": "2048"}
    allocation = Allocation.from_env(["localhost"], env)
    token = _auth_token(tmp_path)
    assert token.stat().st_mode & 0o777 == 0o600
    head = RayNode.head(allocation, tmp_path, ray_environment(token))
    try:
        [node] = head.wait_for_nodes(1, timeout_s=120)
        assert (node["cpus"], node["gpus"]) == (1, 0)  # the allocation's, not the machine's
        url = f"http://127.0.0.1:{allocation.ports['dashboard']}/api/jobs/"
        with pytest.raises(urllib.error.HTTPError) as denied:
            urllib.request.urlopen(url, timeout=10)
        assert denied.value.code == 401
        request = urllib.request.Request(
            url, headers={"Authorization": f"Bearer {token.read_text()}"}
        )
        assert urllib.request.urlopen(request, timeout=10).status == 200
        assert ray_processes(allocation.temp_dir)
        # no port of the head answers without the token (the metrics export port served
        # Prometheus metrics to anyone until metrics collection was turned off)
        if own_address() is not None:
            pids = [head.process.pid, *descendants(head.process.pid)]
            exposed, result = probe(pids, allocation.ports["gcs"], tmp_path)
            assert allocation.ports["gcs"] in exposed and result["open"] == [], result
            assert allocation.ports["metrics_export"] not in exposed
            assert result["ray_init"].startswith("refused"), result
    finally:
        head.stop(remove_temp_dir=True)
    assert not ray_processes(allocation.temp_dir), "Ray processes survived the head's stop"
    assert not allocation.temp_dir.exists()
    assert "Ray runtime started" in head.log_path.read_text()
