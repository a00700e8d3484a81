"""docs/extending.md's worked example, exactly as written there: a new intervention (L2 Init) in
every experiment.

The guide's new file and diffs are applied to a copy of `core/`, and each experiment's smoke
configuration (its study's `base_config()` and first smoke grid point) runs four times in that
copy: without the intervention, with `l2_init.rate=0`, and with `l2_init.rate=1` at two learning
rates. Rate 0 must leave every record row unchanged (the intervention draws no random number and
changes nothing); rate 1 restores the initial weights after every step, so every row (losses,
accuracies, probe metrics) is independent of the learning rate, while it differs from the rate-0
run. A diff that no longer applies means the guide has fallen behind the code.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]
GUIDE = REPO / "docs" / "extending.md"
STUDIES = {"continual": "continual", "cloning": "cloning_noise", "bitflip": "bitflip"}
# a second learning rate for each experiment (every optimizer of its smoke configuration)
OTHER_LR = {
    "continual": {"optimizer.lr": 0.1},
    "cloning": {"optimizer.lr": 0.1, "clone_optimizer.lr": 0.1},
    "bitflip": {"lr": (0.1,)},
}
# shorter than the studies' smoke scale (fewer steps, two probe metrics), same code paths
PROBE = {"probe.metrics": ("dead_fraction", "effective_rank")}
SHORTER = {
    "continual": PROBE,
    "cloning": {"base_epochs": 1, "clone_epochs": 1, **PROBE},
    "bitflip": {"steps": 10_000},
}

RUN = r"""
import json, sys
from pathlib import Path
import core
assert Path(core.__file__).resolve().is_relative_to(Path.cwd().resolve()), core.__file__
from core.run.config import experiment_config, experiment_module
from core.run.record import RunRecord

runs, out = json.loads(sys.argv[1]), Path(sys.argv[2])
for name, (experiment, values) in runs.items():
    cfg = experiment_config(experiment, values)
    experiment_module(experiment).run(cfg, RunRecord(out / name))
"""


CHECK = r"""
import torch
from core.optim import L2Init
from core.run.config import experiment_config

p = torch.tensor([1.0])
step = L2Init([p], rate=0.25)
p.fill_(2.0)
step.step()
print(p.item())
for experiment in ("continual", "cloning", "bitflip"):
    try:
        experiment_config(experiment, {"l2_init.enabled": True, "l2_init.rate": 2.0})
    except ValueError as err:
        print(str(err).split()[0])
"""


def guide_edits(text: str) -> tuple[dict[str, str], list[tuple[str, list[str]]]]:
    """The guide's new files ({path: source}) and diff hunks ([(path, hunk lines)])."""
    new_files = dict(re.findall(r"<!-- new file: (\S+) -->\n```python\n(.*?)```", text, re.S))
    hunks = []
    for block in re.findall(r"```diff\n(.*?)```", text, re.S):
        path = None
        for part in re.split(r"^(?=@@|--- )", block, flags=re.M):
            if part.startswith("--- "):
                path = re.search(r"^\+\+\+ b/(\S+)", part, re.M)[1]
            elif part.startswith("@@"):
                hunks.append((path, part.splitlines()[1:]))
    return new_files, hunks


def apply_hunk(source: str, lines: list[str]) -> str:
    """`source` with the hunk applied where its old lines (context and removals) stand, found by
    content (line numbers ignored); exactly one place must match."""
    old = [line[1:] for line in lines if line[:1] in (" ", "-")]
    new = [line[1:] for line in lines if line[:1] in (" ", "+")]
    text = source.splitlines()
    at = [i for i in range(len(text) - len(old) + 1) if text[i : i + len(old)] == old]
    assert len(at) == 1, f"the hunk's old lines match {len(at)} places:\n" + "\n".join(old)
    return "\n".join(text[: at[0]] + new + text[at[0] + len(old) :]) + "\n"


def patched_core(target: Path) -> Path:
    """A copy of the repository's `core/` with the guide's worked example applied."""
    shutil.copytree(REPO / "core", target / "core", ignore=shutil.ignore_patterns("__pycache__"))
    new_files, hunks = guide_edits(GUIDE.read_text())
    assert new_files and hunks, "the guide's worked example is missing"
    for path, source in new_files.items():
        assert not (target / path).exists(), f"{path} is not a new file"
        (target / path).write_text(source)
    for path, lines in hunks:
        file = target / path
        file.write_text(apply_hunk(file.read_text(), lines))
    return target


def smoke_config(experiment: str) -> dict:
    from sweeps.configs import first_point
    from sweeps.studies import get_study

    study = get_study(STUDIES[experiment])
    values = {**study.base_config(), **first_point(study.param_space("smoke"))}
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    return {**values, **SHORTER.get(experiment, {})}


def rows(record: Path) -> pd.DataFrame:
    """Every row of the record and of its member records, ordered, without the run ids (bit-flip
    member records are named after their learning rate: they are numbered instead)."""
    from core.run import schema
    from core.run.record import load_metrics

    records = sorted(schema.find_records(record))
    frames = []
    for k, found in enumerate(records):
        frame = load_metrics(found).drop(columns="run_id")
        frame.insert(0, "record", k)
        frames.append(frame)
    keys = ["record", "step", "split", "layer", "metric"]
    return pd.concat(frames).sort_values(keys).reset_index(drop=True)


def test_the_guide_s_hunks_apply_by_content_and_only_in_one_place():
    source = "a\nb\nc\nb\n"
    assert apply_hunk(source, [" a", "-b", "+B", " c"]) == "a\nB\nc\nb\n"
    with pytest.raises(AssertionError, match="match 2 places"):
        apply_hunk(source, ["-b", "+B"])


@pytest.mark.slow
def test_the_worked_example_intervention_runs_in_every_experiment(tmp_path):
    copy = patched_core(tmp_path / "copy")
    on = {"l2_init.enabled": True}
    runs = {}
    for experiment in STUDIES:
        smoke = smoke_config(experiment)
        runs[f"{experiment}-off"] = (experiment, smoke)
        runs[f"{experiment}-rate0"] = (experiment, {**smoke, **on, "l2_init.rate": 0.0})
        runs[f"{experiment}-rate1"] = (experiment, {**smoke, **on, "l2_init.rate": 1.0})
        faster = {**smoke, **on, "l2_init.rate": 1.0, **OTHER_LR[experiment]}
        runs[f"{experiment}-rate1-lr"] = (experiment, faster)
    out = tmp_path / "records"
    subprocess.run(
        [sys.executable, "-c", RUN, json.dumps(runs), str(out)],
        cwd=copy,
        env={**os.environ, "PYTHONPATH": str(copy)},
        check=True,
        timeout=900,
    )
    env = {**os.environ, "PYTHONPATH": str(copy)}
    done = subprocess.run(
        [sys.executable, "-c", CHECK], cwd=copy, env=env, capture_output=True, text=True, check=True
    )
    # the rule by hand (p = 2, p_0 = 1, rate 0.25 -> 1.75); a bad rate refused in every experiment
    assert done.stdout.split() == [
        "1.75",
        "l2_init.rate=2.0;",
        "l2_init.rate=2.0;",
        "l2_init.rate=2.0;",
    ]
    for experiment in STUDIES:
        off, rate0, rate1, rate1_lr = (
            rows(out / f"{experiment}-{v}") for v in ("off", "rate0", "rate1", "rate1-lr")
        )
        assert len(off) > 0
        pd.testing.assert_frame_equal(rate0, off)  # rate 0: nothing changes
        pd.testing.assert_frame_equal(rate1_lr, rate1)  # rate 1: the learning rate is irrelevant
        assert not rate1["value"].equals(rate0["value"])  # ... and the intervention acts
