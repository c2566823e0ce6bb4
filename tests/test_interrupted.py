"""``make run`` killed at any moment (SIGKILL to its whole process group) and run again: it recovers what DVC's
killed ``dvc exp run`` left in the repository, keeps the user's own edits, refuses a second run beside it, and
ends with exactly the results of an uninterrupted run; run again unchanged, it is a no-op."""

from __future__ import annotations

import io
import json
import os
import queue
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import yaml

from unet.results import read_metrics

from .conftest import ROOT
from .test_pipeline import experiments, git, git_env, make_repo

# 3 folds (the fold count is a param), 20 steps in epochs of 5, a checkpoint every 10
RUN_ARGS = (
    "-S split.folds=[0,1,2] -S train.max_steps=20 -S train.steps_per_epoch=5 -S train.checkpoint_every=10 "
    "-S evaluate.overlays=1"
)
# outputs that hold a time (a .keras file's save time, the zip entries' times, throughput) and so differ between
# any two runs, and the training curves, whose losses a resumed fold logs within 1e-6 of the uninterrupted run's
TIMED = (
    "model.keras",
    "models/registered",
    "models/bioimageio.zip",
    "models/card.json",
    "/metrics.json",
    "/plots",
    "plots/training.csv",
)


def make_run(repo: Path, isbi: Path) -> list[str]:
    return [
        "make",
        "--no-print-directory",
        "-C",
        str(repo),
        "run",
        f"VENV={ROOT / '.venv'}",
        "GPU=0",
        f"RUN_ARGS={RUN_ARGS}",
    ]


def env(isbi: Path) -> dict[str, str]:
    return git_env(ISBI_DATA_DIR=str(isbi), PYTHONUNBUFFERED="1")


def kill_when(repo: Path, isbi: Path, hit: Callable[[list[str]], bool], after_s: float = 0.0) -> list[str]:
    """Start ``make run``, SIGKILL its whole process group once ``hit(lines so far)`` (then ``after_s`` more)."""
    proc = subprocess.Popen(
        make_run(repo, isbi), env=env(isbi), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )  # fmt: skip
    lines: queue.Queue[str | None] = queue.Queue()
    threading.Thread(target=lambda: [*map(lines.put, proc.stdout or []), lines.put(None)], daemon=True).start()
    seen: list[str] = []
    deadline = time.monotonic() + 600
    try:
        while not hit(seen):
            line = lines.get(timeout=max(1.0, deadline - time.monotonic()))
            if line is None:
                pytest.fail("make run ended before the kill point:\n" + "".join(seen[-40:]))
            seen.append(line)
        time.sleep(after_s)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    return seen


def after(stage: str, text: str) -> Callable[[list[str]], bool]:
    """A line holding ``text`` printed after ``Running stage '<stage>'``."""

    def hit(lines: list[str]) -> bool:
        started = [i for i, ln in enumerate(lines) if ln.startswith(f"Running stage '{stage}'")]
        return bool(started) and any(text in ln for ln in lines[started[0] :])

    return hit


def outs(repo: Path) -> dict[str, str]:
    """Every output in ``dvc.lock``: path -> md5."""
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    return {o["path"]: o["md5"] for s in lock["stages"].values() for o in s.get("outs", [])}


def weights(path: Path) -> list[np.ndarray]:
    from unet.predict import load_model

    return [np.asarray(w) for w in load_model(path, np.dtype("uint8")).get_weights()]


@pytest.mark.slow
def test_a_killed_make_run_resumes_to_the_uninterrupted_result_and_keeps_the_users_edits(isbi, tmp_path):
    repo = make_repo(tmp_path / "repo")
    head = git(repo, "rev-parse", "HEAD")
    # the uninterrupted run: three train stages (the fold count is a param), and evaluate/register follow
    r = subprocess.run(make_run(repo, isbi), env=env(isbi), capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    per_fold = read_metrics(repo / "metrics")
    assert sorted(per_fold) == [0, 1, 2] and sorted(p.name for p in (repo / "metrics").iterdir())[-2:] == [
        "mean.json",
        "std.json",
    ]
    assert json.loads((repo / "models" / "card.json").read_text())["folds"][0] in (0, 1, 2)
    reference = {"outs": outs(repo), "train": {}, "models": tmp_path / "reference"}
    reference["curves"] = (repo / "plots" / "training.csv").read_text()
    for k in range(3):
        fold = repo / "models" / "folds" / f"fold{k}"
        reference["train"][k] = json.loads((fold / "metrics.json").read_text())
        shutil.copytree(fold, reference["models"] / f"fold{k}")

    # from the commit alone again (no experiment, run-cache, checkpoints or outputs), with edits of the user's
    git(repo, "reset", "-q", "--hard")
    subprocess.run(["dvc", "exp", "remove", "--all-commits"], cwd=repo, env=env(isbi), check=True, capture_output=True)
    for p in (".dvc/cache/runs", "checkpoints", "data", "models", "metrics", "plots", "reports", "dvc.lock"):
        shutil.rmtree(repo / p, ignore_errors=True) if (repo / p).is_dir() else (repo / p).unlink(missing_ok=True)
    (repo / "README.md").write_text("my unstaged edit\n")
    (repo / "notes.txt").write_text("my staged new file\n")
    git(repo, "add", "notes.txt")

    # killed in the data stages; a second make run meanwhile says so in one line and touches nothing
    def second_is_refused(lines: list[str]) -> bool:
        if not any(ln.startswith("Running stage 'validate'") for ln in lines):
            return False
        two = subprocess.run(make_run(repo, isbi), env=env(isbi), capture_output=True, text=True)
        ours = [ln for ln in two.stderr.splitlines() if not ln.startswith("make")]
        assert two.returncode != 0 and len(ours) == 1 and "another run is going on" in ours[0], two.stderr
        return True

    kill_when(repo, isbi, second_is_refused)
    assert git(repo, "symbolic-ref", "-q", "HEAD") == ""  # what DVC's killed `dvc exp run` leaves: HEAD detached
    kill_when(repo, isbi, after("train@1", "step 10/20"))  # inside a training step of the middle fold
    assert sorted(p.name for p in (repo / "checkpoints" / "fold1").iterdir()) == ["step-00000010"]
    lines = kill_when(repo, isbi, after("train@2", "Updating lock file"))  # between stages
    assert any("fold1/step-00000010 (step 10 of 20)" in ln for ln in lines), "".join(lines)  # train@1 resumed
    kill_when(repo, isbi, after("evaluate", "> python -m unet.stages.evaluate"), after_s=4)  # inside evaluate
    kill_when(repo, isbi, after("register", "> python -m unet.stages.register"), after_s=2)  # inside register

    t0 = time.monotonic()
    r = subprocess.run(make_run(repo, isbi), env=env(isbi), capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    recovered = [ln for ln in r.stderr.splitlines() if "was interrupted" in ln]
    assert len(recovered) == 1 and "HEAD re-attached" in recovered[0], r.stderr[-3000:]
    assert "Running stage 'train@" not in r.stdout  # every fold finished before; only register is left

    # exactly the uninterrupted run's results
    got = outs(repo)
    assert sorted(got) == sorted(reference["outs"])
    for path, md5 in reference["outs"].items():
        if not any(t in path for t in TIMED):
            assert got[path] == md5, path
    assert read_metrics(repo / "metrics") == per_fold
    # the curves: every (fold, step) row of the uninterrupted run, within 1e-6. DVC deletes a killed fold's
    # outputs (DVCLive's files with them) before running it again: the rows before its checkpoint come back from
    # the checkpoint, which carries the curves so far
    now = (repo / "plots" / "training.csv").read_text()
    rows = (np.loadtxt(io.StringIO(t), delimiter=",", skiprows=1) for t in (now, reference["curves"]))
    got, want = ({(r[0], r[1]): r[2:] for r in table} for table in rows)  # (fold, step) -> loss, soft Dice
    assert set(got) == set(want), sorted(set(got) ^ set(want))
    for key, row in got.items():
        np.testing.assert_allclose(row, want[key], atol=1e-6, err_msg=str(key))
    for k in range(3):
        fold = repo / "models" / "folds" / f"fold{k}"
        m, want = json.loads((fold / "metrics.json").read_text()), reference["train"][k]
        assert m["step"] == want["step"] == 20
        assert m["loss"] == pytest.approx(want["loss"], abs=1e-6) and m["soft_dice"] == pytest.approx(
            want["soft_dice"], abs=1e-6
        )
        for a, b in zip(
            weights(fold / "model.keras"), weights(reference["models"] / f"fold{k}" / "model.keras"), strict=True
        ):
            np.testing.assert_array_equal(a, b)

    # the repository is as the user left it, apart from the experiment's results
    assert git(repo, "symbolic-ref", "HEAD") == "refs/heads/" + git(repo, "branch", "--show-current")
    assert git(repo, "rev-parse", "HEAD") == head
    assert not git(repo, "for-each-ref", "refs/exps/exec/EXEC_BASELINE", "refs/exps/exec/EXEC_MERGE", "refs/unet")
    assert (repo / "README.md").read_text() == "my unstaged edit\n"
    assert (repo / "notes.txt").read_text() == "my staged new file\n"
    assert not (repo / ".dvc" / "tmp" / "unet-run.json").exists()
    print(f"resumed run after 5 kills: {time.monotonic() - t0:.1f} s")

    # unchanged, once the user's edits are committed or gone: a no-op that applies the same experiment (with
    # edits about, it runs again instead, as `dvc exp apply` would overwrite them: tests/test_recovery.py)
    git(repo, "checkout", "README.md")
    (repo / "notes.txt").unlink()
    exp = experiments(repo)
    t0 = time.monotonic()
    again = subprocess.run(make_run(repo, isbi), env=env(isbi), capture_output=True, text=True)
    assert again.returncode == 0 and "Running stage" not in again.stdout, again.stdout[-2000:] + again.stderr[-2000:]
    assert "already ran these params and code" in again.stderr
    assert experiments(repo) == exp and len(exp) == 1
    print(f"make run again, unchanged: {time.monotonic() - t0:.1f} s")
