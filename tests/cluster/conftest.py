"""The `slurm` fixture: a real 2-node SLURM with accounting on localhost (slurm_local.py)."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster.slurm_local import (
    LocalSlurm,
    SlurmUnavailable,
    ensure_installed,
    start_local_slurm,
)


@pytest.fixture(scope="session")
def slurm() -> Iterator[LocalSlurm]:
    """Started once per test session, stopped (by PID) at its end; SLURM_CONF points at it.

    Skips only where SLURM cannot be had (not root and not installed, or apt-get failing); a
    daemon that fails to start is an error, with the daemons' log tails.
    """
    try:
        ensure_installed()
    except SlurmUnavailable as why:
        pytest.skip(f"no local SLURM: {why}")
    # Short and under /tmp: socket paths live in it, and munged must reach it.
    root = Path(tempfile.mkdtemp(prefix="lopslurm-", dir="/tmp"))
    cluster = start_local_slurm(root, nodes=2)  # one-node jobs run on either node
    previous = os.environ.get("SLURM_CONF")
    os.environ.update(cluster.env)
    try:
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)  # the MariaDB datadir alone is ~200 MB
        if previous is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = previous
