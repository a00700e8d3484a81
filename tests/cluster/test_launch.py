"""`submit_sweep(..., dry_run=True)`: the sbatch script (golden file) and checks before submitting.

The script is the one submitit writes for a real submission: test_slurm.py compares the two.
Regenerate the golden file after an intended change with
`LOP_UPDATE_GOLDEN=1 python -m pytest tests/cluster/test_launch.py`.
"""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

import pytest

from cluster import submit_sweep

GOLDEN = Path(__file__).parent / "golden"


def normalised(script: str, sweep_dir: Path) -> str:
    """The paths that vary between machines, as placeholders."""
    script = script.replace(shlex.quote(sys.executable), "<PYTHON>")
    return script.replace(str(sweep_dir.resolve()), "<SWEEP_DIR>")


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("sbatch_a100_2nodes.sh", {"profile": "a100", "nodes": 2}),
        ("sbatch_local.sh", {"profile": "local", "time_min": 20, "account": "lop"}),
    ],
)
def test_dry_run_sbatch_script_matches_golden(tmp_path, name, kwargs):
    sweep_dir = tmp_path / "cloning_noise-paper"
    script = submit_sweep("cloning_noise", "paper", sweep_dir, dry_run=True, **kwargs)
    text = normalised(script, sweep_dir)
    if os.environ.get("LOP_UPDATE_GOLDEN"):
        (GOLDEN / name).write_text(text)
    assert text == (GOLDEN / name).read_text()
    assert not sweep_dir.exists(), "a dry run creates nothing"


def test_unknown_study_scale_or_profile_fails_before_submitting(tmp_path):
    with pytest.raises(ValueError, match="unknown study 'cloning'; studies: cloning_noise"):
        submit_sweep("cloning", "smoke", tmp_path / "s")
    with pytest.raises(ValueError, match="study bitflip has no scale 'tiny'; scales: smoke"):
        submit_sweep("bitflip", "tiny", tmp_path / "s")
    with pytest.raises(ValueError, match="unknown SLURM profile 'v100'"):
        submit_sweep("bitflip", "smoke", tmp_path / "s", profile="v100")
    with pytest.raises(ValueError, match="unknown profile field"):
        submit_sweep("bitflip", "smoke", tmp_path / "s", partiton="gpu")
    with pytest.raises(ValueError, match="nodes must be a positive integer, got 0"):
        submit_sweep("bitflip", "smoke", tmp_path / "s", nodes=0)
    assert not (tmp_path / "s").exists()
