"""``unet predict`` engines on the CPU: Keras (TensorFlow) against ONNX Runtime at several thread counts and
graph optimisation levels, all in one run, on the same synthetic 2048x2048 uint8 slices and the same model
(the ``cpu`` preset's shape, 8 filters, depth 4, 188 -> 100 px tiles, seeded random weights; speed and memory
do not depend on the weights). Each engine runs in its own process (Keras's warm-up and ONNX Runtime's thread
pool stay apart), which reports a progress line per slice; start-up is the wall time from the process start to
its first finished slice (imports, model load, graph build, first slice), slices/s is the steady rate after it,
peak RSS the child's own high-water mark after its ``exec`` (``VmHWM``: ``wait4``'s ``ru_maxrss`` would count
the forked parent, which holds TensorFlow, before the ``exec``). The optimisation levels are compared at the
fastest thread count.
Usage: ``python -m benchmarks.predict_engines [--slices 4] [--side 2048] [--threads 0 1 2] [--name NAME]``.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.predict_scale import MODEL, ROOT, make_stack

# the child: unet.predict.predict_file with a progress line per slice; the Keras engine starts its backend
# as `unet predict` does, ONNX Runtime imports none
CHILD = """
import logging, sys
engine, threads, optimization, stack, model, out = sys.argv[1:]
if engine == "keras":
    from unet.stages._cli import start_backend
    start_backend()
from unet.predict import predict_file
logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
predict_file(stack, out, [model], engine=engine, threads=int(threads), optimization=optimization, log_every=0)
hwm = next(line for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print("peak_rss_kib", hwm.split()[1], file=sys.stderr)
"""
SLICE = re.compile(r"^(\d+)/(\d+) slices")


def run_engine(engine: str, threads: int, optimization: str, stack: Path, model: Path, out: Path) -> dict[str, Any]:
    """Start-up to the first slice, steady slices/s and peak RSS of one engine in a child process."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"}
    cmd = [sys.executable, "-c", CHILD, engine, str(threads), optimization, str(stack), str(model), str(out)]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    done: list[float] = []
    tail: list[str] = []
    rss_kib = 0
    assert proc.stderr is not None
    for line in proc.stderr:
        tail = [*tail[-5:], line.strip()]
        if SLICE.match(line):
            done.append(time.perf_counter() - t0)
        elif line.startswith("peak_rss_kib "):
            rss_kib = int(line.split()[1])
    if proc.wait() or not done or not rss_kib:
        raise RuntimeError(f"{engine} child failed: {tail}")
    steady = (len(done) - 1) / (done[-1] - done[0]) if len(done) > 1 else float("nan")
    return {
        "engine": "keras (tensorflow)" if engine == "keras" else "onnxruntime",
        "threads": threads if engine == "onnx" else "tf default",
        "optimization": optimization if engine == "onnx" else "-",
        "startup_to_first_slice_s": done[0],
        "slices_s": steady,
        "peak_rss_mib": rss_kib / 1024,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--slices", type=int, default=4)
    p.add_argument("--side", type=int, default=2048)
    p.add_argument("--threads", nargs="+", type=int, default=[0, 1, 2], help="ONNX Runtime intra-op threads")
    p.add_argument("--optimizations", nargs="+", default=["all", "extended", "basic"])
    p.add_argument("--name", default="predict_engines_cpu")
    args = p.parse_args()
    import keras

    from benchmarks._common import device_name, write
    from unet.export import export_onnx
    from unet.intensity import UINT8, with_intensity
    from unet.model import build_unet

    rows = []
    with tempfile.TemporaryDirectory(prefix="predict_engines.") as tmp:
        work = Path(tmp)
        keras.utils.set_random_seed(0)
        model = with_intensity(build_unet(MODEL), UINT8)
        model.save(work / "model.keras")
        export_onnx(model, work / "model.onnx")
        make_stack(work / "in.tif", args.slices, args.side)
        runs = [("keras", 0, "all")] + [("onnx", t, "all") for t in args.threads]
        for engine, threads, opt in runs:
            rows.append(run_engine(engine, threads, opt, work / "in.tif", work / f"model.{engine}", work / "out.tif"))
            print(rows[-1], flush=True)
        best = max(rows[1:], key=lambda r: r["slices_s"])["threads"]
        for opt in (o for o in args.optimizations if o != "all"):
            rows.append(run_engine("onnx", best, opt, work / "in.tif", work / "model.onnx", work / "out.tif"))
            print(rows[-1], flush=True)
    keras_rate = rows[0]["slices_s"]
    for r in rows:
        r["vs_keras"] = r["slices_s"] / keras_rate
    meta = {
        "device": device_name(),
        "cpus": os.cpu_count(),
        "keras": keras.__version__,
        "onnxruntime": __import__("onnxruntime").__version__,
        "model": "cpu preset shape (8 filters, depth 4, 188 -> 100 px tiles), seeded random weights",
        "input": f"{args.slices} synthetic uint8 noise slices of {args.side}x{args.side} px, batch 8, no TTA",
        "timing": "startup: process start to first slice written; slices_s: steady rate after the first slice",
    }
    columns = ["engine", "threads", "optimization", "startup_to_first_slice_s", "slices_s", "vs_keras", "peak_rss_mib"]
    write(args.name, rows, columns, meta)


if __name__ == "__main__":
    main()
