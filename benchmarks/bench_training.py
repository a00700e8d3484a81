"""Image-training throughput: each experiment's loop against a bare PyTorch loop.

The experiment loop is `core.experiments.<name>.run` as a sweep runs it: the metrics probe at the
paper's cadence (every 5 epochs, plus task or phase ends), evaluation at every log point (one per
epoch), the run record and its checkpoints. Its rate excludes start-up: the experiment is timed at
two lengths and the difference is divided by the extra images.

The bare loop is the minimal honest loop of the same experiment written with nothing of ours but
the batch order: the same model(s), the same uint8 data on the device with the same augmentation
and batch size, Adam, the experiment's loss (continual learning: cross-entropy over the task's
logits), the running training loss and accuracy summed on the device, and once per epoch what the
reference code also does: read them and evaluate on the evaluation split. No probe, no run record,
no checkpoints: the ratio bare / loop is what our machinery costs (target <= 1.15).

The data mirror the paper's datasets in size, so that an epoch, and with it the probe's share of
the time, is as long as in the paper's runs: continual learning trains on one Tiny ImageNet task
(5 classes of 500 training and 50 validation images), cloning on CIFAR-10 (10 classes of 5,000
training and 1,000 test images, base and clone side by side, both counted once per image).

    python benchmarks/bench_training.py --threads 1 --clock process     # CPU: mlp, ~10 minutes
    python benchmarks/bench_training.py --archs mlp cnn resnet vit --shape 3,64,64   # on a GPU

    python benchmarks/bench_training.py --costs      # the sweeps' cost table (`make bench`)

`--costs` measures instead the seconds per training step of each experiment phase and
architecture at the paper studies' input shapes and batch (cloning: CIFAR-10's 3x32x32, base
alone and base + clone; continual: Tiny ImageNet's 3x64x64; bit flip: member-steps of a 70-member
ensemble per width and method) with the real experiment loop at two short lengths, and writes them
into sweeps/costs.json for this machine's device kind (`cpu`: one thread and the process clock,
core-seconds; a GPU: its model, e.g. `a100`), which `python -m sweeps plan` reads (sweeps.costs).
The file is updated in place: the figures measured here replace those of the same key and device
kind, every other entry stays (an A100 node's figures survive a laptop's `make bench`). Default
architectures: mlp and cnn on a CPU (resnet and vit are GPU work), all four on a GPU.

One line per experiment and architecture: images/s of the loop, of the loop with the probe only
at task or phase ends (separating the probe's share from the loop's), and of the bare loop, each
the median of `--repeats` rounds; a round times all three back to back, so that a change of load
on a shared machine hits all three, and the ratios are medians of the rounds' ratios. On a CPU
that other work shares, `--threads 1 --clock process` times the process's CPU time instead of the
wall clock, which other processes then barely disturb.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from core.cloning import expand
from core.data import BatchOrder, ImageData, SyntheticSpec, load_images
from core.experiments import bitflip, cloning, continual
from core.models import build_model
from core.run.config import parse_overrides
from core.run.lifecycle import resolve_device
from core.run.record import RunRecord
from core.run.seeds import seed_for
from core.run.specs import ModelSpec
from sweeps.costs import COSTS_FILE, write_costs
from sweeps.target import gpu_kind

# experiment -> (classes, training and evaluation images per class, run lengths in epochs, the
# length key); each pair of lengths differs by whole probe intervals (5 epochs)
SETUPS = {
    "continual": (5, 500, 50, (5, 20), "task_length"),  # one Tiny ImageNet task
    "cloning": (10, 5000, 1000, (1, 6), "clone_epochs"),  # CIFAR-10
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def image_args(spec: SyntheticSpec, batch: int, device: torch.device, arch: str) -> list[str]:
    """The overrides of an image experiment on `spec`'s synthetic images."""
    sizes = ("channels", "size", "classes", "train_per_class", "test_per_class")
    return [
        "dataset=synthetic",
        *(f"synthetic.{k}={getattr(spec, k)}" for k in sizes),
        f"batch_size={batch}",
        f"device={device}",
        f"model.arch={arch}",
    ]


def _timed_run(module, args: list[str], device: torch.device, clock) -> float:
    """Seconds of one complete run in a fresh record."""
    cfg = parse_overrides(module.Config, args)
    with tempfile.TemporaryDirectory() as tmp:
        start = clock()
        module.run(cfg, RunRecord(Path(tmp) / "run"))
        _sync(device)
        return clock() - start


def loop_rate(module, args: list[str], lengths, length_key: str, images: int, device, clock):
    """Images/s of the experiment loop from two run lengths (start-up cancels out)."""
    short, long = (_timed_run(module, [*args, f"{length_key}={n}"], device, clock) for n in lengths)
    return (lengths[1] - lengths[0]) * images / (long - short)


@torch.no_grad()
def _evaluate(model, data: ImageData, classes: torch.Tensor | None, remap) -> list[float]:
    """Summed loss and correct count on the evaluation split, in eval mode, 1000 at a time."""
    model.eval()
    totals = torch.zeros(2, device=data.test_y.device)
    for start in range(0, len(data.test_y), 1000):
        out = model(data.inputs(data.test_x[start : start + 1000]))
        y = data.test_y[start : start + 1000]
        if classes is not None:
            out, y = out[:, classes], remap[y]
        loss = F.cross_entropy(out, y, reduction="sum")
        totals += torch.stack([loss, (out.argmax(1) == y).sum()])
    model.train()
    return totals.tolist()


def bare_rate(models, data: ImageData, masked: bool, batch: int, epochs: int, device, clock):
    """Images/s of the bare loop (module docstring) over `epochs` epochs, after a warm-up."""
    optimizers = [torch.optim.Adam(m.parameters(), lr=1e-3) for m in models]
    n = len(data.train_y)
    order = BatchOrder(
        torch.arange(n, device=device), batch, torch.Generator(device).manual_seed(1)
    )
    augment = torch.Generator(device).manual_seed(2)
    classes = remap = None
    if masked:  # the task's classes (here all of them, in a shuffled order) and their positions
        classes = torch.randperm(data.num_classes, generator=torch.Generator().manual_seed(3))
        classes = classes.to(device)
        remap = torch.empty(data.num_classes, dtype=torch.int64, device=device)
        remap[classes] = torch.arange(len(classes), device=device)
    sums = [torch.zeros(2, device=device) for _ in models]  # loss x batch, correct

    def train(steps: int) -> None:
        for _ in range(steps):
            idx = order.next()
            x = data.inputs(data.train_x[idx], augment, augment=True)
            y = data.train_y[idx]
            for model, opt, running in zip(models, optimizers, sums):
                out = model(x)
                target = y
                if masked:
                    out, target = out[:, classes], remap[y]
                loss = F.cross_entropy(out, target)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                running += torch.stack([loss.detach() * len(y), (out.argmax(1) == target).sum()])

    def end_of_epoch() -> None:
        for model, running in zip(models, sums):
            running.tolist()  # what the researcher prints: the epoch's training loss, accuracy
            running.zero_()
            _evaluate(model, data, classes, remap)

    for model in models:
        model.train()
    train(3)  # warm-up
    end_of_epoch()
    _sync(device)
    start = clock()
    for _ in range(epochs):  # any steps_per_epoch consecutive steps hold each image once
        train(order.steps_per_epoch)
        end_of_epoch()
    _sync(device)
    return epochs * n / (clock() - start)


# --costs: (experiment, phase) -> (synthetic shape, the two lengths' overrides); each shorter and
# longer run differ by `extra` training steps of that phase only
COST_RUNS = {
    ("cloning", "base"): ((3, 32, 10, 64), ("base_epochs=1", "base_epochs=6"), 25),
    ("cloning", "clone"): ((3, 32, 10, 64), ("clone_epochs=1", "clone_epochs=4"), 15),
    ("continual", "train"): ((3, 64, 5, 128), ("task_length=2", "task_length=8"), 6),
}
COST_ARCHS = {"cpu": ("mlp", "cnn"), "gpu": ("mlp", "cnn", "resnet", "vit")}  # `make bench`
BITFLIP_WIDTHS = (5, 10, 50, 100)
BITFLIP_METHODS = ("sgd", "sgd_then_cbp", "cbp")
BITFLIP_MEMBERS = 70


def cost_entries(archs, batch: int, device, clock) -> list[dict]:
    """Seconds per training step of each cost-table key (module docstring), one run pair each."""
    entries = []
    for (name, phase), ((c, size, classes, per_class), lengths, extra) in COST_RUNS.items():
        module = cloning if name == "cloning" else continual
        for arch in archs:
            spec = SyntheticSpec(c, size, classes, per_class, test_per_class=2)
            args = image_args(spec, batch, device, arch)
            args += ["probe_every=100000", "probe_size=10", "checkpoint_every=100000"]
            if name == "cloning":
                args += ["clone_epochs=1"] if phase == "base" else ["base_epochs=0"]
            else:
                args += [f"classes_per_task={classes}", "num_tasks=1", "task_unit=steps"]
            _timed_run(module, [*args, lengths[0]], device, clock)  # warm-up: one-time costs
            short, long = (_timed_run(module, [*args, n], device, clock) for n in lengths)
            entries.append(
                {
                    "experiment": name,
                    "phase": phase,
                    "arch": arch,
                    "shape": f"{c}x{size}x{size}",
                    "batch": batch,
                    "seconds_per_step": max(long - short, 0.0) / extra,
                }
            )
            print(f"{name:9s} {phase:5s} {arch:6s} {entries[-1]['seconds_per_step']:.4f} s/step")
    if device.type != "cpu":
        return entries  # bit flip runs on CPUs only
    seeds = ",".join(map(str, range(BITFLIP_MEMBERS)))
    for width in BITFLIP_WIDTHS:
        for method in BITFLIP_METHODS:
            args = [f"width={width}", f"method={method}", f"seed={seeds}"]
            # sgd_then_cbp switches at half the steps in both runs: their difference is half each
            args += ["metrics_every=10000", "checkpoint_every=1000000"]
            _, short, long = (  # the first: a warm-up
                _timed_run(bitflip, [*args, f"steps={n}"], device, clock)
                for n in (10000, 10000, 30000)
            )
            member_steps = 20000 * BITFLIP_MEMBERS
            entries.append(
                {
                    "experiment": "bitflip",
                    "phase": "member",
                    "arch": f"width{width}",
                    "shape": method,
                    "batch": BITFLIP_MEMBERS,
                    "seconds_per_step": max(long - short, 0.0) / member_steps,
                }
            )
            print(f"bitflip width {width:3d} {method:12s} {entries[-1]['seconds_per_step']:.3g} s")
    return entries


def write_cost_table(archs, batch: int, device, clock) -> None:
    entries = cost_entries(archs, batch, device, clock)
    if device.type == "cuda":
        kind = gpu_kind(torch.cuda.get_device_name(device))
        machine = {"gpu": torch.cuda.get_device_name(device), "clock": "wall"}
    else:
        kind = "cpu"
        machine = {"cpu": platform.processor() or platform.machine(), "threads": 1}
        machine["clock"] = "process"
    machine.update(
        host=platform.node(), measured=time.strftime("%Y-%m-%d"), torch=torch.__version__
    )
    write_costs(kind, machine, entries)
    print(f"written: {COSTS_FILE} ({kind}, {len(entries)} figures)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--costs", action="store_true", help="measure and write the sweeps' cost table"
    )
    parser.add_argument(
        "--archs",
        nargs="+",
        help="mlp cnn resnet vit (default: mlp; with --costs: mlp cnn on a CPU, all on a GPU)",
    )
    parser.add_argument("--experiments", nargs="+", default=list(SETUPS), choices=list(SETUPS))
    parser.add_argument("--shape", default="3,32,32", help="C,H,W of the synthetic images")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3, help="rounds per figure (median)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument(
        "--clock",
        choices=("wall", "process"),
        default="wall",
        help="process: CPU time of this process, for a CPU shared with other work (--threads 1)",
    )
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    if args.costs:
        if device.type == "cpu":
            torch.set_num_threads(1)  # core-seconds, on the process clock
        clock = time.process_time if device.type == "cpu" else time.perf_counter
        archs = args.archs or COST_ARCHS["cpu" if device.type == "cpu" else "gpu"]
        write_cost_table(archs, args.batch, device, clock)
        return
    args.archs = args.archs or ["mlp"]
    clock = time.process_time if args.clock == "process" else time.perf_counter
    channels, size, _ = (int(v) for v in args.shape.split(","))
    load = "/".join(f"{v:.1f}" for v in os.getloadavg())
    print(
        f"device {device}, {torch.get_num_threads()} threads, images {channels}x{size}x{size}, "
        f"batch {args.batch}, {args.clock} clock, load {load}"
    )
    for arch in args.archs:
        for name in args.experiments:
            classes, train_per_class, test_per_class, lengths, length_key = SETUPS[name]
            spec = SyntheticSpec(channels, size, classes, train_per_class, test_per_class)
            data = load_images("synthetic", synthetic=spec, device=device)
            run_args = image_args(spec, args.batch, device, arch)
            model_cfg = ModelSpec(arch=arch).model_config(data.shape, data.num_classes)
            base = build_model(model_cfg, seed=seed_for(0, "init")).to(device)
            if name == "continual":
                module, models = continual, [base]
                run_args += [f"classes_per_task={classes}", "num_tasks=1"]
            else:
                module, models = cloning, [base, expand(base, 2)]
                run_args += ["base_epochs=0", "optimizer.name=adam", "clone_optimizer.name=adam"]
            images = len(data.train_y)
            rounds = []
            for _ in range(args.repeats):
                probe, no_probe = (
                    loop_rate(module, run_args + extra, lengths, length_key, images, device, clock)
                    for extra in ([], ["probe_every=100000"])
                )
                epochs = lengths[1] - lengths[0]
                masked = name == "continual"
                bare = bare_rate(models, data, masked, args.batch, epochs, device, clock)
                rounds.append((probe, no_probe, bare))
            probe, no_probe, bare = (statistics.median(r[i] for r in rounds) for i in range(3))
            ratio, ratio_no_probe = (statistics.median(r[2] / r[i] for r in rounds) for i in (0, 1))
            load = "/".join(f"{v:.1f}" for v in os.getloadavg())
            print(
                f"{name:9s} {arch:6s} loop {probe:8.0f} img/s (ratio {ratio:.2f})   "
                f"loop, probe at ends only {no_probe:8.0f} img/s (ratio {ratio_no_probe:.2f})   "
                f"bare {bare:8.0f} img/s   load {load}"
            )


if __name__ == "__main__":
    main()
