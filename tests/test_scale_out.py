"""Beyond one machine: a fold whose worker is killed resumes on another worker (another clone of the project)
from a shared checkpoint location, and ends bit-identical to an uninterrupted run: by hand (``dvc repro`` in
the other clone), and as the pipeline flow does it (Prefect marks the lost worker's run Crashed, the parent
starts the fold again, another worker resumes it)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile

from unet.folds import kfold
from unet.predict import load_model
from unet.presets import apply

from .conftest import TINY_NET, synthetic
from .test_pipeline import git_env, make_repo

# the tiny net of conftest.TINY, with the paper's drop-out (its RNG state travels in the checkpoint too)
PARAMS = {
    "split.folds": [0, 1],
    "train.model.base_filters": 4,
    "train.model.depth": 3,
    "train.model.tile": 92,
    "train.batch_size": 2,
    "train.max_steps": 40,
    "train.steps_per_epoch": 5,
    "train.checkpoint_every": 10,
    "train.warmup_steps": 2,
    "train.learning_rate": 1e-3,
    "runtime.precision": "float32",
    "runtime.xla": False,
    "runtime.tf32": False,
    "runtime.gpus": 0,
}


def worker(dest: Path) -> Path:
    """A clone of the project holding the tiny params and the train stage's inputs (6 synthetic slices)."""
    repo = make_repo(dest)
    apply(repo / "params.yaml", PARAMS)
    images, labels = synthetic(6, 64)
    (repo / "data" / "raw").mkdir(parents=True)
    tifffile.imwrite(repo / "data" / "raw" / "train-volume.tif", images)
    tifffile.imwrite(repo / "data" / "raw" / "train-labels.tif", labels)
    (repo / "data" / "folds.json").write_text(json.dumps(kfold(6, 2, 0)))
    return repo


def env(shared: Path | None) -> dict[str, str]:
    base = {k: v for k, v in git_env(TF_CPP_MIN_LOG_LEVEL="3").items() if k != "UNET_CHECKPOINTS"}
    return base | ({"UNET_CHECKPOINTS": str(shared)} if shared else {})


def repro(repo: Path, shared: Path | None) -> subprocess.CompletedProcess:
    cmd = ["dvc", "repro", "--single-item", "train@0"]  # only the train stage: its inputs are in place
    return subprocess.run(cmd, cwd=repo, capture_output=True, text=True, env=env(shared), timeout=600)


def weights(repo: Path) -> list[np.ndarray]:
    """The fold's weights, through the project's loader (it knows the intensity-map layer whatever this process
    imported before)."""
    return load_model(repo / "models" / "folds" / "fold0" / "model.keras", np.dtype(np.uint8)).get_weights()


@pytest.mark.slow
def test_a_fold_killed_on_one_worker_resumes_on_another_to_the_same_weights(tmp_path):
    shared = tmp_path / "shared"
    a, b = worker(tmp_path / "a"), worker(tmp_path / "b")
    with open(tmp_path / "a.log", "w") as log:  # worker A: its whole process group dies at the first checkpoint
        proc = subprocess.Popen(
            ["dvc", "repro", "--single-item", "train@0"],
            cwd=a,
            env=env(shared),
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
        _wait_for_checkpoint(shared, proc, tmp_path / "a.log")
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not (a / "models" / "folds" / "fold0" / "model.keras").exists()  # killed mid-run
    assert not (a / "checkpoints").exists()  # the shared location replaced the local one
    (key,) = [p.name for p in shared.iterdir()]  # one directory per run, named by its resume fingerprint

    resumed = repro(b, shared)  # worker B, another clone with the same shared location
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-3000:]
    assert f"resuming from {shared / key}/step-000000" in resumed.stderr, resumed.stderr[-3000:]
    step = int(resumed.stderr.split("/step-")[1][:8])
    assert 10 <= step < 40 and f"(step {step} of 40)" in resumed.stderr
    assert json.loads((b / "models" / "folds" / "fold0" / "metrics.json").read_text())["step"] == 40

    straight = repro(a, None)  # uninterrupted, with local checkpoints as without a shared location
    assert straight.returncode == 0, straight.stdout[-2000:] + straight.stderr[-3000:]
    assert "resuming" not in straight.stderr and (a / "checkpoints" / "fold0" / "step-00000040").is_dir()
    for x, y in zip(weights(a), weights(b), strict=True):
        np.testing.assert_array_equal(x, y)  # bit-identical


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_prefect_starts_the_fold_of_a_lost_worker_again_on_another_which_resumes_it(isbi, tmp_path):
    from .test_flow import _free_port, _post, server_env
    from .test_workers import _lock, _start, _stop, _wait_for, _weights, project_clones, sh

    # the project (tiny net, 2 folds, a checkpoint every 20 of 200 steps) on a git remote and one DVC remote
    params = {**TINY_NET, "split.folds": [0, 1], "evaluate.overlays": 0} | STEPS
    clones = project_clones(tmp_path, params, "parent", "worker-a", "worker-b", "uninterrupted")
    port, shared = _free_port(), tmp_path / "checkpoints"  # the location every worker reaches
    api = f"http://127.0.0.1:{port}/api"
    env = server_env(tmp_path, api, isbi, PREFECT_WORKER_QUERY_SECONDS="2", UNET_LOST_AFTER_S="60")
    env = {k: v for k, v in env.items() if k not in ("UNET_CLONE", "UNET_CHECKPOINTS")}
    # both folds trained without interruption, with local checkpoints, meanwhile
    baseline = _start(["dvc", "repro", "train@0", "train@1"], clones["uninterrupted"], env, tmp_path / "uninterrupted")
    procs = [_start(["prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)], tmp_path, env)]
    workers = {}
    try:
        _wait_for(f"{api}/health")
        sh(clones["parent"], "prefect", "work-pool", "create", "gpu", "--type", "process", env=env)
        sh(clones["parent"], "prefect", "--no-prompt", "deploy", "--all", env=env)
        flow = [sys.executable, "-m", "flows.pipeline", "--repo", str(clones["parent"]), "--no-push"]
        parent = _start([*flow, "--folds-on", "workers"], clones["parent"], env, tmp_path / "parent")
        procs.append(parent)
        for name in ("worker-a", "worker-b"):  # worker A alone first: it takes a fold, and dies at its checkpoint
            cmd = ["prefect", "worker", "start", "--pool", "gpu", "--work-queue", "folds", "--limit", "1"]
            wenv = {**env, "UNET_CLONE": str(clones[name]), "UNET_CHECKPOINTS": str(shared)}
            workers[name] = _start(cmd, clones[name], wenv, tmp_path / name)
            procs.append(workers[name])
            if name == "worker-a":
                _wait_for_checkpoint(shared, workers[name], tmp_path / "worker-a.log")
                _kill_tree(workers[name].pid)  # the machine is lost: the worker, its flow run, dvc, training
        assert parent.wait(timeout=900) == 0, (tmp_path / "parent.log").read_text()[-4000:]
        runs = _post(f"{api}/flow_runs/filter", {"deployments": {"name": {"any_": ["fold"]}}})
    finally:
        for p in reversed(procs):
            _stop(p)
        assert baseline.wait(timeout=900) == 0, (tmp_path / "uninterrupted.log").read_text()[-3000:]

    # the lost worker's run was marked Crashed by the automation; its fold ran again, on worker B, as a flow
    # run (and DVC experiment) of its own name
    states = sorted((r["name"], r["state"]["type"]) for r in runs)
    (lost,) = [r for r in runs if r["state"]["type"] == "CRASHED"]
    assert "no heartbeat for 60 s: worker lost" in lost["state"]["message"]
    assert (lost["name"] + "-retry1", "COMPLETED") in states
    assert sum(s == "COMPLETED" for _, s in states) == 2 and len(states) == 3, states
    log_b = (tmp_path / "worker-b.log").read_text()
    assert log_b.count("resuming from ") == 1, log_b[-3000:]  # the other fold, never started by A: from step 0
    assert f"resuming from {shared}/" in log_b and "/step-00000020 (step 20 of 200)" in log_b, log_b[-3000:]

    # and the parent's dvc.lock and weights are those of the uninterrupted run
    assert "up to date" in sh(clones["parent"], "dvc", "status", "train@0", "train@1")
    straight = _lock(clones["uninterrupted"])
    for k in (0, 1):
        assert _lock(clones["parent"])[f"train@{k}"]["params"] == straight[f"train@{k}"]["params"]
        fold = Path("models", "folds", f"fold{k}", "model.keras")
        assert _weights(clones["parent"] / fold) == _weights(clones["uninterrupted"] / fold), k


STEPS = {"train.max_steps": 200, "train.steps_per_epoch": 10, "train.checkpoint_every": 20}


def _wait_for_checkpoint(shared: Path, proc: subprocess.Popen, log: Path) -> None:
    """Until the first complete checkpoint under ``shared``; fails with ``proc``'s log if it ends first."""
    deadline = time.monotonic() + 600
    while not list(shared.glob("*/step-*/meta.json")):
        assert proc.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, "no checkpoint within 10 minutes:\n" + log.read_text()[-3000:]
        time.sleep(0.02)


def _kill_tree(pid: int) -> None:
    """SIGKILL a process and every process under it, as a lost machine stops them: the worker first (so it
    cannot report its flow run's end), then the rest (the worker starts each flow run in a session of its own,
    so its process group is not enough)."""
    import psutil

    root = psutil.Process(pid)
    for p in [root, *root.children(recursive=True)]:  # the list is taken before the first kill
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
