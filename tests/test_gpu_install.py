"""The GPU install path: the GPU lock agrees with the CPU lock, and the Makefile picks the lock from
``nvidia-smi -L`` (GPU=0/1 force either) and refuses a Horovod NCCL build without a CUDA 12 nvcc in one line.

The Makefile runs against a throw-away VENV with fake ``nvidia-smi``/``nvcc`` scripts first on PATH: nothing is
installed or built.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PIN = re.compile(r"^([A-Za-z0-9_.\-]+)==(\S+)$", re.M)
H200 = "GPU 0: NVIDIA H200 (UUID: GPU-0d9f6c2e-1b7a-4c1e-9a55-3f2b8e0c7d11)"


def pins(name: str) -> dict[str, str]:
    """``name==version`` lines of a lock or override file, by lower-case name."""
    return {m[1].lower(): m[2] for m in PIN.finditer((ROOT / name).read_text())}


def script(path: Path, body: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)


def make(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    """``make ARGS`` in the repository with tmp_path/fake first on PATH and VENV=tmp_path/venv."""
    env = {**os.environ, "PATH": f"{tmp_path / 'fake'}:{os.environ['PATH']}"}
    env.pop("GPU", None)
    env.pop("MAKEFLAGS", None)
    cmd = ["make", "--no-print-directory", "-C", str(ROOT), f"VENV={tmp_path / 'venv'}", *args]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
    r.stdout = r.stdout.replace("\\\n", " ")  # one line per command under -n
    return r


def test_gpu_lock_is_the_cpu_lock_plus_exact_cuda_pins() -> None:
    cpu, gpu, over = pins("constraints.txt"), pins("constraints-gpu.txt"), pins("overrides-gpu.txt")
    assert {k: gpu.get(k) for k in cpu} == cpu  # every CPU pin, at the same version
    added = set(gpu) - set(cpu)
    assert added and all(k.startswith(("nvidia-", "jax-cuda12-")) for k in added), added
    assert {"nvidia-nccl-cu12", "nvidia-cudnn-cu12", "nvidia-cuda-runtime-cu12"} <= added
    assert {k: gpu[k] for k in over} == over  # the lock holds the overridden CUDA 12 pins
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert extras["gpu"] == [f"tensorflow[and-cuda]=={cpu['tensorflow']}", f"jax[cuda12]=={cpu['jax']}"]
    assert gpu["jax-cuda12-plugin"] == gpu["jax-cuda12-pjrt"] == cpu["jax"]


@pytest.mark.parametrize(
    ("smi", "force", "lock"),
    [
        (f"echo '{H200}'", None, "constraints-gpu.txt"),
        (
            "echo 'NVIDIA-SMI has failed because it could not communicate with the NVIDIA driver.'; exit 9",
            None,
            "constraints.txt",
        ),
        ("exit 127", None, "constraints.txt"),
        (f"echo '{H200}'", "GPU=0", "constraints.txt"),
        ("exit 127", "GPU=1", "constraints-gpu.txt"),
    ],
)
def test_make_install_picks_the_lock(tmp_path: Path, smi: str, force: str | None, lock: str) -> None:
    script(tmp_path / "fake" / "nvidia-smi", smi)
    r = make(tmp_path, "-n", "install", *([force] if force else []))
    assert r.returncode == 0, r.stderr
    said = [line for line in r.stdout.splitlines() if "make: installing the" in line]
    assert len(said) == 1 and f"lock {lock} (" in said[0], r.stdout
    assert f"({force} given)" in said[0] if force else "(nvidia-smi -L lists" in said[0]
    install = next(line for line in r.stdout.splitlines() if "uv pip install" in line)
    assert f"-c {lock}" in install
    assert ("--override overrides-gpu.txt" in install) == (lock == "constraints-gpu.txt")
    assert ".[dev,gpu]" in install if lock == "constraints-gpu.txt" else ".[dev]'" in install


def test_make_rejects_a_bad_gpu_value(tmp_path: Path) -> None:
    r = make(tmp_path, "-n", "install", "GPU=yes")
    assert r.returncode != 0 and "GPU must be 0 or 1, not 'yes'" in r.stderr


def test_horovod_nccl_build_uses_the_given_cuda12_toolkit_and_the_nccl_wheel(tmp_path: Path) -> None:
    script(tmp_path / "cuda-12.4" / "bin" / "nvcc", "echo 'Cuda compilation tools, release 12.4, V12.4.131'")
    r = make(tmp_path, "-n", "horovod", "GPU=1", f"NVCC={tmp_path / 'cuda-12.4' / 'bin' / 'nvcc'}")
    assert r.returncode == 0, r.stderr
    build = next(line for line in r.stdout.splitlines() if "pip install --no-build-isolation" in line)
    for setting in (
        "HOROVOD_GPU_OPERATIONS=NCCL",
        f"HOROVOD_CUDA_HOME={tmp_path / 'cuda-12.4'} ",
        f"HOROVOD_NCCL_HOME={tmp_path / 'venv' / 'nccl'} ",
        "HOROVOD_NCCL_LINK=SHARED",
        f"PATH={tmp_path / 'venv' / 'bin'}:{tmp_path / 'cuda-12.4' / 'bin'}:",
        "-c constraints-gpu.txt horovod==0.28.1",
    ):
        assert setting in build, (setting, build)
    assert "nvidia-nccl-cu12" in r.stdout and "assert hvd.nccl_built(), 'Horovod built without NCCL'" in r.stdout


@pytest.mark.parametrize("release", ["13.0, V13.0.88", None])
def test_horovod_nccl_build_without_cuda12_nvcc_stops_in_one_line(tmp_path: Path, release: str | None) -> None:
    nvcc = tmp_path / "cuda" / "bin" / "nvcc"
    if release:
        script(nvcc, f"echo 'Cuda compilation tools, release {release}'")
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").symlink_to(sys.executable)
    (venv / ".installed-gpu").touch()  # newer than the locks: make installs nothing
    r = make(tmp_path, "horovod", "GPU=1", f"NVCC={nvcc}")
    assert r.returncode != 0
    out = r.stdout.strip().splitlines()
    assert out[-1].startswith("make horovod GPU=1: error: Horovod's CUDA kernels need nvcc from a CUDA 12 toolkit")
    assert (f"found release {release.split(',')[0]}" if release else f"found no {nvcc}") in out[-1]
    assert sorted(p.name for p in venv.iterdir()) == [".installed-gpu", "bin"]  # nothing downloaded or built


def test_a_found_gpu_without_cuda12_nvcc_builds_gloo_only_with_a_warning(tmp_path: Path) -> None:
    script(tmp_path / "fake" / "nvidia-smi", f"echo '{H200}'")
    script(tmp_path / "cuda" / "bin" / "nvcc", "echo 'Cuda compilation tools, release 13.0, V13.0.88'")
    nvcc = f"NVCC={tmp_path / 'cuda' / 'bin' / 'nvcc'}"
    r = make(tmp_path, "-n", "horovod", nvcc)
    assert r.returncode == 0, r.stderr
    assert "-c constraints-gpu.txt" in r.stdout  # still the GPU lock for TensorFlow and JAX
    assert "warning: this host has a GPU but no CUDA 12 nvcc" in r.stdout
    build = next(line for line in r.stdout.splitlines() if "pip install --no-build-isolation" in line)
    assert "HOROVOD_GPU_OPERATIONS" not in build and "nccl_built" not in r.stdout
    forced = make(tmp_path, "-n", "horovod", nvcc, "HOROVOD_NCCL=1")
    assert "HOROVOD_GPU_OPERATIONS=NCCL" in forced.stdout and "warning" not in forced.stdout
    assert "HOROVOD_NCCL must be 0 or 1" in make(tmp_path, "-n", "horovod", "HOROVOD_NCCL=yes").stderr


@pytest.mark.parametrize(
    ("args", "stamps"),
    [
        (["GPU=0"], [".installed", ".horovod"]),
        (["GPU=1", "NVCC=/no/nvcc"], [".installed-gpu", "nccl/.linked", ".horovod-nccl"]),
    ],
)
def test_horovod_is_built_again_only_after_an_install(tmp_path: Path, args: list[str], stamps: list[str]) -> None:
    venv = tmp_path / "venv"
    locks = ("pyproject.toml", "constraints.txt", "constraints-gpu.txt", "overrides-gpu.txt")
    t0 = max((ROOT / name).stat().st_mtime_ns for name in locks)  # the install is newer than its files
    for i, name in enumerate(stamps, 1):  # as a build leaves them: the install's stamp oldest, the build's newest
        (venv / name).parent.mkdir(parents=True, exist_ok=True)
        (venv / name).touch()
        os.utime(venv / name, ns=(t0 + i * 1000, t0 + i * 1000))
    r = make(tmp_path, "-n", "horovod", *args)
    assert r.returncode == 0 and "pip install --no-build-isolation" not in r.stdout, r.stdout
    os.utime(venv / stamps[0])  # a new install: now newer than the build
    r = make(tmp_path, "-n", "horovod", *args)
    assert r.returncode == 0 and "pip install --no-build-isolation" in r.stdout, r.stdout
    assert f"touch {venv / stamps[-1]}" in r.stdout


def test_make_test_fast_runs_the_default_suite_alone(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / ".installed").touch()  # newer than the locks: make installs nothing
    r = make(tmp_path, "-n", "test-fast", "GPU=0")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [f"{venv / 'bin' / 'pytest'} --durations=15"]  # pyproject.toml: not slow
