"""Fixtures of the experiment tests."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture
def one_thread():
    """Bit-exact comparisons with a killed subprocess, which runs with OMP_NUM_THREADS=1."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
