"""Named parameter presets, applied to ``params.yaml`` in place (as ``dvc exp run --set-param`` does),
so ``dvc.lock`` records exactly what ran.

``python -m unet.presets auto`` applies ``cpu`` when no NVIDIA GPU is visible and says so.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from unet import config
from unet.io import roundtrip_yaml

PRESETS: dict[str, dict[str, Any]] = {
    # Small and quick: a depth-4, 8-filter U-Net on 188 px tiles (100 px output); all 5 folds train and
    # evaluate within a few minutes on 2 CPU cores.
    "cpu": {
        "train.model.base_filters": 8,
        "train.model.depth": 4,
        "train.model.tile": 188,
        "train.batch_size": 4,
        "train.max_steps": 150,
        "train.learning_rate": 0.001,
        "train.warmup_steps": 10,
        "train.steps_per_epoch": 25,
        "train.checkpoint_every": 50,
        "evaluate.batch_size": 16,
        "runtime.precision": "float32",
        "runtime.xla": False,
        "runtime.tf32": False,
        "runtime.gpus": 0,
    },
    "gpu": {},  # params.yaml's defaults are the GPU recipe
}


def gpu_count() -> int:
    """NVIDIA GPUs visible through ``nvidia-smi`` (0 when it is missing or fails)."""
    if not shutil.which("nvidia-smi"):
        return 0
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30, check=True).stdout
    except (subprocess.SubprocessError, OSError):
        return 0
    return sum(line.startswith("GPU ") for line in out.splitlines())


def apply(path: str | Path, overrides: dict[str, Any]) -> None:
    """Set dotted keys in a YAML file, keeping its comments; the result must load as a valid config."""
    yaml = roundtrip_yaml()
    path = Path(path)
    doc = yaml.load(path.read_text())
    for dotted, value in overrides.items():
        node = doc
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w") as f:
        yaml.dump(doc, f)
    try:
        config.load(tmp)
    except ValueError:
        tmp.unlink()
        raise
    tmp.replace(path)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m unet.presets", description=__doc__.split("\n\n")[0])
    p.add_argument("preset", choices=[*PRESETS, "auto"])
    p.add_argument("--params", default="params.yaml")
    args = p.parse_args(argv)
    name = args.preset
    if name == "auto":
        gpus = gpu_count()
        name = "gpu" if gpus else "cpu"
        print(f"presets: {gpus} GPU(s) found: using the '{name}' preset", file=sys.stderr)
    if PRESETS[name]:
        apply(args.params, PRESETS[name])
        changed = ", ".join(f"{k}={v}" for k, v in PRESETS[name].items())
        print(f"presets: {args.params} updated with the '{name}' preset: {changed}", file=sys.stderr)


if __name__ == "__main__":
    main()


def overrides(
    preset: str | None = None,
    steps: int | None = None,
    precision: str | None = None,
    xla: bool | None = None,
    gpus: int | None = None,
) -> dict[str, Any]:
    """Dotted ``params.yaml`` overrides from a preset plus explicit values (explicit values win)."""
    if preset == "auto":
        preset = "gpu" if gpu_count() else "cpu"
    if preset is not None and preset not in PRESETS:
        raise ValueError(f"preset: invalid value {preset!r}: must be one of {[*PRESETS, 'auto']}")
    out = dict(PRESETS[preset]) if preset else {}
    explicit = {"train.max_steps": steps, "runtime.precision": precision, "runtime.xla": xla, "runtime.gpus": gpus}
    out |= {k: v for k, v in explicit.items() if v is not None}
    if steps is not None:  # keep the epoch/checkpoint cadence valid for short runs
        spe = min(int(out.get("train.steps_per_epoch", 100)), steps)
        out |= {"train.steps_per_epoch": spe, "train.checkpoint_every": spe * max(1, min(5, steps // spe))}
    return out
