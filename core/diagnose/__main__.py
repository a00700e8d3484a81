"""`python -m core.diagnose`: the loss-of-plasticity diagnosis of a checkpoint or of your own model.

    python -m core.diagnose runs/<run>/checkpoints/step-000000001000.pt [--samples 256]
    python -m core.diagnose --model mypkg.nets:make_net --state-dict net.pt --batch batch.pt

A run record's checkpoint (any experiment whose checkpoint holds "model_config" and "model") is
rebuilt in float64 without dropout; its batch is drawn from the record's dataset (or --dataset).
`--model pkg.module:factory` builds your model (factory() -> nn.Module), `--state-dict` loads its
weights, and `--batch` is a torch.save'd dict {"inputs": ..., "targets": ...} (also allowed with a
checkpoint). Prints the Markdown report; `--out DIR` also writes report.md, report.json and
figure.png. Loading a checkpoint unpickles it: open only files you trust.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from core.diagnose.diagnosis import MODES, diagnose
from core.run.cli import user_error

LOSSES = {"cross_entropy": F.cross_entropy, "mse": F.mse_loss}
# the options passed to `diagnose` under their own names
DIAGNOSE_OPTIONS = (
    "tolerance",
    "frozen_eps",
    "frozen_fraction",
    "lanczos_steps",
    "lr",
    "escape_steps",
    "mode",
)


def _factory_model(spec: str, state_dict: Path | None) -> nn.Module:
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ValueError(f"--model takes pkg.module:factory, got {spec!r}")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"cannot import {spec!r}: {err}") from None
    model = factory()
    if not isinstance(model, nn.Module):
        raise ValueError(f"{spec}() returned a {type(model).__name__}, not an nn.Module")
    if state_dict is not None:
        model.load_state_dict(torch.load(state_dict, map_location="cpu", weights_only=True))
    return model


def _batch_file(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    batch = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(batch, dict) or not {"inputs", "targets"} <= set(batch):
        raise ValueError(f"{path} must hold a dict with 'inputs' and 'targets' tensors")
    return batch["inputs"], batch["targets"]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m core.diagnose",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("checkpoint", nargs="?", type=Path, help="a run record's checkpoint")
    parser.add_argument("--model", help="pkg.module:factory building your nn.Module")
    parser.add_argument("--state-dict", type=Path, help="weights for --model (torch.save'd)")
    parser.add_argument("--batch", type=Path, help="torch.save'd {'inputs': x, 'targets': y}")
    parser.add_argument("--dataset", help="dataset of the batch (default: the record's)")
    parser.add_argument("--data-root", help="dataset folder (default: the record's)")
    parser.add_argument("--samples", type=int, default=256, help="batch size drawn from data")
    parser.add_argument("--loss", choices=sorted(LOSSES), default="cross_entropy")
    parser.add_argument("--layers", help="comma-separated module paths (default: all layers)")
    parser.add_argument("--tolerance", type=float, help="clone tolerance (default sqrt(eps))")
    parser.add_argument("--frozen-eps", type=float, default=1e-4, help="|phi'| below this")
    parser.add_argument("--frozen-fraction", type=float, default=1.0, help="share of rows")
    parser.add_argument("--lanczos-steps", type=int, default=30, help="Lanczos iterations")
    parser.add_argument("--lr", type=float, default=0.01, help="step of the predicted escape")
    parser.add_argument("--escape-steps", type=int, default=0, help="measure the escape (steps)")
    parser.add_argument("--mode", choices=MODES, default="eval", help="model mode")
    parser.add_argument("--device", default="cpu", help="torch device (cpu, cuda)")
    parser.add_argument("--seed", type=int, default=0, help="seeds the batch drawn from data")
    parser.add_argument("--out", type=Path, help="write report.md, report.json, figure.png here")
    args = parser.parse_args(argv)
    if (args.checkpoint is None) == (args.model is None):
        parser.error("give either a CHECKPOINT or --model pkg.module:factory")
    try:
        if args.checkpoint is not None:
            from core.theory.report import load_model, training_batch

            if not args.checkpoint.is_file():
                raise ValueError(f"no checkpoint at {args.checkpoint}")
            model = load_model(args.checkpoint)
        else:
            model = _factory_model(args.model, args.state_dict)
        if args.batch is not None:
            x, y = _batch_file(args.batch)
        elif args.checkpoint is not None:
            generator = torch.Generator().manual_seed(args.seed)
            _, x, y = training_batch(
                args.checkpoint,
                args.dataset,
                args.data_root,
                args.samples,
                generator,
                "--dataset or --batch",
            )
        else:
            raise ValueError("--model needs --batch (a torch.save'd dict of inputs and targets)")
        model = model.to(args.device)
        layers = args.layers.split(",") if args.layers else None
        x, y = x.to(args.device), y.to(args.device)
        options = {name: getattr(args, name) for name in DIAGNOSE_OPTIONS}
        report = diagnose(model, x, y, LOSSES[args.loss], layers, **options)
    except (KeyError, ValueError, FileNotFoundError) as err:
        user_error(parser.prog, err)
    text = report.to_markdown()
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "report.md").write_text(text)
        (args.out / "report.json").write_text(report.to_json() + "\n")
        report.figure().savefig(args.out / "figure.png", dpi=120)
    sys.stdout.write(text)


if __name__ == "__main__":
    main()
