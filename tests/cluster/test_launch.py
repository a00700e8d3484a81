"""`submit_sweep(..., dry_run=True)`: the sbatch script and the checks before submitting.

The golden scripts in golden/ are written by hand from the options each case asks for (sorted
`#SBATCH` lines as sbatch reads them), never regenerated from the code. The script is the one
submitit writes for a real submission: test_slurm.py and the stub-sbatch test below compare them.
"""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

import pytest

from cluster import submit_sweep
from cluster.launch import SweepBusy
from cluster.profiles import slurm_knobs
from sweeps.profiles import parse_mem_gb, parse_time

GOLDEN = Path(__file__).parent / "golden"


def normalised(script: str, sweep_dir: Path) -> str:
    """The paths that vary between machines, as placeholders."""
    script = script.replace(shlex.quote(sys.executable), "<PYTHON>")
    return script.replace(str(sweep_dir.resolve()), "<SWEEP_DIR>")


CASES = [
    (
        "sbatch_a100_2nodes.sh",
        "cloning_noise",
        "paper",
        {
            "nodes": 2,
            "slurm": [
                "partition=gpu",
                "time=2-00:00:00",
                "account=lop",
                "qos=long",
                "constraint=a100-80gb",
                "exclude=gpu07",
            ],
            "sbatch": ["--reservation=lop-week"],
            "setup": ["module load cuda/12.4"],
            "requeue": True,
        },
    ),
    # bit flip needs no GPU: the cpu profile by default
    ("sbatch_cpu_bitflip.sh", "bitflip", "paper", {"slurm": ["partition=cpu", "time=1:30:00"]}),
    ("sbatch_local.sh", "bitflip", "smoke", {"profile": "local", "time_min": 20, "account": "lop"}),
]


@pytest.mark.parametrize(("name", "study", "scale", "kwargs"), CASES)
def test_dry_run_sbatch_script_matches_the_hand_written_one(tmp_path, name, study, scale, kwargs):
    sweep_dir = tmp_path / f"{study}-{scale}"
    script = submit_sweep(study, scale, sweep_dir, dry_run=True, **kwargs)
    assert normalised(script, sweep_dir) == (GOLDEN / name).read_text()
    assert "--wckey" not in script  # submitit's default, rejected by clusters without wckeys
    assert not sweep_dir.exists(), "a dry run creates nothing"


def test_slurm_knobs_parse_slurm_formats_and_refuse_unknown_keys():
    assert [parse_time(t) for t in ("90", "1:30", "4:00:00", "2-00:00:00", "1-2")] == [
        90,
        2,  # 1 min 30 s, rounded up
        240,
        2880,
        1560,
    ]
    assert [parse_mem_gb(t) for t in ("240G", "240GB", "4096M", "4096", "1T")] == [
        240,
        240,
        4,
        4,
        1024,
    ]
    fields, passed = slurm_knobs(["gpus-per-node=8", "mem=200G", "mail-type=END", "wckey=lop"])
    assert fields == {"gpus_per_node": 8, "mem_gb": 200}
    assert passed == {"mail_type": "END", "wckey": "lop"}
    with pytest.raises(ValueError, match="--slurm partiton: not a parameter; valid: account"):
        slurm_knobs(["partiton=gpu"])
    with pytest.raises(ValueError, match=r"--slurm nodes: not a parameter \(use --nodes\)"):
        slurm_knobs(["nodes=2"])
    with pytest.raises(ValueError, match="expected minutes, H:M:S or D-H:M:S"):
        slurm_knobs(["time=soon"])


def test_a_trial_that_does_not_fit_the_profile_is_refused_before_submitting(tmp_path):
    with pytest.raises(ValueError, match="needs 1 GPU per trial and SLURM profile cpu"):
        submit_sweep("cloning_noise", "paper", tmp_path / "s", profile="cpu", dry_run=True)
    with pytest.raises(ValueError, match="needs 2 CPUs per trial; SLURM profile a100"):
        submit_sweep(
            "cloning_noise", "paper", tmp_path / "s", slurm=["cpus-per-task=1"], dry_run=True
        )


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


def _stub(folder: Path, name: str, body: str) -> None:
    path = folder / name
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)


def test_dry_run_is_the_script_submitit_submits_and_a_queued_job_blocks_a_second(
    tmp_path, monkeypatch
):
    """Pins the private submitit function the dry run uses (`_make_sbatch_string`): submitit's
    public `SlurmExecutor.submit` hands `sbatch` the same script. `sbatch` and `squeue` are stubs
    that record their arguments and answer as SLURM does (`srun` only needs to exist)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _stub(bin_dir, "sbatch", f'cp "$1" {tmp_path}/submitted.sh\necho "Submitted batch job 4242"')
    _stub(bin_dir, "squeue", f'echo "$@" > {tmp_path}/squeue.args\necho PENDING')
    _stub(bin_dir, "srun", "exit 0")  # submitit checks that it is on a SLURM login node
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    sweep_dir = tmp_path / "bitflip-smoke"
    kwargs = {"profile": "local", "time_min": 20}
    dry = submit_sweep("bitflip", "smoke", sweep_dir, dry_run=True, **kwargs)
    job = submit_sweep("bitflip", "smoke", sweep_dir, **kwargs)
    assert job.job_id == "4242"
    assert (tmp_path / "submitted.sh").read_text() == dry
    assert (sweep_dir / "slurm" / "last_job").read_text().strip() == "4242"
    with pytest.raises(SweepBusy, match="SLURM job 4242 of .* is PENDING"):
        submit_sweep("bitflip", "smoke", sweep_dir, **kwargs)
    assert (tmp_path / "squeue.args").read_text().split() == ["-h", "-j", "4242", "-o", "%T"]
