"""Run records -> tables with confidence intervals -> the paper's figures -> a report. Reads files.

Public surface:
- `intervals`: pure estimators on a 1-D array of per-seed values (`t_interval`,
  `bootstrap_interval`, `Interval`);
- `runs`: finding run records under a sweep directory and compacting them into one dataset
  (`find_runs`, `load_sweep` -> `Sweep`, `SEED_KEYS`, `META`);
- `options`: the options the commands share (`--where`, `--status`, `--seed-keys`,
  `--experiment`), `select_runs` and `output_name` (file names that encode the options);
- `aggregate`: per-configuration tables (`summarize`, `select_values`) and the CLI
  `python -m analysis.aggregate SWEEP_DIR`;
- `figures`: the paper's figure families in small multiples (`bands`, `layout`, `plot_grid`;
  `python -m analysis.figures SWEEP_DIR`);
- `report`: a Markdown report of one sweep (`python -m analysis.report SWEEP_DIR`);
- `catalog`: the metric names and config keys read, per experiment.

The record format (file names, columns, config.json layout, the experiment kind) is read only
through `core.run.schema`, which is torch-free; nothing here imports torch, sweeps, ray or mlflow
(docs/analysis.md).
"""
