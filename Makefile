# `make run`: the whole pipeline as a DVC experiment (cpu preset when no GPU is found); no commit, no tag.
# `make release EXP=cpu`: release an experiment (branch release/EXP, dvc push, GTO version + stage).
# `make test`: lint and types, the default suite on TensorFlow, the backend-neutral core again on JAX, then
# `make horovod` (scripts/install-horovod.sh) and the slow end-to-end runs; `make test-fast`: the default suite.
# Each creates .venv and installs the pinned dependencies first.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
EXP ?= cpu
PYTEST_FLAGS := --durations=15
# GPU=1: the CUDA 12 builds of TensorFlow and JAX (constraints-gpu.txt, overrides-gpu.txt) and Horovod with
# NCCL; GPU=0: the CPU lock and Horovod with Gloo only. Unset: 1 where `nvidia-smi -L` lists a GPU.
ifndef GPU
GPU := $(shell nvidia-smi -L 2>/dev/null | grep -q '^GPU [0-9]' && echo 1 || echo 0)
GPU_WHY := nvidia-smi -L $(if $(filter 1,$(GPU)),lists a GPU,lists no GPU); GPU=0 or GPU=1 forces either
else
GPU_WHY := GPU=$(GPU) given
endif
# HOROVOD_NCCL=0/1 (the Horovod script's) is checked here too: a bad value stops `make test` before its suite
$(foreach v,GPU HOROVOD_NCCL,$(if $(filter-out 0 1,$($(v))),$(error $(v) must be 0 or 1, not '$($(v))')))
ifeq ($(GPU),1)
LOCK := constraints-gpu.txt
INSTALL_ARGS := -c constraints-gpu.txt --override overrides-gpu.txt -e '.[dev,gpu]'
STAMP := $(VENV)/.installed-gpu
OTHER_STAMP := $(VENV)/.installed
else
LOCK := constraints.txt
INSTALL_ARGS := -c constraints.txt -e '.[dev]'
STAMP := $(VENV)/.installed
OTHER_STAMP := $(VENV)/.installed-gpu
endif
INSTALL_DEPS := pyproject.toml $(LOCK) $(if $(filter 1,$(GPU)),overrides-gpu.txt)
MAKE_FLAGS = $(firstword -$(MAKEFLAGS))
.PHONY: run release test test-fast install horovod lint clean

$(STAMP): $(INSTALL_DEPS)
	@echo "make: installing the $(if $(filter 1,$(GPU)),GPU (CUDA 12),CPU) lock $(LOCK) ($(GPU_WHY))"
	@if [ $(GPU) = 0 ] && [ -e $(OTHER_STAMP) ]; then echo "make: $(VENV) holds the GPU lock: recreating it"; rm -rf $(VENV); fi
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check uv==0.13.9
	$(BIN)/uv pip install -q --python $(BIN)/python $(INSTALL_ARGS)  # -q: not the 220 package names
	rm -f $(OTHER_STAMP)  # one lock a venv: the GPU lock (CPU lock + CUDA wheels) installs over the CPU one
	touch $@
install: $(STAMP)
# make's one-letter flags go to the script (-n: print its commands, run none; -s: print none); make -n runs it (+)
horovod: $(STAMP)
	$(if $(findstring n,$(MAKE_FLAGS)),+)@GPU=$(GPU) GPU_WHY='$(GPU_WHY)' LOCK=$(LOCK) STAMP=$(STAMP) \
		INSTALL_DEPS='$(INSTALL_DEPS)' VENV=$(VENV) scripts/install-horovod.sh $(MAKE_FLAGS)

# RUN_ARGS: more `dvc exp run` arguments, e.g. RUN_ARGS='-S train.max_steps=100'
run: $(STAMP)
	source $(BIN)/activate && python -m unet.presets run auto $(RUN_ARGS)
release: $(STAMP)
	source $(BIN)/activate && unet release $(EXP)
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy unet flows benchmarks
test-fast: $(STAMP)
	$(BIN)/pytest $(PYTEST_FLAGS)
test: lint
	$(BIN)/pytest $(PYTEST_FLAGS)
	KERAS_BACKEND=jax $(BIN)/pytest -m core $(PYTEST_FLAGS)
	$(MAKE) horovod
	$(BIN)/pytest -m slow $(PYTEST_FLAGS)
clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
