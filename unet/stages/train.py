"""train stage: train one fold (``--fold k``, a DVC matrix item) into ``models/folds/fold<k>/``.

Writes ``model.keras``, ``config.json`` (the resolved params), DVCLive's ``metrics.json`` and ``plots/``
under ``--out``, and resume state under ``--checkpoints``, or under ``--shared-checkpoints`` (default
``$UNET_CHECKPOINTS``: a path or fsspec URL every worker reaches) keyed by the run's resume fingerprint. A
rerun after a kill, here or on another worker sharing that location, resumes from the newest checkpoint
written for the same slices with the same train and runtime params.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

from unet.config import Config, from_dict, to_dict
from unet.io import read_stack
from unet.outputs import write_json
from unet.stages import _cli

log = logging.getLogger(__name__)
PARAMS_ENV = "UNET_PARAMS"  # the params the launching process loaded, handed to every Horovod rank


def main(args: argparse.Namespace, cfg: Config) -> None:
    _cli.start_backend()  # after the arguments are checked, quietly
    from unet import distributed
    from unet.samples import make_data
    from unet.training import train

    relaunch = distributed.horovod_command(cfg.runtime, ["-m", "unet.stages.train", *sys.argv[1:]])
    if relaunch:  # runtime.gpus > 1 or runtime.hosts on TensorFlow: the same command on every Horovod rank
        log.info("starting %d Horovod processes: %s", cfg.runtime.gpus, " ".join(relaunch))
        # every rank, on every host, trains these params, whatever params.yaml its host's clone holds
        # (a `dvc exp run -S` changes only this host's): horovodrun passes the environment on
        env = {**os.environ, PARAMS_ENV: json.dumps(to_dict(cfg))}
        code = subprocess.run(relaunch, env=env).returncode
        if code:
            raise RuntimeError(f"horovodrun exited {code}: a rank failed (its error is above)")
        return
    if distributed.under_horovod() and os.environ.get(PARAMS_ENV):
        cfg = from_dict(Config, json.loads(os.environ[PARAMS_ENV]))
    dist = distributed.configure(cfg.runtime, cfg.train.seed)
    raw, workdir = Path(args.raw), Path(args.out)
    folds = json.loads(Path(args.folds).read_text())
    if not 0 <= args.fold < len(folds["folds"]):
        raise ValueError(f"--fold: invalid value {args.fold}: {args.folds} has folds 0..{len(folds['folds']) - 1}")
    idx = folds["folds"][args.fold]["train"]
    images = read_stack(raw / cfg.download.images[0])[idx]
    labels = read_stack(raw / cfg.download.labels)[idx]
    data = make_data(images, labels, cfg.train.loss)
    if dist.chief:
        log.info(
            "fold %d: %d training slices, backend %s, %s, precision %s, %d steps x global batch %d",
            args.fold,
            len(idx),
            distributed.backend(),
            dist.placement(),
            cfg.runtime.precision,
            cfg.train.max_steps,
            cfg.train.batch_size,
        )
        workdir.mkdir(parents=True, exist_ok=True)
        write_json(workdir / "config.json", {"fold": args.fold, **to_dict(cfg)})
    metrics = train(cfg, data, workdir, dist, checkpoints=args.checkpoints, shared_checkpoints=args.shared_checkpoints)
    if dist.chief:
        log.info("fold %d done: %s", args.fold, ", ".join(f"{k}={v:.4g}" for k, v in metrics.items()))


if __name__ == "__main__":
    p = _cli.parser("train", __doc__)
    p.add_argument("--fold", type=int, required=True, help="the fold to train: its index in --folds")
    p.add_argument("--raw", required=True, help="directory of the stacks")
    p.add_argument("--folds", required=True, help="the split stage's folds")
    p.add_argument("--out", required=True, help="output directory of the fold's model")
    p.add_argument("--checkpoints", required=True, help="resume state directory")
    p.add_argument(
        "--shared-checkpoints",
        default=os.environ.get("UNET_CHECKPOINTS") or None,
        help="resume state shared by every worker, instead of --checkpoints: a path or fsspec URL "
        "(default: $UNET_CHECKPOINTS)",
    )
    _cli.run("train", main, p.parse_args(), outputs=("out", "checkpoints", "shared_checkpoints"))
