"""Per-configuration tables of a sweep: n seeds, mean, std and a 95% interval across seeds.

    python analysis/aggregate.py SWEEP_DIR [--by KEYS] [--metric NAME] [--split S] [--layer L]
                                 [--at final|best|STEP] [--ci t|bootstrap] [--status S,...]

One value per run (the metric's row at `--at`), grouped by `--by` (default: every config key that
varies across the runs, except the seed keys), then `analysis.intervals` across the group's
seeds. Prints the table and writes it to `SWEEP_DIR/analysis/<split>-<metric>-<at>.csv|.md`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

try:
    from analysis import catalog
    from analysis.intervals import bootstrap_interval, t_interval
    from analysis.runs import OUTPUT_DIR, SEED_KEYS, is_seed_key, load_sweep
except ModuleNotFoundError as err:  # the script run by path from a venv without the package
    raise SystemExit(f"{err}: install the repository first: `make install`") from err

META = ("run_id", "run_dir", "status", "reason")


def varying_keys(runs: pd.DataFrame, seed_keys: tuple[str, ...] = SEED_KEYS) -> list[str]:
    """Config keys with more than one value across `runs`, the seed keys excluded."""
    keys = [c for c in runs.columns if c not in META and not is_seed_key(c, seed_keys)]
    return [k for k in keys if runs[k].astype(str).nunique() > 1]


def select_values(
    records: pd.DataFrame, split: str, layer: str, metric: str, at: str = "final"
) -> pd.Series:
    """One value per run_id of (split, layer, metric): at the last step (`final`), the best
    (min for a metric named like a loss, else max: `best`), or the last step <= an integer."""
    rows = records[
        (records["split"] == split) & (records["layer"] == layer) & (records["metric"] == metric)
    ]
    if rows.empty:
        have = records[["split", "layer", "metric"]].drop_duplicates()
        have = sorted(
            f"{s}/{l}/{m}" if l else f"{s}/{m}" for s, l, m in have.itertuples(index=False)
        )
        raise ValueError(
            f"no rows of split={split!r} layer={layer!r} metric={metric!r}; "
            f"the records hold (split/[layer/]metric): {', '.join(have[:40])}"
        )
    rows = rows.sort_values(["run_id", "step"], kind="stable")
    if at == "final":
        return rows.groupby("run_id")["value"].last()
    if at == "best":
        grouped = rows.groupby("run_id")["value"]
        return grouped.min() if "loss" in metric else grouped.max()
    if not at.lstrip("-").isdigit():
        raise ValueError(f"--at {at!r}: use final, best or a step number")
    rows = rows[rows["step"] <= int(at)]
    if rows.empty:
        raise ValueError(f"no rows at or before step {at}")
    return rows.groupby("run_id")["value"].last()


def summarize(
    values: pd.Series,
    runs: pd.DataFrame,
    by: list[str],
    ci: str = "t",
    rng: np.random.Generator | None = None,
    confidence: float = 0.95,
) -> pd.DataFrame:
    """Per group of `by`: n, mean, std, ci_low, ci_high, note, of the runs' `values`."""
    frame = runs.set_index("run_id").join(values.rename("value"), how="inner")
    if ci == "bootstrap" and rng is None:
        raise ValueError("the bootstrap needs an explicit numpy Generator (rng)")
    rows = []
    groups = frame.groupby(by, sort=True, dropna=False) if by else [((), frame)]
    for key, group in groups:
        vals = group["value"].to_numpy(dtype=np.float64)
        finite = vals[np.isfinite(vals)]
        est = (
            t_interval(finite, confidence)
            if ci == "t"
            else bootstrap_interval(finite, rng, confidence)
        )
        note = est.note
        if len(finite) < len(vals):
            note = "; ".join(filter(None, [note, f"{len(vals) - len(finite)} non-finite dropped"]))
        key = key if isinstance(key, tuple) else (key,)
        rows.append(
            {
                **dict(zip(by, key)),
                "n": est.n,
                "mean": est.mean,
                "std": est.std,
                "ci_low": est.low,
                "ci_high": est.high,
                "note": note,
            }
        )
    return pd.DataFrame(rows, columns=[*by, "n", "mean", "std", "ci_low", "ci_high", "note"])


def to_markdown(table: pd.DataFrame) -> str:
    """A GitHub-flavoured Markdown table (floats to 6 significant digits)."""

    def cell(v: object) -> str:
        return f"{v:.6g}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    lines += [
        "| " + " | ".join(cell(v) for v in row) + " |" for row in table.itertuples(index=False)
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> pd.DataFrame:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep_dir", type=Path)
    parser.add_argument("--by", help="comma-separated config keys (default: the varying ones)")
    parser.add_argument("--metric", help="metric name (default: per experiment, see catalog.py)")
    parser.add_argument("--split", help="split (default: per experiment)")
    parser.add_argument("--layer", help='layer ("" for whole-model scalars; default "")')
    parser.add_argument("--at", help="final | best | STEP (default: final)")
    parser.add_argument("--ci", choices=("t", "bootstrap"), default="t")
    parser.add_argument("--confidence", type=float, default=0.95)
    parser.add_argument("--seed", type=int, default=0, help="the bootstrap generator's seed")
    parser.add_argument(
        "--seed-keys",
        default=",".join(SEED_KEYS),
        help="config keys runs are replicated over (also matched as '*.KEY')",
    )
    parser.add_argument(
        "--status",
        default="completed",
        help="comma-separated run statuses to include (default: completed)",
    )
    args = parser.parse_args(argv)

    try:
        records, runs = load_sweep(args.sweep_dir)
    except FileNotFoundError as err:
        raise SystemExit(str(err)) from err
    statuses = args.status.split(",")
    kept = runs[runs["status"].isin(statuses)]
    if kept.empty:
        raise SystemExit(
            f"no run with status {args.status} under {args.sweep_dir} "
            f"(statuses: {runs['status'].value_counts().to_dict()}); try --status completed,running"
        )
    if None in (args.metric, args.split):
        split, layer, metric, at = catalog.DEFAULT_VALUE[catalog.experiment_of(kept)]
    else:
        split, layer, metric, at = args.split, "", args.metric, "final"
    split = args.split if args.split is not None else split
    metric = args.metric if args.metric is not None else metric
    layer = args.layer if args.layer is not None else layer
    at = args.at if args.at is not None else at
    seed_keys = tuple(k for k in args.seed_keys.split(",") if k)
    if args.by is not None:
        by = [k for k in args.by.split(",") if k]
        unknown = [k for k in by if k not in kept.columns]
        if unknown:
            valid = [c for c in kept.columns if c not in META]
            raise SystemExit(f"unknown --by keys {unknown}; valid: {', '.join(valid)}")
    else:
        by = varying_keys(kept, seed_keys)
    try:
        values = select_values(
            records[records["run_id"].isin(kept["run_id"])], split, layer, metric, at
        )
    except ValueError as err:
        raise SystemExit(str(err)) from err
    rng = np.random.default_rng(args.seed) if args.ci == "bootstrap" else None
    table = summarize(values, kept, by, args.ci, rng, args.confidence)

    name = "-".join(filter(None, [split, layer.replace("/", "_"), metric, at]))
    out = args.sweep_dir / OUTPUT_DIR
    table.to_csv(out / f"{name}.csv", index=False)
    title = (
        f"{metric} (split {split}{', layer ' + layer if layer else ''}, at {at}): "
        f"mean, std and {args.confidence:.0%} {args.ci}-interval across seeds"
    )
    (out / f"{name}.md").write_text(f"{title}\n\n{to_markdown(table)}\n")
    print(title)
    print(table.to_string(index=False, float_format=lambda v: f"{v:.6g}"))
    print(f"written: {out / name}.csv, .md")
    return table


if __name__ == "__main__":
    main(sys.argv[1:])
