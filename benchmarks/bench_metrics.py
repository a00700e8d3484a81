"""Cost of the metrics probe against one training step, for the four image models.

    python benchmarks/bench_metrics.py                        # all four, CPU: a few minutes
    python benchmarks/bench_metrics.py --archs cnn --device cuda

For each architecture at the paper's size (core.models defaults, CIFAR-10 images 3x32x32, 10
classes) it times, in one process: one training step (batch 128: forward, cross-entropy, backward,
SGD with momentum) and one call of `core.metrics.Probe` (the `default` preset, every metric, on a
probe batch of 500). After one warm-up of each, the two are timed alternately `--repeats` times,
so that other work on the machine falls on both alike, and each figure is the fastest of its
timings (the least disturbed). It prints both times, the probe's cost in training steps, and the
implied overhead at the paper's cadence: a probe every 5 epochs of CIFAR-10 (5 x 391 = 1955
steps), for one probe batch and for the train + val pair the experiments run (target: under 2%).
The machine's load average is printed before and after: on a shared CPU the figures move with it.
"""

from __future__ import annotations

import argparse
import os
import time

import torch
import torch.nn.functional as F

from core.metrics import Probe, ProbeSpec
from core.models import ModelConfig, build_model

STEPS_PER_EPOCH = 391  # CIFAR-10: 50,000 images in batches of 128
CADENCE_EPOCHS = 5
TARGET = 0.02


def seconds(fn, device: torch.device) -> float:
    """Wall-clock seconds of one call of `fn()` (device work included)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def _load() -> str:
    """The 1-, 5- and 15-minute load averages, where the platform has them."""
    return " ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"


def measure(arch: str, batch: int, probe_size: int, device: torch.device, repeats: int):
    """(seconds per training step, seconds per probe call) for `arch` at the paper's size."""
    cfg = ModelConfig(arch=arch, in_shape=(3, 32, 32), num_classes=10)
    model = build_model(cfg, seed=0).to(device)
    g = torch.Generator(device).manual_seed(0)
    x = torch.randn(batch, 3, 32, 32, generator=g, device=device)
    y = torch.randint(0, 10, (batch,), generator=g, device=device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def step() -> None:
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    model.train()
    px = torch.randn(probe_size, 3, 32, 32, generator=g, device=device)
    py = torch.randint(0, 10, (probe_size,), generator=g, device=device)
    probe = Probe(model, px, py, F.cross_entropy, ProbeSpec("default"), generator=torch.Generator())
    step()  # warm-up
    probe()
    steps, probes = [], []
    for _ in range(repeats):
        steps.append(seconds(step, device))
        probes.append(seconds(probe, device))
    return min(steps), min(probes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", nargs="+", default=["mlp", "cnn", "resnet", "vit"])
    parser.add_argument("--batch", type=int, default=128, help="training batch size")
    parser.add_argument("--probe-size", type=int, default=500, help="probe batch size")
    parser.add_argument("--repeats", type=int, default=3, help="timings per figure (fastest)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    between = CADENCE_EPOCHS * STEPS_PER_EPOCH
    print(
        f"metrics probe: device {device}, torch threads {torch.get_num_threads()}, batch "
        f"{args.batch}, probe {args.probe_size}, a probe every {between} steps; target < "
        f"{TARGET:.0%} per probe pair; load average {_load()}"
    )
    for arch in args.archs:
        step_s, probe_s = measure(arch, args.batch, args.probe_size, device, args.repeats)
        ratio = probe_s / step_s
        print(
            f"metrics {arch:6s} step {step_s * 1e3:9.1f} ms   probe {probe_s * 1e3:9.1f} ms   "
            f"= {ratio:5.1f} steps   overhead {ratio / between:6.2%} per probe, "
            f"{2 * ratio / between:6.2%} train+val"
        )
    print(f"metrics load average after: {_load()}")


if __name__ == "__main__":
    main()
