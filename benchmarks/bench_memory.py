"""Memory of one training step per architecture at the paper defaults, measured from the tensors
a step holds: the parameters, their gradients, the optimizer state and the activations autograd
saves for the backward (counted by a saved-tensors hook, each storage once, parameters
excluded), and the input batch. Activations grow linearly with the batch, so they are measured at
two small batches and extrapolated to the paper's (exact for these models, whose per-sample
activations do not depend on the batch). float32, on the CPU.

    python benchmarks/bench_memory.py           # print the figures
    python benchmarks/bench_memory.py --write   # and merge them into sweeps/costs.json

What this does not measure: a GPU's own memory use (the CUDA context, the caching allocator's
slack, cuDNN workspaces), so GPU figures are marked not measured in the table; the study
resources (sweeps/studies/continual.py) add a margin for them.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.models import ModelConfig, build_model  # noqa: E402
from sweeps import costs  # noqa: E402

BATCH = 128  # the paper's batch, both image experiments
SMALL = (2, 4)  # the batches measured
# (experiment, phase, shape, classes, optimizer, width factor): continual learning on Tiny
# ImageNet with Adam; cloning on CIFAR-10 with SGD + momentum, the clone twice as wide
SETTINGS = (
    ("continual", "train", (3, 64, 64), 200, "adam", 1),
    ("cloning", "base", (3, 32, 32), 10, "sgd", 1),
    ("cloning", "clone", (3, 32, 32), 10, "sgd", 2),
)
ARCHS = ("mlp", "cnn", "resnet", "vit")


def _bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def step_memory(cfg: ModelConfig, optimizer: str, batch: int) -> dict[str, int]:
    """The bytes of one training step of `cfg` at `batch` (module docstring)."""
    model = build_model(cfg, seed=0)
    params = list(model.parameters())
    make = torch.optim.Adam if optimizer == "adam" else torch.optim.SGD
    opt = make(params, lr=1e-3, **({"momentum": 0.9} if optimizer == "sgd" else {}))
    owned = {p.untyped_storage().data_ptr() for p in params}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in owned:
            saved[storage.data_ptr()] = storage.nbytes()
        return t

    x = torch.randn(batch, *cfg.in_shape)
    y = torch.randint(0, cfg.num_classes, (batch,))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = F.cross_entropy(model(x), y)
    loss.backward()
    opt.step()
    state = [v for s in opt.state.values() for v in s.values() if isinstance(v, torch.Tensor)]
    return {
        "parameters": _bytes(params),
        "gradients": _bytes(p.grad for p in params if p.grad is not None),
        "optimizer": _bytes(state),
        "activations": sum(saved.values()),
        "input": _bytes([x, y]),
    }


def measure() -> list[dict]:
    entries = []
    for experiment, phase, shape, classes, optimizer, factor in SETTINGS:
        for arch in ARCHS:
            cfg = ModelConfig(arch=arch, in_shape=shape, num_classes=classes).widened(factor)
            low, high = (step_memory(cfg, optimizer, b) for b in SMALL)
            per_sample = {k: (high[k] - low[k]) / (SMALL[1] - SMALL[0]) for k in low}
            at = {k: round(low[k] + per_sample[k] * (BATCH - SMALL[0])) for k in low}
            at["total"] = sum(at.values())
            entries.append(
                {
                    "experiment": experiment,
                    "phase": phase,
                    "arch": arch,
                    "shape": "x".join(map(str, shape)),
                    "batch": BATCH,
                    "bytes": at,
                }
            )
            print(
                f"{experiment:9s} {phase:5s} {arch:6s} {at['total'] / 2**20:10.1f} MiB "
                f"(weights {at['parameters'] / 2**20:.1f}, activations "
                f"{at['activations'] / 2**20:.1f})",
                flush=True,
            )
    return entries


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="merge into sweeps/costs.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    entries = measure()
    if args.write:
        costs.write_memory("cpu", entries, how=costs.MEMORY_HOW)
        print(f"written to {costs.COSTS_FILE}")


if __name__ == "__main__":
    main()
