"""End to end: ``dvc repro`` of the whole pipeline on the cpu preset in a fresh git repository."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tifffile

from unet import config
from unet.folds import check_partition
from unet.io import pixel_sha256
from unet.presets import PRESETS, apply

from .conftest import ROOT

BIN = Path(sys.executable).parent
QUICK = {"train.max_steps": 20, "train.steps_per_epoch": 10, "train.checkpoint_every": 10, "evaluate.overlays": 1}


def make_repo(dest: Path) -> Path:
    """A fresh git repository holding this project's tracked files (what a clone would hold)."""
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    for f in files:
        if (ROOT / f).is_file():
            (dest / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, dest / f)
    env = git_env()
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "clone"]):
        subprocess.run(cmd, cwd=dest, check=True, env=env)
    return dest


def git_env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", **extra}
    for role in ("AUTHOR", "COMMITTER"):
        env.setdefault(f"GIT_{role}_NAME", "test")
        env.setdefault(f"GIT_{role}_EMAIL", "test@localhost")
    return env


def dvc(repo: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(["dvc", *args], cwd=repo, capture_output=True, text=True, env=git_env(**env))


@pytest.mark.slow
def test_dvc_repro_cpu_preset_end_to_end(isbi, tmp_path):
    repo = make_repo(tmp_path / "repo")
    apply(repo / "params.yaml", {**PRESETS["cpu"], **QUICK})
    r = dvc(repo, "repro", ISBI_DATA_DIR=str(isbi))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    cfg = config.load(repo / "params.yaml")
    for name, digest in cfg.download.pixel_sha256.items():
        assert pixel_sha256(tifffile.imread(repo / "data" / "raw" / name)) == digest
    assert json.loads((repo / "reports" / "validation.json").read_text())["success"]
    folds = json.loads((repo / "data" / "folds.json").read_text())
    check_partition(folds, 30)
    assert folds["k"] == 5
    for k in range(5):
        assert (repo / "models" / f"fold{k}" / "model.keras").is_file()
        m = json.loads((repo / "metrics" / f"fold{k}.json").read_text())
        assert set(m) >= {"soft_dice", "dice", "iou", "pixel_error", "vrand", "vinfo"} and m["slices"] == sorted(
            folds["folds"][k]["val"]
        )
        assert len(list((repo / "plots" / "overlays").glob(f"fold{k}_*.png"))) == 1
    summary = json.loads((repo / "metrics" / "summary.json").read_text())
    assert summary["folds"] == 5 and 0.5 < summary["soft_dice"]["mean"] <= 1
    shown = dvc(repo, "metrics", "show", "--json")
    assert "metrics/summary.json" in shown.stdout and "vrand" in shown.stdout
    card = json.loads((repo / "models" / "registered" / "card.json").read_text())
    assert card["name"] == "unet-isbi2012" and len(card["folds"]) == 1
    assert "soft_dice" in (repo / "dvc.yaml").read_text().split("artifacts:")[1]
    assert dvc(repo, "push").returncode == 0
    pub = subprocess.run(
        [sys.executable, "-m", "unet.stages.register", "--publish"],
        cwd=repo,
        env=git_env(),
        capture_output=True,
        text=True,
    )
    assert pub.returncode == 0, pub.stderr[-2000:]
    gto = subprocess.run(
        ["gto", "show", "unet-isbi2012", "--json"], cwd=repo, capture_output=True, text=True, env=git_env()
    )
    version = json.loads(gto.stdout)[0]
    assert version["version"] == "v0.0.1" and card["sha256"] in version["message"]
    assert [s["stage"] for s in version["stages"]] == ["dev"]
    got = dvc(repo, "artifacts", "get", ".", "unet-isbi2012", "-o", str(tmp_path / "fetched.keras"))
    assert got.returncode == 0, got.stderr[-2000:]
    import hashlib

    assert hashlib.sha256((tmp_path / "fetched.keras").read_bytes()).hexdigest() == card["sha256"]
    again = dvc(repo, "repro", ISBI_DATA_DIR=str(isbi))
    assert again.returncode == 0 and "didn't change, skipping" in again.stdout  # cached: nothing reruns
    assert "Running stage" not in again.stdout


def test_dvc_repro_fails_on_bad_input_with_no_output(isbi, tmp_path):
    repo = make_repo(tmp_path / "repo")
    bad = tmp_path / "bad"
    shutil.copytree(isbi, bad, ignore=shutil.ignore_patterns("*.md"))
    raw = (bad / "train-labels.tif").read_bytes()
    (bad / "train-labels.tif").write_bytes(raw[: len(raw) // 2])
    apply(repo / "params.yaml", {"download.urls": []})
    r = dvc(repo, "repro", "download", ISBI_DATA_DIR=str(bad))
    assert r.returncode != 0
    errors = [line for line in r.stderr.splitlines() if line.startswith("download: error:")]
    assert len(errors) == 1 and "train-labels.tif" in errors[0] and "truncated" in errors[0]
    assert not (repo / "data" / "raw").exists()
