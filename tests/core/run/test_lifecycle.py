"""The run lifecycle: the running loss/accuracy with its divergence watch (first non-finite step,
first step above the ceiling), and the checkpoint cadence by steps or wall time."""

from __future__ import annotations

import math
import time

import pytest
import torch

from core.run.lifecycle import CheckpointPolicy, RunningStats


def _add(stats, step, loss, correct=1, correct_all=1, n=8):
    stats.add(step, torch.tensor(loss), torch.tensor(correct), torch.tensor(correct_all), n)


def test_running_stats_are_means_over_samples_since_the_reset():
    stats = RunningStats(torch.device("cpu"))
    _add(stats, 1, 2.0, 3, 4, 4)
    _add(stats, 2, 0.5, 1, 1, 2)
    means, bad = stats.read()
    assert bad is None
    assert means == {"loss": (2.0 * 4 + 0.5 * 2) / 6, "acc": 4 / 6, "acc_unmasked": 5 / 6}
    stats.reset()
    _add(stats, 3, 1.0, 0, 1, 2)
    assert stats.read() == ({"loss": 1.0, "acc": 0.0, "acc_unmasked": 0.5}, None)


@pytest.mark.parametrize("bad_values", [[math.nan], [math.inf], [math.inf, math.nan, -math.inf]])
def test_running_stats_report_the_first_non_finite_step(bad_values):
    stats = RunningStats(torch.device("cpu"))
    losses = [1.0, 2.0, *bad_values, 1.0]  # finite again after the non-finite ones
    for step, loss in enumerate(losses, start=11):
        _add(stats, step, loss)
    means, bad = stats.read()
    assert bad.step == 13 and bad.reason == "non-finite loss at step 13"
    assert not math.isfinite(means["loss"])
    stats.reset()  # a new log interval starts clean
    _add(stats, 16, 1.0)
    assert stats.read()[1] is None


def test_a_loss_above_the_ceiling_times_the_initial_loss_diverges_at_its_step():
    stats = RunningStats(torch.device("cpu"), ceiling=10.0)
    for step, loss in enumerate([2.0, 15.0, 19.9], start=1):  # ceiling: 10 x 2.0 = 20
        _add(stats, step, loss)
    assert stats.read()[1] is None
    stats.reset()  # the ceiling stays that of the run's first loss
    for step, loss in enumerate([3.0, 20.5, 1.0, math.nan], start=4):
        _add(stats, step, loss)
    _, bad = stats.read()
    assert bad.step == 5 and "ceiling 20 at step 5" in bad.reason
    # a resumed run keeps the initial loss, through the checkpoint
    resumed = RunningStats(torch.device("cpu"), ceiling=10.0)
    resumed.load_state_dict(stats.state_dict())
    _add(resumed, 8, 20.5)
    assert resumed.read()[1].step == 8


def test_without_a_ceiling_only_a_non_finite_loss_diverges():
    stats = RunningStats(torch.device("cpu"), ceiling=None)
    for step, loss in enumerate([0.0, 1e30, 3e38], start=1):  # a zero initial loss too
        _add(stats, step, loss)
    assert stats.read()[1] is None
    _add(stats, 4, math.inf)
    assert stats.read()[1].step == 4


def test_checkpoints_are_due_every_n_steps_or_after_the_wall_time():
    by_steps = CheckpointPolicy(100, every_steps=50)
    assert not by_steps.due(149) and by_steps.due(150)
    by_time = CheckpointPolicy(100, every_steps=10**9, every_minutes=0.5 / 60_000)  # 0.5 ms
    assert not CheckpointPolicy(100, 10**9, every_minutes=1.0).due(101)
    time.sleep(0.002)
    assert by_time.due(101)
