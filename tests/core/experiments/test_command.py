"""`python -m core.experiments.<name>` as a user meets it: exit status 0 completed, 3 diverged,
1 failed, 2 user error (one line, no traceback, no run folder); `--help` documents every key."""

from __future__ import annotations

import subprocess
import sys

from core.run.schema import chunk_path, read_status
from tests.core.experiments.runs import REPO, TINY

SMALL = TINY + [
    "synthetic.classes=4",
    "synthetic.train_per_class=16",
    "synthetic.test_per_class=4",
    "model.hidden_sizes=8",
    "classes_per_task=2",
    "batch_size=16",
    "probe_size=8",
    "task_unit=steps",
    "task_length=4",
]


def _command(experiment, args, run_dir=None):
    extra = [] if run_dir is None else ["--run-dir", str(run_dir)]
    return subprocess.run(
        [sys.executable, "-m", f"core.experiments.{experiment}", *args, *extra],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_a_completed_run_exits_0_and_a_diverged_one_3(tmp_path):
    done = _command("continual", SMALL, tmp_path / "done")
    assert done.returncode == 0, done.stderr
    assert read_status(tmp_path / "done")["status"] == "completed"
    blown = ["optimizer.name=sgd", "optimizer.lr=1e12", "model.norm=none"]
    diverged = _command("continual", SMALL + blown, tmp_path / "diverged")
    assert diverged.returncode == 3, diverged.stderr
    assert read_status(tmp_path / "diverged")["status"] == "diverged"


def test_a_bad_value_is_a_one_line_user_error_with_no_run_folder(tmp_path):
    for experiment, arg, valid in [
        ("continual", "model.activation=rleu", "valid: relu, leaky_relu"),
        ("cloning", "cbp.util_type=contrib", "valid: contribution, zero_contribution"),
        ("cloning", "optimizer.name=adamw", "valid: sgd, adam, noisy_sgd"),
        ("continual", "task_lenght=3", "valid keys: dataset, data_root"),
    ]:
        result = _command(experiment, [*TINY, arg], tmp_path / "run")
        assert result.returncode == 2
        assert result.stderr.count("\n") == 1 and valid in result.stderr, result.stderr
        assert result.stderr.startswith(f"python -m core.experiments.{experiment}: error: ")
        assert not (tmp_path / "run").exists()


def test_a_missing_dataset_is_a_one_line_user_error_with_no_run_folder(tmp_path):
    empty = tmp_path / "data"
    empty.mkdir()
    for experiment in ("continual", "cloning"):
        args = [*TINY, "dataset=cifar10", f"data_root={empty}"]
        result = _command(experiment, args, tmp_path / "run")
        assert result.returncode == 2, result.stderr
        assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
        assert "cifar" in result.stderr.lower()
        assert not (tmp_path / "run").exists()


def test_a_run_that_fails_after_it_started_exits_1_and_is_marked_failed(tmp_path):
    run_dir = tmp_path / "run"
    chunk_path(run_dir, 0).parent.mkdir(parents=True)
    chunk_path(run_dir, 0).write_bytes(b"not parquet")  # a damaged record, found on resume
    result = _command("continual", SMALL, run_dir)
    assert result.returncode == 1
    assert "Traceback" in result.stderr
    assert read_status(run_dir)["status"] == "failed"


def test_help_lists_every_key_with_its_type_default_and_doc():
    result = _command("cloning", ["--help"])
    assert result.returncode == 0
    assert "clone_optimizer.adam_step=tensor  (str)" in result.stdout
    assert "shrink_perturb.noise_std=0.0  (float)" in result.stdout
    assert "divergence_ceiling=1000.0  (float | null)" in result.stdout
