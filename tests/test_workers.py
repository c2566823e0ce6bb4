"""Folds on several workers: a stage run in another clone joins this one's dvc.lock (a toy DVC project), and
the pipeline flow with ``folds_on="workers"`` against a real server and two process workers, each in its own
clone, ends with the dvc.lock and metrics of a run on one machine."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from unet.workers import adopt, changed, experiment_ref, fold_inputs, shareable_head, uncached_outs

from .test_pipeline import git_env

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
        "fit": {
            "cmd": "python fit.py",
            "deps": ["data.txt", "fit.py"],
            "params": ["fit"],
            "outs": ["out/model.bin", {"out/config.json": {"cache": False}}],
            "metrics": [{"out/metrics.json": {"cache": False}}],
        },
    }
}


def sh(cwd: Path, *cmd: str) -> str:
    r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=git_env())
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
    sh(parent, "dvc", "repro", "make")
    (parent / "params.yaml").write_text("fit:\n  scale: 3\n")  # an experiment's params, never committed
    sh(parent, "dvc", "push", "data.txt")
    head = shareable_head(parent, "fit")

    # the worker: the parent's commit, params.yaml and dvc.lock; its inputs pulled; run, saved, pushed
    sh(worker, "git", "checkout", "-q", "--detach", head)
    for name in ("params.yaml", "dvc.lock"):
        (worker / name).write_text((parent / name).read_text())
    sh(worker, "dvc", "pull", "--force", "data.txt")
    sh(worker, "dvc", "repro", "--single-item", "fit")
    sh(worker, "dvc", "exp", "save", "-n", "fit-run", "-I", "out/config.json", "-I", "out/metrics.json")
    sh(worker, "dvc", "exp", "push", "origin", "fit-run")

    sh(parent, "dvc", "exp", "pull", "origin", "fit-run")
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
