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


def stage_option(root: str | Path, stage: str, option: str) -> str:
    """The value of ``option`` (e.g. ``--card``) in stage ``stage``'s command in ``root``'s ``dvc.yaml``: the
    one place each path is named, so tools that read a stage's output find it where the stage wrote it.

    Raises:
        ValueError: no such stage, or its command has no such option.
    """
    import shlex

    import yaml

    path = Path(root) / "dvc.yaml"
    stages = (yaml.safe_load(path.read_text()) or {}).get("stages", {})
    if stage not in stages:
        raise ValueError(f"{path}: no stage {stage!r}")
    args = shlex.split(stages[stage]["cmd"])
    if option not in args[:-1]:
        raise ValueError(f"{path}: stage {stage}'s command has no {option} option")
    return args[args.index(option) + 1]
