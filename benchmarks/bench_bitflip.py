"""Bit-flip training throughput at 1,024 members, next to the bare batched loop, measured together.

    python benchmarks/bench_bitflip.py [--steps 2000] [--members 1024]
    python benchmarks/bench_bitflip.py --costs      # the paper trials' cost into sweeps/costs.json

Prints member-examples/s (member-steps/s) of one plain eager run (nn.Module + autograd +
torch.optim.SGD, and with `ContinualBackprop`), of the ensemble with `--members` members on the
batched engine (`engine=batched`: ~12 tensor operations a step for SGD, ~30 with CBP) and on its
compiled loop (`engine=native`), for SGD and for CBP (the paper's settings: width 5, relu, lr
0.01, CBP rate 1e-4, maturity 100, CBP from step 0), and the physical level of this machine
measured in the same run: the bare batched loop, i.e. the minimal batched forward, backward and
SGD update of the same shapes in torch (three `baddbmm`/`addcmul_`-class operations per layer, no
data stream, record, probe or CBP), and each figure's ratio to it. Data generation is included
in the engines' figures; metrics and records are not.

`--costs` times the `paper` scale's trials (`sweeps/studies/bitflip.py`: one 210-member native
ensemble per width) with the real loop (`core.experiments.bitflip.run`: stream, the study's
probe points, records) at two lengths on one thread, process clock, so start-up cancels out, and
writes the seconds per member-step (the trial's mean over its members and methods) as the entries
`bitflip member width<w> <method>@native batch 210` that `python -m sweeps plan bitflip --scale
paper` reads.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

from core.experiments.bitflip import Config, build, run, train
from core.run.config import experiment_config
from core.run.record import RunRecord
from sweeps.costs import write_costs
from sweeps.studies import bitflip as study

LENGTHS = (50_000, 100_000)  # the two timed run lengths of --costs: one probe point apart


def throughput(cfg: Config, steps: int, warmup: int) -> float:
    """Member-examples per second over `steps` steps after `warmup` steps."""
    stream, learner = build(cfg)
    train(learner, stream, 0, warmup, cfg.bin_size)
    began = time.perf_counter()
    train(learner, stream, warmup, warmup + steps, cfg.bin_size)
    return steps * stream.members / (time.perf_counter() - began)


def bare_rate(members: int, width: int, steps: int) -> float:
    """Member-steps/s of the bare batched loop: d -> width -> 1 relu, online squared error, SGD,
    in place on (members, ...) stacked weights, inputs drawn once."""
    d = 21
    g = torch.Generator().manual_seed(0)
    w1, b1 = torch.randn(members, width, d, generator=g) * 0.3, torch.zeros(members, width, 1)
    w2, b2 = torch.randn(members, 1, width, generator=g) * 0.3, torch.zeros(members, 1, 1)
    x = torch.randint(0, 2, (64, members, d, 1), generator=g).float()
    y = torch.randn(64, members, 1, 1, generator=g)
    neg2lr = -0.02

    def step(i: int) -> None:
        xi = x[i % 64]
        z = torch.baddbmm(b1, w1, xi)
        a = torch.relu(z)
        g = (torch.baddbmm(b2, w2, a) - y[i % 64]).mul_(neg2lr)
        gz = torch.ops.aten.threshold_backward(w2.transpose(1, 2) * g, a, 0)
        w2.addcmul_(g, a.transpose(1, 2))
        b2.add_(g)
        w1.addcmul_(gz, xi.transpose(1, 2))
        b1.add_(gz)

    for i in range(100):
        step(i)
    began = time.perf_counter()
    for i in range(steps):
        step(i)
    return steps * members / (time.perf_counter() - began)


def paper_costs() -> list[dict]:
    """The `paper` trials' seconds per member-step (module docstring)."""
    torch.set_num_threads(1)
    space = {**study.base_config(), **study.param_space("paper")}
    entries = []
    for width in space["width"]["grid_search"]:
        cfg = experiment_config("bitflip", {**space, "width": width})
        times = []
        for steps in (1000, *LENGTHS):  # the first: a warm-up (compiles the loop)
            with tempfile.TemporaryDirectory() as tmp:
                began = time.process_time()
                run(dataclasses.replace(cfg, steps=steps), RunRecord(Path(tmp) / "run"))
                times.append(time.process_time() - began)
        members = len(cfg.members())
        seconds = max(times[2] - times[1], 0.0) / ((LENGTHS[1] - LENGTHS[0]) * members)
        print(f"bitflip width {width:3d}, {members} members: {seconds * 1e6:.3f} us/member-step")
        entries += [
            {
                "experiment": "bitflip",
                "phase": "member",
                "arch": f"width{width}",
                "shape": f"{method}@{cfg.engine}",
                "batch": members,
                "seconds_per_step": seconds,
            }
            for method in cfg.method
        ]
    return entries


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000, help="timed steps per ensemble")
    parser.add_argument("--eager-steps", type=int, default=1000, help="timed steps, eager run")
    parser.add_argument("--members", type=int, default=1024, help="ensemble members")
    parser.add_argument("--costs", action="store_true", help="write the paper trials' costs")
    args = parser.parse_args()
    cpu = platform.processor() or platform.machine()
    if args.costs:
        machine = {
            "cpu": cpu,
            "threads": 1,
            "clock": "process",
            "host": platform.node(),
            "measured": datetime.date.today().isoformat(),
            "torch": torch.__version__,
        }
        write_costs("cpu", machine, paper_costs())
        return
    print(
        f"bit-flip throughput on {cpu}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, {args.members} members, width 5"
    )
    bare = bare_rate(args.members, 5, args.steps)
    print(f"{'method':8s} {'run':30s} {'member-steps/s':>15s} {'x bare loop':>12s}")
    print(f"{'sgd':8s} {'bare batched loop (physical)':30s} {bare:15,.0f} {1.0:12.2f}")
    for method in ("sgd", "cbp"):
        base = Config(steps=10**9, method=(method,), lr=(0.01,))
        eager = throughput(dataclasses.replace(base, engine="eager"), args.eager_steps, 200)
        print(f"{method:8s} {'plain eager, 1 run':30s} {eager:15,.0f} {eager / bare:12.3f}")
        for engine in ("batched", "native"):
            cfg = dataclasses.replace(base, seed=tuple(range(args.members)), engine=engine)
            rate = throughput(cfg, args.steps, 1000)
            label = f"ensemble, engine={engine}"
            print(f"{method:8s} {label:30s} {rate:15,.0f} {rate / bare:12.2f}")


if __name__ == "__main__":
    main()
