"""One GPU, one call: training and inference throughput of the paper U-Net (572 -> 388 tiles, mixed_bfloat16)
through our real train step and overlap-tile predict path, against the PyTorch peer anchor (channels_last,
torch.compile) run in the same call; writes ``gpu.json`` and ``gpu.md`` (with our/peer ratios) to ``--out``
(default ``$OUT``, else benchmarks/results/). ``--accuracy`` then trains and evaluates fold 0.

The GPU machine has JAX and PyTorch but neither TensorFlow nor a package index, and only the repository
travels: Keras, the two dependencies of it the machine lacks and ruamel.yaml (``unet.config``) go as wheels in
``.whl/``, the peer script (with ``unet_flops.py`` beside it) in ``.peer/``, the ISBI stacks for ``--accuracy``
in ``.isbi/``, all three ignored by git. Here, once::

    printf '/.whl/\\n/.peer/\\n/.isbi/\\n' >> .git/info/exclude
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \\
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \\
        -d .whl keras==3.15.1 namex==0.1.0 optree==0.20.0 ruamel.yaml==0.19.1        # 3 MB
    mkdir -p .peer .isbi && cp ../shared/peer/anchor_torch.py ../shared/peer/unet_flops.py .peer/
    cp ../shared/data/isbi2012/train-*.tif .isbi/        # only for --accuracy

The device call (carry ``.whl``, ``.peer`` and, for ``--accuracy``, ``.isbi``)::

    python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && \\
    export PYTHONPATH=/tmp/site:. KERAS_BACKEND=jax PYTHONUNBUFFERED=1 && \\
    python3 -m benchmarks.gpu --peer .peer/anchor_torch.py [--accuracy --data .isbi --accuracy-steps 2000]

``python -m benchmarks.gpu --dry-run`` runs the same code at tiny sizes on the CPU (tests/test_benchmarks.py).
"""

from __future__ import annotations

import argparse
import ast
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

RESULTS = Path(__file__).parent / "results"
PAPER = {"tile": 572, "depth": 5, "base": 64, "slice": 512, "slices": 8, "warmup": 5, "iters": 30}
DRY = {"tile": 92, "depth": 3, "base": 4, "slice": 96, "slices": 2, "warmup": 1, "iters": 2}
# the peer runs comparable with ours: (mode, batch, train); the peer's own __main__ runs fp32 ones too
PEER_RUNS = [("bf16-cl", 8, True), ("bf16-cl", 16, True), ("bf16-cl-compile", 8, True), ("bf16-cl", 8, False)]
PEER_ARGS = ["mode", "batch", "steps", "warm", "train"]


def check_peer(path: Path) -> None:
    """Raise ``ValueError`` unless ``path`` is the peer anchor this script drives: ``bench(mode, batch, steps,
    warm, train)``, with ``unet_flops.py`` beside it. Read, not imported (it needs PyTorch)."""
    if not path.is_file():
        raise ValueError(f"{path}: no peer script there (copy ../shared/peer/ into the carried folder)")
    funcs = {n.name: n for n in ast.parse(path.read_text()).body if isinstance(n, ast.FunctionDef)}
    if "bench" not in funcs or [a.arg for a in funcs["bench"].args.args] != PEER_ARGS:
        raise ValueError(f"{path}: no bench({', '.join(PEER_ARGS)}) function: not the peer anchor script")
    if not (path.parent / "unet_flops.py").is_file():
        raise ValueError(f"{path.parent / 'unet_flops.py'}: missing (the peer script imports it)")


def peer_worker(path: Path, dry: bool, dest: Path) -> None:
    """In a process of its own: the peer's ``bench`` for each of PEER_RUNS, as its own __main__ sets torch up."""
    sys.path.insert(0, str(path.parent))
    import importlib.util

    spec = importlib.util.spec_from_file_location("anchor_torch", path)
    assert spec is not None and spec.loader is not None
    peer = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(peer)
    if hasattr(peer, "torch"):
        torch = peer.torch
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    rows = []
    for mode, batch, train in PEER_RUNS:
        try:
            r = peer.bench(mode, batch, steps=2 if dry else 30, warm=1 if dry else 8, train=train)
            rows.append({k: r[k] for k in ("mode", "batch", "train", "img_s", "ms_step", "warm_s") if k in r})
        except Exception as exc:  # one failing mode (torch.compile, memory) leaves the others
            rows.append({"mode": mode, "batch": batch, "train": train, "error": repr(exc)[:300]})
        print("peer", json.dumps(rows[-1]), flush=True)
    dest.write_text(json.dumps(rows))


def run_peer(path: Path, dry: bool) -> dict[str, Any]:
    """The peer in a subprocess, before JAX starts here: its GPU memory is freed before ours is taken."""
    with tempfile.TemporaryDirectory() as tmp:
        dest = Path(tmp) / "peer.json"
        cmd = [sys.executable, "-m", "benchmarks.gpu", "--peer-worker", str(path), "--peer-json", str(dest)]
        r = subprocess.run([*cmd, *(["--dry-run"] if dry else [])], capture_output=True, text=True)
        print(r.stdout, end="", flush=True)
        if r.returncode or not dest.is_file():
            return {"status": f"failed: {(r.stderr.strip().splitlines() or ['no output'])[-1]}", "runs": []}
        return {"status": "ran", "runs": json.loads(dest.read_text())}


def _config(sz: dict[str, int], batch: int, precision: str) -> Any:
    from unet.config import Config, ModelConfig, RuntimeConfig, TrainConfig

    model = ModelConfig(base_filters=sz["base"], depth=sz["depth"], tile=sz["tile"])
    runtime = RuntimeConfig(precision=precision, xla=True, tf32=True, gpus=1)  # type: ignore[arg-type]
    return Config(train=TrainConfig(model=model, batch_size=batch), runtime=runtime)


def measure_train(sz: dict[str, int], batch: int, precision: str) -> list[dict[str, Any]]:
    """img/s of ``fit`` on our Trainer (on-device augmentation, CE + Dice, Adam) after a warm-up fit that
    compiles the step; and of the same step on one fixed batch, which leaves out the host's input work."""
    import keras

    from unet import distributed
    from unet.geometry import output_size
    from unet.samples import SliceData, batches
    from unet.training import make_trainer

    cfg = _config(sz, batch, precision)
    dist = distributed.configure(cfg.runtime, seed=0)
    rng = np.random.default_rng(0)
    shape = (sz["slices"], sz["slice"], sz["slice"])
    data = SliceData(rng.integers(0, 256, shape, dtype=np.uint8), rng.integers(0, 2, shape, dtype=np.uint8))
    trainer = make_trainer(cfg, data, dist)  # the slices go to the device here, once
    gen = batches(data, cfg.train, 0, sz["tile"], output_size(sz["tile"], sz["depth"]) or 0)
    t0 = time.perf_counter()
    trainer.fit(
        gen, epochs=1, steps_per_epoch=sz["warmup"], shuffle=False, verbose=0
    )  # the epoch's end waits for the device
    warm = time.perf_counter() - t0
    t0 = time.perf_counter()
    trainer.fit(gen, epochs=1, steps_per_epoch=sz["iters"], shuffle=False, verbose=0)
    fit_s = (time.perf_counter() - t0) / sz["iters"]
    fixed = next(gen)[0]
    trainer.train_on_batch(fixed)
    t0 = time.perf_counter()
    for _ in range(sz["iters"]):
        logs = trainer.train_on_batch(fixed, return_dict=True)
    float(logs["loss"])
    step_s = (time.perf_counter() - t0) / sz["iters"]
    keras.mixed_precision.set_global_policy("float32")
    common = {"precision": precision, "batch": batch, "warmup_s": warm}
    return [
        {"what": "train", "path": "fit (real input path)", **common, "ms_step": 1e3 * fit_s, "img_s": batch / fit_s},
        {
            "what": "train",
            "path": "train step, fixed batch",
            **common,
            "ms_step": 1e3 * step_s,
            "img_s": batch / step_s,
        },
    ]


def _wait(trainer: Any) -> None:
    """Block until the last step is done: its update of the final bias has to be read back."""
    import keras

    keras.ops.convert_to_numpy(trainer.unet.weights[-1])


def measure_inference(sz: dict[str, int], batch: int, precision: str) -> list[dict[str, Any]]:
    """Tiles/s of the compiled predict on full batches, and slices/s of overlap-tile inference
    (``predict_slices``) on ``slice``-px slices at the same batch size."""
    import keras

    from unet.config import ModelConfig
    from unet.model import build_unet
    from unet.tiling import predict_slices

    keras.mixed_precision.set_global_policy(precision)
    try:
        model = build_unet(ModelConfig(base_filters=sz["base"], depth=sz["depth"], tile=sz["tile"]))
    finally:
        keras.mixed_precision.set_global_policy("float32")
    rng = np.random.default_rng(0)
    x = rng.random((batch, sz["tile"], sz["tile"], 1), np.float32)
    slices = rng.random((sz["slices"], sz["slice"], sz["slice"]), np.float32)
    per_slice = math.ceil(sz["slice"] / int(model.output_shape[1])) ** 2  # output tiles covering one slice
    predict = _seconds(lambda: np.asarray(model.predict_on_batch(x)), sz["iters"])
    overlap = _seconds(lambda: predict_slices(model, slices, batch), sz["iters"])
    common = {"what": "inference", "precision": precision, "batch": batch}
    return [
        {**common, "path": "predict, full batches", "ms_step": 1e3 * predict, "img_s": batch / predict},
        {
            **common,
            "path": f"overlap-tile, {sz['slice']} px slices ({per_slice} tiles each)",
            "img_s": len(slices) * per_slice / overlap,
            "slices_s": len(slices) / overlap,
        },
    ]


def _seconds(call: Any, iters: int) -> float:
    """Seconds per ``call`` (which must wait for the device) after one call that compiles."""
    call()
    t0 = time.perf_counter()
    for _ in range(iters):
        call()
    return (time.perf_counter() - t0) / iters


def accuracy(data_dir: Path, params: Path, steps: int | None, dry: bool) -> dict[str, Any]:
    """Fold 0 of ``params`` (the GPU recipe; ``steps`` overrides ``train.max_steps``): the train loop of
    ``unet.training.train`` without its checkpoints and DVCLive (not on the device), then the evaluate
    stage's metrics on the fold's validation slices."""
    from dataclasses import replace

    from unet import config, distributed
    from unet.evaluation import evaluate_fold
    from unet.folds import kfold
    from unet.geometry import output_size
    from unet.intensity import with_intensity
    from unet.io import read_stack, to_binary
    from unet.samples import batches, make_data
    from unet.training import make_trainer

    cfg = config.load(params)
    t = cfg.train
    steps = steps or t.max_steps
    spe = min(t.steps_per_epoch, steps)  # no checkpoints here: checkpoint_every only has to stay valid
    t = replace(t, max_steps=steps, steps_per_epoch=spe, checkpoint_every=spe)
    if dry:
        t = replace(t, model=replace(t.model, base_filters=DRY["base"], depth=DRY["depth"], tile=DRY["tile"]))
        t = replace(t, batch_size=2)
    cfg = replace(cfg, train=t)
    images = read_stack(data_dir / cfg.download.images[0])
    labels = to_binary(read_stack(data_dir / cfg.download.labels))
    fold = kfold(len(images), cfg.split.k, cfg.split.seed)["folds"][0]
    dist = distributed.configure(cfg.runtime, t.seed)
    data = make_data(images[fold["train"]], labels[fold["train"]], t.loss)
    trainer = make_trainer(cfg, data, dist)
    gen = batches(data, t, 0, t.model.tile, output_size(t.model.tile, t.model.depth) or 0)
    t0 = time.perf_counter()
    for epochs, spe in ((t.max_steps // t.steps_per_epoch, t.steps_per_epoch), (1, t.max_steps % t.steps_per_epoch)):
        if epochs and spe:
            trainer.fit(gen, epochs=epochs, steps_per_epoch=spe, shuffle=False, verbose=2)
    train_s = time.perf_counter() - t0
    model = with_intensity(trainer.unet, data.intensity)  # raw grey values in, as the saved fold model
    metrics, _, _ = evaluate_fold(model, images, labels, fold["val"], cfg.evaluate)
    return {
        "fold": 0,
        "steps": t.max_steps,
        "batch": t.batch_size,
        "precision": cfg.runtime.precision,
        "train_s": train_s,
        "img_s": t.max_steps * t.batch_size / train_s,
        **{m: metrics[m] for m in ("vrand", "vinfo", "pixel_error", "soft_dice")},
    }


def compare(ours: list[dict[str, Any]], peer: list[dict[str, Any]], flops: float | None) -> None:
    """Add TFLOP/s (3x the forward pass for a train step) and the peer's img/s and our/peer ratios to ``ours``."""
    runs = {(r["mode"], r["batch"], r["train"]): r.get("img_s") for r in peer}
    for row in ours:
        train = row["what"] == "train"
        if flops:
            row["tflop_s"] = row["img_s"] * flops * (3 if train else 1) / 1e12
        if row["path"].startswith(("fit", "predict")):
            for mode, key in (("bf16-cl", "peer"), ("bf16-cl-compile", "peer_compiled")):
                if runs.get((mode, row["batch"], train)):
                    row[f"{key}_img_s"] = runs[(mode, row["batch"], train)]
                    row[f"ours_over_{key}"] = row["img_s"] / row[f"{key}_img_s"]


COLUMNS = ["what", "path", "batch", "img_s", "tflop_s", "peer_img_s", "ours_over_peer", "peer_compiled_img_s"]
COLUMNS += ["ours_over_peer_compiled", "warmup_s"]


def write(out: Path, stem: str, result: dict[str, Any]) -> Path:
    """``<stem>.json`` and ``<stem>.md`` (the table of our runs against the peer's) under ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    fmt = lambda v: "" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = [f"# {stem}", "", json.dumps(result["meta"]), "", f"peer: {result['peer']['status']}", ""]
    lines += ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in COLUMNS) + " |" for r in result["ours"]]
    if "accuracy" in result:
        lines += ["", "Accuracy (fold 0): " + ", ".join(f"{k}={fmt(v)}" for k, v in result["accuracy"].items())]
    (out / f"{stem}.md").write_text("\n".join(lines) + "\n")
    (out / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    print("\n".join(lines), flush=True)
    return out / f"{stem}.json"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu", description=__doc__.split("\n\n")[0])
    p.add_argument("--peer", type=Path, help="the peer's anchor_torch.py (unet_flops.py beside it)")
    p.add_argument("--out", type=Path, help="output directory (default: $OUT, else benchmarks/results)")
    p.add_argument("--batches", type=int, nargs="+", default=[8, 16], help="training batch sizes")
    p.add_argument("--precision", default="mixed_bfloat16", choices=["float32", "mixed_float16", "mixed_bfloat16"])
    p.add_argument("--dry-run", action="store_true", help="tiny sizes on any device: checks the script end to end")
    p.add_argument("--accuracy", action="store_true", help="then train and evaluate fold 0")
    p.add_argument("--data", type=Path, default=os.environ.get("ISBI_DATA_DIR"), help="stacks for --accuracy")
    p.add_argument("--params", type=Path, default=Path("params.yaml"), help="recipe for --accuracy")
    p.add_argument("--accuracy-steps", type=int, help="train.max_steps for --accuracy (default: the params')")
    p.add_argument("--peer-worker", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--peer-json", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.peer_worker:
        peer_worker(args.peer_worker, args.dry_run, args.peer_json)
        return
    try:
        if args.peer:
            check_peer(args.peer)
        if args.accuracy and not (args.data and (args.data / "train-volume.tif").exists()):
            raise ValueError(f"--data: invalid value {args.data}: --accuracy needs a folder with the ISBI stacks")
    except ValueError as exc:
        p.error(str(exc))
    sz = DRY if args.dry_run else PAPER
    peer: dict[str, Any] = {"status": "skipped: no --peer", "runs": []}
    if args.peer:
        peer = run_peer(args.peer, args.dry_run)

    import keras  # after the peer: JAX takes its GPU memory on first use

    from benchmarks._common import device_name

    ours = [r for b in args.batches for r in measure_train(sz, b, args.precision)]
    ours += measure_inference(sz, 8, args.precision)
    flops = None
    if args.peer:
        sys.path.insert(0, str(args.peer.parent))
        from unet_flops import forward_flops  # type: ignore[import-not-found]

        flops = float(forward_flops(size=sz["tile"], base=sz["base"], depth=sz["depth"])[0])
    compare(ours, peer["runs"], flops)
    meta = {"device": device_name(), "backend": keras.backend.backend(), "keras": keras.__version__, "sizes": sz}
    result: dict[str, Any] = {"meta": meta | {"dry_run": args.dry_run}, "ours": ours, "peer": peer}
    out = args.out or Path(os.environ.get("OUT") or RESULTS)
    stem = "gpu_dry_run" if args.dry_run else "gpu"
    write(out, stem, result)
    if args.accuracy:  # after the throughput results are safe on disk
        result["accuracy"] = accuracy(args.data, args.params, args.accuracy_steps, args.dry_run)
        write(out, stem, result)


if __name__ == "__main__":
    main()
