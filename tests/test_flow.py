"""The Prefect flow: its logic under prefect_test_harness, and a real server + process worker + deployment."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import tifffile
import yaml

from unet.presets import overrides

from .test_pipeline import BIN, git_env, make_repo


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


def _post(url: str, body: dict) -> object:
    req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


@pytest.mark.slow
def test_deployment_runs_on_a_process_worker_against_a_real_server(isbi, tmp_path):
    repo = make_repo(tmp_path / "repo")
    port = _free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = git_env(
        PREFECT_HOME=str(tmp_path / "prefect"),
        PREFECT_API_URL=api,
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        ISBI_DATA_DIR=str(isbi),
    )
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
        assert [r["fold"] for r in rows] == [0, 1, 2, 3, 4] and all(0 < r["soft_dice"] <= 1 for r in rows)
        lock = yaml.safe_load((repo / "dvc.lock").read_text())
        train_params = lock["stages"]["train@0"]["params"]["params.yaml"]
        assert train_params["train"]["max_steps"] == 10 and train_params["train"]["model"]["base_filters"] == 8
        assert train_params["runtime"]["precision"] == "float32"
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=60)
    assert np.isfinite(json.loads((repo / "metrics" / "summary.json").read_text())["vrand"]["mean"])
    assert Path(repo / ".dvc-remote").is_dir()  # dvc push reached the default local remote
    # the run is DVC experiment "prefect", holding its metrics and card like a `dvc exp run` would
    git = lambda *a: subprocess.run(["git", *a], cwd=repo, capture_output=True, text=True, env=env)  # noqa: E731
    ref = next(
        r for r in git("for-each-ref", "refs/exps", "--format=%(refname)").stdout.split() if r.endswith("/prefect")
    )
    card = json.loads(git("show", f"{ref}:models/card.json").stdout)
    assert card["cross_validated"]["vrand"]["mean"] > 0
    assert git("show", f"{ref}:metrics/folds.json").returncode == 0
    assert git("rev-list", "--count", "HEAD").stdout.strip() == "1"  # no commit on the branch
