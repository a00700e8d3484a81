"""The paper's figure families from a sweep's run records, as PNG and PDF, in small multiples.

    python -m analysis.figures SWEEP_DIR [--out DIR] [--facet KEYS] [--hue KEYS] [--max-lines N]
        [--where KEY=VALUE ...] [--status S,...] [--seed-keys K,...] [--experiment NAME]

Every line is one configuration (a value of every config key that varies across the runs, seeds
excepted): its mean across seeds, with a band (or error bars) of the 95% t-interval of that mean
across the configuration's seeds. The configuration keys are split between `--hue` (lines of one
axes, told apart by colour) and `--facet` (one axes per value: small multiples); keys given to
neither are added to the hue while it stays within `--max-lines` lines per axes (default 8),
fewest values first, and to the facets after that. Each line and band is labelled with what it is
("<config>: mean ± 95% t-interval across seeds, n=5").

Selection and aggregation (`bands`, `layout`) are pure functions of the compacted records; the
plot function (`plot_grid`) only draws and returns the figure. A family whose metrics the records
do not hold is skipped with a message. Metric names and config keys come from `analysis.catalog`.

Families (file stems; options other than the defaults append `__option-value` parts,
analysis.options.output_name): `curves-<split>-<metric>` (loss and accuracy);
`units-<split>-<metric>` (effective rank, participation ratio, duplicate and dead fraction, each
run's layers averaged); `diagnosis-<split>` (the probe's `diagnose` rows: the fraction of units in
clone blocks, solid, and frozen on every probe row, dashed, one axes per layer and facet value);
`cloning-score` (the mean R² of the clone's layers); `cloning-base-vs-clone`
(base dashed, clone solid training loss); `bitflip-switch` (SGD -> CBP at the smallest width);
`bitflip-width` (final binned loss against learner width, error bars).
"""

from __future__ import annotations

import argparse
import math
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure  # drawn without pyplot: no global figure registry
from matplotlib.lines import Line2D

from analysis import catalog, options
from analysis.aggregate import config_keys, select_values, summarize, varying_keys
from analysis.intervals import t_interval
from analysis.runs import OUTPUT_DIR, SEED_KEYS, Sweep

MAX_LINES = 8  # lines per axes; more configurations go to more axes
COLOURS = 10  # distinct colours of matplotlib's default cycle (C0..C9)
STATS = ["n", "mean", "ci_low", "ci_high"]
BAND = "mean ± {:.0%} t-interval across seeds"  # what every band is


def bands(
    records: pd.DataFrame,
    runs: pd.DataFrame,
    split: str,
    metric: str | tuple[str, ...],
    keys: list[str],
    layer: str | None = "",
    confidence: float = 0.95,
) -> pd.DataFrame:
    """Per configuration (the values of `keys`) and step: n, mean, ci_low, ci_high across seeds.

    `layer=None` averages the metric over every layer of a run first; a tuple of metric names
    uses the first one the records hold. Columns: *keys, step, n, mean, ci_low, ci_high.
    """
    columns = [*keys, "step", *STATS]
    names = (metric,) if isinstance(metric, str) else metric
    rows = records[(records["split"] == split) & records["metric"].isin(names)]
    if rows.empty:
        return pd.DataFrame(columns=columns)
    rows = rows[rows["metric"] == next(m for m in names if (rows["metric"] == m).any())]
    rows = rows[rows["layer"] != ""] if layer is None else rows[rows["layer"] == layer]
    per_run = rows.groupby(["run_id", "step"])["value"].mean().reset_index()
    per_run = per_run.merge(runs[["run_id", *keys]], on="run_id", how="inner")
    out = []
    for key, group in per_run.groupby([*keys, "step"], sort=True, dropna=False):
        values = group["value"].to_numpy(dtype=np.float64)
        est = t_interval(values[np.isfinite(values)], confidence)
        out.append([*key, est.n, est.mean, est.low, est.high])
    return pd.DataFrame(out, columns=columns)


def per_layer_bands(
    records: pd.DataFrame,
    runs: pd.DataFrame,
    split: str,
    metric: str,
    keys: list[str],
    confidence: float = 0.95,
) -> pd.DataFrame:
    """`bands` of `metric` for every layer that has it, with a `layer` column (layers sorted)."""
    rows = records[(records["split"] == split) & (records["metric"] == metric)]
    frames = [
        bands(rows, runs, split, metric, keys, layer, confidence).assign(layer=layer)
        for layer in sorted(rows["layer"].unique())
        if layer
    ]
    if not frames:
        return pd.DataFrame(columns=[*keys, "step", *STATS, "layer"])
    return pd.concat(frames, ignore_index=True)


def _combos(frame: pd.DataFrame, keys: Sequence[str]) -> list[tuple]:
    """The distinct value tuples of `keys` in `frame`, sorted, a missing value as None (last)."""
    if not keys:
        return [()]
    unique = frame[list(keys)].drop_duplicates()
    unique = unique.sort_values(list(keys), kind="stable", na_position="last")
    return [tuple(None if pd.isna(v) else v for v in r) for r in unique.itertuples(index=False)]


def layout(
    configs: pd.DataFrame,
    keys: Sequence[str],
    facet: Sequence[str] = (),
    hue: Sequence[str] = (),
    max_lines: int = MAX_LINES,
) -> tuple[list[str], list[str]]:
    """(facet keys, hue keys) covering every configuration key, with at most `max_lines` hue
    values per axes. `configs` holds one row per configuration (columns `keys` and the given
    facet and hue keys). Keys given neither as facet nor hue join the hue while its value
    combinations stay within `max_lines` (fewest values first), then the facets."""
    if not 1 <= max_lines <= COLOURS:
        raise ValueError(f"max_lines={max_lines}: use 1 to {COLOURS} (distinct colours)")
    both = sorted(set(facet) & set(hue))
    if both:
        raise ValueError(f"{both} given as both --facet and --hue; give each key once")
    hue = list(hue)
    if len(_combos(configs, hue)) > max_lines:
        raise ValueError(
            f"--hue {','.join(hue)} has {len(_combos(configs, hue))} values, more than "
            f"{max_lines} lines per axes: facet by some of its keys (--facet) or narrow the "
            "runs (--where)"
        )
    rest = [k for k in keys if k not in facet and k not in hue]
    rest.sort(key=lambda k: configs[k].nunique(dropna=False))
    if not hue:
        for key in list(rest):
            if len(_combos(configs, [*hue, key])) > max_lines:
                break
            hue.append(key)
            rest.remove(key)
        hue = [k for k in keys if k in hue]
    return [*facet, *[k for k in keys if k in rest]], hue


def _rows_of(frame: pd.DataFrame, keys: Sequence[str], values: Sequence) -> pd.DataFrame:
    """The rows of `frame` whose `keys` take `values` (a missing value matches a missing one)."""
    for k, v in zip(keys, values):
        frame = frame[(frame[k] == v) | (frame[k].isna() & pd.isna(v))]
    return frame


def _text(keys: Sequence[str], values: Sequence) -> str:
    return ", ".join(f"{k}={v}" for k, v in zip(keys, values))


def _n_text(n: pd.Series) -> str:
    lo, hi = int(n.min()), int(n.max())
    return f"n={lo}" if lo == hi else f"n={lo}-{hi}"


def _draw_line(
    ax, line: pd.DataFrame, x: str, label: str, what: str, style: dict, errorbars: bool
) -> None:
    """One configuration's mean against `x`, with its interval as a band or error bars, each
    artist labelled `what`; without any interval (one seed) a line saying so."""
    if errorbars:
        err = np.vstack([line["mean"] - line["ci_low"], line["ci_high"] - line["mean"]])
        bars = ax.errorbar(
            line[x],
            line["mean"],
            yerr=np.nan_to_num(err),
            marker="o",
            capsize=3,
            label=what,
            **style,
        )
        bars.lines[0].set_label(what)  # the mean's line
        bars.lines[2][0].set_label(what)  # the bars' LineCollection
    elif line["ci_low"].notna().any():
        ax.plot(line[x], line["mean"], label=what, **style)
        ax.fill_between(
            line[x],
            line["ci_low"],
            line["ci_high"],
            color=style["color"],
            alpha=0.2,
            linewidth=0,
            label=what,
        )
    else:
        ax.plot(line[x], line["mean"], label=f"{label}: mean, n=1, no interval", **style)


def plot_grid(
    series: Mapping[str, pd.DataFrame],
    facet: Sequence[str],
    hue: Sequence[str],
    title: str,
    ylabel: str,
    x: str = "step",
    errorbars: bool = False,
    confidence: float = 0.95,
    vline: tuple[float, str] | None = None,
    logx: bool = False,
) -> Figure:
    """Small multiples: one axes per `facet` value, in each one line per `hue` value and series
    (the series told apart by line style, its name prefixing the label), its mean with a shaded
    band (or error bars) from ci_low to ci_high. Each frame has columns *facet, *hue, x,
    n, mean, ci_low, ci_high, one row per configuration and x. `vline` = (x, label) draws a
    dotted vertical line on every axes."""
    frames = [f for f in series.values() if len(f)]
    union = pd.concat([f[[*facet, *hue]] for f in frames]) if frames else pd.DataFrame()
    panels = _combos(union, facet)
    colours = {h: f"C{i % COLOURS}" for i, h in enumerate(_combos(union, hue))}
    styles = dict(zip(series, ("-", "--", ":", "-.")))
    union_x = set().union(*(f[x].astype(float) for f in frames))
    ncols = math.ceil(math.sqrt(len(panels)))
    nrows = math.ceil(len(panels) / ncols)
    width = max(3.8 * ncols, 7.0)  # inches; a single axes keeps room for its legend
    fig = Figure(figsize=(width, 2.9 * nrows + 0.9), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, sharex=True)
    band = BAND.format(confidence)
    for ax, panel in zip(axes.flat, panels):
        ns = []
        for name, frame in series.items():
            here = _rows_of(frame, facet, panel)
            for h in _combos(here, hue) if len(here) else []:
                line = _rows_of(here, hue, h).sort_values(x)
                label = f"{name}: " * bool(name) + (_text(hue, h) or "all runs")
                ns.append(line["n"])
                style = {"color": colours[h], "linestyle": styles[name]}
                _draw_line(
                    ax, line, x, label, f"{label}: {band}, {_n_text(line['n'])}", style, errorbars
                )
        ax.set_title(
            _text(facet, panel) + (f" ({_n_text(pd.concat(ns))})" if ns else ""), fontsize=8
        )
        ax.set_xlabel(x, fontsize=8)
        ax.set_ylabel(ylabel, fontsize=8)
        ax.tick_params(labelsize=7)
        if logx:
            ax.set_xscale("log")
            ticks = sorted(union_x)
            ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
            ax.minorticks_off()
        if vline is not None:
            ax.axvline(vline[0], color="k", linestyle=":", label=vline[1])
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_visible(False)
    handles = [
        Line2D([], [], color=c, label=_text(hue, h) or "all runs") for h, c in colours.items()
    ]
    if len(series) > 1:
        handles += [Line2D([], [], color="k", linestyle=styles[s], label=s) for s in series]
    longest = max(len(h.get_label()) for h in handles)  # ~0.06 inch a character at 7 points
    ncol = max(1, min(len(handles), int(width / (0.06 * longest + 0.6))))
    fig.legend(handles=handles, loc="outside lower center", ncol=ncol, fontsize=7)
    what = (
        f"lines: mean across the seeds of one configuration; {'bars' if errorbars else 'bands'}: "
        f"{confidence:.0%} t-interval of that mean; n = seeds"
    )
    chars = int(14 * width)  # about the characters an inch of 9-point text holds, times width
    fig.suptitle(textwrap.fill(f"{title}. {what}", chars), fontsize=9)
    return fig


def _keys(runs: pd.DataFrame, seed_keys: tuple[str, ...], facet, hue) -> list[str]:
    """The configuration keys: the varying ones and any facet or hue key."""
    keys = varying_keys(runs, seed_keys)
    return [*keys, *[k for k in (*facet, *hue) if k not in keys]]


def draw(
    sweep: Sweep,
    *,
    facet: Sequence[str] = (),
    hue: Sequence[str] = (),
    max_lines: int = MAX_LINES,
    statuses: tuple[str, ...] = ("completed",),
    seed_keys: tuple[str, ...] = SEED_KEYS,
) -> dict[str, Figure]:
    """Every family the records hold, {file stem: figure}, from the runs of `statuses`."""
    runs = sweep.runs[sweep.runs["status"].isin(statuses)]
    if runs.empty:
        raise ValueError(f"no run of status {', '.join(statuses)} to draw")
    records = sweep.records[sweep.records["run_id"].isin(runs["run_id"])]
    experiment = catalog.experiment_of(runs)
    keys = _keys(runs, seed_keys, facet, hue)
    drawn: dict[str, Figure] = {}

    def grid(name, series, title, ylabel, chosen=runs, keys=keys, **kw) -> None:
        configs = chosen[keys].drop_duplicates()
        per_series = max(1, max_lines // max(1, len(series)))
        f_keys, h_keys = layout(configs, keys, facet, hue, per_series)
        drawn[name] = plot_grid(series, f_keys, h_keys, title, ylabel, **kw)

    for split in catalog.CURVE_SPLITS[experiment]:
        for metric in catalog.CURVE_METRICS:
            frame = bands(records, runs, split, metric, keys)
            if len(frame):
                grid(f"curves-{split}-{metric}", {"": frame}, f"{split} {metric}", metric)

    split = catalog.UNIT_SPLIT[experiment]
    for title, names in catalog.UNIT_METRICS.items():
        frame = bands(records, runs, split, names, keys, layer=None)
        if len(frame):
            grid(f"units-{split}-{names[0]}", {"": frame}, f"{split}: {title}", title)
        else:
            print(f"skipped units-{split}-{names[0]}: no {' or '.join(names)} rows")

    diagnosis = {
        name: per_layer_bands(records, runs, split, metric, keys)
        for name, metric in catalog.DIAGNOSIS_METRICS.items()
    }
    if any(len(frame) for frame in diagnosis.values()):
        configs = runs[keys].drop_duplicates()
        f_keys, h_keys = layout(configs, keys, facet, hue, max(1, max_lines // len(diagnosis)))
        drawn[f"diagnosis-{split}"] = plot_grid(
            diagnosis,
            ["layer", *f_keys],
            h_keys,
            f"{split}: units in clone blocks (cloned) and frozen on every probe row (frozen), "
            "per layer (probe.diagnose)",
            "fraction of the layer's units",
        )
    else:
        names = " or ".join(catalog.DIAGNOSIS_METRICS.values())
        print(f"skipped diagnosis-{split}: no {names} rows (probe.diagnose=true records them)")

    if experiment == "cloning":
        s, layer, metric = catalog.CLONING_SCORE
        score = bands(records, runs, s, metric, keys, layer)
        base = bands(records, runs, "base_train", "loss", keys)
        clone = bands(records, runs, "clone_train", "loss", keys)
        if len(score):
            grid("cloning-score", {"": score}, "cloning score (mean R² of the layers)", metric)
        else:
            print(f"skipped cloning-score: no {s}/{metric} rows")
        if len(base) and len(clone):
            grid(
                "cloning-base-vs-clone",
                {"clone": clone, "base": base},
                "training loss: base vs clone",
                "loss",
            )
        else:
            print("skipped cloning-base-vs-clone: no base_train or clone_train loss rows")

    if experiment == "bitflip":
        method, width = catalog.BITFLIP_METHOD, catalog.BITFLIP_WIDTH
        missing = [k for k in (method, width) if k not in runs.columns]
        if missing:
            raise ValueError(f"bit-flip runs without the config keys {missing} (analysis.catalog)")
        switch = runs[runs[method] == catalog.BITFLIP_SWITCH_METHOD]
        if len(switch):
            chosen = runs[runs[width] == switch[width].min()]
            at = switch[catalog.BITFLIP_SWITCH_STEP].iloc[0]
            if pd.isna(at):  # None: the switch at half the steps
                at = switch[catalog.BITFLIP_STEPS].iloc[0] // 2
            chosen_keys = _keys(chosen, seed_keys, facet, hue)
            frame = bands(records, chosen, "train", "loss", chosen_keys)
            grid(
                "bitflip-switch",
                {"": frame},
                f"bit flipping: SGD, then CBP ({width}={switch[width].min()})",
                "binned squared error",
                chosen=chosen,
                keys=chosen_keys,
                vline=(float(at), "switch to CBP"),
            )
        else:
            print(f"skipped bitflip-switch: no run with {method}={catalog.BITFLIP_SWITCH_METHOD}")
        if width in keys:
            values = select_values(records, "train", "", "loss", "final")
            table = summarize(values, runs, keys)
            others = [k for k in keys if k != width]
            configs = runs[others].drop_duplicates()
            f_keys, h_keys = layout(configs, others, facet, hue, max_lines)
            drawn["bitflip-width"] = plot_grid(
                {"": table},
                f_keys,
                h_keys,
                "bit flipping: width study",
                "final binned loss",
                x=width,
                errorbars=True,
                logx=True,
            )
        else:
            print(f"skipped bitflip-width: the runs have one {width}")

    return drawn


def save(drawn: Mapping[str, Figure], out: Path, suffix: Mapping[str, object]) -> list[Path]:
    """Each figure as `out/<stem>.png` and `.pdf`, stem = `options.output_name(name, suffix)`;
    returns the PNG paths."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, fig in drawn.items():
        stem = options.output_name(name, suffix)
        for ext in ("png", "pdf"):
            fig.savefig(out / f"{stem}.{ext}", dpi=120)
        written.append(out / f"{stem}.png")
        print(f"wrote {out / stem}.png, .pdf")
    return written


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The layout options (`--facet`, `--hue`, `--max-lines`) on `parser`."""
    parser.add_argument("--facet", help="comma-separated config keys: one axes per value")
    parser.add_argument("--hue", help="comma-separated config keys: one line per value")
    parser.add_argument("--max-lines", type=int, default=MAX_LINES, help="lines per axes at most")


def from_arguments(sweep: Sweep, args: argparse.Namespace, out: Path) -> list[Path]:
    """The figures `args` ask for, saved under `out` with names encoding the options."""
    drawn = draw(
        sweep,
        facet=config_keys(sweep.runs, args.facet, "facet"),
        hue=config_keys(sweep.runs, args.hue, "hue"),
        max_lines=args.max_lines,
        statuses=options.statuses(args.status),
        seed_keys=options.seed_keys(args.seed_keys),
    )
    return save(drawn, out, suffix(args))


def suffix(args: argparse.Namespace) -> dict[str, object]:
    """The options that change what the figures (and the report) show, for output_name."""
    return {
        "where": options.parse_where(args.where),
        "facet": args.facet,
        "hue": args.hue,
        "status": None if args.status == "completed" else args.status,
        "max-lines": None if args.max_lines == MAX_LINES else args.max_lines,
        "seed-keys": None if args.seed_keys == ",".join(SEED_KEYS) else args.seed_keys,
    }


def main(argv: list[str] | None = None) -> list[Path]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    options.add_arguments(parser)
    add_arguments(parser)
    parser.add_argument("--out", type=Path, help="output folder (default SWEEP/analysis/figures)")
    args = parser.parse_args(argv)
    sweep = options.load(args)
    try:
        return from_arguments(sweep, args, args.out or args.sweep_dir / OUTPUT_DIR / "figures")
    except ValueError as err:
        raise SystemExit(str(err)) from err


if __name__ == "__main__":
    main()
