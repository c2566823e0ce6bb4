"""The pipeline as a Prefect flow: ``dvc pull`` -> ``dvc repro`` per stage (one task per fold) ->
``dvc push`` -> GTO registration, publishing the fold metrics table and a summary as Prefect artifacts.

Flow parameters override ``params.yaml`` in place before ``dvc repro`` (as ``dvc exp run --set-param``
does), so ``dvc.lock`` records what ran and ``dvc repro`` alone reproduces a Prefect run. With no
``PREFECT_API_URL``, ``python -m flows.pipeline`` runs on a local ephemeral server.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.futures import wait

from unet import config
from unet.metrics import METRICS
from unet.presets import apply, overrides


def _run(cmd: list[str], repo: str, env: dict[str, str] | None = None) -> str:
    """Run a command in ``repo``, log its output, and raise with its last error line on failure."""
    log = get_run_logger()
    log.info("$ %s", " ".join(cmd))
    r = subprocess.run(cmd, cwd=repo, capture_output=True, text=True, env={**os.environ, **(env or {})})
    for line in (r.stdout + r.stderr).splitlines():
        if line.strip() and not line.startswith(("E0000", "WARNING: All log messages")):
            log.info("%s", line)
    if r.returncode != 0:
        ours = [ln for ln in r.stderr.splitlines() if ": error: " in ln]  # a stage's one-line error
        theirs = [ln for ln in r.stderr.splitlines() if ln.startswith("ERROR")]
        raise RuntimeError((ours or theirs or [f"{cmd[0]} {cmd[1]} exited {r.returncode}"])[-1])
    return r.stdout


@task(retries=3, retry_delay_seconds=[5, 15, 45])
def dvc_pull(repo: str) -> None:
    _run(["dvc", "pull", "--allow-missing"], repo)


@task
def set_params(repo: str, values: dict[str, Any]) -> None:
    if values:
        apply(Path(repo) / "params.yaml", values)
        get_run_logger().info("params.yaml: %s", ", ".join(f"{k}={v}" for k, v in values.items()))


@task(task_run_name="{stage}")
def repro(repo: str, stage: str, gpu: int | None = None) -> None:
    try:
        _run(["dvc", "repro", stage], repo, env={"CUDA_VISIBLE_DEVICES": str(gpu)} if gpu is not None else None)
    except RuntimeError as exc:
        if str(exc).startswith("validate: error:"):
            create_markdown_artifact(
                key="validation-report",
                markdown=f"# Data validation failed\n\n{exc}\n",
                description="Why the data was rejected",
            )
        raise


@task(retries=3, retry_delay_seconds=[5, 15, 45])
def dvc_push(repo: str) -> None:
    _run(["dvc", "push"], repo)


@task
def register_version(repo: str) -> None:
    """Commit the pipeline record and tag it with GTO (the register stage's --publish step)."""
    _run([sys.executable, "-m", "unet.stages.register", "--publish"], repo)


@task
def publish(repo: str) -> dict[str, Any]:
    """Fold metrics as a table artifact, a Markdown summary with the overlay paths; returns the summary."""
    root = Path(repo)
    folds = [json.loads(p.read_text()) for p in sorted((root / "metrics").glob("fold*.json"))]
    summary = json.loads((root / "metrics" / "summary.json").read_text())
    create_table_artifact(
        key="fold-metrics",
        table=[{"fold": f["fold"], **{m: round(f[m], 4) for m in METRICS}} for f in folds],
        description="Validation metrics per fold",
    )
    lines = ["# U-Net on ISBI 2012", "", "| metric | mean | std |", "| --- | --- | --- |"]
    lines += [f"| {m} | {summary[m]['mean']:.4f} | {summary[m]['std']:.4f} |" for m in METRICS]
    lines += ["", "Overlays (image | label | prediction | errors):", ""]
    lines += [f"- `{p.relative_to(root)}`" for p in sorted((root / "plots" / "overlays").glob("*.png"))]
    create_markdown_artifact(key="unet-summary", markdown="\n".join(lines), description="Metrics over folds")
    return summary


@flow(name="unet", log_prints=True)
def pipeline(
    repo: str = ".",
    preset: str | None = None,
    steps: int | None = None,
    precision: str | None = None,
    xla: bool | None = None,
    gpus: int | None = None,
    push: bool = True,
) -> dict[str, Any]:
    """Pull, reproduce every stage (folds as separate tasks), push; return the metrics over folds."""
    gpus = gpus if gpus is not None else int(os.environ.get("UNET_GPUS", "0")) or None
    dvc_pull(repo)
    set_params(repo, overrides(preset, steps, precision, xla, gpus))
    repro(repo, "split")
    cfg = config.load(Path(repo) / "params.yaml")
    parallel = cfg.runtime.parallel == "fold" and cfg.runtime.gpus >= cfg.split.k
    if parallel:  # one fold per GPU, at once (DVC runs distinct matrix items concurrently)
        wait([repro.submit(repo, f"train@{k}", gpu=k) for k in range(cfg.split.k)])
    else:
        for k in range(cfg.split.k):
            repro(repo, f"train@{k}")
    repro(repo, "evaluate")
    repro(repo, "register")
    if push:
        dvc_push(repo)
    register_version(repo)
    return publish(repo)


def main() -> None:
    import argparse

    p = argparse.ArgumentParser(prog="python -m flows.pipeline", description=__doc__.split("\n\n")[0])
    p.add_argument("--repo", default=".")
    p.add_argument("--preset", choices=["cpu", "gpu", "auto"])
    p.add_argument("--steps", type=int)
    p.add_argument("--precision", choices=["float32", "mixed_float16", "mixed_bfloat16"])
    p.add_argument("--xla", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--gpus", type=int)
    p.add_argument("--no-push", dest="push", action="store_false")
    summary = pipeline(**vars(p.parse_args()))
    print(json.dumps({m: summary[m] for m in METRICS}, indent=2))


if __name__ == "__main__":
    main()
