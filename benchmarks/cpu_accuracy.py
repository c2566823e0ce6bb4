"""Accuracy against CPU time: train and evaluate all folds of several CPU settings with the stage CLIs (what
``dvc repro`` runs), and report the cross-validated challenge-protocol scores beside the wall time.

Each setting is a set of dotted overrides on ``params.yaml`` (like ``dvc exp run -S``), run in a scratch
directory that shares ``data/raw`` and ``data/folds.json`` (run ``dvc repro split`` first). Times are
wall-clock on this machine for training and evaluating every fold, without DVC's own overhead.

    python -m benchmarks.cpu_accuracy --settings cpu cpu-long
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks._common import write
from unet.folds import fold_name
from unet.presets import PRESETS, apply

ROOT = Path(__file__).resolve().parents[1]
# What the settings below vary: the cpu preset before this tuning (8 filters, depth 4, 188 px tiles, batch 4,
# 600 steps, Adam at 1e-3 constant after 20 warm-up steps, no drop-out, Dice + cross-entropy).
BASE: dict[str, Any] = {
    "train.model.base_filters": 8,
    "train.model.depth": 4,
    "train.model.tile": 188,
    "train.model.dropout": 0.0,
    "train.batch_size": 4,
    "train.max_steps": 600,
    "train.learning_rate": 0.001,
    "train.warmup_steps": 20,
    "train.schedule": "constant",
    "train.steps_per_epoch": 50,
    "train.checkpoint_every": 300,
    "evaluate.batch_size": 16,
    "runtime.precision": "float32",
    "runtime.xla": False,
    "runtime.tf32": False,
    "runtime.gpus": 0,
}


def _vary(**kw: Any) -> dict[str, Any]:
    """BASE with ``train.`` keys changed (``model__tile=284`` is ``train.model.tile``)."""
    return {**BASE, **{"train." + k.replace("__", "."): v for k, v in kw.items()}}


SETTINGS: dict[str, dict[str, Any]] = {
    "cpu": PRESETS["cpu"],
    "cpu-long": PRESETS["cpu-long"],
    # what was tried on the way to the presets
    "8f-600": BASE,
    "8f-600-border": _vary(loss__border_weight=True),
    "16f-600": _vary(model__base_filters=16),
    "16f-600-border": _vary(model__base_filters=16, loss__border_weight=True),
    "8f-600-cosine": _vary(schedule="cosine"),
    "8f-600-tile284-batch2-cosine": _vary(schedule="cosine", model__tile=284, batch_size=2),
    "8f-600-lr2e-3": _vary(learning_rate=0.002),
    "8f-600-lr3e-3": _vary(learning_rate=0.003),
    "8f-600-lr5e-3": _vary(learning_rate=0.005),
    "8f-600-lr3e-3-cosine": _vary(learning_rate=0.003, schedule="cosine"),
    "8f-600-lr2e-3-no-dice": _vary(learning_rate=0.002, loss__dice_weight=0.0),
    "8f-1200-batch2-lr2e-3": _vary(learning_rate=0.002, batch_size=2, max_steps=1200, checkpoint_every=600),
    "16f-2400-cosine-tta": {  # cpu-long before this tuning
        **_vary(model__base_filters=16, max_steps=2400, warmup_steps=50, schedule="cosine"),
        **{"train.steps_per_epoch": 100, "train.checkpoint_every": 500, "evaluate.tta": True},
    },
}


def run_setting(name: str, overrides: dict[str, Any], work: Path, env: dict[str, str]) -> dict[str, Any]:
    """Train every fold and evaluate; return the wall times and the cross-validated scores."""
    d = work / name
    d.mkdir(parents=True)
    params = d / "params.yaml"
    shutil.copy(ROOT / "params.yaml", params)
    apply(params, overrides)
    k = len(json.loads((ROOT / "data" / "folds.json").read_text())["folds"])
    t0 = time.perf_counter()
    for fold in range(k):
        cmd = [sys.executable, "-m", "unet.stages.train", "--params", str(params), "--fold", str(fold)]
        cmd += ["--raw", "data/raw", "--folds", "data/folds.json", "--out", str(d / fold_name(fold))]
        cmd += ["--checkpoints", str(d / "ckpt" / fold_name(fold))]
        subprocess.run(cmd, cwd=ROOT, env=env, check=True, capture_output=True)
    t_train = time.perf_counter() - t0
    cmd = [sys.executable, "-m", "unet.stages.evaluate", "--params", str(params), "--models", str(d)]
    cmd += ["--raw", "data/raw", "--folds", "data/folds.json"]
    cmd += ["--metrics", str(d / "metrics"), "--report", str(d / "evaluation.json")]
    cmd += ["--slices", str(d / "slices.csv"), "--curves", str(d / "curves.csv"), "--overlays", str(d / "overlays")]
    subprocess.run(cmd, cwd=ROOT, env=env, check=True, capture_output=True)
    t_all = time.perf_counter() - t0
    mean, std = (json.loads((d / "metrics" / f"{s}.json").read_text()) for s in ("mean", "std"))
    row = {"setting": name, "train_s": round(t_train, 1), "train_eval_s": round(t_all, 1)}
    for m in ("vrand", "vinfo", "pixel_error", "vrand_fixed", "soft_dice"):
        row[m] = mean[m]
        row[m + "_std"] = std[m]
    row["overrides"] = overrides
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--settings", nargs="+", default=["cpu", "cpu-long"], choices=list(SETTINGS))
    p.add_argument("--name", default="cpu_accuracy")
    p.add_argument("--work", type=Path, help="keep each setting's models and metrics here (default: a temp dir)")
    args = p.parse_args()
    if not (ROOT / "data" / "folds.json").is_file():
        sys.exit("cpu_accuracy: data/folds.json missing: run `dvc repro split` first")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    rows = []
    with tempfile.TemporaryDirectory(prefix="cpu-accuracy-") as tmp:
        for name in args.settings:
            rows.append(run_setting(name, SETTINGS[name], args.work or Path(tmp), env))
            print(json.dumps({k: v for k, v in rows[-1].items() if k != "overrides"}), flush=True)
    columns = ["setting", "train_s", "train_eval_s", "vrand", "vrand_std", "vinfo", "pixel_error", "vrand_fixed"]
    meta = {"machine": f"{os.cpu_count()} CPU cores, no GPU", "backend": "tensorflow", "folds": "all (5-fold CV)"}
    write(args.name, rows, columns, meta)


if __name__ == "__main__":
    main()
