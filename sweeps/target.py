"""Where a sweep's trials will run, and whether they fit there: checked before anything starts.

    local_target(num_cpus=None)                    # this machine (what the local Ray offers)
    slurm_target("a100", nodes=2, fields={...})    # a SLURM job of the profile's nodes
    check_resources(study.resources(scale), target, "study cloning_noise (scale paper)")

A trial that asks for more than one node of the target has (a GPU on a machine without one, more
CPUs than a node has) would wait forever in Ray's queue; `check_resources` refuses it at once,
saying what is missing and where it would fit. `Target.device` names the device kind of the cost
table (sweeps/costs.py): `cpu`, or a GPU model (`a100`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Target:
    """The nodes a sweep runs on."""

    name: str  # for messages: "this machine", "SLURM profile a100, 2 nodes"
    device: str  # device kind of the trials: cpu | a100 | ...
    nodes: int
    cpus_per_node: int
    gpus_per_node: int

    @property
    def devices(self) -> int:
        """The devices the cost's wall time divides by: GPUs, else CPU cores."""
        per_node = self.gpus_per_node if self.device != "cpu" else self.cpus_per_node
        return self.nodes * per_node


def gpu_kind(name: str) -> str:
    """The cost table's kind of a CUDA device name: `NVIDIA A100-SXM4-80GB` -> `a100`."""
    match = re.search(r"\b([A-Z]{1,2}\d{2,4})\b", name)
    return match[1].lower() if match else "cuda"


def local_target(num_cpus: int | None = None) -> Target:
    """This machine: its CPUs (or `num_cpus`, the local Ray's cap) and CUDA GPUs."""
    import torch

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    cpus = num_cpus or os.cpu_count() or 1
    device = gpu_kind(torch.cuda.get_device_name(0)) if gpus else "cpu"
    return Target("this machine", device, 1, cpus, gpus)


def slurm_target(
    profile: str, nodes: int = 1, fields: Mapping[str, object] | None = None
) -> Target:
    """A SLURM job of `nodes` nodes of `profile` (sweeps/profiles.py) with its `fields`
    overridden (`--slurm` knobs); nothing is asked of SLURM."""
    from sweeps.profiles import get_profile

    resolved = get_profile(profile, **(fields or {}))
    name = f"SLURM profile {profile}, {nodes} node{'s' if nodes != 1 else ''}"
    return Target(name, resolved.device, nodes, resolved.cpus_per_task, resolved.gpus_per_node)


def check_resources(resources: Mapping[str, float], target: Target, what: str) -> None:
    """Raise ValueError when one trial (`resources`: {"cpu": n, "gpu": g}) does not fit one node
    of `target`, saying what is missing."""
    cpu, gpu = float(resources.get("cpu", 1)), float(resources.get("gpu", 0))
    if gpu > 0 and target.gpus_per_node == 0:
        where = (
            "this machine has no CUDA GPU (torch.cuda.is_available() is false)"
            if target.name == "this machine"
            else f"{target.name} has no GPUs (gpus_per_node=0)"
        )
        raise ValueError(
            f"{what} needs {gpu:g} GPU per trial and {where}: its trials would wait forever. "
            "Run it where there is a GPU (python -m cluster submit ... --profile a100), or "
            "choose a scale that runs on CPUs (--scale smoke)"
        )
    if gpu > target.gpus_per_node:
        raise ValueError(
            f"{what} needs {gpu:g} GPUs per trial; {target.name} has {target.gpus_per_node} "
            "per node"
        )
    if cpu > target.cpus_per_node:
        raise ValueError(
            f"{what} needs {cpu:g} CPUs per trial; {target.name} has {target.cpus_per_node} per "
            "node (--num-cpus, or --slurm cpus-per-task=...)"
        )
