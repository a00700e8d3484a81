"""Per-configuration tables of a sweep: n seeds, mean, std and a 95% interval across seeds, with
the numbers of failed and diverged runs of each configuration.

    python -m analysis.aggregate SWEEP_DIR [--by KEYS] [--facet KEYS] [--metric NAME] [--split S]
        [--layer L] [--at final|best|STEP] [--ci t|bootstrap] [--where KEY=VALUE ...]
        [--status S,...] [--seed-keys K,...] [--experiment NAME]

One value per run (the metric's row at `--at`), grouped by `--facet` and `--by` (default: every
config key that varies across the runs, except the seed keys), then `analysis.intervals` across
the group's seeds. Prints the table and writes it to `SWEEP_DIR/analysis/<name>.csv|.md`, the
name encoding the options (analysis.options.output_name); `--facet` splits the Markdown into one
table per value of the facet keys. `analysis/aggregate.py` run by path works the same.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import pandas as pd

try:
    from analysis import catalog, options
    from analysis.intervals import bootstrap_interval, t_interval
    from analysis.runs import META, OUTPUT_DIR, SEED_KEYS, is_seed_key
except ModuleNotFoundError as err:  # the script run by path from a venv without the package
    raise SystemExit(f"{err}: install the repository first: `make install`") from err

COUNTED = ("failed", "diverged")  # statuses every table counts per configuration


def varying_keys(runs: pd.DataFrame, seed_keys: tuple[str, ...] = SEED_KEYS) -> list[str]:
    """Config keys with more than one value across `runs` (a missing value is one), the seed
    keys excluded."""
    keys = [c for c in runs.columns if c not in META and not is_seed_key(c, seed_keys)]
    return [k for k in keys if runs[k].nunique(dropna=False) > 1]


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
    statuses: tuple[str, ...] = ("completed",),
) -> pd.DataFrame:
    """Per group of `by` over `runs` (every status): n, mean, std, ci_low, ci_high of the finite
    `values` (one per run_id) of the runs whose status is in `statuses`; n_failed and n_diverged,
    the group's runs of those statuses; note, why values are missing or runs left out."""
    if ci not in ("t", "bootstrap"):
        raise ValueError(f"ci={ci!r}; valid: t, bootstrap")
    if ci == "bootstrap" and rng is None:
        raise ValueError("the bootstrap needs an explicit numpy Generator (rng)")
    frame = runs.set_index("run_id").join(values.rename("value"), how="left")
    columns = [*by, "n", "mean", "std", "ci_low", "ci_high", *(f"n_{s}" for s in COUNTED), "note"]
    rows = []
    groups = frame.groupby(by, sort=True, dropna=False) if by else [((), frame)]
    for key, group in groups:
        used = group[group["status"].isin(statuses)]
        vals = used["value"].to_numpy(dtype=np.float64)
        finite = vals[np.isfinite(vals)]
        est = (
            t_interval(finite, confidence)
            if ci == "t"
            else bootstrap_interval(finite, rng, confidence)
        )
        absent = int(used["value"].isna().sum())
        left_out = group.loc[~group["status"].isin((*statuses, *COUNTED)), "status"]
        notes = [
            est.note,
            f"{len(vals) - absent - len(finite)} non-finite dropped"
            if len(vals) - absent > len(finite)
            else "",
            f"{absent} run(s) without a value" if absent else "",
            *(f"{c} {s} left out" for s, c in left_out.value_counts().sort_index().items()),
        ]
        key = key if isinstance(key, tuple) else (key,)
        rows.append(
            {
                **dict(zip(by, key)),
                "n": est.n,
                "mean": est.mean,
                "std": est.std,
                "ci_low": est.low,
                "ci_high": est.high,
                **{f"n_{s}": int((group["status"] == s).sum()) for s in COUNTED},
                "note": "; ".join(filter(None, notes)),
            }
        )
    return pd.DataFrame(rows, columns=columns)


def to_markdown(table: pd.DataFrame) -> str:
    """A GitHub-flavoured Markdown table (floats to 6 significant digits)."""

    def cell(v: object) -> str:
        return f"{v:.6g}" if isinstance(v, float) else str(v).replace("|", "\\|")

    lines = ["| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    lines += [
        "| " + " | ".join(cell(v) for v in row) + " |" for row in table.itertuples(index=False)
    ]
    return "\n".join(lines)


def faceted_markdown(table: pd.DataFrame, facet: list[str]) -> str:
    """One Markdown table per value combination of the `facet` columns, each under a heading
    `facet=value, ...`; the whole table without facets."""
    if not facet:
        return to_markdown(table)
    parts = []
    for key, group in table.groupby(facet, sort=True, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        heading = ", ".join(f"{k}={v}" for k, v in zip(facet, key))
        parts.append(f"#### {heading}\n\n{to_markdown(group.drop(columns=facet))}")
    return "\n\n".join(parts)


def config_keys(runs: pd.DataFrame, text: str | None, what: str) -> list[str]:
    """The comma-separated config keys of `--what`, each checked against `runs`' columns."""
    keys = [k for k in (text or "").split(",") if k]
    unknown = [k for k in keys if k not in runs.columns or k in META]
    if unknown:
        valid = [c for c in runs.columns if c not in META]
        raise ValueError(f"unknown --{what} keys {unknown}; valid: {', '.join(valid)}")
    return keys


def value_spec(
    runs: pd.DataFrame, split: str | None, layer: str | None, metric: str | None, at: str | None
) -> tuple[str, str, str, str]:
    """(split, layer, metric, at): the given ones, the rest from the experiment's default
    (catalog.DEFAULT_VALUE); the experiment is needed only when split or metric is missing."""
    if None in (split, metric):
        d_split, d_layer, d_metric, d_at = catalog.DEFAULT_VALUE[catalog.experiment_of(runs)]
    else:
        d_split, d_layer, d_metric, d_at = split, "", metric, "final"
    return (
        d_split if split is None else split,
        d_layer if layer is None else layer,
        d_metric if metric is None else metric,
        d_at if at is None else at,
    )


def title_of(split: str, layer: str, metric: str, at: str, ci: str, confidence: float) -> str:
    """The table's one-line title: what the value is and what each column counts."""
    return (
        f"{metric} (split {split}{', layer ' + layer if layer else ''}, at {at}): mean, std and "
        f"{confidence:.0%} {ci}-interval across seeds, per configuration; n: seeds used, "
        "n_failed and n_diverged: the configuration's failed and diverged runs"
    )


def main(argv: list[str] | None = None) -> pd.DataFrame:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    options.add_arguments(parser)
    parser.add_argument("--by", help="comma-separated config keys (default: the varying ones)")
    parser.add_argument("--facet", help="comma-separated config keys: one Markdown table each")
    parser.add_argument("--metric", help="metric name (default: per experiment, see catalog.py)")
    parser.add_argument("--split", help="split (default: per experiment)")
    parser.add_argument("--layer", help='layer ("" for whole-model scalars; default "")')
    parser.add_argument("--at", help="final | best | STEP (default: final)")
    parser.add_argument("--ci", choices=("t", "bootstrap"), default="t")
    parser.add_argument("--confidence", type=float, default=0.95)
    parser.add_argument("--seed", type=int, default=0, help="the bootstrap generator's seed")
    args = parser.parse_args(argv)

    sweep = options.load(args)
    runs = sweep.runs
    try:
        chosen = options.statuses(args.status)
        facet = config_keys(runs, args.facet, "facet")
        by = config_keys(runs, args.by, "by") if args.by is not None else None
        split, layer, metric, at = value_spec(runs, args.split, args.layer, args.metric, args.at)
    except ValueError as err:
        raise SystemExit(str(err)) from err
    kept = runs[runs["status"].isin(chosen)]
    if kept.empty:
        raise SystemExit(
            f"no run with status {args.status} under {args.sweep_dir} "
            f"(statuses: {runs['status'].value_counts().to_dict()}); try --status completed,running"
        )
    if by is None:
        by = varying_keys(runs, options.seed_keys(args.seed_keys))
    by = facet + [k for k in by if k not in facet]
    try:
        values = select_values(
            sweep.records[sweep.records["run_id"].isin(kept["run_id"])], split, layer, metric, at
        )
    except ValueError as err:
        raise SystemExit(str(err)) from err
    rng = np.random.default_rng(args.seed) if args.ci == "bootstrap" else None
    table = summarize(values, runs, by, args.ci, rng, args.confidence, chosen)

    name = options.output_name(
        "-".join(filter(None, [split, layer, metric, at])),
        {
            "where": options.parse_where(args.where),
            "by": args.by,
            "facet": args.facet,
            "status": None if chosen == ("completed",) else chosen,
            "ci": None if args.ci == "t" else f"{args.ci}{args.seed}",
            "confidence": None if args.confidence == 0.95 else args.confidence,
            "seed-keys": None if args.seed_keys == ",".join(SEED_KEYS) else args.seed_keys,
        },
    )
    out = args.sweep_dir / OUTPUT_DIR
    table.to_csv(out / f"{name}.csv", index=False)
    title = title_of(split, layer, metric, at, args.ci, args.confidence)
    title += f"; runs: {', '.join(args.where) or 'all'}, values of status {', '.join(chosen)}"
    (out / f"{name}.md").write_text(f"{title}\n\n{faceted_markdown(table, facet)}\n")
    print(title)
    print(table.to_string(index=False, float_format=lambda v: f"{v:.6g}"))
    print(f"written: {out / name}.csv, .md")
    return table


if __name__ == "__main__":
    main(sys.argv[1:])
