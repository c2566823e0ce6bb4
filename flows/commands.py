"""The one way the flows run a command: its output streamed to the Prefect run log, its failure one line. The
library's own messages (its ``unet.*`` loggers) reach the run log too: :class:`RunLog`."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from prefect import get_run_logger
from prefect.exceptions import MissingContextError
from prefect.logging.handlers import APILogHandler

from unet.ops.runner import CommandError, stream


def command(cmd: list[str], repo: str, env: dict[str, str] | None = None) -> str:
    """Run a command in ``repo``, streaming each output line to the run log as it comes (less libraries'
    chatter); raise :class:`CommandError` with the command's own one-line error on failure. Returns its
    output."""
    log = get_run_logger()
    log.info("$ %s", " ".join(cmd))
    code, lines = stream(cmd, repo, lambda line: log.info("%s", line), env=env)
    if code != 0:
        ours = [ln for ln in lines if ": error: " in ln]  # a stage's one-line error
        theirs = [ln for ln in lines if ln.startswith("ERROR")]
        raise CommandError((ours or theirs or [f"{cmd[0]} {cmd[1]} exited {code}"])[-1])
    return "\n".join(lines)


class RunLog(APILogHandler):
    """Messages of the library's loggers (``unet.*``, from INFO) in the log of the flow or task run they are
    logged in; the console shows them through the root logger, as any library's. Outside a run: nothing."""

    def handleError(self, record: logging.LogRecord) -> None:
        if not isinstance(sys.exc_info()[1], MissingContextError):  # outside a run: not for the run log
            super().handleError(record)


@contextmanager
def library_log() -> Iterator[None]:
    """While a flow runs: the library's messages (``unet.*``, from INFO; Prefect's root logger takes WARNING
    and up) in its run log too. Nothing is changed at import, or after the flow."""
    library, handler = logging.getLogger("unet"), RunLog()
    level = library.level
    library.addHandler(handler)
    if level == logging.NOTSET:
        library.setLevel(logging.INFO)
    try:
        yield
    finally:
        library.removeHandler(handler)
        library.setLevel(level)
