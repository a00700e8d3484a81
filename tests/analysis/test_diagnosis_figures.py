"""The `diagnosis-<split>` figure (the probe's `diagnose` rows per layer over steps) and its place
in the report, on records written by hand."""

import re

import numpy as np
import pytest
from matplotlib.collections import PolyCollection

from analysis.figures import draw, per_layer_bands
from analysis.report import main
from analysis.runs import load_sweep
from tests.analysis.records_by_hand import write_run

T975_1 = 12.706205  # t_{0.975, 1} (tables)
BAND = re.compile(r"^(cloned|frozen): (.+): mean ± 95% t-interval across seeds, n=2$")
STEPS = (0, 100, 200)


def _cloned(arch, layer, step, seed):
    """cloned_fraction: mlp's hidden1 0.5 from step 100, everything else 0; seeds differ by 0.1."""
    planted = arch == "mlp" and layer == "hidden1" and step > 0
    return 0.5 * planted + 0.1 * (seed - 1)


def _sweep(tmp_path, diagnosis=True):
    for arch in ("mlp", "cnn"):
        for seed in (1, 2):
            rows = []
            for step in STEPS:
                rows.append((step, "train", "", "loss", 1.0 / (step + 1)))
                rows.append((step, "train", "hidden1", "effective_rank", 3.0))
                if not diagnosis:
                    continue
                for layer in ("hidden1", "hidden2"):
                    rows.append(
                        (step, "train", layer, "cloned_fraction", _cloned(arch, layer, step, seed))
                    )
                    rows.append((step, "train", layer, "clone_blocks", 1.0))
                rows.append((step, "train", "hidden1", "frozen_fraction_all_rows", step / 1000))
                rows.append((step, "val", "hidden1", "cloned_fraction", 9.0))  # another split
            config = {"model": {"arch": arch}, "seed": seed}
            write_run(tmp_path / "runs" / f"{arch}-{seed}", config, rows, experiment="continual")
    return tmp_path


def test_per_layer_bands_are_t_intervals_per_layer_and_configuration(tmp_path):
    sweep = load_sweep(_sweep(tmp_path))
    frame = per_layer_bands(sweep.records, sweep.runs, "train", "cloned_fraction", ["model.arch"])
    assert sorted(frame["layer"].unique()) == ["hidden1", "hidden2"]
    row = frame.set_index(["layer", "model.arch", "step"]).loc[("hidden1", "mlp", 100)]
    # seeds 1, 2: 0.5 and 0.6 -> mean 0.55, s = 0.1 / sqrt(2), half-width t * s / sqrt(2)
    assert row["n"] == 2 and row["mean"] == pytest.approx(0.55)
    assert row["ci_high"] - row["mean"] == pytest.approx(T975_1 * 0.05)
    empty = per_layer_bands(sweep.records, sweep.runs, "train", "no_such_metric", ["model.arch"])
    assert empty.empty and "layer" in empty.columns


def _band_at(band: PolyCollection, step: float) -> tuple[float, float]:
    vertices = band.get_paths()[0].vertices
    at = vertices[np.isclose(vertices[:, 0], step), 1]
    return float(at.min()), float(at.max())


def test_the_figure_has_one_axes_per_layer_with_cloned_and_frozen_bands(tmp_path):
    fig = draw(load_sweep(_sweep(tmp_path)))["diagnosis-train"]
    axes = {ax.get_title().split(" (")[0]: ax for ax in fig.axes if ax.get_visible()}
    assert set(axes) == {"layer=hidden1", "layer=hidden2"}
    for title, ax in axes.items():
        layer = title.split("=")[1]
        series = {}
        for line, band in zip(ax.lines, ax.collections):
            label = BAND.match(band.get_label())
            assert label and band.get_label() == line.get_label()
            name, arch = label.group(1), label.group(2).split("=")[1]
            series[name, arch] = line
            np.testing.assert_allclose(line.get_xdata(), STEPS)
            expected = (
                [_cloned(arch, layer, s, 1) + 0.05 for s in STEPS]
                if name == "cloned"
                else [s / 1000 for s in STEPS]
            )
            np.testing.assert_allclose(line.get_ydata(), expected)
            assert line.get_linestyle() == {"cloned": "-", "frozen": "--"}[name]
            if name == "cloned":
                low, high = _band_at(band, 200)
                mean = expected[-1]
                assert (low, high) == pytest.approx((mean - T975_1 * 0.05, mean + T975_1 * 0.05))
        frozen = {("frozen", "cnn"), ("frozen", "mlp")}
        assert set(series) == {("cloned", "cnn"), ("cloned", "mlp")} | (
            frozen if layer == "hidden1" else set()
        )
    assert "95% t-interval" in fig._suptitle.get_text()


def test_without_the_rows_the_figure_is_skipped_and_the_report_says_nothing(tmp_path, capsys):
    sweep = _sweep(tmp_path / "plain", diagnosis=False)
    assert "diagnosis-train" not in draw(load_sweep(sweep))
    assert "skipped diagnosis-train: no cloned_fraction or frozen_fraction_all_rows" in (
        capsys.readouterr().out
    )
    assert "diagnosis-train" not in main([str(sweep)]).read_text()


def test_the_report_embeds_the_figure_when_the_rows_are_present(tmp_path):
    report = main([str(_sweep(tmp_path))])
    links = dict(re.findall(r"!\[([^]]*)\]\(([^)]+)\)", report.read_text()))
    assert links["diagnosis-train"] == "figures/diagnosis-train.png"
    assert (report.parent / links["diagnosis-train"]).read_bytes()[:4] == b"\x89PNG"
