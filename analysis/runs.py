"""Find the run records under a sweep directory and compact them into one dataset.

A run record is any directory holding `config.json` and a `metrics/` folder of Parquet chunks
(long format: run_id, step, split, layer, metric, value; written by core.records). A record that
holds other records below it (a bit-flip ensemble trial, whose members live under `members/`) is
a container: its own rows are trial-level summaries, so only the records below it are read.

The compacted dataset lives in `<sweep>/analysis/`: `records.parquet` (every metric row),
`runs.parquet` (one row per run: run_id, run_dir, status, reason, and the experiment config
flattened with "." keys) and `manifest.json` (path, size and mtime of every input file). It is
rebuilt whenever the manifest differs, i.e. whenever a record changed.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

COLUMNS = ("run_id", "step", "split", "layer", "metric", "value")
KEY = ("run_id", "step", "split", "layer", "metric")  # a row's identity
SEED_KEYS = ("seed",)  # config keys runs are replicated over; keys ending in ".seed" too
OUTPUT_DIR = "analysis"  # inside the sweep directory
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


def is_seed_key(key: str, seed_keys: tuple[str, ...] = SEED_KEYS) -> bool:
    """Whether the flattened config key `key` is a seed: one of `seed_keys` or ending in '.k'."""
    return any(key == k or key.endswith(f".{k}") for k in seed_keys)


def flatten(config: dict, prefix: str = "") -> dict:
    """Nested dicts as one level with "." keys; lists become JSON strings (hashable)."""
    out = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}."))
        elif isinstance(value, list | tuple):
            out[name] = json.dumps(list(value))
        else:
            out[name] = value
    return out


def _is_record(path: Path) -> bool:
    return (path / "config.json").is_file() and (path / "metrics").is_dir()


def find_runs(sweep_dir: str | Path) -> list[Path]:
    """Every leaf run record under `sweep_dir`, sorted (containers of records are skipped)."""
    sweep_dir = Path(sweep_dir)
    records = sorted(p.parent for p in sweep_dir.rglob("config.json") if _is_record(p.parent))
    records = [p for p in records if OUTPUT_DIR not in p.relative_to(sweep_dir).parts[:1]]
    inner = set(records)
    return [p for p in records if not any(q != p and p in q.parents for q in inner)]


def _inputs(runs: list[Path]) -> list[Path]:
    files = []
    for run in runs:
        files += [run / "config.json", run / "status.json"]
        files += sorted((run / "metrics").glob("*.parquet"))
    return [f for f in files if f.exists()]


def _manifest(sweep_dir: Path, runs: list[Path]) -> list[list]:
    return [
        [str(f.relative_to(sweep_dir)), f.stat().st_size, f.stat().st_mtime_ns]
        for f in _inputs(runs)
    ]


def _run_row(sweep_dir: Path, run: Path) -> dict:
    info = json.loads((run / "config.json").read_text())
    if "config" not in info:
        raise ValueError(f"{run / 'config.json'} has no 'config' entry; is it a run record?")
    status_path = run / "status.json"
    status = json.loads(status_path.read_text()) if status_path.exists() else {}
    return {
        "run_id": info.get("run_id", run.name),
        "run_dir": str(run.relative_to(sweep_dir)),
        "status": status.get("status", "unknown"),
        "reason": status.get("reason", ""),
        **flatten(info["config"]),
    }


def compact(sweep_dir: Path, runs: list[Path]) -> tuple[pd.DataFrame, pd.DataFrame, int]:
    """(records, runs, duplicates dropped) read from the record files.

    Rows are deduplicated on (run_id, step, split, layer, metric), keeping the first; the records
    never write a row twice, so duplicates mean a copied run record, and are counted.
    """
    table = pd.DataFrame([_run_row(sweep_dir, r) for r in runs])
    table = table.drop_duplicates("run_id", keep="first").reset_index(drop=True)
    for column in [c for c in table.columns if pd.api.types.is_object_dtype(table[c])]:
        kinds = {type(v) for v in table[column] if v is not None and v == v}  # not NaN
        if len(kinds) > 1:  # e.g. int and str: Parquet columns hold one type
            table[column] = table[column].map(lambda v: v if v is None or v != v else str(v))
    chunks = [
        pq.read_table(path, schema=_SCHEMA)
        for run in runs
        for path in sorted((run / "metrics").glob("*.parquet"))
    ]
    frame = (pa.concat_tables(chunks) if chunks else _SCHEMA.empty_table()).to_pandas()
    before = len(frame)
    frame = frame.drop_duplicates(list(KEY), keep="first")
    frame = frame.sort_values(list(KEY), kind="stable").reset_index(drop=True)
    return frame, table, before - len(frame)


def load_sweep(sweep_dir: str | Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(records, runs) of the sweep, from the compacted dataset, rebuilt if a record changed."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise FileNotFoundError(f"no sweep directory {sweep_dir}: run `make sweep-cloning` first")
    runs = find_runs(sweep_dir)
    if not runs:
        raise FileNotFoundError(
            f"no run records under {sweep_dir} (a run record is a directory with config.json and "
            "metrics/): run `make sweep-cloning` (or another sweep-* target) first"
        )
    out = sweep_dir / OUTPUT_DIR
    manifest = _manifest(sweep_dir, runs)
    manifest_path = out / "manifest.json"
    if manifest_path.exists() and json.loads(manifest_path.read_text()) == manifest:
        return pd.read_parquet(out / "records.parquet"), pd.read_parquet(out / "runs.parquet")
    records, table, dropped = compact(sweep_dir, runs)
    if dropped:
        print(f"note: dropped {dropped} duplicate rows (same run_id, step, split, layer, metric)")
    out.mkdir(exist_ok=True)
    records.to_parquet(out / "records.parquet", index=False)
    table.to_parquet(out / "runs.parquet", index=False)
    manifest_path.write_text(json.dumps(manifest) + "\n")
    return records, table
