"""Checkpoints that resume exactly: every model variable (weights and RNG seed states), every optimizer
variable (moments, iteration count, loss scale), the step and the resolved config, written atomically.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import keras
import numpy as np

from unet.io import atomic_path

log = logging.getLogger(__name__)


def save(directory: str | Path, step: int, model: keras.Model, meta: dict[str, Any], keep: int) -> Path:
    """Write ``step-<step>/`` under ``directory`` and prune all but the newest ``keep`` checkpoints."""
    directory = Path(directory)
    dest = directory / f"step-{step:08d}"
    arrays = {f"model/{i:05d}": np.asarray(v.numpy()) for i, v in enumerate(model.variables)}
    arrays |= {f"optimizer/{i:05d}": np.asarray(v.numpy()) for i, v in enumerate(model.optimizer.variables)}
    with atomic_path(dest) as tmp:
        tmp.mkdir()
        np.savez(tmp / "state.npz", **arrays)
        (tmp / "meta.json").write_text(json.dumps({**meta, "step": step}, indent=2))
    for old in sorted(directory.glob("step-*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return dest


def latest(directory: str | Path, fingerprint: str) -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint written by a run with the same ``fingerprint``, or ``None``."""
    for path in sorted(Path(directory).glob("step-*"), reverse=True):
        try:
            meta = json.loads((path / "meta.json").read_text())
        except (OSError, ValueError):
            continue
        if meta.get("fingerprint") == fingerprint:
            return path, meta
        log.info("ignoring %s: written with other params", path)
    return None


def restore(path: str | Path, model: keras.Model) -> None:
    """Load a checkpoint into ``model`` and its (built) optimizer."""
    with np.load(Path(path) / "state.npz") as state:
        for prefix, variables in (("model", model.variables), ("optimizer", model.optimizer.variables)):
            keys = sorted(k for k in state.files if k.startswith(prefix + "/"))
            if len(keys) != len(variables):
                raise ValueError(f"{path}: checkpoint has {len(keys)} {prefix} variables, model has {len(variables)}")
            for key, var in zip(keys, variables, strict=True):
                var.assign(state[key])
