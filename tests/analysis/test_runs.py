import json
import shutil
import subprocess
import sys

import pandas as pd
import pytest

from analysis.runs import find_runs, flatten, is_seed_key, load_sweep
from core.run import schema
from tests.analysis.records_by_hand import FINAL, cloning_config, cloning_rows, write_run


def test_flatten_joins_nested_keys_with_dots_and_lists_as_json():
    flat = flatten({"model": {"arch": "mlp", "hidden_sizes": [16, 16]}, "seed": 3})
    assert flat == {"model.arch": "mlp", "model.hidden_sizes": "[16, 16]", "seed": 3}


def test_seed_keys_match_exactly_or_as_a_dotted_suffix():
    assert is_seed_key("seed") and is_seed_key("data.seed")
    assert not is_seed_key("seeds") and not is_seed_key("reseed")
    assert is_seed_key("trial", seed_keys=("trial",))


def test_compaction_round_trips_every_row_and_the_config(cloning_sweep):
    sweep = load_sweep(cloning_sweep)
    records, runs = sweep.records, sweep.runs
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
    sweep = load_sweep(cloning_sweep)
    records, runs = sweep.records, sweep.runs
    assert "mlp_6" in set(runs.run_id) and (records.run_id == "mlp_6").sum() == 21


def test_a_copied_run_is_deduplicated(cloning_sweep, capsys):
    shutil.copytree(cloning_sweep / "runs" / "mlp_1", cloning_sweep / "copy" / "mlp_1")
    sweep = load_sweep(cloning_sweep)
    records, runs = sweep.records, sweep.runs
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


def test_a_sweep_through_shared_bases_groups_like_one_computed_whole(tmp_path):
    """A shared base (part=base) is skipped, and part/base_from leave the runs table, so the
    clone runs of two bases form one configuration of two seeds, as whole runs would."""
    from analysis.aggregate import varying_keys

    for seed in (1, 2):
        base = write_run(
            tmp_path / "runs" / f"base{seed}",
            {**cloning_config("mlp", seed), "part": "base", "base_from": None},
            [(20, "base_train", "", "loss", 9.0)],
        )
        write_run(
            tmp_path / "runs" / f"clone{seed}",
            {**cloning_config("mlp", seed), "part": "clone", "base_from": str(base)},
            cloning_rows(float(seed)),
        )
    sweep = load_sweep(tmp_path)
    assert sorted(sweep.runs.run_id) == ["clone1", "clone2"]
    assert not {"part", "base_from"} & set(sweep.runs.columns)
    assert varying_keys(sweep.runs) == []
    assert set(sweep.records.run_id) == {"clone1", "clone2"}


def test_no_records_says_how_to_make_them(tmp_path):
    with pytest.raises(FileNotFoundError, match="make sweep-cloning"):
        load_sweep(tmp_path)


@pytest.mark.parametrize("experiment", schema.EXPERIMENTS)
def test_a_record_written_by_the_run_record_loads(tmp_path, experiment):
    from core.run.record import RunRecord  # the writer (torch); analysis reads core.run.schema

    record = RunRecord(tmp_path / "runs" / "r0")
    record.write_config({"model": {"arch": "mlp", "norm": None}, "seed": 4}, experiment)
    record.log(5, {"loss": 0.5, "hidden1/effective_rank": 3.0}, split="clone_train")
    record.flush()
    record.log(6, {"loss": 0.25}, split="clone_train")
    record.compact()  # two chunks merged into one, as at a run's completion
    record.set_status("completed")
    sweep = load_sweep(tmp_path)
    records, runs = sweep.records, sweep.runs
    assert runs.loc[0, "run_id"] == "r0" and runs.loc[0, "seed"] == 4
    assert runs.loc[0, "experiment"] == experiment and sweep.unreadable == ()
    assert runs.loc[0, "status"] == "completed" and runs.loc[0, "model.arch"] == "mlp"
    rows = records.set_index(["step", "layer", "metric"])["value"]
    assert rows[(5, "", "loss")] == 0.5 and rows[(5, "hidden1", "effective_rank")] == 3.0
    assert rows[(6, "", "loss")] == 0.25 and len(rows) == 3


def test_a_key_with_values_of_two_types_is_kept_as_text(tmp_path):
    write_run(tmp_path / "a", {"seed": 0, "clone_dropout": None, "x": 1}, [(1, "t", "", "m", 1.0)])
    write_run(
        tmp_path / "b", {"seed": 1, "clone_dropout": 0.1, "x": "auto"}, [(1, "t", "", "m", 2.0)]
    )
    runs = load_sweep(tmp_path).runs
    assert list(runs["x"]) == ["1", "auto"]
    assert runs["clone_dropout"].isna().iloc[0] and runs["clone_dropout"].iloc[1] == 0.1


def test_the_experiment_is_read_from_config_json(tmp_path):
    write_run(tmp_path / "a", {"seed": 0}, [(1, "t", "", "m", 1.0)], experiment="bitflip")
    write_run(tmp_path / "b", {"seed": 1}, [(1, "t", "", "m", 1.0)], experiment="continual")
    assert list(load_sweep(tmp_path).runs["experiment"]) == ["bitflip", "continual"]


def test_records_without_an_experiment_are_refused_unless_told(tmp_path):
    write_run(tmp_path / "old", {"seed": 0}, [(1, "t", "", "m", 1.0)], experiment=None)
    write_run(tmp_path / "new", {"seed": 1}, [(1, "t", "", "m", 1.0)], experiment="bitflip")
    config = tmp_path / "old" / "config.json"
    with pytest.raises(ValueError, match=f"1 run record.*{config}.*--experiment"):
        load_sweep(tmp_path)
    runs = load_sweep(tmp_path, experiment="continual").runs.set_index("run_id")
    # only the record lacking the entry takes the given experiment
    assert runs.loc["old", "experiment"] == "continual"
    assert runs.loc["new", "experiment"] == "bitflip"
    with pytest.raises(ValueError, match="valid: continual, cloning, bitflip"):
        load_sweep(tmp_path, experiment="clone")


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_a_damaged_chunk_is_skipped_and_named_and_the_rest_is_read(cloning_sweep):
    damaged = schema.chunk_path(cloning_sweep / "runs" / "mlp_2", 1)
    _truncate(damaged)
    sweep = load_sweep(cloning_sweep)
    assert len(sweep.unreadable) == 1
    assert sweep.unreadable[0].startswith("runs/mlp_2/metrics/part-000001.parquet: ")
    assert "chunk skipped" in sweep.unreadable[0]
    # 21 rows per run in 2 chunks of 11 and 10: mlp_2 keeps its first chunk, the others all
    per_run = sweep.records.groupby("run_id").size()
    assert per_run["mlp_2"] == 11 and (per_run.drop("mlp_2") == 21).all()
    assert load_sweep(cloning_sweep).unreadable == sweep.unreadable  # named again from the cache


def test_a_chunk_of_other_columns_is_unreadable(tmp_path):
    run = write_run(tmp_path / "a", {"seed": 0}, [(1, "t", "", "m", 1.0)])
    pd.DataFrame({"run_id": ["a"], "step": [2], "value": [1.0]}).to_parquet(
        schema.chunk_path(run, 1)
    )
    sweep = load_sweep(tmp_path)
    assert len(sweep.records) == 1 and "expected ['run_id', 'step'" in sweep.unreadable[0]


def test_an_unreadable_config_skips_its_run_and_an_unreadable_status_is_unknown(tmp_path):
    for name in ("a", "b", "c"):
        write_run(tmp_path / name, {"seed": 0}, [(1, "t", "", "m", 1.0)])
    schema.config_path(tmp_path / "b").write_text('{"run_id": "b", "conf')
    schema.status_path(tmp_path / "c").write_text("")
    sweep = load_sweep(tmp_path)
    assert list(sweep.runs["run_id"]) == ["a", "c"]
    assert list(sweep.runs["status"]) == ["completed", "unknown"]
    assert set(sweep.records["run_id"]) == {"a", "c"}
    assert [u.split(":")[0] for u in sweep.unreadable] == ["b/config.json", "c/status.json"]


def test_a_dataset_compacted_by_an_older_layout_is_rebuilt(cloning_sweep):
    load_sweep(cloning_sweep)
    manifest = cloning_sweep / "analysis" / "manifest.json"
    inputs = json.loads(manifest.read_text())["inputs"]
    manifest.write_text(json.dumps(inputs))  # the previous layout: a bare list of inputs
    (cloning_sweep / "analysis" / "runs.parquet").unlink()
    assert "experiment" in load_sweep(cloning_sweep).runs.columns


def test_importing_the_analysis_imports_no_torch():
    code = (
        "import sys, analysis.aggregate, analysis.figures, analysis.report;"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'ray', 'mlflow')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
