"""Test helper run under horovodrun (or alone): train a tiny config on synthetic data and save this rank's
final weights to ``<out>/rank<r>.npz``. Usage: ``python tests/hvd_worker.py CONFIG_JSON OUT [--crash-rank R]``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import keras
import numpy as np

from tests.conftest import synthetic
from unet import distributed
from unet.config import Config, from_dict
from unet.samples import make_data
from unet.training import train


class SaveWeights(keras.callbacks.Callback):
    def __init__(self, out: Path, rank: int):
        super().__init__()
        self.out, self.rank = out, rank

    def on_train_end(self, logs=None):
        weights = self.model.unet.get_weights()
        np.savez(self.out / f"rank{self.rank}.npz", *weights)


class Crash(keras.callbacks.Callback):
    def __init__(self, rank: int):
        super().__init__()
        self.rank = rank

    def on_train_batch_end(self, batch, logs=None):
        if batch == 2:
            raise SystemExit(f"rank {self.rank} crashes on purpose")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("config")
    p.add_argument("out", type=Path)
    p.add_argument("--crash-rank", type=int, default=-1)
    args = p.parse_args()
    cfg = from_dict(Config, json.loads(args.config))
    dist = distributed.configure(cfg.runtime, cfg.train.seed)
    images, labels = synthetic(6, 64)
    cbs: list = [SaveWeights(args.out, dist.rank)]
    if dist.rank == args.crash_rank:
        cbs.append(Crash(dist.rank))
    train(cfg, make_data(images, labels, cfg.train.loss), args.out / "run", dist, callbacks=cbs)


if __name__ == "__main__":
    main()
