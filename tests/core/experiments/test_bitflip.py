"""The bit-flip experiment: ensemble members equal single runs, the command line, resume."""

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from core.experiments import bitflip
from core.experiments.bitflip import Config, build, run, train
from core.run.config import parse_overrides
from core.run.record import RunRecord, load_metrics
from core.run.specs import CBPSpec, OptimizerSpec, ShrinkPerturbSpec

METHODS = ("sgd", "adam", "noisy_sgd", "cbp", "adam_cbp", "sgd_then_cbp")
# CBP settings that replace units within 10,000 steps (the paper's rate would need millions).
FAST_CBP = dict(cbp=CBPSpec(replacement_rate=1e-2, maturity=50), switch_step=4000)


def _final_weights(cfg: Config):
    stream, learner = build(cfg)
    train(learner, stream, 0, cfg.steps, cfg.bin_size)
    return learner.weights(), learner.replacements()


def _alone(cfg: Config, member, **changes) -> Config:
    return dataclasses.replace(
        cfg, method=(member.method,), lr=(member.lr,), seed=(member.seed,), **changes
    )


def test_ensemble_member_equals_the_single_run_over_10000_steps():
    """Member k of a 12-member ensemble (6 methods x 2 lrs) has the weights of the single run
    with its config (`python -m core.experiments.bitflip method=.. lr=.. seed=..`)."""
    cfg = Config(steps=10_000, method=METHODS, lr=(0.01, 0.003), seed=(2,), **FAST_CBP)
    weights, replaced = _final_weights(cfg)
    for k, member in enumerate(cfg.members()):
        if member.lr != 0.003:
            continue
        alone, alone_replaced = _final_weights(_alone(cfg, member))
        diff = max((weights[name][k] - alone[name][0]).abs().max().item() for name in weights)
        assert diff <= 1e-6, member.name
        assert replaced[k] == alone_replaced[0]
        if "cbp" in member.method:
            assert replaced[k] > 10


@pytest.fixture(scope="module")
def float64_ensemble():
    cfg = Config(
        steps=6000,
        method=METHODS,
        seed=(3,),
        dtype="float64",
        cbp=CBPSpec(replacement_rate=1e-2, maturity=50),
        switch_step=2000,
    )
    return cfg, *_final_weights(cfg)


@pytest.mark.parametrize("method", METHODS)
def test_ensemble_member_equals_the_plain_eager_run(float64_ensemble, method):
    """The batched manual forward/backward, optimizers and CBP against nn.Module + autograd +
    torch.optim / NoisySGD / ContinualBackprop, in float64 (float32 differs by GEMM vs GEMV
    rounding, ~1e-6 after 10,000 steps; see docs/bitflip.md)."""
    cfg, weights, replaced = float64_ensemble
    k = METHODS.index(method)
    eager, eager_replaced = _final_weights(_alone(cfg, cfg.members()[k], engine="eager"))
    for name in weights:
        torch.testing.assert_close(weights[name][k], eager[name][0], atol=1e-9, rtol=0)
    assert replaced[k] == eager_replaced[0]
    if "cbp" in method:
        assert replaced[k] > 10


def test_command_line_runs_sgd_then_cbp(tmp_path):
    run_dir = tmp_path / "trial"
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "core.experiments.bitflip",
            "steps=40000",
            "method=sgd_then_cbp",
            "--run-dir",
            str(run_dir),
        ],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[3],
        timeout=600,
    )
    assert out.returncode == 0, out.stderr
    (member,) = (run_dir / "members").iterdir()
    assert member.name == "sgd_then_cbp-lr0.01-seed42"
    config = json.loads((member / "config.json").read_text())["config"]
    assert (config["method"], config["lr"], config["seed"], config["switch_step"]) == (
        "sgd_then_cbp",
        0.01,
        42,
        20_000,  # the default: steps // 2
    )
    frame = load_metrics(member)
    loss = frame[(frame.split == "train") & (frame.metric == "loss")]
    assert loss.step.tolist() == list(range(1000, 40_001, 1000))
    assert loss.value.notna().all()
    probe = frame[frame.split == "probe"]
    assert set(probe.step) == set(range(10_000, 40_001, 10_000))  # the default cadence
    assert {"loss", "effective_rank"} <= set(probe.metric)
    replaced = frame[(frame.split == "train") & (frame.metric == "cbp_replaced")]
    assert set(replaced.layer) == {"hidden"} and len(replaced) == 40
    assert replaced[replaced.step <= 20_000].value.sum() == 0  # SGD before the switch
    assert replaced.value.sum() > 0
    assert json.loads((member / "status.json").read_text())["status"] == "completed"
    assert json.loads((run_dir / "status.json").read_text())["status"] == "completed"


class _Killed(Exception):
    pass


@pytest.mark.parametrize("engine", ["batched", "native"])
def test_a_killed_trial_resumes_without_duplicating_or_losing_rows(tmp_path, monkeypatch, engine):
    cfg = Config(
        steps=6000,
        method=("sgd", "cbp"),
        seed=(0, 1),
        bin_size=500,
        metrics_every=1000,
        checkpoint_every=2000,
        cbp=CBPSpec(replacement_rate=1e-2, maturity=50),
        engine=engine,
    )
    run(cfg, RunRecord(tmp_path / "straight"))

    original = RunRecord.save_checkpoint

    def killed_at_4000(self, step, state):
        if step == 4000:  # member rows up to 4000 are flushed, the trial checkpoint is not
            raise _Killed
        original(self, step, state)

    monkeypatch.setattr(RunRecord, "save_checkpoint", killed_at_4000)
    with pytest.raises(_Killed):
        run(cfg, RunRecord(tmp_path / "killed"))
    monkeypatch.setattr(RunRecord, "save_checkpoint", original)
    run(cfg, RunRecord(tmp_path / "killed"))

    dirs = [Path()] + [Path("members") / m.name for m in cfg.members()]  # trial, then members
    for sub in dirs:
        a = load_metrics(tmp_path / "straight" / sub)
        b = load_metrics(tmp_path / "killed" / sub)
        assert len(a) > 0
        key = ["step", "split", "layer", "metric"]
        assert not b.duplicated(key).any()
        pd.testing.assert_frame_equal(
            a.drop(columns="run_id").sort_values(key).reset_index(drop=True),
            b.drop(columns="run_id").sort_values(key).reset_index(drop=True),
        )


def test_member_records_carry_scalar_configs(tmp_path):
    cfg = Config(steps=2000, method=("sgd", "adam"), lr=(0.01, 0.001), seed=(7,))
    summary = run(cfg, RunRecord(tmp_path))
    assert summary["members"] == 4
    names = sorted(p.name for p in (tmp_path / "members").iterdir())
    assert names == sorted(m.name for m in cfg.members())
    config = json.loads((tmp_path / "members" / "adam-lr0.001-seed7" / "config.json").read_text())
    assert config["config"]["method"] == "adam" and config["config"]["lr"] == 0.001


def test_bad_configs_fail_before_any_work():
    with pytest.raises(ValueError, match="sgd, adam, noisy_sgd, cbp, adam_cbp, sgd_then_cbp"):
        Config(method=("sgdd",))
    with pytest.raises(ValueError, match="cbp.util_type='contrib'; valid: contribution"):
        parse_overrides(Config, ["cbp.util_type=contrib"])
    with pytest.raises(ValueError, match="threshold='paper'; valid: code, latex, dohare"):
        parse_overrides(Config, ["threshold=paper"])
    with pytest.raises(ValueError, match="method picks"):
        parse_overrides(Config, ["optimizer.name=adam"])
    with pytest.raises(ValueError, match="width=0 is the linear learner"):
        Config(method=("cbp",), width=0)
    with pytest.raises(ValueError, match="ReDo is not available"):
        parse_overrides(Config, ["redo.enabled=true"])
    with pytest.raises(ValueError, match="one member"):
        Config(engine="eager", seed=(1, 2))
    with pytest.raises(ValueError, match="multiple of bin_size"):
        Config(metrics_every=1500)
    assert bitflip.Config().steps == 5_000_000


@pytest.mark.parametrize(
    "activation", ["leaky_relu", "tanh", "sigmoid", "gelu", "elu", "selu", "swish", "identity"]
)
def test_every_activation_and_an_input_dependent_utility_match_the_eager_run(activation):
    cfg = Config(
        steps=1000,
        method=("cbp",),
        activation=activation,
        dtype="float64",
        cbp=CBPSpec(replacement_rate=0.05, maturity=10, util_type="adaptable_contribution"),
    )
    weights, replaced = _final_weights(cfg)
    eager, eager_replaced = _final_weights(dataclasses.replace(cfg, engine="eager"))
    for name in weights:
        torch.testing.assert_close(weights[name], eager[name], atol=1e-9, rtol=0)
    assert replaced[0] == eager_replaced[0] > 10


@pytest.mark.parametrize("rounding", ["carry", "bernoulli"])
def test_several_replacements_per_step_match_the_eager_run(rounding):
    """rate * width = 2.5: up to 3 units a step, each taking its own candidate row."""
    cfg = Config(
        steps=1000,
        method=("cbp",),
        width=10,
        dtype="float64",
        cbp=CBPSpec(replacement_rate=0.25, maturity=20, rounding=rounding),
    )
    weights, replaced = _final_weights(cfg)
    eager, eager_replaced = _final_weights(dataclasses.replace(cfg, engine="eager"))
    for name in weights:
        torch.testing.assert_close(weights[name], eager[name], atol=1e-9, rtol=0)
    assert replaced[0] == eager_replaced[0] > 300


NATIVE = ("sgd", "sgd_then_cbp", "cbp")


@pytest.mark.parametrize(
    "cbp",
    [
        CBPSpec(replacement_rate=1e-2, maturity=50),
        CBPSpec(
            replacement_rate=1e-2,
            maturity=50,
            util_type="adaptable_contribution",
            rounding="bernoulli",
            bias_correction=False,
        ),
        CBPSpec(replacement_rate=1e-2, maturity=50, util_type="random"),
        CBPSpec(replacement_rate=0.3, maturity=20, util_type="zero_contribution"),  # up to 3 a step
    ],
    ids=["contribution", "adaptable-bernoulli", "random", "several-per-step"],
)
def test_the_native_loop_equals_the_batched_engine_and_the_eager_run(cbp):
    """engine=native (the compiled loop) against engine=batched member for member in float64, and
    against the plain eager run for the member that switches to CBP."""
    cfg = Config(steps=4000, width=7, method=NATIVE, seed=(3, 4), dtype="float64", cbp=cbp,
                 switch_step=1500, bin_size=500)  # fmt: skip
    native, native_replaced = _final_weights(dataclasses.replace(cfg, engine="native"))
    batched, batched_replaced = _final_weights(cfg)
    for name in native:
        torch.testing.assert_close(native[name], batched[name], atol=1e-12, rtol=0)
    assert native_replaced.tolist() == batched_replaced.tolist()
    assert native_replaced[:2].sum() == 0 and min(native_replaced[2:]) > 10
    k = 2  # sgd_then_cbp, seed 3
    eager, eager_replaced = _final_weights(_alone(cfg, cfg.members()[k], engine="eager"))
    for name in native:
        torch.testing.assert_close(native[name][k], eager[name][0], atol=1e-9, rtol=0)
    assert native_replaced[k] == eager_replaced[0]


def test_a_native_member_equals_the_native_run_of_it_alone_bit_for_bit():
    cbp = CBPSpec(replacement_rate=2e-2, maturity=30)
    cfg = Config(steps=3000, width=9, method=NATIVE, seed=(5, 6, 7), engine="native", cbp=cbp,
                 switch_step=1000)  # fmt: skip
    weights, replaced = _final_weights(cfg)
    for k, member in enumerate(cfg.members()):
        alone, alone_replaced = _final_weights(_alone(cfg, member))
        for name in weights:
            assert torch.equal(weights[name][k], alone[name][0]), (member.name, name)
        assert replaced[k] == alone_replaced[0]


def test_the_native_engine_refuses_what_it_does_not_run():
    with pytest.raises(ValueError, match="valid: sgd, cbp, sgd_then_cbp"):
        Config(engine="native", method=("adam",))
    with pytest.raises(ValueError, match="activation=relu; got width=5, activation=tanh"):
        Config(engine="native", activation="tanh")
    with pytest.raises(ValueError, match="weight_decay=0"):
        parse_overrides(Config, ["engine=native", "optimizer.weight_decay=0.1"])
    with pytest.raises(ValueError, match="engine='turbo'; valid: batched, native, eager"):
        Config(engine="turbo")


def test_member_records_equal_the_eager_runs_records(tmp_path):
    """Loss bins and the probe's metrics of an ensemble member equal those of the plain run."""
    cfg = Config(
        steps=2000,
        method=("sgd", "cbp"),
        seed=(4,),
        dtype="float64",
        bin_size=500,
        metrics_every=1000,
        cbp=CBPSpec(replacement_rate=0.02, maturity=20),
    )
    run(cfg, RunRecord(tmp_path / "ensemble"))
    for member in cfg.members():
        run(_alone(cfg, member, engine="eager"), RunRecord(tmp_path / member.name))
        a = load_metrics(tmp_path / "ensemble" / "members" / member.name)
        b = load_metrics(tmp_path / member.name / "members" / member.name)
        assert set(a.split) == {"train", "probe"}
        assert {"hidden/effective_rank", "hidden/dead_fraction"} <= set(a.layer + "/" + a.metric)
        key = ["step", "split", "layer", "metric"]
        a, b = (f.sort_values(key).reset_index(drop=True) for f in (a, b))
        assert a[key].equals(b[key])
        torch.testing.assert_close(
            torch.tensor(a.value.values), torch.tensor(b.value.values), atol=1e-9, rtol=1e-9
        )


def test_a_diverging_member_is_marked_and_the_others_complete(tmp_path):
    cfg = Config(steps=2000, method=("sgd",), lr=(0.01, 50.0), seed=(1,), metrics_every=1000)
    summary = run(cfg, RunRecord(tmp_path))
    status = {
        m.name: json.loads((tmp_path / "members" / m.name / "status.json").read_text())["status"]
        for m in cfg.members()
    }
    assert status == {"sgd-lr0.01-seed1": "completed", "sgd-lr50-seed1": "diverged"}
    assert json.loads((tmp_path / "status.json").read_text())["status"] == "diverged"
    assert summary["final_loss"]["sgd-lr0.01-seed1"] < 10


def test_a_finished_trial_is_not_run_again_and_a_crash_is_recorded(tmp_path, monkeypatch):
    cfg = Config(steps=2000, method=("sgd",), seed=(3,), metrics_every=1000)
    record = RunRecord(tmp_path / "done")
    summary = run(cfg, record)
    rows = load_metrics(tmp_path / "done" / "members" / "sgd-lr0.01-seed3")

    def must_not_train(*args, **kwargs):
        raise AssertionError("a completed trial was trained again")

    monkeypatch.setattr(bitflip, "train", must_not_train)
    again = run(cfg, RunRecord(tmp_path / "done"))
    assert json.loads(json.dumps(summary)) == again
    pd.testing.assert_frame_equal(
        rows, load_metrics(tmp_path / "done" / "members" / "sgd-lr0.01-seed3")
    )

    crashed = RunRecord(tmp_path / "crashed")
    with pytest.raises(AssertionError, match="trained again"):
        run(cfg, crashed)
    info = json.loads((tmp_path / "crashed" / "status.json").read_text())
    assert info["status"] == "failed" and "trained again" in info["reason"]


def test_the_trial_record_holds_the_members_mean_probe_metrics(tmp_path):
    cfg = Config(steps=2000, method=("sgd", "cbp"), seed=(1, 2), metrics_every=1000)
    run(cfg, RunRecord(tmp_path))
    trial = load_metrics(tmp_path)
    trial = trial[trial["split"] == "probe"]
    members = pd.concat([load_metrics(tmp_path / "members" / m.name) for m in cfg.members()])
    members = members[members["split"] == "probe"]
    expected = members.groupby(["step", "layer", "metric"])["value"].mean().reset_index()
    expected["layer"] = ("ensemble/" + expected["layer"]).str.rstrip("/")
    expected["metric"] += "_mean"
    got = trial[["step", "layer", "metric", "value"]]
    key = ["step", "layer", "metric"]
    assert len(got) == len(expected) > 2 * len(cfg.members())
    pd.testing.assert_frame_equal(
        got.sort_values(key).reset_index(drop=True),
        expected.sort_values(key).reset_index(drop=True),
        rtol=1e-12,
    )


# Dohare et al.'s slowly-changing-regression settings (docs/bitflip.md), at a fast CBP rate.
DOHARE = dict(
    threshold="dohare",
    flip="redraw",
    bias_input=False,
    flip_period=500,
    cbp=CBPSpec(
        replacement_rate=2e-2, maturity=10, util_type="adaptable_contribution", rounding="bernoulli"
    ),
)


@pytest.mark.parametrize(
    "changes",
    [
        dict(activation="swish"),
        dict(optimizer=OptimizerSpec(momentum=0.0, decay=1.0, weight_decay=1e-2)),
        dict(
            optimizer=OptimizerSpec(momentum=0.0, decay=1.0, weight_decay=1e-2),
            shrink_perturb=ShrinkPerturbSpec(enabled=True, noise_std=1e-3),
        ),
        dict(
            optimizer=OptimizerSpec(momentum=0.0, decay=1.0, adam_step="element"),
            cbp=CBPSpec(replacement_rate=2e-2, maturity=10, util_type="random"),
        ),
    ],
    ids=["swish", "l2", "shrink_perturb", "adam_element_random"],
)
def test_dohare_settings_match_the_eager_run_member_for_member(changes):
    """His threshold, 20-input learner, redraw flips, Bernoulli rounding, maturity, utilities,
    L2, shrink-and-perturb, swish and CBP on Adam with per-element steps: every member of the
    ensemble equals its plain eager run (float64) and CBP replaces units."""
    cfg = Config(
        steps=1500,
        method=("sgd", "adam", "cbp", "adam_cbp"),
        seed=(5,),
        dtype="float64",
        **{**DOHARE, **changes},
    )
    weights, replaced = _final_weights(cfg)
    assert weights["fc1.weight"].shape == (4, 5, 20)  # fan-in 20: no bias input
    for k, member in enumerate(cfg.members()):
        eager, eager_replaced = _final_weights(_alone(cfg, member, engine="eager"))
        for name in weights:
            torch.testing.assert_close(weights[name][k], eager[name][0], atol=1e-9, rtol=0)
        assert replaced[k] == eager_replaced[0]
        if "cbp" in member.method:
            assert replaced[k] > 10


@pytest.mark.parametrize("method", ["sgd", "adam"])
def test_the_linear_learner_matches_the_eager_run(method):
    cfg = Config(
        steps=1000,
        width=0,
        method=(method,),
        seed=(2,),
        dtype="float64",
        **{k: v for k, v in DOHARE.items() if k != "cbp"},
    )
    weights, _ = _final_weights(cfg)
    eager, _ = _final_weights(dataclasses.replace(cfg, engine="eager"))
    assert set(weights) == {"fc.weight", "fc.bias"} and weights["fc.weight"].shape == (1, 1, 20)
    for name in weights:
        torch.testing.assert_close(weights[name], eager[name], atol=1e-9, rtol=0)


def test_the_probe_size_changes_no_training_input_nor_weight():
    a = Config(steps=2000, method=("sgd", "cbp"), seed=(1,), probe_size=16, **FAST_CBP)
    b = dataclasses.replace(a, probe_size=256)
    for x, y in zip(_final_weights(a)[0].values(), _final_weights(b)[0].values()):
        assert torch.equal(x, y)


def test_dohare_commands_parse_as_documented():
    """The override strings of docs/bitflip.md's table give the settings they claim."""
    cfg = parse_overrides(
        Config,
        [
            "threshold=dohare",
            "flip=redraw",
            "bias_input=false",
            "steps=1000000",
            "method=cbp",
            "lr=0.01",
            "cbp.replacement_rate=1e-4",
            "cbp.decay=0.99",
            "cbp.maturity=10",
            "cbp.util_type=adaptable_contribution",
            "cbp.rounding=bernoulli",
            "cbp.bias_correction=false",
            "seed=0,1,2",
        ],
    )
    assert cfg.problem().input_dim == 20 and cfg.cbp.maturity == 10 and len(cfg.members()) == 3
    snp = parse_overrides(
        Config,
        [
            "method=adam",
            "activation=swish",
            "optimizer.weight_decay=1e-3",
            "shrink_perturb.enabled=true",
            "shrink_perturb.noise_std=1e-4",
        ],
    )
    assert snp.optimizer.weight_decay == 1e-3 and snp.shrink_perturb.noise_std == 1e-4
    element = parse_overrides(Config, ["method=adam_cbp", "optimizer.adam_step=element"])
    assert element.settings().optimizer.adam_step == "element"


def test_a_linear_trial_records_its_probe_loss(tmp_path):
    cfg = Config(steps=2000, width=0, method=("sgd",), seed=(1,), metrics_every=1000)
    run(cfg, RunRecord(tmp_path))
    frame = load_metrics(tmp_path / "members" / "sgd-lr0.01-seed1")
    probe = frame[frame.split == "probe"]
    assert probe.metric.tolist() == ["loss", "loss"] and probe.value.notna().all()
