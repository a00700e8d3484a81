"""Probe a running Ray's ports from another process, without its token (tests/sweeps).

    python tests/sweeps/ray_probe.py IP PORT [PORT ...] --gcs PORT

For each port it tries what a client of that port would: HTTP (the dashboard, the agents), and
gRPC calls of Ray's services (GCS, raylet, core worker, agents); then `ray.init` against the GCS.
A port is open when any of these is served without the token: an HTTP answer other than 401/403,
a gRPC status other than UNAUTHENTICATED or UNIMPLEMENTED (a method the port does not serve).
Prints one JSON line: {"open": [[port, what], ...], "unauthenticated": [ports], "ray_init": ...}.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import urllib.error
import urllib.request

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


def probe_ray_init(ip: str, gcs_port: int) -> str:
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
    opened, refused = [], []
    for port in args.ports:
        what = probe_http(args.ip, port)
        if what is None:
            what, unauthenticated = probe_grpc(args.ip, port)
            if unauthenticated:
                refused.append(port)
        if what is not None:
            opened.append([port, what])
    result = {"open": opened, "unauthenticated": refused}
    result["ray_init"] = probe_ray_init(args.ip, args.gcs)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
