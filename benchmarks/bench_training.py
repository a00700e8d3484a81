"""Image-training throughput: each experiment's loop against a bare PyTorch loop.

The experiment loop is `core.experiments.<name>.run` as a sweep runs it: the metrics probe at the
paper's cadence (every 5 epochs, plus task or phase ends), evaluation at every log point (one per
epoch), the run record and its checkpoints. The bare loop trains the same model(s) on the same
uint8 device data with the same augmentation and batch size, and nothing else. Both rates exclude
start-up: the experiment is timed at two lengths and the difference is divided by the extra images.

    python benchmarks/bench_training.py                                  # CPU: mlp, minutes
    python benchmarks/bench_training.py --archs mlp cnn resnet vit \\
        --shape 3,64,64 --epochs 5 25                                   # on a GPU

One line per experiment and architecture: images/s of the loop, of the loop with the probe only at
phase ends (what the loop itself costs), and of the bare loop; ratios are bare / loop (target
<= 1.15). For cloning, an image counts once although both models train on it.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from core.cloning import expand
from core.data import BatchOrder, SyntheticSpec, load_images
from core.experiments import cloning, continual
from core.experiments.overrides import parse_overrides
from core.experiments.training import ModelSpec, model_config, resolve_device
from core.models import build_model
from core.records import RunRecord


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed_run(module, args: list[str], device: torch.device) -> tuple[float, int]:
    """(seconds, training steps) of one complete run in a fresh record."""
    cfg = parse_overrides(module.Config, args)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        summary = module.run(cfg, RunRecord(Path(tmp) / "run"))
        _sync(device)
        return time.perf_counter() - start, summary["steps"]


def loop_rate(module, args, lengths, length_key, batch, device, repeats) -> float:
    """Images/s of the experiment loop from two run lengths (start-up cancels out); the median
    of `repeats` measurements."""
    rates = []
    for _ in range(repeats):
        (t1, s1), (t2, s2) = (
            _timed_run(module, [*args, f"{length_key}={n}"], device) for n in lengths
        )
        rates.append((s2 - s1) * batch / (t2 - t1))
    return statistics.median(rates)


def bare_rate(models, data, batch, steps, device, repeats, lr=1e-3) -> float:
    """Images/s of a plain loop: batch -> augment -> forward -> loss -> backward -> step; the
    median of `repeats` timings after a warm-up."""
    optimizers = [torch.optim.Adam(m.parameters(), lr=lr) for m in models]
    order = BatchOrder(
        torch.arange(len(data.train_y), device=device), batch, torch.Generator(device)
    )
    augment = torch.Generator(device).manual_seed(0)
    rates = []
    for n in [3] + [steps] * repeats:  # a warm-up, then the timed repeats
        _sync(device)
        start = time.perf_counter()
        for _ in range(n):
            idx = order.next()
            x = data.inputs(data.train_x[idx], augment, augment=True)
            y = data.train_y[idx]
            for model, opt in zip(models, optimizers):
                loss = F.cross_entropy(model(x), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        _sync(device)
        rates.append(n * batch / (time.perf_counter() - start))
    return statistics.median(rates[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", nargs="+", default=["mlp"], help="mlp cnn resnet vit")
    parser.add_argument("--shape", default="3,32,32", help="C,H,W of the synthetic images")
    parser.add_argument("--per-class", type=int, default=500, help="training images per class")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--epochs", type=int, nargs=2, default=(5, 20), help="two run lengths")
    parser.add_argument("--repeats", type=int, default=3, help="timings per figure (median)")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    device = resolve_device(args.device)
    channels, size, _ = (int(v) for v in args.shape.split(","))
    classes = 5  # one continual task; cloning trains on the same images
    spec = SyntheticSpec(channels, size, classes, args.per_class, args.per_class // 5)
    data = load_images("synthetic", synthetic=spec, device=device)
    common = [
        "dataset=synthetic",
        f"synthetic.channels={channels}",
        f"synthetic.size={size}",
        f"synthetic.classes={classes}",
        f"synthetic.train_per_class={args.per_class}",
        f"synthetic.test_per_class={args.per_class // 5}",
        f"batch_size={args.batch}",
        f"device={device}",
    ]
    print(f"device {device}, images {spec.channels}x{size}x{size}, batch {args.batch}")
    for arch in args.archs:
        base = build_model(model_config(ModelSpec(arch=arch), data), seed=0).to(device)
        experiments = (
            (
                "continual",
                continual,
                [*common, f"model.arch={arch}", f"classes_per_task={classes}", "num_tasks=1"],
                "task_length",
                [base],
            ),
            (
                "cloning",
                cloning,
                [
                    *common,
                    f"model.arch={arch}",
                    "base_epochs=0",
                    "optimizer.name=adam",
                    "clone_optimizer.name=adam",
                ],
                "clone_epochs",
                [base, expand(base, 2)],
            ),
        )
        for name, module, run_args, key, models in experiments:
            rates = [
                loop_rate(module, run_args + extra, args.epochs, key, args.batch, device, reps)
                for extra, reps in (([], args.repeats), (["probe_every=100000"], args.repeats))
            ]
            steps = (args.epochs[1] - args.epochs[0]) * -(-len(data.train_y) // args.batch)
            bare = bare_rate(models, data, args.batch, steps, device, args.repeats)
            print(
                f"{name:9s} {arch:6s} loop {rates[0]:9.0f} img/s (ratio {bare / rates[0]:.2f})   "
                f"loop without probe {rates[1]:9.0f} img/s (ratio {bare / rates[1]:.2f})   "
                f"bare {bare:9.0f} img/s"
            )


if __name__ == "__main__":
    main()
