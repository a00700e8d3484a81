"""Named SLURM resource profiles: what one node of a sweep's Ray cluster asks SLURM for.

    get_profile("a100")                        # the A100 nodes the paper's grid runs on
    get_profile("a100", time_min=240, qos="short")
    get_profile("local")                       # the localhost SLURM of tests/cluster

A sweep job is one SLURM job of `nodes` nodes with one task per node: the task on the first node
runs the Ray head and the Tune driver, the others run Ray workers, and each node's Ray offers
exactly the CPUs, GPUs and memory below (not the whole node). Edit `PROFILES` for your site;
any field can also be overridden per submission (`submit_sweep(..., time_min=240)`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass


@dataclass(frozen=True)
class Profile:
    """The SLURM request for each node of a sweep job."""

    partition: str | None  # SLURM partition; None: the cluster's default partition
    gpus_per_node: int  # GPUs of each node given to Ray (0: a CPU-only sweep)
    cpus_per_task: int  # CPUs of each node given to Ray (one task per node)
    mem_gb: float  # memory of each node; Ray's object store gets 30% of it
    time_min: int  # wall-clock limit of one run of the job; at the limit it requeues itself
    signal_delay_s: int = 90  # USR2 comes this long before the limit: time to stop and requeue
    max_timeouts: int = 10  # requeues after hitting the time limit (preemptions do not count)
    account: str | None = None  # SLURM account to charge, where the site requires one
    qos: str | None = None  # SLURM quality of service
    constraint: str | None = None  # SLURM node features, e.g. "a100-80gb"


PROFILES: dict[str, Profile] = {
    # 4 x A100 per node, 8 CPUs and 60 GB per GPU: small trials share a GPU (per-study resources).
    "a100": Profile(
        partition="gpu", gpus_per_node=4, cpus_per_task=32, mem_gb=240, time_min=24 * 60
    ),
    # The localhost SLURM of tests/cluster (2 cores): CPU only, short limit.
    "local": Profile(partition="debug", gpus_per_node=0, cpus_per_task=2, mem_gb=4, time_min=30),
}


def get_profile(name: str, **overrides: object) -> Profile:
    """The profile `name` with `overrides` applied; unknown names and fields list the valid ones."""
    if name not in PROFILES:
        raise ValueError(
            f"unknown SLURM profile {name!r}; profiles: {', '.join(sorted(PROFILES))} "
            "(add yours to cluster/profiles.py)"
        )
    fields = [f.name for f in dataclasses.fields(Profile)]
    unknown = sorted(set(overrides) - set(fields))
    if unknown:
        raise ValueError(
            f"unknown profile field(s) {', '.join(unknown)}; valid fields: {', '.join(fields)}"
        )
    profile = dataclasses.replace(PROFILES[name], **overrides)
    for field in ("gpus_per_node", "cpus_per_task", "time_min", "signal_delay_s"):
        value = getattr(profile, field)
        if not isinstance(value, int) or value < (0 if field == "gpus_per_node" else 1):
            raise ValueError(f"profile {name}: {field} must be a positive integer, got {value!r}")
    if profile.signal_delay_s >= profile.time_min * 60:
        raise ValueError(
            f"profile {name}: signal_delay_s={profile.signal_delay_s} leaves no run time within "
            f"time_min={profile.time_min}; raise time_min or lower signal_delay_s"
        )
    return profile
