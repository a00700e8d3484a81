"""The cloning experiment on synthetic data: exact resume after SIGKILL, the clone equal to the base
at the expansion and on the manifold under SGD, LR multipliers, the clone in the checkpoint."""

from __future__ import annotations

import pytest

from core.data import load_images
from core.experiments import cloning
from core.experiments.classification import evaluate
from core.models import ModelConfig, build_model
from core.run.record import load_metrics
from tests.core.experiments.runs import TINY, kill_points, killed_and_resumed, run_in_process

SMALL = TINY + [
    "model.hidden_sizes=8,8",
    "batch_size=32",  # 400 synthetic images: 13 steps per epoch
    "probe_size=20",
]


def _run(args, run_dir):
    return run_in_process(cloning, args, run_dir)


def _wide(frame, metric):
    rows = frame[(frame.layer == "") & (frame.metric == metric)]
    return rows.pivot_table(index="step", columns="split", values="value")


def test_killed_in_each_phase_and_resumed_equals_uninterrupted(tmp_path, one_thread):
    args = SMALL + [
        "base_epochs=3",  # expansion after step 39
        "clone_epochs=9",  # 156 steps in all
        "log_every=4",
        "probe_every=2",
        "checkpoint_every=6",
        "clone_optimizer.name=noisy_sgd",
        "clone_optimizer.sigma0=0.05",
        "clone_dropout=0.1",
        "seed=5",
    ]
    kills = kill_points(5, [range(6, 34), range(45, 110)], delay=0.1)  # one per phase
    expected = killed_and_resumed(cloning, args, tmp_path, kills)
    # noise and clone dropout moved the clone off the manifold: the clone's own streams resumed
    assert _wide(expected, "manifold_distance")["clone_train"].iloc[-1] > 0


def test_the_clone_starts_equal_to_the_base_and_stays_on_the_manifold_under_sgd(tmp_path):
    args = SMALL + [
        "model.dropout=0",
        "base_epochs=1",
        "clone_epochs=3",
        "log_every=1",
        "probe_every=1",
    ]
    _run(args, tmp_path / "run")
    frame = load_metrics(tmp_path / "run")
    first = 13 + 1  # the first step of the clone phase
    loss = _wide(frame, "loss").loc[first]
    assert loss["clone_train"] == pytest.approx(loss["base_train"], rel=1e-6, abs=1e-7)
    distance = _wide(frame, "manifold_distance")["clone_train"]
    assert len(distance) == 4 and (distance == 0).all()  # at the expansion and every epoch
    assert (_wide(frame, "r2_mean")["clone_train"] == 1).all()
    at_expansion = frame[(frame.step == 13) & (frame.metric == "max_abs_diff_output")]
    assert at_expansion.value.item() < 1e-5


@pytest.mark.parametrize("norm", ["none", "batch"])
def test_with_lr_multipliers_sgd_on_the_clone_tracks_the_base(tmp_path, norm):
    args = SMALL + [
        f"model.norm={norm}",
        "model.dropout=0",
        "base_epochs=0",
        "clone_epochs=4",
        "log_every=1",
        "optimizer.momentum=0",
        "clone_optimizer.momentum=0",
        "lr_multipliers=true",
    ]
    _run(args, tmp_path / "with")
    _run(args[:-1], tmp_path / "without")
    for name, bound in (("with", 1e-5), ("without", None)):
        loss = _wide(load_metrics(tmp_path / name), "loss")
        gap = (loss["clone_train"] - loss["base_train"]).abs().max()
        if bound is not None:
            assert gap < bound
        else:
            assert gap > 1e-3  # plain SGD moves the clone's effective base at other rates


def test_the_checkpoint_holds_the_clone_under_model_and_model_config(tmp_path):
    args = SMALL + ["base_epochs=1", "clone_epochs=1", "keep_final_checkpoint=true"]
    summary, record = _run(args, tmp_path / "run")
    _, state = record.load_checkpoint()
    config = ModelConfig(**state["model_config"])
    assert config.clone_factor == 2 and config.hidden_sizes == (16, 16)
    clone = build_model(config)
    clone.load_state_dict(state["model"])
    data = load_images("synthetic")
    assert evaluate(clone, data, data.test_x, data.test_y)["acc"] == summary["clone_test_acc"]
    assert ModelConfig(**state["base_config"]).hidden_sizes == (8, 8)


def test_a_diverging_clone_ends_the_run_diverged_with_its_step(tmp_path):
    args = SMALL + [
        "model.norm=none",
        "base_epochs=1",
        "clone_epochs=2",
        "clone_optimizer.lr=1e12",
        "clone_optimizer.momentum=0",
    ]
    summary, record = _run(args, tmp_path / "run")
    info = record.status_info
    assert info["status"] == "diverged" and summary["diverged_model"] == "clone"
    assert 14 <= info["step"] <= 39 and f"step {info['step']}" in info["reason"]
