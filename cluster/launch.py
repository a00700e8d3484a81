"""Submit a study's sweep to SLURM: one job of N nodes running a Ray cluster and the Tune driver.

    job = submit_sweep("cloning_noise", "paper", "/shared/sweeps/cloning_noise-paper")
    print(job.job_id, job.paths.stdout)
    print(submit_sweep("bitflip", "smoke", "/shared/sweeps/b", profile="local", dry_run=True))

The sweep directory must be on storage that every node and the login node share: it holds the
run records, Tune's experiment state (what a requeued job restores) and, under `slurm/`, the job's
submitit files (sbatch script, pickles, logs) and the Ray token of the dashboard.
"""

from __future__ import annotations

import shlex
import shutil
import sys
from pathlib import Path

import submitit
from submitit.slurm.slurm import _make_sbatch_string

from cluster.job import SweepJob
from cluster.profiles import Profile, get_profile

SLURM_SUBDIR = "slurm"


def sbatch_parameters(profile: Profile, nodes: int, job_name: str) -> dict:
    """The submitit SlurmExecutor parameters of a sweep job: one task per node."""
    params = {
        "job_name": job_name,
        "partition": profile.partition,
        "nodes": nodes,
        "ntasks_per_node": 1,
        "cpus_per_task": profile.cpus_per_task,
        "gpus_per_node": profile.gpus_per_node or None,
        "mem": f"{profile.mem_gb:g}GB",
        "time": profile.time_min,
        "signal_delay_s": profile.signal_delay_s,
        "account": profile.account,
        "qos": profile.qos,
        "constraint": profile.constraint,
    }
    return {key: value for key, value in params.items() if value is not None}


def submit_sweep(
    study: str,
    scale: str,
    sweep_dir: str | Path,
    *,
    profile: str = "a100",
    nodes: int = 1,
    dry_run: bool = False,
    **overrides: object,
) -> submitit.Job | str:
    """Submit (or, with `dry_run`, return the sbatch script of) the sweep job of `study`.

    Returns the job's first task (node 0, the head): `result()` waits for the sweep's summary,
    `paths.stdout` is the head's log; `job_id` and `cancel()` are the whole job's.

    `overrides` replace fields of the profile (see `cluster.profiles.Profile`), e.g.
    `time_min=240`. The study, scale and every key of its space are checked before anything is
    submitted. Submitting again after the job ended (or failed) finishes the same sweep.
    """
    from sweeps.driver import resolved_space

    resources = get_profile(profile, **overrides)
    if not isinstance(nodes, int) or nodes < 1:
        raise ValueError(f"nodes must be a positive integer, got {nodes!r}")
    resolved_space(study, scale)  # unknown study, scale or key: fail before submitting
    sweep_dir = Path(sweep_dir).resolve()
    folder = sweep_dir / SLURM_SUBDIR
    params = sbatch_parameters(resources, nodes, job_name=f"lop-{study}-{scale}")
    if dry_run:
        # What submitit's SlurmExecutor writes for these parameters (a test checks it is).
        command = (
            f"{shlex.quote(sys.executable)} -u -m submitit.core._submit {shlex.quote(str(folder))}"
        )
        return _make_sbatch_string(command=command, folder=folder, **params)
    if shutil.which("sbatch") is None:
        raise RuntimeError(
            "sbatch not found: submit from a SLURM login node, or use --backend local, or "
            "--dry-run to see the sbatch script"
        )
    executor = submitit.SlurmExecutor(folder=folder, max_num_timeout=resources.max_timeouts)
    executor.update_parameters(**params)
    job = executor.submit(SweepJob(), study, scale, str(sweep_dir))
    # A job of N nodes is N tasks to submitit, whose `result()` refuses a job of several tasks;
    # the other nodes' tasks only run Ray workers and return None.
    return job.task(0)
