"""Run records written by hand in the layout of core.run.schema, for the tests."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from core.run import schema


def write_run(
    run_dir: Path,
    config: dict,
    rows: list[tuple],
    status: str = "completed",
    chunks: int = 1,
    experiment: str | None = "cloning",
    reason: str = "",
) -> Path:
    """A run record: config.json (core.run.schema.config_document; `experiment=None` leaves the
    entry out, as records written before it existed), status.json, metrics/part-*.parquet of
    `rows` (step, split, layer, metric, value), split into `chunks` files."""
    run_id = run_dir.name
    schema.metrics_dir(run_dir).mkdir(parents=True)
    document = schema.config_document(run_id, experiment or "cloning", config, {"git_sha": "abc"})
    if experiment is None:
        del document["experiment"]
    schema.config_path(run_dir).write_text(json.dumps(document))
    schema.status_path(run_dir).write_text(json.dumps({"status": status, "reason": reason}))
    frame = pd.DataFrame(rows, columns=list(schema.COLUMNS[1:]))
    frame.insert(0, "run_id", run_id)
    frame["step"] = frame["step"].astype("int64")
    size = -(-len(frame) // chunks)
    for i in range(chunks):
        part = frame.iloc[i * size : (i + 1) * size]
        part.to_parquet(schema.chunk_path(run_dir, i), index=False)
    return run_dir


# final clone_train loss per (arch, seed): mlp -> 1..5, cnn -> 10, 20, 40
FINAL = {("mlp", s): float(s) for s in range(1, 6)} | {
    ("cnn", 1): 10.0,
    ("cnn", 2): 20.0,
    ("cnn", 3): 40.0,
}


def cloning_config(arch: str, seed: int) -> dict:
    return {
        "model": {"arch": arch, "norm": "batch", "hidden_sizes": [16, 16]},
        "optimizer": {"name": "sgd", "lr": 0.01},
        "clone_optimizer": {"name": "noisy_sgd", "lr": 0.01, "sigma0": 0.05},
        "clone_dropout": None,
        "seed": seed,
    }


def cloning_rows(final: float) -> list[tuple]:
    rows = []
    for step in (0, 10, 20):
        value = final if step == 20 else final + 100 - step
        rows += [
            (step, "clone_train", "", "loss", value),
            (step, "base_train", "", "loss", value + 1),
            (step, "clone_train", "", "acc", 0.5),
            (step, "clone_train", "", "r2_mean", 1 - step / 100),
            (step, "clone_train", "hidden1", "effective_rank", 5.0 + step),
            (step, "clone_train", "hidden2", "effective_rank", 3.0 + step),
            (step, "clone_train", "hidden1", "dead_fraction", 0.1),
        ]
    return rows


def write_missing_value_runs(sweep_dir: Path) -> None:
    """Four runs, seeds 1 and 2 of `clone_dropout` None and 0.1 (None: a value the config lacks),
    each with the clone_train loss step + seed + dropout at steps 0 and 5."""
    for dropout in (None, 0.1):
        for seed in (1, 2):
            write_run(
                sweep_dir / f"{dropout}-{seed}",
                {"seed": seed, "clone_dropout": dropout},
                [(s, "clone_train", "", "loss", s + seed + (dropout or 0.0)) for s in (0, 5)],
            )
