"""Running the tools a run drives (DVC, git, the stages under them) with their output passed on line by line,
less the chatter of libraries that a person never needs to read."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path

# Lines nobody acts on: TensorFlow's start-up (written before Python can silence it, by a stage started under
# DVC), and DVC's note, at the start of every experiment whose outputs are not there yet, that it will not
# check them out (they are produced by the run).
NOISE = (
    "E0000 ",
    "I0000 ",
    "W0000 ",
    "WARNING: All log messages before absl::InitializeLog()",
    "WARNING: No file hash info found for ",
)


def quiet(line: str) -> bool:
    """Whether ``line`` is chatter to drop."""
    return line.startswith(NOISE) or not line.strip()


def stream(
    cmd: Sequence[str],
    cwd: str | Path,
    sink: Callable[[str], None],
    env: dict[str, str] | None = None,
    pass_fds: Sequence[int] = (),
    stderr_only: bool = False,
) -> tuple[int, list[str]]:
    """Run ``cmd``, passing each line it writes (stdout and stderr together, unbuffered) that is not
    :func:`quiet` to ``sink`` as it comes. Returns the exit status and every line.

    With ``stderr_only`` the command's stdout is ours (a terminal stays a terminal) and only its stderr, where
    the chatter goes, passes through the filter."""
    proc = subprocess.Popen(
        list(cmd),
        cwd=cwd,
        stdout=None if stderr_only else subprocess.PIPE,
        stderr=subprocess.PIPE if stderr_only else subprocess.STDOUT,
        text=True,
        bufsize=1,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        pass_fds=tuple(pass_fds),
    )
    lines = []
    out = proc.stderr if stderr_only else proc.stdout
    assert out is not None
    for line in out:
        line = line.rstrip()
        lines.append(line)
        if not quiet(line):
            sink(line)
    return proc.wait(), lines
