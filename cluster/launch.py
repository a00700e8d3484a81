"""Submit a study's sweep to SLURM: one job of N nodes running a Ray cluster and the Tune driver.

    python -m cluster submit cloning_noise --scale paper --sweep-dir /shared/sweeps/cn-paper

    job = submit_sweep("cloning_noise", "paper", "/shared/sweeps/cloning_noise-paper")
    print(job.job_id, job.paths.stdout)
    print(submit_sweep("bitflip", "smoke", "/shared/sweeps/b", profile="local", dry_run=True))

The sweep directory must be on storage that every node and the login node share: it holds the
run records and sweep.json (what a requeued job resumes from) and, under `slurm/`, the job's
submitit files (sbatch script, pickles, logs), the id of the last job submitted for it
(`slurm/last_job`) and the Ray token of the dashboard.

The dry run's script comes from submitit's `_make_sbatch_string`, the function its SlurmExecutor
writes the submitted script with (private API: tests/cluster/test_launch.py pins that the two are
the same, with a stub `sbatch` that records what it is given).
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import submitit
from submitit.slurm.slurm import _make_sbatch_string

from cluster.job import SweepJob
from sweeps.profiles import Profile, get_profile

SLURM_SUBDIR = "slurm"
LAST_JOB_FILE = "last_job"


class SweepBusy(RuntimeError):
    """The sweep's previous job is still queued or running, or a driver holds its directory."""


def check_not_busy(sweep_dir: Path) -> None:
    """Raise SweepBusy when a submission now would run the sweep twice at once."""
    from sweeps.lock import held_by

    holder = held_by(sweep_dir)
    if holder is not None:
        raise SweepBusy(f"{sweep_dir} is in use by {holder}; submit again once it has ended")
    last = sweep_dir / SLURM_SUBDIR / LAST_JOB_FILE
    if last.exists() and shutil.which("squeue") is not None:
        job_id = last.read_text().strip()
        out = subprocess.run(
            ["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True
        )
        state = out.stdout.strip().splitlines()[0] if out.stdout.strip() else ""
        if state:
            raise SweepBusy(
                f"SLURM job {job_id} of {sweep_dir} is {state}; wait for it (it resumes the "
                f"sweep), or `scancel {job_id}` and submit again"
            )


def sbatch_parameters(
    profile: Profile,
    nodes: int,
    job_name: str,
    passed: Mapping[str, object] | None = None,
    sbatch: Mapping[str, object] | None = None,
    setup: Sequence[str] = (),
    requeue: bool = False,
) -> dict:
    """The submitit SlurmExecutor parameters of a sweep job: one task per node, the profile's
    request, `passed` submitit parameters (`--slurm`), raw `sbatch` lines, shell `setup` lines
    before the job starts, `--requeue` (SLURM may requeue the job itself, e.g. on a node
    failure). Never a `--wckey` unless asked for (`--slurm wckey=...`)."""
    params = {
        "job_name": job_name,
        "partition": profile.partition,
        "nodes": nodes,
        "ntasks_per_node": 1,
        "cpus_per_task": profile.cpus_per_task,
        "gpus_per_node": profile.gpus_per_node or None,
        "mem": f"{profile.mem_gb:g}GB"
        if profile.mem_gb == int(profile.mem_gb)
        else f"{round(profile.mem_gb * 1024)}MB",
        "time": profile.time_min,
        "signal_delay_s": profile.signal_delay_s,
        "account": profile.account,
        "qos": profile.qos,
        "constraint": profile.constraint,
        **(passed or {}),
    }
    extra = {**(sbatch or {}), **({"requeue": True} if requeue else {})}
    if extra:
        params["additional_parameters"] = extra
    if setup:
        params["setup"] = list(setup)
    params = {key: value for key, value in params.items() if value is not None}
    return {"wckey": None, **params}  # None, not absent: submitit's default is "submitit"


def submit_sweep(
    study: str,
    scale: str,
    sweep_dir: str | Path,
    *,
    profile: str | None = None,
    nodes: int = 1,
    dry_run: bool = False,
    extend: bool = False,
    slurm: Sequence[str] = (),
    sbatch: Sequence[str] = (),
    setup: Sequence[str] = (),
    requeue: bool = False,
    config: Sequence[str] = (),
    **fields: object,
) -> submitit.Job | str:
    """Submit (or, with `dry_run`, return the sbatch script of) the sweep job of `study`.

    Returns the job's first task (node 0, the head): `result()` waits for the sweep's summary,
    `paths.stdout` is the head's log; `job_id` and `cancel()` are the whole job's.

    `profile` (sweeps/profiles.py; default a100 for a study whose trials need a GPU, else cpu),
    its `fields` replaced (e.g. `time_min=240`), then the `slurm` knobs (`KEY=VALUE`, see
    `cluster.profiles.slurm_knobs`), raw `sbatch` lines (`OPTION[=VALUE]`), shell `setup` lines
    and `requeue` (`#SBATCH --requeue`). `config`: `key=value` overrides of the study's base
    config, as on `python -m sweeps run`. The study, scale, every grid point's config and the
    trial's resources on a node of the profile are checked (the sweep's pre-flight) before
    anything is submitted; a submission while the sweep's previous job is queued or running
    raises SweepBusy. Submitting again after the job ended (or failed) finishes the same sweep;
    `extend` as in `python -m sweeps run --extend`.
    """
    from cluster.profiles import sbatch_lines, slurm_knobs
    from sweeps.driver import load_study, parse_config_overrides, plan
    from sweeps.target import check_resources, slurm_target

    overrides = parse_config_overrides(study, scale, config)  # the study and scale, too
    knobs, passed = slurm_knobs(slurm)
    resources = load_study(study).resources(scale)
    profile = profile or ("a100" if resources.get("gpu") else "cpu")
    node = get_profile(profile, **{**fields, **knobs})
    if not isinstance(nodes, int) or nodes < 1:
        raise ValueError(f"nodes must be a positive integer, got {nodes!r}")
    check_resources(
        resources, slurm_target(profile, nodes, {**fields, **knobs}), f"study {study} ({scale})"
    )
    # unknown study, scale, key or value, missing data: fail before submitting
    plan(study, scale, prepare_data=not dry_run, overrides=overrides)
    sweep_dir = Path(sweep_dir).resolve()
    folder = sweep_dir / SLURM_SUBDIR
    params = sbatch_parameters(
        node,
        nodes,
        job_name=f"lop-{study}-{scale}",
        passed=passed,
        sbatch=sbatch_lines(sbatch),
        setup=setup,
        requeue=requeue,
    )
    if dry_run:
        # What submitit's SlurmExecutor writes for these parameters (a test checks it is).
        command = (
            f"{shlex.quote(sys.executable)} -u -m submitit.core._submit {shlex.quote(str(folder))}"
        )
        return _make_sbatch_string(command=command, folder=folder, **params)
    if shutil.which("sbatch") is None:
        raise RuntimeError(
            "sbatch not found: submit from a SLURM login node, or run locally (python -m sweeps "
            "run), or --dry-run to see the sbatch script"
        )
    check_not_busy(sweep_dir)
    executor = submitit.SlurmExecutor(folder=folder, max_num_timeout=node.max_timeouts)
    executor.update_parameters(**params)
    job = executor.submit(SweepJob(), study, scale, str(sweep_dir), extend, tuple(config))
    (folder / LAST_JOB_FILE).write_text(f"{job.job_id}\n")
    # A job of N nodes is N tasks to submitit, whose `result()` refuses a job of several tasks;
    # the other nodes' tasks only run Ray workers and return None.
    return job.task(0)
