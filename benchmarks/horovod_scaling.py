"""Horovod data-parallel scaling on this host: global img/s of the cpu-preset model's real training step
with 1 and N Horovod processes (Gloo), the same global batch, in one run.
Usage: ``python -m benchmarks.horovod_scaling [--procs 1 2] [--batch 8] [--steps 40]``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np


def worker(out: Path, batch: int, steps: int) -> None:
    import keras

    from unet import distributed
    from unet.config import Config, from_dict
    from unet.presets import PRESETS
    from unet.samples import SliceData
    from unet.training import train

    preset = {k: v for k, v in PRESETS["cpu"].items() if k.startswith(("train.model", "runtime"))}
    nested: dict = {}
    for key, value in {
        **preset,
        "train.batch_size": batch,
        "train.max_steps": steps,
        "train.steps_per_epoch": steps // 2,
        "train.checkpoint_every": steps,
    }.items():
        node = nested
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    cfg = from_dict(Config, nested)
    dist = distributed.configure(cfg.runtime, 0)
    rng = np.random.default_rng(0)
    data = SliceData(
        rng.integers(0, 256, (24, 512, 512), dtype=np.uint8), rng.integers(0, 2, (24, 512, 512), dtype=np.uint8)
    )
    metrics = train(cfg, data, out / "run", dist)  # img_per_s of the second epoch: compile time excluded
    if dist.chief:
        (out / "result.json").write_text(json.dumps({"procs": dist.replicas, **metrics, "keras": keras.__version__}))


def main() -> None:
    from benchmarks._common import device_name, write

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--procs", nargs="+", type=int, default=[1, 2])
    p.add_argument("--batch", type=int, default=8, help="global batch")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args.worker, args.batch, args.steps)
        return
    rows = []
    for n in args.procs:
        with tempfile.TemporaryDirectory() as tmp:
            cmd = [
                sys.executable,
                "-m",
                "benchmarks.horovod_scaling",
                "--worker",
                tmp,
                "--batch",
                str(args.batch),
                "--steps",
                str(args.steps),
            ]
            subprocess.run(["horovodrun", "-np", str(n), "--gloo", *cmd], check=True, capture_output=True)
            r = json.loads((Path(tmp) / "result.json").read_text())
        rows.append({"procs": n, "global_batch": args.batch, "img_s": r["img_per_s"]})
        print(f"{n} process(es): {r['img_per_s']:.2f} img/s", flush=True)
    for r in rows:
        r["vs_1"] = r["img_s"] / rows[0]["img_s"]
    write(
        "horovod_scaling_" + device_name().split(":")[0],
        rows,
        ["procs", "global_batch", "img_s", "vs_1"],
        {"device": device_name(), "model": "cpu preset (8 filters, depth 4, 188 px tiles)", "steps": args.steps},
    )


if __name__ == "__main__":
    main()
