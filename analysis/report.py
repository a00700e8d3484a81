"""A Markdown report of one sweep: its runs by status, why runs failed or diverged, the files
skipped as unreadable, the tables and the figures, embedded by paths relative to the report.

    python -m analysis.report SWEEP_DIR [--facet KEYS] [--hue KEYS] [--max-lines N]
        [--where KEY=VALUE ...] [--status S,...] [--seed-keys K,...] [--experiment NAME]

Writes `SWEEP_DIR/analysis/<name>.md` (`report`, plus the options that are not the defaults:
analysis.options.output_name) and its figures into `SWEEP_DIR/analysis/figures/` (analysis.figures,
the same options). Tables: the experiment's default value (catalog.DEFAULT_VALUE), then the final
value of every loss and accuracy curve the records hold, per configuration with n, mean, std, the
95% t-interval across seeds, n_failed and n_diverged.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from analysis import catalog, figures, options
from analysis.aggregate import (
    config_keys,
    faceted_markdown,
    select_values,
    summarize,
    title_of,
    to_markdown,
    varying_keys,
)
from analysis.runs import OUTPUT_DIR, Sweep

EXAMPLES = 3  # run directories listed per failure reason


def runs_section(sweep: Sweep, sweep_dir: Path) -> str:
    """The runs by experiment and status, the reasons of failed and diverged runs, and the
    unreadable files."""
    runs = sweep.runs
    counts = runs.groupby(["experiment", "status"]).size().rename("runs").reset_index()
    parts = [f"## Runs\n\n{len(runs)} runs under `{sweep_dir}`.\n\n{to_markdown(counts)}"]
    for status in ("failed", "diverged"):
        bad = runs[runs["status"] == status]
        if bad.empty:
            continue
        lines = [f"### {status.capitalize()} runs, by reason\n"]
        reasons = bad.assign(reason=bad["reason"].fillna("").replace("", "(no reason given)"))
        for reason, group in reasons.groupby("reason", sort=True):
            dirs = ", ".join(f"`{d}`" for d in group["run_dir"].head(EXAMPLES))
            more = f" and {len(group) - EXAMPLES} more" if len(group) > EXAMPLES else ""
            lines.append(f"- {len(group)} x {reason}: {dirs}{more}")
        parts.append("\n".join(lines))
    if sweep.unreadable:
        lines = ["### Unreadable files\n"]
        for note in sweep.unreadable:
            path, _, why = note.partition(": ")
            lines.append(f"- `{path}`: {why}")
        parts.append("\n".join(lines))
    return "\n\n".join(parts)


def tables_section(
    sweep: Sweep,
    by: list[str],
    statuses: tuple[str, ...],
    facet: list[str],
) -> str:
    """The default value's table, then every curve's final value, per configuration."""
    runs = sweep.runs
    kept = sweep.records[
        sweep.records["run_id"].isin(runs.loc[runs["status"].isin(statuses), "run_id"])
    ]
    experiment = catalog.experiment_of(runs)
    specs = [catalog.DEFAULT_VALUE[experiment]]
    specs += [
        (split, "", metric, "final")
        for split in catalog.CURVE_SPLITS[experiment]
        for metric in catalog.CURVE_METRICS
    ]
    parts = ["## Tables"]
    for split, layer, metric, at in dict.fromkeys(specs):
        try:
            values = select_values(kept, split, layer, metric, at)
        except ValueError:
            continue  # the records hold no such rows
        table = summarize(
            values, runs, [*facet, *[k for k in by if k not in facet]], "t", None, 0.95, statuses
        )
        title = title_of(split, layer, metric, at, "t", 0.95)
        parts.append(f"### {split} {metric} ({at})\n\n{title}.\n\n{faceted_markdown(table, facet)}")
    return "\n\n".join(parts)


def figures_section(paths: list[Path], report_file: Path) -> str:
    lines = ["## Figures"]
    for path in paths:
        rel = Path(os.path.relpath(path, report_file.parent)).as_posix()
        lines.append(f"### {path.stem}\n\n![{path.stem}]({rel})")
    return "\n\n".join(lines)


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    options.add_arguments(parser)
    figures.add_arguments(parser)
    args = parser.parse_args(argv)
    sweep = options.load(args)
    out = args.sweep_dir / OUTPUT_DIR
    report_file = out / f"{options.output_name('report', figures.suffix(args))}.md"
    try:
        statuses = options.statuses(args.status)
        facet = config_keys(sweep.runs, args.facet, "facet")
        by = varying_keys(sweep.runs, options.seed_keys(args.seed_keys))
        tables = tables_section(sweep, by, statuses, facet)
        drawn = figures.from_arguments(sweep, args, out / "figures")
    except ValueError as err:
        raise SystemExit(str(err)) from err
    selection = ", ".join(f"`{w}`" for w in args.where) or "all runs"
    head = (
        f"# Sweep report: {args.sweep_dir.name}\n\nExperiment: "
        f"{catalog.experiment_of(sweep.runs)}. Runs selected: {selection}. Values from runs of "
        f"status {', '.join(statuses)}; intervals are 95% t-intervals of the mean across the "
        "seeds of one configuration."
    )
    sections = [head, runs_section(sweep, args.sweep_dir), tables]
    report_file.write_text("\n\n".join([*sections, figures_section(drawn, report_file)]) + "\n")
    print(f"wrote {report_file}")
    return report_file


if __name__ == "__main__":
    main()
