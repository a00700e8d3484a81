"""The cloning run split in two (`part=base`, then `part=clone base_from=...`) is the same
computation as the run in one piece (`part=all`): every row of the metrics table, the status and
the summary bitwise equal, and the final checkpoints' models and optimizer states equal; a
base_from that ran another base is refused before any work."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from core.experiments import cloning
from core.run import schema
from core.run.record import RunRecord
from tests.core.experiments.runs import (
    TINY,
    comparable,
    kill_points,
    killed_and_resumed,
    run_in_process,
)

SMALL = TINY + [
    "model.hidden_sizes=8,8",
    "batch_size=32",  # 400 synthetic images: 13 steps per epoch
    "probe_size=20",
    "base_epochs=1",
    "clone_epochs=2",
    "log_every=4",
    "probe_every=1",
    "keep_final_checkpoint=true",
    "seed=3",
]
NOISY = ["clone_optimizer.name=noisy_sgd", "clone_optimizer.sigma0=0.05"]


def _final(record: RunRecord) -> dict:
    _, state = record.load_checkpoint()
    return state


def _text(summary: dict) -> str:
    return json.dumps(summary, sort_keys=True)


def _equal(a, b) -> bool:
    """Nested checkpoint values equal exactly (tensors bitwise)."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    return a == b


def _split_equals_whole(tmp_path, base_args, clones):
    """One part=base run shared by the clone settings `clones`; each part=clone run equals its
    part=all run."""
    run_in_process(cloning, base_args + ["part=base"], tmp_path / "base")
    for i, clone_args in enumerate(clones):
        whole, whole_record = run_in_process(cloning, base_args + clone_args, tmp_path / f"all{i}")
        split_args = base_args + clone_args + ["part=clone", f"base_from={tmp_path / 'base'}"]
        split, split_record = run_in_process(cloning, split_args, tmp_path / f"clone{i}")
        assert _text(split) == _text(whole)  # as text: a diverged run's NaN equals itself
        assert _text(split_record.status_info) == _text(whole_record.status_info)
        expected, got = comparable(tmp_path / f"all{i}"), comparable(tmp_path / f"clone{i}")
        assert len(expected) > 10
        pd.testing.assert_frame_equal(got, expected, check_exact=True)
        if whole_record.status == "completed":
            one, clone = _final(whole_record), _final(split_record)
            base_state = _final(RunRecord(tmp_path / "base"))
            assert _equal(clone["model"], one["model"])  # the clone
            assert _equal(clone["learners"]["clone"], one["learners"]["clone"])
            assert _equal(base_state["model"], one["base"])  # the base, in the base's record
            assert _equal(base_state["learners"]["base"], one["learners"]["base"])
    whole = comparable(tmp_path / "all0")
    whole = whole[whole.split.str.startswith("base_")].reset_index(drop=True)
    base_rows = comparable(tmp_path / "base")  # up to where the whole run ended (a clone diverged)
    base_rows = base_rows[base_rows.step <= whole.step.max()].reset_index(drop=True)
    pd.testing.assert_frame_equal(base_rows, whole, check_exact=True)


def test_an_mlp_with_batch_norm_and_dropout_two_clones_of_one_base(tmp_path, one_thread):
    base = SMALL + ["model.norm=batch", "model.dropout=0.1"]
    _split_equals_whole(tmp_path, base, [NOISY, ["clone_dropout=0.3", "lr_multipliers=true"]])


def test_a_cnn_with_batch_norm_and_clone_dropout(tmp_path, one_thread):
    cnn = ["model.arch=cnn", "model.conv_channels=8,8", "model.fc_hidden=16", "model.norm=batch"]
    base = [a for a in SMALL if not a.startswith("model.hidden_sizes")] + cnn
    _split_equals_whole(tmp_path, base, [[*NOISY, "clone_dropout=0.2"]])


def test_a_diverging_clone_and_a_base_diverging_before_the_expansion(tmp_path, one_thread):
    base = SMALL + ["model.norm=none", "clone_optimizer.momentum=0"]
    _split_equals_whole(tmp_path / "clone", base, [["clone_optimizer.lr=1e12"]])
    assert RunRecord(tmp_path / "clone" / "clone0").status == "diverged"
    base = SMALL + ["model.norm=none", "optimizer.lr=1e12", "optimizer.momentum=0"]
    _split_equals_whole(tmp_path / "base", base, [NOISY])
    assert RunRecord(tmp_path / "base" / "clone0").status == "diverged"


def test_a_base_from_another_base_or_unfinished_is_refused_before_any_work(tmp_path):
    run_in_process(cloning, SMALL + ["part=base", "clone_epochs=1"], tmp_path / "base")
    clone = ["part=clone", f"base_from={tmp_path / 'base'}", "factor=3", *NOISY]
    with pytest.raises(ValueError, match=r"ran another base \(clone_epochs: 1 there, 2 here\)"):
        run_in_process(cloning, SMALL + clone, tmp_path / "clone")
    assert not (tmp_path / "clone").exists()
    RunRecord(tmp_path / "base").set_status("running")
    with pytest.raises(ValueError, match="is not finished .status running.: run it first"):
        run_in_process(cloning, SMALL + ["clone_epochs=1", *clone], tmp_path / "clone")
    with pytest.raises(ValueError, match="no readable run record there"):
        run_in_process(cloning, SMALL + ["part=clone", f"base_from={tmp_path}"], tmp_path / "c")
    RunRecord(tmp_path / "whole").write_config(cloning.Config(), "cloning")  # a part=all run
    with pytest.raises(
        ValueError, match="is no part=base cloning run .experiment cloning, part all"
    ):
        whole = ["part=clone", f"base_from={tmp_path / 'whole'}"]
        run_in_process(cloning, SMALL + whole, tmp_path / "c")
    with pytest.raises(ValueError, match="part='both'; valid: all, base, clone"):
        run_in_process(cloning, SMALL + ["part=both"], tmp_path / "c")
    with pytest.raises(ValueError, match="base_from .* goes with part=clone, and only with it"):
        run_in_process(cloning, SMALL + ["part=base", f"base_from={tmp_path}"], tmp_path / "c")


def test_killed_base_and_clone_parts_resume_equal_to_uninterrupted(tmp_path, one_thread):
    args = SMALL + ["model.dropout=0.1", "checkpoint_every=4", *NOISY]
    # the base alone is fast (no clone): kill it early, with a short delay, so that the kill
    # lands before it ends even on an idle machine
    base = killed_and_resumed(
        cloning, args + ["part=base"], tmp_path / "base", kill_points(7, range(6, 14), 0.01)
    )
    assert base.split.str.startswith("base_").all()
    split = args + ["part=clone", f"base_from={tmp_path / 'base' / 'uninterrupted'}"]
    killed_and_resumed(cloning, split, tmp_path / "clone", kill_points(8, range(17, 34), 0.1))
    # the killed base's saved states are the uninterrupted base's
    for path in sorted((tmp_path / "base" / "uninterrupted" / schema.BASE_STATES_DIR).iterdir()):
        again = tmp_path / "base" / "killed" / schema.BASE_STATES_DIR / path.name
        assert _equal(torch.load(path), torch.load(again))
