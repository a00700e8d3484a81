"""Find the run records under a sweep directory and compact them into one dataset.

The record format (file names, the long-format columns run_id, step, split, layer, metric, value,
the config.json layout, the statuses) belongs to `core.run.schema`; this module reads records only
through it. A record that holds other records below it (a bit-flip ensemble trial, whose members
live under `members/`) is a container: its own rows are trial-level summaries, so only the
records below it are read. A cloning sweep's shared base (config part=base) is skipped too: every
clone record computed from it holds its rows, and the split keys (part, base_from) are dropped
from the runs table, so a sweep computed through shared bases groups like one computed whole.

Each run's experiment is `config.json`'s "experiment" entry (continual, cloning or bitflip).
Records written before config.json held it are refused with a message naming them, unless the
caller says which experiment they are (`load_sweep(..., experiment=...)`, `--experiment` on the
command lines): the analysis never guesses an experiment from config keys.

Unreadable files do not stop the analysis: a damaged metric chunk is skipped (the run keeps its
other chunks), a run whose config.json cannot be read is skipped, an unreadable status.json makes
the status "unknown"; `Sweep.unreadable` names each such file with the reason.

The compacted dataset lives in `<sweep>/analysis/`: `records.parquet` (every metric row),
`runs.parquet` (one row per run: run_id, run_dir, experiment, status, reason, and the experiment
config flattened with "." keys) and `manifest.json` (path, size and mtime of every input file,
and the unreadable ones). It is rebuilt whenever an input file changed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from core.run import schema

SEED_KEYS = ("seed",)  # config keys runs are replicated over; keys ending in ".seed" too
OUTPUT_DIR = "analysis"  # inside the sweep directory
META = ("run_id", "run_dir", "experiment", "status", "reason")  # runs columns not from the config
_LAYOUT = 2  # the compacted dataset's layout; a manifest of another layout is rebuilt


@dataclass(frozen=True)
class Sweep:
    """A sweep's compacted records: the metric rows, one row per run, and the files skipped."""

    records: pd.DataFrame  # columns core.run.schema.COLUMNS, deduplicated on its KEY
    runs: pd.DataFrame  # META columns, then the flattened config keys
    unreadable: tuple[str, ...]  # "path: reason" of each file skipped, relative to the sweep


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


def find_runs(sweep_dir: str | Path) -> list[Path]:
    """Every leaf run record under `sweep_dir`, sorted (containers of records are skipped)."""
    sweep_dir = Path(sweep_dir)
    records = schema.find_records(sweep_dir)
    records = [p for p in records if OUTPUT_DIR not in p.relative_to(sweep_dir).parts[:1]]
    inner = set(records)
    return [p for p in records if not any(q != p and p in q.parents for q in inner)]


def _inputs(runs: list[Path]) -> list[Path]:
    files = []
    for run in runs:
        files += [schema.config_path(run), schema.status_path(run), *schema.chunk_paths(run)]
    return [f for f in files if f.exists()]


def _manifest(sweep_dir: Path, runs: list[Path]) -> list[list]:
    return [
        [str(f.relative_to(sweep_dir)), f.stat().st_size, f.stat().st_mtime_ns]
        for f in _inputs(runs)
    ]


def _why(err: Exception, path: Path) -> str:
    """The error's type and first line, without the path it names (the note names it first)."""
    text = str(err).splitlines()[0] if str(err) else ""
    text = text.replace(f" '{path}'", "").replace(str(path), "the file")
    return f"{type(err).__name__}: {text}".rstrip(": ")


def _run_row(sweep_dir: Path, run: Path, unreadable: list[str]) -> dict | None:
    """The run's META and flattened config; None for a shared base, and (with a note in
    `unreadable`) if config.json cannot be read."""
    where = run.relative_to(sweep_dir)
    try:
        info = schema.read_config(run)
    except (OSError, ValueError) as err:  # json.JSONDecodeError is a ValueError
        path = schema.config_path(run)
        unreadable.append(f"{where / schema.CONFIG_FILE}: {_why(err, path)}; run skipped")
        return None
    try:
        status = schema.read_status(run) or {"status": "unknown"}
    except (OSError, ValueError) as err:
        why = _why(err, schema.status_path(run))
        unreadable.append(f"{where / schema.STATUS_FILE}: {why}; status taken as unknown")
        status = {"status": "unknown", "reason": "status.json unreadable"}
    if info["config"].get("part") == schema.SHARED_BASE:
        return None  # its rows are in each clone record computed from it
    config = {k: v for k, v in flatten(info["config"]).items() if k not in schema.SPLIT_KEYS}
    clash = sorted(set(config) & set(META))
    if clash:
        raise ValueError(f"{where / schema.CONFIG_FILE}: config keys {clash} clash with {META}")
    return {
        "run_id": info.get("run_id", run.name),
        "run_dir": str(where),
        "experiment": info.get("experiment"),  # None: written before records named it
        "status": status.get("status", "unknown"),
        "reason": status.get("reason", ""),
        **config,
    }


def _read_chunk(path: Path) -> pa.Table:
    """One metric chunk in the schema's columns and types; raises if it holds other columns."""
    table = pq.read_table(path)
    if tuple(table.column_names) != schema.COLUMNS:
        raise ValueError(f"columns {table.column_names}, expected {list(schema.COLUMNS)}")
    return table.cast(schema.SCHEMA)


def compact(sweep_dir: Path, runs: list[Path]) -> tuple[pd.DataFrame, pd.DataFrame, int, list]:
    """(records, runs, duplicates dropped, unreadable files) read from the record files.

    Rows are deduplicated on the schema's KEY, keeping the first; the records never write a row
    twice, so duplicates mean a copied run record, and are counted.
    """
    unreadable: list[str] = []
    rows = [(run, _run_row(sweep_dir, run, unreadable)) for run in runs]
    read = [run for run, row in rows if row is not None]
    kept = [row for _, row in rows if row is not None]
    table = pd.DataFrame(kept) if kept else pd.DataFrame(columns=list(META))
    table = table.drop_duplicates("run_id", keep="first").reset_index(drop=True)
    for column in [c for c in table.columns if pd.api.types.is_object_dtype(table[c])]:
        kinds = {type(v) for v in table[column] if v is not None and v == v}  # not NaN
        if len(kinds) > 1:  # e.g. int and str: Parquet columns hold one type
            table[column] = table[column].map(lambda v: v if v is None or v != v else str(v))
    chunks = []
    for run in read:
        for path in schema.chunk_paths(run):
            try:
                chunks.append(_read_chunk(path))
            except (pa.ArrowException, OSError, ValueError) as err:
                why = _why(err, path)
                unreadable.append(f"{path.relative_to(sweep_dir)}: {why}; chunk skipped")
    frame = (pa.concat_tables(chunks) if chunks else schema.SCHEMA.empty_table()).to_pandas()
    before = len(frame)
    frame = frame.drop_duplicates(list(schema.KEY), keep="first")
    frame = frame.sort_values(list(schema.KEY), kind="stable").reset_index(drop=True)
    return frame, table, before - len(frame), unreadable


def _with_experiment(sweep_dir: Path, runs: pd.DataFrame, experiment: str | None) -> pd.DataFrame:
    """`runs` with every run's experiment set: records lacking it take `experiment`, or are
    refused when it is None (the one place that decides about such records)."""
    if experiment is not None and experiment not in schema.EXPERIMENTS:
        raise ValueError(
            f"experiment {experiment!r} is not one; valid: {', '.join(schema.EXPERIMENTS)}"
        )
    missing = runs["experiment"].isna()
    if missing.any() and experiment is None:
        paths = [str(sweep_dir / d / schema.CONFIG_FILE) for d in runs.loc[missing, "run_dir"]]
        raise ValueError(
            f'{len(paths)} run record(s) have no "experiment" in config.json (written before '
            f"records named their experiment), e.g. {paths[0]}; say which experiment they are "
            f"with --experiment {{{','.join(schema.EXPERIMENTS)}}}"
        )
    return runs.assign(experiment=runs["experiment"].where(~missing, experiment))


def load_sweep(sweep_dir: str | Path, experiment: str | None = None) -> Sweep:
    """The sweep's records, from the compacted dataset, rebuilt if an input file changed.

    `experiment` is the experiment of records whose config.json has no "experiment" entry;
    without it such records raise ValueError.
    """
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise FileNotFoundError(f"no sweep directory {sweep_dir}: run `make sweep-cloning` first")
    runs = find_runs(sweep_dir)
    if not runs:
        raise FileNotFoundError(
            f"no run records under {sweep_dir} (a run record is a directory with "
            f"{schema.CONFIG_FILE} and {schema.METRICS_DIR}/): run `make sweep-cloning` (or "
            "another sweep-* target) first"
        )
    out = sweep_dir / OUTPUT_DIR
    inputs = _manifest(sweep_dir, runs)
    manifest_path = out / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    if isinstance(manifest, dict) and manifest.get("layout") == _LAYOUT:
        if manifest.get("inputs") == inputs:
            records = pd.read_parquet(out / "records.parquet")
            table = pd.read_parquet(out / "runs.parquet")
            table = _with_experiment(sweep_dir, table, experiment)
            return Sweep(records, table, tuple(manifest["unreadable"]))
    records, table, dropped, unreadable = compact(sweep_dir, runs)
    if dropped:
        print(f"note: dropped {dropped} duplicate rows (same {', '.join(schema.KEY)})")
    out.mkdir(exist_ok=True)
    records.to_parquet(out / "records.parquet", index=False)
    table.to_parquet(out / "runs.parquet", index=False)
    manifest = {"layout": _LAYOUT, "inputs": inputs, "unreadable": unreadable}
    manifest_path.write_text(json.dumps(manifest) + "\n")
    return Sweep(records, _with_experiment(sweep_dir, table, experiment), tuple(unreadable))
