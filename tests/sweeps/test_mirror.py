"""The MLflow mirror against real run records and a real MLflow store (SQLite): its metric
histories equal the records' rows after any sequence of partial syncs, resumes and re-syncs."""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from core.run import schema
from core.run.record import RunRecord, load_metrics
from sweeps import mirror as mirror_module
from sweeps.mirror import Mirror, metric_key


def _sweep(tmp_path, name="cn-smoke"):
    sweep_dir = tmp_path / name
    (sweep_dir / "runs").mkdir(parents=True)
    manifest = {"study": "cloning_noise", "scale": "smoke", "mlflow_experiment": name}
    (sweep_dir / "sweep.json").write_text(json.dumps(manifest))
    return sweep_dir


def _log(record: RunRecord, steps, seed: int = 0) -> None:
    for step in steps:
        record.log(step, {"loss": seed + step / 7, "acc": 1 / (step + 1)}, "train")
        record.log(step, {"fc1/effective_rank": step * 0.5}, "probe")


def _record(sweep_dir, point, seed=0) -> RunRecord:
    record = RunRecord(sweep_dir / "runs" / point)
    record.write_config({"seed": seed, "model": {"arch": "mlp"}}, "cloning")
    record.set_status("running")
    return record


def _histories(sweep_dir) -> dict[str, pd.DataFrame]:
    client = MlflowClient(f"sqlite:///{sweep_dir}/mlflow.db")
    experiment = client.get_experiment_by_name(sweep_dir.name)
    out = {}
    for run in client.search_runs([experiment.experiment_id]):
        rows = []
        for key in run.data.metrics:
            for m in client.get_metric_history(run.info.run_id, key):
                rows.append({"key": m.key, "step": m.step, "value": m.value})
        point = run.data.tags["lop.point"]
        assert point not in out, f"two MLflow runs for point {point}"
        out[point] = pd.DataFrame(rows, columns=["key", "step", "value"])
    return out


def _expected(run_dir, max_step=None) -> pd.DataFrame:
    rows = load_metrics(run_dir)
    if max_step is not None:
        rows = rows[rows["step"] <= max_step]
    keys = [metric_key(s, la, m) for s, la, m in zip(rows["split"], rows["layer"], rows["metric"])]
    return pd.DataFrame({"key": keys, "step": rows["step"], "value": rows["value"]})


def _same(got: pd.DataFrame, expected: pd.DataFrame) -> None:
    order = ["key", "step"]
    got = got.sort_values(order).reset_index(drop=True)
    expected = expected.sort_values(order).reset_index(drop=True)
    assert not got.duplicated(order).any(), "a metric point mirrored twice"
    pd.testing.assert_frame_equal(got, expected, check_dtype=False)


def test_a_finished_record_is_mirrored_once_whatever_the_number_of_syncs(tmp_path):
    sweep_dir = _sweep(tmp_path)
    record = _record(sweep_dir, "p1", seed=3)
    _log(record, range(0, 50, 5), seed=3)
    record.finish("completed", summary={})
    for _ in range(2):
        Mirror(sweep_dir).sync()  # a fresh mirror each time: as a restarted driver
    mirror = Mirror(sweep_dir)
    mirror.sync()
    assert mirror.sync() == {"rows": 0, "runs": 0}  # nothing changed: nothing read or written
    (history,) = _histories(sweep_dir).values()
    _same(history, _expected(sweep_dir / "runs" / "p1"))
    run = mirror.client.get_run(mirror._runs["p1"]["id"])
    assert run.info.status == "FINISHED"
    assert run.data.params == {"seed": "3", "model.arch": "mlp"}
    tags = run.data.tags
    assert (
        tags["status"] == "completed" and tags["seed"] == "3" and tags["study"] == "cloning_noise"
    )
    assert tags["experiment"] == "cloning" and tags["package.pyarrow"]


def test_only_rows_no_resume_can_take_back_are_mirrored(tmp_path):
    """Running: rows up to the newest checkpoint only. The run is killed after step 70, resumes
    from its checkpoint at 50 (rows after it deleted and written again) and finishes."""
    sweep_dir = _sweep(tmp_path)
    record = _record(sweep_dir, "p1")
    _log(record, range(0, 55, 5))
    record.save_checkpoint(50, {"w": 1})
    _log(record, range(55, 75, 5))
    record.flush()
    Mirror(sweep_dir).sync()
    _same(_histories(sweep_dir)["p1"], _expected(sweep_dir / "runs" / "p1", max_step=50))

    resumed = RunRecord(sweep_dir / "runs" / "p1")
    assert resumed.load_checkpoint()[0] == 50
    _log(resumed, range(55, 100, 5), seed=1)  # other values than the lost rows (not bit-exact)
    resumed.finish("completed", summary={})
    Mirror(sweep_dir).sync()
    _same(_histories(sweep_dir)["p1"], _expected(sweep_dir / "runs" / "p1"))


def test_a_sync_interrupted_between_batches_resumes_without_duplicates(tmp_path, monkeypatch):
    sweep_dir = _sweep(tmp_path)
    record = _record(sweep_dir, "p1")
    _log(record, range(100))
    record.finish("completed", summary={})
    monkeypatch.setattr(mirror_module, "BATCH", 7)
    broken = Mirror(sweep_dir)
    calls = {"n": 0}
    real = broken.client.log_batch

    def failing(run_id, metrics=(), params=(), tags=()):
        if metrics:
            calls["n"] += 1
            if calls["n"] == 4:
                raise ConnectionError("the store went away")
        return real(run_id, metrics=metrics, params=params, tags=tags)

    monkeypatch.setattr(broken.client, "log_batch", failing)
    with pytest.raises(ConnectionError):
        broken.sync()
    partial = _histories(sweep_dir)["p1"]
    assert len(partial) == 3 * 7  # three whole batches, each with its row count
    Mirror(sweep_dir).sync()
    _same(_histories(sweep_dir)["p1"], _expected(sweep_dir / "runs" / "p1"))


def test_a_compaction_cut_short_by_a_kill_counts_each_row_once(tmp_path):
    sweep_dir = _sweep(tmp_path)
    record = _record(sweep_dir, "p1")
    _log(record, range(0, 20))
    record.flush()
    _log(record, range(20, 40))
    record.flush()
    chunks = schema.chunk_paths(sweep_dir / "runs" / "p1")
    saved = [c.read_bytes() for c in chunks]
    record.finish("completed", summary={})
    for chunk, data in zip(chunks, saved):  # as if killed before the old chunks were deleted
        chunk.write_bytes(data)
    assert len(schema.chunk_paths(sweep_dir / "runs" / "p1")) == 3
    Mirror(sweep_dir).sync()
    expected = _expected(sweep_dir / "runs" / "p1").drop_duplicates(["key", "step"])
    _same(_histories(sweep_dir)["p1"], expected)


def test_a_moved_sweep_mirrors_into_its_new_place_with_attempt_provenance(tmp_path):
    sweep_dir = _sweep(tmp_path)
    record = _record(sweep_dir, "p1")
    _log(record, range(3))
    record.finish("completed", summary={})
    attempts = [{"point": "p1", "git_sha": sha} for sha in ("a" * 40, "b" * 40)]
    (sweep_dir / "attempts.jsonl").write_text("".join(json.dumps(a) + "\n" for a in attempts))
    moved = tmp_path / "elsewhere" / "renamed"
    moved.parent.mkdir()
    shutil.move(sweep_dir, moved)
    mirror = Mirror(moved)
    mirror.sync()
    assert mirror.uri == f"sqlite:///{moved}/mlflow.db" and not sweep_dir.exists()
    assert mirror.experiment_name == "cn-smoke"  # the name the sweep was created with
    tags = mirror.client.get_run(mirror._runs["p1"]["id"]).data.tags
    assert tags["attempts"] == "2"
    assert (tags["attempt.1.git_sha"], tags["attempt.2.git_sha"]) == ("a" * 40, "b" * 40)
