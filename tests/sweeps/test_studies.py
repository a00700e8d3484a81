"""The studies' spaces: exact paper grids, keys valid for their experiments, bad keys refused."""

from __future__ import annotations

import types

import pytest
from ray import tune

from sweeps import driver
from sweeps.configs import count_grid, first_point, point_id
from sweeps.studies import STUDIES, get_study

PAPER_TRIALS = {"cloning_noise": 900, "cloning_dropout": 1080, "continual": 360}


@pytest.mark.parametrize("study", sorted(PAPER_TRIALS))
@pytest.mark.parametrize("scale", ["paper", "reference"])
def test_paper_grids_have_the_papers_size(study, scale):
    assert count_grid(driver.resolved_space(study, scale)) == PAPER_TRIALS[study]


@pytest.mark.parametrize("study", STUDIES)
def test_every_scale_resolves_against_its_experiment(study):
    for scale in get_study(study).SCALES:
        space = driver.resolved_space(study, scale)  # validates keys, builds one Config
        assert first_point(space)


def test_cloning_dropout_ties_the_clone_optimizer_to_the_base():
    space = driver.resolved_space("cloning_dropout", "paper")
    from ray.tune.search.variant_generator import generate_variants

    points = [config for _, config in generate_variants(space)]
    assert len(points) == 1080
    assert all(p["clone_optimizer.name"] == p["optimizer.name"] for p in points)
    assert all(p["clone_optimizer.lr"] == p["optimizer.lr"] for p in points)
    assert {(p["optimizer.name"], p["optimizer.lr"]) for p in points} == {
        (name, lr) for name in ("sgd", "adam") for lr in (1e-2, 1e-3, 1e-4)
    }


def _continual_with_space(monkeypatch, param_space) -> None:
    """Every study name resolves to the continual study at scale smoke with `param_space`."""
    real = get_study("continual")
    broken = types.SimpleNamespace(
        EXPERIMENT="continual",
        SCALES=("smoke",),
        base_config=real.base_config,
        param_space=lambda scale: param_space,
        resources=real.resources,
    )
    monkeypatch.setattr(driver, "get_study", lambda name: broken)


def test_an_unknown_key_fails_before_anything_starts(monkeypatch):
    _continual_with_space(monkeypatch, {"optimizer.lrr": tune.grid_search([0.1]), "sede": 1})
    with pytest.raises(ValueError) as err:
        driver.resolved_space("continual", "smoke")
    assert "unknown key(s) optimizer.lrr, sede" in str(err.value)
    assert "valid keys: dataset," in str(err.value) and "optimizer.lr" in str(err.value)


def test_unknown_study_and_scale():
    with pytest.raises(ValueError, match="studies: cloning_noise, cloning_dropout"):
        get_study("cloning")
    with pytest.raises(ValueError, match="scales: smoke, paper"):
        driver.resolved_space("continual", "huge")


def test_bitflip_paper_counts():
    space = driver.resolved_space("bitflip", "paper")
    trials = count_grid(space)
    configs = driver.point_configs("bitflip", driver.plan("bitflip", "paper", prepare_data=False))
    members = [len(cfg.members()) for cfg in configs.values()]
    assert (trials, members) == (4, [210] * 4)  # one trial per width: 3 methods x 70 seeds
    assert sum(members) == 840
    assert space["method"] == ("sgd", "sgd_then_cbp", "cbp")
    assert trials * len(space["lr"]) * len(space["seed"]) == 280  # the paper's SGD baseline grid
    assert space["seed"] == tuple(range(30, 100)) and space["steps"] == 5_000_000


def test_preflight_refuses_a_bad_value_of_any_grid_point(monkeypatch):
    """The first point is valid, the last is not: the plan builds every point's config."""
    bad = {"model.activation": tune.grid_search(["relu", "rleu"])}
    _continual_with_space(monkeypatch, {**get_study("continual").param_space("smoke"), **bad})
    assert first_point(driver.resolved_space("continual", "smoke"))["model.activation"] == ("relu")
    with pytest.raises(ValueError, match="rleu") as err:
        driver.plan("continual", "smoke")
    assert "relu" in str(err.value)  # the valid values are listed


def test_plan_ids_every_point_once():
    points = driver.plan("cloning_dropout", "paper", prepare_data=False)
    assert len(points) == 1080
    assert all(point_id(p) == i for i, p in points.items())


def test_plan_command_prints_the_points_and_axes_after_preflight(capsys):
    from sweeps.__main__ import main

    assert main(["plan", "continual", "--scale", "smoke"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "continual (scale smoke): 4 grid points, each config valid, data ready"
    assert "  model.arch: mlp, cnn" in out and "  seed: 0, 1" in out
