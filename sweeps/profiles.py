"""Named SLURM resource profiles: what each node of a sweep job offers (the sweep's plan reads
them; `python -m cluster submit` requests them).

    get_profile("a100")                          # a node of 4 A100s (image studies)
    get_profile("cpu")                           # a CPU node (bit flip needs no GPU)
    get_profile("a100", time_min=240, qos="short")
    profile_fields(["partition=gpu", "time=4:00:00", "exclude=gpu07"])
        # ({"partition": "gpu", "time_min": 240}, {"exclude": "gpu07"})

A sweep job is one SLURM job of `nodes` nodes with one task per node: the task on the first node
runs the Ray head and the Tune driver, the others run Ray workers, and each node's Ray offers
exactly the CPUs, GPUs and memory below (not the whole node). No profile names a partition,
account or QOS: those are the site's (pass them with `--slurm partition=... account=...`).
Plain data: no submitit here (`cluster.profiles` checks the other `--slurm` keys against it).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class Profile:
    """The SLURM request for each node of a sweep job."""

    device: str  # the device kind trials run on: a key of sweeps/costs.json (a100, cpu)
    gpus_per_node: int  # GPUs of each node given to Ray (0: a CPU-only sweep)
    cpus_per_task: int  # CPUs of each node given to Ray (one task per node)
    mem_gb: float  # memory of each node; Ray's object store gets 30% of it
    time_min: int  # wall-clock limit of one run of the job; at the limit it requeues itself
    partition: str | None = None  # SLURM partition; None: the cluster's default partition
    signal_delay_s: int = 90  # USR2 comes this long before the limit: time to stop and requeue
    max_timeouts: int = 10  # requeues after hitting the time limit (preemptions do not count)
    account: str | None = None  # SLURM account to charge, where the site requires one
    qos: str | None = None  # SLURM quality of service
    constraint: str | None = None  # SLURM node features, e.g. "a100-80gb"


PROFILES: dict[str, Profile] = {
    # 4 x A100 per node, 8 CPUs and 60 GB per GPU: small trials share a GPU (per-study resources).
    "a100": Profile(device="a100", gpus_per_node=4, cpus_per_task=32, mem_gb=240, time_min=1440),
    # A CPU node: the bit-flip ensembles (one CPU each).
    "cpu": Profile(device="cpu", gpus_per_node=0, cpus_per_task=32, mem_gb=64, time_min=1440),
    # The localhost SLURM of tests/cluster (2 cores): CPU only, short limit.
    "local": Profile(
        device="cpu", gpus_per_node=0, cpus_per_task=2, mem_gb=4, time_min=30, partition="debug"
    ),
}
# `--slurm` keys that set a profile field (SLURM's option name -> the field)
PROFILE_KNOBS = {
    "partition": "partition",
    "time": "time_min",
    "mem": "mem_gb",
    "gpus_per_node": "gpus_per_node",
    "cpus_per_task": "cpus_per_task",
    "account": "account",
    "qos": "qos",
    "constraint": "constraint",
    "signal_delay_s": "signal_delay_s",
    "max_timeouts": "max_timeouts",
}


def get_profile(name: str, **overrides: object) -> Profile:
    """The profile `name` with `overrides` applied; unknown names and fields list the valid ones."""
    if name not in PROFILES:
        raise ValueError(
            f"unknown SLURM profile {name!r}; profiles: {', '.join(sorted(PROFILES))} "
            "(add yours to sweeps/profiles.py)"
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


def parse_time(text: str) -> int:
    """SLURM's time formats as minutes: M, M:S, H:M:S, D-H, D-H:M, D-H:M:S (seconds round up)."""
    match = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", text.strip())
    if not match:
        raise ValueError(f"--slurm time={text!r}: expected minutes, H:M:S or D-H:M:S")
    days, a, b, c = match.groups()
    if days is not None:  # D-H[:M[:S]]
        h, m, s = int(a), int(b or 0), int(c or 0)
        total_s = ((int(days) * 24 + h) * 60 + m) * 60 + s
    elif c is not None:  # H:M:S
        total_s = (int(a) * 60 + int(b)) * 60 + int(c)
    elif b is not None:  # M:S
        total_s = int(a) * 60 + int(b)
    else:  # M
        total_s = int(a) * 60
    return -(-total_s // 60)


def parse_mem_gb(text: str) -> float:
    """SLURM's memory sizes in GB: a number with K, M, G or T (optionally B); bare: megabytes."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([KMGT]?)B?", text.strip().upper())
    if not match:
        raise ValueError(f"--slurm mem={text!r}: expected e.g. 240G, 4000M or 240GB")
    number, unit = float(match[1]), match[2] or "M"
    return number * {"K": 2**-20, "M": 2**-10, "G": 1, "T": 2**10}[unit]


def profile_fields(items: Iterable[str]) -> tuple[dict[str, object], dict[str, str]]:
    """`--slurm KEY=VALUE` items as (profile field overrides, the other items by key).

    KEY is a SLURM option name, with dashes or underscores (`gpus-per-node`); the profile's fields
    are `PROFILE_KNOBS` (time in SLURM's formats, mem in its sizes). The other keys are returned
    as given, for `cluster.profiles.slurm_knobs` to check against submitit."""
    fields: dict[str, object] = {}
    rest: dict[str, str] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise ValueError(f"--slurm {item!r}: expected KEY=VALUE")
        if key == "time":
            fields["time_min"] = parse_time(text)
        elif key == "mem":
            fields["mem_gb"] = parse_mem_gb(text)
        elif key in PROFILE_KNOBS:
            field = PROFILE_KNOBS[key]
            integer = field in ("gpus_per_node", "cpus_per_task", "signal_delay_s", "max_timeouts")
            try:
                fields[field] = int(text) if integer else text
            except ValueError:
                raise ValueError(f"--slurm {key}={text!r}: expected an integer") from None
        else:
            rest[key] = text
    return fields, rest
