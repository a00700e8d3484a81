# Every entry point a user or CI needs. CI runs `make test` and nothing else.
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
	$(PY) -m pip install -e '.[test]'
	touch $@

test: install
	$(PY) -m pytest -q

lint: install
	$(PY) -m ruff check core tests
	$(PY) -m ruff format --check core tests

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
