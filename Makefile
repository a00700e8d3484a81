# Every entry point a user or CI needs. CI runs `make test` and nothing else.
# `make install`: everything (core, analysis, sweeps, cluster, tests) in .venv, editable.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The torch build installed into the venv; override for another CUDA/CPU build.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1

.PHONY: install test lint clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install $(TORCH_SPEC)
	$(PY) -m pip install -e '.[sweeps,cluster,test]'
	touch $@

# Two pytest workers (pytest-xdist): the end-to-end tests (marked slow) run one after another on
# one of them, everything else on the other (tests/conftest.py); TEST_WORKERS=0 runs in-process.
TEST_WORKERS ?= 2
PYTEST = $(PY) -m pytest -q $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadgroup)

test: install
	$(PYTEST)

# The suite without the end-to-end tests marked slow (sweeps, SLURM): a developer's inner loop;
# CI runs the whole suite.
.PHONY: test-fast
test-fast: install
	$(PYTEST) -m 'not slow'

LINT_PATHS = core sweeps cluster analysis benchmarks tests
lint: install
	$(PY) -m ruff check $(wildcard $(LINT_PATHS))
	$(PY) -m ruff format --check $(wildcard $(LINT_PATHS))

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info

# --- sweeps: SCALE=smoke|paper (default smoke), BACKEND=local|slurm (default local) -----------
SCALE ?= smoke
BACKEND ?= local
SWEEPS_OUT ?= sweeps_out
SWEEP_FLAGS = --scale $(SCALE) --sweep-dir $(SWEEPS_OUT)/$(1)-$(SCALE) $(SWEEP_ARGS)
# A local sweep (python -m sweeps run) ends by printing its aggregate table; a SLURM sweep
# (python -m cluster submit) returns once submitted.
define sweep_and_aggregate
	$(if $(filter slurm,$(BACKEND)),$(PY) -m cluster submit $(1) $(SWEEP_FLAGS),$(PY) -m sweeps run $(1) $(SWEEP_FLAGS))
	$(if $(filter local,$(BACKEND)),$(PY) analysis/aggregate.py $(SWEEPS_OUT)/$(1)-$(SCALE))
endef

.PHONY: sweep-cloning sweep-continual sweep-bitflip mlflow-ui

sweep-cloning: install
	$(call sweep_and_aggregate,cloning_noise)
	$(call sweep_and_aggregate,cloning_dropout)

sweep-continual: install
	$(call sweep_and_aggregate,continual)

sweep-bitflip: install
	$(call sweep_and_aggregate,bitflip)

# The MLflow UI of one sweep's embedded store, on 127.0.0.1 (MLFLOW_PORT, default 5000).
MLFLOW_SWEEP ?= $(SWEEPS_OUT)/cloning_noise-$(SCALE)
MLFLOW_PORT ?= 5000
mlflow-ui: install
	$(VENV)/bin/mlflow ui --host 127.0.0.1 --port $(MLFLOW_PORT) \
		--backend-store-uri sqlite:///$(abspath $(MLFLOW_SWEEP))/mlflow.db

# Throughput benchmarks, measured in one run on this machine (figures in README.md), and this
# machine's entries of the cost table that `python -m sweeps plan` reads (sweeps/costs.json,
# updated in place: other devices' figures stay; docs/sweeps.md).
.PHONY: bench
bench: install
	$(PY) benchmarks/bench_bitflip.py
	$(PY) benchmarks/bench_training.py
	$(PY) benchmarks/bench_training.py --costs
	$(PY) benchmarks/bench_memory.py --write
	$(PY) benchmarks/bench_precision.py
	$(PY) benchmarks/bench_metrics.py
	$(PY) benchmarks/bench_diagnose.py --lanczos-steps 0
	$(PY) benchmarks/bench_sweeps.py --scale bench200

# Figures A.1-A.3 of the paper's theory, PNG and PDF (~40 s of CPU; docs/theory.md).
.PHONY: figures-theory
figures-theory: install
	$(PY) -m core.theory figures --out figures/theory

# The aggregate table and the figures of one sweep (docs/analysis.md); SWEEP_DIR defaults to the
# smoke cloning-noise sweep that `make sweep-cloning` writes.
SWEEP_DIR ?= $(SWEEPS_OUT)/cloning_noise-$(SCALE)
.PHONY: aggregate figures report
aggregate: install
	$(PY) analysis/aggregate.py $(SWEEP_DIR) $(AGGREGATE_ARGS)

figures: install
	$(PY) -m analysis.figures $(SWEEP_DIR)

report: install
	$(PY) -m analysis.report $(SWEEP_DIR)
