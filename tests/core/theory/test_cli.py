"""`python -m core.theory figures` and `stability` end to end, on real files."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from core.cloning import expand
from core.models import ModelConfig, build_model
from core.run import schema
from core.theory.__main__ import main
from core.theory.report import load_model
from core.theory.stability import VERDICTS

ROOT = Path(__file__).resolve().parents[3]


def test_figures_command_writes_the_three_figures(tmp_path):
    """End to end through the CLI (the figures' numbers are checked by value in test_figures)."""
    out = tmp_path / "figures"
    subprocess.run(
        [sys.executable, "-m", "core.theory", "figures", "--quick", "--out", str(out)],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    for stem in ("figure_A1", "figure_A2", "figure_A3"):
        png, pdf = (out / f"{stem}.png").read_bytes(), (out / f"{stem}.pdf").read_bytes()
        assert png.startswith(b"\x89PNG") and len(png) > 10_000
        assert pdf.startswith(b"%PDF")


def _cloning_run(tmp_path: Path) -> Path:
    """A run folder as core.run.record lays it out: config.json and checkpoints/step-*.pt."""
    cfg = ModelConfig(
        arch="mlp", in_shape=(3, 8, 8), num_classes=10, hidden_sizes=(6, 6), dropout=0.2
    )
    clone = expand(build_model(cfg, seed=0), 2)
    run = tmp_path / "run"
    schema.checkpoints_dir(run).mkdir(parents=True)
    schema.metrics_dir(run).mkdir()
    config = {"dataset": "synthetic", "data_root": None, "synthetic": {"classes": 10, "size": 8}}
    document = {"run_id": "r", "experiment": "cloning", "config": config, "provenance": {}}
    schema.config_path(run).write_text(json.dumps(document))
    state = {"model_config": clone.cfg.to_dict(), "model": clone.state_dict()}
    path = schema.checkpoint_path(run, 10)
    torch.save({"step": 10, "state": state}, path)
    return path


def test_stability_command_on_a_cloning_checkpoint(tmp_path, capsys):
    checkpoint = _cloning_run(tmp_path)
    out = tmp_path / "report.json"
    argv = ["stability", str(checkpoint), "--samples", "64", "--lanczos-steps", "12"]
    main([*argv, "--escape-steps", "10", "--out", str(out)])
    report = json.loads(out.read_text())
    assert report == json.loads(capsys.readouterr().out)
    assert report["dataset"] == "synthetic" and report["clone_factor"] == 2
    assert report["manifold_distance"] == 0.0
    assert report["verdict"] in VERDICTS
    assert report["lambda_min"] <= report["lambda_max"]
    assert len(report["ritz_values"]) == report["lanczos_steps"] == 12
    assert len(report["escape"]["distances"]) == 11
    assert report["escape"]["distances"][0] == pytest.approx(1e-4, rel=1e-9)
    assert report["escape"]["horizon_too_short"] == (10 < report["escape"]["required_steps"])
    assert report["symmetries_removed"] == ["equitable", "softmax_shift"]
    assert len(report["residuals"]) == len(report["ritz_values"])


def test_checkpoint_loads_to_the_same_function_without_dropout(tmp_path):
    checkpoint = _cloning_run(tmp_path)
    state = torch.load(checkpoint, weights_only=False)["state"]
    saved = build_model(ModelConfig(**state["model_config"]))
    saved.load_state_dict(state["model"])
    model = load_model(checkpoint)
    assert model.cfg.dropout == 0.0 and next(model.parameters()).dtype == torch.float64
    x = torch.randn(5, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(model.eval()(x.double()), saved.eval()(x).double(), atol=1e-5)


def test_stability_command_errors_say_what_to_do(tmp_path, capsys):
    bad = tmp_path / "bad.pt"
    torch.save({"model": {}}, bad)
    with pytest.raises(SystemExit):
        main(["stability", str(bad), "--dataset", "synthetic"])
    assert "model_config" in capsys.readouterr().err
    lonely = tmp_path / "lonely.pt"
    torch.save(torch.load(_cloning_run(tmp_path), weights_only=False)["state"], lonely)
    with pytest.raises(SystemExit):
        main(["stability", str(lonely)])
    assert "--dataset" in capsys.readouterr().err
