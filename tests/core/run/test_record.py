"""The run record: long-format rows, atomic checkpoints, resume without duplicated or lost rows
(also from an older checkpoint when the newest is damaged, and after a compaction cut short),
storage at the end; and the key=value overrides every experiment's command line uses."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest
import torch

from core.run.config import parse_overrides
from core.run.record import RunRecord, load_metrics
from core.run.schema import (
    COLUMNS,
    checkpoint_paths,
    chunk_paths,
    is_record,
    read_config,
)


def test_rows_are_long_format_with_layer_split_from_the_key(tmp_path):
    record = RunRecord(tmp_path / "r1")
    record.log(3, {"loss": 0.5, "hidden1/effective_rank": 4.0, "a/b/c": 1.0}, split="val")
    record.flush()
    frame = load_metrics(tmp_path / "r1")
    assert tuple(frame.columns) == COLUMNS
    rows = set(frame.itertuples(index=False, name=None))
    assert rows == {
        ("r1", 3, "val", "", "loss", 0.5),
        ("r1", 3, "val", "hidden1", "effective_rank", 4.0),
        ("r1", 3, "val", "a/b", "c", 1.0),
    }


def test_empty_record_loads_as_an_empty_frame_with_the_columns(tmp_path):
    frame = load_metrics(RunRecord(tmp_path / "r").run_dir)
    assert tuple(frame.columns) == COLUMNS and len(frame) == 0


def test_resume_discards_rows_after_the_checkpoint_and_never_duplicates(tmp_path):
    record = RunRecord(tmp_path / "run")
    for step in range(1, 4):
        record.log(step, {"loss": float(step)})
    record.save_checkpoint(3, {"w": torch.tensor([3.0])})
    for step in range(4, 7):  # logged and flushed, then the process "dies" before a checkpoint
        record.log(step, {"loss": float(step)})
    record.flush()
    record.log(7, {"loss": 7.0})  # buffered only: lost with the process

    resumed = RunRecord(tmp_path / "run")
    step, state = resumed.load_checkpoint()
    assert step == 3 and torch.equal(state["w"], torch.tensor([3.0]))
    for s in range(4, 8):
        resumed.log(s, {"loss": float(s)})
    resumed.flush()
    frame = load_metrics(tmp_path / "run")
    assert frame["step"].tolist() == list(range(1, 8))
    assert frame["value"].tolist() == [float(s) for s in range(1, 8)]


def test_restart_without_a_checkpoint_starts_from_an_empty_record(tmp_path):
    record = RunRecord(tmp_path / "run")
    record.log(1, {"loss": 1.0})
    record.flush()
    assert RunRecord(tmp_path / "run").load_checkpoint() is None
    assert len(load_metrics(tmp_path / "run")) == 0


def test_only_the_latest_checkpoints_are_kept_and_leftover_temporaries_are_ignored(tmp_path):
    record = RunRecord(tmp_path / "run", keep_checkpoints=2)
    for step in (10, 20, 30):
        record.save_checkpoint(step, {"step": step})
    names = sorted(p.name for p in record.checkpoint_dir.iterdir())
    assert names == ["step-000000000020.pt", "step-000000000030.pt"]
    (record.checkpoint_dir / "step-000000000040.pt.tmp").write_bytes(b"half a file")
    assert RunRecord(tmp_path / "run").load_checkpoint()[0] == 30


def test_status_and_config(tmp_path):
    record = RunRecord(tmp_path / "run")
    assert record.status is None
    record.write_config({"lr": 0.1, "widths": (4, 8)}, "continual", device="cpu")
    saved = json.loads((record.run_dir / "config.json").read_text())
    assert saved["config"] == {"lr": 0.1, "widths": [4, 8]}
    assert saved["provenance"]["device"] == "cpu"
    assert "torch" in saved["provenance"]["packages"]
    record.write_config({"lr": 0.1, "widths": (4, 8)}, "continual")  # same config: a resume
    with pytest.raises(ValueError, match="different config"):
        record.write_config({"lr": 0.2, "widths": (4, 8)}, "continual")
    record.set_status("diverged", "non-finite loss", step=12)
    assert record.status == "diverged" and record.status_info["step"] == 12
    with pytest.raises(ValueError, match="valid: running, completed, diverged, failed"):
        record.set_status("done")


@dataclass(frozen=True)
class Inner:
    classes: int = 10
    size: int = 8


@dataclass(frozen=True)
class Example:
    lr: float = 0.1
    steps: int = 5
    name: str = "a"
    amsgrad: bool = False
    widths: tuple[int, ...] = (4, 4)
    limit: int | None = None
    norm: str | None = None
    kind: Literal["sgd", "adam"] = "sgd"
    inner: Inner = field(default_factory=Inner)


def test_overrides_are_typed_by_annotation():
    cfg = parse_overrides(
        Example,
        [
            "lr=1e-3",
            "steps=7",
            "name=x=y",
            "amsgrad=true",
            "widths=(8,16,32)",
            "limit=none",
            "kind=adam",
            "inner.classes=3",
        ],
    )
    assert cfg == Example(
        lr=1e-3,
        steps=7,
        name="x=y",
        amsgrad=True,
        widths=(8, 16, 32),
        limit=None,
        kind="adam",
        inner=Inner(classes=3),
    )
    assert parse_overrides(Example, ["limit=4"]).limit == 4
    # "none" is a value for a str field (a norm called none), "null" is None for any type
    assert parse_overrides(Example, ["norm=none"]).norm == "none"
    assert parse_overrides(Example, ["norm=null", "limit=null"]) == Example()


@pytest.mark.parametrize(
    ("arg", "message"),
    [
        ("stpes=3", "unknown key 'stpes'.*valid keys: lr, steps, .*inner.classes, inner.size"),
        ("steps=2.5", "expected an integer"),
        ("amsgrad=maybe", "expected a boolean"),
        ("kind=rmsprop", "expected one of sgd, adam"),
        ("lr", "not of the form key=value"),
    ],
)
def test_bad_overrides_raise_with_the_fix(arg, message):
    with pytest.raises(ValueError, match=message):
        parse_overrides(Example, [arg])


def _steps(run_dir):
    return load_metrics(run_dir)["step"].tolist()


def test_an_unreadable_newest_checkpoint_falls_back_to_the_older_one(tmp_path, capsys):
    record = RunRecord(tmp_path / "run", keep_checkpoints=2)
    for step in range(1, 31):
        record.log(step, {"loss": float(step)})
        if step % 10 == 0 and step > 10:
            record.save_checkpoint(step, {"w": torch.tensor([float(step)])})
    record.flush()
    newest = checkpoint_paths(tmp_path / "run")[30]
    newest.write_bytes(newest.read_bytes()[:100])  # truncated, e.g. by a full disk

    step, state = RunRecord(tmp_path / "run").load_checkpoint()
    assert step == 20 and torch.equal(state["w"], torch.tensor([20.0]))
    assert _steps(tmp_path / "run") == list(range(1, 21))  # the rows after 20 are gone
    assert str(newest) in capsys.readouterr().err
    assert list(checkpoint_paths(tmp_path / "run")) == [20]  # set aside, not tried again


def test_finish_compacts_the_chunks_and_removes_the_checkpoints(tmp_path):
    for keep in (False, True):
        record = RunRecord(tmp_path / f"keep-{keep}")
        record.write_config({"lr": 0.1}, "continual")
        for step in range(1, 7):
            record.log(step, {"loss": float(step)})
            if step % 2 == 0:
                record.save_checkpoint(step, {"step": step})
        record.log(7, {"loss": 7.0})
        record.finish("completed", keep_final_checkpoint=keep, summary={"steps": 7})
        run_dir = record.run_dir
        assert len(chunk_paths(run_dir)) == 1 and _steps(run_dir) == list(range(1, 8))
        assert list(checkpoint_paths(run_dir)) == ([6] if keep else [])
        assert record.status_info == {"status": "completed", "reason": "", "summary": {"steps": 7}}


def test_a_compaction_cut_short_by_a_kill_never_duplicates_a_row(tmp_path):
    record = RunRecord(tmp_path / "run")
    for step in range(1, 7):
        record.log(step, {"loss": float(step)})
        record.save_checkpoint(step, {"step": step})
    chunks = chunk_paths(tmp_path / "run")
    assert len(chunks) == 6
    real_unlink = Path.unlink
    calls = []

    def die_after_two(self, missing_ok=False):  # the kill: the third deletion never happens
        if self.suffix == ".parquet" and len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(self)
        real_unlink(self, missing_ok=missing_ok)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Path, "unlink", die_after_two)
        with pytest.raises(KeyboardInterrupt):
            record.compact()
    assert len(chunk_paths(tmp_path / "run")) == 5  # the compacted chunk and 4 old ones
    resumed = RunRecord(tmp_path / "run")
    assert resumed.load_checkpoint()[0] == 6
    assert len(chunk_paths(tmp_path / "run")) == 1 and _steps(tmp_path / "run") == list(range(1, 7))


def test_nothing_is_written_before_the_config(tmp_path):
    record = RunRecord(tmp_path / "run")
    assert record.load_checkpoint() is None and record.status is None
    assert not (tmp_path / "run").exists()
    record.write_config({"lr": 0.1}, "cloning")
    assert is_record(tmp_path / "run") and read_config(tmp_path / "run")["experiment"] == "cloning"
