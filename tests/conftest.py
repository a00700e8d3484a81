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
