from pathlib import Path

import pytest

from tests.analysis.records_by_hand import FINAL, cloning_config, cloning_rows, write_run


@pytest.fixture
def cloning_sweep(tmp_path: Path) -> Path:
    """8 runs: mlp x seeds 1-5, cnn x seeds 1-3, under <sweep>/runs/<trial>/."""
    sweep = tmp_path / "sweep"
    for (arch, seed), final in FINAL.items():
        write_run(
            sweep / "runs" / f"{arch}_{seed}",
            cloning_config(arch, seed),
            cloning_rows(final),
            chunks=2,
        )
    return sweep
