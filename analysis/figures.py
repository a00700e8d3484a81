"""The paper's figure families from a sweep's run records, as PNG and PDF.

    python -m analysis.figures SWEEP_DIR [--out DIR]     # default DIR: SWEEP_DIR/analysis/figures

Selection and aggregation (`bands`, `by_model`) are pure functions of the compacted records;
the plot functions only draw and return the figure. A family whose metrics the records do not
hold is skipped with a message. Metric names come from `analysis.catalog`.

Families: `curves-<split>-<metric>` (loss/accuracy, mean and 95% t-band across seeds per
configuration); `units-<split>` (rank, duplicate and dead fractions over training, averaged over
layers, per model and norm); `cloning` (cloning score and base-vs-clone loss); `bitflip-switch`
(SGD -> CBP); `bitflip-width` (final loss against learner width, per method).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from analysis import catalog  # noqa: E402
from analysis.aggregate import select_values, summarize, varying_keys  # noqa: E402
from analysis.intervals import t_interval  # noqa: E402
from analysis.runs import OUTPUT_DIR, load_sweep  # noqa: E402


def _label(runs: pd.DataFrame, keys: list[str]) -> pd.Series:
    """'k=v, k=v' per run_id over `keys` ('all runs' without keys)."""
    if not keys:
        return pd.Series("all runs", index=runs["run_id"])
    text = (
        runs[keys]
        .astype(object)
        .where(runs[keys].notna(), None)
        .apply(lambda r: ", ".join(f"{k}={v}" for k, v in r.items()), axis=1)
    )
    return pd.Series(text.to_numpy(), index=runs["run_id"])


def bands(
    records: pd.DataFrame,
    runs: pd.DataFrame,
    split: str,
    metric: str | tuple[str, ...],
    keys: list[str],
    layer: str | None = "",
) -> pd.DataFrame:
    """Per configuration (`keys`) and step: n, mean, ci_low, ci_high across seeds.

    `layer=None` averages the metric over every layer of a run first; a tuple of metric names
    uses the first one the records hold. Columns: label, step, n, mean, ci_low, ci_high.
    """
    names = (metric,) if isinstance(metric, str) else metric
    rows = records[(records["split"] == split) & records["metric"].isin(names)]
    if rows.empty:
        return pd.DataFrame(columns=["label", "step", "n", "mean", "ci_low", "ci_high"])
    rows = rows[rows["metric"] == next(m for m in names if (rows["metric"] == m).any())]
    rows = rows[rows["layer"] != ""] if layer is None else rows[rows["layer"] == layer]
    per_run = rows.groupby(["run_id", "step"])["value"].mean().reset_index()
    per_run["label"] = per_run["run_id"].map(_label(runs, keys))
    out = []
    for (label, step), group in per_run.groupby(["label", "step"], sort=True):
        est = t_interval(group["value"].to_numpy())
        out.append(
            {
                "label": label,
                "step": step,
                "n": est.n,
                "mean": est.mean,
                "ci_low": est.low,
                "ci_high": est.high,
            }
        )
    return pd.DataFrame(out)


def draw_bands(ax: plt.Axes, frame: pd.DataFrame, prefix: str = "", **style) -> None:
    """One line per label (mean) with its shaded 95% band (absent where n = 1)."""
    for label, group in frame.groupby("label", sort=True):
        line = ax.plot(group["step"], group["mean"], label=f"{prefix}{label}", **style)[0]
        ax.fill_between(
            group["step"],
            group["ci_low"],
            group["ci_high"],
            color=line.get_color(),
            alpha=0.2,
            linewidth=0,
        )


def plot_panels(panels: dict[str, pd.DataFrame], title: str, xlabel: str = "step") -> Figure:
    """One axis per panel (title -> bands frame), a shared legend."""
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.6), squeeze=False)
    for ax, (name, frame) in zip(axes[0], panels.items()):
        draw_bands(ax, frame)
        ax.set_title(name)
        ax.set_xlabel(xlabel)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(3, max(1, len(labels))), fontsize=7)
    fig.suptitle(f"{title} (mean, 95% t-interval across seeds)")
    fig.tight_layout(rect=(0, 0.08 + 0.03 * (len(labels) // 3), 1, 1))
    return fig


def plot_base_vs_clone(base: pd.DataFrame, clone: pd.DataFrame, score: pd.DataFrame) -> Figure:
    """Left: base (dashed) and clone (solid) loss; right: the cloning score."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    draw_bands(left, clone, prefix="clone: ")
    draw_bands(left, base, prefix="base: ", linestyle="--")
    left.set(title="training loss: base vs clone", xlabel="step", ylabel="loss")
    left.legend(fontsize=6)
    draw_bands(right, score)
    right.set(title="cloning score (mean R²)", xlabel="step", ylabel="r2_mean")
    right.legend(fontsize=6)
    fig.tight_layout()
    return fig


def plot_switch(frame: pd.DataFrame, switch_step: float | None) -> Figure:
    """Binned loss per method; a vertical line at the SGD -> CBP switch."""
    fig, ax = plt.subplots(figsize=(7, 4))
    draw_bands(ax, frame)
    if switch_step is not None:
        ax.axvline(switch_step, color="k", linestyle=":", label="switch to CBP")
    ax.set(title="bit flipping: SGD, then CBP", xlabel="examples", ylabel="binned squared error")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def plot_width(table: pd.DataFrame, x: str, hue: str, ylabel: str) -> Figure:
    """Mean with 95% error bars against `x`, one line per `hue` (a `summarize` table)."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, group in table.groupby(hue, sort=True):
        group = group.assign(_x=group[x].astype(float)).sort_values("_x")
        err = np.vstack([group["mean"] - group["ci_low"], group["ci_high"] - group["mean"]])
        ax.errorbar(
            group["_x"],
            group["mean"],
            yerr=np.nan_to_num(err),
            marker="o",
            capsize=3,
            label=f"{hue}={name}",
        )
    ax.set(xscale="log", xlabel=x, ylabel=ylabel, title="bit flipping: width study")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def figures(sweep_dir: Path, out: Path) -> list[Path]:
    """Draw every family the records hold into `out`; returns the PNG paths written."""
    records, runs = load_sweep(sweep_dir)
    runs = runs[runs["status"] == "completed"]
    records = records[records["run_id"].isin(runs["run_id"])]
    experiment = catalog.experiment_of(runs)
    keys = varying_keys(runs)
    drawn: dict[str, Figure] = {}

    for split in catalog.CURVE_SPLITS[experiment]:
        for metric in catalog.CURVE_METRICS:
            frame = bands(records, runs, split, metric, keys)
            if len(frame):
                drawn[f"curves-{split}-{metric}"] = plot_panels({f"{split} {metric}": frame}, split)

    split = catalog.UNIT_SPLIT[experiment]
    model_keys = [k for k in catalog.MODEL_KEYS if k in runs.columns] or keys
    panels = {
        name: bands(records, runs, split, names, model_keys, layer=None)
        for name, names in catalog.UNIT_METRICS.items()
    }
    panels = {k: v for k, v in panels.items() if len(v)}
    if panels:
        drawn[f"units-{split}"] = plot_panels(panels, f"{split}: per model and norm")
    else:
        print(
            f"skipped units-{split}: no probe metrics {list(catalog.UNIT_METRICS)} in the records"
        )

    if experiment == "cloning":
        s, layer, metric = catalog.CLONING_SCORE
        score = bands(records, runs, s, metric, keys, layer)
        base = bands(records, runs, "base_train", "loss", keys)
        clone = bands(records, runs, "clone_train", "loss", keys)
        if len(score) and len(base) and len(clone):
            drawn["cloning"] = plot_base_vs_clone(base, clone, score)
        else:
            print("skipped cloning: no r2_mean or base/clone loss rows")

    if experiment == "bitflip":
        switch = runs[runs["method"] == catalog.BITFLIP_SWITCH_METHOD]
        if len(switch):
            chosen = runs[runs["width"] == switch["width"].min()]
            frame = bands(
                records[records["run_id"].isin(chosen["run_id"])],
                chosen,
                "train",
                "loss",
                ["method"],
            )
            drawn["bitflip-switch"] = plot_switch(frame, float(switch["switch_step"].iloc[0]))
        else:
            print(f"skipped bitflip-switch: no run with method={catalog.BITFLIP_SWITCH_METHOD}")
        if runs["width"].nunique() > 1:
            values = select_values(records, "train", "", "loss", "final")
            table = summarize(values, runs, ["method", "width"])
            drawn["bitflip-width"] = plot_width(table, "width", "method", "final binned loss")
        else:
            print("skipped bitflip-width: the runs have one width")

    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, fig in drawn.items():
        for ext in ("png", "pdf"):
            fig.savefig(out / f"{name}.{ext}", dpi=150)
        plt.close(fig)
        written.append(out / f"{name}.png")
        print(f"wrote {out / name}.png, .pdf")
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep_dir", type=Path)
    parser.add_argument("--out", type=Path, help="output folder (default SWEEP/analysis/figures)")
    args = parser.parse_args(argv)
    try:
        figures(args.sweep_dir, args.out or args.sweep_dir / OUTPUT_DIR / "figures")
    except (FileNotFoundError, ValueError) as err:
        raise SystemExit(str(err)) from err


if __name__ == "__main__":
    main()
