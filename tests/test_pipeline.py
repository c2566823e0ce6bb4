"""End to end: ``dvc repro`` of the whole pipeline on the cpu preset in a fresh git repository."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile

from unet import bioimageio, config
from unet.folds import check_partition
from unet.io import pixel_sha256
from unet.metrics import METRICS
from unet.presets import apply, set_args

from .conftest import ROOT, project_params

BIN = Path(sys.executable).parent
QUICK = {"train.max_steps": 20, "train.steps_per_epoch": 10, "train.checkpoint_every": 10, "evaluate.overlays": 1}


def make_repo(dest: Path) -> Path:
    """A fresh git repository holding this project's tracked files (what a clone would hold)."""
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    for f in files:
        if (ROOT / f).is_file():
            (dest / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, dest / f)
    (dest / "params.yaml").write_text(project_params())  # not an experiment's params left by `make run`
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


def run(repo: Path, *cmd: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=repo, capture_output=True, text=True, env=env or git_env())


def git(repo: Path, *args: str) -> str:
    return run(repo, "git", *args).stdout.strip()


def experiment(repo: Path, name: str, isbi: Path, **extra: object) -> subprocess.CompletedProcess:
    """``make run``'s command with the quick settings on top of the cpu preset."""
    sets = set_args({**QUICK, **extra})
    cmd = [sys.executable, "-m", "unet.presets", "run", "cpu", "--name", name, *sets]
    return run(repo, *cmd, env=git_env(ISBI_DATA_DIR=str(isbi)))


# the README's `dvc exp show`: the experiments and their cross-validated scores, in a terminal's width
EXP_SHOW = ("--drop", ".*", "--keep", "Experiment|metrics/mean.json:(vrand|vinfo|pixel_error)$")


def check_plots(repo: Path, out: Path) -> None:
    """``dvc plots show`` draws each plot once: the two training curves with one line per fold, the per-slice
    scores, and each overlay image (DVC-cached, not committed)."""
    r = run(repo, "dvc", "plots", "show", "-o", str(out / "json"), "--json")
    assert r.returncode == 0, r.stderr[-2000:]
    plots = json.loads(r.stdout)["data"]
    assert {"Training loss", "Training soft Dice", "Per-slice scores"} <= set(plots), sorted(plots)
    images = [k for k in plots if k.endswith(".png")]
    assert images and all(k.startswith("plots/overlays/") for k in images), sorted(plots)
    assert len(plots) == 3 + len(images), sorted(plots)  # nothing twice, no per-fold curves, no img_per_s
    spec = plots["Training loss"][0]["content"]
    assert spec["encoding"]["color"]["field"] == "fold"
    assert {str(d["fold"]) for d in spec["data"]["values"]} == {str(k) for k in range(5)}
    assert run(repo, "dvc", "plots", "show", "-o", str(out / "html")).returncode == 0
    html = (out / "html" / "index.html").read_text()
    assert html.count("vegaEmbed(") == 3 and html.count("<img ") == len(images), html[-3000:]


def experiments(repo: Path) -> list[str]:
    """The experiment refs (``refs/exps/<2 hex>/<baseline>/<name>``) and their commits, not DVC's own refs."""
    refs = git(repo, "for-each-ref", "refs/exps", "--format=%(objectname) %(refname)").splitlines()
    return [r for r in refs if re.match(r"refs/exps/[0-9a-f]{2}/", r.split()[1])]


@pytest.mark.slow
def test_experiments_compare_fold_by_fold_and_leave_history_alone(isbi, tmp_path):
    repo = make_repo(tmp_path / "repo")
    head, tags = git(repo, "rev-parse", "HEAD"), git(repo, "tag")
    r = experiment(repo, "cpu", isbi)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert git(repo, "rev-parse", "HEAD") == head and git(repo, "tag") == tags  # no commit, no tag
    committed = config.loads(git(repo, "show", "HEAD:params.yaml"))  # still the GPU recipe (+ ISBI's ranges)
    generic = {"download": config.DownloadConfig(), "validate": config.ValidateConfig()}  # ISBI's data, ranges
    generic["register"] = config.RegisterConfig()  # and ISBI's data set in the model card
    assert dataclasses.replace(committed, **generic) == config.Config()
    cfg = config.load(repo / "params.yaml")  # the workspace holds the experiment, as dvc exp run -S leaves it
    assert cfg.train.model.base_filters == 8 and cfg.train.max_steps == QUICK["train.max_steps"]
    for name, digest in cfg.download.pixel_sha256.items():
        assert pixel_sha256(tifffile.imread(repo / "data" / "raw" / name)) == digest
    folds = json.loads((repo / "data" / "folds.json").read_text())
    check_partition(folds, 30)
    shown = json.loads(run(repo, "dvc", "metrics", "show", "--json").stdout)[""]["data"]  # "": the workspace
    table = {Path(path).stem: d["data"] for path, d in shown.items()}  # rows: files; columns: metrics
    assert sorted(table) == [f"fold{k}" for k in range(5)] + ["mean", "std"], sorted(table)
    assert all(list(row) == list(METRICS) for row in table.values()), table  # one shape: no thresholds, no fold
    report = json.loads((repo / "reports" / "evaluation.json").read_text())["folds"]
    for k in range(5):
        m = table[f"fold{k}"]
        assert report[f"fold{k}"]["slices"] == sorted(folds["folds"][k]["val"]) and 0 < m["vrand"] <= 1
        assert {"vrand_threshold", "dice", "mismatch"} <= set(report[f"fold{k}"])
        assert len(list((repo / "plots" / "overlays").glob(f"fold{k}_*.png"))) == 1
    assert table["mean"]["vrand"] == pytest.approx(np.mean([table[f"fold{k}"]["vrand"] for k in range(5)]))
    width = max(map(len, run(repo, "dvc", "metrics", "show").stdout.splitlines()))
    assert width <= 120, width
    card = json.loads((repo / "models" / "card.json").read_text())
    assert card["cross_validated"]["vrand"]["mean"] == pytest.approx(table["mean"]["vrand"])
    assert "optimistic" in card["caveat"] and "± " in card["description"]
    assert "cell interior" in card["description"] and "ISBI 2012" in card["description"]
    assert card["trained"] == {"experiment": "cpu", "preset": "cpu", "steps": 20, "commit": head}, card["trained"]
    package = repo / "models" / "bioimageio.zip"  # the BioImage Model Zoo package: its own DVC output
    assert card["files"]["bioimageio"] == "models/bioimageio.zip"
    assert card["sha256_of"]["bioimageio.zip"] == hashlib.sha256(package.read_bytes()).hexdigest()
    bioimageio.check_package(package)  # bioimageio.core's model test, every weight format in the package
    assert "bioimageio.core's model test passed" in r.stderr and "| INFO" not in r.stdout + r.stderr
    assert not run(repo, "git", "status", "--porcelain", "dvc.yaml").stdout  # register wrote only its outs
    assert run(repo, "git", "check-ignore", "-q", "metrics/fold0.json").returncode != 0  # git tracks metrics
    assert run(repo, "git", "check-ignore", "-q", "plots/overlays").returncode == 0  # DVC caches images
    assert run(repo, "git", "check-ignore", "-q", "checkpoints/fold0").returncode == 0  # resume state: ignored
    check_plots(repo, tmp_path / "plots")

    shown = run(repo, "dvc", "exp", "show", "--csv", "--no-pager").stdout.splitlines()
    header, row = shown[0].split(","), next(r.split(",") for r in shown if r.startswith("cpu,"))
    col = header.index("metrics/fold0.json:vrand")
    assert float(row[col]) == pytest.approx(table["fold0"]["vrand"], abs=1e-4)
    r = experiment(repo, "cpu-2x", isbi, **{"train.max_steps": 2 * QUICK["train.max_steps"]})
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    diff = run(repo, "dvc", "metrics", "diff", "cpu", "cpu-2x").stdout.splitlines()
    assert len(diff) <= 44 and all(any(f"fold{k}.json" in ln for ln in diff) for k in range(5)), diff
    out = run(repo, "dvc", "exp", "show", "--no-pager", *EXP_SHOW).stdout  # the README's invocation
    assert max(map(len, out.splitlines())) <= 120 and "cpu-2x" in out, out
    assert "Running stage 'validate'" not in r.stdout  # data stages come from the cache

    # the first experiment again, after another one: a no-op that applies it (same commit, same model bytes)
    before = experiments(repo)
    t0 = time.monotonic()
    r = experiment(repo, "cpu", isbi)
    assert r.returncode == 0 and "Running stage" not in r.stdout, r.stdout[-3000:] + r.stderr[-3000:]
    assert "already ran these params and code: applying it" in r.stderr
    assert experiments(repo) == before and len(before) == 2
    model = repo / "models" / "registered" / "model.keras"
    assert hashlib.sha256(model.read_bytes()).hexdigest() == card["sha256"]
    print(f"make run's experiment again, unchanged, after another: {time.monotonic() - t0:.1f} s")

    # releasing is explicit: it refuses without a git identity, with a dirty workspace, and unpushable data
    no_id = {k: v for k, v in git_env().items() if not k.startswith("GIT_")} | {"HOME": str(tmp_path / "nohome")}
    bad = run(repo, "unet", "release", "cpu", env=no_id)
    assert bad.returncode == 1 and "git config user.email" in bad.stderr.strip().splitlines()[-1]
    (repo / "README.md").write_text("edited\n")
    bad = run(repo, "unet", "release", "cpu")
    assert bad.returncode == 1 and "uncommitted changes (README.md)" in bad.stderr
    git(repo, "checkout", "README.md")
    run(repo, "dvc", "remote", "modify", "--local", "local", "url", "/proc/no-such-remote")
    bad = run(repo, "unet", "release", "cpu")
    assert bad.returncode == 1 and "dvc push" in bad.stderr and not git(repo, "tag")
    assert not git(repo, "branch", "--list", "release/*")  # a refused release leaves no branch either
    run(repo, "dvc", "remote", "modify", "--local", "--unset", "local", "url")
    ok = run(repo, "unet", "release", "cpu")
    assert ok.returncode == 0, ok.stderr[-3000:]
    branch = json.loads(ok.stdout)["branch"]
    assert branch.startswith("release/cpu-") and git(repo, "rev-parse", "HEAD") == head  # HEAD stays
    gto = json.loads(run(repo, "gto", "show", "unet-isbi2012", "--json").stdout)
    assert gto[0]["version"] == "v0.0.1" and card["sha256"] in gto[0]["message"]
    assert f"experiment cpu; preset cpu, 20 steps, commit {head}" in gto[0]["message"], gto[0]["message"]
    assert "cell interior" in gto[0]["message"]
    assert [s["stage"] for s in gto[0]["stages"]] == ["dev"]
    got = run(repo, "dvc", "artifacts", "get", ".", "unet-isbi2012", "-o", str(tmp_path / "fetched.keras"))
    assert got.returncode == 0, got.stderr[-2000:]
    assert hashlib.sha256((tmp_path / "fetched.keras").read_bytes()).hexdigest() == card["sha256"]

    # a second clone of the release + dvc pull is the pipeline's state: nothing to reproduce
    clone = tmp_path / "clone"
    assert run(tmp_path, "git", "clone", "-q", "-b", branch, str(repo), str(clone)).returncode == 0
    run(clone, "dvc", "remote", "modify", "--local", "local", "url", str(repo / ".dvc-remote"))
    pulled = run(clone, "dvc", "pull")
    assert pulled.returncode == 0, pulled.stderr[-2000:]
    status = run(clone, "dvc", "status")
    assert "up to date" in status.stdout, status.stdout
    assert run(clone, "git", "status", "--porcelain").stdout == ""  # DVC's .gitignore files came with it
    again = run(clone, "dvc", "repro", env=git_env(ISBI_DATA_DIR=str(isbi)))
    assert again.returncode == 0 and "Running stage" not in again.stdout, again.stdout[-2000:]
    assert not (clone / "checkpoints").exists()  # resume state never travels


def test_dvc_repro_fails_on_bad_input_with_no_output(isbi, tmp_path):
    repo = make_repo(tmp_path / "repo")
    bad = tmp_path / "bad"
    shutil.copytree(isbi, bad, ignore=shutil.ignore_patterns("*.md"))
    raw = (bad / "train-labels.tif").read_bytes()
    (bad / "train-labels.tif").write_bytes(raw[: len(raw) // 2])
    apply(repo / "params.yaml", {"download.urls": [], "download.slice_mirrors": []})
    r = dvc(repo, "repro", "download", ISBI_DATA_DIR=str(bad))
    assert r.returncode != 0
    errors = [line for line in r.stderr.splitlines() if line.startswith("download: error:")]
    assert len(errors) == 1 and "train-labels.tif" in errors[0] and "truncated" in errors[0]
    assert not (repo / "data" / "raw").exists()
