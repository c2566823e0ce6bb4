"""download stage: fetch the TIFF stacks into ``data/raw/``, each verified by the sha256 of its pixels.

Sources, in order: ``$ISBI_DATA_DIR`` (or ``download.local_dir``), then ``download.urls``.
"""

from __future__ import annotations

import argparse
import logging
import os

from unet.config import Config
from unet.download import download
from unet.stages import _cli

log = logging.getLogger(__name__)


def main(args: argparse.Namespace, cfg: Config) -> None:
    local = os.environ.get("ISBI_DATA_DIR") or cfg.download.local_dir
    prov = download(cfg.download, args.out, local_dir=local)
    log.info("wrote %s: %s", args.out, ", ".join(prov))


if __name__ == "__main__":
    p = _cli.parser("download", __doc__)
    p.add_argument("--out", default="data/raw", help="output directory (default: %(default)s)")
    _cli.run("download", main, p.parse_args())
