"""The continual-learning experiment on synthetic data: exact resume after SIGKILL, head and
optimizer-state resets, masked accuracy, task length in steps or epochs, divergence."""

from __future__ import annotations

import random

import pytest
import torch

from core.data import task_classes
from core.experiments import cli, continual
from core.experiments.overrides import parse_overrides
from core.models import ModelConfig, build_model
from core.records import load_metrics
from tests.core.experiments.runs import TINY, killed_and_resumed, run_in_process

SMALL = TINY + [
    "synthetic.classes=6",
    "synthetic.train_per_class=32",
    "synthetic.test_per_class=8",
    "model.hidden_sizes=16,16",
    "classes_per_task=2",
    "batch_size=16",
    "probe_size=12",
]


def _run(args, run_dir):
    return run_in_process(continual, args, run_dir)


def test_killed_twice_and_resumed_equals_uninterrupted(tmp_path, one_thread):
    args = SMALL + [
        "task_unit=steps",
        "task_length=120",
        "log_every=5",
        "probe_every=20",
        "checkpoint_every=15",
        "cbp.enabled=true",
        "cbp.replacement_rate=0.05",
        "cbp.maturity=5",
        "seed=3",
    ]
    draw = random.Random()
    kills = sorted(draw.sample(range(20, 300, 15), 2))
    expected = killed_and_resumed(continual, args, tmp_path, kills)
    replaced = expected[expected.metric == "cbp_replaced"].value.sum()
    assert replaced > 0  # CBP's state and random streams were part of what resumed


@pytest.mark.parametrize("reset_state", [True, False])
def test_head_and_its_optimizer_state_are_reset_at_each_task_start(tmp_path, reset_state):
    args = SMALL + [
        "task_unit=steps",
        "task_length=10",
        "num_tasks=2",
        "model.dropout=0",
        f"reset_head_optimizer={str(reset_state).lower()}",
    ]
    _, record = _run(args, tmp_path / "run")
    _, state = record.load_checkpoint()
    model = build_model(ModelConfig(**state["model_config"]))
    model.load_state_dict(state["model"])
    cfg = parse_overrides(continual.Config, args)
    last = task_classes(6, 2, cfg.seed)[1]
    others = [c for c in range(6) if c not in last.tolist()]
    stale = torch.cat([model.head.weight[others].flatten(), model.head.bias[others]])
    # masked loss: rows of other classes get zero gradients, so only leaked Adam moments move them
    if reset_state:
        assert torch.count_nonzero(stale) == 0
        assert torch.count_nonzero(model.head.weight[last]) > 0
    else:
        assert torch.count_nonzero(stale) > 0


def test_unmasked_accuracy_never_exceeds_the_masked_one(tmp_path):
    _run(SMALL + ["task_unit=steps", "task_length=12", "log_every=3"], tmp_path / "run")
    frame = load_metrics(tmp_path / "run")
    for split in ("train", "val"):
        rows = frame[(frame.split == split) & (frame.layer == "")]
        wide = rows.pivot_table(index="step", columns="metric", values="value")
        assert len(wide) == 12  # 3 tasks x 4 log points
        assert (wide["acc_unmasked"] <= wide["acc"]).all()
    # the probe ran at each task start (steps 0, 12, 24), after the head reset, on every layer
    start = frame[frame.split == "start_train"]
    assert sorted(start.step.unique()) == [0, 12, 24]
    per_layer = (
        start[start.layer != ""]
        .groupby("step")[["layer", "metric"]]
        .apply(lambda rows: sorted(set(zip(rows.layer, rows.metric))))
    )
    expected = [(f"hidden{i}", m) for i in (1, 2) for m in ("dead_fraction", "effective_rank")]
    assert all(layers == expected for layers in per_layer)
    probe = frame[frame.layer == ""].pivot_table(
        index=["step", "split"], columns="metric", values="value"
    )
    probed = probe.dropna(subset=["probe_accuracy"])
    assert len(probed) > 0
    assert (probed["probe_accuracy_unmasked"] <= probed["probe_accuracy"]).all()


def test_task_length_in_steps_or_in_epochs(tmp_path):
    # 2 classes x 32 images per task, batch 16: an epoch is 4 steps
    by_steps, _ = _run(SMALL + ["task_unit=steps", "task_length=3"], tmp_path / "steps")
    by_epochs, _ = _run(SMALL + ["task_unit=epochs", "task_length=2"], tmp_path / "epochs")
    assert by_steps["steps"] == 3 * 3 and by_epochs["steps"] == 3 * 2 * 4
    tasks = load_metrics(tmp_path / "epochs").query("metric == 'task'")
    assert tasks.groupby("value").step.max().tolist() == [8, 16, 24]


def test_a_diverging_run_ends_diverged_with_its_step(tmp_path):
    args = SMALL + [
        "task_unit=steps",
        "task_length=50",
        "optimizer.name=sgd",
        "optimizer.lr=1e12",
        "model.norm=none",
    ]
    summary, record = _run(args, tmp_path / "run")
    info = record.status_info
    assert info["status"] == "diverged" and isinstance(info["step"], int)
    assert 1 <= info["step"] <= 150 and f"step {info['step']}" in info["reason"]
    assert summary["diverged_at"] == info["step"]
    assert (load_metrics(tmp_path / "run").step < info["step"]).all()
    # a finished (diverged) record is not run again
    again, _ = _run(args, tmp_path / "run")
    assert again == summary


def test_an_unknown_key_fails_before_any_work_and_lists_the_valid_keys(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(
            "continual",
            continual.Config,
            continual.run,
            ["task_lenght=3", "--run-dir", str(tmp_path / "r")],
        )
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "unknown key 'task_lenght'" in err and "task_length" in err and "cbp.enabled" in err
    assert not (tmp_path / "r").exists()
