import numpy as np
import pytest
from matplotlib.figure import Figure

from analysis.figures import bands, figures, main, plot_panels
from analysis.runs import load_sweep
from tests.analysis.records_by_hand import write_run


def test_bands_are_per_configuration_t_intervals_over_steps(cloning_sweep):
    records, runs = load_sweep(cloning_sweep)
    frame = bands(records, runs, "clone_train", "loss", ["model.arch"]).set_index(["label", "step"])
    cnn = frame.loc[("model.arch=cnn", 20)]
    # cnn finals 10, 20, 40: mean 70/3, s = sqrt(700/3), t_{0.975,2} = 4.302653
    half = 4.302653 * np.sqrt(700 / 3) / np.sqrt(3)
    assert cnn["n"] == 3 and cnn["mean"] == pytest.approx(70 / 3)
    assert cnn["ci_high"] == pytest.approx(70 / 3 + half, abs=1e-5)


def test_layer_none_averages_the_layers_of_each_run_first(cloning_sweep):
    records, runs = load_sweep(cloning_sweep)
    frame = bands(
        records,
        runs,
        "clone_train",
        ("duplicate_fraction", "effective_rank"),
        ["model.arch"],
        layer=None,
    )
    # effective_rank: hidden1 5 + step, hidden2 3 + step -> mean 4 + step, the same for all seeds
    row = frame.set_index(["label", "step"]).loc[("model.arch=mlp", 10)]
    assert (row["mean"], row["ci_low"], row["ci_high"]) == (14.0, 14.0, 14.0)


def test_plot_functions_return_a_figure_with_one_line_per_configuration(cloning_sweep):
    records, runs = load_sweep(cloning_sweep)
    fig = plot_panels({"loss": bands(records, runs, "clone_train", "loss", ["model.arch"])}, "t")
    assert isinstance(fig, Figure)
    assert [ln.get_label() for ln in fig.axes[0].lines] == ["model.arch=cnn", "model.arch=mlp"]


def test_cloning_sweep_gives_png_and_pdf_and_skips_absent_families(cloning_sweep, tmp_path, capsys):
    written = figures(cloning_sweep, tmp_path / "figs")
    names = {p.stem for p in written}
    assert {
        "curves-clone_train-loss",
        "curves-base_train-loss",
        "units-clone_train",
        "cloning",
    } <= names
    assert "curves-clone_test-loss" not in names  # no clone_test rows in the fixture
    for name in names:
        assert (tmp_path / "figs" / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
        assert (tmp_path / "figs" / f"{name}.pdf").read_bytes()[:4] == b"%PDF"


def test_bitflip_switch_and_width_figures(tmp_path):
    for method in ("sgd", "sgd_then_cbp"):
        for width in (5, 10):
            for seed in (0, 1):
                config = {
                    "method": method,
                    "width": width,
                    "seed": seed,
                    "lr": 0.01,
                    "flip_period": 10_000,
                    "switch_step": 2000,
                }
                rows = [
                    (s, "train", "", "loss", 1.0 + seed + width / s) for s in (1000, 2000, 3000)
                ]
                write_run(
                    tmp_path / "runs" / "t" / "members" / f"{method}-{width}-{seed}", config, rows
                )
    names = {p.stem for p in figures(tmp_path, tmp_path / "figs")}
    assert {"bitflip-switch", "bitflip-width", "curves-train-loss"} <= names


def test_figures_cli_error_says_what_to_do(tmp_path):
    with pytest.raises(SystemExit, match="make sweep-cloning"):
        main([str(tmp_path)])
