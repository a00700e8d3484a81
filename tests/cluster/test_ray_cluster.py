"""The Ray cluster of a sweep job: the allocation it reads, its ports, and a real head."""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from cluster.job import _auth_token
from cluster.ray_cluster import PORT_BASE, Allocation, RayNode, ray_environment, ray_ports

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
    assert a.temp_dir == Path("/tmp/ray-4242-2")  # fresh per run of the job, and short
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
    neighbours = set(ray_ports("12346").values())
    assert not neighbours & set(ports.values())
    assert all(PORT_BASE <= p < PORT_BASE + 10_000 for p in ports.values())
    assert ray_ports("999") == {k: v + 9990 for k, v in ray_ports("0").items()}


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
        head.wait_for_nodes(1, timeout_s=120)
        url = f"http://127.0.0.1:{allocation.ports['dashboard']}/api/jobs/"
        with pytest.raises(urllib.error.HTTPError) as denied:
            urllib.request.urlopen(url, timeout=10)
        assert denied.value.code == 401
        request = urllib.request.Request(
            url, headers={"Authorization": f"Bearer {token.read_text()}"}
        )
        assert urllib.request.urlopen(request, timeout=10).status == 200
        assert ray_processes(allocation.temp_dir)
    finally:
        head.stop(remove_temp_dir=True)
    assert not ray_processes(allocation.temp_dir), "Ray processes survived the head's stop"
    assert not allocation.temp_dir.exists()
    assert "Ray runtime started" in head.log_path.read_text()
