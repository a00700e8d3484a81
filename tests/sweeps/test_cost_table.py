"""The cost table `make bench` writes (sweeps/costs.json) and `sweeps plan` reads: measuring on one
machine replaces that device's figures of the same key and keeps everything else."""

from __future__ import annotations

import subprocess
from pathlib import Path

from sweeps.costs import Work, estimate, load_costs, write_costs

ROOT = Path(__file__).resolve().parents[2]


def _entry(arch: str, seconds: float, phase: str = "train") -> dict:
    return {
        "experiment": "continual",
        "phase": phase,
        "arch": arch,
        "shape": "3x64x64",
        "batch": 128,
        "seconds_per_step": seconds,
    }


def test_a_measurement_replaces_its_own_figures_and_keeps_other_devices(tmp_path):
    path = tmp_path / "costs.json"
    write_costs("a100", {"gpu": "NVIDIA A100-SXM4-80GB"}, [_entry("resnet", 0.02)], path)
    write_costs("cpu", {"host": "cluster-login"}, [_entry("mlp", 0.5), _entry("cnn", 2.0)], path)
    write_costs("cpu", {"host": "laptop"}, [_entry("mlp", 0.25)], path)  # `make bench` elsewhere
    table = load_costs(path)
    assert table["devices"]["a100"]["entries"] == [_entry("resnet", 0.02)]  # kept as measured
    cpu = table["devices"]["cpu"]
    assert cpu["measured"] and cpu["machine"] == {"host": "laptop"}
    assert {e["arch"]: e["seconds_per_step"] for e in cpu["entries"]} == {"cnn": 2.0, "mlp": 0.25}
    # what `sweeps plan` makes of them: 7,200 steps x 0.25 s = 0.5 h; 7,200 x 0.02 s = 0.04 h
    works = {"p": [Work("continual", "train", "mlp", "3x64x64", 128, 7200)]}
    assert estimate(works, "cpu", 1, table)["hours"] == 0.5
    works = {"p": [Work("continual", "train", "resnet", "3x64x64", 128, 7200)]}
    assert abs(estimate(works, "a100", 1, table)["hours"] - 0.04) < 1e-12


def test_make_bench_writes_the_cost_table():
    dry = subprocess.run(["make", "-n", "bench"], cwd=ROOT, capture_output=True, text=True)
    assert dry.returncode == 0, dry.stderr
    assert "benchmarks/bench_training.py --costs" in dry.stdout
