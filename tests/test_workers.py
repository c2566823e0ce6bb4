"""Folds on several workers: a stage run in another clone joins this one's dvc.lock (a toy DVC project), and
the pipeline flow with ``folds_on="workers"`` against a real server and two process workers, each in its own
clone, ends with the dvc.lock and metrics of a run on one machine."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from unet.presets import apply, overrides
from unet.workers import adopt, changed, experiment_ref, fold_inputs, shareable_head, uncached_outs

from .conftest import TINY_NET
from .test_flow import _free_port, _get, _post, server_env
from .test_pipeline import git_env, make_repo

FIT = """\
import json, pathlib, yaml
scale = yaml.safe_load(open("params.yaml"))["fit"]["scale"]
data = pathlib.Path("data.txt").read_text()
pathlib.Path("out").mkdir(exist_ok=True)
pathlib.Path("out/model.bin").write_bytes(data.encode() * scale)
pathlib.Path("out/config.json").write_text(json.dumps({"scale": scale}))
pathlib.Path("out/metrics.json").write_text(json.dumps({"size": len(data) * scale}))
"""
DVC_YAML = {
    "stages": {
        "make": {"cmd": "python -c \"open('data.txt', 'w').write('abc')\"", "outs": ["data.txt"]},
        "check": {  # like validate: a git-tracked report that workers never make
            "cmd": "python -c \"open('check.txt', 'w').write('ok')\"",
            "deps": ["data.txt"],
            "outs": [{"check.txt": {"cache": False}}],
        },
        "fit": {
            "cmd": "python fit.py",
            "deps": ["data.txt", "fit.py"],
            "params": ["fit"],
            "outs": ["out/model.bin", {"out/config.json": {"cache": False}}],
            "metrics": [{"out/metrics.json": {"cache": False}}],
        },
    }
}


def sh(cwd: Path, *cmd: str, env: dict[str, str] | None = None) -> str:
    r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env or git_env())
    assert r.returncode == 0, (cmd, r.stdout[-2000:], r.stderr[-2000:])
    return r.stdout


def toy_project(tmp: Path) -> tuple[Path, Path]:
    """A parent clone and a worker clone of one git remote, sharing a DVC remote."""
    src = tmp / "src"
    src.mkdir()
    (src / "fit.py").write_text(FIT)
    (src / "dvc.yaml").write_text(yaml.safe_dump(DVC_YAML, sort_keys=False))
    (src / "params.yaml").write_text("fit:\n  scale: 2\n")
    sh(src, "git", "init", "-q")
    sh(src, "dvc", "init", "-q")
    sh(src, "dvc", "remote", "add", "-d", "shared", str(tmp / "dvc-remote"))
    sh(src, "git", "add", "-A")
    sh(src, "git", "commit", "-qm", "toy")
    sh(tmp, "git", "clone", "-q", "--bare", str(src), str(tmp / "remote.git"))
    for clone in ("parent", "worker"):
        sh(tmp, "git", "clone", "-q", str(tmp / "remote.git"), str(tmp / clone))
    return tmp / "parent", tmp / "worker"


def test_a_stage_run_in_another_clone_joins_this_dvc_lock(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", git_env()["PATH"])  # dvc, as an activated environment has it
    parent, worker = toy_project(tmp_path)
    assert fold_inputs(parent, "fit") == ["data.txt"] and uncached_outs(parent, "fit") == [
        "out/config.json",
        "out/metrics.json",
    ]
    sh(parent, "dvc", "repro")  # an earlier run: its entries (and outputs) stay in the parent's dvc.lock
    (parent / "params.yaml").write_text("fit:\n  scale: 3\n")  # an experiment's params, never committed
    sh(parent, "dvc", "push", "data.txt")
    head = shareable_head(parent, "fit")

    # the worker, as flows.fold runs it: the parent's commit, params.yaml and dvc.lock; its inputs pulled;
    # run; saved (this stage only: it never made check.txt); pushed
    sh(worker, "git", "checkout", "-q", "--detach", head)
    for name in ("params.yaml", "dvc.lock"):
        (worker / name).write_text((parent / name).read_text())
    sh(worker, "dvc", "pull", "--force", "data.txt")
    sh(worker, "dvc", "repro", "--single-item", "fit")
    sh(worker, "dvc", "exp", "save", "-n", "fit-run", "-I", "out/config.json", "-I", "out/metrics.json", "fit")
    sh(worker, "dvc", "push", "fit")
    sh(worker, "dvc", "exp", "push", "--no-cache", "origin", "fit-run")

    sh(parent, "dvc", "exp", "pull", "--no-cache", "origin", "fit-run")
    entry = adopt(parent, "fit", experiment_ref(parent, "fit-run"))
    worker_lock = yaml.safe_load((worker / "dvc.lock").read_text())["stages"]["fit"]
    assert entry == worker_lock == yaml.safe_load((parent / "dvc.lock").read_text())["stages"]["fit"]
    assert entry["params"]["params.yaml"]["fit"]["scale"] == 3
    assert json.loads((parent / "out" / "metrics.json").read_text()) == {"size": 9}
    assert (parent / "out" / "model.bin").read_text() == "abc" * 3
    assert not changed(parent, "fit")
    assert sh(parent, "git", "check-ignore", "out/model.bin").strip()  # the .gitignore DVC keeps for its outs

    # a run with other params than this workspace's is refused, by DVC's own status
    (parent / "params.yaml").write_text("fit:\n  scale: 4\n")
    with pytest.raises(RuntimeError, match=r"fit: the worker.s run does not match .*changed deps.*params.yaml"):
        adopt(parent, "fit", experiment_ref(parent, "fit-run"))
    # workers train the commit on the git remote: edited code or an unpushed commit is refused up front
    (parent / "fit.py").write_text(FIT + "# edited\n")
    with pytest.raises(ValueError, match=r"fit: uncommitted changes in fit.py"):
        shareable_head(parent, "fit")
    sh(parent, "git", "commit", "-qam", "edit")
    with pytest.raises(ValueError, match=r"commit [0-9a-f]{12} is not on the git remote 'origin'"):
        shareable_head(parent, "fit")


TINY_PARAMS = {**TINY_NET, "evaluate.overlays": 1, "split.folds": [0, 1]}


# A .keras file differs between any two saves: its metadata.json holds the save time and its config.json a
# Python object id (`shared_object_id`); and training logs its measured throughput (`img_per_s`). Everything
# else (the weights bit for bit, losses, evaluation metrics) is the same wherever a fold trains.
# So the hashes of these differ, and of the folds' directory that evaluate depends on.
VARY = ("/model.keras", "/metrics.json", "/plots", "models/folds")


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_folds_on_two_workers_end_with_the_dvc_lock_of_one_machine(isbi, tmp_path):
    # the project (tiny U-Net, 2 folds) committed on a git remote; every clone pushes to one DVC remote
    clones = project_clones(tmp_path, TINY_PARAMS, "parent", "worker-a", "worker-b", "one-machine")
    parent, one = clones["parent"], clones["one-machine"]
    port = _free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = server_env(tmp_path, api, isbi, PREFECT_WORKER_QUERY_SECONDS="2")
    env.pop("UNET_CLONE", None)
    # the same run on one machine, meanwhile: the flow's experiment params, then dvc repro up to evaluate
    apply(one / "params.yaml", overrides(steps=10))
    baseline = _start(["dvc", "repro", "evaluate"], one, env, tmp_path / "one-machine")
    procs = [_start(["prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)], tmp_path, env)]
    try:
        _wait_for(f"{api}/health")
        sh(parent, "prefect", "work-pool", "create", "gpu", "--type", "process", env=env)
        sh(parent, "prefect", "--no-prompt", "deploy", "--all", env=env)
        for name in ("worker-a", "worker-b"):
            cmd = ["prefect", "worker", "start", "--pool", "gpu", "--work-queue", "folds", "--limit", "1"]
            procs.append(_start(cmd, clones[name], {**env, "UNET_CLONE": str(clones[name])}, tmp_path / name))
        flow = [sys.executable, "-m", "flows.pipeline", "--repo", str(parent), "--no-push", "--folds-on", "workers"]
        sh(parent, *flow, "--steps", "10", env=env)
        folds = _post(f"{api}/flow_runs/filter", {"deployments": {"name": {"any_": ["fold"]}}})
        arts = _post(f"{api}/artifacts/filter", {"artifacts": {"flow_run_id": {"any_": [r["id"] for r in folds]}}})
        status, workers = sh(parent, "dvc", "status"), _lock(parent)
        for name in ("worker-a", "worker-b"):  # a fold that fails fails the parent, naming it and its flow run
            sh(clones[name], "git", "remote", "set-url", "origin", str(tmp_path / "gone.git"))
        failed = subprocess.run([*flow, "--steps", "5"], cwd=parent, env=env, capture_output=True, text=True)
    finally:
        for p in reversed(procs):
            _stop(p)
        assert baseline.wait(timeout=1200) == 0, (tmp_path / "one-machine.log").read_text()[-3000:]

    # each worker trained one fold, in its own clone, and said so from its flow run
    assert sorted(r["state"]["type"] for r in folds) == ["COMPLETED", "COMPLETED"]
    ran = {a["key"]: a["data"].splitlines()[0] for a in arts}
    assert sorted(ran) == ["fold-0-run", "fold-1-run"]
    assert {line.rsplit(":", 1)[-1] for line in ran.values()} == {str(clones["worker-a"]), str(clones["worker-b"])}
    for k in (0, 1):
        assert failed.returncode != 0 and f"train@{k}: flow run 'prefect-train{k}-" in failed.stderr
    assert "of unet/fold ended Failed" in failed.stderr.strip().splitlines()[-1]

    # the parent's dvc.lock (before the failed run): the one-machine run's, but for the outputs that differ
    # between any two runs
    assert "up to date" in status
    assert not sh(tmp_path / "remote.git", "git", "for-each-ref", "refs/exps").strip()  # fold refs removed
    single = _lock(one)
    assert list(workers)[: len(single)] == list(single)  # the same stages, in the same order
    assert workers["train@0"]["params"]["params.yaml"]["train"]["max_steps"] == 10  # the run's experiment params
    for stage in single:
        assert [workers[stage].get(k) for k in ("cmd", "params")] == [single[stage].get(k) for k in ("cmd", "params")]
        for key in ("deps", "outs"):
            pairs = zip(workers[stage].get(key, []), single[stage].get(key, []), strict=True)
            differ = [a["path"] for a, b in pairs if a != b]
            assert all(p.endswith(VARY) for p in differ), (stage, key, differ)
    for k in (0, 1):
        fold = Path("models", "folds", f"fold{k}")
        assert _weights(parent / fold / "model.keras") == _weights(one / fold / "model.keras")
        a, b = ({**json.loads((c / fold / "metrics.json").read_text()), "img_per_s": 0} for c in (parent, one))
        assert a == b
    for path in ("metrics/fold0.json", "metrics/fold1.json", "metrics/mean.json", "metrics/std.json"):
        assert json.loads((parent / path).read_text()) == json.loads((one / path).read_text()), path


def project_clones(tmp: Path, params: dict, *names: str) -> dict[str, Path]:
    """This project with ``params`` committed on a git remote under ``tmp``, and a clone of it for each name,
    every clone pushing to one DVC remote folder."""
    src = make_repo(tmp / "src")
    apply(src / "params.yaml", params)
    sh(src, "git", "commit", "-qam", "tiny")
    sh(tmp, "git", "clone", "-q", "--bare", str(src), str(tmp / "remote.git"))
    for name in names:
        sh(tmp, "git", "clone", "-q", str(tmp / "remote.git"), str(tmp / name))
        sh(tmp / name, "dvc", "remote", "modify", "--local", "local", "url", str(tmp / "dvc-remote"))
    return {name: tmp / name for name in names}


def _weights(path: Path) -> list[bytes]:
    """Every weight array of a .keras file, as bytes."""
    import io
    import zipfile

    import h5py

    with zipfile.ZipFile(path) as z, h5py.File(io.BytesIO(z.read("model.weights.h5"))) as h5:
        arrays: list[bytes] = []
        h5.visititems(lambda _, v: arrays.append(v[()].tobytes()) if isinstance(v, h5py.Dataset) else None)
    return arrays


def _lock(repo: Path) -> dict:
    return yaml.safe_load((repo / "dvc.lock").read_text())["stages"]


def _start(cmd: list[str], cwd: Path, env: dict[str, str], log: Path | None = None) -> subprocess.Popen:
    out = open(f"{log}.log", "w") if log else subprocess.DEVNULL  # noqa: SIM115 (closed with the process)
    return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM a process group started by ``_start``; SIGKILL it after 60 s. A `prefect worker` whose runs have
    all ended now and then never exits on SIGTERM (seen with Prefect 3.9.1 on a loaded machine): its shutdown is
    not what these tests check, and a hung one must not keep the server's port and the test waiting."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)


def _wait_for(url: str) -> None:
    for _ in range(180):
        try:
            _get(url)
            return
        except OSError:
            time.sleep(1)
    pytest.fail("prefect server did not start within 180 s")


def test_only_a_fold_whose_worker_was_lost_is_started_again():
    from prefect.states import Completed, Failed

    from flows.fold import WorkerLost, _lost, lost_run_automation

    assert _lost(None, None, Failed(data=WorkerLost("train@0: flow run 'x' ended Crashed")))  # type: ignore[arg-type]
    assert not _lost(None, None, Failed(data=RuntimeError("train@0: flow run 'x' ended Failed")))  # type: ignore[arg-type]
    assert not _lost(None, None, Completed())  # type: ignore[arg-type]
    auto = lost_run_automation("d1", 90).model_dump(mode="json")  # what the server gets
    assert auto["trigger"]["posture"] == "Proactive" and auto["trigger"]["within"] == 90
    assert auto["trigger"]["match_related"] == {"prefect.resource.id": "prefect.deployment.d1"}  # this deployment's
    assert auto["actions"][0]["state"] == "CRASHED"
