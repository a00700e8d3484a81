"""`python -m core.theory figures --out DIR` | `python -m core.theory stability CHECKPOINT`.

figures    writes Figures A.1-A.3 (PNG and PDF) into DIR (~40 s of CPU; --quick: seconds).
stability  prints (and with --out writes) a JSON report: the extreme eigenvalues of the Hessian in
           the normal directions of the cloning manifold minus its exact symmetries (Lanczos, with
           residuals), the verdict of Def. A.2 and the escape along the softest normal
           eigenvector, for a checkpoint of a cloned model (core/theory/report.py).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from core.run.cli import user_error
from core.theory.figures import write_figures
from core.theory.report import MODES, stability_report


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m core.theory", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    fig = commands.add_parser("figures", help="write Figures A.1-A.3")
    fig.add_argument("--out", required=True, type=Path, help="output folder")
    fig.add_argument("--seed", type=int, default=0, help="seed of A.1's random correlation matrix")
    fig.add_argument("--quick", action="store_true", help="coarse grids (seconds; for CI)")
    stab = commands.add_parser("stability", help="normal Hessian and escape rate of a checkpoint")
    stab.add_argument("checkpoint", type=Path, help="torch.save'd dict: model_config, model")
    stab.add_argument("--dataset", help="dataset name (default: from the run's config.json)")
    stab.add_argument("--data-root", help="dataset folder (default: the run's, $LOP_DATA, ./data)")
    stab.add_argument("--samples", type=int, default=512, help="training images in the loss")
    stab.add_argument("--lanczos-steps", type=int, default=40, help="Lanczos iterations")
    stab.add_argument("--eps", type=float, default=1e-4, help="size of the normal perturbation")
    stab.add_argument("--lr", type=float, default=0.01, help="gradient-descent step of the escape")
    stab.add_argument(
        "--escape-steps", type=int, help="gradient-descent steps (default: 3 / (lr |lambda_min|))"
    )
    stab.add_argument(
        "--max-escape-steps", type=int, default=5000, help="cap on the default escape steps"
    )
    stab.add_argument("--mode", choices=MODES, default="eval", help="model mode in the loss")
    stab.add_argument("--seed", type=int, default=0, help="seeds samples and the Lanczos start")
    stab.add_argument("--device", default="cpu", help="torch device of the analysis (cpu, cuda)")
    stab.add_argument("--out", type=Path, help="also write the JSON report here")
    args = parser.parse_args(argv)

    if args.command == "figures":
        for path in write_figures(args.out, args.seed, args.quick):
            print(path)
        return
    if not args.checkpoint.is_file():
        parser.error(f"no checkpoint at {args.checkpoint}")
    try:
        # every option of `stability` but --out is a parameter of stability_report, by name
        report = stability_report(
            **{k: v for k, v in vars(args).items() if k not in ("command", "out")}
        )
    except (KeyError, ValueError, FileNotFoundError) as err:
        user_error(parser.prog, err)
    text = json.dumps(report, indent=2)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    sys.stdout.write(text + "\n")


if __name__ == "__main__":
    main()
