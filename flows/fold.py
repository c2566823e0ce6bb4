"""Folds on several workers: deployment ``unet/fold`` trains one fold (``dvc repro train@k``) in the clone of
whichever worker of the ``gpu`` pool takes it; ``train_on_workers`` (the pipeline flow with
``folds_on="workers"``) starts one such flow run per fold, waits for all, and brings each fold's run back into
its own workspace, so that its ``dvc.lock`` and metrics are those of a run on one machine.

The machines share the Prefect server, the git remote and the DVC remote, nothing else. The parent's commit
(pushed to the git remote), its workspace ``params.yaml`` (the run's experiment params) and ``dvc.lock`` go to
the worker as flow parameters; the fold's inputs (``data/raw``, ``data/folds.json``) through the DVC remote.
The worker records its run as a DVC experiment and ``dvc exp push``es it: the ``dvc.lock`` entry and the
``cache: false`` outputs in its git commit, the model through the DVC remote (see ``unet.workers``).

A worker that dies (its machine lost, its process killed) stops the heartbeats of its fold run (the deployment
sets ``PREFECT_FLOWS_HEARTBEAT_FREQUENCY``); an automation the parent keeps on the server
(``lost_run_automation``) marks such a run Crashed, and the parent starts the fold again on the first free
worker, which resumes from the fold's last checkpoint when the workers share a checkpoint location
(``$UNET_CHECKPOINTS``).
"""

from __future__ import annotations

import fcntl
import os
import socket
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import yaml
from prefect import Task, flow, get_client, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.client.schemas.objects import FlowRun, StateType, TaskRun
from prefect.deployments import run_deployment
from prefect.events.actions import ChangeFlowRunState
from prefect.events.schemas.automations import AutomationCore, EventTrigger, Posture
from prefect.futures import wait
from prefect.runtime import flow_run
from prefect.runtime import task_run as this_task
from prefect.states import State

from flows.commands import command, library_log
from unet.ops.experiments import experiment_env
from unet.workers import adopt, changed, experiment_ref, fold_inputs, shareable_head, uncached_outs

DEPLOYMENT = "unet/fold"
REMOTE = "origin"  # the git remote every clone shares
LOST_AFTER_S = 90  # a fold run without a heartbeat this long has lost its worker ($UNET_LOST_AFTER_S)
DEFAULT_HEARTBEAT_S = 180  # Prefect's flows.heartbeat_frequency, where the deployment's environment sets none
RETRIES = 2  # times a fold whose worker was lost is started again
FINAL = ("Completed", "Failed", "Cancelled", "Crashed")


def workspace(path: str) -> str:
    """``host:directory`` of a repository: the parent's, or on a worker the clone that the deployment's pull
    step entered (``$UNET_CLONE``)."""
    return f"{socket.gethostname()}:{Path(path).resolve()}"


# --- on a worker: deployment unet/fold -------------------------------------------------------------------


@contextmanager
def exclusive(clone: str) -> Iterator[None]:
    """One fold at a time in a clone: a worker started without ``--limit 1`` queues its folds here."""
    lock = Path(clone) / ".dvc" / "tmp" / "fold.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


@task
def checkout(clone: str, rev: str, params: str, lock: str) -> None:
    """The parent's commit, with its workspace's ``params.yaml`` and ``dvc.lock`` on top."""
    command(["git", "fetch", "--quiet", REMOTE], clone)
    command(["git", "checkout", "--quiet", "--force", "--detach", rev], clone)
    (Path(clone) / "params.yaml").write_text(params)
    (Path(clone) / "dvc.lock").write_text(lock)


@task(retries=3, retry_delay_seconds=[5, 15, 45])
def pull_inputs(clone: str, stage: str) -> None:
    command(["dvc", "pull", "--force", *fold_inputs(clone, stage)], clone)


@task(task_run_name="{stage}")
def train(clone: str, stage: str) -> None:
    command(["dvc", "repro", "--single-item", stage], clone)


@task
def save_run(clone: str, stage: str, name: str) -> None:
    """The run as DVC experiment ``name``: ``dvc.lock`` and the stage's ``cache: false`` outputs in its commit."""
    include = [arg for p in uncached_outs(clone, stage) for arg in ("-I", p)]
    # only this stage: the parent's dvc.lock names outputs (reports, other folds) this clone never made
    command(["dvc", "exp", "save", "--force", "-n", name, *include, stage], clone, env=experiment_env(clone))


@task(retries=3, retry_delay_seconds=[5, 15, 45])
def push_run(clone: str, stage: str, name: str) -> None:
    """The stage's cached outputs (the model) to the DVC remote, the experiment's commit to the git remote
    (not its cache: the parent's dvc.lock may name outputs this clone never had)."""
    command(["dvc", "push", stage], clone)
    command(["dvc", "exp", "push", "--no-cache", REMOTE, name], clone)
    command(["dvc", "exp", "remove", name], clone)  # kept on the git remote until the parent has it


@task
def report(clone: str, stage: str, name: str) -> dict[str, Any]:
    """The stage's ``dvc.lock`` entry, published as an artifact with where it ran."""
    entry = yaml.safe_load((Path(clone) / "dvc.lock").read_text())["stages"][stage]
    where = workspace(clone)
    create_markdown_artifact(
        key=f"fold-{stage.split('@')[-1]}-run",
        markdown=f"# {stage} on {where}\n\nExperiment `{name}`:\n\n```yaml\n{yaml.safe_dump(entry)}```",
        description=f"{stage}: where it ran and its dvc.lock entry",
    )
    return {"stage": stage, "experiment": name, "workspace": where, "lock": entry}


@flow(name="unet", flow_run_name="{name}", log_prints=True)
def fold(fold: int, rev: str, params: str, lock: str, name: str, parent: str = "") -> dict[str, Any]:
    """Train fold ``fold`` of commit ``rev`` with the parent's ``params.yaml`` and ``dvc.lock``, in this
    worker's clone; share the run as DVC experiment ``name``; return where it ran and its lock entry."""
    clone, stage = str(Path.cwd()), f"train@{fold}"
    if workspace(clone) == parent:
        raise RuntimeError(f"{clone} is the parent run's workspace: give the worker a clone of its own")
    with library_log(), exclusive(clone):
        checkout(clone, rev, params, lock)
        pull_inputs(clone, stage)
        train(clone, stage)
        save_run(clone, stage, name)
        push_run(clone, stage, name)
        return report(clone, stage, name)


# --- in the parent: the pipeline flow with folds_on="workers" --------------------------------------------


@task(retries=3, retry_delay_seconds=[5, 15, 45])
def push_inputs(repo: str, stage: str) -> None:
    """The fold's inputs to the DVC remote, where the workers pull them."""
    command(["dvc", "push", *fold_inputs(repo, stage)], repo)


class WorkerLost(RuntimeError):
    """A fold's flow run crashed: its worker died or went silent. Worth starting again, elsewhere."""


def lost_run_automation(deployment_id: str, after_s: float) -> AutomationCore:
    """Prefect's zombie-run automation, for this deployment's runs: a run whose heartbeats stop for
    ``after_s`` seconds, with no final state either, is marked Crashed."""
    return AutomationCore(
        name=f"{DEPLOYMENT}: lost runs crash",
        description=f"Marks a {DEPLOYMENT} flow run Crashed when its worker has sent no heartbeat for {after_s:g} s",
        enabled=True,
        trigger=EventTrigger(
            after={"prefect.flow-run.heartbeat"},
            expect={"prefect.flow-run.heartbeat", *(f"prefect.flow-run.{s}" for s in FINAL)},
            match={"prefect.resource.id": "prefect.flow-run.*"},  # type: ignore[arg-type]
            match_related={"prefect.resource.id": f"prefect.deployment.{deployment_id}"},  # type: ignore[arg-type]
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=timedelta(seconds=after_s),
        ),
        actions=[
            ChangeFlowRunState(
                state=StateType.CRASHED, name=None, message=f"no heartbeat for {after_s:g} s: worker lost", force=False
            )
        ],
    )


@task
def watch_for_lost_runs() -> None:
    """Create (or bring up to date) the server's automation that marks fold runs of lost workers Crashed.

    The silence it allows is ``$UNET_LOST_AFTER_S`` but never under 1.5 heartbeat intervals of the
    deployment (Prefect's default interval, 180 s, where the deployment sets none): a healthy run is never
    taken for a lost one because its deployment was made before it set ``PREFECT_FLOWS_HEARTBEAT_FREQUENCY``."""
    log = get_run_logger()
    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name(DEPLOYMENT)
        env = (deployment.job_variables or {}).get("env") or {}
        beat = float(env.get("PREFECT_FLOWS_HEARTBEAT_FREQUENCY", DEFAULT_HEARTBEAT_S))
        after = float(os.environ.get("UNET_LOST_AFTER_S", LOST_AFTER_S))
        if after < 1.5 * beat:
            what = "UNET_LOST_AFTER_S=%g s is under 1.5 heartbeat intervals of %s (%g s): using %g s"
            log.warning(what, after, DEPLOYMENT, beat, 1.5 * beat)
            after = 1.5 * beat
        want = lost_run_automation(str(deployment.id), after)
        have = client.read_automations_by_name(want.name)
        if any(a.trigger == want.trigger and a.actions == want.actions and a.enabled for a in have):
            return
        for old in have:
            client.delete_automation(old.id)
        client.create_automation(want)
    log.info("automation '%s': %s", want.name, want.description)


def _lost(task: Task[..., Any], task_run: TaskRun, state: State[Any]) -> bool:
    """Retry ``train_remotely`` only when the worker was lost; a fold that failed would fail again."""
    try:
        state.result()
    except WorkerLost:
        return True
    except Exception:  # any other failure is final
        return False
    return False


@task(task_run_name="{stage} on a worker", retries=RETRIES, retry_condition_fn=_lost)
def train_remotely(stage: str, parameters: dict[str, Any]) -> str:
    """One flow run of ``unet/fold``, waited for; returns the name of the DVC experiment it pushed. Raises
    naming the fold and the flow run unless it completed: ``WorkerLost`` when it crashed, and then it is
    retried as a new flow run for the first free worker, under a name of its own (``-retry1``, ...), so that
    it never collides with a run its lost worker may still push."""
    log = get_run_logger()
    retry = this_task.get_run_count() - 1
    name = parameters["name"] + (f"-retry{retry}" if retry > 0 else "")
    log.info("%s: flow run '%s' of %s, for the first free worker of its pool", stage, name, DEPLOYMENT)
    run = run_deployment(DEPLOYMENT, parameters={**parameters, "name": name}, flow_run_name=name)
    assert isinstance(run, FlowRun)  # run_deployment is sync here, in a task
    state = run.state
    if state is None or not state.is_completed():
        what = f"{state.name}: {state.message}" if state else "no state"
        error = WorkerLost if state is not None and state.is_crashed() else RuntimeError
        raise error(f"{stage}: flow run '{run.name}' ({run.id}) of {DEPLOYMENT} ended {what}")
    log.info("%s: flow run '%s' completed", stage, run.name)
    return name


@task(task_run_name="adopt {stage}")
def adopt_run(repo: str, stage: str, name: str) -> None:
    """The worker's run of ``stage`` into this workspace (see ``unet.workers.adopt``), then its experiment
    refs removed here and on the git remote: it lives on in this run's ``dvc.lock``."""
    command(["dvc", "exp", "pull", "--no-cache", REMOTE, name], repo)
    entry = adopt(repo, stage, experiment_ref(repo, name))
    get_run_logger().info("%s: dvc.lock entry from the worker, outs %s", stage, [o["path"] for o in entry["outs"]])
    command(["dvc", "exp", "remove", name], repo)
    command(["dvc", "exp", "remove", "--git-remote", REMOTE, name], repo)


def train_on_workers(repo: str, folds: Sequence[int], experiment: str) -> None:
    """Every changed ``train@k`` as a flow run of ``unet/fold`` at once; a failed one fails this flow, naming
    the fold and its flow run, once all have ended and the others have joined ``dvc.lock``. Folds whose
    ``dvc.lock`` entry is current are skipped, as ``dvc repro`` skips them."""
    stages = [s for s in (f"train@{k}" for k in folds) if changed(repo, s)]
    if not stages:
        return
    rev = shareable_head(repo, stages[0], REMOTE)
    watch_for_lost_runs()
    push_inputs(repo, stages[0])
    root, tag = Path(repo), (flow_run.get_id() or "local")[:8]
    shared = {"rev": rev, "params": (root / "params.yaml").read_text(), "lock": (root / "dvc.lock").read_text()}
    names = {s: f"{experiment}-{s.replace('@', '')}-{tag}" for s in stages}
    futures = [
        train_remotely.submit(s, {**shared, "fold": int(s.split("@")[1]), "name": names[s], "parent": workspace(repo)})
        for s in stages
    ]
    wait(futures)
    for s, f in zip(stages, futures, strict=True):  # the folds that finished join dvc.lock even when another failed,
        if f.state.is_completed():  # so a repeated run in this workspace skips them
            adopt_run(repo, s, f.result())
    failed = [str(f.result(raise_on_failure=False)) for f in futures if not f.state.is_completed()]
    if failed:
        raise RuntimeError("; ".join(failed))
