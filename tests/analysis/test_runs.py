import shutil

import pandas as pd
import pytest

from analysis.runs import find_runs, flatten, is_seed_key, load_sweep
from tests.analysis.records_by_hand import FINAL, cloning_config, cloning_rows, write_run


def test_flatten_joins_nested_keys_with_dots_and_lists_as_json():
    flat = flatten({"model": {"arch": "mlp", "hidden_sizes": [16, 16]}, "seed": 3})
    assert flat == {"model.arch": "mlp", "model.hidden_sizes": "[16, 16]", "seed": 3}


def test_seed_keys_match_exactly_or_as_a_dotted_suffix():
    assert is_seed_key("seed") and is_seed_key("data.seed")
    assert not is_seed_key("seeds") and not is_seed_key("reseed")
    assert is_seed_key("trial", seed_keys=("trial",))


def test_compaction_round_trips_every_row_and_the_config(cloning_sweep):
    records, runs = load_sweep(cloning_sweep)
    assert len(runs) == len(FINAL) and len(records) == len(FINAL) * len(cloning_rows(0.0))
    row = runs.set_index("run_id").loc["cnn_3"]
    assert (row["model.arch"], row["seed"], row["status"]) == ("cnn", 3, "completed")
    assert row["model.hidden_sizes"] == "[16, 16]"
    final = records[(records.run_id == "cnn_3") & (records.step == 20)]
    assert (
        final.set_index(["split", "layer", "metric"]).loc[("clone_train", "", "loss"), "value"]
        == 40.0
    )
    written = pd.read_parquet(cloning_sweep / "analysis" / "records.parquet")
    pd.testing.assert_frame_equal(written, records)


def test_the_dataset_is_rebuilt_when_a_record_changes(cloning_sweep):
    load_sweep(cloning_sweep)
    write_run(cloning_sweep / "runs" / "mlp_6", cloning_config("mlp", 6), cloning_rows(6.0))
    records, runs = load_sweep(cloning_sweep)
    assert "mlp_6" in set(runs.run_id) and (records.run_id == "mlp_6").sum() == 21


def test_a_copied_run_is_deduplicated(cloning_sweep, capsys):
    shutil.copytree(cloning_sweep / "runs" / "mlp_1", cloning_sweep / "copy" / "mlp_1")
    records, runs = load_sweep(cloning_sweep)
    assert (runs.run_id == "mlp_1").sum() == 1
    assert (records.run_id == "mlp_1").sum() == len(cloning_rows(0.0))
    assert not records.duplicated(["run_id", "step", "split", "layer", "metric"]).any()
    assert f"dropped {len(cloning_rows(0.0))} duplicate rows" in capsys.readouterr().out


def test_an_ensemble_container_is_skipped_for_its_members(tmp_path):
    trial = tmp_path / "runs" / "t0"
    write_run(trial, {"seed": [1, 2], "width": 5}, [(1000, "train", "ensemble", "loss_mean", 1.0)])
    for seed in (1, 2):
        write_run(
            trial / "members" / f"sgd-seed{seed}",
            {"seed": seed, "width": 5},
            [(1000, "train", "", "loss", float(seed))],
        )
    assert [p.name for p in find_runs(tmp_path)] == ["sgd-seed1", "sgd-seed2"]


def test_no_records_says_how_to_make_them(tmp_path):
    with pytest.raises(FileNotFoundError, match="make sweep-cloning"):
        load_sweep(tmp_path)


def test_a_record_written_by_core_records_loads(tmp_path):
    from core.records import RunRecord  # the writer; analysis itself never imports core

    record = RunRecord(tmp_path / "runs" / "r0")
    record.write_config({"model": {"arch": "mlp", "norm": None}, "seed": 4})
    record.log(5, {"loss": 0.5, "hidden1/effective_rank": 3.0}, split="clone_train")
    record.set_status("completed")
    records, runs = load_sweep(tmp_path)
    assert runs.loc[0, "run_id"] == "r0" and runs.loc[0, "seed"] == 4
    assert runs.loc[0, "status"] == "completed" and runs.loc[0, "model.arch"] == "mlp"
    rows = records.set_index(["layer", "metric"])["value"]
    assert rows[("", "loss")] == 0.5 and rows[("hidden1", "effective_rank")] == 3.0


def test_a_key_with_values_of_two_types_is_kept_as_text(tmp_path):
    write_run(tmp_path / "a", {"seed": 0, "clone_dropout": None, "x": 1}, [(1, "t", "", "m", 1.0)])
    write_run(
        tmp_path / "b", {"seed": 1, "clone_dropout": 0.1, "x": "auto"}, [(1, "t", "", "m", 2.0)]
    )
    _, runs = load_sweep(tmp_path)
    assert list(runs["x"]) == ["1", "auto"]
    assert runs["clone_dropout"].isna().iloc[0] and runs["clone_dropout"].iloc[1] == 0.1
