"""Precision and kernel options (`precision.*`, docs/precision.md): the throughput of a cloning step
under each option, and what the option does to a noise-free clone.

Per architecture and option: a base (dropout 0, the same seed for every option) and its clone
`expand(base, 2)` trained side by side with plain SGD on the same random batches, the clone with
the LR multipliers under which it tracks the base (`core.cloning.param_groups`), every forward
through `core.run.precision.training_forward` inside `precision_scope`, as the experiments run
them. Printed per row: images/s of a cloning step (base and clone one SGD step each on the batch,
each image counted once; after `--warmup` untimed steps, in which `torch.compile` compiles), and
after all steps the clone's manifold distance (0.0: still on the cloning manifold bit for bit) and
max |f_clone - f_base| on a fixed batch, both models eager in eval mode and float32.

    python benchmarks/bench_precision.py --widths small --steps 200 --threads 1   # CPU, minutes
    python benchmarks/bench_precision.py --archs mlp cnn resnet vit     # on a GPU (adds tf32)

The TF32 options run only on a CUDA GPU (`core.run.precision.check` refuses them elsewhere).
"""

from __future__ import annotations

import argparse
import platform
import time
from datetime import UTC, datetime

import torch
import torch.nn.functional as F

from core.cloning import expand, manifold_distance, param_groups
from core.models import build_model
from core.run import precision
from core.run.lifecycle import resolve_device
from core.run.seeds import seed_for
from core.run.specs import ModelSpec, PrecisionSpec

OPTIONS = {
    "fp32": PrecisionSpec(),
    "channels_last": PrecisionSpec(channels_last=True),
    "bf16": PrecisionSpec(autocast="bf16"),
    "bf16+channels_last": PrecisionSpec(autocast="bf16", channels_last=True),
    "compile": PrecisionSpec(compile=True),
    "tf32": PrecisionSpec(matmul="tf32"),
    "tf32+channels_last": PrecisionSpec(matmul="tf32", channels_last=True),
}
# the tests' widths (docs/precision.md), clones multiples of 8; `paper`: the archs' defaults
SMALL = {
    "mlp": {"hidden_sizes": (16, 16)},
    "cnn": {"conv_channels": (8, 8), "fc_hidden": (16,)},
    "resnet": {"base_channels": 8},
    "vit": {"embed_dim": 16, "n_heads": 2, "depth": 2, "patch_size": 4},
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(arch: str, spec: PrecisionSpec, args, device: torch.device) -> tuple[float, ...]:
    """(images/s, manifold distance, max |f_clone - f_base|) of one option."""
    widths = SMALL[arch] if args.widths == "small" else {}
    shape, classes = (3, args.image, args.image), 10
    cfg = ModelSpec(arch=arch, dropout=0.0, **widths).model_config(shape, classes)
    base = build_model(cfg, seed=seed_for(0, "init")).to(device).train()
    clone = expand(base, 2).train()
    g = torch.Generator(device).manual_seed(seed_for(0, "bench_precision"))
    batches = [
        (
            torch.randn(args.batch, *shape, generator=g, device=device),
            torch.randint(0, classes, (args.batch,), generator=g, device=device),
        )
        for _ in range(8)
    ]
    with precision.precision_scope(spec, device):
        forwards = [precision.training_forward(m, spec, device) for m in (base, clone)]
        optimizers = [
            torch.optim.SGD(base.parameters(), lr=args.lr),
            torch.optim.SGD(param_groups(clone, lr=args.lr)),
        ]
        start = 0.0
        for step in range(args.warmup + args.steps):
            if step == args.warmup:
                _sync(device)
                start = time.perf_counter()
            x, y = batches[step % len(batches)]
            for forward, optimizer in zip(forwards, optimizers, strict=True):
                optimizer.zero_grad(set_to_none=True)
                F.cross_entropy(forward(x), y).backward()
                optimizer.step()
        _sync(device)
        seconds = time.perf_counter() - start
    base.eval(), clone.eval()
    with torch.no_grad():
        x = torch.randn(256, *shape, generator=g, device=device)
        drift = (clone(x) - base(x)).abs().max().item()
    return args.batch * args.steps / seconds, manifold_distance(clone), drift


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--archs", nargs="+", default=["mlp", "cnn"], choices=sorted(SMALL))
    parser.add_argument("--options", nargs="+", default=list(OPTIONS), choices=list(OPTIONS))
    parser.add_argument("--widths", choices=("paper", "small"), default="paper")
    parser.add_argument("--image", type=int, default=32, help="input height and width (CIFAR)")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=100, help="timed cloning steps")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.machine()
    print(
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, torch {torch.__version__}, {device} ({where}), "
        f"{torch.get_num_threads()} threads; widths {args.widths}, batch {args.batch}, "
        f"{args.warmup}+{args.steps} steps, SGD lr {args.lr}"
    )
    print(f"{'arch':<7}{'option':<20}{'images/s':>10}{'manifold dist':>15}{'max|f_c-f_b|':>14}")
    for arch in args.archs:
        for name in args.options:
            spec = OPTIONS[name]
            try:
                precision.check(spec, device)
            except ValueError as err:
                print(f"{arch:<7}{name:<20}  skipped: {err}")
                continue
            rate, distance, drift = measure(arch, spec, args, device)
            print(f"{arch:<7}{name:<20}{rate:>10.0f}{distance:>15.3g}{drift:>14.3g}")


if __name__ == "__main__":
    main()
