"""Shared helpers for the benchmarks: timing, device naming, and writing the table and the JSON."""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import keras

RESULTS = Path(__file__).parent / "results"


def device_name() -> str:
    """A short name of the accelerator (or the CPU) the backend runs on."""
    if keras.backend.backend() == "jax":
        import jax

        dev = jax.devices()[0]
        return f"{dev.platform}:{getattr(dev, 'device_kind', '')}".rstrip(":")
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
        if gpus:
            return f"gpu:{tf.config.experimental.get_device_details(gpus[0]).get('device_name', 'GPU')}"
    return f"cpu:{platform.processor() or platform.machine()}"


def timed(step: Callable[[], Any], warmup: int, iters: int) -> list[float]:
    """Seconds per call of ``step`` (which must block until its work is done), after ``warmup`` calls."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return times


def write(name: str, rows: list[dict[str, Any]], columns: list[str], meta: dict[str, Any]) -> Path:
    """Print a Markdown table and write ``<name>.json`` and ``<name>.md`` under results/."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    head = "| " + " | ".join(columns) + " |\n|" + "---|" * len(columns)
    body = "\n".join("| " + " | ".join(_fmt(r.get(c)) for c in columns) + " |" for r in rows)
    table = f"{head}\n{body}\n"
    print(table)
    out = RESULTS / f"{name}.json"
    out.write_text(json.dumps({"meta": meta, "results": rows}, indent=2) + "\n")
    (RESULTS / f"{name}.md").write_text(f"# {name}\n\n{json.dumps(meta)}\n\n{table}")
    return out


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)
