"""Ray Tune sweeps of the paper's studies: `python -m sweeps run STUDY --scale smoke|paper`.

Public surface: `run_sweep`, `sweep_status` (sweeps.driver) and the study registry
(`sweeps.studies`).
"""
