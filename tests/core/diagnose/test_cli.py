"""`python -m core.diagnose` on a smoke continual run's checkpoint and on a user's factory model."""

import json
import subprocess
import sys

import pytest
import torch

from core.diagnose.__main__ import main
from core.run.schema import checkpoint_paths
from tests.core.experiments.runs import REPO, TINY

SMOKE = TINY + [
    "model.hidden_sizes=8,8",
    "synthetic.classes=4",
    "synthetic.train_per_class=16",
    "synthetic.test_per_class=4",
    "classes_per_task=2",
    "num_tasks=1",
    "task_unit=steps",
    "task_length=4",
    "batch_size=8",
    "probe_size=8",
    "keep_final_checkpoint=true",
]


def test_cli_on_a_smoke_continual_checkpoint(tmp_path):
    run = tmp_path / "run"
    subprocess.run(
        [sys.executable, "-m", "core.experiments.continual", "--run-dir", str(run), *SMOKE],
        cwd=REPO,
        check=True,
        capture_output=True,
    )
    (checkpoint,) = checkpoint_paths(run).values()
    out = tmp_path / "diagnosis"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "core.diagnose",
            str(checkpoint),
            "--samples",
            "16",
            "--lanczos-steps",
            "4",
            "--out",
            str(out),
        ],  # fmt: skip
        cwd=REPO,
        check=True,
        capture_output=True,
        text=True,
    )
    assert done.stdout.startswith("# Loss-of-plasticity diagnosis")
    assert (out / "report.md").read_text() == done.stdout
    report = json.loads((out / "report.json").read_text())
    assert report["settings"]["rows"] == 16
    assert report["manifold"]["state"] in {"no clones", "block-constant", "equitable", "off"}
    assert (out / "figure.png").read_bytes().startswith(b"\x89PNG")


def test_cli_on_a_user_factory_model(tmp_path, capsys):
    from tests.core.diagnose.test_diagnose import ResidualMLP

    model = ResidualMLP()
    torch.save(model.state_dict(), tmp_path / "net.pt")
    g = torch.Generator().manual_seed(0)
    batch = {
        "inputs": torch.randn(10, 5, generator=g),
        "targets": torch.randint(0, 3, (10,), generator=g),
    }
    torch.save(batch, tmp_path / "batch.pt")
    main(["--model", "tests.core.diagnose.test_diagnose:ResidualMLP", "--state-dict",
          str(tmp_path / "net.pt"), "--batch", str(tmp_path / "batch.pt")])  # fmt: skip
    text = capsys.readouterr().out
    assert "| mix.1 | 6 |" in text and "no clones" in text


def test_cli_errors_say_what_to_do(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main([])
    assert "CHECKPOINT or --model" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--model", "tests.core.diagnose.test_diagnose:ResidualMLP"])
    assert "--batch" in capsys.readouterr().err
