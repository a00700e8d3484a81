"""The command-line options `aggregate`, `figures` and `report` share, what they select, and the
output file names that encode them.

- `--where KEY=VALUE[,VALUE...]` (repeatable): keep the runs whose config key KEY (a flattened key
  such as `model.arch`, or `experiment`) takes one of the values; several `--where` must all hold.
  Values compare by type: numbers numerically (`1e-3` matches 0.001), `true`/`false` booleans,
  `none`/`null` a missing value, anything else as text.
- `--status S,...`: the statuses whose values enter tables and figures (default `completed`); the
  tables count failed and diverged runs whatever this says.
- `--seed-keys K,...`: the config keys runs are replicated over (default `seed`, also matched as
  `*.seed`); every other key that varies across the runs identifies a configuration.
- `--experiment NAME`: the experiment of records whose config.json predates its "experiment"
  entry (analysis.runs refuses them otherwise).
"""

from __future__ import annotations

import argparse
import hashlib
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path

import pandas as pd

from analysis.runs import META, SEED_KEYS, Sweep, load_sweep
from core.run import schema

MAX_NAME = 120  # characters of an output file's stem; longer ones end in a hash of the options


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The shared options (module docstring) on `parser`."""
    parser.add_argument("sweep_dir", type=Path)
    parser.add_argument(
        "--where",
        action="append",
        default=[],
        metavar="KEY=VALUE[,VALUE]",
        help="keep the runs whose KEY takes one of the values (repeatable; all must hold)",
    )
    parser.add_argument(
        "--status",
        default="completed",
        help="comma-separated statuses whose values are used (default: completed; valid: "
        f"{', '.join(schema.STATUSES)})",
    )
    parser.add_argument(
        "--seed-keys",
        default=",".join(SEED_KEYS),
        help="config keys runs are replicated over (also matched as '*.KEY')",
    )
    parser.add_argument(
        "--experiment",
        choices=schema.EXPERIMENTS,
        help='the experiment of records whose config.json has no "experiment" entry',
    )


def parse_where(items: Sequence[str]) -> dict[str, tuple[str, ...]]:
    """`["a=1,2", "b=x"]` -> `{"a": ("1", "2"), "b": ("x",)}`; raises on a malformed item."""
    where: dict[str, tuple[str, ...]] = {}
    for item in items:
        key, sep, values = item.partition("=")
        if not sep or not key.strip() or not values.strip():
            raise ValueError(f"--where {item!r}: write KEY=VALUE[,VALUE...], e.g. model.arch=mlp")
        key = key.strip()
        if key in where:
            raise ValueError(f"--where {key} given twice; list its values once: {key}=A,B")
        where[key] = tuple(v.strip() for v in values.split(","))
    return where


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _equals(value: object, text: str) -> bool:
    """Whether a config value equals the command line's `text`, compared by the value's type."""
    if value is None or value != value:  # None or NaN: a missing value
        return text.lower() in ("none", "null")
    if isinstance(value, bool):
        return text.lower() == str(value).lower()
    if isinstance(value, int | float):
        number = _number(text)
        return number is not None and float(value) == number
    return str(value) == text


def select_runs(runs: pd.DataFrame, where: Mapping[str, Sequence[str]]) -> pd.DataFrame:
    """The runs matching every `where` entry; raises naming the valid keys or values."""
    selectable = [c for c in runs.columns if c not in META or c == "experiment"]
    mask = pd.Series(True, index=runs.index)
    for key, texts in where.items():
        if key not in selectable:
            raise ValueError(f"--where {key}: no such key; valid: {', '.join(selectable)}")
        column = runs[key].astype(object)
        hit = column.map(lambda v, texts=texts: any(_equals(v, t) for t in texts)).astype(bool)
        if not (hit & mask).any():
            taken = sorted({"none" if v is None or v != v else str(v) for v in column[mask]})
            raise ValueError(
                f"--where {key}={','.join(texts)} matches no run"
                f"{' (with the other --where)' if len(where) > 1 else ''}; "
                f"{key} takes: {', '.join(taken)}"
            )
        mask &= hit
    return runs[mask]


def statuses(text: str) -> tuple[str, ...]:
    """`--status a,b` as a tuple; raises on an unknown status, listing the valid ones."""
    chosen = tuple(s for s in text.split(",") if s)
    unknown = [s for s in chosen if s not in (*schema.STATUSES, "unknown")]
    if unknown or not chosen:
        raise ValueError(
            f"--status {text!r}: unknown {unknown}; valid: {', '.join(schema.STATUSES)}, unknown"
        )
    return chosen


def seed_keys(text: str) -> tuple[str, ...]:
    return tuple(k for k in text.split(",") if k)


def load(args: argparse.Namespace) -> Sweep:
    """The sweep of `args.sweep_dir`, its runs (and their rows) narrowed by `--where`; each
    unreadable file named on stderr. Raises SystemExit with the reason if it cannot."""
    try:
        sweep = load_sweep(args.sweep_dir, args.experiment)
        runs = select_runs(sweep.runs, parse_where(args.where))
    except (FileNotFoundError, ValueError) as err:
        raise SystemExit(str(err)) from err
    if sweep.unreadable:
        print(f"warning: skipped {len(sweep.unreadable)} unreadable file(s):", file=sys.stderr)
        for line in sweep.unreadable:
            print(f"  {args.sweep_dir / line}", file=sys.stderr)
    records = sweep.records[sweep.records["run_id"].isin(runs["run_id"])]
    return replace(sweep, records=records, runs=runs)


def _token(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=+-]", "_", text.replace(",", "+"))


def output_name(base: str, options: Mapping[str, object]) -> str:
    """A file stem for `base` under `options` (name -> value; None and empty ones left out):
    `base__name-value__...`, names sorted, so that outputs of different options never overwrite
    each other and the same options give the same name. Stems longer than MAX_NAME keep their
    start and end in a hash of the whole."""
    parts = [_token(base)]
    for name in sorted(options):
        value = options[name]
        if value is None or (isinstance(value, str | Mapping | list | tuple) and not value):
            continue
        if isinstance(value, Mapping):
            value = "+".join(f"{k}={','.join(v)}" for k, v in sorted(value.items()))
        elif isinstance(value, list | tuple):
            value = "+".join(str(v) for v in value)
        parts.append(f"{_token(name)}-{_token(str(value))}")
    stem = "__".join(parts)
    if len(stem) <= MAX_NAME:
        return stem
    digest = hashlib.sha1(stem.encode()).hexdigest()[:12]
    return f"{stem[: MAX_NAME - 14]}__{digest}"
