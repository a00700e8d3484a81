"""The experiments: each module has a `Config` dataclass and `run(cfg, sink) -> dict`, and runs
alone as `python -m core.experiments.<name> key=value ...` (see `core.run.cli`).

`continual` (paper §3.1), `cloning` (paper §2, experiments of §4), `bitflip` (paper §B).
"""
