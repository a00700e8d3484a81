"""Run records -> tables with confidence intervals -> the paper's figures. Reads files only.

Public surface:
- `intervals`: pure estimators on a 1-D array of per-seed values (`t_interval`,
  `bootstrap_interval`, `Interval`);
- `runs`: finding run records under a sweep directory and compacting them into one table
  (`find_runs`, `load_sweep`, `SEED_KEYS`);
- `aggregate`: per-configuration tables (`summarize`, `select_values`) and the CLI
  `python analysis/aggregate.py SWEEP_DIR`;
- `figures`: the paper's figure families (`python -m analysis.figures SWEEP_DIR`).

No module here imports core, sweeps, ray or mlflow: the analysis parses the files the run
records leave behind (docs/analysis.md).
"""
