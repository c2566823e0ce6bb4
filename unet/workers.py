"""A stage run on another machine, brought back as if it had run here: what a worker's clone needs to reproduce
one ``train@k`` exactly as this workspace would (the commit, the workspace's ``params.yaml`` and ``dvc.lock``,
the stage's inputs on the DVC remote), and how its result joins this workspace's ``dvc.lock``.

The worker records its run as a DVC experiment (``dvc exp save`` + ``dvc exp push``): its ``dvc.lock`` entry
and the ``cache: false`` outputs travel in the experiment's git commit, the cached outputs through the DVC
remote. Here the entry is written into ``dvc.lock``, the outputs are restored from that commit and the cache,
and ``dvc status`` then has to find the stage unchanged: DVC itself checks that the worker ran the same
command on the same deps and params, and that the outputs are the ones it recorded.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from unet.ops import experiments
from unet.ops.runner import CommandError, git, run


def _stage(dvc: Any, name: str) -> Any:
    """Stage ``name`` of the repository's dvc.yaml (``dvc.stage.collect`` would read it from the cwd's)."""
    return next(s for s in dvc.index.stages if s.name == name)


def _deps(repo: str | Path, stage: str) -> tuple[list[str], list[str]]:
    from dvc.dependency.param import ParamsDependency
    from dvc.repo import Repo

    with Repo(str(repo)) as dvc:
        produced = {str(o.def_path) for s in dvc.index.stages for o in s.outs}
        deps = [str(d.def_path) for d in _stage(dvc, stage).deps if not isinstance(d, ParamsDependency)]
    return [d for d in deps if d in produced], [d for d in deps if d not in produced]


def fold_inputs(repo: str | Path, stage: str) -> list[str]:
    """The deps of ``stage`` that other stages write (``data/raw``, ``data/folds.json`` for ``train@k``): what a
    worker pulls from the DVC remote; the rest of its deps are code, which the commit holds."""
    return _deps(repo, stage)[0]


def uncached_outs(repo: str | Path, stage: str) -> list[str]:
    """The ``cache: false`` outputs of ``stage`` (git's to carry, not the DVC remote's)."""
    from dvc.repo import Repo

    with Repo(str(repo)) as dvc:
        return [str(o.def_path) for o in _stage(dvc, stage).outs if not o.use_cache]


def changed(repo: str | Path, stage: str) -> dict[str, Any]:
    """``dvc status STAGE`` as a dict: empty when its ``dvc.lock`` entry matches the workspace."""
    r = run(["dvc", "status", "--json", stage], repo, label=f"dvc status {stage}")
    status: dict[str, Any] = json.loads(r.stdout or "{}")
    return status


def shareable_head(repo: str | Path, stage: str, remote: str = "origin") -> str:
    """The commit workers check out for ``stage``; ``ValueError`` when they cannot run what this workspace
    would: its code (a dep of the stage, or ``dvc.yaml``) has uncommitted changes, or the commit is not on
    the git remote."""
    code = ["dvc.yaml", *_deps(repo, stage)[1]]
    edited = git(repo, "diff", "--name-only", "HEAD", "--", *code, check=False).split()
    if edited:
        raise ValueError(f"{stage}: uncommitted changes in {', '.join(edited)}: workers train the commit; commit them")
    head = git(repo, "rev-parse", "HEAD", check=False)
    fetched = run(["git", "fetch", "--quiet", remote], repo, check=False)
    if fetched.returncode != 0:
        raise ValueError(f"git fetch {remote}: {fetched.stderr.strip()}")
    if not git(repo, "branch", "--remotes", "--contains", head, check=False):
        raise ValueError(f"commit {head[:12]} is not on the git remote '{remote}': push it, workers check it out")
    return head


def experiment_ref(repo: str | Path, name: str) -> str:
    """The git ref of the local DVC experiment ``name`` (``refs/exps/../name``)."""
    found = experiments.named(repo, name)
    if len(found) != 1:
        raise ValueError(f"experiment {name!r}: {len(found)} refs found in refs/exps, expected 1")
    return found[0][0]


def adopt(repo: str | Path, stage: str, ref: str) -> dict[str, Any]:
    """Make ``stage`` in this workspace the run recorded by the experiment commit ``ref``: its ``dvc.lock``
    entry, its ``cache: false`` outputs from the commit, its cached ones pulled from the DVC remote. Raises
    ``RuntimeError`` unless ``dvc status`` then finds the stage unchanged; returns the entry."""
    from dvc.utils.serialize import modify_yaml

    shown = run(["git", "show", f"{ref}:dvc.lock"], repo, check=False)
    entry = yaml.safe_load(shown.stdout or "{}").get("stages", {}).get(stage)
    if shown.returncode != 0 or entry is None:
        raise RuntimeError(f"{stage}: the worker's commit {ref} has no dvc.lock entry for it")
    for path in uncached_outs(repo, stage):
        _remove(Path(repo) / path)  # as `dvc repro` clears a stage's outputs before it runs
        restored = run(["git", "restore", f"--source={ref}", "--worktree", "--", path], repo, check=False)
        if restored.returncode != 0:
            raise RuntimeError(f"{stage}: {path} is missing from the worker's commit {ref}")
    with modify_yaml(str(Path(repo) / "dvc.lock")) as lock:
        lock.setdefault("schema", "2.0")
        lock.setdefault("stages", {})[stage] = entry
    _dvc(repo, stage, "pull", "--force")  # its cached outputs, from the DVC remote
    status = changed(repo, stage)
    if status:
        raise RuntimeError(f"{stage}: the worker's run does not match this workspace: {json.dumps(status)}")
    _dvc(repo, stage, "commit", "--force")  # hashes unchanged; writes the .gitignore DVC keeps for the outputs
    return dict(entry)


def _dvc(repo: str | Path, stage: str, command: str, *args: str) -> None:
    r = run(["dvc", command, *args, stage], repo, check=False)
    if r.returncode != 0:
        raise CommandError(f"{stage}: dvc {command} failed: {r.stderr.strip()[-500:]}")


def _remove(path: Path) -> None:
    import shutil

    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()
