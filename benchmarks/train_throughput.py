"""Training throughput (img/s) of the real training step, on-device augmentation included, by model size,
precision, XLA and batch size. Usage: ``python -m benchmarks.train_throughput [--quick] [--name NAME]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools

import keras
import numpy as np

from benchmarks._common import device_name, timed, write
from unet import distributed
from unet.config import Config, ModelConfig, RuntimeConfig, TrainConfig
from unet.geometry import output_size
from unet.samples import SliceData, batches
from unet.training import make_trainer

SIZES = {
    "cpu-preset": ModelConfig(base_filters=8, depth=4, tile=188),
    "paper": ModelConfig(),
}


def measure(model: ModelConfig, precision: str, xla: bool, batch: int, iters: int) -> dict:
    runtime = RuntimeConfig(precision=precision, xla=xla, tf32=True, gpus=1)  # type: ignore[arg-type]
    cfg = Config(train=TrainConfig(model=model, batch_size=batch), runtime=runtime)
    dist = distributed.configure(runtime, seed=0)
    rng = np.random.default_rng(0)
    data = SliceData(
        rng.integers(0, 256, (8, 512, 512), dtype=np.uint8), rng.integers(0, 2, (8, 512, 512), dtype=np.uint8)
    )
    trainer = make_trainer(cfg, data, dist)
    gen = batches(data, cfg.train, 0, model.tile, output_size(model.tile, model.depth) or 0)

    def step() -> None:
        logs = trainer.train_on_batch(next(gen)[0], return_dict=True)
        float(logs["loss"])  # blocks until the step is done

    times = timed(step, warmup=2, iters=iters)
    keras.mixed_precision.set_global_policy("float32")
    sec = float(np.median(times))
    return {"model": "", "precision": precision, "xla": xla, "batch": batch, "ms_step": 1e3 * sec, "img_s": batch / sec}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    p.add_argument("--precisions", nargs="+", default=["float32", "mixed_bfloat16"])
    p.add_argument("--batches", nargs="+", type=int, default=[1, 4])
    p.add_argument("--xla", nargs="+", default=["off", "on"], choices=["off", "on"])
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--name", default=None, help="results file stem (default: train_throughput_<device>)")
    args = p.parse_args()
    rows = []
    for size, precision, xla, batch in itertools.product(args.sizes, args.precisions, args.xla, args.batches):
        iters = args.iters if size != "paper" else max(2, args.iters // 2)
        r = measure(SIZES[size], precision, xla == "on", batch, iters)
        r["model"] = size
        rows.append(r)
        print(f"{size} {precision} xla={xla} batch={batch}: {r['img_s']:.2f} img/s", flush=True)
    dev = device_name()
    meta = {
        "device": dev,
        "backend": keras.backend.backend(),
        "keras": keras.__version__,
        "sizes": {k: dataclasses.asdict(v) for k, v in SIZES.items() if k in args.sizes},
    }
    stem = args.name or "train_throughput_" + dev.split(":")[0]
    write(stem, rows, ["model", "precision", "xla", "batch", "ms_step", "img_s"], meta)


if __name__ == "__main__":
    main()
