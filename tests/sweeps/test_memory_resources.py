"""The memory figures of sweeps/costs.json (written and read by sweeps.costs) and the continual
study's GPU shares derived from them: a whole GPU for ResNet and ViT, eighths by memory for MLP
and CNN (packed runs: pack x one run's bytes)."""

from __future__ import annotations

import pytest

from sweeps import costs
from sweeps.studies import cloning_noise, continual

GIB = 2**30


def _entry(arch, total, batch=128):
    return {
        "experiment": "continual",
        "phase": "train",
        "arch": arch,
        "shape": "3x64x64",
        "batch": batch,
        "bytes": {"total": total},
    }


def test_memory_entries_are_merged_by_key_and_read_back(tmp_path):
    path = tmp_path / "costs.json"
    costs.write_memory("cpu", [_entry("mlp", 1), _entry("cnn", 2)], how="test", path=path)
    costs.write_memory("cpu", [_entry("mlp", 3)], how="test again", path=path)
    table = costs.load_costs(path)
    assert table["devices"]["cpu"]["memory"]["how"] == "test again"
    work = costs.Work("continual", "train", "mlp", "3x64x64", 128, 0)
    assert costs.memory_bytes(table, "cpu", work) == 3  # replaced, not duplicated
    assert len(table["devices"]["cpu"]["memory"]["entries"]) == 2
    assert costs.memory_bytes(table, "a100", work) is None


def _share(arch, copies=1, table=None, batch=128):
    work = costs.Work("continual", "train", arch, "3x64x64", batch, 0)
    return costs.gpu_share([work], copies, table)


def test_gpu_share_from_measured_memory():
    table = {
        "devices": {"cpu": {"memory": {"entries": [_entry("mlp", GIB), _entry("cnn", 3 * GIB)]}}}
    }
    # copies x bytes x margin 2 over 40 GiB, rounded up to an eighth
    assert _share("mlp", 1, table) == 0.125  # 2/40 -> 1/8
    assert _share("mlp", 5, table) == 0.25  # 10/40
    assert _share("cnn", 5, table) == 0.75  # 30/40
    assert _share("cnn", 10, table) == 1.0  # capped
    assert _share("resnet", 1, table) == 1.0
    both = [costs.Work("continual", "train", a, "3x64x64", 128, 0) for a in ("mlp", "cnn")]
    assert costs.gpu_share(both, 2, table) == 0.5  # 2 x (1 + 3) x 2 / 40 = 0.4 -> 4/8
    with pytest.raises(ValueError, match="no memory figure for continual train mlp 3x64x64 batch"):
        _share("mlp", 1, table, batch=64)


def test_a_cloning_trial_holds_base_and_clone_and_a_shared_base_the_base_alone():
    def entry(phase, total):
        return {**_entry("cnn", total), "experiment": "cloning", "phase": phase, "shape": "3x32x32"}

    table = {
        "devices": {
            "cpu": {"memory": {"entries": [entry("base", 3 * GIB), entry("clone", 4 * GIB)]}}
        }
    }
    space = {**cloning_noise.base_config(), **cloning_noise.param_space("paper")}
    point = {**space, "model.arch": "cnn"}
    assert cloning_noise.gpu_share(space, point, table) == 0.375  # (3 + 4) x 2 / 40 -> 3/8
    assert cloning_noise.gpu_share(space, {**point, "part": "base"}, table) == 0.25  # 3 x 2 / 40
    assert cloning_noise.gpu_share(space, {**point, "model.arch": "vit"}, table) == 1.0
    assert cloning_noise.resources("paper") == {"cpu": 2, "gpu": 1.0}  # the grid's largest
    assert cloning_noise.resources("paper", point)["gpu"] < 1  # the shipped figures


def test_the_study_reads_the_shipped_table():
    assert continual.resources("smoke") == {"cpu": 1}
    assert continual.resources("paper") == {"cpu": 2, "gpu": 1.0}  # ResNet and ViT in the grid
    point = {"model.arch": "mlp", "batch_size": 128, "pack": 5}
    assert continual.resources("paper", point)["gpu"] < 1


def test_each_trial_gets_its_own_points_share():
    """The driver asks the study per trial (Tune passes the trial's config, {"point": id})."""
    from sweeps.configs import grid_points, point_id
    from sweeps.driver import trial_resources

    space = {**continual.base_config(), **continual.param_space("paper")}
    points = {point_id(p): p for p in grid_points(space)}
    of = trial_resources(continual, "paper", points)
    shares = {points[p]["model.arch"]: of({"point": p})["gpu"] for p in points}
    assert shares["resnet"] == shares["vit"] == 1.0
    assert (
        shares["mlp"]
        == continual.resources(
            "paper", next(v for v in points.values() if v["model.arch"] == "mlp")
        )["gpu"]
        < 1
    )
