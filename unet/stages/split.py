"""split stage: write ``data/folds.json``, an exact seeded k-fold partition of the labelled slices."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from unet.config import Config
from unet.folds import check_partition, kfold
from unet.io import stack_info
from unet.outputs import write_json
from unet.stages import _cli

log = logging.getLogger(__name__)


def main(args: argparse.Namespace, cfg: Config) -> None:
    labels = Path(args.raw) / cfg.download.labels
    n = stack_info(labels).slices
    folds = kfold(n, cfg.split.k, cfg.split.seed, cfg.split.min_slices_per_fold, what=str(labels))
    check_partition(folds, n)
    write_json(args.out, folds)
    sizes = [len(f["val"]) for f in folds["folds"]]
    log.info("%d slices -> %d folds (validation sizes %s) -> %s", n, cfg.split.k, sizes, args.out)


if __name__ == "__main__":
    p = _cli.parser("split", __doc__)
    p.add_argument("--raw", required=True, help="directory of the stacks")
    p.add_argument("--out", required=True, help="the folds (JSON)")
    _cli.run("split", main, p.parse_args(), outputs=("out",))
