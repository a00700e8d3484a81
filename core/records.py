"""The run record: one directory per run, the only thing a run leaves behind.

```
<run_dir>/
  config.json        {"run_id", "config": resolved config, "provenance": git SHA, packages, device}
  status.json        {"status": running|completed|diverged|failed, "reason": ..., **extra}
  metrics/           part-000000.parquet, ...: long format run_id, step, split, layer, metric, value
  checkpoints/       step-000001000.pt, ...: whatever the experiment saves (torch.save dicts)
```

Resume contract. A checkpoint at step s promises that every row with step <= s has been logged
before it (`save_checkpoint` flushes first) and that the saved state is the state after step s.
`load_checkpoint` returns the latest checkpoint and deletes every metric row with step > s (or every
row, when there is no checkpoint), so a run killed at any moment and restarted from that checkpoint
writes each row exactly once. Every file is written to a temporary name and renamed into place, so
a kill never leaves a half-written chunk, checkpoint or status behind.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import subprocess
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

STATUSES = ("running", "completed", "diverged", "failed")
COLUMNS = ("run_id", "step", "split", "layer", "metric", "value")
PACKAGES = ("torch", "torchvision", "numpy", "pandas", "pyarrow", "tqdm")

_SCHEMA = pa.schema(
    [
        ("run_id", pa.string()),
        ("step", pa.int64()),
        ("split", pa.string()),
        ("layer", pa.string()),
        ("metric", pa.string()),
        ("value", pa.float64()),
    ]
)


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _write_json(path: Path, obj: Mapping[str, Any]) -> None:
    _atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def _jsonable(value: Any) -> Any:
    """Dataclasses, tuples and paths as plain JSON values."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def provenance(device: str | None = None) -> dict[str, Any]:
    """Git SHA (and whether the tree had uncommitted changes), package versions, device, host."""
    repo = Path(__file__).resolve().parent.parent

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(
                ["git", *args], cwd=repo, capture_output=True, text=True, timeout=10, check=True
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip()

    packages = {}
    for name in PACKAGES:
        try:
            packages[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            packages[name] = None
    status = git("status", "--porcelain", "--untracked-files=no")
    return {
        "git_sha": git("rev-parse", "HEAD"),
        "git_dirty": None if status is None else bool(status),
        "packages": packages,
        "python": platform.python_version(),
        "device": device,
        "cuda_device": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "host": platform.node(),
    }


def checkpoint_paths(run_dir: str | Path) -> dict[int, Path]:
    """The checkpoints of the record in `run_dir`, {step: path}, by increasing step (reads only)."""
    paths = sorted((Path(run_dir) / "checkpoints").glob("step-*.pt"))
    return {int(p.stem.removeprefix("step-")): p for p in paths}


class RunRecord:
    """The sink an experiment's `run(cfg, sink)` writes to (see the module docstring).

    `log` buffers rows; `flush` writes the buffer as one new Parquet chunk; it is called by
    `save_checkpoint`, by `set_status`, and whenever `flush_rows` rows are buffered.
    """

    def __init__(
        self,
        run_dir: str | Path,
        run_id: str | None = None,
        keep_checkpoints: int = 2,
        flush_rows: int = 100_000,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.run_id = run_id if run_id is not None else self.run_dir.resolve().name
        self.keep_checkpoints = keep_checkpoints
        self.flush_rows = flush_rows
        self.metrics_dir = self.run_dir / "metrics"
        self.checkpoint_dir = self.run_dir / "checkpoints"
        self.metrics_dir.mkdir(parents=True, exist_ok=True)
        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        self._rows: dict[str, list] = {c: [] for c in COLUMNS}

    # --- config ------------------------------------------------------------------------------

    def write_config(self, config: Any, device: str | None = None) -> None:
        """Write config.json: the resolved config (a Mapping or a dataclass) and the provenance.

        A record that already holds a config (a resumed run) must be given the same config: a
        different one raises, since its rows would mix two experiments.
        """
        resolved = _jsonable(config)
        path = self.run_dir / "config.json"
        if path.exists():
            existing = json.loads(path.read_text())["config"]
            if existing != json.loads(json.dumps(resolved)):
                raise ValueError(
                    f"{path} holds a different config; resume a run with the config it was "
                    "started with, or give the new run another directory"
                )
        _write_json(
            path,
            {"run_id": self.run_id, "config": resolved, "provenance": provenance(device)},
        )

    # --- metrics -----------------------------------------------------------------------------

    def log(self, step: int, values: Mapping[str, float], split: str = "train") -> None:
        """Buffer one row per value: key "<layer>/<metric>" or "<metric>" (layer "")."""
        rows = self._rows
        for key, value in values.items():
            layer, _, metric = key.rpartition("/")
            rows["run_id"].append(self.run_id)
            rows["step"].append(int(step))
            rows["split"].append(split)
            rows["layer"].append(layer)
            rows["metric"].append(metric)
            rows["value"].append(float(value))
        if len(rows["step"]) >= self.flush_rows:
            self.flush()

    def flush(self) -> None:
        """Write the buffered rows as one new chunk `metrics/part-NNNNNN.parquet`."""
        if not self._rows["step"]:
            return
        table = pa.Table.from_pydict(self._rows, schema=_SCHEMA)
        existing = sorted(self.metrics_dir.glob("part-*.parquet"))
        index = int(existing[-1].stem.split("-")[1]) + 1 if existing else 0
        path = self.metrics_dir / f"part-{index:06d}.parquet"
        tmp = path.with_name(path.name + ".tmp")
        pq.write_table(table, tmp)
        os.replace(tmp, path)
        self._rows = {c: [] for c in COLUMNS}

    def _discard_rows_after(self, step: int) -> None:
        """Delete every written row with step > `step`, chunk by chunk, each atomically."""
        self._rows = {c: [] for c in COLUMNS}
        for path in sorted(self.metrics_dir.glob("part-*.parquet")):
            table = pq.read_table(path, schema=_SCHEMA)
            kept = table.filter(pc.less_equal(table["step"], step))
            if kept.num_rows == table.num_rows:
                continue
            if kept.num_rows == 0:
                path.unlink()
                continue
            tmp = path.with_name(path.name + ".tmp")
            pq.write_table(kept, tmp)
            os.replace(tmp, path)

    # --- checkpoints -------------------------------------------------------------------------

    def save_checkpoint(self, step: int, state: dict) -> None:
        """Flush the rows, then write `state` (torch.save-able) as the checkpoint of `step`."""
        self.flush()
        path = self.checkpoint_dir / f"step-{int(step):012d}.pt"
        tmp = path.with_name(path.name + ".tmp")
        torch.save({"step": int(step), "state": state}, tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        for old in list(checkpoint_paths(self.run_dir).values())[: -self.keep_checkpoints]:
            old.unlink()

    def load_checkpoint(self) -> tuple[int, dict] | None:
        """The latest checkpoint as (step, state), or None; rows after it are deleted.

        Call it once at the start of a run, before logging: with no checkpoint every row of an
        earlier attempt is deleted, so a restarted run starts from an empty record.
        """
        for tmp in self.checkpoint_dir.glob("*.tmp"):
            tmp.unlink()
        for tmp in self.metrics_dir.glob("*.tmp"):
            tmp.unlink()
        checkpoints = list(checkpoint_paths(self.run_dir).values())
        if not checkpoints:
            self._discard_rows_after(-1)
            return None
        saved = torch.load(checkpoints[-1], map_location="cpu", weights_only=True)
        self._discard_rows_after(saved["step"])
        return saved["step"], saved["state"]

    # --- status ------------------------------------------------------------------------------

    def set_status(self, status: str, reason: str = "", **extra: Any) -> None:
        """Flush, then write status.json: `status` in STATUSES, a reason, and any JSON extras."""
        if status not in STATUSES:
            raise ValueError(f"unknown status {status!r}; valid: {', '.join(STATUSES)}")
        self.flush()
        _write_json(
            self.run_dir / "status.json",
            {"status": status, "reason": reason, **_jsonable(extra)},
        )

    @property
    def status(self) -> str | None:
        """The recorded status, or None for a record with no status yet."""
        info = self.status_info
        return None if info is None else info["status"]

    @property
    def status_info(self) -> dict[str, Any] | None:
        """The whole of status.json, or None."""
        path = self.run_dir / "status.json"
        if not path.exists():
            return None
        return json.loads(path.read_text())


def load_metrics(run_dir: str | Path) -> pd.DataFrame:
    """Every metric row of a run record, in long format, sorted by step (stable)."""
    paths = sorted((Path(run_dir) / "metrics").glob("part-*.parquet"))
    if not paths:
        return _SCHEMA.empty_table().to_pandas()
    table = pa.concat_tables([pq.read_table(p, schema=_SCHEMA) for p in paths])
    frame = table.to_pandas()
    return frame.sort_values("step", kind="stable").reset_index(drop=True)
