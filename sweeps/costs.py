"""What a sweep costs before it runs: steps per trial from its config, seconds per step from the
cost table, device-hours and wall time for an allocation.

Steps come from each trial's resolved config, never from a guess:
    cloning    base_epochs x ceil(N / batch_size) steps of the base alone, then
               clone_epochs x ceil(N / batch_size) steps of base and clone side by side
               (N: the dataset's training images, `TRAIN_IMAGES`, or the synthetic spec's);
               split (`part`, docs/cloning.md): part=base is (base_epochs + clone_epochs) x
               ceil(N / batch_size) steps of the base alone (phase `base`), part=clone
               clone_epochs x ceil(N / batch_size) steps of the clone alone (phase
               `clone_alone`, costed as the `clone` phase's figure less the `base` phase's)
    continual  tasks x task_length x (ceil(classes_per_task x N / classes / batch_size) per
               epoch when task_unit=epochs, else 1); tasks = num_tasks, else classes // per task
    bitflip    steps x members (member-steps of the batched ensemble: methods x lr x seeds)

The cost table (`sweeps/costs.json`, written by `python benchmarks/bench_training.py --costs`
on the machine it measures) holds per device kind (`cpu`, `a100`, ...) the seconds per step of
each experiment phase, architecture, input shape and batch, measured with the real experiment loop
(`core.experiments.<name>.run`) at two lengths, so that start-up cancels out. A device kind may
be listed as not yet measured; an architecture with no figure is named as such in the plan.

CPU figures are single-thread seconds (a core-second per step); GPU figures one trial alone on
one GPU. A device kind's `memory` section (`write_memory`, `memory_bytes`; written by
`python benchmarks/bench_memory.py --write`) holds the bytes one model's training step needs, by
the same keys, and says how they were measured (`MEMORY_HOW`: tensor bytes on the CPU; GPU memory
is not measured); the continual study's GPU shares read it.

Device-hours are the sum over trials of steps x seconds per step; wall time is
device-hours over the allocation's devices (CPU cores, or GPUs), never less than the longest
trial: perfect packing, so a lower bound where trials wait for each other and an upper bound
where several trials share a GPU faster than one alone.

Model-steps (`model_steps`, the unit of `sweeps plan`'s line `model-steps: BEFORE -> AFTER`):
one optimizer step of one model, unweighted: a step of base and clone side by side is two, though
the clone (`factor` times wider, about factor^2 times the base's weights) costs more than the
base; the device-hours weigh each phase by its measured seconds per step.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

COSTS_FILE = Path(__file__).with_name("costs.json")
# training images (classes x images per class) of the datasets core.data loads (docs/data.md)
TRAIN_IMAGES = {
    "cifar10": (10, 5000),
    "cifar100": (100, 500),
    "mnist": (10, 6000),  # 60,000 images; classes hold 5,421 to 6,742
    "tiny_imagenet": (200, 500),
}
SHAPES = {
    "cifar10": (3, 32, 32),
    "cifar100": (3, 32, 32),
    "mnist": (1, 28, 28),
    "tiny_imagenet": (3, 64, 64),
}


@dataclass(frozen=True)
class Work:
    """The steps of one trial, by what one step costs (a key of the cost table)."""

    experiment: str
    phase: str  # cloning: base | clone; continual: train; bitflip: member
    arch: str  # image model arch, or the bit-flip width (`width5`)
    shape: str  # input shape `3x32x32`; bit flip: its method, e.g. `sgd_then_cbp`, `cbp@native`
    batch: int  # batch size (bit flip: the ensemble's members, all methods)
    steps: int
    models: int = 1  # models trained per step (cloning's clone phase: base and clone)

    def key(self) -> tuple[str, str, str, str, int]:
        return (self.experiment, self.phase, self.arch, self.shape, self.batch)


def _dataset(cfg: Any) -> tuple[int, int, str]:
    """(classes, training images per class, shape text) of an image config's dataset."""
    if cfg.dataset == "synthetic":
        spec = cfg.synthetic
        return spec.classes, spec.train_per_class, f"{spec.channels}x{spec.size}x{spec.size}"
    classes, per_class = TRAIN_IMAGES[cfg.dataset]
    return classes, per_class, "x".join(map(str, SHAPES[cfg.dataset]))


def _epoch(cfg: Any) -> int:
    """Steps per epoch of an image config over its whole training split."""
    classes, per_class, _ = _dataset(cfg)
    return math.ceil(classes * per_class / cfg.batch_size)


def trial_work(experiment: str, cfg: Any) -> list[Work]:
    """The steps of the trial whose resolved config is `cfg` (module docstring)."""
    if experiment == "cloning":
        shape, epoch = _dataset(cfg)[2], _epoch(cfg)
        arch, batch, base, clone = cfg.model.arch, cfg.batch_size, cfg.base_epochs, cfg.clone_epochs
        if cfg.part == "base":
            return [Work("cloning", "base", arch, shape, batch, (base + clone) * epoch)]
        if cfg.part == "clone":
            return [Work("cloning", "clone_alone", arch, shape, batch, clone * epoch)]
        return [
            Work("cloning", "base", arch, shape, batch, base * epoch),
            Work("cloning", "clone", arch, shape, batch, clone * epoch, models=2),
        ]
    if experiment == "continual":
        classes, per_class, shape = _dataset(cfg)
        tasks = cfg.num_tasks or classes // cfg.classes_per_task
        epoch = math.ceil(cfg.classes_per_task * per_class / cfg.batch_size)
        unit = epoch if cfg.task_unit == "epochs" else 1
        steps = tasks * cfg.task_length * unit
        models = cfg.pack  # a packed trial trains `pack` runs side by side
        return [Work("continual", "train", cfg.model.arch, shape, cfg.batch_size, steps, models)]
    if experiment == "bitflip":  # batch: the trial's members; the engine (if not batched)
        per_method, members = len(cfg.lr) * len(cfg.seed), len(cfg.members())
        engine = "" if cfg.engine == "batched" else f"@{cfg.engine}"
        return [
            Work("bitflip", "member", f"width{cfg.width}", f"{method}{engine}", members, steps)
            for method, steps in ((m, cfg.steps * per_method) for m in cfg.method)
        ]
    return []  # an experiment with no cost model (the null experiment)


def total_steps(experiment: str, cfg: Any) -> int | None:
    """The step a trial's record counts up to (cloning: both phases; bit flip: per member)."""
    if experiment == "bitflip":
        return cfg.steps
    if experiment == "cloning":  # a split part counts the whole run's steps too
        return (cfg.base_epochs + cfg.clone_epochs) * _epoch(cfg)
    works = trial_work(experiment, cfg)
    return sum(w.steps for w in works) if works else None


def load_costs(path: str | Path = COSTS_FILE) -> dict:
    """The cost table: {"devices": {kind: {"measured": bool, "note", "entries": [...]}}}."""
    path = Path(path)
    if not path.exists():
        return {"devices": {}}
    return json.loads(path.read_text())


def write_costs(
    kind: str, machine: Mapping[str, Any], entries: Iterable[Mapping[str, Any]], path=COSTS_FILE
) -> None:
    """Merge measured `entries` ({experiment, phase, arch, shape, batch, seconds_per_step}) into
    the table for device `kind`; an entry with the same key replaces the old one."""
    table = load_costs(path)
    device = table["devices"].setdefault(kind, {"entries": []})
    device.update(measured=True, machine=dict(machine))
    device.pop("note", None)
    device["entries"] = _merged(device.get("entries", []), entries)
    Path(path).write_text(json.dumps(table, indent=2) + "\n")


def _entry_key(entry: Mapping[str, Any]) -> tuple:
    return (entry["experiment"], entry["phase"], entry["arch"], entry["shape"], entry["batch"])


def _merged(old: Iterable[Mapping[str, Any]], new: Iterable[Mapping[str, Any]]) -> list[dict]:
    """`old` entries with those of `new` replacing the ones of the same key, sorted by key."""
    fresh = {_entry_key(e): dict(e) for e in new}
    kept = [dict(e) for e in old if _entry_key(e) not in fresh]
    return sorted([*kept, *fresh.values()], key=_entry_key)


# what the memory figures are (benchmarks/bench_memory.py writes them for device kind "cpu")
MEMORY_HOW = (
    "bytes of the tensors of one float32 training step of one model, measured on the CPU "
    "(benchmarks/bench_memory.py): parameters, gradients, optimizer state, the activations "
    "saved for the backward, the input batch; a GPU's own use (CUDA context, allocator slack, "
    "cuDNN workspaces) is not measured"
)


def write_memory(
    kind: str, entries: Iterable[Mapping[str, Any]], how: str = MEMORY_HOW, path=COSTS_FILE
) -> None:
    """Merge memory `entries` ({experiment, phase, arch, shape, batch, bytes: {..., total}}) into
    device `kind`'s `memory` section, which says `how` they were measured."""
    table = load_costs(path)
    device = table["devices"].setdefault(kind, {"entries": []})
    memory = device.setdefault("memory", {"entries": []})
    memory.update(how=how, entries=_merged(memory["entries"], entries))
    Path(path).write_text(json.dumps(table, indent=2) + "\n")


GPU_BYTES = 40 * 2**30  # the smallest A100's memory
MARGIN = 2.0  # x the measured tensor bytes: the GPU's own use (CUDA context, workspaces) unmeasured
SHARES = 8  # GPU shares come in eighths, so at most 8 trials share a GPU
WHOLE_GPU = ("resnet", "vit")  # compute-bound at batch 128 (and not packable): a GPU each


def gpu_share(works: Sequence[Work], copies: int = 1, table: dict | None = None) -> float:
    """The GPU share of a trial holding one model of each of `works`, `copies` times (a packed
    run's members): a whole GPU when one is a ResNet or ViT; otherwise the measured bytes (the
    table's CPU `memory` figures, x MARGIN) over GPU_BYTES, rounded up to an eighth, at most 1."""
    if any(work.arch in WHOLE_GPU for work in works):
        return 1.0
    table = load_costs() if table is None else table
    total = 0
    for work in works:
        measured = memory_bytes(table, "cpu", work)
        if measured is None:
            raise ValueError(
                f"no memory figure for {work.experiment} {work.phase} {work.arch} {work.shape} "
                f"batch {work.batch} in sweeps/costs.json; measure it: "
                "python benchmarks/bench_memory.py --write"
            )
        total += measured
    return min(1.0, math.ceil(SHARES * copies * total * MARGIN / GPU_BYTES) / SHARES)


def memory_bytes(table: dict, kind: str, work: Work) -> int | None:
    """The measured bytes of one model of `work` (its memory entry's total) on device `kind`;
    None when not measured."""
    memory = (table["devices"].get(kind) or {}).get("memory") or {}
    for entry in memory.get("entries", []):
        if _entry_key(entry) == work.key():
            return int(entry["bytes"]["total"])
    return None


def seconds_per_step(table: dict, kind: str, work: Work) -> float | None:
    """The measured seconds per step of `work` on device `kind` (cloning's `clone_alone`: the
    `clone` phase's less the `base` phase's); None when not measured."""
    if work.phase == "clone_alone":
        both, base = (
            seconds_per_step(table, kind, dataclasses.replace(work, phase=phase))
            for phase in ("clone", "base")
        )
        return None if both is None or base is None else both - base
    device = table["devices"].get(kind) or {}
    for entry in device.get("entries", []):
        if _entry_key(entry) == work.key():
            return float(entry["seconds_per_step"])
    return None


def model_steps(works: Mapping[str, list[Work]]) -> int:
    """The model-steps of the trials `works` (module docstring: one step of one model)."""
    return sum(w.steps * w.models for items in works.values() for w in items)


def describe_saving(before: Mapping[str, list[Work]], after: Mapping[str, list[Work]]) -> str:
    """The plan's line `model-steps: BEFORE -> AFTER (-X%)`: every trial alone, and as run (each
    shared prefix once, sweeps.driver)."""
    old, new = model_steps(before), model_steps(after)
    saved = 100.0 * (old - new) / old if old else 0.0
    return f"model-steps: {old:,} -> {new:,} (-{saved:.1f}%)"


def estimate(
    works: Mapping[str, list[Work]], kind: str, devices: float, table: dict | None = None
) -> dict:
    """Device-hours per architecture and in total, and the wall time on `devices` devices of
    kind `kind`, for the trials `works` (point id -> its Work). Architectures without a figure
    are listed in `missing` (with their steps) and left out of the hours."""
    table = load_costs() if table is None else table
    by_arch: dict[str, dict[str, float]] = {}
    missing: dict[str, set[str]] = {}
    longest = 0.0
    for items in works.values():
        trial_s = 0.0
        for work in items:
            row = by_arch.setdefault(work.arch, {"trials": 0, "steps": 0, "hours": 0.0})
            row["steps"] += work.steps
            cost = seconds_per_step(table, kind, work)
            if cost is None:
                phase = "clone and base" if work.phase == "clone_alone" else work.phase
                missing.setdefault(work.arch, set()).add(
                    f"{work.experiment} {phase} {work.shape} batch {work.batch}"
                )
                continue
            row["hours"] += work.steps * cost / 3600
            trial_s += work.steps * cost
        for arch in {w.arch for w in items}:
            by_arch[arch]["trials"] += 1
        longest = max(longest, trial_s)
    total = sum(row["hours"] for row in by_arch.values())
    device = table["devices"].get(kind) or {}
    return {
        "device": kind,
        "measured": bool(device.get("measured")),
        "note": device.get("note", ""),
        "by_arch": by_arch,
        "hours": total,
        "devices": devices,
        "wall_hours": max(total / devices, longest / 3600) if devices else math.inf,
        "missing": {arch: sorted(what) for arch, what in missing.items()},
    }


def describe(cost: dict) -> list[str]:
    """The plan's cost lines."""
    unit = "CPU core-hours" if cost["device"] == "cpu" else f"{cost['device']} GPU-hours"
    lines = [f"cost on {cost['device']} ({unit}; sweeps/costs.json):"]
    if not cost["measured"]:
        note = cost["note"] or "no figures"
        lines.append(f"  {cost['device']}: not yet measured ({note})")
    for arch, row in sorted(cost["by_arch"].items()):
        hours = f"{row['hours']:12,.1f} h" if arch not in cost["missing"] else "not measured"
        lines.append(
            f"  {arch:10s} {int(row['trials']):5d} trials {int(row['steps']):>15,d} steps  {hours}"
        )
    for arch, what in sorted(cost["missing"].items()):
        lines.append(
            f"  {arch}: no figure for {'; '.join(what)} (measure it: python "
            "benchmarks/bench_training.py --costs on that device)"
        )
    if cost["missing"] and len(cost["missing"]) == len(cost["by_arch"]):
        lines.append(f"  total: unknown (no figure on {cost['device']})")
        return lines
    partial = " (measured architectures only)" if cost["missing"] else ""
    lines.append(f"  total {cost['hours']:,.1f} device-hours{partial}")
    lines.append(
        f"  wall time on {cost['devices']:g} {'cores' if cost['device'] == 'cpu' else 'GPUs'}: "
        f"{_duration(cost['wall_hours'])} (perfect packing, at least the longest trial)"
    )
    return lines


def _duration(hours: float) -> str:
    if math.isinf(hours):
        return "never (no device)"
    if hours < 1:
        return f"{hours * 60:.1f} min"
    return f"{hours:,.1f} h ({hours / 24:,.1f} days)" if hours >= 48 else f"{hours:.1f} h"
