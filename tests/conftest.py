"""Fixtures shared by the tests."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture
def one_thread():
    """One torch thread: bit-exact comparisons with a killed subprocess (which runs with
    OMP_NUM_THREADS=1), and small runs on a shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def pytest_collection_modifyitems(items):
    """Under `pytest -n 2 --dist loadgroup` (make test), the end-to-end tests (marked slow: real
    sweeps, SLURM, subprocess runs) go to one worker, one after another, so two of them never
    compete for the cores and their kill and preemption windows; the other worker runs the rest."""
    for item in items:
        if item.get_closest_marker("slow") is not None:
            item.add_marker(pytest.mark.xdist_group("end_to_end"))
