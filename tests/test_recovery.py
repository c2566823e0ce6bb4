"""Recovery from a real ``dvc exp run`` killed by SIGKILL, on a two-stage toy pipeline (no Keras): what DVC
leaves (HEAD detached, files staged, params changed, its run refs) is undone, the user's edits stay, the stage
that finished is not run again, and a second run beside a live one is refused without touching it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from unet.ops import recovery

from .test_pipeline import experiments, git, git_env

DVC_YAML = """\
stages:
  a:
    cmd: python -c "import yaml; p = yaml.safe_load(open('params.yaml'))['p']; open('a.txt', 'w').write(str(p))"
    deps: [code.py]
    params: [p]
    outs: [a.txt]
  b:
    cmd: sh -c 'echo run >> b-runs.log; touch b-started; while [ ! -e go ]; do sleep 0.2; done; cp a.txt b.txt'
    deps: [a.txt]
    outs: [b.txt]
"""
# what `python -m unet.presets run` does around `dvc exp run`, as a process of its own to kill
DRIVER = """\
import subprocess, sys
from unet.ops.recovery import exclusive
with exclusive(".", "experiment 'x'", "x") as run:
    print(run.recovered or "nothing to recover", file=sys.stderr, flush=True)
    sys.exit(subprocess.run(["dvc", "exp", "run", "-n", "x", "-S", "p=2"], pass_fds=(run.fd,)).returncode)
"""


def start(repo: Path) -> subprocess.Popen:
    env = git_env(PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    return subprocess.Popen(
        [sys.executable, "-c", DRIVER], cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, start_new_session=True,
    )  # fmt: skip


def wait_for(path: Path, proc: subprocess.Popen) -> None:
    for _ in range(600):
        if path.exists():
            return
        if proc.poll() is not None:
            pytest.fail(f"the run ended early: {proc.communicate()}")
        time.sleep(0.1)
    pytest.fail(f"{path} never appeared")


def toy_repo(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "dvc.yaml").write_text(DVC_YAML)
    (repo / "params.yaml").write_text("p: 1\n")
    (repo / "README.md").write_text("committed\n")
    (repo / "code.py").write_text("# the stage's code\n")
    env = git_env()
    for cmd in (
        ["git", "init", "-q", "-b", "main"],
        ["dvc", "init", "-q"],
        ["git", "add", "-A"],
        ["git", "commit", "-qm", "toy"],
    ):
        subprocess.run(cmd, cwd=repo, check=True, env=env, capture_output=True)
    return repo


def test_a_killed_dvc_exp_run_is_recovered_and_resumed_and_a_second_run_is_refused(tmp_path):
    repo = toy_repo(tmp_path)
    head = git(repo, "rev-parse", "HEAD")
    (repo / "README.md").write_text("my unstaged edit\n")
    (repo / "notes.txt").write_text("my staged new file\n")
    git(repo, "add", "notes.txt")

    first = start(repo)
    wait_for(repo / "b-started", first)  # stage a finished, b runs
    second = start(repo)
    _, err = second.communicate(timeout=60)
    assert second.returncode == 1 and "another run is going on" in err and "experiment 'x'" in err, err
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    # what DVC's killed workspace run leaves
    assert git(repo, "symbolic-ref", "-q", "HEAD") == ""
    assert git(repo, "rev-parse", "-q", "--verify", "refs/exps/exec/EXEC_BASELINE")
    assert "p: 2" in (repo / "params.yaml").read_text() and git(repo, "diff", "--cached", "--name-only")

    (repo / "go").touch()
    third = start(repo)
    out, err = third.communicate(timeout=120)
    assert third.returncode == 0, out + err
    said = err.strip().splitlines()[0]
    assert said.startswith("an earlier run (experiment 'x', pid ") and "was interrupted: " in said, err
    for done in ("DVC run refs removed", "HEAD re-attached to main", "params.yaml restored", "git's index restored"):
        assert done in said, said
    assert "Stage 'a' didn't change" in out and (repo / "b-runs.log").read_text() == "run\nrun\n"  # a not again
    assert (repo / "b.txt").read_text() == "2"
    assert git(repo, "symbolic-ref", "HEAD") == "refs/heads/main" and git(repo, "rev-parse", "HEAD") == head
    assert (repo / "README.md").read_text() == "my unstaged edit\n"
    assert (repo / "notes.txt").read_text() == "my staged new file\n"
    refs = git(repo, "for-each-ref", "--format=%(refname)").splitlines()
    assert not [r for r in refs if r.startswith(("refs/unet/", *recovery.EXEC_REFS))], refs
    assert [r for r in refs if r.endswith("/x") and r.startswith("refs/exps/")]  # the experiment was made
    assert not (repo / ".dvc" / "tmp" / "unet-run.json").exists()


def test_a_rerun_is_a_no_op_only_for_the_same_params_and_code_and_never_over_the_users_edits(tmp_path):
    from unet.ops.experiments import unchanged_experiment, user_edits

    repo = toy_repo(tmp_path)
    (repo / "go").touch()
    r = subprocess.run(
        ["dvc", "exp", "run", "-n", "x", "-S", "p=2"], cwd=repo, env=git_env(), capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr
    sha = next(line.split()[0] for line in experiments(repo))
    assert unchanged_experiment(repo, "x", ["-S", "p=2"]) == sha
    assert unchanged_experiment(repo, "x", ["-S", "p=3"]) is None  # other params
    assert unchanged_experiment(repo, "x", ["-S", "p=2", "--force"]) is None  # an option of DVC's: run
    assert unchanged_experiment(repo, "y", ["-S", "p=2"]) is None  # no such experiment
    (repo / "code.py").write_text("# changed code\n")
    assert unchanged_experiment(repo, "x", ["-S", "p=2"]) is None
    (repo / "code.py").write_text("# the stage's code\n")
    assert unchanged_experiment(repo, "x", ["-S", "p=2"]) == sha
    assert user_edits(repo) == []  # the experiment's params and outputs are not the user's edits
    (repo / "README.md").write_text("my edit\n")
    assert user_edits(repo) == ["README.md"]  # so `dvc exp apply` would overwrite it: the run happens instead


def test_a_preset_run_after_an_experiment_starts_from_the_users_edits_not_the_committed_params(tmp_path, monkeypatch):
    from unet.ops.experiments import expect_base, run_experiment

    monkeypatch.setenv("PATH", git_env()["PATH"])  # dvc of this environment
    repo = toy_repo(tmp_path)
    (repo / "go").touch()
    committed = (repo / "params.yaml").read_text()
    (repo / "params.yaml").write_text(committed + "q: 7  # my own data's setting\n")
    fd = os.open(repo / ".git" / "lock-for-test", os.O_CREAT | os.O_RDWR)
    try:
        for name, p in (("x", 2), ("y", 3), ("y", 3)):  # the second y: params equal to an experiment's again
            assert run_experiment(name, ["-S", f"p={p}"], repo, fd, "cpu", lambda line: None) == 0
            assert (repo / "params.yaml").read_text() == f"p: {p}\nq: 7  # my own data's setting\n", name
            assert (repo / "a.txt").read_text() == str(p)
        # killed once DVC had committed the experiment, before the run recorded its base: the pending one serves
        (repo / "params.yaml").write_text(committed + "q: 8\n")
        expect_base(repo, (repo / "params.yaml").read_text())
        r = subprocess.run(["dvc", "exp", "run", "-n", "w", "-S", "p=5"], cwd=repo, env=git_env(), capture_output=True)
        assert r.returncode == 0 and (repo / "params.yaml").read_text() == "p: 5\nq: 8\n", r.stderr
        assert run_experiment("y", ["-S", "p=3"], repo, fd, "cpu", lambda line: None) == 0
        assert (repo / "params.yaml").read_text() == "p: 3\nq: 8\n"
        (repo / "params.yaml").write_text(committed)  # back to the committed params by hand: they are the base
        assert run_experiment("z", ["-S", "p=4"], repo, fd, "cpu", lambda line: None) == 0
        assert (repo / "params.yaml").read_text() == "p: 4\n"
    finally:
        os.close(fd)
