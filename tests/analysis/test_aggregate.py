import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analysis.aggregate import main, select_values, summarize, varying_keys
from analysis.runs import load_sweep
from tests.analysis.records_by_hand import write_run

REPO = Path(__file__).resolve().parents[2]
T975 = {4: 2.776445, 2: 4.302653}  # t_{0.975, df} from tables


def hand_interval(values):
    n = len(values)
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = T975[n - 1] * sd / math.sqrt(n)
    return mean, sd, mean - half, mean + half


def test_grouping_excludes_the_seed(cloning_sweep):
    _, runs = load_sweep(cloning_sweep)
    assert varying_keys(runs) == ["model.arch"]


def test_the_table_interval_equals_the_hand_computed_t_interval(cloning_sweep):
    table = main([str(cloning_sweep)])  # default: final clone_train loss, by model.arch
    for arch, finals in (("cnn", [10.0, 20.0, 40.0]), ("mlp", [1.0, 2.0, 3.0, 4.0, 5.0])):
        row = table.set_index("model.arch").loc[arch]
        mean, sd, low, high = hand_interval(finals)
        assert row["n"] == len(finals)
        assert (row["mean"], row["std"]) == pytest.approx((mean, sd), abs=1e-9)
        assert (row["ci_low"], row["ci_high"]) == pytest.approx((low, high), abs=1e-5)
    csv = pd.read_csv(cloning_sweep / "analysis" / "clone_train-loss-final.csv")
    pd.testing.assert_frame_equal(
        csv.drop(columns="note"), table.drop(columns="note"), check_dtype=False
    )
    md = (cloning_sweep / "analysis" / "clone_train-loss-final.md").read_text()
    assert "| model.arch | n | mean | std | ci_low | ci_high | note |" in md


def test_at_best_and_at_step_pick_the_right_rows(cloning_sweep):
    records, _ = load_sweep(cloning_sweep)
    # mlp_2 loss: step 0 -> 102, 10 -> 92, 20 -> 2
    assert select_values(records, "clone_train", "", "loss", "10")["mlp_2"] == 92.0
    assert select_values(records, "clone_train", "", "loss", "15")["mlp_2"] == 92.0
    assert select_values(records, "clone_train", "", "loss", "best")["mlp_2"] == 2.0
    assert select_values(records, "clone_train", "", "r2_mean", "best")["mlp_2"] == 1.0
    with pytest.raises(ValueError, match="the records hold"):
        select_values(records, "clone_train", "", "nope")


def test_a_single_seed_group_has_a_nan_interval_and_a_note(tmp_path):
    write_run(tmp_path / "a", {"seed": 0, "lr": 0.1}, [(1, "train", "", "loss", 2.0)])
    write_run(tmp_path / "b", {"seed": 0, "lr": 0.2}, [(1, "train", "", "loss", 3.0)])
    table = main([str(tmp_path), "--split", "train", "--metric", "loss"])
    assert list(table["n"]) == [1, 1] and table["ci_low"].isna().all()
    assert table["note"].str.contains("n=1").all()


def test_bootstrap_option_is_reproducible(cloning_sweep):
    records, runs = load_sweep(cloning_sweep)
    values = select_values(records, "clone_train", "", "loss")
    a = summarize(values, runs, ["model.arch"], "bootstrap", np.random.default_rng(3))
    b = summarize(values, runs, ["model.arch"], "bootstrap", np.random.default_rng(3))
    pd.testing.assert_frame_equal(a, b)
    with pytest.raises(ValueError, match="Generator"):
        summarize(values, runs, ["model.arch"], "bootstrap", None)


def test_runs_that_did_not_complete_are_left_out_by_default(cloning_sweep):
    (cloning_sweep / "runs" / "cnn_3" / "status.json").write_text('{"status": "diverged"}')
    table = main([str(cloning_sweep)]).set_index("model.arch")
    assert table.loc["cnn", "n"] == 2 and table.loc["cnn", "mean"] == 15.0


@pytest.mark.parametrize("how", [["analysis/aggregate.py"], ["-m", "analysis.aggregate"]])
def test_cli_runs_as_a_script_and_as_a_module(cloning_sweep, how):
    out = subprocess.run(
        [sys.executable, *how, str(cloning_sweep), "--by", "model.arch"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    mean, _, low, high = hand_interval([10.0, 20.0, 40.0])
    line = next(ln for ln in out.splitlines() if ln.split()[:1] == ["cnn"])
    assert line.split()[1:6] == ["3", f"{mean:.6g}", line.split()[3], f"{low:.6g}", f"{high:.6g}"]


def test_cli_errors_say_what_to_do(tmp_path, cloning_sweep):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit, match="no run records under .*make sweep-cloning"):
        main([str(tmp_path / "empty")])
    with pytest.raises(SystemExit, match="unknown --by keys.*valid: .*model.arch"):
        main([str(cloning_sweep), "--by", "model.archh"])


def test_numeric_keys_keep_their_type_and_order(tmp_path):
    for width in (10, 5, 100):
        for seed in (0, 1):
            write_run(
                tmp_path / f"w{width}s{seed}",
                {"seed": seed, "width": width},
                [(1, "train", "", "loss", float(width + seed))],
            )
    table = main([str(tmp_path), "--split", "train", "--metric", "loss"])
    assert list(table["width"]) == [5, 10, 100] and list(table["mean"]) == [5.5, 10.5, 100.5]
