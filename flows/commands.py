"""The one way the flows run a command: its output streamed to the Prefect run log, its failure one line."""

from __future__ import annotations

from prefect import get_run_logger

from unet.ops.runner import stream


def command(cmd: list[str], repo: str, env: dict[str, str] | None = None) -> str:
    """Run a command in ``repo``, streaming each output line to the run log as it comes (less libraries'
    chatter); raise with the command's own one-line error on failure. Returns its output."""
    log = get_run_logger()
    log.info("$ %s", " ".join(cmd))
    code, lines = stream(cmd, repo, lambda line: log.info("%s", line), env=env)
    if code != 0:
        ours = [ln for ln in lines if ": error: " in ln]  # a stage's one-line error
        theirs = [ln for ln in lines if ln.startswith("ERROR")]
        raise RuntimeError((ours or theirs or [f"{cmd[0]} {cmd[1]} exited {code}"])[-1])
    return "\n".join(lines)
