"""Named parameter presets, run as DVC experiments: ``dvc exp run -S key=value ...``, never edits of the
committed ``params.yaml`` (which stays the GPU recipe). ``dvc exp show`` then lists each run with its
params and metrics, and ``dvc exp diff`` / ``dvc metrics diff`` compare them fold by fold.

``python -m unet.presets run auto`` (what ``make run`` does) picks ``cpu`` when the Keras backend can use no
GPU (a CPU-only TensorFlow or JAX build included, which it warns about when ``nvidia-smi`` lists GPUs), says so,
and runs the pipeline as the experiment named after the preset; ``python -m unet.presets show cpu``
prints the ``-S`` arguments for a hand-written ``dvc exp run``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
import textwrap
from pathlib import Path
from typing import Any

from unet import config
from unet.io import roundtrip_yaml
from unet.ops import experiments, recovery
from unet.ops.runner import CommandError, run

log = logging.getLogger("unet.presets")  # its name also when run as __main__ (python -m unet.presets)

PRESETS: dict[str, dict[str, Any]] = {
    # Quick: a depth-4, 8-filter U-Net on 188 px tiles (100 px output), no drop-out (too small a net to
    # need it), Adam at a constant 2e-3 (at 600 steps, 1e-3 and cosine decay both left it under-trained);
    # `make run` trains, evaluates and registers all 5 folds in 5 min 50 s on 2 CPU cores, CV V_rand 0.944
    # (benchmarks/results/cpu_accuracy.md, cpu_tuning.md).
    "cpu": {
        "train.model.base_filters": 8,
        "train.model.depth": 4,
        "train.model.tile": 188,
        "train.model.dropout": 0.0,
        "train.batch_size": 4,
        "train.max_steps": 700,
        "train.learning_rate": 0.002,
        "train.schedule": "constant",
        "train.warmup_steps": 20,
        "train.steps_per_epoch": 50,
        "train.checkpoint_every": 350,
        "evaluate.batch_size": 16,
        "runtime.precision": "float32",
        "runtime.xla": False,
        "runtime.tf32": False,
        "runtime.gpus": 0,
    },
    # Longer and wider (16 filters, 2400 steps at a constant 2e-3) and evaluated with the 8-fold test-time
    # augmentation: train + evaluate 27 minutes on 2 CPU cores, CV V_rand 0.966.
    "cpu-long": {
        "train.model.base_filters": 16,
        "train.model.depth": 4,
        "train.model.tile": 188,
        "train.model.dropout": 0.0,
        "train.batch_size": 4,
        "train.max_steps": 2400,
        "train.learning_rate": 0.002,
        "train.schedule": "constant",
        "train.warmup_steps": 50,
        "train.steps_per_epoch": 100,
        "train.checkpoint_every": 500,
        "evaluate.batch_size": 16,
        "evaluate.tta": True,
        "runtime.precision": "float32",
        "runtime.xla": False,
        "runtime.tf32": False,
        "runtime.gpus": 0,
    },
    "gpu": {},  # params.yaml's defaults are the GPU recipe
}


EPILOG = """presets:
  cpu       8 filters, depth 4, 700 steps on 188 px tiles: all 5 folds in about 6 minutes on 2 CPU cores
  cpu-long  16 filters, 2400 steps, 8-fold test-time augmentation: about 28 minutes on 2 CPU cores
  gpu       params.yaml as committed: the paper's U-Net and recipe (64 filters, 6400 steps, bf16, XLA)
  auto      gpu where the Keras backend can use a GPU, else cpu (what `make run` runs)

more params: -S KEY=VALUE after the preset, as for dvc exp run, e.g.
  python -m unet.presets run cpu --name cpu-2x -S train.max_steps=1400 -S 'split.folds=[0,1,2]'
"""


def gpu_count() -> int:
    """GPUs the Keras backend can use, asked of the backend itself. Warns in one line when ``nvidia-smi``
    lists GPUs that the backend cannot use (a CPU-only build, a CUDA/driver mismatch), or when the backend
    cannot be asked (then 0)."""
    if not gpu_devices():  # no GPU driver's device here: nothing for the backend to find (its start costs ~10 s)
        return 0
    try:
        name, count = backend_gpus()
    except RuntimeError as exc:
        log.warning("could not ask the Keras backend for its GPUs (%s): assuming none", exc)
        return 0
    listed = driver_gpus()
    if listed and not count:
        log.warning(
            "nvidia-smi lists %d GPU(s) but the %s backend can use none (a CPU-only %s build, or a CUDA/driver "
            "mismatch?)",
            listed,
            name,
            name,
        )
    return count


def backend_gpus() -> tuple[str, int]:
    """(Keras backend, GPUs it can use), from a process of its own: TensorFlow or JAX start there, not here,
    and the GPU memory JAX reserves on start is given back when it exits."""
    probe = "from unet.distributed import backend, usable_gpus; print(backend(), usable_gpus())"
    quiet = {"TF_CPP_MIN_LOG_LEVEL": "3"}  # TensorFlow's start-up chatter
    r = run([sys.executable, "-c", probe], check=False, env=quiet, timeout=300, label="")  # "no answer in 300 s"
    words = r.stdout.split()
    if r.returncode or len(words) < 2 or not words[-1].isdigit():
        raise CommandError((r.stderr.strip().splitlines() or [f"exit code {r.returncode}"])[-1])
    return words[-2], int(words[-1])


def gpu_devices() -> bool:
    """Whether this host has the device nodes of a GPU driver (NVIDIA's, also inside a container that was
    given GPUs, ROCm's, WSL2's) or ``nvidia-smi``: without them neither TensorFlow nor JAX can use a GPU."""
    import glob

    nodes = glob.glob("/dev/nvidia[0-9]*") + [
        p for p in ("/dev/kfd", "/dev/dxg", "/proc/driver/nvidia") if os.path.exists(p)
    ]
    return bool(nodes or shutil.which("nvidia-smi"))  # /dev/dxg: CUDA under WSL2


def driver_gpus() -> int:
    """NVIDIA GPUs that the driver lists through ``nvidia-smi`` (0 when it is missing or fails)."""
    if not shutil.which("nvidia-smi"):
        return 0
    try:
        out = run(["nvidia-smi", "-L"], timeout=30).stdout
    except (CommandError, OSError):
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


def check(overrides: dict[str, Any], params: str | Path = "params.yaml") -> None:
    """Raise ``ValueError`` (naming the key) unless ``params`` with ``overrides`` is a valid config."""
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "params.yaml"
        shutil.copy(params, copy)
        apply(copy, overrides)


def set_args(overrides: dict[str, Any]) -> list[str]:
    """``-S key=value`` arguments for ``dvc exp run``; values in JSON, which DVC reads as YAML."""
    return [arg for k, v in overrides.items() for arg in ("-S", f"{k}={json.dumps(v)}")]


def resolve(name: str) -> str:
    if name == "auto":
        gpus = gpu_count()
        name = "gpu" if gpus else "cpu"
        log.info("%d GPU(s) found: using the '%s' preset", gpus, name)
    return name


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


class _Stderr(logging.Handler):
    """The library's messages as this command says them: ``presets: ...``, ``presets: warning: ...``."""

    def emit(self, record: logging.LogRecord) -> None:
        level = f"{record.levelname.lower()}: " if record.levelno >= logging.WARNING else ""
        print(f"presets: {level}{record.getMessage()}", file=sys.stderr, flush=True)


def say_on_stderr() -> logging.Handler:
    """Show the messages of the ``unet`` loggers from INFO on stderr as ``presets: ...`` (what :func:`main`
    does first); returns the handler."""
    handler = _Stderr(logging.INFO)
    logging.getLogger("unet").addHandler(handler)
    logging.getLogger("unet").setLevel(logging.INFO)
    return handler


def main(argv: list[str] | None = None) -> None:
    from unet.stages._cli import plain

    say_on_stderr()
    p = argparse.ArgumentParser(
        prog="python -m unet.presets",
        description=textwrap.fill(plain(__doc__), 110),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "action", choices=["run", "show"], help="run: the preset as a DVC experiment; show: its -S arguments"
    )
    p.add_argument("preset", choices=[*PRESETS, "auto"], help="a preset (listed below); auto: gpu or cpu, as found")
    p.add_argument("--name", help="experiment name (default: the preset's)")
    p.add_argument("--params", default="params.yaml", help="the params file presets apply to (default: %(default)s)")
    args, extra = p.parse_known_args(argv)
    bad = unknown_options(extra) if args.action == "run" else extra
    if bad:
        print(
            f"presets: error: unknown argument {bad[0]!r}: only -S KEY=VALUE follows the preset (see --help)",
            file=sys.stderr,
        )
        sys.exit(2)
    if args.action == "show":
        name = resolve(args.preset)
        check(PRESETS[name], args.params)
        print(" ".join(set_args(PRESETS[name])))
        return
    try:  # the lock first: a second run is refused at once, before the GPU probe
        with recovery.exclusive(".", f"python -m unet.presets run {args.preset}", args.name or args.preset) as held:
            if held.recovered:
                print(f"presets: {held.recovered}; resuming", file=sys.stderr)
            name = resolve(args.preset)
            check(PRESETS[name], args.params)  # a preset the config rejects fails here, before DVC runs anything
            sets = [*set_args(PRESETS[name]), *extra]
            code = experiments.run_experiment(args.name or name, sets, ".", held.fd, name, _say)
    except (recovery.RunError, CommandError) as exc:
        print(f"presets: error: {exc}", file=sys.stderr)
        sys.exit(1)
    sys.exit(code)


def unknown_options(extra: list[str]) -> list[str]:
    """What in ``extra`` is not ``-S KEY=VALUE`` / ``--set-param KEY=VALUE`` (the only options passed on)."""
    rest, i = [], 0
    while i < len(extra):
        if extra[i] in ("-S", "--set-param") and i + 1 < len(extra) and "=" in extra[i + 1]:
            i += 2
            continue
        if extra[i].startswith("--set-param=") and "=" in extra[i][12:]:
            i += 1
            continue
        rest.append(extra[i])
        i += 1
    return rest


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


if __name__ == "__main__":
    main()
