"""Writing outputs so that nothing is lost: atomically (a temporary name, then one rename), durably (fsync of
what was written and of the directory that holds it), and never over an input (:func:`overlaps`).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_path(dest: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling of ``dest`` (file or directory) that becomes ``dest`` only on success.

    The one writer of everything the pipeline and ``unet predict`` write: what is written under the
    temporary name is flushed to the disk (``fsync`` of every file and directory in it), renamed into place,
    and the rename itself made durable (``fsync`` of the parent directory). A file ``dest`` is replaced in one
    rename: a process killed at any moment, or a machine that loses power, leaves the old file or the new one,
    never a part of either. A directory ``dest`` is moved aside first and removed once the new one is in place
    (between the two renames it is missing, never partial); a killed writer leaves its ``.<name>.*`` temporary
    directory beside ``dest``.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent)) / dest.name
    try:
        yield tmp
        fsync_tree(tmp)
        if dest.is_dir() and not dest.is_symlink():
            os.replace(dest, tmp.parent / "old")
        os.replace(tmp, dest)
        fsync_dir(dest.parent)
    finally:
        shutil.rmtree(tmp.parent, ignore_errors=True)


def fsync_tree(path: str | Path) -> None:
    """Flush a file, or every file and directory under a directory, to the disk."""
    path = Path(path)
    if not path.is_dir():
        _fsync(path, os.O_RDONLY)
        return
    for sub in path.rglob("*"):
        if sub.is_file() and not sub.is_symlink():
            _fsync(sub, os.O_RDONLY)
        elif sub.is_dir():
            fsync_dir(sub)
    fsync_dir(path)


def fsync_dir(path: str | Path) -> None:
    """Make the entries of a directory (a rename into it, a new file) durable."""
    with contextlib.suppress(OSError):  # a filesystem that cannot open a directory (not POSIX) has no such sync
        _fsync(Path(path), os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))


def _fsync(path: Path, flags: int) -> None:
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def overlaps(a: str | Path, b: str | Path) -> bool:
    """Whether writing ``a`` could destroy ``b``: the same file (also through a hard or symbolic link), or
    one of them a directory holding the other (after resolving symbolic links)."""
    a, b = Path(a), Path(b)
    with contextlib.suppress(OSError):  # either may not exist yet
        if os.path.samefile(a, b):
            return True
    ra, rb = a.resolve(), b.resolve()
    return ra == rb or ra in rb.parents or rb in ra.parents


def write_json(path: str | Path, data: Any) -> None:
    """Write JSON atomically (indented, keys in insertion order)."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2) + "\n")
