# Two commands on a fresh machine: `make demo` trains, `make test` runs the tests.
# Each creates the virtualenv first when it is missing.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch is installed before the project so that pyproject's `torch>=2.4` pulls nothing
# more. 2.13.0 is the CPU wheel this project's build machines carry on disk; on a GPU
# machine the same pin from PyPI is the CUDA build. Override with TORCH=... (DEVELOPERS.md).
TORCH ?= torch==2.13.0

.PHONY: setup demo test test-unit test-integration lint format bench clean

$(BIN)/spotray: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	@touch $@

setup: $(BIN)/spotray

demo: setup
	$(BIN)/spotray train train/configs/local.yaml

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint
	$(BIN)/pytest

test-unit: setup
	$(BIN)/pytest -m "not integration"

test-integration: setup
	$(BIN)/pytest -m integration

format: setup
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache *.egg-info
