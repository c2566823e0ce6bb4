"""The one way orchestration code runs a command (git, DVC, GTO, a probe, the stages under DVC): :func:`run`
(its output captured) and :func:`stream` (its output passed on line by line as it comes, less the chatter of
libraries that a person never needs to read); a failure is one :class:`CommandError` whose message is the
command's own one-line error. :func:`git` and :func:`dvc` run those two in a repository.

The one command run elsewhere is the Horovod relaunch of the train stage (``unet.stages.train``): a stage's
own business, which passes its output on untouched."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path

Result = subprocess.CompletedProcess  # what run returns: the exit status, and the output as text when captured


class CommandError(RuntimeError):
    """A command that failed (or gave no answer in time); the message is its own error in one line."""


def run(
    cmd: Sequence[str],
    cwd: str | Path | None = None,
    *,
    check: bool = True,
    env: dict[str, str] | None = None,
    pass_fds: Sequence[int] = (),
    capture: bool = True,
    timeout: float | None = None,
    label: str | None = None,
) -> Result[str]:
    """Run ``cmd`` in ``cwd`` with ``env`` on top of this process's environment; its output captured as text
    unless ``capture`` is false (then it goes where ours goes).

    Raises:
        CommandError: ``LABEL: LAST LINE`` (of its stderr, else its stdout, else ``exit N``) when it fails
            and ``check`` is set; ``LABEL: no answer in T s`` when ``timeout`` passes. ``label`` defaults to
            the program and its first argument (``git show``); an empty one leaves the prefix out.
    """
    label = " ".join(cmd[:2]) if label is None else label
    try:
        r = subprocess.run(
            list(cmd),
            cwd=cwd,
            capture_output=capture,
            text=True,
            env={**os.environ, **env} if env else None,
            pass_fds=tuple(pass_fds),
            timeout=timeout,
        )
    except subprocess.TimeoutExpired as exc:
        raise CommandError(_said(label, f"no answer in {timeout:g} s")) from exc
    if check and r.returncode != 0:
        last = (r.stderr or r.stdout or "").strip().splitlines()
        raise CommandError(_said(label, last[-1] if last else f"exit {r.returncode}"))
    return r


def _said(label: str, what: str) -> str:
    return f"{label}: {what}" if label else what


def git(repo: str | Path, *args: str, check: bool = True, env: dict[str, str] | None = None) -> str:
    """``git ARGS`` in ``repo``: its stripped output (see :func:`run` for ``check``)."""
    return run(["git", *args], repo, check=check, env=env).stdout.strip()


def dvc(repo: str | Path, *args: str, check: bool = True, env: dict[str, str] | None = None) -> str:
    """``dvc ARGS`` in ``repo``: its stripped output (see :func:`run` for ``check``)."""
    return run(["dvc", *args], repo, check=check, env=env).stdout.strip()


def has_identity(repo: str | Path) -> bool:
    """Whether git has an identity to sign commits and tags with in ``repo``."""
    return run(["git", "var", "GIT_COMMITTER_IDENT"], repo, check=False).returncode == 0


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


def names(root: Path, *args: str) -> list[str]:
    """NUL-separated path names from ``git ARGS`` (any character in a name)."""
    return [n for n in run(["git", *args], root, check=False).stdout.split("\0") if n]
