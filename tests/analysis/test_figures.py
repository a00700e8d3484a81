import re

import numpy as np
import pandas as pd
import pytest
from matplotlib.collections import LineCollection, PolyCollection
from matplotlib.figure import Figure

from analysis.figures import bands, draw, layout, main, plot_grid
from analysis.runs import load_sweep
from tests.analysis.records_by_hand import write_missing_value_runs, write_run

T975_1 = 12.706205  # t_{0.975, 1} (tables)
T975_2 = 4.302653  # t_{0.975, 2}
BAND = re.compile(r"^(.+): mean ± 95% t-interval across seeds, n=(\d+)$")


def test_bands_are_per_configuration_t_intervals_over_steps(cloning_sweep):
    sweep = load_sweep(cloning_sweep)
    frame = bands(sweep.records, sweep.runs, "clone_train", "loss", ["model.arch"])
    assert list(frame.columns) == ["model.arch", "step", "n", "mean", "ci_low", "ci_high"]
    cnn = frame.set_index(["model.arch", "step"]).loc[("cnn", 20)]
    # cnn finals 10, 20, 40: mean 70/3, s = sqrt(700/3)
    half = T975_2 * np.sqrt(700 / 3) / np.sqrt(3)
    assert cnn["n"] == 3 and cnn["mean"] == pytest.approx(70 / 3)
    assert cnn["ci_high"] == pytest.approx(70 / 3 + half, abs=1e-5)


def test_layer_none_averages_the_layers_of_each_run_first(cloning_sweep):
    sweep = load_sweep(cloning_sweep)
    frame = bands(
        sweep.records,
        sweep.runs,
        "clone_train",
        ("duplicate_fraction", "effective_rank"),
        ["model.arch"],
        layer=None,
    )
    # effective_rank: hidden1 5 + step, hidden2 3 + step -> mean 4 + step, the same for all seeds
    row = frame.set_index(["model.arch", "step"]).loc[("mlp", 10)]
    assert (row["mean"], row["ci_low"], row["ci_high"]) == (14.0, 14.0, 14.0)


def _configs(**values: int) -> pd.DataFrame:
    """Every combination of keys k with values[k] values 0..values[k]-1."""
    index = pd.MultiIndex.from_product([range(v) for v in values.values()], names=list(values))
    return index.to_frame(index=False)


def test_layout_fills_the_hue_with_the_fewest_valued_keys_then_facets():
    configs = _configs(arch=3, norm=2, lr=5, rate=6)  # 180 configurations
    keys = ["arch", "norm", "lr", "rate"]
    # hue: norm (2), then arch (2 x 3 = 6); lr would make 30 > 8 lines: lr and rate facet
    assert layout(configs, keys) == (["lr", "rate"], ["arch", "norm"])
    assert layout(configs, keys, facet=["arch"]) == (["arch", "lr", "rate"], ["norm"])
    assert layout(configs, keys, hue=["lr"]) == (["arch", "norm", "rate"], ["lr"])
    assert layout(configs, keys, max_lines=2) == (["arch", "lr", "rate"], ["norm"])
    with pytest.raises(ValueError, match="--hue rate has 6 values, more than 5 lines"):
        layout(configs, keys, hue=["rate"], max_lines=5)
    with pytest.raises(ValueError, match="both --facet and --hue"):
        layout(configs, keys, facet=["lr"], hue=["lr"])


def _band_data(band: PolyCollection, step: float) -> tuple[float, float]:
    """The band's (low, high) at `step`, read from its polygon."""
    vertices = band.get_paths()[0].vertices
    at = vertices[np.isclose(vertices[:, 0], step), 1]
    return float(at.min()), float(at.max())


def _grid_sweep(tmp_path):
    """180 configurations (arch 3 x norm 2 x lr 5 x rate 6), 2 seeds: the loss at step s is
    base + s/10 + (seed - 1.5) * 2, base = 100 arch + 10 norm + lr index + rate/10, so per
    configuration the mean is base + s/10, s = sqrt(2), the half-width t_{0.975,1} * 1."""
    lrs, rates = (0.001, 0.003, 0.01, 0.03, 0.1), (0.0, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)
    for a, arch in enumerate(("mlp", "cnn", "vit")):
        for b, norm in enumerate(("batch", "layer")):
            for i, lr in enumerate(lrs):
                for j, rate in enumerate(rates):
                    base = 100 * a + 10 * b + i + j / 10
                    for seed in (1, 2):
                        config = {
                            "model": {"arch": arch, "norm": norm},
                            "optimizer": {"lr": lr},
                            "cbp": {"replacement_rate": rate},
                            "seed": seed,
                        }
                        rows = [
                            (s, "clone_train", "", "loss", base + s / 10 + (seed - 1.5) * 2)
                            for s in (0, 10)
                        ]
                        write_run(tmp_path / f"{arch}-{norm}-{i}-{j}-{seed}", config, rows)
    return tmp_path


def test_180_configurations_give_small_multiples_of_at_most_8_labelled_bands(tmp_path):
    sweep = load_sweep(_grid_sweep(tmp_path))
    fig = draw(sweep)["curves-clone_train-loss"]
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert len(axes) == 30  # facets lr x rate; hue arch x norm = 6 lines each
    seen = set()
    for ax in axes:
        assert 1 <= len(ax.lines) <= 8 and len(ax.collections) == len(ax.lines)
        facet = dict(kv.split("=") for kv in ax.get_title().split(" (")[0].split(", "))
        for line, band in zip(ax.lines, ax.collections):
            assert isinstance(band, PolyCollection)
            label = BAND.match(band.get_label())
            assert label and label.group(2) == "2" and band.get_label() == line.get_label()
            config = dict(kv.split("=") for kv in label.group(1).split(", ")) | facet
            seen.add(tuple(sorted(config.items())))
            # by value: mean base + s/10, band mean -+ 12.706205 (s = sqrt 2, n = 2)
            arch = ("mlp", "cnn", "vit").index(config["model.arch"])
            norm = ("batch", "layer").index(config["model.norm"])
            lr = (0.001, 0.003, 0.01, 0.03, 0.1).index(float(config["optimizer.lr"]))
            rate = (0.0, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1).index(float(config["cbp.replacement_rate"]))
            base = 100 * arch + 10 * norm + lr + rate / 10
            np.testing.assert_allclose(line.get_xdata(), [0, 10])
            np.testing.assert_allclose(line.get_ydata(), [base, base + 1])
            low, high = _band_data(band, 10)
            assert (low, high) == pytest.approx((base + 1 - T975_1, base + 1 + T975_1), abs=1e-5)
    assert len(seen) == 180  # every configuration drawn once
    assert "95% t-interval" in fig._suptitle.get_text()


def test_plot_grid_labels_single_seed_lines_and_error_bars_for_what_they_are():
    frame = pd.DataFrame(
        {
            "method": ["sgd", "sgd", "cbp", "cbp"],
            "width": [5, 10, 5, 10],
            "n": [1, 1, 3, 3],
            "mean": [1.0, 2.0, 3.0, 4.0],
            "ci_low": [np.nan, np.nan, 2.5, 3.5],  # asymmetric, as a bootstrap interval
            "ci_high": [np.nan, np.nan, 4.0, 4.5],
        }
    )
    fig = plot_grid({"": frame}, [], ["method"], "t", "y", x="width", errorbars=True)
    ax = fig.axes[0]
    bars = [c for c in ax.collections if isinstance(c, LineCollection)]
    assert [b.get_label() for b in bars] == [
        "method=cbp: mean ± 95% t-interval across seeds, n=3",
        "method=sgd: mean ± 95% t-interval across seeds, n=1",
    ]
    # the cbp bars run from ci_low to ci_high at each width
    segments = [tuple(map(tuple, s)) for s in bars[0].get_segments()]
    assert segments == [((5, 2.5), (5, 4.0)), ((10, 3.5), (10, 4.5))]
    fig = plot_grid({"": frame}, [], ["method"], "t", "y", x="width")
    labels = [ln.get_label() for ln in fig.axes[0].lines]
    assert labels[1] == "method=sgd: mean, n=1, no interval" and len(fig.axes[0].collections) == 1


def test_cloning_sweep_gives_png_and_pdf_and_skips_absent_families(cloning_sweep, tmp_path):
    written = main([str(cloning_sweep), "--out", str(tmp_path / "figs")])
    names = {p.stem for p in written}
    assert {
        "curves-clone_train-loss",
        "curves-base_train-loss",
        "units-clone_train-effective_rank",
        "units-clone_train-dead_fraction",
        "cloning-score",
        "cloning-base-vs-clone",
    } == names - {"curves-clone_train-acc"}
    for name in names:
        assert (tmp_path / "figs" / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
        assert (tmp_path / "figs" / f"{name}.pdf").read_bytes()[:4] == b"%PDF"
    again = main([str(cloning_sweep), "--out", str(tmp_path / "figs"), "--where", "seed=1,2"])
    assert {p.stem for p in again} == {f"{n}__where-seed=1+2" for n in names}


def test_base_vs_clone_draws_two_styles_per_configuration(cloning_sweep):
    fig = draw(load_sweep(cloning_sweep))["cloning-base-vs-clone"]
    ax = fig.axes[0]
    styles = {ln.get_label().split(":")[0]: ln.get_linestyle() for ln in ax.lines}
    assert styles == {"clone": "-", "base": "--"} and len(ax.lines) == 4  # 2 archs x 2


def _bitflip_sweep(tmp_path):
    for method in ("sgd", "sgd_then_cbp"):
        for width in (5, 10):
            for seed in (0, 1):
                config = {
                    "method": method,
                    "width": width,
                    "seed": seed,
                    "lr": 0.01,
                    "steps": 3000,
                    "flip_period": 10_000,
                    "switch_step": None,
                }
                rows = [
                    (s, "train", "", "loss", 1.0 + seed + width / s) for s in (1000, 2000, 3000)
                ]
                write_run(
                    tmp_path / "runs" / "t" / "members" / f"{method}-{width}-{seed}",
                    config,
                    rows,
                    experiment="bitflip",
                )
    return tmp_path


def test_bitflip_switch_and_width_figures(tmp_path):
    drawn = draw(load_sweep(_bitflip_sweep(tmp_path)))
    assert {"bitflip-switch", "bitflip-width", "curves-train-loss"} <= set(drawn)
    switch = drawn["bitflip-switch"].axes[0]
    assert switch.lines[-1].get_xdata()[0] == 1500  # switch_step None: half of 3000 steps
    width = drawn["bitflip-width"].axes[0]
    bars = [c for c in width.collections if isinstance(c, LineCollection)]
    # final loss 1 + seed + width/3000 over seeds 0, 1: mean 1.5 + width/3000, s = sqrt(1/2)
    low, high = bars[0].get_segments()[0][:, 1]
    assert (low, high) == pytest.approx((1.5 + 5 / 3000 - T975_1 / 2, 1.5 + 5 / 3000 + T975_1 / 2))
    assert bars[0].get_label() == "method=sgd: mean ± 95% t-interval across seeds, n=2"


def test_plot_grid_returns_a_figure(cloning_sweep):
    sweep = load_sweep(cloning_sweep)
    frame = bands(sweep.records, sweep.runs, "clone_train", "loss", ["model.arch"])
    fig = plot_grid({"": frame}, ["model.arch"], [], "t", "loss")
    assert isinstance(fig, Figure)
    assert [ax.get_title() for ax in fig.axes] == ["model.arch=cnn (n=3)", "model.arch=mlp (n=5)"]


def test_a_missing_value_is_a_line_of_its_own(tmp_path):
    write_missing_value_runs(tmp_path)
    ax = draw(load_sweep(tmp_path))["curves-clone_train-loss"].axes[0]
    lines = {ln.get_label().split(":")[0]: list(ln.get_ydata()) for ln in ax.lines}
    assert lines == {"clone_dropout=0.1": [1.6, 6.6], "clone_dropout=None": [1.5, 6.5]}
