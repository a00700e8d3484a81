"""The driver's rules without Ray: a resumed sweep's space against the one on record (`--extend`
only adds points), the summary and exit status from the records, and stale Ray temp dirs."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
from ray import tune

from core.run.record import RunRecord
from sweeps.configs import grid_points, point_id
from sweeps.driver import (
    exit_code,
    open_manifest,
    pending_stages,
    plan,
    reset_points,
    resolved_space,
    run_points,
    select,
    summarize,
)
from sweeps.local_ray import OWNER_FILE, _process_start, clean_stale_temp_dirs
from sweeps.mirror import Mirror


def _space(seeds, lr=(0.1,)):
    return {"seed": tune.grid_search(list(seeds)), "lr": tune.grid_search(list(lr)), "steps": 5}


def _points(space):
    return {point_id(p): p for p in grid_points(space)}


def _open(sweep_dir, space, extend=False):
    return open_manifest(sweep_dir, "continual", "smoke", space, _points(space), extend)


def test_a_changed_grid_is_refused_unless_extend_adds_points(tmp_path):
    first = _open(tmp_path, _space([0, 1]))
    assert len(first["points"]) == 2 and len(first["runs"]) == 1
    assert _open(tmp_path, _space([0, 1]))["runs"][-1]["pid"] == os.getpid()  # same: fine

    with pytest.raises(ValueError, match=r"differs .*seed.*run with --extend"):
        _open(tmp_path, _space([0, 1, 2]))
    with pytest.raises(ValueError, match="--extend only adds points.* drops or changes 2 of the 2"):
        _open(tmp_path, _space([0, 1], lr=(0.2,)), extend=True)  # every point changed
    extended = _open(tmp_path, _space([0, 1, 2], lr=(0.1,)), extend=True)
    assert set(_points(_space([0, 1]))) < set(extended["points"]) and len(extended["points"]) == 3
    assert extended["history"][0]["space"]["seed"] == {"grid_search": [0, 1]}
    with pytest.raises(ValueError, match="holds the sweep continual"):
        open_manifest(tmp_path, "bitflip", "smoke", _space([0]), _points(_space([0])), True)


def test_the_summary_counts_records_names_failures_and_sets_the_exit_status(tmp_path):
    space = _space([0, 1, 2, 3])
    points = _points(space)
    open_manifest(tmp_path, "continual", "smoke", space, points, False)
    ids = sorted(points)
    RunRecord(tmp_path / "runs" / ids[0]).set_status("completed", summary={})
    RunRecord(tmp_path / "runs" / ids[1]).set_status("failed", "ValueError: bad", retryable=False)
    RunRecord(tmp_path / "runs" / ids[2]).set_status("running")  # a killed driver's point
    summary = summarize(tmp_path, {ids[2]: "RayTaskError: the worker died"}, points)
    counts = {k: summary[k] for k in ("completed", "failed", "unfinished", "pending")}
    assert counts == {"completed": 1, "failed": 2, "unfinished": 0, "pending": 1}
    failed = {f["point"]: f for f in summary["failures"]}
    assert failed[ids[1]]["reason"] == "ValueError: bad" and not failed[ids[1]]["retryable"]
    assert "the worker died" in failed[ids[2]]["reason"]
    assert failed[ids[1]]["values"] == {"seed": points[ids[1]]["seed"], "lr": 0.1}
    assert exit_code(summary) == 1
    by_seed = summary["by_axis"]["seed"]
    assert by_seed[str(points[ids[0]]["seed"])] == {"completed": 1}
    assert by_seed[str(points[ids[3]]["seed"])] == {"pending": 1}
    assert summary["by_axis"]["lr"] == {"0.1": {"completed": 1, "failed": 2, "pending": 1}}
    for point in ids[1:]:
        RunRecord(tmp_path / "runs" / point).set_status("diverged", summary={})
    assert exit_code(summarize(tmp_path)) == 0  # diverged is a finished result


def test_stale_ray_temp_dirs_of_dead_owners_are_removed_live_ones_kept(tmp_path):
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    host = socket.gethostname()
    owners = {
        "lopray-dead": {"host": host, "pid": int(dead.stdout), "start": "1"},
        "lopray-live": {"host": host, "pid": os.getpid(), "start": _process_start(os.getpid())},
        "lopray-reused-pid": {"host": host, "pid": os.getpid(), "start": "0"},
        "lopray-other-host": {"host": "elsewhere", "pid": 1, "start": "0"},
    }
    for name, owner in owners.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / OWNER_FILE).write_text(json.dumps(owner))
    (tmp_path / "lopray-no-owner").mkdir()  # being created, or not ours to judge
    removed = {p.name for p in clean_stale_temp_dirs(tmp_path)}
    assert removed == {"lopray-dead", "lopray-reused-pid"}
    assert {p.name for p in tmp_path.iterdir()} == {
        "lopray-live",
        "lopray-other-host",
        "lopray-no-owner",
    }


def test_reset_deletes_the_points_record_and_mlflow_run(tmp_path):
    space = _space([0, 1])
    points = _points(space)
    open_manifest(tmp_path, "continual", "smoke", space, points, False)
    first, second = sorted(points)
    for point in points:
        record = RunRecord(tmp_path / "runs" / point)
        record.log(1, {"loss": 1.0})
        record.finish("completed", summary={})
    Mirror(tmp_path).sync()
    with pytest.raises(ValueError, match="nope: no grid point"):
        reset_points(tmp_path, ["nope"])
    reset_points(tmp_path, [first])
    assert not (tmp_path / "runs" / first).exists() and (tmp_path / "runs" / second).exists()
    summary = summarize(tmp_path)
    assert (summary["completed"], summary["pending"]) == (1, 1)
    mirror = Mirror(tmp_path)
    assert set(mirror._runs) == {second}  # the deleted MLflow run is gone from the experiment


def test_only_selects_points_by_typed_values():
    points = plan("continual", "smoke", prepare_data=False)
    archs = {p["model.arch"] for p in points.values()}
    assert archs == {"mlp", "cnn"}
    mlp = select("continual", points, {"model.arch": ["mlp"]})
    assert len(mlp) == 2 and all(points[p]["model.arch"] == "mlp" for p in mlp)
    (one,) = select("continual", points, {"model.arch": ["mlp"], "seed": ["1"]})  # "1" -> 1
    assert points[one]["seed"] == 1
    assert select("continual", points, {"seed": ["0", "1"]}) == set(points)
    with pytest.raises(ValueError, match="--only sed: unknown key; valid keys: dataset"):
        select("continual", points, {"sed": ["1"]})
    with pytest.raises(ValueError, match="selects none of the 4 points"):
        select("continual", points, {"seed": ["7"]})


def test_trials_start_in_the_grid_order_widest_bitflip_first_prefixes_before_clones(tmp_path):
    """Tune starts a stage's trials in its order: the bit-flip paper grid lists its widths widest
    first (the longest trials), and that order must survive the driver (ids sort otherwise)."""
    points = _points(resolved_space("bitflip", "paper"))
    stages = pending_stages(tmp_path, run_points("bitflip", points, tmp_path), set(), set(points))
    assert stages[0] == {} and list(stages[1]) == list(points)
    widths = [v["width"] for v in stages[1].values()]
    assert widths == sorted(widths, reverse=True) and widths[0] == 100
    assert list(points) != sorted(points)  # an order by point id would differ from the grid's
    RunRecord(tmp_path / "runs" / next(iter(points))).set_status("completed", summary={})
    assert list(pending_stages(tmp_path, points, set(), set(points))[1]) == list(points)[1:]

    points = _points(resolved_space("cloning_noise", "paper"))
    trials = run_points("cloning_noise", points, tmp_path / "cloning")
    prefixes = set(trials) - set(points)
    first, rest = pending_stages(tmp_path / "cloning", trials, prefixes, set(trials))
    assert list(first) == [p for p in trials if p in prefixes] and len(first) > 1
    assert list(rest) == list(points)
