"""The run record's on-disk format, the one place that knows it (torch-free: analysis, sweeps and
theory import it without importing torch).

```
<run_dir>/
  config.json        {"run_id", "experiment": continual|cloning|bitflip, "config": resolved config,
                      "provenance": git SHA, packages, device, host}
  status.json        {"status": running|completed|diverged|failed, "reason": ..., **extra}
  metrics/           part-000000.parquet, ...: long format run_id, step, split, layer, metric, value
  checkpoints/       step-000000001000.pt, ...: whatever the experiment saves (torch.save dicts)
  members/<name>/    (bit-flip ensemble trials) one complete run record per member
  base_states/       (a cloning sweep's shared base, config part=base) step-000000100.pt, ...:
                     the base's state at the expansion and at each clone check
```

A shared base (config `"part": "base"`) is computed once for every clone run that starts from it
(`"part": "clone"`, `"base_from"`: the base's record dir); each such clone record holds the base's
rows as well, so analysis reads the clone records only. The split keys route the computation and
never change a result (a split trial equals the whole one): analysis groups without them.

`layer` is "" for whole-model scalars; a row's identity is (run_id, step, split, layer, metric).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa

EXPERIMENTS = ("continual", "cloning", "bitflip")
STATUSES = ("running", "completed", "diverged", "failed")
FINISHED = ("completed", "diverged")  # statuses a rerun returns without training

COLUMNS = ("run_id", "step", "split", "layer", "metric", "value")
KEY = ("run_id", "step", "split", "layer", "metric")  # a row's identity
SCHEMA = pa.schema(
    [
        ("run_id", pa.string()),
        ("step", pa.int64()),
        ("split", pa.string()),
        ("layer", pa.string()),
        ("metric", pa.string()),
        ("value", pa.float64()),
    ]
)

CONFIG_FILE = "config.json"
STATUS_FILE = "status.json"
METRICS_DIR = "metrics"
CHECKPOINTS_DIR = "checkpoints"
MEMBERS_DIR = "members"
CHUNK_GLOB = "part-*.parquet"
CHECKPOINT_GLOB = "step-*.pt"
BASE_STATES_DIR = "base_states"
SPLIT_KEYS = ("part", "base_from")  # config keys of the base/clone split (see above)
SHARED_BASE = "base"  # the value of "part" in a shared base's config


def config_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / CONFIG_FILE


def status_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / STATUS_FILE


def base_state_path(run_dir: str | Path, step: int) -> Path:
    """A shared base's saved state after `step` steps."""
    return Path(run_dir) / BASE_STATES_DIR / f"step-{step:09d}.pt"


def metrics_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / METRICS_DIR


def checkpoints_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / CHECKPOINTS_DIR


def members_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / MEMBERS_DIR


def chunk_path(run_dir: str | Path, index: int) -> Path:
    """The path of the `index`-th metric chunk."""
    return metrics_dir(run_dir) / f"part-{index:06d}.parquet"


def chunk_paths(run_dir: str | Path) -> list[Path]:
    """The record's metric chunks, in the order they were written."""
    return sorted(metrics_dir(run_dir).glob(CHUNK_GLOB))


def chunk_index(path: Path) -> int:
    return int(path.stem.removeprefix("part-"))


def checkpoint_path(run_dir: str | Path, step: int) -> Path:
    return checkpoints_dir(run_dir) / f"step-{int(step):012d}.pt"


def checkpoint_paths(run_dir: str | Path) -> dict[int, Path]:
    """The record's checkpoints, {step: path}, by increasing step (reads only)."""
    paths = sorted(checkpoints_dir(run_dir).glob(CHECKPOINT_GLOB))
    return {int(p.stem.removeprefix("step-")): p for p in paths}


def is_record(path: str | Path) -> bool:
    """Whether `path` is a run record (a config.json next to a metrics/ folder)."""
    return config_path(path).is_file() and metrics_dir(path).is_dir()


def find_records(root: str | Path) -> list[Path]:
    """Every run record at or below `root` (ensemble trials and their members both), sorted."""
    root = Path(root)
    return sorted(p.parent for p in root.rglob(CONFIG_FILE) if is_record(p.parent))


def read_config(run_dir: str | Path) -> dict[str, Any]:
    """The whole of config.json: run_id, experiment, config, provenance."""
    path = config_path(run_dir)
    info = json.loads(path.read_text())
    if "config" not in info:
        raise ValueError(f"{path} has no 'config' entry; is it a run record?")
    return info


def read_status(run_dir: str | Path) -> dict[str, Any] | None:
    """The whole of status.json, or None for a record with no status yet."""
    path = status_path(run_dir)
    if not path.exists():
        return None
    return json.loads(path.read_text())


def config_document(
    run_id: str, experiment: str, config: dict[str, Any], provenance: dict[str, Any]
) -> dict[str, Any]:
    """config.json's content (the layout `read_config` returns)."""
    if experiment not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {experiment!r}; valid: {', '.join(EXPERIMENTS)}")
    return {"run_id": run_id, "experiment": experiment, "config": config, "provenance": provenance}
