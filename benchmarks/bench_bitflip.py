"""Bit-flip training throughput: one plain eager run vs the batched ensemble, measured together.

    python benchmarks/bench_bitflip.py [--steps 4000] [--eager-steps 2000]

Prints examples/s of one plain eager run (nn.Module + autograd + torch.optim.SGD, and with
`ContinualBackprop`) and the aggregate member-examples/s of the ensemble with 64 and 256 members
(`core.experiments.bitflip_engines.BitFlipEnsemble`), for SGD and for CBP (the paper's settings:
width 5, relu, lr 0.01, CBP rate 1e-4, maturity 100, CBP from step 0), next to the issue's targets
on a 2-core CPU: SGD ensemble >= 400,000, CBP ensemble >= 120,000 member-examples/s. Data
generation is included in every figure; metrics and records are not.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import time

import torch

from core.experiments.bitflip import Config, build, train

TARGETS = {"sgd": 400_000, "cbp": 120_000}


def throughput(cfg: Config, steps: int, warmup: int) -> float:
    """Member-examples per second over `steps` steps after `warmup` steps."""
    stream, learner = build(cfg)
    train(learner, stream, 0, warmup, cfg.bin_size)
    began = time.perf_counter()
    train(learner, stream, warmup, warmup + steps, cfg.bin_size)
    return steps * stream.members / (time.perf_counter() - began)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4000, help="timed steps per ensemble")
    parser.add_argument("--eager-steps", type=int, default=2000, help="timed steps, eager run")
    args = parser.parse_args()
    cpu = platform.processor() or platform.machine()
    print(
        f"bit-flip throughput on {cpu}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads"
    )
    print(f"{'method':8s} {'run':22s} {'member-examples/s':>18s} {'x eager':>8s} {'target':>9s}")
    for method in ("sgd", "cbp"):
        base = Config(steps=10**9, method=(method,), lr=(0.01,))
        eager = throughput(dataclasses.replace(base, engine="eager"), args.eager_steps, 200)
        print(f"{method:8s} {'plain eager, 1 run':22s} {eager:18,.0f} {1.0:8.1f} {'':>9s}")
        for members in (64, 256):
            cfg = dataclasses.replace(base, seed=tuple(range(members)))
            rate = throughput(cfg, args.steps, 1000)
            ok = "ok" if rate >= TARGETS[method] else "MISSED"
            print(
                f"{method:8s} {f'ensemble, {members} members':22s} {rate:18,.0f} "
                f"{rate / eager:8.1f} {TARGETS[method]:>9,} {ok}"
            )


if __name__ == "__main__":
    main()
