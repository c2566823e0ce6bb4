#!/usr/bin/env bash
# `make horovod`: Horovod 0.28.1 built from source into VENV against the pinned TensorFlow (2.18.1; 2.19+ fail
# to build): Gloo always (CPU and multi-host without MPI); with NCCL also for GPU allreduce. ~4 min on 2 cores.
#
# The Makefile passes GPU (0/1), GPU_WHY (says "given" where GPU was), LOCK (the lock it installed), STAMP (its
# install's stamp), INSTALL_DEPS (the files STAMP is made from) and VENV. As a make rule would, this does nothing
# while its own stamp (VENV/.horovod, or VENV/.horovod-nccl) is newer than STAMP. It takes make's one-letter
# flags: -n prints the commands it would run and runs none (nor the checks), -s does not print them.
#
# HOROVOD_NCCL=1/0 forces NCCL on or off. Unset: on with GPU=1, except on a host found to have a GPU (GPU not
# given) without a CUDA 12 nvcc, where Horovod is built with Gloo only and a warning says why. NCCL (headers and
# libnccl.so.2) comes from the locked nvidia-nccl-cu12 wheel, linked shared with an rpath to it. Horovod's CUDA
# kernels need nvcc, which no CUDA 12 wheel on PyPI carries (they hold ptxas only): NVCC names a CUDA 12
# toolkit's nvcc (default: the one on PATH); that toolkit compiles them.
set -euo pipefail

: "${GPU:?}" "${GPU_WHY:?}" "${LOCK:?}" "${STAMP:?}" "${INSTALL_DEPS:?}" "${VENV:?}"
NVCC=${NVCC:-nvcc}
BIN=$VENV/bin
NCCL_LINK=$VENV/nccl/lib/libnccl.so
NCCL_STAMP=$VENV/nccl/.linked  # a stamp, not the link: the link's time would be the wheel file's
DRY_RUN="" SILENT=""
while getopts :ns flag; do
    case $flag in
        n) DRY_RUN=1 ;;
        s) SILENT=1 ;;
        *) ;; # make's other flags (-k, -w, ...)
    esac
done

# Echo a command, then run it, as make does a recipe line (a string: what is echoed is what runs).
run() {
    [[ -n $SILENT && -z $DRY_RUN ]] || echo "$1"
    [[ -n $DRY_RUN ]] || eval "$1"
}

# make's test: TARGET is missing or older than one of the PREREQUISITES.
outdated() {
    local target=$1 p
    shift
    [[ -e $target ]] || return 0
    for p; do [[ $p -nt $target ]] && return 0; done
    return 1
}

need_cuda12_nvcc() {
    local v
    v=$("$NVCC" --version 2>/dev/null | grep -o 'release [0-9.]*' || true)
    [[ $v == "release 12."* ]] || {
        echo "make horovod GPU=1: error: Horovod's CUDA kernels need nvcc from a CUDA 12 toolkit, found ${v:-no $NVCC}" \
            "(PyPI's CUDA 12 wheels hold no nvcc): set NVCC=/path/to/cuda-12.x/bin/nvcc, or HOROVOD_NCCL=0 for Gloo only"
        exit 1
    }
}

need_compilers() {
    command -v g++ >/dev/null || {
        echo "make horovod: error: no C++ compiler (g++): install it (Debian: apt-get install g++)"
        exit 1
    }
    "$BIN/python" -c "import os, sysconfig; p = sysconfig.get_paths()['include']; os.path.exists(p + '/Python.h') or exit(f'make horovod: error: no Python headers in {p} (Debian: apt-get install python3-dev)')"
}

# The nvidia-nccl-cu12 wheel's include/ and its libnccl.so.2 as libnccl.so, where CMake looks.
link_nccl() {
    local d
    [[ -n $DRY_RUN ]] || need_cuda12_nvcc
    run "$BIN/uv pip install --python $BIN/python -c constraints-gpu.txt nvidia-nccl-cu12"
    if [[ -z $DRY_RUN ]]; then
        d=$("$BIN/python" -c "import nvidia.nccl as m; print(m.__path__[0])") || true
        if [[ ! -f $d/include/nccl.h ]]; then
            echo "make horovod GPU=1: error: no NCCL headers (nccl.h) in the nvidia-nccl-cu12 wheel ($d)"
            exit 1
        fi
        mkdir -p "$VENV/nccl/lib" && ln -sfn "$d/include" "$VENV/nccl/include" && ln -sfn "$d/lib/libnccl.so.2" "$NCCL_LINK"
    fi
    run "touch $NCCL_STAMP"
}

# $1: NCCL 1, 0 or gloo-only (0, and a GPU found without a CUDA 12 nvcc); $2: the stamp the build touches.
build() {
    local nccl=$1 stamp=$2 env path cuda_root lib assert=""
    # Horovod's bundled Gloo predates CMake 4's policy floor
    env="HOROVOD_WITH_TENSORFLOW=1 HOROVOD_WITH_GLOO=1 HOROVOD_WITHOUT_MPI=1 HOROVOD_WITHOUT_PYTORCH=1"
    env+=" HOROVOD_WITHOUT_MXNET=1 MAKEFLAGS=-j$(nproc) CMAKE_POLICY_VERSION_MINIMUM=3.5"
    path=$(realpath -ms "$BIN")
    if [[ -z $DRY_RUN ]]; then
        need_compilers
        [[ $nccl != 1 ]] || need_cuda12_nvcc
    fi
    if [[ $nccl == gloo-only ]]; then
        echo "make horovod: warning: this host has a GPU but no CUDA 12 nvcc ($NVCC): Horovod is built with Gloo only;" \
            "for NCCL set NVCC=/path/to/cuda-12.x/bin/nvcc"
    fi
    if [[ $nccl == 1 ]]; then
        cuda_root=$(d=$(readlink -f "$(command -v "$NVCC")") && dirname "$(dirname "$d")") || cuda_root=""
        lib=$(realpath -e "$NCCL_LINK" 2>/dev/null) && lib=${lib%/*}/ || lib=""  # empty under -n, as make's was
        env+=" HOROVOD_GPU_OPERATIONS=NCCL HOROVOD_CUDA_HOME=$cuda_root HOROVOD_NCCL_HOME=$(realpath -ms "$VENV")/nccl"
        env+=" HOROVOD_NCCL_LINK=SHARED LDFLAGS=-Wl,-rpath,$lib"
        path+=":$cuda_root/bin"  # Horovod's nvcc flags come from the first nvcc on PATH: HOROVOD_CUDA_HOME's
        assert="; assert hvd.nccl_built(), 'Horovod built without NCCL'"
    fi
    run "command -v cmake >/dev/null || $BIN/python -m pip install -q cmake==3.31.6  # Horovod's build needs CMake 3"
    run "$BIN/python -m pip uninstall -q -y horovod 2>/dev/null || true  # the other variant, if built before"
    run "$env PATH=$path:\$PATH $BIN/python -m pip install --no-build-isolation --no-cache-dir -c $LOCK horovod==0.28.1"
    run "$BIN/python -c \"import horovod.tensorflow as hvd; assert hvd.gloo_built(), 'Horovod built without Gloo'$assert\""
    run "rm -f $VENV/.horovod $VENV/.horovod-nccl"
    run "touch $stamp"
}

nccl_choice() {
    case ${HOROVOD_NCCL:-} in
        0 | 1) echo "$HOROVOD_NCCL" ;;
        "") if [[ $GPU == 0 ]]; then
                echo 0
            elif [[ $GPU_WHY == *given* || $("$NVCC" --version 2>/dev/null) == *"release 12."* ]]; then
                echo 1
            else
                echo gloo-only
            fi ;;
        *) echo "HOROVOD_NCCL must be 0 or 1, not '$HOROVOD_NCCL'" >&2 && exit 2 ;;
    esac
}

nccl=$(nccl_choice)
# A prerequisite remade makes what is built from it out of date, also under -n, where no stamp is touched: there
# an install make would run (its stamp older than its files) counts as done now, as make -n counts it.
read -ra install_deps <<<"$INSTALL_DEPS"
remade=""
if [[ -n $DRY_RUN ]] && outdated "$STAMP" "${install_deps[@]}"; then remade=1; fi
if [[ $nccl == 1 ]]; then
    if [[ -n $remade ]] || outdated "$NCCL_STAMP" "$STAMP"; then
        link_nccl
        build 1 "$VENV/.horovod-nccl"
    elif outdated "$VENV/.horovod-nccl" "$STAMP" "$NCCL_STAMP"; then
        build 1 "$VENV/.horovod-nccl"
    fi
elif [[ -n $remade ]] || outdated "$VENV/.horovod" "$STAMP"; then
    build "$nccl" "$VENV/.horovod"
fi
