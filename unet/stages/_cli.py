"""What every stage CLI shares: logging setup, params loading, and one-line errors with exit code 1."""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
from collections.abc import Callable

from unet import config
from unet.io import check_outputs

EXPECTED = (ValueError, RuntimeError, OSError)  # DataError, DownloadError, ValidationFailed and bad params


def start_backend() -> None:
    """Import Keras and its backend with the backend's start-up chatter silenced (TensorFlow's C++ logging,
    the "absl::InitializeLog" warning, CUDA plugin registration errors written to file descriptor 2 before any
    Python code could filter them): every entry point that needs Keras calls this first, so that what reaches
    stderr is ours (progress lines, one-line errors). An import that fails still raises, after the restore."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    logging.getLogger("tensorflow").setLevel(logging.WARNING)  # e.g. SavedModel's "Assets written to: ..."
    if "keras" in sys.modules:
        return
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        import keras

        keras.backend.backend()  # the backend module itself, where TensorFlow registers its plugins
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def plain(doc: str | None) -> str:
    """A docstring's first paragraph as plain text for ``--help``: no reStructuredText markup."""
    first = (doc or "").split("\n\n")[0]
    return " ".join(re.sub(r":[a-z]+:`~?([^`]+)`", r"\1", first).replace("``", "").split())


def parser(stage: str, doc: str | None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"python -m unet.stages.{stage}", description=plain(doc))
    p.add_argument("--params", default="params.yaml", help="params file (default: %(default)s)")
    return p


def run(
    stage: str,
    main: Callable[[argparse.Namespace, config.Config], None],
    args: argparse.Namespace,
    outputs: tuple[str, ...] = (),
) -> None:
    """Configure logging, load params, run ``main``; expected errors become one line on stderr and exit 1.

    ``outputs`` names the arguments that are paths the stage writes; every other path argument is an input,
    and an output that would overwrite one is refused before any work."""
    logging.basicConfig(level=logging.INFO, format=f"{stage}: %(message)s", stream=sys.stderr)
    try:
        paths = {k: v for k, v in vars(args).items() if isinstance(v, str) and v}
        check_outputs(
            {_option(k): v for k, v in paths.items() if k in outputs},
            {_option(k): v for k, v in paths.items() if k not in outputs},
        )
        cfg = config.load(args.params)
        main(args, cfg)
    except EXPECTED as exc:
        if os.environ.get("UNET_TRACEBACK"):
            raise
        msg = " ".join(str(exc).split("\n")[0].split()) or type(exc).__name__
        print(f"{stage}: error: {msg}", file=sys.stderr)
        sys.exit(1)


def _option(dest: str) -> str:
    return "--" + dest.replace("_", "-")
