"""Resource profiles: allow-listed names and fields, checked values."""

from __future__ import annotations

import pytest

from cluster import PROFILES, get_profile


def test_profiles_resolve_and_overrides_apply():
    assert get_profile("a100") == PROFILES["a100"]
    short = get_profile("a100", time_min=240, qos="short")
    assert (short.time_min, short.qos, short.gpus_per_node) == (240, "short", 4)
    assert get_profile("local").gpus_per_node == get_profile("cpu").gpus_per_node == 0
    assert PROFILES["a100"].partition is None  # no site-specific partition


def test_unknown_profile_lists_the_profiles():
    with pytest.raises(ValueError, match=r"profile 'h100'; profiles: a100, cpu, local"):
        get_profile("h100")


def test_misspelt_field_lists_the_fields():
    with pytest.raises(ValueError, match=r"unknown profile field\(s\) time_mins; valid fields: "):
        get_profile("a100", time_mins=60)
    with pytest.raises(ValueError, match="device, gpus_per_node, cpus_per_task, mem_gb, time_min"):
        get_profile("a100", gpu=1)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"cpus_per_task": 0}, "cpus_per_task must be a positive integer"),
        ({"gpus_per_node": -1}, "gpus_per_node must be a positive integer"),
        ({"time_min": 1.5}, "time_min must be a positive integer"),
        ({"time_min": 1}, "signal_delay_s=90 leaves no run time within time_min=1"),
    ],
)
def test_bad_values_fail_with_the_field(overrides, message):
    with pytest.raises(ValueError, match=message):
        get_profile("local", **overrides)
