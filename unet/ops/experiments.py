"""DVC experiments in a repository, found in one place: ``refs/exps``, where ``dvc exp run`` and ``dvc exp
save`` commit each experiment (``refs/exps/<2 hex>/<38 hex>/<name>``: the commit it is based on, split, and
its name), beside DVC's own run refs (``refs/exps/exec/...``, ``refs/exps/stash``).

Also running one as ``python -m unet.presets run`` does (:func:`run_experiment`) and what that asks of the
others: whether it already ran (:func:`unchanged_experiment`), what in the workspace is the user's
(:func:`user_edits`), the params an experiment started from (:func:`from_baseline`), and the git
identity its commit is signed with (:func:`experiment_env`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from unet.ops.dvcfiles import dvc_paths, written_by_dvc
from unet.ops.runner import git, has_identity, names, run, stream
from unet.outputs import atomic_path

log = logging.getLogger(__name__)


def refs(repo: str | Path = ".") -> list[tuple[str, str]]:
    """Every ref under ``refs/exps`` and its commit: the experiments and DVC's own run refs."""
    listed = git(repo, "for-each-ref", "refs/exps", "--format=%(refname) %(objectname)")
    return [(ref, sha) for ref, sha in (line.split() for line in listed.splitlines())]


def commits(repo: str | Path = ".") -> list[str]:
    """The commits of every ref under ``refs/exps``."""
    return [sha for _, sha in refs(repo)]


def based_on(commit: str) -> str:
    """The prefix of the refs of experiments based on ``commit``."""
    return f"refs/exps/{commit[:2]}/{commit[2:]}/"


def of_head(repo: str | Path = ".") -> dict[str, str]:
    """DVC experiments based on the commit HEAD is at: name -> commit."""
    prefix = based_on(git(repo, "rev-parse", "HEAD"))
    return {ref.rsplit("/", 1)[1]: sha for ref, sha in refs(repo) if ref.startswith(prefix)}


def named(repo: str | Path, name: str) -> list[tuple[str, str]]:
    """The refs of experiments called ``name`` and their commits, those based on HEAD first."""
    prefix = based_on(git(repo, "rev-parse", "HEAD"))
    found = [(ref, sha) for ref, sha in refs(repo) if ref.rsplit("/", 1)[-1] == name]
    return sorted(found, key=lambda found: not found[0].startswith(prefix))


def committed_params(cwd: str | Path = ".") -> str | None:
    """The committed params.yaml when the workspace's copy holds an experiment's values (what ``dvc exp run
    -S`` leaves there), else ``None``: the workspace copy is the committed one, or edits of your own."""
    workspace = (Path(cwd) / "params.yaml").read_text()
    head = run(["git", "show", "HEAD:params.yaml"], cwd, check=False)
    if head.returncode != 0 or head.stdout == workspace:
        return None
    shown = (run(["git", "show", f"{sha}:params.yaml"], cwd, check=False).stdout for sha in commits(cwd))
    return head.stdout if workspace in shown else None


BASES = Path(".dvc") / "tmp" / "unet-params-bases.json"  # DVC's own git-ignored scratch folder
PENDING = "pending"  # the base of a run not known to have finished


def remember_base(cwd: str | Path, base: str) -> None:
    """Record that the workspace's params.yaml, as an experiment left it, was made from ``base`` (the params
    the experiment started from: the committed ones or edits of the user's), for :func:`from_baseline`."""
    now = (Path(cwd) / "params.yaml").read_text()
    bases = _bases(Path(cwd) / BASES)
    bases.pop(PENDING, None)
    if now != base:
        bases.pop(_digest(now), None)
        bases[_digest(now)] = base  # newest last; the 100 newest kept
    _write_bases(cwd, bases)


def expect_base(cwd: str | Path, base: str) -> None:
    """Record ``base`` as the params of the experiment about to run, before it runs: a run killed after DVC
    committed it, before :func:`remember_base`, still leaves its base known."""
    _write_bases(cwd, {**_bases(Path(cwd) / BASES), PENDING: base})


def _write_bases(cwd: str | Path, bases: dict[str, str]) -> None:
    path = Path(cwd) / BASES
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(dict(list(bases.items())[-100:]), indent=1))


def from_baseline(cwd: str | Path = ".") -> None:
    """Make presets apply to the params an experiment started from: after it the workspace's params.yaml holds
    its values, which a later preset (``gpu`` is empty) would otherwise inherit. Those are replaced by what the
    experiment started from (:func:`remember_base`): the committed params, or your own edits of them, which are
    kept, run after run; the committed ones when that is not known."""
    committed = committed_params(cwd)
    if committed is None:
        return
    workspace = (Path(cwd) / "params.yaml").read_text()
    bases = _bases(Path(cwd) / BASES)
    base = bases.get(_digest(workspace), bases.get(PENDING))  # pending: the run that left them was killed
    with atomic_path(Path(cwd) / "params.yaml") as tmp:
        tmp.write_text(base if base is not None else committed)
    if base is not None and base != committed:
        log.info("params.yaml held an earlier experiment's values: starting from your edits it started from")
    else:
        log.info("params.yaml held an earlier experiment's values: starting from the committed ones")


def _bases(path: Path) -> dict[str, str]:
    try:
        found = json.loads(path.read_text())
    except (OSError, ValueError):  # none yet, or unreadable: the committed params are the base
        return {}
    return found if isinstance(found, dict) else {}


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def experiment_env(cwd: str | Path = ".") -> dict[str, str]:
    """Environment for ``dvc exp run/save``: DVC commits each experiment to a ref of its own (refs/exps,
    on no branch) and needs a git identity for it. Without one, the ref is signed 'unet experiment';
    releasing (``unet release``) never falls back like this."""
    if has_identity(cwd):
        return {}
    log.info("git has no identity: the experiment's ref is signed 'unet experiment'")
    env = {}
    for role in ("AUTHOR", "COMMITTER"):
        env[f"GIT_{role}_NAME"], env[f"GIT_{role}_EMAIL"] = "unet experiment", "unet-experiment@localhost"
    return env


def run_experiment(
    name: str, sets: list[str], cwd: str | Path, fd: int, preset: str, say: Callable[[str], None]
) -> int:
    """``dvc exp run -n NAME SETS`` (``-S KEY=VALUE ...``) from the committed params, with the repository's lock
    held (``fd``, passed on to DVC so that it holds it too); DVC's output goes to ``say`` line by line, less
    the chatter of libraries. Returns its exit status.

    An experiment of the same name on this commit whose params and stage inputs equal this run's is applied to
    the workspace (``dvc exp apply``) instead, when the workspace holds no edits of the user's: the same
    experiment, the same model, nothing run. Any other one of that name is replaced; DVC's run-cache restores
    every stage whose inputs did not change."""
    from_baseline(cwd)
    same = unchanged_experiment(cwd, name, sets)
    edits = user_edits(cwd) if same else []
    if same and not edits:
        log.info("experiment '%s' (%s) already ran these params and code: applying it", name, same[:7])
        if run(["dvc", "exp", "apply", name], cwd, check=False, pass_fds=(fd,), capture=False).returncode == 0:
            return 0
        log.info("applying '%s' failed: running it instead", name)
    elif same:
        shown = ", ".join(edits[:3]) + (", ..." if len(edits) > 3 else "")
        log.info("running '%s' again rather than applying it over your edits (%s)", name, shown)
    if name in of_head(cwd):
        log.info("replacing experiment '%s' of this commit", name)
        run(["dvc", "exp", "remove", name], cwd, pass_fds=(fd,), capture=False, label="dvc exp remove")
    stage_gitignores(cwd)
    cmd = ["dvc", "exp", "run", "-n", name, *sets]
    log.info("%s", " ".join(cmd))
    env = {**experiment_env(cwd), "UNET_PRESET": preset}  # named in the model card
    base = (Path(cwd) / "params.yaml").read_text()
    expect_base(cwd, base)
    status = stream(cmd, cwd, say, env=env, pass_fds=(fd,), stderr_only=True)[0]
    remember_base(cwd, base)
    return status


def user_edits(cwd: str | Path = ".") -> list[str]:
    """Uncommitted changes of tracked or staged files other than ``params.yaml`` and DVC's files (``dvc.lock``,
    ``.gitignore`` files, stage outputs): what ``dvc exp apply`` would overwrite."""
    managed = dvc_paths(Path(cwd)) | {"params.yaml"}
    status = names(Path(cwd), "status", "--porcelain", "-z", "--untracked-files=no", "--no-renames")
    paths = [entry[3:] for entry in status]  # "XY path"
    return [p for p in paths if not written_by_dvc(p, managed)]


def unchanged_experiment(cwd: str | Path, name: str, sets: list[str]) -> str | None:
    """The commit of experiment ``name`` on HEAD when it ran all of what ``dvc exp run -S SETS`` would run now:
    every stage of ``dvc.yaml`` in its ``dvc.lock`` (a matrix stage by one of its items: they follow the
    params), the same ``params.yaml`` as DVC would write it, the same ``dvc.yaml`` and the same code and other
    files that the stages depend on (outputs aside); else ``None``.
    Options other than ``-S`` (``--force``, ...) always run."""
    sha = of_head(cwd).get(name)
    values = [v for flag, v in zip(sets[::2], sets[1::2], strict=False) if flag in ("-S", "--set-param")]
    if sha is None or len(sets) != 2 * len(values):
        return None
    from dvc.utils.hydra import apply_overrides
    from ruamel.yaml import YAML

    with tempfile.TemporaryDirectory() as tmp:
        params = Path(tmp) / "params.yaml"
        shutil.copy(Path(cwd) / "params.yaml", params)
        if values:  # with no -S, DVC leaves params.yaml as it is
            apply_overrides(params, values)  # what `dvc exp run -S` does to params.yaml
        if params.read_text() != git(cwd, "show", f"{sha}:params.yaml", check=False) + "\n":
            return None
    inputs, stages = stage_inputs(cwd)
    locked = YAML(typ="safe", pure=True).load(git(cwd, "show", f"{sha}:dvc.lock", check=False) or "{}")
    ran_stages = {name.split("@")[0] for name in (locked or {}).get("stages", {})}
    if not {name.split("@")[0] for name in stages} <= ran_stages:  # (the folds of train@k follow the params)
        return None
    listed = git(cwd, "ls-tree", "-r", sha, "--", *inputs).splitlines()  # "<mode> blob <sha>\t<path>"
    ran = {path: meta.split()[2] for meta, path in (line.split("\t", 1) for line in listed)}
    now = git(cwd, "hash-object", "--", *inputs).split()
    return sha if ran == dict(zip(inputs, now, strict=True)) else None


def stage_inputs(cwd: str | Path = ".") -> tuple[list[str], list[str]]:
    """``dvc.yaml`` and every file a stage depends on that no stage writes (the code; a directory as the files
    git tracks in it), relative to ``cwd``, params files aside (compared as ``dvc exp run -S`` writes them);
    and the names of the stages (``train@0``, ...)."""
    from dvc.dependency.param import ParamsDependency
    from dvc.repo import Repo

    with Repo(str(cwd)) as repo:
        outs = [o.fs_path for o in repo.index.outs]
        deps = {
            d.fs_path
            for s in repo.index.stages
            for d in s.deps
            if d.protocol == "local" and not isinstance(d, ParamsDependency)
        }
        inside = [
            os.path.relpath(d, repo.root_dir) for d in deps if not any(d == o or d.startswith(o + os.sep) for o in outs)
        ]
        stages = [s.name for s in repo.index.stages]
    files = [f for d in inside for f in (git(cwd, "ls-files", "--", d).splitlines() or [d])]
    return sorted({"dvc.yaml", *(f for f in files if (Path(cwd) / f).is_file())}), stages


def stage_gitignores(cwd: str | Path = ".") -> None:
    """Stage the ``.gitignore`` files DVC wrote that git does not track yet, so that the experiment commits
    them (DVC stages only those it writes during the run: ``core.autostage``); else a clone of the experiment
    or of its release would show the data and models as untracked files."""
    untracked = git(cwd, "ls-files", "--others", "--exclude-standard").splitlines()
    ignores = [p for p in untracked if Path(p).name == ".gitignore"]
    if ignores:
        git(cwd, "add", "--", *ignores)
