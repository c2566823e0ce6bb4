"""The pipeline as a Prefect flow: ``dvc pull`` -> ``dvc repro`` per stage (one task per fold, output streamed
to the run log as it happens) -> ``dvc exp save`` -> ``dvc push`` -> ``unet release`` when asked, publishing
the fold metrics table and a summary as Prefect artifacts.

Flow parameters are a DVC experiment, as ``dvc exp run -S`` makes one: they are set in the workspace's
``params.yaml`` (never committed), the stages run, and ``dvc exp save`` records the result, so ``dvc exp
show`` lists the run and ``dvc.lock`` records what ran. With no ``PREFECT_API_URL``,
``python -m flows.pipeline`` runs on a local ephemeral server.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, Literal, get_args

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.futures import PrefectFuture, wait

from flows.commands import command, library_log
from flows.fold import train_on_workers
from unet import config
from unet.config import Precision
from unet.devices import fold_queues, granted
from unet.io import natural_key
from unet.metrics import METRICS
from unet.ops.dvcfiles import stage_option
from unet.ops.experiments import expect_base, experiment_env, from_baseline, remember_base
from unet.ops.recovery import exclusive
from unet.ops.runner import git
from unet.presets import apply, gpu_count, overrides

# a preset of unet.presets, or "auto": the gpu preset where a GPU is found, else cpu (tests/test_presets.py
# checks that this list is PRESETS')
Preset = Literal["cpu", "cpu-long", "gpu", "auto"]


@task(retries=3, retry_delay_seconds=[5, 15, 45])
def dvc_pull(repo: str) -> None:
    command(["dvc", "pull", "--allow-missing"], repo)


@task
def set_params(repo: str, values: dict[str, Any]) -> None:
    """The experiment's params in the workspace's params.yaml, as ``dvc exp run -S`` sets them, on top of
    the committed ones (not an earlier experiment's)."""
    from_baseline(repo)
    if values:
        base = (Path(repo) / "params.yaml").read_text()
        expect_base(repo, base)
        apply(Path(repo) / "params.yaml", values)
        remember_base(repo, base)
        get_run_logger().info("params.yaml (workspace): %s", ", ".join(f"{k}={v}" for k, v in values.items()))


def _repro(repo: str, stage: str, gpu: str | None = None, env: dict[str, str] | None = None) -> None:
    env = dict(env or {})
    if gpu is not None:  # one of the GPUs the worker granted, alone
        env["CUDA_VISIBLE_DEVICES"] = gpu
        get_run_logger().info("%s on GPU %s (CUDA_VISIBLE_DEVICES=%s)", stage, gpu, gpu)
    try:
        # fold-parallel runs share one repository: wait for DVC's lock instead of failing after 3 s
        command(["dvc", "--wait-for-lock", "repro", "--single-item", stage], repo, env=env)
    except RuntimeError as exc:
        if str(exc).startswith("validate: error:"):
            create_markdown_artifact(
                key="validation-report",
                markdown=f"# Data validation failed\n\n{exc}\n",
                description="Why the data was rejected",
            )
        raise


# the network stage retries; the others fail fast
download = task(retries=3, retry_delay_seconds=[10, 30, 90], task_run_name="download", name="download")(_repro)
repro = task(task_run_name="{stage}", name="repro")(_repro)


def stage_order(repo: str) -> list[str]:
    """The names of ``dvc.yaml``'s stages in an order ``dvc repro`` may run them: DVC's own graph of the
    pipeline, sorted topologically (dependencies first; fold ``k`` before fold ``k+1``)."""
    import networkx as nx
    from dvc.repo import Repo

    with Repo(repo) as dvc:
        graph = dvc.index.graph.reverse()  # DVC's edges point from a stage to the stages it depends on
        names: dict[Any, str] = {s: getattr(s, "name", None) or "" for s in graph}  # "": a .dvc file
        key = lambda s: natural_key(names[s])  # noqa: E731
        return [names[s] for s in nx.lexicographical_topological_sort(graph, key=key) if names[s]]


def train(repo: str, cfg: config.Config, experiment: str, folds_on: str) -> None:
    """Every fold's ``train@k``: here (:func:`train_folds`), or one flow run of deployment ``unet/fold`` per
    fold, each on a worker of its own."""
    if folds_on == "workers":
        train_on_workers(repo, cfg.split.folds, experiment)
    else:
        train_folds(repo, cfg)


def train_folds(repo: str, cfg: config.Config) -> None:
    """``train@k`` for every fold. In fold-parallel mode each of the GPUs this run was granted (inherited
    ``CUDA_VISIBLE_DEVICES``, else ``runtime.gpus``) trains its queue of folds one at a time, all GPUs at
    once; otherwise (data-parallel, or no GPU) the folds run one after another."""
    devices = granted(os.environ, cfg.runtime.gpus) if cfg.runtime.parallel == "fold" else []
    if not devices:
        for k in cfg.split.folds:
            repro(repo, f"train@{k}")
        return
    futures: dict[int, PrefectFuture[None]] = {}
    for gpu, folds in fold_queues(cfg.split.folds, devices).items():
        for j, k in enumerate(folds):  # after the previous fold on this GPU
            after = [futures[folds[j - 1]]] if j else []
            futures[k] = repro.submit(repo, f"train@{k}", gpu=gpu, wait_for=after, return_state=False)
    wait(list(futures.values()))
    for k in sorted(futures):  # in fold order, a failed fold raises before the folds queued behind it
        futures[k].result()


def git_tracked_outputs(repo: str) -> list[str]:
    """The pipeline's ``cache: false`` outputs and the ``.gitignore`` files DVC wrote: what git must hold."""
    from dvc.repo import Repo

    with Repo(repo) as dvc:
        outs = sorted({str(o.def_path) for o in dvc.index.outs if not o.use_cache})
    untracked = git(repo, "ls-files", "--others", "--exclude-standard", check=False).split()
    return [p for p in outs if (Path(repo) / p).exists()] + [p for p in untracked if p.endswith(".gitignore")]


def run_env(repo: str, experiment: str, preset: str | None) -> dict[str, str]:
    """What the register stage names in the card, as ``dvc exp run`` and ``unet.presets`` tell it."""
    head = git(repo, "rev-parse", "HEAD")
    return {"DVC_EXP_NAME": experiment, "DVC_EXP_BASELINE_REV": head, "UNET_PRESET": preset or ""}


@task
def save_experiment(repo: str, name: str) -> None:
    """Record the workspace as DVC experiment ``name`` (replacing one of that name on this commit).

    ``dvc exp save`` commits only what git already tracks plus ``dvc.lock``: the metrics, plots, reports and
    card that stages wrote are included explicitly, as ``dvc exp run`` would."""
    include = [arg for p in git_tracked_outputs(repo) for arg in ("-I", p)]
    command(["dvc", "exp", "save", "-n", name, "-f", *include], repo, env=experiment_env(repo))


@task(retries=3, retry_delay_seconds=[5, 15, 45])
def dvc_push(repo: str) -> None:
    command(["dvc", "push"], repo)


@task
def release_model(repo: str, experiment: str) -> dict[str, Any]:
    """``unet release``: branch ``release/<experiment>``, push its data, GTO version and stage."""
    return json.loads(command([sys.executable, "-m", "unet.cli", "release", experiment], repo).splitlines()[-1])


@task
def publish_artifacts(repo: str) -> dict[str, Any]:
    """The metrics, read through DVC as ``dvc metrics show`` shows them (a row per fold, the mean and std over
    folds), as a table artifact, and a Markdown summary of the model: its data, the run that trained it and its
    cross-validated scores. Returns the summary."""
    import dvc.api

    rows: dict[str, dict[str, Any]] = {}
    for key, value in dvc.api.metrics_show(repo=repo).items():
        path, _, metric = key.rpartition(":")
        rows.setdefault(Path(path).stem, {"row": Path(path).stem})[metric] = round(value, 4)
    create_table_artifact(
        key="fold-metrics",
        table=list(rows.values()),
        description="Validation metrics per fold and over folds (V_rand, V_info, pixel error: ISBI 2012 protocol)",
    )
    card = json.loads((Path(repo) / stage_option(repo, "register", "--card")).read_text())
    run = card["trained"]
    summary = {**run, "dataset": card["dataset"], "foreground": card["foreground"], **card["cross_validated"]}
    lines = [f"# {card['name']}: U-Net for the {card['foreground']} in {card['dataset']}", ""]
    lines += [f"Experiment `{run['experiment']}` (preset {run['preset'] or 'none'}, {run['steps']} steps) "]
    lines[-1] += f"on commit `{(run['commit'] or 'unknown')[:7]}`; {card['caveat']}"
    lines += ["", "| metric | mean | std |", "| --- | --- | --- |"]
    lines += [f"| {m} | {summary[m]['mean']:.4f} | {summary[m]['std']:.4f} |" for m in METRICS]
    lines += ["", "Overlays (image, label, probability, errors):", ""]
    overlays = Path(repo) / stage_option(repo, "evaluate", "--overlays")
    lines += [f"- `{p.relative_to(repo)}`" for p in sorted(overlays.glob("*.png"))]
    create_markdown_artifact(key="unet-summary", markdown="\n".join(lines), description="The model and its scores")
    return summary


@flow(name="unet", log_prints=True)
def pipeline(
    repo: str = ".",
    preset: Preset | None = None,
    steps: int | None = None,
    precision: Precision | None = None,
    xla: bool | None = None,
    gpus: int | None = None,
    experiment: str = "prefect",
    push: bool = True,
    release: bool = False,
    folds_on: Literal["local", "workers"] = "local",
) -> dict[str, Any]:
    """Pull, reproduce every stage (folds as separate tasks), save the experiment, push, release if asked.

    Alone in the repository: a run killed before recorded where the repository stood, and what it left is
    undone first (:mod:`unet.ops.recovery`); the stages it finished are not run again."""
    with library_log(), exclusive(repo, f"flow run '{experiment}'", experiment) as run:
        if run.recovered:
            get_run_logger().warning("%s; resuming", run.recovered)
        dvc_pull(repo)
        if preset == "auto":  # once, so that the card names the preset that ran
            preset = "gpu" if gpu_count() else "cpu"
        set_params(repo, overrides(preset, steps, precision, xla, gpus))
        cfg, env = config.load(Path(repo) / "params.yaml"), run_env(repo, experiment, preset)
        for stage in stage_order(repo):  # dvc.yaml's stages as DVC orders them; the train@k matrix as one step
            if stage.startswith("train@"):
                if stage == f"train@{cfg.split.folds[0]}":
                    train(repo, cfg, experiment, folds_on)
            else:
                (download if stage == "download" else repro)(repo, stage, env=env)
        save_experiment(repo, experiment)
        if push or release:
            dvc_push(repo)
        if release:
            release_model(repo, experiment)
        return publish_artifacts(repo)


def main() -> None:
    import argparse

    p = argparse.ArgumentParser(prog="python -m flows.pipeline", description=__doc__.split("\n\n")[0])
    p.add_argument("--repo", default=".")
    p.add_argument("--preset", choices=get_args(Preset))
    p.add_argument("--steps", type=int)
    p.add_argument("--precision", choices=get_args(Precision))
    p.add_argument("--xla", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--gpus", type=int)
    p.add_argument("--experiment", default="prefect", help="DVC experiment name for this run")
    p.add_argument("--no-push", dest="push", action="store_false")
    p.add_argument("--release", action="store_true", help="release the experiment (unet release)")
    p.add_argument("--folds-on", choices=["local", "workers"], default="local", help="workers: deployment unet/fold")
    summary = pipeline(**vars(p.parse_args()))
    print(json.dumps({m: summary[m] for m in METRICS}, indent=2))


if __name__ == "__main__":
    main()
