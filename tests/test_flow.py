"""The Prefect flow: its logic under prefect_test_harness, and a real server + process worker + deployment."""

from __future__ import annotations

import contextvars
import json
import os
import re
import shutil
import socket
import subprocess
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import dvc.api
import numpy as np
import pytest
import tifffile
import yaml

from unet.predict import load_model
from unet.presets import apply, overrides

from .conftest import TINY_NET
from .test_pipeline import BIN, git_env, make_repo, run


def test_overrides_from_flow_parameters():
    o = overrides("cpu", steps=10, precision="float32", xla=False, gpus=0)
    assert o["train.max_steps"] == 10 and o["train.model.base_filters"] == 8
    assert o["train.checkpoint_every"] % o["train.steps_per_epoch"] == 0 and o["train.steps_per_epoch"] <= 10
    assert overrides(None, gpus=4) == {"runtime.gpus": 4}
    with pytest.raises(ValueError, match="preset: invalid value 'tpu'"):
        overrides("tpu")


def test_validation_failure_fails_the_flow_with_the_report_as_artifact(isbi, tmp_path):
    from prefect import get_client
    from prefect.testing.utilities import prefect_test_harness

    from flows.pipeline import pipeline

    repo = make_repo(tmp_path / "repo")
    data = tmp_path / "data"
    data.mkdir()
    images = tifffile.imread(isbi / "train-volume.tif")[:6].copy()
    images[2] = 100  # a blank slice: decodes fine, fails the suite
    tifffile.imwrite(data / "train-volume.tif", images)
    tifffile.imwrite(data / "train-labels.tif", tifffile.imread(isbi / "train-labels.tif")[:6])
    tifffile.imwrite(data / "test-volume.tif", images)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["download"] |= {"pixel_sha256": {}, "urls": [], "local_dir": str(data)}
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    os.environ["PATH"] = f"{BIN}:{os.environ['PATH']}"
    with prefect_test_harness(server_startup_timeout=180):
        state = pipeline(repo=str(repo), preset="cpu", steps=5, push=False, return_state=True)
        assert state.is_failed()
        with pytest.raises(RuntimeError, match=r"validate: error: .*validation of 6 slices failed.*std.*slices 2\b"):
            state.result()

        async def report():
            async with get_client() as client:
                return await client.read_latest_artifacts()

        import asyncio

        arts = {a.key: a for a in asyncio.run(report())}
    assert "failed at slices 2\n" in arts["validation-report"].data
    assert not (repo / "data" / "folds.json").exists()
    assert yaml.safe_load((repo / "params.yaml").read_text())["train"]["max_steps"] == 5


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str) -> object:
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


def server_env(tmp_path: Path, api: str, isbi: Path, **extra: str) -> dict[str, str]:
    """The environment of a Prefect server on 127.0.0.1 and its clients: a home of their own, the ISBI data."""
    return git_env(
        PREFECT_HOME=str(tmp_path / "prefect"),
        PREFECT_API_URL=api,
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        ISBI_DATA_DIR=str(isbi),
        **extra,
    )


def _post(url: str, body: dict) -> object:
    req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


@pytest.mark.slow
def test_deployment_runs_on_a_process_worker_against_a_real_server(isbi, tmp_path):
    repo = make_repo(tmp_path / "repo")
    port = _free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = server_env(tmp_path, api, isbi)
    server = subprocess.Popen(
        ["prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        for _ in range(180):
            try:
                _get(f"{api}/health")
                break
            except OSError:
                time.sleep(1)
        else:
            pytest.fail("prefect server did not start within 180 s")

        def prefect(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
            r = subprocess.run(["prefect", *args], cwd=repo, env=env, capture_output=True, text=True, timeout=timeout)
            assert r.returncode == 0, (args, r.stdout[-2000:], r.stderr[-2000:])
            return r

        prefect("work-pool", "create", "gpu", "--type", "process")
        prefect("--no-prompt", "deploy", "--all")
        run = prefect("deployment", "run", "unet/gpu", "--param", "preset=cpu", "--param", "steps=10")
        flow_run_id = next(w for w in run.stdout.split() if len(w) == 36 and w.count("-") == 4)
        prefect("worker", "start", "--pool", "gpu", "--run-once", timeout=1200)
        flow_run = _get(f"{api}/flow_runs/{flow_run_id}")
        assert flow_run["state"]["type"] == "COMPLETED", flow_run["state"]
        arts = _post(f"{api}/artifacts/filter", {"artifacts": {"flow_run_id": {"any_": [flow_run_id]}}})
        table = next(a for a in arts if a["key"] == "fold-metrics")
        rows = json.loads(table["data"]) if isinstance(table["data"], str) else table["data"]
        assert [r["row"] for r in rows] == [f"fold{k}" for k in range(5)] + ["mean", "std"], rows
        assert all(0 < r["soft_dice"] <= 1 for r in rows[:5])
        summary = next(a for a in arts if a["key"] == "unet-summary")["data"]
        assert "cell interior" in summary and "preset cpu, 10 steps" in summary and "Experiment `prefect`" in summary
        lock = yaml.safe_load((repo / "dvc.lock").read_text())
        train_params = lock["stages"]["train@0"]["params"]["params.yaml"]
        assert train_params["train"]["max_steps"] == 10 and train_params["train"]["model"]["base_filters"] == 8
        assert train_params["runtime"]["precision"] == "float32"
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=60)
    assert np.isfinite(json.loads((repo / "metrics" / "mean.json").read_text())["vrand"])
    assert Path(repo / ".dvc-remote").is_dir()  # dvc push reached the default local remote
    # the run is DVC experiment "prefect", holding its metrics and card like a `dvc exp run` would
    git = lambda *a: subprocess.run(["git", *a], cwd=repo, capture_output=True, text=True, env=env)  # noqa: E731
    ref = next(
        r for r in git("for-each-ref", "refs/exps", "--format=%(refname)").stdout.split() if r.endswith("/prefect")
    )
    card = json.loads(dvc.api.read("models/card.json", repo=str(repo), rev=ref))  # DVC-cached, as of the ref
    assert card["cross_validated"]["vrand"]["mean"] > 0 and card["trained"]["experiment"] == "prefect"
    assert "models/.gitignore" in git("ls-tree", "-r", "--name-only", ref).stdout  # nothing big left untracked
    assert git("show", f"{ref}:metrics/fold0.json").returncode == 0
    assert git("rev-list", "--count", "HEAD").stdout.strip() == "1"  # no commit on the branch


# Fold-parallel on this CPU machine: 3 folds on 2 granted "GPUs" (ids only; the CPU runs them), one Keras
# step per epoch so every step prints a line, enough steps that training outlives the log's trip to the API
FOLD_PARALLEL = {
    **TINY_NET,
    "split.folds": [0, 1, 2],
    "train.max_steps": 30,
    "train.steps_per_epoch": 1,
    "train.checkpoint_every": 30,
    "evaluate.overlays": 1,
    "runtime.parallel": "fold",
}
DVC_SHIM = """#!/bin/sh
# records the GPU each dvc process was given and when it ran, then runs the real dvc
echo "start $(date +%s.%N) ${CUDA_VISIBLE_DEVICES-unset} $*" >> "$DVC_CALLS"
"$REAL_DVC" "$@"; rc=$?
echo "end $(date +%s.%N) ${CUDA_VISIBLE_DEVICES-unset} $*" >> "$DVC_CALLS"
exit $rc
"""
STEP_LINE = re.compile(r"^train: step 1/\d+: loss ")  # the train stage's line at the end of a one-step epoch


def _train_calls(path: Path) -> dict[int, tuple[str, float, float]]:
    """fold -> (CUDA_VISIBLE_DEVICES, start, end) of each ``dvc repro train@k`` the flow started."""
    calls: dict[int, dict[str, object]] = {}
    for line in path.read_text().splitlines():
        event, t, dev, *args = line.split()
        stage = args[-1]
        if stage.startswith("train@"):
            calls.setdefault(int(stage[6:]), {})[event] = float(t)
            calls[int(stage[6:])]["dev"] = dev
    return {k: (str(c["dev"]), float(c["start"]), float(c["end"])) for k, c in calls.items()}  # type: ignore[arg-type]


def _logs(client: Any, task_run_id: Any = None) -> list[Any]:
    """Every log record in the API (of one task run), oldest first."""
    from prefect.client.schemas.filters import LogFilter, LogFilterTaskRunId

    where = LogFilter(task_run_id=LogFilterTaskRunId(any_=[task_run_id])) if task_run_id else None
    logs: list[Any] = []
    while page := client.read_logs(where, limit=200, offset=len(logs)):
        logs += page
    return logs


def _watch(stop: threading.Event, seen: dict[str, dict]) -> None:
    """Poll the API as a user would: for each train task, its first step-1 line and its state at that moment."""
    from prefect import get_client

    with get_client(sync_client=True) as client:
        while not stop.is_set():
            for task in client.read_task_runs():
                if not task.name.startswith("train@") or task.name in seen:
                    continue
                line = next((log for log in _logs(client, task.id) if STEP_LINE.match(log.message)), None)
                if line is not None:
                    seen[task.name] = {"state": task.state_type, "log": line}
            time.sleep(0.2)


@pytest.mark.slow
def test_fold_parallel_on_the_granted_gpus_streams_logs_and_matches_a_sequential_run(isbi, tmp_path, monkeypatch):
    from prefect import get_client
    from prefect.client.schemas.objects import StateType
    from prefect.settings import PREFECT_LOGGING_TO_API_BATCH_INTERVAL, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    from flows.pipeline import pipeline

    repo = make_repo(tmp_path / "repo")
    apply(repo / "params.yaml", FOLD_PARALLEL)  # the workspace's own edits: the flow keeps them
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "dvc").write_text(DVC_SHIM)
    (shim / "dvc").chmod(0o755)
    monkeypatch.setenv("PATH", f"{shim}:{BIN}:{os.environ['PATH']}")
    monkeypatch.setenv("REAL_DVC", str(BIN / "dvc"))
    monkeypatch.setenv("DVC_CALLS", str(tmp_path / "dvc-calls.txt"))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "7,9")  # what the worker granted
    monkeypatch.setenv("ISBI_DATA_DIR", str(isbi))
    seen: dict[str, dict] = {}
    stop = threading.Event()
    fast_logs = temporary_settings({PREFECT_LOGGING_TO_API_BATCH_INTERVAL: 0.2})  # the default is 2 s
    with prefect_test_harness(server_startup_timeout=180), fast_logs:
        watcher = threading.Thread(target=contextvars.copy_context().run, args=(_watch, stop, seen))
        watcher.start()
        try:
            state = pipeline(repo=str(repo), push=False, return_state=True)
        finally:
            stop.set()
            watcher.join()
        assert state.is_completed(), state  # no DVC lock failure between the concurrent folds
        with get_client(sync_client=True) as client:
            tasks = {t.name: t for t in client.read_task_runs() if t.name.startswith("train@")}
            logs = _logs(client)

    # each fold ran in its own process on the k-th (mod 2) granted GPU; each GPU one fold at a time; 2 at once
    calls = _train_calls(tmp_path / "dvc-calls.txt")
    assert {k: dev for k, (dev, _, _) in calls.items()} == {0: "7", 1: "9", 2: "7"}
    assert calls[0][2] <= calls[2][1]  # fold 2 waited for fold 0 on GPU 7
    assert max(calls[0][1], calls[1][1]) < min(calls[0][2], calls[1][2])  # folds 0 and 1 overlapped
    messages = [log.message for log in logs]
    assert "train@1 on GPU 9 (CUDA_VISIBLE_DEVICES=9)" in messages

    # a user watching the run sees step 1 of each fold while that fold still trains
    assert sorted(seen) == ["train@0", "train@1", "train@2"], (sorted(seen), messages[-40:])
    for name, s in seen.items():
        assert s["state"] == StateType.RUNNING, (name, s)
        assert (tasks[name].end_time - s["log"].timestamp).total_seconds() > 0.5  # not all logged at exit

    # the same folds trained one after another (what the flow does with no GPU) give the same dvc.lock
    seq = tmp_path / "sequential"
    shutil.copytree(repo, seq, symlinks=True)
    shutil.rmtree(seq / "checkpoints")  # no resuming from the parallel run's last step
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    for k in (0, 1, 2):
        r = run(seq, "dvc", "repro", "--force", "--no-run-cache", "--single-item", f"train@{k}")
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    parallel, sequential = (yaml.safe_load((d / "dvc.lock").read_text())["stages"] for d in (repo, seq))
    for k in (0, 1, 2):
        a, b = parallel[f"train@{k}"], sequential[f"train@{k}"]
        assert a["cmd"] == b["cmd"] and a["deps"] == b["deps"] and a["params"] == b["params"]
        outs_a, outs_b = ({o["path"]: o for o in x["outs"]} for x in (a, b))
        assert outs_a[f"models/folds/fold{k}/config.json"] == outs_b[f"models/folds/fold{k}/config.json"]
        # model.keras differs byte for byte (Keras stamps the save time), so compare what it holds; the project's
        # loader, which knows its layers (the intensity map) whatever this process imported before
        wa, wb = (
            load_model(d / f"models/folds/fold{k}/model.keras", np.dtype(np.uint8)).get_weights() for d in (repo, seq)
        )
        assert all(np.array_equal(x, y) for x, y in zip(wa, wb, strict=True)), f"fold {k}: weights differ"
        ma, mb = (json.loads((d / f"models/folds/fold{k}/metrics.json").read_text()) for d in (repo, seq))
        assert {m: v for m, v in ma.items() if m != "img_per_s"} == {m: v for m, v in mb.items() if m != "img_per_s"}
