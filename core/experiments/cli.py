"""The command line shared by every experiment: `python -m core.experiments.<name> key=value ...`.

The overrides are parsed against the experiment's `Config` (unknown key: error listing the valid
ones), a run record is opened (`--run-dir`, default `runs/<name>-<UTC time>`), and the experiment
runs with a progress bar. Pointing `--run-dir` at an existing record resumes it from its last
checkpoint, provided the overrides give the same config.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from core.experiments.overrides import parse_overrides
from core.records import RunRecord


def _defaults(cfg: Any, prefix: str = "") -> list[str]:
    lines = []
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            lines += _defaults(value, f"{prefix}{f.name}.")
        else:
            text = (
                "null"
                if value is None
                else ",".join(map(str, value))
                if isinstance(value, tuple)
                else value
            )
            lines.append(f"  {prefix}{f.name}={text}")
    return lines


def main(
    experiment: str,
    config_cls: type,
    run: Callable[..., dict],
    argv: Sequence[str] | None = None,
) -> dict:
    """Parse `argv`, open the run record, run with a progress bar, print and return the summary."""
    parser = argparse.ArgumentParser(
        prog=f"python -m core.experiments.{experiment}",
        description=sys.modules[run.__module__].__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="keys and defaults:\n" + "\n".join(_defaults(config_cls())),
    )
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    parser.add_argument(
        "--run-dir",
        type=Path,
        default=None,
        help="the run record (default runs/<name>-<UTC time>); an existing one is resumed",
    )
    args = parser.parse_args(argv)
    try:
        cfg = parse_overrides(config_cls, args.overrides)
    except ValueError as err:
        parser.error(str(err))
    run_dir = args.run_dir or Path("runs") / f"{experiment}-{datetime.now(UTC):%Y%m%d-%H%M%S}"
    record = RunRecord(run_dir)
    summary = run(cfg, record, progress=True)
    print(json.dumps({"run_dir": str(run_dir), **summary}, indent=2, default=str))
    return summary
