"""Beyond one machine: a fold whose worker is killed resumes on another worker (another clone of the project)
from a shared checkpoint location, and ends bit-identical to an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import keras
import numpy as np
import pytest
import tifffile

from unet.folds import kfold
from unet.presets import apply

from .conftest import synthetic
from .test_pipeline import git_env, make_repo

# the tiny net of conftest.TINY, with the paper's drop-out (its RNG state travels in the checkpoint too)
PARAMS = {
    "split.folds": [0, 1],
    "train.model.base_filters": 4,
    "train.model.depth": 3,
    "train.model.tile": 92,
    "train.batch_size": 2,
    "train.max_steps": 40,
    "train.steps_per_epoch": 5,
    "train.checkpoint_every": 10,
    "train.warmup_steps": 2,
    "train.learning_rate": 1e-3,
    "runtime.precision": "float32",
    "runtime.xla": False,
    "runtime.tf32": False,
    "runtime.gpus": 0,
}


def worker(dest: Path) -> Path:
    """A clone of the project holding the tiny params and the train stage's inputs (6 synthetic slices)."""
    repo = make_repo(dest)
    apply(repo / "params.yaml", PARAMS)
    images, labels = synthetic(6, 64)
    (repo / "data" / "raw").mkdir(parents=True)
    tifffile.imwrite(repo / "data" / "raw" / "train-volume.tif", images)
    tifffile.imwrite(repo / "data" / "raw" / "train-labels.tif", labels)
    (repo / "data" / "folds.json").write_text(json.dumps(kfold(6, 2, 0)))
    return repo


def env(shared: Path | None) -> dict[str, str]:
    base = {k: v for k, v in git_env(TF_CPP_MIN_LOG_LEVEL="3").items() if k != "UNET_CHECKPOINTS"}
    return base | ({"UNET_CHECKPOINTS": str(shared)} if shared else {})


def repro(repo: Path, shared: Path | None) -> subprocess.CompletedProcess:
    cmd = ["dvc", "repro", "--single-item", "train@0"]  # only the train stage: its inputs are in place
    return subprocess.run(cmd, cwd=repo, capture_output=True, text=True, env=env(shared), timeout=600)


def weights(repo: Path) -> list[np.ndarray]:
    return keras.saving.load_model(repo / "models" / "folds" / "fold0" / "model.keras", compile=False).get_weights()


@pytest.mark.slow
def test_a_fold_killed_on_one_worker_resumes_on_another_to_the_same_weights(tmp_path):
    shared = tmp_path / "shared"
    a, b = worker(tmp_path / "a"), worker(tmp_path / "b")
    with open(tmp_path / "a.log", "w") as log:  # worker A: its whole process group dies at the first checkpoint
        proc = subprocess.Popen(
            ["dvc", "repro", "--single-item", "train@0"],
            cwd=a,
            env=env(shared),
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
        deadline = time.monotonic() + 600
        while not list(shared.glob("*/step-*/meta.json")):
            assert proc.poll() is None, (tmp_path / "a.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "no checkpoint within 10 minutes"
            time.sleep(0.02)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not (a / "models" / "folds" / "fold0" / "model.keras").exists()  # killed mid-run
    assert not (a / "checkpoints").exists()  # the shared location replaced the local one
    (key,) = [p.name for p in shared.iterdir()]  # one directory per run, named by its resume fingerprint

    resumed = repro(b, shared)  # worker B, another clone with the same shared location
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-3000:]
    assert f"resuming from {shared / key}/step-000000" in resumed.stderr, resumed.stderr[-3000:]
    step = int(resumed.stderr.split("/step-")[1][:8])
    assert 10 <= step < 40 and f"(step {step} of 40)" in resumed.stderr
    assert json.loads((b / "models" / "folds" / "fold0" / "metrics.json").read_text())["step"] == 40

    straight = repro(a, None)  # uninterrupted, with local checkpoints as without a shared location
    assert straight.returncode == 0, straight.stdout[-2000:] + straight.stderr[-3000:]
    assert "resuming" not in straight.stderr and (a / "checkpoints" / "fold0" / "step-00000040").is_dir()
    for x, y in zip(weights(a), weights(b), strict=True):
        np.testing.assert_array_equal(x, y)  # bit-identical
