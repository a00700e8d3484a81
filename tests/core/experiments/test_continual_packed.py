"""Packed continual runs (`pack=N`) against the single runs they pack: in float64 on the CPU,
every member's rows, status and final weights equal its single run's (BatchNorm and dropout
included; a member that diverges, as its single run does, while the others go on); the keys a
packed run cannot honour are refused before any work; a killed packed run resumes to the rows of
an uninterrupted one; analysis finds the members as runs."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from analysis.runs import find_runs
from core.data import load_images
from core.experiments import continual
from core.run.config import parse_overrides
from core.run.record import RunRecord, load_metrics
from core.run.schema import members_dir, read_config
from tests.core.experiments.runs import TINY, comparable, kill_points, run_and_kill, run_in_process

SMALL = TINY + [
    "synthetic.classes=6",
    "synthetic.train_per_class=24",
    "synthetic.test_per_class=6",
    "classes_per_task=2",
    "batch_size=8",
    "probe_size=6",
    "task_unit=steps",
    "task_length=100",
    "log_every=10",
    "probe_every=50",
    "keep_final_checkpoint=true",
]
PACK = 3
TOL = 1e-10


@pytest.fixture
def float64(monkeypatch):
    """Models and network inputs in float64 (the uint8 images normalised with float64 constants),
    for the single runs and the packed run alike."""

    def images(*args, **kwargs):
        data = load_images(*args, **kwargs)
        return dataclasses.replace(data, mean=data.mean.double(), std=data.std.double())

    monkeypatch.setattr(continual, "load_images", images)
    dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(dtype)


def _final_weights(run_dir):
    _, state = RunRecord(run_dir).load_checkpoint()
    return state["model"]


def _inert(name, weights, cfg):
    """Whether `name` is the bias of a Linear/Conv right before a BatchNorm trained by Adam, or
    that norm's running mean (which tracks the bias). The bias's gradient is zero but for
    rounding (the norm removes any shift), and Adam scales that rounding noise to steps of about
    lr, so the bias follows the summation order of the matmul (bmm and mm differ in the last bit
    for some shapes) and nothing else; the model's function ignores the shift."""
    block, _, leaf = name.rpartition(".")[0].rpartition(".")
    return (
        cfg.optimizer.name == "adam"
        and not cfg.model.norm_after_activation
        and f"{block}.norm.running_mean" in weights
        and (
            name == f"{block}.norm.running_mean"
            or (leaf in ("linear", "conv") and name.endswith(".bias"))
        )
    )


def _assert_members_equal_single_runs(args, root):
    """Run seeds 5..5+PACK-1 alone and packed; compare member by member."""
    cfg = parse_overrides(continual.Config, args)
    packed_summary, packed = run_in_process(
        continual, args + ["seed=5", f"pack={PACK}"], root / "packed"
    )
    assert packed.status == "completed"
    for k in range(PACK):
        member = members_dir(packed.run_dir) / f"seed{5 + k}"
        single_summary, single = run_in_process(continual, args + [f"seed={5 + k}"], root / f"s{k}")
        assert read_config(member)["config"] == read_config(single.run_dir)["config"]
        assert RunRecord(member).status == "completed"
        got, want = comparable(member), comparable(single.run_dir)
        keys = ["step", "split", "layer", "metric"]
        assert got[keys].equals(want[keys])
        assert len(want) > 0 and want.step.max() == 300
        assert (got.value - want.value).abs().max() <= TOL, f"member {k}"
        assert set(want.split) >= {"train", "val", "start_train", "start_val"}
        weights, expected = _final_weights(member), _final_weights(single.run_dir)
        assert weights.keys() == expected.keys()
        for name, value in expected.items():
            assert value.dtype == weights[name].dtype
            tol = 1e-6 if _inert(name, expected, cfg) else TOL
            assert (weights[name] - value).abs().max() <= tol, f"member {k}: {name}"
        assert packed_summary["members"][f"{packed.run_id}/seed{5 + k}"] == single_summary


def test_mlp_members_equal_their_single_runs_with_batchnorm_and_dropout(
    tmp_path, float64, one_thread
):
    args = SMALL + [
        "model.arch=mlp",
        "model.hidden_sizes=9,9",  # bmm and mm round differently at this width
        "model.norm=batch",
        "model.dropout=0.2",
        "optimizer.name=adam",
        "optimizer.lr=1e-2",
    ]
    _assert_members_equal_single_runs(args, tmp_path)


def test_cnn_members_equal_their_single_runs_with_batchnorm_and_dropout(
    tmp_path, float64, one_thread
):
    args = SMALL + [
        "model.arch=cnn",
        "model.conv_channels=4,6",
        "model.fc_hidden=10",
        "model.norm=batch",
        "model.dropout=0.3",
        "optimizer.name=sgd",
        "optimizer.lr=0.05",
        "optimizer.momentum=0.9",
        "optimizer.weight_decay=1e-3",
    ]
    _assert_members_equal_single_runs(args, tmp_path)


def test_a_diverging_member_ends_as_its_single_run_and_the_others_go_on(
    tmp_path, float64, one_thread
):
    args = SMALL + [
        "model.arch=mlp",
        "model.hidden_sizes=9,9",
        "model.dropout=0.2",
        "optimizer.name=sgd",
        "optimizer.lr=0.03",
        "divergence_ceiling=3",  # x the first loss: 3 of the 4 seeds cross it
        "keep_final_checkpoint=false",
    ]
    summary, packed = run_in_process(continual, args + ["seed=5", "pack=4"], tmp_path / "packed")
    statuses = []
    for k in range(4):
        member = RunRecord(members_dir(packed.run_dir) / f"seed{5 + k}")
        single_summary, single = run_in_process(
            continual, args + [f"seed={5 + k}"], tmp_path / f"{k}"
        )
        assert member.status_info == single.status_info
        got, want = comparable(member.run_dir), comparable(single.run_dir)
        assert got.drop(columns="value").equals(want.drop(columns="value"))
        assert (got.value - want.value).abs().max() <= TOL
        statuses.append(single.status)
    assert set(statuses) == {"completed", "diverged"}
    diverged = [f"{packed.run_id}/seed{5 + k}" for k, s in enumerate(statuses) if s == "diverged"]
    assert packed.status == "diverged" and packed.status_info["reason"] == ", ".join(diverged)
    assert summary["steps"] == 300  # the live member ran to the end


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("cbp.enabled=true", "cbp.enabled"),
        ("redo.enabled=true", "redo.enabled"),
        ("shrink_perturb.enabled=true", "shrink_perturb.enabled"),
        ("optimizer.name=noisy_sgd", "optimizer.name"),
        ("model.arch=resnet", "model.arch"),
        ("precision.compile=true", "precision.compile"),
    ],
)
def test_what_a_packed_run_cannot_do_is_refused_before_any_work(tmp_path, override, key):
    with pytest.raises(ValueError, match=rf"pack=2: {key}=.* not supported.*valid"):
        parse_overrides(continual.Config, SMALL + ["pack=2", override])
    with pytest.raises(ValueError, match="pack must be >= 1"):
        parse_overrides(continual.Config, SMALL + ["pack=0"])


def test_killed_packed_run_resumes_to_the_uninterrupted_rows(tmp_path, one_thread):
    args = SMALL + [
        "model.arch=mlp",
        "model.hidden_sizes=8",
        "model.dropout=0.2",
        "task_length=40",
        "checkpoint_every=50",  # at steps 50 and 100, mid-task: the batch orders resume too
        "keep_final_checkpoint=false",
        "seed=1",
        f"pack={PACK}",
    ]
    _, reference = run_in_process(continual, args, tmp_path / "reference")
    for after, delay in kill_points(17, [range(50, 100, 10)], delay=0.1):
        run_and_kill("core.experiments.continual", args, tmp_path / "killed", after, delay)
    summary, resumed = run_in_process(continual, args, tmp_path / "killed")
    assert resumed.status == "completed"
    for k in range(PACK):
        name = f"seed{1 + k}"
        got = comparable(members_dir(resumed.run_dir) / name)
        assert got.equals(comparable(members_dir(reference.run_dir) / name))
        assert load_metrics(members_dir(resumed.run_dir) / name).step.max() == 120
    trial = comparable(resumed.run_dir)  # the trial's own rows: the members' means
    assert len(trial) > 0 and trial.equals(comparable(reference.run_dir))
    # analysis reads each member as a run; the trial that holds them is not one
    runs = find_runs(tmp_path)
    assert reference.run_dir not in runs
    assert sorted(runs) == sorted(
        members_dir(r.run_dir) / f"seed{1 + k}" for r in (reference, resumed) for k in range(PACK)
    )
