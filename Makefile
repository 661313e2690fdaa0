# Two entry points for a fresh clone: `make demo` (the main job) and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test lint setup clean docs

$(BIN)/jsddpm: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# The CPU build of torch 2.13.0 lies on the machines' disk; an unpinned torch would pull GBs of CUDA wheels.
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(BIN)/jsddpm

setup: $(BIN)/jsddpm

demo: setup
	$(BIN)/jsddpm demo $(ARGS)

test: setup
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/python -m pytest

lint: setup
	$(BIN)/ruff check --fix src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks || true

clean:
	rm -rf $(VENV) build dist src/*.egg-info

docs: setup
	$(BIN)/python -m jsddpm.config_doc README.md
	$(BIN)/python -m jsddpm.diagnostics.metric_doc docs/metrics.md
