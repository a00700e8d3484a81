"""What the image experiments share: the running loss/accuracy with its first non-finite step,
and the config fields both experiments take under the same keys."""

from __future__ import annotations

import math

import pytest
import torch

from core.experiments import cloning, continual
from core.experiments.overrides import field_types, parse_overrides
from core.experiments.training import RunningStats, TrainingConfig


def _add(stats, step, loss, correct, correct_all, n):
    stats.add(step, torch.tensor(loss), torch.tensor(correct), torch.tensor(correct_all), n)


def test_running_stats_are_means_over_samples_since_the_reset():
    stats = RunningStats(torch.device("cpu"))
    _add(stats, 1, 2.0, 3, 4, 4)
    _add(stats, 2, 0.5, 1, 1, 2)
    means, bad = stats.read()
    assert bad is None
    assert means == {"loss": (2.0 * 4 + 0.5 * 2) / 6, "acc": 4 / 6, "acc_unmasked": 5 / 6}
    stats.reset()
    _add(stats, 3, 1.0, 0, 1, 2)
    assert stats.read() == ({"loss": 1.0, "acc": 0.0, "acc_unmasked": 0.5}, None)


@pytest.mark.parametrize("bad_values", [[math.nan], [math.inf], [math.inf, math.nan, -math.inf]])
def test_running_stats_report_the_first_non_finite_step(bad_values):
    stats = RunningStats(torch.device("cpu"))
    losses = [1.0, 2.0, *bad_values, 1.0]  # finite again after the non-finite ones
    for step, loss in enumerate(losses, start=11):
        _add(stats, step, loss, 1, 1, 8)
    means, bad = stats.read()
    assert bad == 13 and not math.isfinite(means["loss"])
    stats.reset()  # a new log interval starts clean
    _add(stats, 16, 1.0, 1, 1, 8)
    assert stats.read()[1] is None


def test_both_experiments_take_the_shared_fields_under_the_same_keys():
    shared = list(field_types(TrainingConfig))
    for module in (continual, cloning):
        keys = list(field_types(module.Config))
        assert keys[: len(shared)] == shared
        cfg = parse_overrides(module.Config, ["seed=7", "probe_every=2", "device=cpu"])
        assert (cfg.seed, cfg.probe_every, cfg.device) == (7, 2, "cpu")
    # each experiment keeps its own defaults for the shared keys it sets
    assert continual.Config().dataset == "tiny_imagenet" and cloning.Config().dataset == "cifar10"
    assert continual.Config().optimizer.name == "adam" and cloning.Config().optimizer.name == "sgd"


@pytest.mark.parametrize(
    ("module", "args", "named"),
    [
        (continual, ["batch_size=0", "task_length=0"], "batch_size, task_length must be >= 1"),
        (cloning, ["probe_size=0", "clone_epochs=0"], "probe_size, clone_epochs must be >= 1"),
        (cloning, ["log_every=0"], "log_every must be >= 1"),
        (cloning, ["factor=1"], "factor must be >= 2"),
    ],
)
def test_a_non_positive_length_is_refused_naming_every_such_key(module, args, named):
    with pytest.raises(ValueError, match=named):
        parse_overrides(module.Config, args)
