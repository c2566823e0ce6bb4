"""Checkpoints that resume exactly: every model variable (weights and RNG seed states), every optimizer
variable (moments, iteration count, loss scale), the step and the resolved config.

A checkpoint is ``<location>/step-<step>/`` holding ``state.npz`` and ``meta.json``. The location is a local
directory or any fsspec URL (a shared filesystem, ``s3://...``, ``ssh://...``). Each file is written under a
temporary name, flushed to the disk and moved into place (:func:`unet.outputs.atomic_path` on a local
filesystem), and ``meta.json`` goes last: it is the commit mark, so a reader (another worker resuming the run)
never takes a half-written checkpoint, and a writer killed mid-way leaves the previous complete one as the
newest. The mark records the sha256 of ``state.npz``: a checkpoint whose state cannot be read or does not
match (a damaged disk, a copy cut short) is skipped with a one-line warning naming it, and the previous one,
or a fresh start, is used instead.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import uuid
import zipfile
from pathlib import Path
from typing import Any

import fsspec
import keras
import numpy as np

from unet.outputs import atomic_path, fsync_dir

log = logging.getLogger(__name__)


def location(directory: str | Path, shared: str | None, key: str) -> str:
    """Where a run's checkpoints live: ``directory`` (local, one run's) or, when a shared location is set,
    ``<shared>/<key>``, keyed by the run's resume fingerprint so that runs of other params or other data
    (another fold, another experiment) never see each other's checkpoints."""
    return f"{shared.rstrip('/')}/{key}" if shared else str(directory)


def save(directory: str | Path, step: int, model: keras.Model, meta: dict[str, Any], keep: int) -> str:
    """Write ``step-<step>/`` under ``directory`` and prune all but the newest ``keep`` complete checkpoints of
    this run (``meta["fingerprint"]``). Checkpoints of another run in the same directory (the fold trained
    with other params before) are removed first: they are never resumed here, and one at the same step
    would be overwritten file by file."""
    fs, root = fsspec.core.url_to_fs(str(directory))
    dest = f"{root}/step-{step:08d}"
    arrays = {f"model/{i:05d}": np.asarray(v.numpy()) for i, v in enumerate(model.variables)}
    arrays |= {f"optimizer/{i:05d}": np.asarray(v.numpy()) for i, v in enumerate(model.optimizer.variables)}
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    state = buf.getvalue()
    marks = {s: _mark(fs, f"{root}/step-{s:08d}") for s in _steps(fs, root)}
    for other in (s for s, m in marks.items() if m is not None and m.get("fingerprint") != meta.get("fingerprint")):
        _remove(fs, f"{root}/step-{other:08d}")
    fs.makedirs(dest, exist_ok=True)
    _put(fs, f"{dest}/state.npz", state)
    mark = {**meta, "step": step, "state_sha256": hashlib.sha256(state).hexdigest()}
    _put(fs, f"{dest}/meta.json", json.dumps(mark, indent=2).encode())
    if _local(fs):
        fsync_dir(root)  # the step directory's own entry
    done = [s for s in _steps(fs, root) if _mark(fs, f"{root}/step-{s:08d}") is not None]
    if len(done) > keep:  # older complete checkpoints, and any partial one a killed writer left among them
        for old in (s for s in _steps(fs, root) if s < done[-keep]):
            _remove(fs, f"{root}/step-{old:08d}")
    return dest


def _mark(fs: Any, path: str) -> dict[str, Any] | None:
    """A checkpoint's commit mark (``meta.json``), or ``None`` while it has none (being written, or killed)."""
    try:
        with fs.open(f"{path}/meta.json", "rb") as f:
            return dict(json.loads(f.read()))
    except (OSError, ValueError):
        return None


def _remove(fs: Any, path: str) -> None:
    with contextlib.suppress(FileNotFoundError):  # another worker of the same run removed it first
        fs.rm(path, recursive=True)


def latest(directory: str | Path, fingerprint: str) -> tuple[str, dict[str, Any]] | None:
    """The newest complete, intact checkpoint written by a run with the same ``fingerprint``, or ``None``.

    A checkpoint whose state is unreadable or does not match the sha256 in its commit mark is skipped with a
    warning naming it (it is left in place: pruning removes it once newer ones exist)."""
    fs, root = fsspec.core.url_to_fs(str(directory))
    for step in reversed(_steps(fs, root)):
        path = f"{root}/step-{step:08d}"
        meta = _mark(fs, path)
        if meta is None:  # no commit mark yet (being written, or its writer was killed)
            continue
        if meta.get("fingerprint") != fingerprint:
            log.info("ignoring %s: written with other params", path)
            continue
        problem = _damage(fs, path, meta)
        if problem:
            log.warning("warning: skipping damaged checkpoint %s (%s)", _url(fs, path), problem)
            continue
        return _url(fs, path), meta
    return None


def _damage(fs: Any, path: str, meta: dict[str, Any]) -> str | None:
    """What is wrong with a checkpoint's ``state.npz``, or ``None``: it must exist, match the sha256 that its
    commit mark records (checkpoints written before marks carried one are only opened) and open as ``.npz``."""
    try:
        with fs.open(f"{path}/state.npz", "rb") as f:
            state = f.read()
    except OSError as exc:
        return f"state.npz unreadable: {exc.__class__.__name__}"
    if not state:
        return "state.npz is empty"
    want = meta.get("state_sha256")
    if want is not None and hashlib.sha256(state).hexdigest() != want:
        return "state.npz does not match the sha256 in meta.json"
    try:
        with np.load(io.BytesIO(state)) as npz:
            npz.files  # noqa: B018 (reads the zip directory)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        return f"state.npz unreadable: {str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__}"
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


def _put(fs: Any, path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` under a temporary name, then move it into place: through
    :func:`unet.outputs.atomic_path` (flushed and renamed) on a local filesystem, by fsspec's move on a shared one
    (an object store shows an object only once it is complete)."""
    if _local(fs):
        with atomic_path(path) as local:
            local.write_bytes(data)
        return
    tmp = f"{path}.{uuid.uuid4().hex}.tmp"
    try:
        with fs.open(tmp, "wb") as f:
            f.write(data)
        fs.mv(tmp, path)
    finally:
        if fs.exists(tmp):
            fs.rm(tmp)


def _local(fs: Any) -> bool:
    return "file" in fs.protocol


def _url(fs: Any, path: str) -> str:
    """``path`` as a plain path on the local filesystem, as a URL (``s3://...``) elsewhere."""
    return path if _local(fs) else str(fs.unstrip_protocol(path))


def _steps(fs: Any, root: str) -> list[int]:
    """The steps of the ``step-*`` entries under ``root``, oldest first."""
    fs.invalidate_cache(root)  # another worker may have written since this process last looked
    try:
        names = [Path(p).name for p in fs.ls(root, detail=False)]
    except FileNotFoundError:
        return []
    return sorted(int(n[5:]) for n in names if n.startswith("step-") and n[5:].isdigit())
