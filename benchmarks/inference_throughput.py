"""Inference throughput (img/s, one image = one input tile) and latency percentiles by model size, batch
size and precision, through the same compiled predict path that overlap-tile inference uses.
Usage: ``python -m benchmarks.inference_throughput [--sizes ...] [--batches ...] [--name NAME]``.
NVIDIA's reference (A100, TF1, FP16, paper net): 440.71 img/s at batch 8.
"""

from __future__ import annotations

import argparse
import itertools

import keras
import numpy as np

from benchmarks._common import device_name, timed, write
from benchmarks.train_throughput import SIZES
from unet.model import build_unet


def measure(size: str, precision: str, batch: int, iters: int) -> dict:
    keras.mixed_precision.set_global_policy(precision)
    try:
        model = build_unet(SIZES[size])
    finally:
        keras.mixed_precision.set_global_policy("float32")
    x = np.random.default_rng(0).random((batch, *model.input_shape[1:]), np.float32)
    times = np.array(timed(lambda: np.asarray(model.predict_on_batch(x)), warmup=2, iters=iters))
    return {
        "model": size,
        "precision": precision,
        "batch": batch,
        "img_s": batch / float(np.median(times)),
        "p50_ms": 1e3 * float(np.percentile(times, 50)),
        "p90_ms": 1e3 * float(np.percentile(times, 90)),
        "p99_ms": 1e3 * float(np.percentile(times, 99)),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    p.add_argument("--precisions", nargs="+", default=["float32", "mixed_bfloat16"])
    p.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--name", default=None)
    args = p.parse_args()
    rows = []
    for size, precision, batch in itertools.product(args.sizes, args.precisions, args.batches):
        rows.append(measure(size, precision, batch, args.iters if size != "paper" else max(3, args.iters // 3)))
        print(f"{size} {precision} batch={batch}: {rows[-1]['img_s']:.2f} img/s", flush=True)
    dev = device_name()
    meta = {
        "device": dev,
        "backend": keras.backend.backend(),
        "keras": keras.__version__,
        "reference": "NVIDIA UNet Medical TF1, A100 FP16, batch 8: 440.71 img/s",
    }
    write(
        args.name or "inference_throughput_" + dev.split(":")[0],
        rows,
        ["model", "precision", "batch", "img_s", "p50_ms", "p90_ms", "p99_ms"],
        meta,
    )


if __name__ == "__main__":
    main()
