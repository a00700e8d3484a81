"""`python -m sweeps plan`: the pre-flight (configs, resources on the target), steps from the
configs, the cost from a cost table, config overrides, and `status` with running points' ETA."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from core.run import schema
from core.run.record import RunRecord
from sweeps.__main__ import main
from sweeps.configs import point_id
from sweeps.costs import Work, estimate, trial_work
from sweeps.driver import (
    default_sweep_dir,
    open_manifest,
    parse_config_overrides,
    plan,
    point_configs,
    resolved_space,
    summarize,
)
from sweeps.lock import SweepLock
from sweeps.target import Target, check_resources

ROOT = Path(__file__).resolve().parents[2]
# cloning at the paper's scale: CIFAR-10's 50,000 images in batches of 128 are 391 steps an
# epoch; 20 epochs of the base alone, then 500 of base and clone
BASE_STEPS, CLONE_STEPS = 20 * 391, 500 * 391
# a hand-made A100 table: seconds per step of the base phase and the clone phase
A100 = {"mlp": (0.036, 0.072), "cnn": (0.054, 0.108), "resnet": (0.09, 0.18)}  # vit: none


def _table(path: Path) -> Path:
    entries = [
        {
            "experiment": "cloning",
            "phase": phase,
            "arch": arch,
            "shape": "3x32x32",
            "batch": 128,
            "seconds_per_step": seconds[i],
        }
        for arch, seconds in A100.items()
        for i, phase in enumerate(("base", "clone"))
    ]
    path.write_text(json.dumps({"devices": {"a100": {"measured": True, "entries": entries}}}))
    return path


def _sweeps(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "sweeps", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_plan_on_slurm_prints_900_points_and_the_cost_per_architecture(tmp_path):
    """No cluster here: the plan reads the SLURM profile only."""
    out = _sweeps(
        "plan", "cloning_noise", "--scale", "paper", "--backend", "slurm", "--slurm",
        "partition=gpu", "--nodes", "2", "--costs", str(_table(tmp_path / "costs.json")),
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    assert "cloning_noise (scale paper): 900 grid points, each config valid" in out.stdout
    # 900 points of 20 + 2 x 500 epochs, as run 60 bases of 520 and 900 clones of 500 epochs
    assert "model-steps: 358,938,000 -> 188,149,200 (-47.6%)" in out.stdout
    total = 0.0
    for arch, (base, clone) in A100.items():  # 225 points of each architecture on 15 bases
        # a base run: both phases of the base alone; a clone run: the clone alone, at the clone
        # phase's figure less the base phase's
        hours = (15 * (BASE_STEPS + CLONE_STEPS) * base + 225 * CLONE_STEPS * (clone - base)) / 3600
        total += hours
        steps = 15 * (BASE_STEPS + CLONE_STEPS) + 225 * CLONE_STEPS
        assert f"{arch:10s}   240 trials {steps:>15,d} steps  {hours:12,.1f} h" in out.stdout
    assert "vit: no figure for cloning base 3x32x32 batch 128" in out.stdout
    assert f"total {total:,.1f} device-hours (measured architectures only)" in out.stdout
    # 2 nodes of the a100 profile: 8 GPUs
    assert f"wall time on 8 GPUs: {total / 8:,.1f} h" in out.stdout


def test_a_study_needing_a_gpu_on_a_machine_without_one_refuses_at_once(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    paper = ["cloning_noise", "--scale", "paper"]
    for args in (["plan", *paper], ["run", *paper, "--sweep-dir", str(tmp_path / "s")]):
        start = time.monotonic()
        out = _sweeps(*args)
        assert out.returncode == 2, out.stdout[-2000:] + out.stderr[-2000:]
        assert "needs 1 GPU per trial and this machine has no CUDA GPU" in out.stderr
        assert time.monotonic() - start < 120
    assert not (tmp_path / "s").exists()


def test_resources_are_checked_against_one_node():
    cpu_box = Target("this machine", "cpu", 1, 2, 0)
    check_resources({"cpu": 1}, cpu_box, "x")
    with pytest.raises(ValueError, match="x needs 0.25 GPU per trial and this machine has no"):
        check_resources({"cpu": 2, "gpu": 0.25}, cpu_box, "x")
    with pytest.raises(ValueError, match="x needs 3 CPUs per trial; this machine has 2"):
        check_resources({"cpu": 3}, cpu_box, "x")
    gpu_node = Target("SLURM profile a100, 1 node", "a100", 1, 32, 4)
    check_resources({"cpu": 2, "gpu": 0.25}, gpu_node, "x")
    with pytest.raises(
        ValueError, match="needs 8 GPUs per trial; SLURM profile a100, 1 node has 4"
    ):
        check_resources({"gpu": 8}, gpu_node, "x")


def test_steps_per_trial_come_from_the_configs():
    configs = point_configs("continual", plan("continual", "paper", prepare_data=False))
    # 200 Tiny ImageNet classes in tasks of 5: 40 tasks of 500 steps
    assert {w.steps for c in configs.values() for w in trial_work("continual", c)} == {20_000}
    configs = point_configs("continual", plan("continual", "reference", prepare_data=False))
    # 500 epochs of ceil(5 x 500 / 128) = 20 steps per task
    assert {w.steps for c in configs.values() for w in trial_work("continual", c)} == {400_000}
    configs = point_configs("bitflip", plan("bitflip", "paper", prepare_data=False))
    works = [w for c in configs.values() for w in trial_work("bitflip", c)]
    assert len(works) == 12 and {w.steps for w in works} == {5_000_000 * 70}
    assert {w.arch for w in works} == {"width5", "width10", "width50", "width100"}


def test_wall_time_is_at_least_the_longest_trial():
    works = {"a": [Work("cloning", "clone", "mlp", "3x32x32", 128, 3600)]}
    table = {"devices": {"cpu": {"measured": True, "entries": [
        {"experiment": "cloning", "phase": "clone", "arch": "mlp", "shape": "3x32x32",
         "batch": 128, "seconds_per_step": 2.0}]}}}  # fmt: skip
    cost = estimate(works, "cpu", 16, table)
    assert cost["hours"] == 2.0 and cost["wall_hours"] == 2.0  # one trial: not 2 / 16


def test_config_overrides_are_typed_validated_and_never_grid_axes():
    overrides = parse_config_overrides("continual", "smoke", ["optimizer.lr=0.01", "augment=false"])
    assert overrides == {"optimizer.lr": 0.01, "augment": False}
    points = plan("continual", "smoke", prepare_data=False, overrides=overrides)
    assert {p["optimizer.lr"] for p in points.values()} == {0.01}
    assert set(points).isdisjoint(plan("continual", "smoke", prepare_data=False))  # new ids
    assert resolved_space("continual", "smoke", overrides)["augment"] is False
    with pytest.raises(ValueError, match="model.arch is a grid axis .* --only model.arch="):
        parse_config_overrides("continual", "smoke", ["model.arch=vit"])
    with pytest.raises(
        ValueError, match="unknown key .optimizer.lrr. for Config; valid keys: dataset"
    ):
        parse_config_overrides("continual", "smoke", ["optimizer.lrr=0.01"])
    with pytest.raises(ValueError, match="model.activation='rleu'; valid: "):
        bad = parse_config_overrides("continual", "smoke", ["model.activation=rleu"])
        plan("continual", "smoke", prepare_data=False, overrides=bad)
    named = default_sweep_dir("continual", "smoke", overrides)
    assert named.name == f"continual-smoke-{point_id(overrides)[:8]}"
    assert default_sweep_dir("continual", "smoke") == Path("sweeps_out/continual-smoke")


def test_status_shows_running_points_step_and_eta(tmp_path, capsys):
    """A record with chunks at steps 6 and 12, written 60 s apart, of a smoke continual point:
    3 tasks of 6 steps = 18 steps, so 6 steps left at 6 steps per 60 s: ETA 60 s."""
    points = plan("continual", "smoke", prepare_data=False)
    space = resolved_space("continual", "smoke")
    open_manifest(tmp_path, "continual", "smoke", space, points, False)
    point = sorted(points)[0]
    cfg = point_configs("continual", {point: points[point]})[point]
    record = RunRecord(tmp_path / "runs" / point)
    record.write_config(cfg, "continual")
    now = time.time()
    for step, written in ((6, now - 70), (12, now - 10)):
        record.log(step, {"loss": 1.0})
        record.flush()
        os.utime(schema.chunk_paths(record.run_dir)[-1], (written, written))
    record.set_status("running")
    os.utime(schema.chunk_paths(record.run_dir)[-1], (now - 10, now - 10))
    assert summarize(tmp_path)["unfinished"] == 1  # no live driver: an interrupted point
    with SweepLock(tmp_path):  # a live driver
        summary = summarize(tmp_path, live=True)
        (entry,) = summary["running_points"]
        assert (entry["point"], entry["step"], entry["total"]) == (point, 12, 18)
        assert entry["eta_s"] == pytest.approx(60.0)
        assert summary["running"] == 1 and summary["pending"] == 3
        assert main(["status", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    values = ", ".join(f"{k}={points[point][k]}" for k in ("model.arch", "seed"))
    assert f"running: point {point} ({values}): step 12/18, ETA 1.0 min" in out


@pytest.mark.slow
def test_a_smoke_sweep_with_an_override_and_only_runs_those_points_with_that_config(tmp_path):
    sweep_dir = tmp_path / "null-ci"
    out = _sweeps(
        "run", "sweeps.loadtest", "--scale", "ci", "steps=1000", "--only", "seed=0,1",
        "--no-dashboard", "--num-cpus", "2", "--sweep-dir", str(sweep_dir),
    )  # fmt: skip
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    runs = sorted((sweep_dir / "runs").iterdir())
    assert len(runs) == 2
    points = plan("sweeps.loadtest", "ci", prepare_data=False, overrides={"steps": 1000})
    assert {r.name for r in runs} == {p for p, v in points.items() if v["seed"] in (0, 1)}
    for run_dir in runs:  # the null run ran the overridden 1,000 steps, not the scale's 2,000
        assert schema.read_status(run_dir)["summary"]["step"] == 1000
    status = _sweeps("status", str(sweep_dir))
    assert status.returncode == 0, status.stderr
    lines = status.stdout.splitlines()
    summary = json.loads("\n".join(lines[: lines.index("}") + 1]))
    assert (summary["completed"], summary["pending"], summary["planned"]) == (2, 4, 6)


def test_a_native_bitflip_sweep_without_a_c_compiler_is_refused_before_any_work(
    tmp_path, monkeypatch
):
    """The paper's bit-flip study runs `engine=native`, which compiles its loop with `cc` (or
    `$CC`): with no compiler on PATH its pre-flight fails naming the compiler and the engine that
    needs none, and the batched engine's plan still passes."""
    assert plan("bitflip", "paper", prepare_data=False)  # a compiler is here
    monkeypatch.delenv("CC", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty directory: no cc on PATH
    with pytest.raises(ValueError, match="needs a C compiler: 'cc' is not on PATH.*engine=batched"):
        plan("bitflip", "paper", prepare_data=False)
    assert plan("bitflip", "paper", prepare_data=False, overrides={"engine": "batched"})
    monkeypatch.setenv("CC", "lop-no-such-cc")
    with pytest.raises(ValueError, match="'lop-no-such-cc' is not on PATH"):
        plan("bitflip", "paper", prepare_data=False)
