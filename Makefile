# `make run`: the whole pipeline as a DVC experiment (cpu preset when no GPU is found); no commit, no tag.
# `make release EXP=cpu`: release an experiment (branch release/EXP, dvc push, GTO version + stage).
# `make test`: lint, types, tests. Each creates .venv and installs the pinned dependencies first.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
HVD_STAMP := $(VENV)/.horovod
# Horovod 0.28.1 built from source against the pinned TensorFlow (2.18.1; 2.19+ fail to build): Gloo always
# (CPU and multi-host without MPI); NCCL for GPU allreduce only when asked (`make horovod GPU=1`: it needs
# the CUDA headers and NCCL). ~4 min on 2 cores. Its bundled Gloo predates CMake 4's policy floor.
HOROVOD_ENV := HOROVOD_WITH_TENSORFLOW=1 HOROVOD_WITH_GLOO=1 HOROVOD_WITHOUT_MPI=1 HOROVOD_WITHOUT_PYTORCH=1 \
	HOROVOD_WITHOUT_MXNET=1 MAKEFLAGS=-j$(shell nproc) CMAKE_POLICY_VERSION_MINIMUM=3.5 \
	$(if $(GPU),HOROVOD_GPU_OPERATIONS=NCCL,)

.PHONY: run release test install horovod lint clean
EXP ?= cpu
PYTEST_FLAGS := --durations=15

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check uv==0.13.9
	$(BIN)/uv pip install --python $(BIN)/python -c constraints.txt -e '.[dev]'
	touch $@

install: $(STAMP)

$(HVD_STAMP): $(STAMP)
	@command -v g++ >/dev/null || { echo "make horovod: error: no C++ compiler (g++): install it (Debian: apt-get install g++)"; exit 1; }
	@$(BIN)/python -c "import os, sysconfig; p = sysconfig.get_paths()['include']; os.path.exists(p + '/Python.h') or exit(f'make horovod: error: no Python headers in {p} (Debian: apt-get install python3-dev)')"
	command -v cmake >/dev/null || $(BIN)/python -m pip install -q cmake==3.31.6  # Horovod's build needs CMake 3
	$(HOROVOD_ENV) PATH=$(abspath $(BIN)):$$PATH $(BIN)/python -m pip install --no-build-isolation --no-cache-dir -c constraints.txt horovod==0.28.1
	$(BIN)/python -c "import horovod.tensorflow as hvd; assert hvd.gloo_built(), 'Horovod built without Gloo'"
	touch $@

horovod: $(HVD_STAMP)

run: $(STAMP)
	source $(BIN)/activate && python -m unet.presets run auto

release: $(STAMP)
	source $(BIN)/activate && unet release $(EXP)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy unet flows benchmarks

# The default suite on TensorFlow, the backend-neutral core again on JAX, then the Horovod build and the
# slow end-to-end runs: the unit tests run first and need no Horovod.
test: lint
	$(BIN)/pytest $(PYTEST_FLAGS)
	KERAS_BACKEND=jax $(BIN)/pytest -m core $(PYTEST_FLAGS)
	$(MAKE) horovod
	$(BIN)/pytest -m slow $(PYTEST_FLAGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
