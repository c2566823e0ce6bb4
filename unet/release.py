"""Releasing: turn a chosen DVC experiment into a git branch holding its record (``dvc.lock``, params, metrics,
the model card), push its data to the DVC remote, and tag it as a new GTO version in a stage.

Nothing here runs as part of the pipeline: ``unet release EXP`` (``make release EXP=...``) is explicit. The
user's branch, workspace and history are left as they are; the release lives on ``release/<exp>-<sha7>``,
and the GTO tags point at that commit, so ``gto show`` lists the version and ``dvc artifacts get`` resolves it.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from unet.ops import experiments
from unet.ops.runner import CommandError, Result, dvc, has_identity, run

log = logging.getLogger(__name__)


class ReleaseError(RuntimeError):
    """A release that must not happen; the message says why in one line."""


def _run(cmd: list[str], cwd: Path, check: bool = True) -> Result[str]:
    """:func:`unet.ops.runner.run`, a failure named by the command's first three words (``gto register NAME``)."""
    return run(cmd, cwd, check=check, label=" ".join(cmd[:3]))


def experiment_commit(repo: Path, name: str) -> str:
    """The commit of experiment ``name``, preferring one based on HEAD."""
    found = experiments.named(repo, name)
    if not found:
        raise ReleaseError(f"experiment {name!r} not found (dvc exp show lists the experiments)")
    return found[0][1]


def check_identity(repo: Path) -> None:
    """GTO's tags are annotated: refuse before anything is written when git has no identity."""
    if not has_identity(repo):
        raise ReleaseError(
            "git has no identity for the release tags: set git config user.email and git config user.name"
        )


def check_clean(repo: Path) -> None:
    """Refuse uncommitted changes to tracked files, unless they are exactly some experiment's results (what
    ``dvc exp run`` leaves in the workspace)."""
    status = _run(["git", "status", "--porcelain", "--untracked-files=no"], repo).stdout.splitlines()
    changed = [line[3:] for line in status]
    if not changed:
        return
    exps = experiments.commits(repo)
    if any(_same(repo, sha, changed) for sha in exps):
        return
    mine = [f for f in changed if not any(_same(repo, sha, [f]) for sha in exps)] or changed
    shown = ", ".join(mine[:5]) + (", ..." if len(mine) > 5 else "")
    raise ReleaseError(f"the workspace has uncommitted changes ({shown}): commit or stash them first")


def _same(repo: Path, sha: str, paths: list[str]) -> bool:
    """Whether the workspace's ``paths`` equal their versions at ``sha``."""
    return _run(["git", "diff", "--quiet", sha, "--", *paths], repo, check=False).returncode == 0


def check_remote(repo: Path) -> str:
    """The default DVC remote's name; refuse when there is none."""
    remote = dvc(repo, "remote", "default", check=False)
    if not remote:
        raise ReleaseError("no default DVC remote to push the model to: dvc remote add -d NAME URL")
    return remote


def push_data(repo: Path, rev: str, remote: str) -> int:
    """Push every cached output of commit ``rev`` to ``remote``; raise unless all of it is there after.

    DVC resolves a relative local remote (like the default ``../.dvc-remote``) against the git tree when it
    pushes a revision other than the workspace, which lands outside the repository; a local remote is
    therefore pushed through a temporary ``--local`` remote with its absolute path.
    """
    from dvc.repo import Repo

    with Repo(str(repo)) as dvc:
        url = str(dvc.config["remote"][remote]["url"])
    local = "://" not in url
    name = "unet-release-tmp" if local else remote
    if local:
        _run(["dvc", "remote", "add", "--local", "-f", name, str(Path(url).resolve())], repo)
    try:
        with Repo(str(repo)) as dvc:
            pushed = int(dvc.push(revs=[rev], workspace=False, remote=name))
    except Exception as exc:  # DVC raises several types for a missing cache or an unreachable remote
        raise ReleaseError(f"dvc push of {rev} to remote {remote!r} failed: {str(exc).splitlines()[0]}") from exc
    finally:
        if local:
            _run(["dvc", "remote", "remove", "--local", name], repo, check=False)
    if local:
        missing = [p for p in locked_hashes(repo, rev) if not (Path(url) / "files" / "md5" / p[:2] / p[2:]).exists()]
        if missing:
            raise ReleaseError(f"dvc push of {rev} to remote {remote!r}: {len(missing)} objects missing there")
    return pushed


def locked_hashes(repo: Path, rev: str) -> list[str]:
    """md5 of every cached output at ``rev`` (directories as their ``.dir`` manifests)."""
    from dvc.repo import Repo

    with Repo(str(repo)) as dvc:
        for _ in dvc.brancher(revs=[rev], workspace=False):
            return [str(o.hash_info.value) for o in dvc.index.outs if o.use_cache and o.hash_info.value]
    return []


def gto(repo: Path, *args: str) -> str:
    """Run ``gto ARGS`` in ``repo``; its output."""
    return _run(["gto", *args], repo).stdout


def release(repo: str | Path, experiment: str, name: str, stage: str, card_path: str) -> dict[str, Any]:
    """Release ``experiment`` as a new GTO version of artifact ``name``, assigned to ``stage``.

    Everything is checked before anything is written; a branch made here is removed again if a later step
    fails, so a refused release leaves no branch and no tag.

    Raises:
        ReleaseError: no git identity, a dirty workspace, an unknown experiment, an experiment without a card
            or without artifact ``name`` in its ``dvc.yaml``, no DVC remote, or data that did not reach the
            remote.
        CommandError: a git, DVC or GTO command that failed.
    """
    repo = Path(repo)
    check_identity(repo)
    sha = experiment_commit(repo, experiment)
    check_clean(repo)
    remote = check_remote(repo)
    card = read_card(repo, sha, card_path, name)
    branch = f"release/{experiment}-{sha[:7]}"  # one branch per experiment commit: a rerun is a new release
    made = not _run(["git", "rev-parse", "--verify", "-q", branch], repo, check=False).stdout.strip()
    if made:
        _run(["git", "branch", branch, sha], repo)  # what `dvc exp branch` does, under a name of our choosing
    try:
        push_data(repo, sha, remote)
        return _tag(repo, name, stage, branch, card, experiment)
    except (ReleaseError, CommandError):
        if made:
            _run(["git", "branch", "-D", branch], repo, check=False)
        raise


def read_card(repo: Path, sha: str, card_path: str, name: str) -> dict[str, Any]:
    """The experiment's model card (a DVC-cached output of register, read from the cache as of ``sha``); also
    check that its ``dvc.yaml`` declares artifact ``name``."""
    import dvc.api
    from ruamel.yaml import YAML

    try:
        text = dvc.api.read(card_path, repo=str(repo), rev=sha)
    except Exception as exc:  # DVC raises several types for a path it does not track or a cache without it
        raise ReleaseError(
            f"experiment commit {sha[:7]}: no {card_path} in it or in the DVC cache (run the register stage, "
            f"or dvc pull): {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
        ) from exc
    dvc_yaml = YAML(typ="safe", pure=True).load(_run(["git", "show", f"{sha}:dvc.yaml"], repo).stdout)
    if name not in (dvc_yaml.get("artifacts") or {}):
        raise ReleaseError(f"register.name {name!r} is not an artifact in dvc.yaml (artifacts: section)")
    return dict(json.loads(text))


def _tag(repo: Path, name: str, stage: str, branch: str, card: dict[str, Any], experiment: str) -> dict[str, Any]:
    """GTO version (annotated with the card's description and the model's sha256) and stage of ``branch``."""
    listed = _run(["gto", "show", name, "--json"], repo, check=False)  # fails while the artifact has no version
    shown = json.loads(listed.stdout) if listed.returncode == 0 and listed.stdout.strip() else []
    for v in shown if isinstance(shown, list) else []:
        if card["sha256"] in (v.get("message") or ""):
            log.info("%s %s already holds this model", name, v["version"])
            _run(["gto", "assign", name, "--version", v["version"], "--stage", stage], repo, check=False)
            return {"version": v["version"], "stage": stage, "branch": branch}
    run = card.get("trained") or {}  # the run that trained it (cards written before it was recorded: none)
    trained = f"preset {run.get('preset') or 'none'}, {run.get('steps', '?')} steps, commit {run.get('commit') or '?'}"
    message = f"{card['description']} (model.keras sha256 {card['sha256']}; experiment {experiment}; {trained})"
    _run(["gto", "register", name, branch, "--message", message], repo)
    version = json.loads(gto(repo, "show", name, "--json"))[0]["version"]
    gto(repo, "assign", name, "--version", version, "--stage", stage)
    log.info("released %s %s (stage %s) from experiment %s on %s", name, version, stage, experiment, branch)
    return {"version": version, "stage": stage, "branch": branch}
