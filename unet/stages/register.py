"""register stage: publish the best fold's model (or the all-fold ensemble) to ``models/registered/``.

As a DVC stage it exports ``model.keras`` (+ ``saved_model/`` on TensorFlow) and ``card.json`` and
records the artifact with its metrics in ``dvc.yaml`` ``artifacts:``. Run again with ``--publish`` after
``dvc repro`` and ``dvc push`` (``make run`` and the Prefect flow do), it commits the pipeline's record
and tags that commit with GTO (``gto register`` + ``gto assign --stage``), so the version resolves to
the files (``dvc artifacts get``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
from pathlib import Path

import keras
import numpy as np

from unet import registry
from unet.config import Config, to_dict
from unet.export import ensemble, export
from unet.io import write_json
from unet.metrics import METRICS
from unet.stages import _cli

log = logging.getLogger(__name__)


def main(args: argparse.Namespace, cfg: Config) -> None:
    metrics_dir, out = Path(args.metrics), Path(args.out)
    per_fold = {
        int(p.stem.removeprefix("fold")): json.loads(p.read_text()) for p in sorted(metrics_dir.glob("fold*.json"))
    }
    if not per_fold:
        raise ValueError(f"{metrics_dir}: no fold<k>.json metrics to choose from")
    folds = registry.choose(per_fold, cfg.register)
    models = [keras.saving.load_model(Path(args.models) / f"fold{k}" / "model.keras", compile=False) for k in folds]
    model = ensemble(models)
    paths = export(model, out)
    check = np.random.default_rng(0).random((1, *model.input_shape[1:]), np.float32)
    reloaded = keras.saving.load_model(paths["keras"], compile=False)
    diff = float(np.abs(keras.ops.convert_to_numpy(reloaded(check)) - keras.ops.convert_to_numpy(model(check))).max())
    if diff > 1e-4:
        raise RuntimeError(f"{paths['keras']}: exported model differs from the trained one (max |diff| {diff:.2e})")
    scores = {m: float(np.mean([per_fold[k][m] for k in folds])) for m in METRICS}
    digest = hashlib.sha256(Path(paths["keras"]).read_bytes()).hexdigest()
    desc = registry.describe(cfg.register.name, folds, scores)
    card = {
        "name": cfg.register.name,
        "description": desc,
        "folds": folds,
        "select": cfg.register.select,
        "metric": cfg.register.metric,
        "validation_metrics": scores,
        "sha256": digest,
        "files": paths,
        "params": to_dict(cfg),
    }
    write_json(out / "card.json", card)
    registry.record_artifact(args.dvc_yaml, cfg.register.name, paths["keras"], desc)
    log.info("%s -> %s", desc, out)


def publish(args: argparse.Namespace, cfg: Config) -> None:
    registry.publish(
        cfg.register.name, cfg.register.stage, Path(args.out) / "card.json", cwd=Path(args.dvc_yaml).parent
    )


if __name__ == "__main__":
    p = _cli.parser("register", __doc__)
    p.add_argument("--metrics", default="metrics", help="directory of fold<k>.json")
    p.add_argument("--models", default="models", help="directory of fold<k>/model.keras")
    p.add_argument("--out", default="models/registered")
    p.add_argument("--dvc-yaml", default="dvc.yaml", help="the dvc.yaml whose artifacts: records the model")
    p.add_argument("--publish", action="store_true", help="commit the record and tag it with GTO (after dvc push)")
    a = p.parse_args()
    _cli.run("register", publish if a.publish else main, a)
