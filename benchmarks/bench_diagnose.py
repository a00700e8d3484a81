"""Cost of `core.diagnose.diagnose` against one training step, on the paper-default CNN.

    python benchmarks/bench_diagnose.py                         # CPU: about a minute
    python benchmarks/bench_diagnose.py --device cuda --lanczos-steps 30

The CNN at the paper's size (core.models defaults, CIFAR-10 images 3x32x32, 10 classes), and its
clone by `core.cloning.expand(cnn, 2)`. One training step: batch 128, forward, cross-entropy,
backward, SGD with momentum. One diagnosis at the probe batch size (`--batch`, default 500) of
the fresh CNN (no clones: the forward/backward part only) and of the clone (with the stability
part: `--lanczos-steps` Hessian-vector products on a float64 copy). The probe's `diagnose` option
(`probe.diagnose=true`: the clone partition and frozen units per layer at every probe) at the same
batch: the `default` probe without and with it, on the fresh CNN and on the clone. Each figure is
the fastest of `--repeats` timings after a warm-up; it prints the seconds and the multiple of one
training step.
"""

from __future__ import annotations

import argparse
import os

import torch
import torch.nn.functional as F
from bench_metrics import seconds  # a script's folder is on sys.path

from core.cloning import expand
from core.diagnose import diagnose
from core.metrics import Probe, ProbeSpec
from core.models import ModelConfig, build_model


def _fastest(fn, device: torch.device, repeats: int) -> float:
    fn()  # warm-up
    return min(seconds(fn, device) for _ in range(repeats))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=500, help="diagnosis batch (probe size)")
    parser.add_argument("--lanczos-steps", type=int, default=5, help="0: skip the clone")
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    device = torch.device(args.device)
    g = torch.Generator(device="cpu").manual_seed(0)
    cfg = ModelConfig(arch="cnn", in_shape=(3, 32, 32), num_classes=10)
    model = build_model(cfg, seed=0).to(device)
    clone = expand(model, 2).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    xb = torch.randn(128, 3, 32, 32, generator=g).to(device)
    yb = torch.randint(0, 10, (128,), generator=g).to(device)
    x = torch.randn(args.batch, 3, 32, 32, generator=g).to(device)
    y = torch.randint(0, 10, (args.batch,), generator=g).to(device)

    def step() -> None:
        opt.zero_grad()
        F.cross_entropy(model(xb), yb).backward()
        opt.step()

    print(f"load average before: {os.getloadavg()}", flush=True)
    train = _fastest(step, device, max(args.repeats, 3))
    print(f"training step (batch 128): {train * 1e3:.1f} ms", flush=True)
    fresh = _fastest(lambda: diagnose(model.eval(), x, y, F.cross_entropy), device, args.repeats)
    print(f"diagnose, fresh CNN (batch {args.batch}): {fresh:.2f} s = {fresh / train:.0f} steps")
    for name, net in (("fresh CNN", model), ("CNN cloned x2", clone)):
        plain, with_diagnosis = (
            _fastest(Probe(net, x, y, F.cross_entropy, ProbeSpec(diagnose=on), generator=g), device,
                     args.repeats)
            for on in (False, True)
        )  # fmt: skip
        print(
            f"probe (default preset), {name} (batch {args.batch}): {plain:.2f} s = "
            f"{plain / train:.1f} steps; with probe.diagnose=true {with_diagnosis:.2f} s = "
            f"{with_diagnosis / train:.1f} steps (the option: "
            f"{(with_diagnosis - plain) / train:+.1f} steps)",
            flush=True,
        )
    if args.lanczos_steps > 0:
        cloned = _fastest(
            lambda: diagnose(clone.eval(), x, y, F.cross_entropy, lanczos_steps=args.lanczos_steps),
            device,
            args.repeats,
        )
        print(
            f"diagnose, CNN cloned x2 (batch {args.batch}, {args.lanczos_steps} Lanczos steps): "
            f"{cloned:.2f} s = {cloned / train:.0f} steps"
        )
    print(f"load average after: {os.getloadavg()}", flush=True)


if __name__ == "__main__":
    main()
