"""The run kernel every experiment shares. Import from the modules (this package imports nothing,
so `core.run.schema` and `core.run.config` stay torch-free for analysis and sweeps):

- `core.run.schema`: the record's on-disk format (file names, columns, statuses, config.json).
- `core.run.seeds`: `seed_for(seed, purpose, *index)`, the one seeding rule.
- `core.run.specs`: `ModelSpec`, `OptimizerSpec`, `CBPSpec`, `ReDoSpec`, `ShrinkPerturbSpec`,
  `PrecisionSpec`.
- `core.run.precision`: `check`, `precision_scope`, `training_forward` (the `precision.*` keys).
- `core.run.config`: `field_types`, `parse_overrides`, `apply_overrides`, `config_help`,
  `experiment_config`, `experiment_module`.
- `core.run.build`: `build_optimizer`, `build_interventions` (-> `Interventions`),
  `intervention_streams`.
- `core.run.record`: `RunRecord` (the sink), `load_metrics`.
- `core.run.lifecycle`: `run_recorded`, `resolve_device`, `generators`, `DropoutStream`,
  `RunningStats`, `Divergence`, `DIVERGENCE_CEILING`, `CheckpointPolicy`, `end_interval` (a log point: divergence check, rows, checkpoint).
- `core.run.cli`: `main(experiment, Config, run)`, the `python -m core.experiments.<name>`
  command, and its `EXIT_CODES`.
"""
