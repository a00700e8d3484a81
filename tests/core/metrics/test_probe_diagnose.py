"""The probe's `diagnose` option: the clone partition and frozen units of `core.diagnose` per layer
at every probe, in the image experiments (through the shared probe) and per bit-flip member.

Checked against planted structure (clones copied by hand, `expand`, frozen units made by a large
negative bias) and against `core.diagnose.diagnose` on the same model and batch."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from core.cloning import expand
from core.diagnose import diagnose
from core.experiments import bitflip, cloning, continual
from core.metrics import Probe, ProbeSpec
from core.models import ModelConfig, build_model
from core.run.config import parse_overrides
from core.run.record import load_metrics
from tests.core.diagnose.test_diagnose import SMALL
from tests.core.experiments.runs import TINY, run_in_process

ROWS = ("clone_blocks", "cloned_fraction", "largest_clone_block", "frozen_fraction_all_rows")
ONLY = ProbeSpec(metrics=("dead_fraction",), diagnose=True)


def _mlp(width=8, activation="relu", seed=0):
    cfg = ModelConfig(
        arch="mlp", num_classes=4, in_shape=(3, 4, 4), hidden_sizes=(width, width),
        activation=activation, dropout=0.0,
    )  # fmt: skip
    return build_model(cfg, seed=seed)


def _batch(n=40, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 4, 4, generator=g), torch.randint(0, 4, (n,), generator=g)


def _probe(model, spec=ONLY):
    x, y = _batch()
    return Probe(model, x, y, F.cross_entropy, spec, generator=torch.Generator())()


def _rows(record, layer):
    return {k: record[f"{layer}/{k}"] for k in ROWS if f"{layer}/{k}" in record}


def _expected(d, layer, activation=True):
    """The probe's rows of `layer` from `core.diagnose`'s diagnosis of the same model (frozen
    units for an activation layer)."""
    found = d.layers[layer]
    sizes = [len(b) for b in found.clone_blocks]
    rows = {
        "clone_blocks": float(len(sizes)),
        "cloned_fraction": sum(sizes) / found.units,
        "largest_clone_block": float(max(sizes, default=0)),
    }
    if activation:
        rows["frozen_fraction_all_rows"] = len(found.frozen_units) / found.units
    return rows


@torch.no_grad()
def _plant(model, blocks):
    """Make each block of hidden1's units clones: equal incoming rows and biases (equal values),
    equal outgoing columns (equal errors)."""
    first, second = model.blocks[0].linear, model.blocks[1].linear
    for block in blocks:
        for j in block[1:]:
            first.weight[j], first.bias[j] = first.weight[block[0]], first.bias[block[0]]
            second.weight[:, j] = second.weight[:, block[0]]


def test_planted_clones_are_reported_exactly_and_as_diagnose_finds_them():
    model = _mlp()
    _plant(model, [[0, 1], [2, 3, 4]])
    record = _probe(model)
    assert _rows(record, "hidden1") == {
        "clone_blocks": 2.0,
        "cloned_fraction": 5 / 8,
        "largest_clone_block": 3.0,
        "frozen_fraction_all_rows": 0.0,
    }
    assert record["hidden2/clone_blocks"] == 0.0 and record["hidden2/cloned_fraction"] == 0.0
    d = diagnose(model, *_batch(), F.cross_entropy, stability=False)
    for layer in ("hidden1", "hidden2"):
        assert _rows(record, layer) == _expected(d, layer)


@pytest.mark.parametrize("arch", sorted(SMALL))
def test_an_expanded_model_is_all_clones_and_a_fresh_one_has_none(arch):
    base = build_model(ModelConfig(arch=arch, num_classes=4, **SMALL[arch]), seed=0)
    x = torch.randn(12, *SMALL[arch]["in_shape"], generator=torch.Generator().manual_seed(2))
    y = torch.arange(12) % 4
    for model, factor in ((base, 1), (expand(base, 3), 3)):
        record = Probe(model, x, y, F.cross_entropy, ONLY, generator=torch.Generator())()
        d = diagnose(model, x, y, F.cross_entropy, stability=False)
        for layer in model.declared_layers():
            units = d.layers[layer.name].units
            assert record[f"{layer.name}/cloned_fraction"] == (factor > 1), layer.name
            assert record[f"{layer.name}/clone_blocks"] == (units // 3 if factor > 1 else 0)
            assert record[f"{layer.name}/largest_clone_block"] == (3 if factor > 1 else 0)
            assert _rows(record, layer.name) == _expected(d, layer.name, layer.activation)


@pytest.mark.parametrize("activation, bias", [("relu", -1e4), ("tanh", 1e4)])
def test_the_frozen_rows_are_the_units_frozen_by_a_large_bias(activation, bias):
    model = _mlp(activation=activation)
    assert _probe(model)["hidden1/frozen_fraction_all_rows"] == 0.0
    with torch.no_grad():
        model.blocks[0].linear.bias[[1, 6]] = bias  # ReLU: dead; tanh: saturated on every row
    record = _probe(model)
    assert record["hidden1/frozen_fraction_all_rows"] == 2 / 8
    assert record["hidden1/clone_blocks"] == 0.0  # frozen units share values, not errors
    d = diagnose(model, *_batch(), F.cross_entropy, stability=False)
    assert d.layers["hidden1"].frozen_units == [1, 6]
    for layer in ("hidden1", "hidden2"):
        assert _rows(record, layer) == _expected(d, layer)


def test_off_by_default_and_validated():
    record = _probe(_mlp(), ProbeSpec(metrics=("dead_fraction",)))
    assert not any(k.endswith(ROWS) for k in record)
    with pytest.raises(ValueError, match="probe diagnose must be true or false"):
        ProbeSpec(diagnose="yes")
    cfg = parse_overrides(cloning.Config, ["probe.diagnose=true"])
    assert cfg.probe.diagnose is True and cloning.Config().probe.diagnose is False
    assert bitflip.Config().probe.diagnose is False


def _diagnosed_run(experiment, tmp_path, settings: str):
    """The metrics of an `experiment` run with hidden sizes 6, 6, `probe.diagnose=true` and the
    space-separated `key=value` settings."""
    args = TINY + ["model.hidden_sizes=6,6", "probe.diagnose=true", *settings.split()]
    run_in_process(experiment, args, tmp_path / "run")
    return load_metrics(tmp_path / "run")


def test_a_cloning_run_records_the_clone_as_all_clones_and_the_base_as_none(tmp_path):
    settings = "model.dropout=0 batch_size=50 probe_size=20 base_epochs=1 clone_epochs=1"
    frame = _diagnosed_run(cloning, tmp_path, settings + " probe_every=1")
    cloned = frame[frame.metric == "cloned_fraction"].groupby("split")["value"]
    assert set(cloned.min().index) == {"base_train", "base_test", "clone_train", "clone_test"}
    assert (cloned.min()[["clone_train", "clone_test"]] == 1.0).all()  # SGD keeps the clones
    assert (cloned.max()[["base_train", "base_test"]] == 0.0).all()
    assert set(frame[frame.metric == "frozen_fraction_all_rows"].layer) == {"hidden1", "hidden2"}


def test_a_continual_run_records_the_rows_at_every_probe(tmp_path):
    data = "synthetic.classes=4 synthetic.train_per_class=16 synthetic.test_per_class=4"
    tasks = "classes_per_task=2 task_unit=steps task_length=10"
    frame = _diagnosed_run(
        continual, tmp_path, f"{data} {tasks} batch_size=16 probe_size=8 probe_every=5"
    )
    rows = frame[frame.metric.isin(ROWS)]
    assert set(rows.split) == {"train", "val", "start_train", "start_val"}
    assert set(rows.metric) == set(ROWS) and set(rows.layer) == {"hidden1", "hidden2"}
    fractions = rows[rows.metric.str.endswith("fraction") | (rows.metric == "cloned_fraction")]
    assert fractions.value.between(0, 1).all()
    per_probe = rows.groupby(["step", "split", "layer"]).size()
    assert (per_probe == len(ROWS)).all()


def test_bitflip_members_rows_equal_diagnose_of_each_members_model():
    cfg = parse_overrides(
        bitflip.Config,
        ["seed=1,2,3", "width=6", "steps=300", "bin_size=100", "probe.diagnose=true",
         "probe.metrics=dead_fraction"],
    )  # fmt: skip
    stream, learner = bitflip.build(cfg)
    probes = bitflip._probes(cfg, learner, stream)
    bitflip.train(learner, stream, 0, 300, 100)
    targets = stream.target(stream.probe_inputs)

    def diagnosed(k):
        return diagnose(
            learner.model_for_probe(),
            stream.probe_inputs[k],
            targets[k],
            lambda out, y: F.mse_loss(out[:, 0], y),
            stability=False,
        )

    rows = bitflip._measure(learner, probes, [True] * 3)
    for k in range(3):
        learner.load_member(k)
        assert _rows(rows[k], "hidden") == _expected(diagnosed(k), "hidden"), k
    learner.load_member(1)
    model = learner.model_for_probe()
    with torch.no_grad():  # member 1's model: hidden units 0, 1, 2 clones, unit 5 dead
        for unit in (1, 2):
            model.fc1.weight[unit], model.fc1.bias[unit] = model.fc1.weight[0], model.fc1.bias[0]
            model.fc2.weight[:, unit] = model.fc2.weight[:, 0]
        model.fc1.bias[5] = -1e4
    planted = _rows(probes[1](), "hidden")
    d = diagnosed(1)
    assert planted == _expected(d, "hidden")
    assert d.layers["hidden"].clone_blocks == [[0, 1, 2]] and 5 in d.layers["hidden"].frozen_units
    assert (planted["clone_blocks"], planted["cloned_fraction"]) == (1.0, 0.5)
