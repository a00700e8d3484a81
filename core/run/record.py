"""The run record: one directory per run (layout and names: `core.run.schema`), the only thing a
run leaves behind; `RunRecord` is the sink an experiment's `run(cfg, sink)` writes to.

Nothing is created on disk before `write_config`, so a run refused before it starts (a bad config,
a missing dataset) leaves no folder behind.

Resume contract. A checkpoint at step s promises that every row with step <= s has been logged
before it (`save_checkpoint` flushes first) and that the saved state is the state after step s.
`load_checkpoint` returns the newest readable checkpoint (an unreadable newest one is set aside as
`*.corrupt` and the older one used) and deletes every metric row with step > s (or every row, when
there is none), so a run killed at any moment and restarted from that checkpoint writes each row
exactly once. Every file is written to a temporary name and renamed into place, so a kill never
leaves a half-written chunk, checkpoint or status behind.

Storage at the end (`finish`): the run's chunks are compacted into one, the status is written, and
the checkpoints are removed (the final one is kept with `keep_final_checkpoint`, e.g. for the
stability analysis). The compacted chunk records in its Parquet metadata that it holds every row
of the chunks with a lower index; if a kill interrupts the deletion of those chunks, the next
`load_checkpoint` deletes the rest, so no row is ever counted twice.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import subprocess
import sys
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from core.run import schema

PACKAGES = ("torch", "torchvision", "numpy", "pandas", "pyarrow", "tqdm")
_COMPACTED = b"lop.holds_lower_chunks"  # metadata of a compacted chunk


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _write_json(path: Path, obj: Mapping[str, Any]) -> None:
    _atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def _write_table(table: pa.Table, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, path)


def jsonable(value: Any) -> Any:
    """Dataclasses, tuples and paths as plain JSON values."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def provenance(device: str | None = None) -> dict[str, Any]:
    """Git SHA (and whether the tree had uncommitted changes), package versions, device, host."""
    repo = Path(__file__).resolve().parents[2]

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


def _read_chunk(path: Path) -> pa.Table:
    return pq.read_table(path, schema=schema.SCHEMA)


class RunRecord:
    """The sink of one run (see the module docstring).

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
        self.metrics_dir = schema.metrics_dir(self.run_dir)
        self.checkpoint_dir = schema.checkpoints_dir(self.run_dir)
        self._rows: dict[str, list] = {c: [] for c in schema.COLUMNS}
        self.opened = False  # whether this attempt wrote config.json (the run has started)

    # --- config ------------------------------------------------------------------------------

    def write_config(self, config: Any, experiment: str, device: str | None = None) -> None:
        """Create the record and write config.json: the run id, the experiment, the resolved
        config (a Mapping or a dataclass) and the provenance (`schema.config_document`).

        A record that already holds a config (a resumed run) must be given the same config: a
        different one raises, since its rows would mix two experiments.
        """
        resolved = jsonable(config)
        path = schema.config_path(self.run_dir)
        if path.exists():
            existing = schema.read_config(self.run_dir)["config"]
            if existing != json.loads(json.dumps(resolved)):
                raise ValueError(
                    f"{path} holds a different config; resume a run with the config it was "
                    "started with, or give the new run another directory"
                )
        document = schema.config_document(self.run_id, experiment, resolved, provenance(device))
        self.metrics_dir.mkdir(parents=True, exist_ok=True)
        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        _write_json(path, document)
        self.opened = True

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

    def _next_chunk(self) -> Path:
        existing = schema.chunk_paths(self.run_dir)
        return schema.chunk_path(
            self.run_dir, schema.chunk_index(existing[-1]) + 1 if existing else 0
        )

    def flush(self) -> None:
        """Write the buffered rows as one new chunk."""
        if not self._rows["step"]:
            return
        self.metrics_dir.mkdir(parents=True, exist_ok=True)
        _write_table(pa.Table.from_pydict(self._rows, schema=schema.SCHEMA), self._next_chunk())
        self._rows = {c: [] for c in schema.COLUMNS}

    def compact(self) -> None:
        """Flush, then merge every chunk into one new chunk and delete the others (see the
        module docstring for why a kill in between never duplicates a row)."""
        self.flush()
        chunks = schema.chunk_paths(self.run_dir)
        if len(chunks) < 2:
            return
        table = pa.concat_tables([_read_chunk(p) for p in chunks])
        table = table.replace_schema_metadata({_COMPACTED: b"1"})
        _write_table(table, self._next_chunk())
        for path in chunks:
            path.unlink()

    def _finish_compaction(self) -> None:
        """Delete the chunks a compacted chunk holds, left behind by a kill during `compact`."""
        chunks = schema.chunk_paths(self.run_dir)
        for i, path in enumerate(chunks):
            meta = pq.read_schema(path).metadata or {}
            if _COMPACTED in meta:
                for older in chunks[:i]:
                    older.unlink(missing_ok=True)

    def _discard_rows_after(self, step: int) -> None:
        """Delete every written row with step > `step`, chunk by chunk, each atomically."""
        self._rows = {c: [] for c in schema.COLUMNS}
        for path in schema.chunk_paths(self.run_dir):
            table = _read_chunk(path)
            kept = table.filter(pc.less_equal(table["step"], step))
            if kept.num_rows == table.num_rows:
                continue
            if kept.num_rows == 0:
                path.unlink()
                continue
            _write_table(kept, path)

    # --- checkpoints -------------------------------------------------------------------------

    def save_checkpoint(self, step: int, state: dict) -> None:
        """Flush the rows, then write `state` (torch.save-able) as the checkpoint of `step`."""
        self.flush()
        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        path = schema.checkpoint_path(self.run_dir, step)
        tmp = path.with_name(path.name + ".tmp")
        torch.save({"step": int(step), "state": state}, tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        for old in list(schema.checkpoint_paths(self.run_dir).values())[: -self.keep_checkpoints]:
            old.unlink()

    def load_checkpoint(self) -> tuple[int, dict] | None:
        """The newest readable checkpoint as (step, state), or None; rows after it are deleted.

        Call it once at the start of a run, before logging: with no checkpoint every row of an
        earlier attempt is deleted, so a restarted run starts from an empty record. A checkpoint
        that cannot be read is renamed `<name>.corrupt` (named on stderr) and the older one tried.
        """
        for folder in (self.checkpoint_dir, self.metrics_dir):
            for tmp in folder.glob("*.tmp"):
                tmp.unlink()
        self._finish_compaction()
        for path in reversed(schema.checkpoint_paths(self.run_dir).values()):
            try:
                saved = torch.load(path, map_location="cpu", weights_only=True)
            except Exception as err:  # a damaged file fails in many ways (pickle, zip, EOF)
                print(
                    f"warning: checkpoint {path} is unreadable ({type(err).__name__}: {err}); "
                    "falling back to the one before it",
                    file=sys.stderr,
                )
                path.rename(path.with_name(path.name + ".corrupt"))
                continue
            self._discard_rows_after(saved["step"])
            return saved["step"], saved["state"]
        self._discard_rows_after(-1)
        return None

    def prune_checkpoints(self, keep_final: bool) -> None:
        """Delete the checkpoints (and set-aside corrupt ones); with `keep_final` the newest
        checkpoint stays."""
        paths = list(schema.checkpoint_paths(self.run_dir).values())
        for path in paths[:-1] if keep_final else paths:
            path.unlink()
        for path in self.checkpoint_dir.glob("*.corrupt"):
            path.unlink()

    # --- status ------------------------------------------------------------------------------

    def set_status(self, status: str, reason: str = "", **extra: Any) -> None:
        """Flush, then write status.json: `status` in STATUSES, a reason, and any JSON extras."""
        if status not in schema.STATUSES:
            raise ValueError(f"unknown status {status!r}; valid: {', '.join(schema.STATUSES)}")
        self.flush()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        _write_json(
            schema.status_path(self.run_dir),
            {"status": status, "reason": reason, **jsonable(extra)},
        )

    def finish(
        self, status: str, reason: str = "", *, keep_final_checkpoint: bool = False, **extra: Any
    ) -> None:
        """End the run with a finished `status` (completed, diverged): compact its chunks, write
        the status, then remove its checkpoints (all but the final one with
        `keep_final_checkpoint`)."""
        if status not in schema.FINISHED:
            raise ValueError(f"finish takes {', '.join(schema.FINISHED)}, got {status!r}")
        self.compact()
        self.set_status(status, reason, **extra)
        self.prune_checkpoints(keep_final_checkpoint)

    @property
    def status(self) -> str | None:
        """The recorded status, or None for a record with no status yet."""
        info = self.status_info
        return None if info is None else info["status"]

    @property
    def status_info(self) -> dict[str, Any] | None:
        """The whole of status.json, or None."""
        return schema.read_status(self.run_dir)


def load_metrics(run_dir: str | Path) -> pd.DataFrame:
    """Every metric row of a run record, in long format, sorted by step (stable)."""
    paths = schema.chunk_paths(run_dir)
    if not paths:
        return schema.SCHEMA.empty_table().to_pandas()
    table = pa.concat_tables([_read_chunk(p) for p in paths])
    frame = table.to_pandas()
    return frame.sort_values("step", kind="stable").reset_index(drop=True)
