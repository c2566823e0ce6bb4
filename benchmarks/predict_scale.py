"""``unet predict`` at scale: img/s and the peak RSS of the predict process for stacks of 10, 100 and 400
synthetic 2048x2048 uint8 slices, TIFF in and out and OME-Zarr (NGFF 0.5) in and out, with a model shaped like
the ``cpu`` preset's (8 filters, depth 4, 188 px input / 100 px output tiles) holding seeded random weights:
throughput and memory do not depend on the weights. Each size runs the real console command in its own process;
its peak RSS comes from ``wait4``. Streaming means the peak RSS stays flat as the stack grows.
Usage: ``python -m benchmarks.predict_scale [--sizes 10 100 400] [--side 2048] [--batch-size 8]
[--formats tiff zarr] [--name NAME]``.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tifffile

from benchmarks._common import device_name, write
from unet import omezarr
from unet.config import ModelConfig
from unet.geometry import output_size
from unet.intensity import UINT8, with_intensity
from unet.model import build_unet

ROOT = Path(__file__).resolve().parents[1]
MODEL = ModelConfig(base_filters=8, depth=4, tile=188, dropout=0.0)  # the cpu preset's network


def make_stack(path: Path, slices: int, side: int, seed: int = 0) -> None:
    """Write ``slices`` pages of uniform uint8 noise (a TIFF, or an OME-Zarr image for a ``.zarr`` path), one page
    in memory at a time."""
    rng = np.random.default_rng(seed)

    def pages() -> Iterator[np.ndarray]:
        for _ in range(slices):
            yield rng.integers(0, 256, (side, side), np.uint8)

    if path.suffix == ".zarr":
        layout = omezarr.plain_layout(slices, side, side)
        omezarr.write(path, pages(), layout, np.uint8, labels=False)
        return
    tifffile.imwrite(path, pages(), shape=(slices, side, side), dtype=np.uint8, photometric="minisblack")


def _size(path: Path) -> int:
    """Bytes of a file, or of every file under a directory (an OME-Zarr image)."""
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size


def run_predict(stack: Path, model: Path, out: Path, batch: int, log: Path) -> tuple[float, int, str]:
    """Wall seconds, peak RSS (KiB) and stderr of ``unet predict`` in a child process."""
    cmd = [sys.executable, "-m", "unet.cli", "predict", str(stack), str(out), "--models", str(model)]
    cmd += ["--batch-size", str(batch), "--log-every", "60"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    t0 = time.perf_counter()
    with open(log, "w") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, env=env)
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage, not the max over all children
        proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    text = log.read_text()
    if proc.returncode:
        raise RuntimeError(f"unet predict exited {proc.returncode}: {text.strip().splitlines()[-1:]}")
    return wall, int(usage.ru_maxrss), text


def measure(slices: int, side: int, batch: int, model: Path, work: Path, fmt: str = "tiff") -> dict[str, Any]:
    suffix = ".ome.zarr" if fmt == "zarr" else ".tif"
    stack, out = work / f"in{slices}{suffix}", work / f"out{slices}{suffix}"
    make_stack(stack, slices, side)
    try:
        wall, rss_kib, text = run_predict(stack, model, out, batch, work / f"predict{slices}.log")
        out_gib = _size(out) / 2**30
    finally:
        for p in (stack, out):
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
    done = re.search(r"in ([\d.]+) s \(([\d.e+-]+) img/s\)", text)
    if not done:
        raise RuntimeError(f"no summary line in the predict output: {text[-500:]}")
    tiles = math.ceil(side / (output_size(MODEL.tile, MODEL.depth) or 1)) ** 2  # tiles a slice
    predict_s = float(done.group(1))
    return {
        "format": fmt,
        "slices": slices,
        "side": side,
        "batch": batch,
        "wall_s": wall,
        "predict_s": predict_s,
        "img_s": slices / predict_s,
        "tiles_s": slices * tiles / predict_s,
        "peak_rss_mib": rss_kib / 1024,
        "output_gib": out_gib,
        "bigtiff": "BigTIFF" in text,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", nargs="+", type=int, default=[10, 100, 400], help="slices per stack")
    p.add_argument("--side", type=int, default=2048)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--formats", nargs="+", choices=("tiff", "zarr"), default=["tiff", "zarr"], help="in and out")
    p.add_argument("--name", default="predict_scale")
    args = p.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="predict_scale.") as tmp:
        work = Path(tmp)
        keras.utils.set_random_seed(0)
        with_intensity(build_unet(MODEL), UINT8).save(work / "model.keras")
        for fmt in args.formats:
            for n in args.sizes:
                rows.append(measure(n, args.side, args.batch_size, work / "model.keras", work, fmt))
                r = rows[-1]
                print(f"{fmt}, {n} slices: {r['img_s']:.3g} img/s, peak RSS {r['peak_rss_mib']:.0f} MiB", flush=True)
    meta = {
        "device": device_name(),
        "backend": keras.backend.backend(),
        "keras": keras.__version__,
        "cpus": os.cpu_count(),
        "model": "cpu preset shape (8 filters, depth 4, 188 -> 100 px tiles), seeded random weights",
        "input": f"synthetic uint8 noise, {args.side}x{args.side} px a slice; output float32 probabilities; "
        "format: TIFF in and out, or OME-Zarr (NGFF 0.5, one z-slice a chunk, zstd) in and out",
        "timing": "predict_s: from the models loaded to the output renamed; wall_s: the whole command",
    }
    columns = [
        "format",
        "slices",
        "side",
        "batch",
        "wall_s",
        "predict_s",
        "img_s",
        "tiles_s",
        "peak_rss_mib",
        "output_gib",
    ]
    write(args.name, rows, [*columns, "bigtiff"], meta)


if __name__ == "__main__":
    main()
