"""Checkpoints that resume exactly: every model variable (weights and RNG seed states), every optimizer
variable (moments, iteration count, loss scale), the step and the resolved config.

A checkpoint is ``<location>/step-<step>/`` holding ``state.npz`` and ``meta.json``. The location is a local
directory or any fsspec URL (a shared filesystem, ``s3://...``, ``ssh://...``). Each file is written under a
temporary name and moved into place, and ``meta.json`` goes last: it is the commit mark, so a reader (another
worker resuming the run) never takes a half-written checkpoint, and a writer killed mid-way leaves the
previous complete one as the newest.
"""

from __future__ import annotations

import contextlib
import json
import logging
import uuid
from pathlib import Path
from typing import Any

import fsspec
import keras
import numpy as np

log = logging.getLogger(__name__)


def location(directory: str | Path, shared: str | None, key: str) -> str:
    """Where a run's checkpoints live: ``directory`` (local, one run's) or, when a shared location is set,
    ``<shared>/<key>``, keyed by the run's resume fingerprint so that runs of other params or other data
    (another fold, another experiment) never see each other's checkpoints."""
    return f"{shared.rstrip('/')}/{key}" if shared else str(directory)


def save(directory: str | Path, step: int, model: keras.Model, meta: dict[str, Any], keep: int) -> str:
    """Write ``step-<step>/`` under ``directory`` and prune all but the newest ``keep`` complete checkpoints."""
    fs, root = fsspec.core.url_to_fs(str(directory))
    dest = f"{root}/step-{step:08d}"
    arrays = {f"model/{i:05d}": np.asarray(v.numpy()) for i, v in enumerate(model.variables)}
    arrays |= {f"optimizer/{i:05d}": np.asarray(v.numpy()) for i, v in enumerate(model.optimizer.variables)}
    fs.makedirs(dest, exist_ok=True)
    _put(fs, f"{dest}/state.npz", lambda f: np.savez(f, **arrays))
    _put(fs, f"{dest}/meta.json", lambda f: f.write(json.dumps({**meta, "step": step}, indent=2).encode()))
    done = [s for s in _steps(fs, root) if fs.exists(f"{root}/step-{s:08d}/meta.json")]
    if len(done) > keep:  # older complete checkpoints, and any partial one a killed writer left among them
        for old in (s for s in _steps(fs, root) if s < done[-keep]):
            with contextlib.suppress(FileNotFoundError):  # another worker of the same run pruned it first
                fs.rm(f"{root}/step-{old:08d}", recursive=True)
    return dest


def latest(directory: str | Path, fingerprint: str) -> tuple[str, dict[str, Any]] | None:
    """The newest complete checkpoint written by a run with the same ``fingerprint``, or ``None``."""
    fs, root = fsspec.core.url_to_fs(str(directory))
    for step in reversed(_steps(fs, root)):
        path = f"{root}/step-{step:08d}"
        try:
            with fs.open(f"{path}/meta.json", "rb") as f:
                meta = json.loads(f.read())
        except (OSError, ValueError):  # no commit mark yet (being written, or its writer was killed)
            continue
        if meta.get("fingerprint") == fingerprint:
            return _url(fs, path), meta
        log.info("ignoring %s: written with other params", path)
    return None


def exists(directory: str | Path) -> bool:
    """Whether ``directory`` holds any checkpoint (complete or not)."""
    fs, root = fsspec.core.url_to_fs(str(directory))
    return bool(_steps(fs, root))


def restore(path: str | Path, model: keras.Model) -> None:
    """Load a checkpoint into ``model`` and its (built) optimizer."""
    with fsspec.open(f"{path}/state.npz", "rb") as f, np.load(f) as state:
        for prefix, variables in (("model", model.variables), ("optimizer", model.optimizer.variables)):
            keys = sorted(k for k in state.files if k.startswith(prefix + "/"))
            if len(keys) != len(variables):
                raise ValueError(f"{path}: checkpoint has {len(keys)} {prefix} variables, model has {len(variables)}")
            for key, var in zip(keys, variables, strict=True):
                var.assign(state[key])


def _put(fs: Any, path: str, write: Any) -> None:
    """Write ``path`` through ``write(file)`` under a temporary name, then move it into place (a rename on a
    local or shared POSIX filesystem; an object store shows an object only once it is complete)."""
    tmp = f"{path}.{uuid.uuid4().hex}.tmp"
    try:
        with fs.open(tmp, "wb") as f:
            write(f)
        fs.mv(tmp, path)
    finally:
        if fs.exists(tmp):
            fs.rm(tmp)


def _url(fs: Any, path: str) -> str:
    """``path`` as a plain path on the local filesystem, as a URL (``s3://...``) elsewhere."""
    return path if "file" in fs.protocol else str(fs.unstrip_protocol(path))


def _steps(fs: Any, root: str) -> list[int]:
    """The steps of the ``step-*`` entries under ``root``, oldest first."""
    fs.invalidate_cache(root)  # another worker may have written since this process last looked
    try:
        names = [Path(p).name for p in fs.ls(root, detail=False)]
    except FileNotFoundError:
        return []
    return sorted(int(n[5:]) for n in names if n.startswith("step-") and n[5:].isdigit())
