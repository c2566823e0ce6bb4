# `make run`: the whole pipeline as a DVC experiment (cpu preset when no GPU is found); no commit, no tag.
# `make release EXP=cpu`: release an experiment (branch release/EXP, dvc push, GTO version + stage).
# `make test`: lint, types, tests. Each creates .venv and installs the pinned dependencies first.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# GPU=1: the CUDA 12 builds of TensorFlow and JAX (constraints-gpu.txt, overrides-gpu.txt) and Horovod with
# NCCL; GPU=0: the CPU lock and Horovod with Gloo only. Unset: 1 where `nvidia-smi -L` lists a GPU.
ifndef GPU
GPU := $(shell nvidia-smi -L 2>/dev/null | grep -q '^GPU [0-9]' && echo 1 || echo 0)
GPU_WHY := nvidia-smi -L $(if $(filter 1,$(GPU)),lists a GPU,lists no GPU); GPU=0 or GPU=1 forces either
else
GPU_WHY := GPU=$(GPU) given
endif
$(if $(filter-out 0 1,$(GPU)),$(error GPU must be 0 or 1, not '$(GPU)'))
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
# Horovod 0.28.1 built from source against the pinned TensorFlow (2.18.1; 2.19+ fail to build): Gloo always
# (CPU and multi-host without MPI); with GPU=1 also NCCL for GPU allreduce. ~4 min on 2 cores. Its bundled
# Gloo predates CMake 4's policy floor.
HOROVOD_ENV := HOROVOD_WITH_TENSORFLOW=1 HOROVOD_WITH_GLOO=1 HOROVOD_WITHOUT_MPI=1 HOROVOD_WITHOUT_PYTORCH=1 \
	HOROVOD_WITHOUT_MXNET=1 MAKEFLAGS=-j$(shell nproc) CMAKE_POLICY_VERSION_MINIMUM=3.5
# NCCL (headers and libnccl.so.2) comes from the locked nvidia-nccl-cu12 wheel, linked shared with an rpath to
# it. Horovod's CUDA kernels need nvcc, which no CUDA 12 wheel on PyPI carries (they hold ptxas only): NVCC
# names a CUDA 12 toolkit's nvcc (default: the one on PATH); that toolkit compiles them.
NVCC ?= nvcc
# HOROVOD_NCCL=1/0 forces NCCL on or off. Unset: on with GPU=1, except on a host found to have a GPU (GPU not
# given) without a CUDA 12 nvcc, where Horovod is built with Gloo only and a warning says why.
ifndef HOROVOD_NCCL
HOROVOD_NCCL := $(if $(filter 1,$(GPU)),$(if $(findstring given,$(GPU_WHY)),1,$(if $(findstring release 12.,$(shell $(NVCC) --version 2>/dev/null)),1,gloo-only)),0)
else
$(if $(filter-out 0 1,$(HOROVOD_NCCL)),$(error HOROVOD_NCCL must be 0 or 1, not '$(HOROVOD_NCCL)'))
endif
ifeq ($(HOROVOD_NCCL),1)
HVD_STAMP := $(VENV)/.horovod-nccl
HVD_NCCL_ASSERT := ; assert hvd.nccl_built(), 'Horovod built without NCCL'
else
HVD_STAMP := $(VENV)/.horovod
endif
NCCL_LINK := $(VENV)/nccl/lib/libnccl.so
NCCL_STAMP := $(VENV)/nccl/.linked
CUDA_ROOT = $(shell d=$$(readlink -f "$$(command -v $(NVCC))") && dirname "$$(dirname "$$d")")
NVCC_CHECK = @v=$$($(NVCC) --version 2>/dev/null | grep -o 'release [0-9.]*'); [[ $$v == "release 12."* ]] || { \
	echo "make horovod GPU=1: error: Horovod's CUDA kernels need nvcc from a CUDA 12 toolkit, found $${v:-no $(NVCC)}"\
	"(PyPI's CUDA 12 wheels hold no nvcc): set NVCC=/path/to/cuda-12.x/bin/nvcc, or HOROVOD_NCCL=0 for Gloo only"; exit 1; }
HOROVOD_NCCL_ENV = HOROVOD_GPU_OPERATIONS=NCCL HOROVOD_CUDA_HOME=$(CUDA_ROOT) HOROVOD_NCCL_HOME=$(abspath $(VENV))/nccl \
	HOROVOD_NCCL_LINK=SHARED LDFLAGS=-Wl,-rpath,$(dir $(realpath $(NCCL_LINK)))
# nvcc on PATH is the one HOROVOD_CUDA_HOME names (Horovod's nvcc flags come from the first nvcc on PATH)
HOROVOD_PATH = $(abspath $(BIN)):$(if $(filter 1,$(HOROVOD_NCCL)),$(CUDA_ROOT)/bin:)$$PATH

.PHONY: run release test install horovod lint clean
EXP ?= cpu
PYTEST_FLAGS := --durations=15

$(STAMP): pyproject.toml $(LOCK) $(if $(filter 1,$(GPU)),overrides-gpu.txt)
	@echo "make: installing the $(if $(filter 1,$(GPU)),GPU (CUDA 12),CPU) lock $(LOCK) ($(GPU_WHY))"
ifeq ($(GPU),0)
	@if [ -e $(OTHER_STAMP) ]; then echo "make: $(VENV) holds the GPU lock: recreating it"; rm -rf $(VENV); fi
endif
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check uv==0.13.9
	$(BIN)/uv pip install --python $(BIN)/python $(INSTALL_ARGS)
	rm -f $(OTHER_STAMP)  # one lock a venv: the GPU lock (CPU lock + CUDA wheels) installs over the CPU one
	touch $@

install: $(STAMP)

$(HVD_STAMP): $(STAMP) $(if $(filter 1,$(HOROVOD_NCCL)),$(NCCL_STAMP))
	@command -v g++ >/dev/null || { echo "make horovod: error: no C++ compiler (g++): install it (Debian: apt-get install g++)"; exit 1; }
	@$(BIN)/python -c "import os, sysconfig; p = sysconfig.get_paths()['include']; os.path.exists(p + '/Python.h') or exit(f'make horovod: error: no Python headers in {p} (Debian: apt-get install python3-dev)')"
ifeq ($(HOROVOD_NCCL),1)
	$(NVCC_CHECK)
endif
ifeq ($(HOROVOD_NCCL),gloo-only)
	@echo "make horovod: warning: this host has a GPU but no CUDA 12 nvcc ($(NVCC)): Horovod is built with Gloo only;" \
		"for NCCL set NVCC=/path/to/cuda-12.x/bin/nvcc"
endif
	command -v cmake >/dev/null || $(BIN)/python -m pip install -q cmake==3.31.6  # Horovod's build needs CMake 3
	$(BIN)/python -m pip uninstall -q -y horovod 2>/dev/null || true  # the other variant, if built before
	$(HOROVOD_ENV) $(if $(filter 1,$(HOROVOD_NCCL)),$(HOROVOD_NCCL_ENV)) PATH=$(HOROVOD_PATH) \
		$(BIN)/python -m pip install --no-build-isolation --no-cache-dir -c $(LOCK) horovod==0.28.1
	$(BIN)/python -c "import horovod.tensorflow as hvd; assert hvd.gloo_built(), 'Horovod built without Gloo'$(HVD_NCCL_ASSERT)"
	rm -f $(VENV)/.horovod $(VENV)/.horovod-nccl
	touch $@

# NCCL for HOROVOD_NCCL=1: the nvidia-nccl-cu12 wheel's include/ and its libnccl.so.2 as libnccl.so, where CMake looks
# (a stamp, not the link: make would judge the link by the wheel's file time)
$(NCCL_STAMP): $(STAMP)
	$(NVCC_CHECK)
	$(BIN)/uv pip install --python $(BIN)/python -c constraints-gpu.txt nvidia-nccl-cu12
	@d=$$($(BIN)/python -c "import nvidia.nccl as m; print(m.__path__[0])") && test -f "$$d/include/nccl.h" || { \
		echo "make horovod GPU=1: error: no NCCL headers (nccl.h) in the nvidia-nccl-cu12 wheel ($$d)"; exit 1; }; \
		mkdir -p $(VENV)/nccl/lib && ln -sfn "$$d/include" $(VENV)/nccl/include && ln -sfn "$$d/lib/libnccl.so.2" $(NCCL_LINK)
	touch $@

horovod: $(HVD_STAMP)

# RUN_ARGS: more `dvc exp run` arguments, e.g. RUN_ARGS='-S train.max_steps=100'
run: $(STAMP)
	source $(BIN)/activate && python -m unet.presets run auto $(RUN_ARGS)

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
