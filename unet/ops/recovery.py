"""One run at a time in a repository, and what a killed run left behind undone before the next one starts.

``dvc exp run`` and ``dvc exp save`` work in the user's own repository (DVC 3.x: ``_stash_exp`` in
``dvc/repo/experiments/queue/base.py``, ``WorkspaceExecutor`` in ``executor/local.py``). They stash the
workspace (git's ``refs/stash``), detach HEAD, write the ``-S`` values into ``params.yaml`` and stage it, queue
the experiment on ``refs/exps/stash``, reset and pop the stash; then drop the queue entry, set
``refs/exps/exec/EXEC_{HEAD,MERGE,BASELINE}``, detach HEAD again, apply the experiment, run the stages (each
stages its ``dvc.lock`` entry and ``.gitignore`` files in git's index), commit to ``refs/exps/...``, and in a
``finally`` remove the ``EXEC`` refs, re-attach HEAD and reset the index. A SIGKILL skips that ``finally``: HEAD
stays detached, files stay staged, ``params.yaml`` holds the experiment's values, and the next ``dvc exp run``
fails ("Stash apply resulted in merge conflicts").

:func:`exclusive` wraps a run: it takes a lock that dies with its process (``flock``), records where the
repository stood (HEAD, git's index and the tracked files as commits, ``git stash create``-style: objects and
refs only, nothing in the workspace changes), and removes that record when the run ends by itself. A record
found on the next start is an interrupted run: :func:`recover` re-attaches HEAD, removes exactly the refs and
queue entries DVC's ``finally`` would have removed, restores files that are not DVC's (``params.yaml``, the
user's own edits) and git's index as they were, and leaves DVC's outputs and ``dvc.lock`` as the killed run
left them, so that the stages it finished are not run again and training resumes from its newest checkpoint.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from unet.ops.dvcfiles import dvc_paths, written_by_dvc
from unet.ops.runner import git, names, run
from unet.outputs import write_json

STATE = Path(".dvc") / "tmp"
REFS = "refs/unet/interrupted"  # keeps the recorded index and tracked files (two commits) from git gc
# what DVC's WorkspaceExecutor.cleanup removes (EXEC_HEAD and EXEC_APPLY outlive a run that ends normally)
EXEC_REFS = ("refs/exps/exec/EXEC_BASELINE", "refs/exps/exec/EXEC_MERGE", "refs/exps/exec/EXEC_BRANCH")
# an identity for the snapshot objects only (git stash create makes commits; they are never on a branch)
SNAPSHOT_ID = {
    f"GIT_{r}_{k}": v for r in ("AUTHOR", "COMMITTER") for k, v in (("NAME", "unet"), ("EMAIL", "unet@localhost"))
}


class RunError(RuntimeError):
    """A run that cannot start here; the message says why in one line."""


@dataclass(frozen=True)
class Run:
    """A run holding the repository: what an interrupted one left and was undone (one line, or ``None``), and
    the lock's file descriptor, to pass to the processes the run starts (``pass_fds``) so that the lock is
    held while any of them lives, not only while this process does."""

    recovered: str | None
    fd: int


@contextlib.contextmanager
def exclusive(repo: str | Path, what: str, experiment: str | None = None) -> Iterator[Run]:
    """Run the body alone in the DVC repository holding ``repo``, after undoing what an interrupted run left.

    A body that returns, exits or raises an ``Exception`` ends the run, unless DVC's own run state is still
    there (its process was killed under this one): then, as after a signal (SIGKILL, SIGTERM, Ctrl-C), the
    record stays for the next start, which undoes what is left.

    Raises:
        RunError: another run holds the lock, or DVC's workspace run is still alive (nothing is touched).
        CommandError: git cannot record the state.
    """
    from dvc.repo import Repo

    root = Path(Repo.find_root(str(repo)))
    (root / STATE).mkdir(parents=True, exist_ok=True)
    with open(root / STATE / "unet-run.lock", "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            other = _holder(lock.read())
            raise RunError(
                f"another run is going on in {root} ({other.get('what', 'unknown')}, pid "
                f"{other.get('pid', '?')}, since {other.get('started', '?')}): wait for it or stop it; "
                "nothing was touched"
            ) from None
        lock.truncate(0)  # who holds it, for a run that finds it taken
        lock.write(json.dumps({"what": what, "pid": os.getpid(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}))
        lock.flush()
        report = recover(root)
        _begin(root, what, experiment)
        try:
            yield Run(report, lock.fileno())
        except (Exception, SystemExit):
            if not _dvc_left_state(root):
                _end(root)
            raise
        if not _dvc_left_state(root):
            _end(root)


def recover(repo: str | Path) -> str | None:
    """Undo what an interrupted run of :func:`exclusive` left in ``repo``; say what was done in one line, or
    return ``None`` when no run was interrupted. Call it only while holding the lock.

    Files and git's index are put back only while HEAD is still the commit the run started from, and a file
    only where it holds what DVC put there (HEAD's version after DVC's ``reset --hard``, or the experiment's,
    as ``params.yaml``): an edit made since is never overwritten.

    Raises:
        RunError: DVC's workspace run (``.dvc/tmp/exps/run/workspace``) is still alive.
    """
    root = Path(repo)
    j = _journal(root)
    if j is None:
        return None
    _check_dvc_dead(root)
    done = []
    if git(root, "rev-parse", "HEAD") == j["head"]:
        merge = git(root, "rev-parse", "-q", "--verify", EXEC_REFS[1], check=False)  # the experiment's commit
        ours = ["HEAD", *([merge] if merge else []), *_queued(root, j.get("experiment"))]
        done += [_restore_files(root, j["worktree"], ours), _repair_lock(root, j["worktree"])]
        done.append(_restore_index(root, j["index"]))
    else:
        done.append("HEAD moved since, so files and git's index were left as they are")
    done += [*_dvc_refs(root, j.get("experiment")), _reattach(root, j)]
    _end(root)
    did = "; ".join(d for d in done if d) or "nothing of it was left to undo"
    return f"an earlier run ({j['what']}, pid {j['pid']}, started {j['started']}) was interrupted: {did}"


def _check_dvc_dead(root: Path) -> None:
    import psutil

    try:
        pid = int(json.loads((root / STATE / "exps" / "run" / "workspace" / "workspace.json").read_text())["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return
    try:
        proc = psutil.Process(pid)  # not a zombie, and DVC's (a pid reused since by another program is not)
        alive = proc.status() != psutil.STATUS_ZOMBIE and "dvc" in " ".join(proc.cmdline())
    except psutil.Error:  # no such process
        alive = False
    if alive:
        raise RunError(f"DVC's experiment run (pid {pid}) is still going on in {root}: wait for it or stop it")


def _dvc_left_state(root: Path) -> bool:
    """Whether a ``dvc exp run``/``save`` died here without its cleanup (its run refs are still set)."""
    return any(git(root, "rev-parse", "-q", "--verify", r, check=False) for r in EXEC_REFS[:2])


def _holder(text: str) -> dict[str, Any]:
    try:
        return dict(json.loads(text))
    except ValueError:  # written between our open and its flush
        return {}


def _journal(root: Path) -> dict[str, Any] | None:
    try:
        return dict(json.loads((root / STATE / "unet-run.json").read_text()))
    except (OSError, ValueError):
        return None


def _begin(root: Path, what: str, experiment: str | None) -> None:
    head = git(root, "rev-parse", "HEAD")
    # git's index as it is (staged new files included), as a commit: a ref to a bare tree breaks git fetch
    # in this repository ("object is not a committish", as `dvc exp pull` found)
    index = git(root, "commit-tree", git(root, "write-tree"), "-m", "unet: git's index before a run", env=SNAPSHOT_ID)
    worktree = git(root, "stash", "create", env=SNAPSHOT_ID) or head  # tracked files; empty: no changes
    git(root, "update-ref", f"{REFS}/index", index)
    git(root, "update-ref", f"{REFS}/worktree", worktree)
    write_json(
        root / STATE / "unet-run.json",
        {
            "what": what,
            "experiment": experiment,
            "pid": os.getpid(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S"),
            "epoch": time.time(),
            "head_ref": git(root, "symbolic-ref", "-q", "HEAD", check=False) or None,
            "head": head,
            "index": index,
            "worktree": worktree,
        },
    )


def _end(root: Path) -> None:
    (root / STATE / "unet-run.json").unlink(missing_ok=True)
    for ref in ("index", "worktree"):
        git(root, "update-ref", "-d", f"{REFS}/{ref}", check=False)


def _dvc_refs(root: Path, experiment: str | None) -> list[str]:
    """Remove DVC's run refs and the killed run's entry in DVC's queue (``refs/exps/stash``)."""
    from dvc.repo.experiments.refs import WORKSPACE_STASH
    from dvc.repo.experiments.stash import ExpStash
    from scmrepo.git import Git

    done = []
    refs = [r for r in EXEC_REFS if git(root, "rev-parse", "-q", "--verify", r, check=False)]
    for ref in refs:
        git(root, "update-ref", "-d", ref)
    if refs:
        done.append(f"{len(refs)} DVC run refs removed")
    with Git(str(root)) as scm:
        stash = ExpStash(scm, WORKSPACE_STASH)
        queued = [e for e in stash.stash_revs.values() if e.name == experiment]
        stash.remove_revs(queued)
    if queued:
        done.append(f"{len(queued)} queued DVC experiment(s) dropped")
    return done


def _queued(root: Path, experiment: str | None) -> list[str]:
    """The commits of ``experiment``'s entries in DVC's queue (``dvc exp run`` killed before it started)."""
    from dvc.repo.experiments.refs import WORKSPACE_STASH
    from dvc.repo.experiments.stash import ExpStash
    from scmrepo.git import Git

    with Git(str(root)) as scm:
        return [rev for rev, e in ExpStash(scm, WORKSPACE_STASH).stash_revs.items() if e.name == experiment]


def _reattach(root: Path, j: dict[str, Any]) -> str | None:
    """Re-attach HEAD to the branch it was on, when DVC left it detached and the branch has not moved."""
    branch = j.get("head_ref")
    if not branch or git(root, "symbolic-ref", "-q", "HEAD", check=False):
        return None
    if git(root, "rev-parse", "-q", "--verify", branch, check=False) != j["head"]:
        return None
    git(root, "symbolic-ref", "HEAD", branch)
    return f"HEAD re-attached to {branch.removeprefix('refs/heads/')}"


def _restore_files(root: Path, snapshot: str, dvc_wrote: list[str]) -> str | None:
    """Tracked files that are not DVC's (``params.yaml``, the user's edits) as they were before the run, where
    they now hold what DVC wrote (their version at one of ``dvc_wrote``); ``dvc.lock``, ``.gitignore`` files
    and stage outputs stay as the run left them (its finished stages)."""
    managed = dvc_paths(root)
    changed = names(root, "diff", "--name-only", "--no-renames", "-z", snapshot)
    candidates = [p for p in changed if not written_by_dvc(p, managed)]
    had = set(names(root, "ls-tree", "-r", "-z", "--name-only", snapshot, "--", *candidates)) if candidates else set()
    restore = [p for p in candidates if p in had and _holds(root, p, dvc_wrote)]
    if not restore:
        return None
    git(root, "checkout", snapshot, "--", *restore)
    return f"{', '.join(restore[:4])}{', ...' if len(restore) > 4 else ''} restored"


def _holds(root: Path, path: str, revs: list[str]) -> bool:
    """Whether the file ``path`` holds its version at one of ``revs`` (absent there and here counts too)."""
    if not (root / path).is_file():
        return True  # deleted by DVC's reset (the snapshot has it)
    blob = git(root, "hash-object", "--", path)
    return any(git(root, "rev-parse", "-q", "--verify", f"{r}:{path}", check=False) == blob for r in revs)


def _repair_lock(root: Path, snapshot: str) -> str | None:
    """``dvc.lock`` as it was before the run when the kill cut it short (DVC rewrites it in place after each
    stage); the stages that the run finished then come back from DVC's run-cache instead of running again."""
    from dvc.schema import COMPILED_LOCKFILE_SCHEMA
    from dvc.utils import strictyaml

    lock = root / "dvc.lock"
    if not lock.exists():
        return None
    try:
        strictyaml.load(str(lock), COMPILED_LOCKFILE_SCHEMA)
        return None
    except Exception:  # DVC's own validation: an empty, truncated or half-written file
        pass
    if run(["git", "cat-file", "-e", f"{snapshot}:dvc.lock"], root, check=False).returncode:
        lock.unlink()
        return "dvc.lock, cut short by the kill, removed (there was none before the run)"
    git(root, "checkout", snapshot, "--", "dvc.lock")
    return "dvc.lock, cut short by the kill, put back as it was before the run"


def _restore_index(root: Path, tree: str) -> str | None:
    """Git's index entries that differ from before the run, for DVC's files and ``params.yaml`` (what DVC
    stages), as they were: the killed run's staging undone, anything else staged left alone."""
    managed = dvc_paths(root) | {"params.yaml"}
    staged = [p for p in names(root, "diff", "--cached", "--name-only", "-z", tree) if written_by_dvc(p, managed)]
    if not staged:
        return None
    git(root, "restore", "--staged", f"--source={tree}", "--", *staged)
    return f"git's index restored ({len(staged)} file(s) unstaged)"
