"""Ray Tune sweeps of the paper's studies: `python -m sweeps run STUDY --scale smoke|paper`.

Public surface: `run_sweep`, `summarize`, `exit_code`, `plan`, `resolved_space` (sweeps.driver),
`SweepLock`, `SweepLocked` (sweeps.lock), `Mirror` (sweeps.mirror, the MLflow mirror), `point_id`,
`same_as` (sweeps.configs) and the study registry (`sweeps.studies`). See docs/sweeps.md.
"""
