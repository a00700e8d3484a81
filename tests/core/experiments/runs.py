"""Running an experiment for a test: in this process (`run_in_process`), or as a real
`python -m core.experiments.<name>` process killed with SIGKILL a seeded delay after it has
checkpointed past a given step (`run_and_kill`, `kill_points`); comparing run records
(`comparable`); and the two together: a run killed and resumed against an uninterrupted one
(`killed_and_resumed`)."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType

import pandas as pd

from core.run.config import parse_overrides
from core.run.record import RunRecord, load_metrics
from core.run.schema import checkpoint_paths

REPO = Path(__file__).resolve().parents[3]

# what every image-experiment test starts from: synthetic images, a small MLP on the CPU, and two
# of the probe's metrics (which keeps the tests fast)
TINY = [
    "dataset=synthetic",
    "model.arch=mlp",
    "device=cpu",
    "probe.metrics=dead_fraction,effective_rank",
]


def run_in_process(module: ModuleType, args: list[str], run_dir: Path) -> tuple[dict, RunRecord]:
    """`module.run` with the `key=value` overrides `args` on the record `run_dir`:
    (summary, record)."""
    record = RunRecord(run_dir)
    return module.run(parse_overrides(module.Config, args), record), record


def run_and_kill(module: str, args: list[str], run_dir: Path, after_step: int, delay: float) -> int:
    """Start the experiment; once a checkpoint at a step >= `after_step` exists, wait `delay`
    seconds (so that the kill lands between two log points, not right after a checkpoint) and
    SIGKILL it; return the step of the latest checkpoint before the kill. Fails if the run ends
    first."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    log = run_dir.parent / f"{run_dir.name}-{after_step}.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", module, *args, "--run-dir", str(run_dir)],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 300
        while True:
            steps = list(checkpoint_paths(run_dir))
            if steps and max(steps) >= after_step:
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise AssertionError(f"{module} ended before step {after_step}:\n{log.read_text()}")
            time.sleep(0.002)
        time.sleep(delay)
        steps = list(checkpoint_paths(run_dir))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert RunRecord(run_dir).status == "running", "the killed run must not have finished"
    return max(steps)


def comparable(run_dir: Path) -> pd.DataFrame:
    """A record's rows without the run id, in a canonical order; duplicate rows fail."""
    frame = load_metrics(run_dir).drop(columns="run_id")
    keys = ["step", "split", "layer", "metric"]
    duplicated = frame.duplicated(keys)
    assert not duplicated.any(), f"duplicated rows:\n{frame[duplicated]}"
    return frame.sort_values(keys).reset_index(drop=True)


def kill_points(seed: int, steps: range | list[range], delay: float) -> list[tuple[int, float]]:
    """Seeded kill points: (a step drawn from each range, a delay in [0, `delay`] s), printed so
    that a failing draw can be rerun."""
    draw = random.Random(seed)
    ranges = steps if isinstance(steps, list) else [steps]
    points = [(draw.choice(r), round(draw.uniform(0, delay), 4)) for r in ranges]
    print(f"kill points (seed {seed}): {points}")
    return points


def killed_and_resumed(
    module: ModuleType, args: list[str], root: Path, kills: list[tuple[int, float]]
) -> pd.DataFrame:
    """Run `module` uninterrupted in `root/uninterrupted`, and in `root/killed` SIGKILLed at each
    (step, delay) of `kills` (see `run_and_kill`) and then finished; both must end with the same
    summary and exactly the same rows. Returns those rows (`comparable`)."""
    reference, _ = run_in_process(module, args, root / "uninterrupted")
    for after, delay in kills:
        run_and_kill(module.__name__, args, root / "killed", after, delay)
    resumed, record = run_in_process(module, args, root / "killed")
    assert record.status == "completed"
    assert resumed == reference, f"kills {kills}"
    expected, got = comparable(root / "uninterrupted"), comparable(root / "killed")
    pd.testing.assert_frame_equal(got, expected, check_exact=True, obj=f"kills {kills}")
    return expected
