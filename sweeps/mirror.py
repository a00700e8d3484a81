"""The MLflow mirror of a sweep: a copy of its Parquet run records, rebuilt from them at will.

    python -m sweeps mlflow-sync SWEEP_DIR     # bring the store up to date with the records
    MLFLOW_TRACKING_URI=http://server:5000 python -m sweeps mlflow-sync SWEEP_DIR   # central one

One MLflow experiment per sweep (named in sweep.json when the sweep is created, so moving the
directory changes nothing), one MLflow run per grid point, found by its tag `lop.point` (the point
id, sweeps.configs.point_id): never one per Tune trial or per attempt. Each run holds

- params: the record's full resolved config (config.json), flattened to dotted keys;
- metrics: every row of the record as `<split>/<metric>` or `<split>/<layer>/<metric>` at its
  step (timestamp 0: records hold no wall time per row);
- tags: `lop.point`, `study`, `scale`, `seed`, `status` and `reason` (status.json), `git_sha`,
  `git_dirty`, `python` and `package.<name>` (the provenance in config.json, which each attempt
  rewrites), `attempts` and `attempt.<n>.git_sha` (the driver's journal of trial starts,
  `attempts.jsonl`), and the MLflow run status: RUNNING, FINISHED (completed, diverged), FAILED.

Faithful and idempotent. Only rows that no resume can take back are mirrored: all rows of a
finished record, and the rows up to the newest checkpoint of an unfinished one (a resumed run
deletes and writes again only rows after its checkpoint). Rows go in a fixed order (step, split,
layer, metric); each batch carries the count of rows mirrored so far (tag `lop.mirrored_rows`) in
the same `log_batch` call, so an interrupted sync resumes where the store says it stopped, and a
row sent twice anyway is the same (key, step, value, timestamp), which MLflow stores once. So the
metric history of every key equals the record's rows, whatever the sequence of kills, retries and
re-runs. (A store whose history drifted some other way is rebuilt by deleting it and running
mlflow-sync.)

Off the trials' path. The live sweep's driver runs the mirror in a thread (`MirrorThread`) that
syncs every `interval_s` from the files: trials only write Parquet, and a slow MLflow store slows
nothing but the mirror. The store is `MLFLOW_TRACKING_URI`, else `sqlite:///<sweep>/mlflow.db`
of the sweep's path at the time (`tracking_uri`).
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from core.run import schema

POINT_TAG = "lop.point"
ROWS_TAG = "lop.mirrored_rows"
ATTEMPTS_FILE = "attempts.jsonl"
BATCH = 999  # MLflow takes at most 1000 entities per log_batch: the metrics and ROWS_TAG
ORDER = ["step", "split", "layer", "metric"]


def tracking_uri(sweep_dir: str | Path) -> str:
    """`MLFLOW_TRACKING_URI` if set, else an SQLite file inside the sweep directory."""
    return (
        os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path(sweep_dir).resolve()}/mlflow.db"
    )


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in d.items():
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def metric_key(split: str, layer: str, metric: str) -> str:
    return f"{split}/{layer}/{metric}" if layer else f"{split}/{metric}"


def durable_rows(run_dir: Path) -> pa.Table:
    """The record's rows that no resume can take back, in mirror order (see the module docstring).

    Rows are read with the schema module's names; a row present twice (a kill during the
    compaction of the chunks leaves the compacted chunk next to the ones it holds) counts once.
    """
    status = schema.read_status(run_dir) or {}
    if status.get("status") in schema.FINISHED:
        limit = None
    else:
        checkpoints = schema.checkpoint_paths(run_dir)
        if not checkpoints:
            return schema.SCHEMA.empty_table()
        limit = max(checkpoints)
    tables = [pq.read_table(p, schema=schema.SCHEMA) for p in schema.chunk_paths(run_dir)]
    if not tables:
        return schema.SCHEMA.empty_table()
    frame = pa.concat_tables(tables).to_pandas()
    if limit is not None:
        frame = frame[frame["step"] <= limit]
    frame = frame.drop_duplicates(list(schema.KEY)).sort_values(ORDER, kind="stable")
    return pa.Table.from_pandas(frame, schema=schema.SCHEMA, preserve_index=False)


def read_attempts(sweep_dir: Path) -> dict[str, list[dict]]:
    """The driver's journal of trial starts (its "start" lines), by point."""
    path = sweep_dir / ATTEMPTS_FILE
    attempts: dict[str, list[dict]] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            if line.strip():
                entry = json.loads(line)
                if entry.get("event", "start") == "start":
                    attempts.setdefault(entry["point"], []).append(entry)
    return attempts


class Mirror:
    """Syncs a sweep's records into its MLflow experiment (see the module docstring)."""

    def __init__(self, sweep_dir: str | Path, uri: str | None = None) -> None:
        self.sweep_dir = Path(sweep_dir).resolve()
        manifest = json.loads((self.sweep_dir / "sweep.json").read_text())
        self.study, self.scale = manifest["study"], manifest["scale"]
        self.experiment_name = manifest.get("mlflow_experiment", self.sweep_dir.name)
        self.uri = uri or tracking_uri(self.sweep_dir)
        self.client = MlflowClient(tracking_uri=self.uri)
        found = self.client.get_experiment_by_name(self.experiment_name)
        self.experiment_id = (
            found.experiment_id
            if found is not None
            else self.client.create_experiment(self.experiment_name, self._artifacts())
        )
        self._runs: dict[str, dict[str, Any]] = {}  # point -> {"id", "rows", "tags"}
        self._seen: dict[str, tuple] = {}  # point -> the files' fingerprint at the last sync
        for run in self._search():
            point = run.data.tags.get(POINT_TAG)
            if point is not None:
                self._runs[point] = {
                    "id": run.info.run_id,
                    "rows": int(run.data.tags.get(ROWS_TAG, 0)),
                    "tags": dict(run.data.tags),
                    "params": bool(run.data.params),
                    "status": run.info.status,
                }

    def _artifacts(self) -> str | None:
        """The mirror logs no artifacts; a local store keeps its (empty) artifact root inside
        the sweep instead of MLflow's default `./mlruns` of the working directory."""
        return str(self.sweep_dir / "mlartifacts") if self.uri.startswith("sqlite:") else None

    def _search(self) -> Iterable[Any]:
        token = None
        while True:
            page = self.client.search_runs([self.experiment_id], max_results=1000, page_token=token)
            yield from page
            token = page.token
            if not token:
                return

    def forget(self, point: str) -> None:
        """Delete the point's MLflow run (a reset point's record is gone; its next run starts a
        new MLflow run)."""
        run = self._runs.pop(point, None)
        self._seen.pop(point, None)
        if run is not None:
            self.client.delete_run(run["id"])

    def points(self) -> list[str]:
        runs = self.sweep_dir / "runs"
        return sorted(p.name for p in runs.iterdir() if p.is_dir()) if runs.is_dir() else []

    def sync(self, points: Iterable[str] | None = None) -> dict[str, int]:
        """One pass over the records (all, or `points`): returns rows and runs written."""
        attempts = read_attempts(self.sweep_dir)
        written = {"rows": 0, "runs": 0}
        for point in self.points() if points is None else points:
            run_dir = self.sweep_dir / "runs" / point
            fingerprint = _fingerprint(run_dir) + (len(attempts.get(point, ())),)
            if self._seen.get(point) == fingerprint:
                continue
            try:
                rows = self._sync_point(point, run_dir, attempts.get(point, []))
            except FileNotFoundError:
                continue  # the record changed under us (a chunk compacted away): next pass
            except pa.ArrowInvalid as err:  # a damaged chunk: said once, tried again if it changes
                print(f"MLflow mirror: {run_dir} has an unreadable chunk ({err})", flush=True)
                self._seen[point] = fingerprint
                continue
            self._seen[point] = fingerprint
            written["rows"] += rows
            written["runs"] += 1
        return written

    def _run(self, point: str) -> dict[str, Any]:
        if point not in self._runs:
            run = self.client.create_run(
                self.experiment_id,
                run_name=point,
                tags={POINT_TAG: point, "study": self.study, "scale": self.scale, ROWS_TAG: "0"},
            )
            self._runs[point] = {
                "id": run.info.run_id,
                "rows": 0,
                "tags": {},
                "params": False,
                "status": "RUNNING",
            }
        return self._runs[point]

    def _sync_point(self, point: str, run_dir: Path, attempts: list[dict]) -> int:
        if not schema.status_path(run_dir).exists() and not schema.config_path(run_dir).exists():
            return 0
        run = self._run(point)
        tags = {POINT_TAG: point, "study": self.study, "scale": self.scale}
        params: dict[str, Any] = {}
        if schema.config_path(run_dir).exists():
            info = schema.read_config(run_dir)
            params = flatten(info["config"])
            provenance = info.get("provenance") or {}
            tags["experiment"] = str(info.get("experiment"))
            if "seed" in params:
                tags["seed"] = str(params["seed"])
            for key in ("git_sha", "git_dirty", "python", "device", "host"):
                if provenance.get(key) is not None:
                    tags[key] = str(provenance[key])
            for name, version in (provenance.get("packages") or {}).items():
                tags[f"package.{name}"] = str(version)
        status = schema.read_status(run_dir) or {}
        if status:
            tags["status"] = str(status.get("status"))
            tags["reason"] = str(status.get("reason", ""))[:5000]
        if attempts:
            tags["attempts"] = str(len(attempts))
            for n, entry in enumerate(attempts, start=1):
                tags[f"attempt.{n}.git_sha"] = str(entry.get("git_sha"))
        if not run["params"] and params:
            items = [Param(k, str(v)[:6000]) for k, v in params.items()]
            for start in range(0, len(items), 100):
                self.client.log_batch(run["id"], params=items[start : start + 100])
            run["params"] = True
        changed = [RunTag(k, v) for k, v in tags.items() if run["tags"].get(k) != v]
        for start in range(0, len(changed), 100):
            self.client.log_batch(run["id"], tags=changed[start : start + 100])
        run["tags"].update(tags)

        table = durable_rows(run_dir)
        new = table.slice(run["rows"])
        columns = {c: new[c].to_pylist() for c in ("step", "split", "layer", "metric", "value")}
        for start in range(0, new.num_rows, BATCH):
            stop = min(start + BATCH, new.num_rows)
            metrics = [
                Metric(
                    metric_key(columns["split"][i], columns["layer"][i], columns["metric"][i]),
                    columns["value"][i],
                    0,
                    columns["step"][i],
                )
                for i in range(start, stop)
            ]
            done = run["rows"] + stop - start
            self.client.log_batch(run["id"], metrics=metrics, tags=[RunTag(ROWS_TAG, str(done))])
            run["rows"] = done
        mlflow_status = {"completed": "FINISHED", "diverged": "FINISHED", "failed": "FAILED"}.get(
            status.get("status"), "RUNNING"
        )
        if mlflow_status != run["status"]:
            if mlflow_status == "RUNNING":
                self.client.update_run(run["id"], status="RUNNING")
            else:
                self.client.set_terminated(run["id"], status=mlflow_status)
            run["status"] = mlflow_status
        return new.num_rows


def _fingerprint(run_dir: Path) -> tuple:
    """What changes when a record changes: the names, sizes and mtimes of its files."""
    entries = []
    for sub in (run_dir, schema.metrics_dir(run_dir), schema.checkpoints_dir(run_dir)):
        try:
            with os.scandir(sub) as it:
                for entry in it:
                    if entry.is_file():
                        st = entry.stat()
                        entries.append((sub.name, entry.name, st.st_size, st.st_mtime_ns))
        except FileNotFoundError:
            continue
    return tuple(sorted(entries))


class MirrorThread(threading.Thread):
    """`Mirror.sync` every `interval_s` in the background, and once more at `stop()`.

    A failing store (a server down) is reported once per kind of error and retried at the next
    pass: the sweep itself never waits for MLflow."""

    def __init__(self, sweep_dir: Path, interval_s: float = 10.0) -> None:
        super().__init__(name="mlflow-mirror", daemon=True)
        self.sweep_dir = sweep_dir
        self.interval_s = interval_s
        self._stop_event = threading.Event()
        self._mirror: Mirror | None = None
        self.errors: list[str] = []

    def _pass(self) -> None:
        try:
            if self._mirror is None:
                self._mirror = Mirror(self.sweep_dir)
            self._mirror.sync()
        except Exception as err:  # the mirror must never take the sweep down
            text = f"{type(err).__name__}: {err}"
            if text not in self.errors:
                self.errors.append(text)
                print(f"MLflow mirror: {text} (retrying; the records are unaffected)", flush=True)

    def run(self) -> None:
        while not self._stop_event.wait(self.interval_s):
            self._pass()

    def stop(self) -> None:
        self._stop_event.set()
        self.join()
        self._pass()
