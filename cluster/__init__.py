"""Sweeps on SLURM through submitit: a Ray cluster on an allocation; a requeued job resumes the
sweep from its run records. `python -m cluster submit STUDY ...` is the command line.

Public surface:
    submit_sweep(study, scale, sweep_dir, *, profile="a100", nodes=1, dry_run=False,
                 extend=False, **overrides)
    SweepBusy                           a submission now would run the sweep twice at once
    PROFILES, Profile, get_profile      named SLURM resource profiles (sweeps/profiles.py)
    SweepJob                            the submitit Checkpointable that runs inside the job
See docs/cluster.md.
"""

from cluster.job import SweepJob
from cluster.launch import SweepBusy, submit_sweep
from sweeps.profiles import PROFILES, Profile, get_profile

__all__ = ["PROFILES", "Profile", "SweepBusy", "SweepJob", "get_profile", "submit_sweep"]
