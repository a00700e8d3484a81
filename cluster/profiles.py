"""`--slurm key=value` knobs and `--sbatch` lines on top of the named profiles (sweeps/profiles.py).

    slurm_knobs(["partition=gpu", "time=4:00:00", "gpus-per-node=8", "exclude=gpu07"])

Keys other than the profile's fields are submitit SlurmExecutor parameters, passed through;
submitit's default `--wckey=submitit`, which clusters without wckeys reject, is never sent.
"""

from __future__ import annotations

from collections.abc import Iterable

import submitit

from sweeps.profiles import PROFILE_KNOBS, profile_fields

# submitit parameters the launcher sets itself
OWNED = ("nodes", "ntasks_per_node", "job_name", "additional_parameters", "setup", "num_gpus")


def slurm_knobs(items: Iterable[str]) -> tuple[dict[str, object], dict[str, object]]:
    """`--slurm KEY=VALUE` items as (profile field overrides, other submitit parameters).

    The profile's fields as `sweeps.profiles.profile_fields` reads them; any other parameter of
    submitit's SlurmExecutor (exclude, nodelist, gres, mail_type, comment, wckey, ...) is passed
    through as given. An unknown key raises ValueError listing the valid ones (the parameter list
    is submitit's `SlurmExecutor._valid_parameters()`, pinned by tests/cluster/test_launch.py)."""
    items = list(items)
    valid = sorted(set(PROFILE_KNOBS) | set(submitit.SlurmExecutor._valid_parameters()))
    valid = [k for k in valid if k not in OWNED]
    fields, passed = profile_fields(items)
    for key in passed:
        if key not in valid:
            hint = " (use --nodes)" if key == "nodes" else ""
            raise ValueError(
                f"--slurm {key}: not a parameter{hint}; valid: {', '.join(valid)} (an sbatch "
                "option submitit does not know: --sbatch OPTION=VALUE)"
            )
    return fields, dict(passed)


def sbatch_lines(items: Iterable[str]) -> dict[str, object]:
    """`--sbatch OPTION[=VALUE]` items (any sbatch option, e.g. `reservation=x`, `requeue`) as
    submitit's `additional_parameters`: one `#SBATCH --OPTION[=VALUE]` line each."""
    out: dict[str, object] = {}
    for item in items:
        key, sep, value = item.lstrip("-").partition("=")
        if not key:
            raise ValueError(f"--sbatch {item!r}: expected OPTION or OPTION=VALUE")
        out[key.replace("-", "_")] = value if sep else True
    return out
