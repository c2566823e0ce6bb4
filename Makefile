# `make run`: the whole pipeline (cpu preset when no GPU is found). `make test`: lint, types, tests.
# Both create .venv and install the pinned dependencies first.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
HVD_STAMP := $(VENV)/.horovod
# Horovod 0.28.1 built from source against the pinned TensorFlow (2.18.1; 2.19+ fail to build): Gloo always
# (CPU and multi-host without MPI), NCCL for GPU allreduce when an NVIDIA driver is present. ~4 min on 2 cores.
HOROVOD_ENV := HOROVOD_WITH_TENSORFLOW=1 HOROVOD_WITH_GLOO=1 HOROVOD_WITHOUT_MPI=1 HOROVOD_WITHOUT_PYTORCH=1 \
	HOROVOD_WITHOUT_MXNET=1 MAKEFLAGS=-j$(shell nproc) $(if $(shell command -v nvidia-smi),HOROVOD_GPU_OPERATIONS=NCCL,)

.PHONY: run test install horovod lint clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check uv==0.13.9
	$(BIN)/uv pip install --python $(BIN)/python -c constraints.txt -e '.[dev]'
	touch $@

install: $(STAMP)

$(HVD_STAMP): $(STAMP)
	command -v cmake >/dev/null || $(BIN)/python -m pip install -q cmake==3.31.6  # Horovod's build needs CMake 3
	$(HOROVOD_ENV) PATH=$(abspath $(BIN)):$$PATH $(BIN)/python -m pip install --no-build-isolation --no-cache-dir -c constraints.txt horovod==0.28.1
	$(BIN)/python -c "import horovod.tensorflow as hvd; assert hvd.gloo_built(), 'Horovod built without Gloo'"
	touch $@

horovod: $(HVD_STAMP)

run: $(STAMP)
	$(BIN)/python -m unet.presets auto
	source $(BIN)/activate && dvc repro && dvc push && python -m unet.stages.register --publish

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy unet flows benchmarks

# The default suite on TensorFlow, the backend-neutral core again on JAX, then the slow end-to-end runs.
test: lint horovod
	$(BIN)/pytest
	KERAS_BACKEND=jax $(BIN)/pytest -m core
	$(BIN)/pytest -m slow

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
