"""The continual-learning experiment on synthetic data: exact resume after SIGKILL, head and
optimizer-state resets, masked accuracy, task length in steps or epochs, divergence."""

from __future__ import annotations

import math

import pytest
import torch

from core.data import task_classes
from core.experiments import continual
from core.experiments.classification import class_remap, masked_loss
from core.models import ModelConfig, build_model
from core.run import cli
from core.run.config import parse_overrides
from core.run.record import RunRecord, load_metrics
from core.run.schema import checkpoint_paths
from core.run.seeds import seed_for
from tests.core.experiments.runs import TINY, kill_points, killed_and_resumed, run_in_process

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


def _by_steps(task_length: int, more: str = "") -> list[str]:
    """SMALL with tasks of `task_length` steps and the space-separated overrides `more`."""
    return SMALL + ["task_unit=steps", f"task_length={task_length}", *more.split()]


def test_killed_twice_and_resumed_equals_uninterrupted(tmp_path, one_thread):
    args = _by_steps(120, "log_every=5 probe_every=20 checkpoint_every=15 seed=3")
    args += ["cbp.enabled=true", "cbp.replacement_rate=0.05", "cbp.maturity=5", "model.dropout=0.2"]
    kills = kill_points(11, [range(20, 140, 15), range(150, 290, 15)], delay=0.15)
    expected = killed_and_resumed(continual, args, tmp_path, kills)
    replaced = expected[expected.metric == "cbp_replaced"].value.sum()
    assert replaced > 0  # CBP's state and random streams (and the dropout stream) resumed


def _optimizer_state(state):
    """{parameter name: its Adam state} of a checkpoint's model and optimizer."""
    names = list(state["model"])  # state_dict order == parameter order for these models
    params = [n for n in names if not n.endswith(("running_mean", "running_var", "tracked"))]
    saved = state["optimizer"]["state"]
    return {name: saved.get(i) for i, name in enumerate(params)}


@pytest.mark.parametrize("reset_state", [True, False])
def test_head_and_its_optimizer_state_are_reset_at_each_task_start(tmp_path, reset_state):
    args = _by_steps(10, "num_tasks=2 model.dropout=0 keep_final_checkpoint=true")
    args.append(f"reset_head_optimizer={str(reset_state).lower()}")
    _, record = _run(args, tmp_path / "run")
    _, state = record.load_checkpoint()
    model = build_model(ModelConfig(**state["model_config"]))
    model.load_state_dict(state["model"])
    cfg = parse_overrides(continual.Config, args)
    last = task_classes(6, 2, seed_for(cfg.seed, "tasks"))[1]
    others = [c for c in range(6) if c not in last.tolist()]
    stale = torch.cat([model.head.weight[others].flatten(), model.head.bias[others]])
    # masked loss: rows of other classes get zero gradients, so only leaked Adam moments move them
    if reset_state:
        assert torch.count_nonzero(stale) == 0
        assert torch.count_nonzero(model.head.weight[last]) > 0
    else:
        assert torch.count_nonzero(stale) > 0
    # Adam's step counts: the head's restart at the task start (or not), the body's never do
    steps = {name: int(s["step"]) for name, s in _optimizer_state(state).items()}
    assert {n: k for n, k in steps.items() if n.startswith("head.")} == {
        "head.weight": 10 if reset_state else 20,
        "head.bias": 10 if reset_state else 20,
    }
    body = {n: k for n, k in steps.items() if not n.startswith("head.")}
    assert len(body) > 0 and set(body.values()) == {20}


def test_the_body_keeps_its_adam_moments_across_a_task_boundary(tmp_path, monkeypatch):
    # the state right after the first task ends, in a 2-task run (after the head reset) and in a
    # 1-task run (no reset): the body's step counts and both moments must be the same tensors
    base = _by_steps(10, "model.dropout=0")
    monkeypatch.setattr(RunRecord, "prune_checkpoints", lambda self, keep_final: None)
    _run(base + ["num_tasks=1"], tmp_path / "one")
    _run(base + ["num_tasks=2", "checkpoint_every=10"], tmp_path / "two")
    one = torch.load(checkpoint_paths(tmp_path / "one")[10], weights_only=True)["state"]
    two = torch.load(checkpoint_paths(tmp_path / "two")[10], weights_only=True)["state"]
    assert two["task"] == 1 and one["task"] == 0
    one, two = _optimizer_state(one), _optimizer_state(two)
    assert two["head.weight"] is None and two["head.bias"] is None
    body = [name for name in one if not name.startswith("head.")]
    for name in body:
        for key in ("step", "exp_avg", "exp_avg_sq"):
            assert torch.equal(two[name][key], one[name][key]), (name, key)
        assert torch.count_nonzero(two[name]["exp_avg_sq"]) > 0


def test_masked_accuracy_counts_a_sample_whose_largest_logit_is_outside_the_task():
    classes = torch.tensor([3, 1])  # the task: global labels 3 and 1
    remap = class_remap(classes, 4)
    logits = torch.tensor(
        [
            [0.0, 1.0, 5.0, 2.0],  # label 3: within the task 3 (2.0) beats 1 (1.0); class 2 wins
            [0.0, 3.0, 1.0, 0.0],  # label 1: right with and without the mask
            [4.0, 0.5, 0.0, 1.5],  # label 1: the task says 3, class 0 wins outside: wrong both
        ]
    )
    y = torch.tensor([3, 1, 1])
    loss, correct, correct_all = masked_loss(logits, y, classes, remap)
    assert (int(correct), int(correct_all)) == (1 + 1, 1)  # acc 2/3 > acc_unmasked 1/3
    # cross-entropy over the task's logits only, (logit of 3, logit of 1) per sample
    expected = [
        math.log(1 + math.exp(1.0 - 2.0)),
        math.log(1 + math.exp(0.0 - 3.0)),
        math.log(1 + math.exp(1.5 - 0.5)),
    ]
    assert loss.item() == pytest.approx(sum(expected) / 3, rel=1e-6)


def test_unmasked_accuracy_never_exceeds_the_masked_one(tmp_path):
    _run(_by_steps(12, "log_every=3"), tmp_path / "run")
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
    by_steps, _ = _run(_by_steps(3), tmp_path / "steps")
    by_epochs, _ = _run(SMALL + ["task_unit=epochs", "task_length=2"], tmp_path / "epochs")
    assert by_steps["steps"] == 3 * 3 and by_epochs["steps"] == 3 * 2 * 4
    tasks = load_metrics(tmp_path / "epochs").query("metric == 'task'")
    assert tasks.groupby("value").step.max().tolist() == [8, 16, 24]


def test_a_diverging_run_ends_diverged_with_its_step(tmp_path):
    args = _by_steps(50, "optimizer.name=sgd optimizer.lr=1e12 model.norm=none")
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


def test_an_exploding_adam_run_ends_diverged_where_the_loss_crossed_the_ceiling(tmp_path):
    # Adam's steps are bounded by lr: at lr 1e6 the loss explodes but stays finite for a while
    args = _by_steps(30, "log_every=1 optimizer.lr=1e6 model.norm=none model.dropout=0")
    summary, record = _run(args, tmp_path / "ceiling")
    info = record.status_info
    assert info["status"] == "diverged" and "divergence ceiling" in info["reason"]
    # the same run without a ceiling logs every step's loss: the first one above 1000 x the
    # first step's loss is where the ceiling run stopped
    _run(args + ["divergence_ceiling=null"], tmp_path / "free")
    frame = load_metrics(tmp_path / "free")
    loss = frame[(frame.split == "train") & (frame.metric == "loss")].set_index("step").value
    crossed = loss[loss > 1000 * loss.loc[1]]
    assert len(crossed) and math.isfinite(crossed.iloc[0])  # finite: no NaN rule would fire
    assert info["step"] == crossed.index[0] == summary["diverged_at"]
    assert (load_metrics(tmp_path / "ceiling").step < info["step"]).all()


def test_checkpoint_minutes_checkpoints_by_wall_time(tmp_path, monkeypatch):
    saved = []
    save = RunRecord.save_checkpoint
    monkeypatch.setattr(
        RunRecord,
        "save_checkpoint",
        lambda self, step, state: (saved.append(step), save(self, step, state)),
    )
    args = _by_steps(6, "log_every=2 checkpoint_every=1000")
    _run(args, tmp_path / "steps")
    assert saved == [18]  # by steps: only the last step
    saved.clear()
    _run(args + ["checkpoint_minutes=1e-9"], tmp_path / "minutes")
    assert saved == list(range(2, 19, 2))  # every log point: the wall time has always passed
