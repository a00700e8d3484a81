"""The config dialect: every spec refuses a bad value with the valid ones listed, under the key's
path, in every experiment, before anything runs; `--help` documents every key."""

from __future__ import annotations

import dataclasses

import pytest

from core.run.config import config_help, experiment_config, experiment_module, field_types
from core.run.schema import EXPERIMENTS
from core.run.specs import CBPSpec, ModelSpec, OptimizerSpec, ReDoSpec, ShrinkPerturbSpec

SPEC_FIELDS = {
    "model": ModelSpec,
    "optimizer": OptimizerSpec,
    "cbp": CBPSpec,
    "redo": ReDoSpec,
    "shrink_perturb": ShrinkPerturbSpec,
}
BAD = [
    ("model.activation", "rleu", "valid: relu, leaky_relu, tanh"),
    ("cbp.util_type", "contrib", "valid: contribution, zero_contribution, adaptable_contribution"),
    ("optimizer.name", "adamw", "valid: sgd, adam, noisy_sgd"),
    ("optimizer.adam_step", "layer", "valid: tensor, element"),
    ("cbp.rounding", "round", "valid: carry, bernoulli"),
    ("redo.period", 0, r"valid: \[1, inf\)"),
    ("shrink_perturb.shrink", 1.0, r"valid: \[0.0, 1.0\)"),
]


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_has_the_shared_specs_under_the_same_keys(experiment):
    config = experiment_module(experiment).Config
    types = {f.name: f.type for f in dataclasses.fields(config)}
    shared = [name for name in SPEC_FIELDS if name in types]
    # the bit-flip learner may keep its shape in its own keys (width, activation)
    assert set(SPEC_FIELDS) - set(shared) <= ({"model"} if experiment == "bitflip" else set())
    keys = field_types(config)
    for name in shared:
        assert config.__dataclass_fields__[name].default_factory().__class__ is SPEC_FIELDS[name]
        assert all(f"{name}.{f}" in keys for f in field_types(SPEC_FIELDS[name]))


@pytest.mark.parametrize(
    ("experiment", "key", "value", "valid"),
    [(e, *bad) for e in EXPERIMENTS for bad in BAD if e != "bitflip" or bad[0][:6] != "model."],
)
def test_a_bad_value_is_refused_naming_the_key_and_the_valid_values(experiment, key, value, valid):
    with pytest.raises(ValueError, match=f"^{key}={value!r}; {valid}"):
        experiment_config(experiment, {key: value})


def test_a_model_field_of_another_arch_is_refused_under_model():
    with pytest.raises(ValueError, match="^model: hidden_sizes do not apply to arch 'cnn'"):
        experiment_config("cloning", {"model.arch": "cnn", "model.hidden_sizes": (4,)})


def test_an_unknown_experiment_lists_the_valid_ones():
    with pytest.raises(ValueError, match="valid: continual, cloning, bitflip"):
        experiment_module("cifar")


def test_help_lists_every_key_with_its_default_type_and_doc():
    config = experiment_module("continual").Config
    text = config_help(config)
    lines = {line.split("=")[0].strip(): line for line in text.splitlines()}
    assert list(lines) == list(field_types(config))
    assert "cbp.replacement_rate=0.0001  (float)" in lines["cbp.replacement_rate"]
    assert lines["cbp.replacement_rate"].endswith(
        "fraction of mature units replaced per step (rho)"
    )
    assert "num_tasks=null  (int | null)" in lines["num_tasks"]
    assert "task_unit=epochs  (epochs|steps)" in lines["task_unit"]
    # the model keys take their docs from core.models.ModelConfig, whose fields they are
    assert lines["model.hidden_sizes"].endswith("MLP / bit-flip learner hidden widths")
    undocumented = [key for key, line in lines.items() if not line.split(")", 1)[1].strip()]
    assert undocumented == []
