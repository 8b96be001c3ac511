# celeba-gender: `make help` lists the targets.
VENV ?= .venv
PYTHON := $(VENV)/bin/python
DATA ?= $(or $(CELEBA_ROOT),../shared/data/celeba-subset)

.DEFAULT_GOAL := help
.PHONY: help setup test test-fast lint format data-check bench-data clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(PYTHON):
	python3 -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --upgrade pip

setup: $(PYTHON)  ## create .venv and install the package with its dev tools
	$(PYTHON) -m pip install --quiet -e '.[dev]'

test:  ## lint, then the whole test suite (what CI runs)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PYTHON) -m pytest

test-fast:  ## the tests without the slow ones
	$(PYTHON) -m pytest -m 'not slow'

lint:  ## ruff lint and format check
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

format:  ## ruff format and autofix
	$(VENV)/bin/ruff format . && $(VENV)/bin/ruff check --fix .

data-check:  ## print the data report of DATA (default: CELEBA_ROOT or the shared subset)
	$(PYTHON) -m celeba_gender.data $(DATA)

bench-data:  ## images/second: per-sample PIL loader vs cached batched pipeline
	$(PYTHON) benchmarks/data_loading.py --root $(DATA)

clean:  ## remove caches and run outputs (not the venv, not ~/.cache/celeba_gender)
	rm -rf outputs multirun lightning_logs .pytest_cache .ruff_cache
	find . -name __pycache__ -not -path './$(VENV)/*' -prune -exec rm -rf {} +
