"""What DVC writes in a repository: ``dvc.lock``, every stage output, and the ``.gitignore`` files it keeps."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def written_by_dvc(path: str, managed: set[str]) -> bool:
    """Whether ``path`` is a ``.gitignore`` file or one of ``managed`` (:func:`dvc_paths`) or inside one."""
    return Path(path).name == ".gitignore" or any(path == m or path.startswith(m + "/") for m in managed)


def dvc_paths(root: Path) -> set[str]:
    """``dvc.lock`` and every stage output, as paths relative to the repository."""
    from dvc.repo import Repo

    paths = {"dvc.lock"}
    with contextlib.suppress(Exception), Repo(str(root)) as repo:  # a broken dvc.yaml: dvc.lock alone
        paths |= {os.path.relpath(o.fs_path, repo.root_dir) for o in repo.index.outs}
    return paths


def stage_option(root: str | Path, stage: str, option: str, rev: str | None = None) -> str:
    """The value of ``option`` (e.g. ``--card``) in stage ``stage``'s command in ``root``'s ``dvc.yaml`` (as of
    commit ``rev``, else the workspace's): the one place each path is named, so tools that read a stage's
    output find it where the stage wrote it.

    Raises:
        ValueError: no such stage, a stage without one command string, or a command without the option.
    """
    import shlex

    import yaml

    from unet.ops.runner import git

    where = f"{rev}:dvc.yaml" if rev else str(Path(root) / "dvc.yaml")
    text = git(root, "show", where) if rev else (Path(root) / "dvc.yaml").read_text()
    stages = (yaml.safe_load(text) or {}).get("stages", {})
    if stage not in stages:
        raise ValueError(f"{where}: no stage {stage!r}")
    cmd = stages[stage].get("cmd") if isinstance(stages[stage], dict) else None
    if not isinstance(cmd, str):
        raise ValueError(f"{where}: stage {stage} has no single command string")
    args = [a.split("=", 1) if a.startswith(f"{option}=") else [a] for a in shlex.split(cmd)]
    flat = [part for a in args for part in a]
    if option not in flat[:-1]:
        raise ValueError(f"{where}: stage {stage}'s command has no {option} option")
    return flat[flat.index(option) + 1]
