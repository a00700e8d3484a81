"""The precision options (`precision.*`, core.run.precision): validation before any work, the TF32
flags restored, what the training forward does, and each option's effect on clone exactness: a
noise-free clone (no dropout, plain SGD with the LR multipliers under which it tracks its base)
trained a few hundred steps in the cloning experiment, checked on the manifold bit for bit and
against its base (docs/precision.md records the figures)."""

from __future__ import annotations

import shutil

import pytest
import torch
import torch.nn.functional as F

from core.cloning import expand, manifold_distance, param_groups
from core.experiments import cloning, continual
from core.models import ModelConfig, build_model
from core.run import precision
from core.run.config import experiment_config
from core.run.record import RunRecord, load_metrics
from core.run.specs import PrecisionSpec

CPU = torch.device("cpu")


def test_bad_values_are_refused_listing_the_valid_ones():
    with pytest.raises(ValueError, match=r"precision\.matmul='fp16'; valid: highest, tf32"):
        experiment_config("cloning", {"precision.matmul": "fp16"})
    with pytest.raises(ValueError, match=r"precision\.autocast='fp16'; valid: none, bf16"):
        experiment_config("continual", {"precision.autocast": "fp16"})


def test_tf32_on_the_cpu_is_refused_when_parsed_and_when_the_device_resolves(tmp_path):
    with pytest.raises(ValueError, match="precision.matmul='tf32' needs a CUDA GPU"):
        experiment_config("cloning", {"precision.matmul": "tf32", "device": "cpu"})
    if torch.cuda.is_available():
        pytest.skip("device=auto resolves to a GPU here")
    cfg = experiment_config(
        "cloning", {"precision.matmul": "tf32", "device": "auto", "dataset": "synthetic"}
    )
    record = RunRecord(tmp_path / "run")
    with pytest.raises(ValueError, match="not device cpu; valid there: highest"):
        cloning.run(cfg, record)
    assert not (tmp_path / "run" / "config.json").exists()  # refused before any work


def test_bf16_autocast_on_the_cpu_is_accepted():
    cfg = experiment_config("cloning", {"precision.autocast": "bf16", "device": "cpu"})
    assert cfg.precision == PrecisionSpec(autocast="bf16")


def test_the_scope_sets_the_tf32_flags_and_restores_them():
    flags = (torch.backends.cuda.matmul, torch.backends.cudnn)
    saved = [f.allow_tf32 for f in flags]
    try:
        for f in flags:
            f.allow_tf32 = True
        with precision.precision_scope(PrecisionSpec(), CPU):
            assert [f.allow_tf32 for f in flags] == [False, False]  # highest: no TF32 anywhere
        assert [f.allow_tf32 for f in flags] == [True, True]
        with pytest.raises(RuntimeError), precision.precision_scope(PrecisionSpec(), CPU):
            raise RuntimeError  # restored on an error too
        assert [f.allow_tf32 for f in flags] == [True, True]
    finally:
        for f, value in zip(flags, saved, strict=True):
            f.allow_tf32 = value


def _cnn() -> torch.nn.Module:
    cfg = ModelConfig(
        arch="cnn", in_shape=(3, 8, 8), num_classes=4, conv_channels=(4, 8), fc_hidden=(8,)
    )
    return build_model(cfg, seed=0).eval()


def test_the_default_forward_is_the_model_itself():
    model = _cnn()
    assert precision.training_forward(model, PrecisionSpec(), CPU) is model


def test_channels_last_reorders_memory_not_values():
    model, x = _cnn(), torch.randn(5, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    expected = model(x)
    forward = precision.training_forward(model, PrecisionSpec(channels_last=True), CPU)
    kernel = model.stages[0].conv.weight
    assert kernel.is_contiguous(memory_format=torch.channels_last) and not kernel.is_contiguous()
    torch.testing.assert_close(forward(x), expected, rtol=1e-5, atol=1e-6)


def test_bf16_autocast_gives_float32_logits_computed_in_bf16():
    model, x = _cnn(), torch.randn(5, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    conv, seen = model.stages[0].conv, {}
    conv.register_forward_hook(lambda _m, _i, o: seen.update(out=o))
    out = precision.training_forward(model, PrecisionSpec(autocast="bf16"), CPU)(x)
    # the first convolution by hand with bf16-rounded inputs and weights, fp32 arithmetic
    by_hand = F.conv2d(
        x.bfloat16().float(), conv.weight.bfloat16().float(), conv.bias.bfloat16().float(), 1, 1
    )
    assert out.dtype == torch.float32 and seen["out"].dtype == torch.bfloat16
    torch.testing.assert_close(seen["out"].float(), by_hand, rtol=1e-2, atol=1e-2)
    assert (out - model(x)).abs().max() > 1e-4  # not the fp32 function


# A noise-free clone in the cloning experiment: synthetic data, 8 steps per epoch, the expansion
# after 16 steps, 240 steps of base and clone side by side; widths whose clones are multiples of
# 8 (docs/cloning.md: "Exactness in floating point").
NOISE_FREE = {
    "dataset": "synthetic",
    "device": "cpu",
    "model.dropout": 0.0,
    "optimizer.momentum": 0.0,
    "clone_optimizer.momentum": 0.0,
    "lr_multipliers": True,
    "batch_size": 50,
    "base_epochs": 2,
    "clone_epochs": 30,
    "log_every": 80,
    "probe_every": 10,
    "checkpoint_every": 10_000,
    "probe.metrics": ("dead_fraction",),
    "augment": False,  # crops and flips make float32 rounding grow to ~1e-3 within 240 steps
}
ARCH = {
    "mlp": {"model.arch": "mlp", "model.hidden_sizes": (16, 16)},
    "cnn": {"model.arch": "cnn", "model.conv_channels": (8, 8), "model.fc_hidden": (16,)},
}


def _clone_checks(tmp_path, arch: str, options: dict):
    """(manifold distances, max |f_clone - f_base|) at each clone check after the expansion."""
    cfg = experiment_config("cloning", {**NOISE_FREE, **ARCH[arch], **options})
    cloning.run(cfg, RunRecord(tmp_path / "run"))
    rows = load_metrics(tmp_path / "run")
    rows = rows[(rows.split == "clone_train") & (rows.step > 16)]
    by_metric = rows.pivot_table(index="step", columns="metric", values="value")
    assert list(by_metric.index) == [96, 176, 256]
    return by_metric["manifold_distance"].tolist(), by_metric["max_abs_diff_output"].max()


@pytest.mark.parametrize(
    ("arch", "options"),
    [
        ("mlp", {}),
        ("cnn", {}),
        ("cnn", {"precision.channels_last": True}),
    ],
    ids=["mlp-fp32", "cnn-fp32", "cnn-channels_last"],
)
def test_fp32_and_channels_last_keep_the_clone_exact(tmp_path, one_thread, arch, options):
    distances, drift = _clone_checks(tmp_path, arch, options)
    assert distances == [0.0, 0.0, 0.0]  # on the manifold bit for bit
    assert drift < 1e-5  # and tracking the base to float32 rounding (measured: ~2e-6)


def test_bf16_autocast_keeps_the_manifold_but_not_the_base(tmp_path, one_thread):
    """bf16 rounds the clone's identical units identically, so it stays on the manifold; but its
    convolutions sum in another order than the base's, a different bf16 rounding at some entries
    moves the clone's function away from the base's (measured: ~1e-2 after 240 steps)."""
    distances, drift = _clone_checks(tmp_path, "cnn", {"precision.autocast": "bf16"})
    assert distances == [0.0, 0.0, 0.0]
    assert drift > 1e-4  # far above the float32 runs' ~2e-6


def test_bf16_autocast_keeps_an_mlp_clone_on_the_manifold(tmp_path, one_thread):
    distances, _ = _clone_checks(tmp_path, "mlp", {"precision.autocast": "bf16"})
    assert distances == [0.0, 0.0, 0.0]


def test_continual_learning_trains_through_the_precision_forward(tmp_path, one_thread):
    """bf16 autocast with channels-last in a continual run: its training losses differ from the
    float32 run's by bf16 rounding (the loop trains through the precision forward)."""
    common = {
        "dataset": "synthetic",
        "device": "cpu",
        **ARCH["cnn"],
        "classes_per_task": 2,
        "num_tasks": 1,
        "task_unit": "steps",
        "task_length": 20,
        "log_every": 10,
        "probe.metrics": ("dead_fraction",),
    }
    losses = {}
    for name, options in (("fp32", {}), ("bf16", {"precision.autocast": "bf16"})):
        cfg = experiment_config("continual", {**common, **options, "precision.channels_last": True})
        continual.run(cfg, RunRecord(tmp_path / name))
        rows = load_metrics(tmp_path / name)
        losses[name] = rows[(rows.split == "train") & (rows.metric == "loss")].value.to_numpy()
    gap = abs(losses["bf16"] - losses["fp32"]).max()
    assert 0 < gap < 0.05, losses


def _has_cxx() -> bool:
    return any(shutil.which(c) for c in ("g++", "c++", "clang++"))


@pytest.mark.slow
@pytest.mark.skipif(
    not _has_cxx(), reason="torch.compile on the CPU needs a C++ compiler (inductor's C++ backend)"
)
def test_a_compiled_clone_stays_on_the_manifold_and_tracks_its_eager_base(one_thread):
    """One small MLP; only the clone compiled (each compiled model costs tens of seconds here)."""
    cfg = ModelConfig(
        arch="mlp", in_shape=(3, 8, 8), num_classes=4, hidden_sizes=(8, 8), dropout=0.0
    )
    base = build_model(cfg, seed=0).train()
    clone = expand(base, 2).train()
    compiled = precision.training_forward(clone, PrecisionSpec(compile=True), CPU)
    assert compiled is not clone
    pairs = [
        (base, torch.optim.SGD(base.parameters(), lr=0.05)),
        (compiled, torch.optim.SGD(param_groups(clone, lr=0.05))),
    ]
    g = torch.Generator().manual_seed(0)
    for _ in range(200):
        x, y = torch.randn(16, 3, 8, 8, generator=g), torch.randint(0, 4, (16,), generator=g)
        for forward, optimizer in pairs:
            optimizer.zero_grad()
            F.cross_entropy(forward(x), y).backward()
            optimizer.step()
    assert manifold_distance(clone) == 0.0
    x = torch.randn(64, 3, 8, 8, generator=g)
    assert (base(x) - clone(x)).abs().max() < 1e-5  # measured: ~1e-7
