"""Sweeps on SLURM through submitit: a Ray cluster on an allocation, requeue -> Tuner.restore.

Public surface:
    submit_sweep(study, scale, sweep_dir, *, profile="a100", nodes=1, dry_run=False, **overrides)
    PROFILES, Profile, get_profile      named SLURM resource profiles (cluster/profiles.py)
    SweepJob                            the submitit Checkpointable that runs inside the job
See docs/cluster.md.
"""

from cluster.job import SweepJob
from cluster.launch import submit_sweep
from cluster.profiles import PROFILES, Profile, get_profile

__all__ = ["PROFILES", "Profile", "SweepJob", "get_profile", "submit_sweep"]
