"""register stage: export the best fold's model (or the all-fold ensemble) to ``models/registered/``.

Writes exactly its declared outputs: ``model.keras`` (+ ``saved_model/`` and ``model.onnx``, checked against
Keras with ONNX Runtime, on TensorFlow) under ``--out``, the BioImage Model Zoo package ``--package`` (tested
with bioimageio.core's own model test) and the model card ``--card`` (which names each file and its sha256),
whose scores are the cross-validated mean and std over folds. Releasing the model (a branch
plus GTO version and stage tags) is a separate, explicit command: ``unet release``.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from unet.config import Config, to_dict
from unet.folds import fold_name
from unet.outputs import write_json
from unet.stages import _cli

log = logging.getLogger(__name__)


def main(args: argparse.Namespace, cfg: Config) -> None:
    _cli.start_backend()  # after the arguments are checked, quietly
    import keras
    import numpy as np

    from unet import registry
    from unet.export import check_onnx, ensemble, export, load
    from unet.results import read_metrics

    out = Path(args.out)
    per_fold = read_metrics(args.metrics)
    folds = registry.choose(per_fold, cfg.register)
    models = [load(Path(args.models) / fold_name(k) / "model.keras") for k in folds]
    model = ensemble(models)
    paths = export(model, out)
    check = np.random.default_rng(0).random((1, *model.input_shape[1:]), np.float32)
    reloaded = load(paths["keras"])
    diff = float(np.abs(keras.ops.convert_to_numpy(reloaded(check)) - keras.ops.convert_to_numpy(model(check))).max())
    if diff > 1e-4:
        raise RuntimeError(f"{paths['keras']}: exported model differs from the trained one (max |diff| {diff:.2e})")
    if "onnx" in paths:
        log.info(
            "%s: ONNX Runtime agrees with Keras (max |diff| %.1e)",
            paths["onnx"],
            check_onnx(paths["onnx"], model, check * 255),
        )
    digests = {Path(paths[k]).name: sha256(paths[k]) for k in ("keras", "onnx") if k in paths}
    evaluation = json.loads(Path(args.evaluation).read_text())
    card = registry.card(
        cfg.register, per_fold, folds, digests["model.keras"], paths, provenance(cfg), evaluation, digests
    )
    package(args, cfg, model, card, evaluation)
    paths = {**paths, "bioimageio": args.package}
    digests[Path(args.package).name] = sha256(args.package)
    card = registry.card(
        cfg.register, per_fold, folds, digests["model.keras"], paths, provenance(cfg), evaluation, digests
    )
    write_json(args.card, {**card, "params": to_dict(cfg)})
    log.info("%s -> %s", card["description"], out)
    log.info("%s", card["caveat"])


def package(args: argparse.Namespace, cfg: Config, model: Any, card: dict[str, Any], evaluation: dict) -> None:
    """Write the BioImage Model Zoo package, its test tile cut from the chosen fold's first held-out slice,
    and run bioimageio.core's model test on it (the ONNX weights where there are, else Keras's)."""
    from unet import registry
    from unet.bioimageio import (
        cover,
        quiet_library_logs,
        sample_side,
        tile_sizes,
        write_package,
    )
    from unet.io import iter_slices

    quiet_library_logs()
    fold = fold_name(card["folds"][0])
    slices = evaluation["folds"].get(fold, {}).get("slices")
    if not slices:
        raise ValueError(f"{args.evaluation}: no held-out slices of {fold} (run the evaluate stage again)")
    held_out = slices[0]
    image = next(itertools.islice(iter_slices(Path(args.raw) / cfg.download.images[0]), held_out, None))
    side = sample_side(model, (image.shape[0], image.shape[1]))
    y, x = (image.shape[0] - side) // 2, (image.shape[1] - side) // 2
    tile = image[y : y + side, x : x + side]
    doc = registry.page(card, tile_sizes(model), held_out)
    t0 = time.monotonic()
    picture = cover(Path(args.overlays), fold, tile)
    written = write_package(model, args.package, cfg.register, tile, doc, picture, check=True)
    log.info(
        "%s: bioimage.io package (%s weights) written; bioimageio.core's model test passed (%.1f s in all)",
        args.package,
        " and ".join(written["weights"]),
        time.monotonic() - t0,
    )


def sha256(path: str | Path) -> str:
    """The hex sha256 of a file, read in 1 MiB blocks (a 5-fold ensemble's ONNX file is ~600 MB)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def provenance(cfg: Config) -> dict[str, Any]:
    """The run that trained the model: the experiment and its baseline commit (as DVC tells an experiment's
    stages, or the Prefect flow its own), the preset that set the params (``unet.presets``) and the steps."""
    return {
        "experiment": os.environ.get("DVC_EXP_NAME"),
        "preset": os.environ.get("UNET_PRESET"),
        "steps": cfg.train.max_steps,
        "commit": os.environ.get("DVC_EXP_BASELINE_REV"),
    }


if __name__ == "__main__":
    p = _cli.parser("register", __doc__)
    p.add_argument("--metrics", required=True, help="directory of the fold metrics written by evaluate")
    p.add_argument("--evaluation", required=True, help="evaluate's report (slices per fold)")
    p.add_argument("--models", required=True, help="directory of fold<k>/model.keras")
    p.add_argument("--out", required=True, help="directory of the registered model")
    p.add_argument("--raw", required=True, help="directory of the raw stacks (the package's test tile)")
    p.add_argument("--overlays", required=True, help="evaluate's overlay PNGs (the package's cover)")
    p.add_argument("--package", required=True, help="the BioImage Model Zoo package (zip)")
    p.add_argument("--card", required=True, help="the model card (JSON)")
    _cli.run("register", main, p.parse_args(), outputs=("out", "card", "package"))
