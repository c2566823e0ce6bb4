"""Per-step overhead of training (framework + input path), before and after the training slices moved onto the
device, on both Keras backends, in one run. Usage: ``python -m benchmarks.step_overhead [--old-rev REV]``.

A tiny U-Net (4 filters, depth 2, 44 px tiles) makes the step's compute negligible, so what is left is what
every step pays whatever the model: Keras' loop, the host's batch work and the copy to the device. The
slices are ISBI-sized (24 x 512 x 512 uint8, batch 8, as a GPU fold). Each measurement is ``unet.training.train``
in a fresh process, of ``unet/`` read from git at ``--old-rev`` (before: whole slices gathered on the host
each step) or of this checkout (after); before and after alternate, so machine load hits both alike. Both
train the same steps on the same data: the table says whether their final weights are bit-identical.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TINY = {"base_filters": 4, "depth": 2, "tile": 44, "dropout": 0.0}


def worker(out: Path, steps: int, epochs: int, border: bool) -> None:
    """Train the tiny model for ``epochs`` x ``steps``; write ms/step over all but the first (compiling) epoch."""
    import keras

    from unet import distributed
    from unet.config import Config, from_dict
    from unet.training import make_data, train

    cfg = from_dict(
        Config,
        {
            "train": {
                "model": TINY,
                "loss": {"border_weight": border},
                "batch_size": 8,
                "max_steps": steps * epochs,
                "steps_per_epoch": steps,
                "checkpoint_every": steps * epochs,
                "warmup_steps": 2,
            },
            "runtime": {"precision": "float32", "xla": False, "tf32": False, "gpus": 0},
        },
    )
    distributed.configure(cfg.runtime, cfg.train.seed)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (24, 512, 512), dtype=np.uint8)
    labels = (rng.random((24, 512, 512)) < 0.5).astype(np.uint8)
    ends: list[float] = []

    class Clock(keras.callbacks.Callback):
        def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
            ends.append(time.perf_counter())

    train(cfg, make_data(images, labels, cfg.train.loss), out / "run", callbacks=[Clock()])
    timed = ends[steps - 1 :]  # from the end of the first epoch: compilation excluded
    ms = 1e3 * (timed[-1] - timed[0]) / (len(timed) - 1)
    (out / "result.json").write_text(json.dumps({"ms_step": ms, "backend": keras.backend.backend()}))


def checkout(rev: str, dest: Path) -> Path:
    """Extract ``unet/`` of git revision ``rev`` under ``dest``."""
    dest.mkdir(parents=True)
    tar = subprocess.run(["git", "archive", rev, "unet"], cwd=ROOT, capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=tar, check=True)
    return dest


def measure(src: Path, backend: str, args: argparse.Namespace, tmp: Path) -> tuple[float, list[np.ndarray]]:
    """One worker process on the code in ``src``: (ms/step, final weights)."""
    from unet.export import load

    out = Path(tempfile.mkdtemp(dir=tmp))
    env = {
        **os.environ,
        "KERAS_BACKEND": backend,
        "PYTHONPATH": os.pathsep.join([str(src), str(ROOT)]),  # src's unet/ first, this checkout's benchmarks/
        "CUDA_VISIBLE_DEVICES": "",  # the CPU: overhead, not a device's compute
        "TF_CPP_MIN_LOG_LEVEL": "3",
    }
    cmd = [sys.executable, "-m", "benchmarks.step_overhead", "--worker", str(out)]
    cmd += ["--steps", str(args.steps), "--epochs", str(args.epochs), *(["--border"] if args.border else [])]
    r = subprocess.run(cmd, cwd=src, env=env, capture_output=True, text=True)
    if r.returncode:
        raise RuntimeError(f"worker ({backend}, {src}) failed:\n{r.stderr[-3000:]}")
    ms = json.loads((out / "result.json").read_text())["ms_step"]
    model = load(out / "run" / "model.keras")
    return ms, model.get_weights()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--old-rev", default="2f63569", help="the code before (host-side batches)")
    p.add_argument("--backends", nargs="+", default=["tensorflow", "jax"])
    p.add_argument("--repeats", type=int, default=3, help="before/after pairs per backend (medians taken)")
    p.add_argument("--steps", type=int, default=60, help="steps per epoch")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--border", action="store_true", help="border weight maps on (float32 maps travel too)")
    p.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args.worker, args.steps, args.epochs, args.border)
        return
    from benchmarks._common import device_name, write

    rows = []
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        sources = {"before": checkout(args.old_rev, tmp / "before"), "after": ROOT}
        for backend in args.backends:
            ms: dict[str, list[float]] = {"before": [], "after": []}
            weights: dict[str, list[np.ndarray]] = {}
            for _ in range(args.repeats):
                for name, src in sources.items():
                    m, weights[name] = measure(src, backend, args, tmp)
                    ms[name].append(m)
                    print(f"{backend} {name}: {m:.2f} ms/step", file=sys.stderr, flush=True)
            before, after = float(np.median(ms["before"])), float(np.median(ms["after"]))
            # each pair ran back to back: the median of their ratios is the least disturbed by the machine's load
            ratio = float(np.median(np.array(ms["before"]) / np.array(ms["after"])))
            same = all(np.array_equal(a, b) for a, b in zip(weights["before"], weights["after"], strict=True))
            rows.append(
                {
                    "backend": backend,
                    "before_ms": before,
                    "after_ms": after,
                    "ratio": ratio,
                    "same_weights": same,
                }
            )
    meta = {
        "device": device_name(),
        "before": f"unet/ at {args.old_rev}",
        "after": "this checkout",
        "model": TINY,
        "slices": "24 x 512 x 512 uint8",
        "batch": 8,
        "border_weight": args.border,
        "steps": f"{args.epochs} epochs x {args.steps}, first epoch excluded",
        "ratio": f"median over {args.repeats} back-to-back before/after pairs of before_ms / after_ms",
    }
    write("step_overhead", rows, ["backend", "before_ms", "after_ms", "ratio", "same_weights"], meta)


if __name__ == "__main__":
    main()
