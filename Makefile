# `make run`: the whole pipeline (cpu preset when no GPU is found). `make test`: lint, types, tests.
# Both create .venv and install the pinned dependencies first.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test install lint clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check uv==0.13.9
	$(BIN)/uv pip install --python $(BIN)/python -c constraints.txt -e '.[dev]'
	touch $@

install: $(STAMP)

run: $(STAMP)
	$(BIN)/python -m unet.presets auto
	source $(BIN)/activate && dvc repro

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy unet flows benchmarks

# The default suite on TensorFlow, the backend-neutral core again on JAX, then the slow end-to-end runs.
test: lint
	$(BIN)/pytest
	KERAS_BACKEND=jax $(BIN)/pytest -m core
	$(BIN)/pytest -m slow

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
