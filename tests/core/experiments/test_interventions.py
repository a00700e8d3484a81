"""The intervention keys mean the same in both image experiments: CBP and ReDo re-initialise
units of every declared layer and log their counts per layer; shrink-and-perturb shrinks every
parameter after each step; L2 is the optimizer's weight decay."""

from __future__ import annotations

import pytest
import torch

from core.experiments import cloning, continual
from core.models import ModelConfig, build_model
from core.run.config import parse_overrides
from core.run.record import load_metrics
from core.run.seeds import seed_for
from tests.core.experiments.runs import TINY, run_in_process

EXPERIMENTS = {
    continual: [
        "synthetic.classes=4",
        "classes_per_task=2",
        "task_unit=steps",
        "task_length=20",
        "log_every=5",
    ],
    cloning: ["base_epochs=1", "clone_epochs=1", "log_every=5"],  # 400 images: 2 x 13 steps
}
UNITS = [
    "model.hidden_sizes=8,8",
    "batch_size=32",
    "probe_size=8",
    "cbp.enabled=true",
    "cbp.replacement_rate=0.2",
    "cbp.maturity=2",
    "redo.enabled=true",
    "redo.period=3",
    "redo.threshold=10",  # every unit counts as dormant: each pass resets all 8
]


@pytest.mark.parametrize("module", EXPERIMENTS, ids=lambda m: m.__name__.rsplit(".", 1)[1])
def test_cbp_and_redo_replace_units_of_every_layer_and_count_them_per_layer(tmp_path, module):
    args = TINY + EXPERIMENTS[module] + UNITS
    run_in_process(module, args, tmp_path / "run")
    frame = load_metrics(tmp_path / "run")
    counts = frame[frame.metric.isin(["cbp_replaced", "redo_reset"])]
    trained = ["train"] if module is continual else ["base_train", "clone_train"]
    assert sorted(counts.split.unique()) == trained
    for split in trained:
        rows = counts[counts.split == split]
        per_layer = rows.groupby(["layer", "metric"]).value.sum()
        assert sorted(per_layer.index) == [
            (layer, m) for layer in ("hidden1", "hidden2") for m in ("cbp_replaced", "redo_reset")
        ]
        assert (per_layer > 0).all()
        # ReDo resets every unit (threshold 10) on every 3rd step: 8 or 16 units x passes
        width = 8 if split != "clone_train" else 16
        steps = rows.step.max() - (0 if split != "clone_train" else 13)
        assert per_layer.xs("redo_reset", level="metric").tolist() == [width * (steps // 3)] * 2


@pytest.mark.parametrize("module", EXPERIMENTS, ids=lambda m: m.__name__.rsplit(".", 1)[1])
def test_shrink_perturb_without_noise_and_learning_shrinks_every_parameter(tmp_path, module):
    shrink = 0.1
    args = (
        TINY
        + EXPERIMENTS[module]
        + [
            "model.hidden_sizes=8,8",
            "model.norm=none",
            "batch_size=32",
            "probe_size=8",
            "optimizer.lr=0",
            "optimizer.momentum=0",
            "shrink_perturb.enabled=true",
            f"shrink_perturb.shrink={shrink}",
            "keep_final_checkpoint=true",
        ]
    )
    if module is continual:
        args.append("reset_head=false")
    summary, record = run_in_process(module, args, tmp_path / "run")
    _, state = record.load_checkpoint()
    # the model the run trained from step 1 (cloning: the base) against its initialisation
    config = ModelConfig(**state["base_config" if module is cloning else "model_config"])
    final = state["base" if module is cloning else "model"]
    seed = parse_overrides(module.Config, args).seed
    init = build_model(config, seed=seed_for(seed, "init")).state_dict()
    assert set(final) == set(init)
    for name, value in init.items():
        torch.testing.assert_close(final[name], value * (1 - shrink) ** summary["steps"])


@pytest.mark.parametrize("module", EXPERIMENTS, ids=lambda m: m.__name__.rsplit(".", 1)[1])
def test_l2_is_the_optimizer_weight_decay(module):
    cfg = parse_overrides(module.Config, ["optimizer.weight_decay=0.25", "optimizer.name=adam"])
    assert (cfg.optimizer.name, cfg.optimizer.weight_decay) == ("adam", 0.25)
