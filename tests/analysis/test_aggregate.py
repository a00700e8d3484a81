import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analysis import figures, options
from analysis.aggregate import main, select_values, summarize, varying_keys
from analysis.runs import load_sweep
from core.run import schema
from tests.analysis.records_by_hand import write_missing_value_runs, write_run

REPO = Path(__file__).resolve().parents[2]
T975 = {4: 2.776445, 2: 4.302653}  # t_{0.975, df} from tables


def hand_interval(values):
    n = len(values)
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = T975[n - 1] * sd / math.sqrt(n)
    return mean, sd, mean - half, mean + half


def test_grouping_excludes_the_seed(cloning_sweep):
    runs = load_sweep(cloning_sweep).runs
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
    header = "| model.arch | n | mean | std | ci_low | ci_high | n_failed | n_diverged | note |"
    assert header in md


def test_at_best_and_at_step_pick_the_right_rows(cloning_sweep):
    records = load_sweep(cloning_sweep).records
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
    sweep = load_sweep(cloning_sweep)
    records, runs = sweep.records, sweep.runs
    values = select_values(records, "clone_train", "", "loss")
    a = summarize(values, runs, ["model.arch"], "bootstrap", np.random.default_rng(3))
    b = summarize(values, runs, ["model.arch"], "bootstrap", np.random.default_rng(3))
    pd.testing.assert_frame_equal(a, b)
    with pytest.raises(ValueError, match="Generator"):
        summarize(values, runs, ["model.arch"], "bootstrap", None)


def _set_status(run_dir, status, reason=""):
    schema.status_path(run_dir).write_text(json.dumps({"status": status, "reason": reason}))


def test_runs_that_did_not_complete_are_left_out_and_counted(cloning_sweep):
    _set_status(cloning_sweep / "runs" / "cnn_3", "diverged", "loss above the ceiling")
    _set_status(cloning_sweep / "runs" / "mlp_5", "failed", "CUDA error")
    _set_status(cloning_sweep / "runs" / "mlp_4", "running")
    table = main([str(cloning_sweep)]).set_index("model.arch")
    # cnn: 10, 20 (40 diverged); mlp: 1, 2, 3 (4 running, 5 failed)
    assert table.loc["cnn", ["n", "mean", "n_failed", "n_diverged"]].tolist() == [2, 15.0, 0, 1]
    assert table.loc["mlp", ["n", "mean", "n_failed", "n_diverged"]].tolist() == [3, 2.0, 1, 0]
    assert table.loc["mlp", "note"] == "1 running left out"
    both = main([str(cloning_sweep), "--status", "completed,diverged"]).set_index("model.arch")
    assert both.loc["cnn", ["n", "mean", "n_diverged"]].tolist() == [3, 70 / 3, 1]


def test_a_configuration_whose_runs_all_failed_has_a_row_with_n_0(cloning_sweep):
    for seed in (1, 2, 3):
        _set_status(cloning_sweep / "runs" / f"cnn_{seed}", "failed", "out of memory")
    table = main([str(cloning_sweep)]).set_index("model.arch")
    assert table.loc["cnn", ["n", "n_failed", "n_diverged"]].tolist() == [0, 3, 0]
    assert math.isnan(table.loc["cnn", "mean"]) and table.loc["cnn", "note"] == "no values"


def test_where_keeps_the_matching_runs_comparing_by_type(cloning_sweep):
    table = main([str(cloning_sweep), "--where", "model.arch=mlp"])  # model.arch varies no more
    assert "model.arch" not in table and table["n"].tolist() == [5]
    # seed is an integer key: "2.0" matches 2, lists of values are alternatives
    table = main([str(cloning_sweep), "--where", "seed=2.0,3", "--by", "model.arch"])
    assert table["n"].tolist() == [2, 2] and table["mean"].tolist() == [30.0, 2.5]
    # a number written another way matches the float it parses to (0.01)
    table = main([str(cloning_sweep), "--where", "optimizer.lr=1e-2", "--where", "seed=1"])
    assert table["mean"].tolist() == [10.0, 1.0]
    table = main([str(cloning_sweep), "--where", "clone_dropout=none", "--where", "seed=5"])
    assert table[["n", "mean"]].values.tolist() == [[1, 5.0]]  # mlp_5 alone


def test_where_errors_name_the_valid_keys_and_values(cloning_sweep):
    with pytest.raises(SystemExit, match="--where model.archh: no such key; valid: .*model.arch"):
        main([str(cloning_sweep), "--where", "model.archh=mlp"])
    with pytest.raises(SystemExit, match="matches no run; model.arch takes: cnn, mlp"):
        main([str(cloning_sweep), "--where", "model.arch=vit"])
    with pytest.raises(SystemExit, match="write KEY=VALUE"):
        main([str(cloning_sweep), "--where", "model.arch"])
    with pytest.raises(SystemExit, match="valid: running, completed, diverged, failed"):
        main([str(cloning_sweep), "--status", "done"])


def test_outputs_of_different_options_do_not_overwrite_each_other(cloning_sweep):
    main([str(cloning_sweep)])
    main([str(cloning_sweep), "--where", "model.arch=mlp"])
    main([str(cloning_sweep), "--where", "model.arch=cnn", "--facet", "model.arch"])
    names = sorted(p.name for p in (cloning_sweep / "analysis").glob("*.csv"))
    assert names == [
        "clone_train-loss-final.csv",
        "clone_train-loss-final__facet-model.arch__where-model.arch=cnn.csv",
        "clone_train-loss-final__where-model.arch=mlp.csv",
    ]
    only_mlp = pd.read_csv(cloning_sweep / "analysis" / names[2])
    assert only_mlp[["n", "mean"]].values.tolist() == [[5, 3.0]]


def test_facet_writes_one_markdown_table_per_value(cloning_sweep):
    main([str(cloning_sweep), "--facet", "model.arch", "--by", "seed"])
    md = cloning_sweep / "analysis" / "clone_train-loss-final__by-seed__facet-model.arch.md"
    text = md.read_text()
    assert text.index("#### model.arch=cnn") < text.index("#### model.arch=mlp")
    cnn = text[text.index("#### model.arch=cnn") : text.index("#### model.arch=mlp")]
    assert "| seed | n | mean |" in cnn and "| 3 | 1 | 40 |" in cnn and "| 4 |" not in cnn


def test_a_damaged_chunk_is_named_and_the_table_printed(cloning_sweep, capsys):
    chunk = schema.chunk_path(cloning_sweep / "runs" / "cnn_1", 1)  # holds its step-20 rows
    chunk.write_bytes(chunk.read_bytes()[:100])
    excluded = schema.chunk_path(cloning_sweep / "runs" / "mlp_5", 0)
    _set_status(cloning_sweep / "runs" / "mlp_5", "failed")
    excluded.write_bytes(b"")  # a run the table leaves out: must not crash it either
    table = main([str(cloning_sweep)]).set_index("model.arch")
    out = capsys.readouterr()
    assert f"{chunk}: ArrowInvalid" in out.err and f"{excluded}: ArrowInvalid" in out.err
    assert "model.arch" in out.out and "cnn" in out.out
    # cnn_1 lost its last chunk: its final loss is the step-10 value 10 + 90 = 100
    assert table.loc["cnn", "mean"] == pytest.approx((100 + 20 + 40) / 3)
    assert table.loc["mlp", ["n", "mean", "n_failed"]].tolist() == [4, 2.5, 1]


def test_output_name_encodes_the_options_sorted_and_stays_short():
    assert options.output_name("train-loss-final", {}) == "train-loss-final"
    name = options.output_name(
        "val-acc-final",
        {
            "where": {"model.norm": ("batch",), "model.arch": ("mlp", "cnn")},
            "by": None,
            "ci": "bootstrap0",
        },
    )
    assert name == "val-acc-final__ci-bootstrap0__where-model.arch=mlp+cnn+model.norm=batch"
    slashed = options.output_name("train-ensemble/loss", {"facet": "a/b c"})
    assert slashed == "train-ensemble_loss__facet-a_b_c"
    many = {"where": {f"key{i}": ("v",) for i in range(40)}}
    long = options.output_name("x", many)
    other = options.output_name("x", {"where": {f"key{i}": ("w",) for i in range(40)}})
    assert len(long) == options.MAX_NAME and long != other


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


@pytest.mark.parametrize("cli, option", [(main, "--by"), (figures.main, "--facet")])
def test_cli_errors_say_what_to_do(tmp_path, cloning_sweep, cli, option):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit, match="no run records under .*make sweep-cloning"):
        cli([str(tmp_path / "empty")])
    with pytest.raises(SystemExit, match=f"unknown {option} keys.*valid: .*model.arch"):
        cli([str(cloning_sweep), option, "model.archh"])


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


def test_records_without_an_experiment_need_experiment_for_the_defaults(tmp_path):
    for seed in (1, 2):
        write_run(
            tmp_path / f"r{seed}",
            {"seed": seed},
            [(5, "clone_train", "", "loss", float(seed))],
            experiment=None,
        )
    with pytest.raises(SystemExit, match='no "experiment" in config.json.*--experiment'):
        main([str(tmp_path)])
    table = main([str(tmp_path), "--experiment", "cloning"])  # its default: clone_train loss
    assert table[["n", "mean"]].values.tolist() == [[2, 1.5]]


def test_a_missing_value_is_a_configuration_of_its_own(tmp_path):
    write_missing_value_runs(tmp_path)
    table = main([str(tmp_path)])
    assert table["clone_dropout"].tolist()[0] == 0.1 and math.isnan(table["clone_dropout"][1])
    # the final loss 5 + seed + dropout, over seeds 1 and 2
    assert table["mean"].tolist() == pytest.approx([6.6, 6.5]) and table["n"].tolist() == [2, 2]
