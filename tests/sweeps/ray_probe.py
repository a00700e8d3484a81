"""Probe a running Ray's ports from another process, without its token (tests/sweeps).

    python tests/sweeps/ray_probe.py IP PORT [PORT ...] --gcs PORT

For each port, all at once (a thread each), it tries what a client of that port would: HTTP (the
dashboard, the agents), and gRPC calls of Ray's services (GCS, raylet, core worker, agents);
meanwhile `ray.init` against the GCS.
A port is open when any of these is served without the token: an HTTP answer other than 401/403,
a gRPC status other than UNAUTHENTICATED or UNIMPLEMENTED (a method the port does not serve).
Prints one JSON line: {"open": [[port, what], ...], "unauthenticated": [ports], "ray_init": ...}.

The tests call `probe(pids, gcs_port, home)`: it finds every TCP port the processes `pids` listen
on outside loopback and runs this script on them, at this machine's non-loopback address.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc

METHODS = (  # one cheap read-only method of each of Ray's gRPC services
    "/ray.rpc.NodeInfoGcsService/GetAllNodeInfo",
    "/ray.rpc.JobInfoGcsService/GetAllJobInfo",
    "/ray.rpc.NodeManagerService/GetNodeStats",
    "/ray.rpc.CoreWorkerService/GetCoreWorkerStats",
    "/ray.rpc.ReporterService/GetProfilingStats",
    "/ray.rpc.LogService/ListLogs",
    "/ray.rpc.ObjectManagerService/Pull",
)


def probe_http(ip: str, port: int) -> str | None:
    """None when the port does not speak HTTP/1 or refuses without the token; else what it said."""
    try:
        with urllib.request.urlopen(f"http://{ip}:{port}/", timeout=3) as response:
            return f"HTTP {response.status}"
    except urllib.error.HTTPError as err:
        return None if err.code in (401, 403) else f"HTTP {err.code}"
    except (OSError, ValueError, http.client.HTTPException):
        return None  # not HTTP/1 (gRPC speaks HTTP/2), reset, timeout


def probe_grpc(ip: str, port: int) -> tuple[str | None, bool]:
    """(what was served without the token, or None; whether some call was refused as
    unauthenticated)."""
    refused = False
    with grpc.insecure_channel(f"{ip}:{port}") as channel:
        for method in METHODS:
            call = channel.unary_unary(method)
            try:
                call(b"", timeout=3)
                return f"gRPC {method} answered", refused
            except grpc.RpcError as err:
                code = err.code()
                if code == grpc.StatusCode.UNAUTHENTICATED:
                    refused = True
                elif code not in (grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.UNAVAILABLE):
                    if code != grpc.StatusCode.DEADLINE_EXCEEDED:
                        return f"gRPC {method}: {code.name}", refused
    return None, refused


def probe_port(ip: str, port: int) -> tuple[str | None, bool]:
    """(what `port` served without the token, or None; whether a gRPC call was refused as
    unauthenticated): HTTP first, then gRPC when HTTP was not served."""
    what = probe_http(ip, port)
    return (what, False) if what is not None else probe_grpc(ip, port)


def probe_ray_init(ip: str, gcs_port: int) -> str:
    # Ray retries its first GCS call 20 times, a second apart (by default), for a GCS still
    # starting; the callers probe a running GCS (a sweep's trials run, a head's node is up), so
    # 3 tries: a refusal in ~3 s, not ~20 s (with the token, the first try connects)
    os.environ.setdefault("RAY_NUM_REDIS_GET_RETRIES", "3")
    import ray

    try:
        ray.init(address=f"{ip}:{gcs_port}", log_to_driver=False)
    except Exception as err:  # what a client without the token meets
        return f"refused: {type(err).__name__}"
    nodes = len(ray.nodes())
    ray.shutdown()
    return f"CONNECTED ({nodes} nodes)"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("ip")
    parser.add_argument("ports", type=int, nargs="+")
    parser.add_argument("--gcs", type=int, required=True)
    args = parser.parse_args()
    assert "RAY_AUTH_TOKEN_PATH" not in os.environ and "RAY_AUTH_TOKEN" not in os.environ
    with ThreadPoolExecutor(max_workers=len(args.ports)) as pool:  # every port at once
        found = pool.map(lambda port: probe_port(args.ip, port), args.ports)
        ray_init = probe_ray_init(args.ip, args.gcs)  # meanwhile, in the main thread
        found = list(found)
    result = {
        "open": [[port, what] for port, (what, _) in zip(args.ports, found) if what],
        "unauthenticated": [port for port, (_, no) in zip(args.ports, found) if no],
        "ray_init": ray_init,
    }
    print(json.dumps(result), flush=True)


def descendants(pid: int) -> list[int]:
    """Every live process below `pid` (via /proc: a driver's or `ray start`'s Ray processes)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # the process ended while we looked
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        below = children.get(todo.pop(), [])
        found += below
        todo += below
    return found


def listening(pids: list[int]) -> list[tuple[str, int, int]]:
    """(hex address, port, pid) of every TCP socket the processes `pids` listen on."""
    inodes = {}
    for pid in pids:
        try:
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes[target[8:-1]] = pid
        except OSError:
            continue
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                address, port = fields[1].rsplit(":", 1)
                found.append((address, int(port, 16), inodes[fields[9]]))
    return found


LOOPBACK = ("0100007F", "00000000000000000000000001000000")  # 127.0.0.1, ::1 as /proc shows them


def own_address() -> str | None:
    """This machine's non-loopback IPv4 address (where another machine would connect), if any."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("198.51.100.1", 9))  # no packet is sent: the kernel picks the route
            address = s.getsockname()[0]
        except OSError:
            address = socket.gethostbyname(socket.gethostname())
    return None if address.startswith("127.") else address


def probe(pids: list[int], gcs_port: int, home: Path) -> tuple[list[int], dict]:
    """(the ports `pids` listen on outside loopback, this script's result on them at
    `own_address()`), from a process without the token (no RAY_AUTH_*, HOME `home`: no
    ~/.ray/auth_token either)."""
    exposed = sorted({port for addr, port, _ in listening(pids) if addr not in LOOPBACK})
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    out = subprocess.run(
        [sys.executable, __file__, own_address(), *map(str, exposed), "--gcs", str(gcs_port)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**env, "HOME": str(home)},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return exposed, json.loads(out.stdout.splitlines()[-1])


if __name__ == "__main__":
    main()
