"""The config fields both image experiments take under the same keys, and their checks."""

from __future__ import annotations

import pytest

from core.experiments import cloning, continual
from core.experiments.image_config import ImageConfig
from core.run.config import apply_overrides, field_types, parse_overrides


def test_both_experiments_take_the_shared_fields_under_the_same_keys():
    shared = list(field_types(ImageConfig))
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
        (cloning, ["divergence_ceiling=0.5"], r"divergence_ceiling=0.5; valid: \(1.0, inf\)"),
        (continual, ["checkpoint_minutes=0"], r"checkpoint_minutes=0.0; valid: \(0.0, inf\)"),
    ],
)
def test_a_bad_length_or_cadence_is_refused_naming_every_such_key(module, args, named):
    with pytest.raises(ValueError, match=named):
        parse_overrides(module.Config, args)


def test_a_choice_given_as_a_value_is_checked_too():
    # a sweep's grid point holds typed values (no text parsing): the Config still checks them
    with pytest.raises(ValueError, match="^dataset='cifar11'; valid: cifar10, cifar100"):
        apply_overrides(cloning.Config, {"dataset": "cifar11"})
    with pytest.raises(ValueError, match="^task_unit='days'; valid: epochs, steps"):
        apply_overrides(continual.Config, {"task_unit": "days"})
