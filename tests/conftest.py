"""Shared fixtures: the real ISBI data beside the checkout, tiny synthetic stacks, a tiny config."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from unet.config import Config, from_dict

ROOT = Path(__file__).resolve().parents[1]


def project_params() -> str:
    """The project's params.yaml: the workspace copy, unless it is a DVC experiment's (``make run`` runs the
    cpu preset as a workspace experiment, which sets its params there), then the committed one."""
    from unet.ops.experiments import committed_params

    return committed_params(ROOT) or (ROOT / "params.yaml").read_text()


def isbi_dir() -> Path:
    return Path(os.environ.get("ISBI_DATA_DIR") or ROOT.parent / "shared" / "data" / "isbi2012")


@pytest.fixture(scope="session")
def isbi() -> Path:
    d = isbi_dir()
    if not (d / "train-volume.tif").is_file():
        if os.environ.get("CI"):  # CI always has the data beside the checkout: never pass by skipping
            pytest.fail(f"ISBI data not found in {d} (set ISBI_DATA_DIR)")
        pytest.skip(f"ISBI data not found in {d} (set ISBI_DATA_DIR)")
    return d


TINY = {
    "train": {
        # depth-3 valid: 92 -> 52; no drop-out, so runs on 1 and 2 ranks are comparable bit for bit
        "model": {"base_filters": 4, "depth": 3, "tile": 92, "dropout": 0.0},
        "batch_size": 2,
        "max_steps": 20,
        "steps_per_epoch": 5,
        "checkpoint_every": 10,
        "warmup_steps": 2,
        "learning_rate": 1e-3,
    },
    "evaluate": {"batch_size": 4},
    "runtime": {"precision": "float32", "xla": False, "tf32": False, "gpus": 0},
}


# The tiny net of TINY as `dvc exp run -S` overrides, for tests that run stages in a clone
TINY_NET = {
    "train.model.base_filters": 4,
    "train.model.depth": 3,
    "train.model.tile": 92,
    "train.model.dropout": 0.0,
    "train.batch_size": 2,
    "train.warmup_steps": 2,
    "evaluate.batch_size": 4,
    "runtime.precision": "float32",
    "runtime.xla": False,
    "runtime.tf32": False,
    "runtime.gpus": 0,
}


@pytest.fixture
def tiny_cfg() -> Config:
    return from_dict(Config, TINY)


def synthetic(n: int = 6, size: int = 64, seed: int = 0, noise: float = 5.0) -> tuple[np.ndarray, np.ndarray]:
    """Blobby grey images whose labels are their thresholded smooth component."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    smooth = ndimage.gaussian_filter(rng.normal(size=(n, size, size)), (0, 4, 4))
    smooth = (smooth - smooth.min()) / (smooth.max() - smooth.min())
    labels = (smooth > np.median(smooth)).astype(np.uint8) * 255
    images = np.clip(smooth * 255 + rng.normal(0, noise, smooth.shape), 0, 255).astype(np.uint8)
    return images, labels
