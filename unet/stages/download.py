"""download stage: fetch the stacks into ``data/raw/`` as multi-page TIFFs, each verified by its pixels' sha256.

Sources, in order: ``$ISBI_DATA_DIR`` (or ``download.local_dir``; each stack a TIFF or a folder of slices),
then ``download.urls``, then ``download.slice_mirrors``.
"""

from __future__ import annotations

import argparse
import logging
import os

from unet.config import Config
from unet.download import DownloadError, download
from unet.io import check_outputs
from unet.stages import _cli

log = logging.getLogger(__name__)


def main(args: argparse.Namespace, cfg: Config) -> None:
    local = os.environ.get("ISBI_DATA_DIR") or cfg.download.local_dir
    if local:
        source = "ISBI_DATA_DIR" if os.environ.get("ISBI_DATA_DIR") else "download.local_dir"
        check_outputs({"--out": args.out}, {source: local})
    try:
        prov = download(cfg.download, args.out, local_dir=local)
    except DownloadError as exc:
        names = ", ".join(cfg.download.files)
        env = os.environ.get("ISBI_DATA_DIR")
        where = "set ISBI_DATA_DIR (or download.local_dir)"
        if env:  # the variable wins over the key: say so, or a user who set the key is misled
            over = f", which overrides download.local_dir {cfg.download.local_dir}" if cfg.download.local_dir else ""
            where = f"ISBI_DATA_DIR is set ({env}{over}): set it"
        raise DownloadError(
            f"{exc}; for a local copy {where} to a directory holding {names} "
            "(each a TIFF stack, a folder of its slices or an OME-Zarr image stem.ome.zarr)"
        ) from None
    log.info("wrote %s: %s", args.out, ", ".join(prov))


if __name__ == "__main__":
    p = _cli.parser("download", __doc__)
    p.add_argument("--out", required=True, help="output directory")
    _cli.run("download", main, p.parse_args(), outputs=("out",))
