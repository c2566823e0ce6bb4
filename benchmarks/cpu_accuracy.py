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
from unet.presets import PRESETS, apply

ROOT = Path(__file__).resolve().parents[1]
SETTINGS: dict[str, dict[str, Any]] = {
    "cpu": PRESETS["cpu"],
    "cpu-long": PRESETS["cpu-long"],
    # what was tried on the way to the presets
    "8f-600": {**PRESETS["cpu"], "train.model.base_filters": 8, "train.max_steps": 600, "train.schedule": "constant"},
    "8f-600-border": {
        **PRESETS["cpu"],
        "train.model.base_filters": 8,
        "train.max_steps": 600,
        "train.schedule": "constant",
        "train.loss.border_weight": True,
    },
    "16f-600-border": {
        **PRESETS["cpu"],
        "train.model.base_filters": 16,
        "train.max_steps": 600,
        "train.schedule": "constant",
        "train.loss.border_weight": True,
    },
    "16f-600": {**PRESETS["cpu"], "train.model.base_filters": 16, "train.max_steps": 600, "train.schedule": "constant"},
    "16f-800-cosine": {
        **PRESETS["cpu"],
        "train.model.base_filters": 16,
        "train.max_steps": 800,
        "train.schedule": "cosine",
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
        cmd += ["--raw", "data/raw", "--folds", "data/folds.json", "--out", str(d / f"fold{fold}")]
        cmd += ["--checkpoints", str(d / "ckpt" / f"fold{fold}")]
        subprocess.run(cmd, cwd=ROOT, env=env, check=True, capture_output=True)
    t_train = time.perf_counter() - t0
    cmd = [sys.executable, "-m", "unet.stages.evaluate", "--params", str(params), "--models", str(d)]
    cmd += ["--metrics", str(d / "folds.json"), "--summary", str(d / "summary.json")]
    cmd += ["--slices", str(d / "slices.csv"), "--overlays", str(d / "overlays")]
    subprocess.run(cmd, cwd=ROOT, env=env, check=True, capture_output=True)
    t_all = time.perf_counter() - t0
    s = json.loads((d / "summary.json").read_text())
    row = {"setting": name, "train_s": round(t_train, 1), "train_eval_s": round(t_all, 1)}
    for m in ("vrand", "vinfo", "pixel_error", "vrand_fixed", "soft_dice"):
        row[m] = s[m]["mean"]
        row[m + "_std"] = s[m]["std"]
    row["overrides"] = overrides
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
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
