"""`presets auto`: the preset follows the GPUs the Keras backend can use, not what nvidia-smi lists."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from unet import presets

FAKE_SMI = """#!/bin/sh
# a driver listing two GPUs, as nvidia-smi -L prints them
echo "GPU 0: NVIDIA H200 (UUID: GPU-00000000-0000-0000-0000-000000000000)"
echo "GPU 1: NVIDIA H200 (UUID: GPU-00000000-0000-0000-0000-000000000001)"
"""


@pytest.fixture(autouse=True)
def said_as_the_command_says_it():
    """The library's messages on stderr as ``python -m unet.presets`` shows them (its ``main`` does this first)."""
    library = logging.getLogger("unet")
    level, handler = library.level, presets.say_on_stderr()
    yield
    library.removeHandler(handler)
    library.setLevel(level)


def _fake_nvidia_smi(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "nvidia-smi").write_text(FAKE_SMI)
    (tmp_path / "nvidia-smi").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")
    monkeypatch.setattr(presets, "gpu_devices", lambda: True)  # as /dev/nvidia0 would say
    assert presets.driver_gpus() == 2


@pytest.mark.parametrize("backend", ["tensorflow", "jax"])
def test_a_driver_without_a_usable_gpu_warns_and_picks_the_cpu_preset(backend, tmp_path, monkeypatch, capsys):
    """This machine's TensorFlow and JAX are CPU builds: asked for real, each backend sees no GPU."""
    _fake_nvidia_smi(tmp_path, monkeypatch)
    monkeypatch.setenv("KERAS_BACKEND", backend)
    assert presets.resolve("auto") == "cpu"
    err = capsys.readouterr().err.strip().splitlines()
    warnings = [line for line in err if "warning" in line]
    assert warnings == [
        f"presets: warning: nvidia-smi lists 2 GPU(s) but the {backend} backend can use none "
        f"(a CPU-only {backend} build, or a CUDA/driver mismatch?)"
    ]
    assert err[-1] == "presets: 0 GPU(s) found: using the 'cpu' preset"


def test_the_backend_decides_whatever_nvidia_smi_says(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")  # no nvidia-smi at all
    monkeypatch.setattr(presets, "backend_gpus", lambda: ("jax", 2))  # a GPU machine, as the backend reports it
    monkeypatch.setattr(presets, "gpu_devices", lambda: True)  # (a container given GPUs: devices, no nvidia-smi)
    assert presets.resolve("auto") == "gpu" and presets.overrides("auto") == {}
    assert "warning" not in capsys.readouterr().err
    _fake_nvidia_smi(tmp_path, monkeypatch)
    assert presets.resolve("auto") == "gpu" and "warning" not in capsys.readouterr().err


def test_a_backend_that_cannot_be_asked_is_no_gpu(monkeypatch, capsys):
    monkeypatch.setenv("KERAS_BACKEND", "no-such-backend")
    monkeypatch.setattr(presets, "gpu_devices", lambda: True)
    assert presets.gpu_count() == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("presets: warning: could not ask the Keras backend for its GPUs (")


def test_a_host_without_gpu_devices_is_not_probed(monkeypatch, capsys):
    """No /dev/nvidia*, /dev/kfd or NVIDIA driver: 0 GPUs at once, without starting the backend."""
    monkeypatch.setattr(presets, "gpu_devices", lambda: False)
    monkeypatch.setattr(presets, "backend_gpus", lambda: pytest.fail("the backend was started"))
    assert presets.resolve("auto") == "cpu"
    assert capsys.readouterr().err.strip().splitlines() == ["presets: 0 GPU(s) found: using the 'cpu' preset"]


def test_the_flow_offers_every_preset_and_auto():
    from typing import get_args

    from flows.pipeline import Preset

    assert set(get_args(Preset)) == {*presets.PRESETS, "auto"}
