"""Named parameter presets, run as DVC experiments: ``dvc exp run -S key=value ...``, never edits of the
committed ``params.yaml`` (which stays the GPU recipe). ``dvc exp show`` then lists each run with its
params and metrics, and ``dvc exp diff`` / ``dvc metrics diff`` compare them fold by fold.

``python -m unet.presets run auto`` (what ``make run`` does) picks ``cpu`` when the Keras backend can use no
GPU (a CPU-only TensorFlow or JAX build included, which it warns about when ``nvidia-smi`` lists GPUs), says so,
and runs the pipeline as the experiment named after the preset; ``python -m unet.presets show cpu``
prints the ``-S`` arguments for a hand-written ``dvc exp run``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path
from typing import Any

from unet import config
from unet.io import roundtrip_yaml
from unet.ops import recovery
from unet.ops.runner import stream

PRESETS: dict[str, dict[str, Any]] = {
    # Quick: a depth-4, 8-filter U-Net on 188 px tiles (100 px output), no drop-out (too small a net to
    # need it), Adam at a constant 2e-3 (at 600 steps, 1e-3 and cosine decay both left it under-trained);
    # `make run` trains, evaluates and registers all 5 folds in 5 min 50 s on 2 CPU cores, CV V_rand 0.944
    # (benchmarks/results/cpu_accuracy.md, cpu_tuning.md).
    "cpu": {
        "train.model.base_filters": 8,
        "train.model.depth": 4,
        "train.model.tile": 188,
        "train.model.dropout": 0.0,
        "train.batch_size": 4,
        "train.max_steps": 700,
        "train.learning_rate": 0.002,
        "train.schedule": "constant",
        "train.warmup_steps": 20,
        "train.steps_per_epoch": 50,
        "train.checkpoint_every": 350,
        "evaluate.batch_size": 16,
        "runtime.precision": "float32",
        "runtime.xla": False,
        "runtime.tf32": False,
        "runtime.gpus": 0,
    },
    # Longer and wider (16 filters, 2400 steps at a constant 2e-3) and evaluated with the 8-fold test-time
    # augmentation: train + evaluate 27 minutes on 2 CPU cores, CV V_rand 0.966.
    "cpu-long": {
        "train.model.base_filters": 16,
        "train.model.depth": 4,
        "train.model.tile": 188,
        "train.model.dropout": 0.0,
        "train.batch_size": 4,
        "train.max_steps": 2400,
        "train.learning_rate": 0.002,
        "train.schedule": "constant",
        "train.warmup_steps": 50,
        "train.steps_per_epoch": 100,
        "train.checkpoint_every": 500,
        "evaluate.batch_size": 16,
        "evaluate.tta": True,
        "runtime.precision": "float32",
        "runtime.xla": False,
        "runtime.tf32": False,
        "runtime.gpus": 0,
    },
    "gpu": {},  # params.yaml's defaults are the GPU recipe
}


EPILOG = """presets:
  cpu       8 filters, depth 4, 700 steps on 188 px tiles: all 5 folds in about 6 minutes on 2 CPU cores
  cpu-long  16 filters, 2400 steps, 8-fold test-time augmentation: about 28 minutes on 2 CPU cores
  gpu       params.yaml as committed: the paper's U-Net and recipe (64 filters, 6400 steps, bf16, XLA)
  auto      gpu where the Keras backend can use a GPU, else cpu (what `make run` runs)

more params: -S KEY=VALUE after the preset, as for dvc exp run, e.g.
  python -m unet.presets run cpu --name cpu-2x -S train.max_steps=1400 -S 'split.folds=[0,1,2]'
"""


def gpu_count() -> int:
    """GPUs the Keras backend can use, asked of the backend itself. Warns in one line when ``nvidia-smi``
    lists GPUs that the backend cannot use (a CPU-only build, a CUDA/driver mismatch), or when the backend
    cannot be asked (then 0)."""
    if not gpu_devices():  # no GPU driver's device here: nothing for the backend to find (its start costs ~10 s)
        return 0
    try:
        name, count = backend_gpus()
    except RuntimeError as exc:
        print(f"presets: warning: could not ask the Keras backend for its GPUs ({exc}): assuming none", file=sys.stderr)
        return 0
    listed = driver_gpus()
    if listed and not count:
        print(
            f"presets: warning: nvidia-smi lists {listed} GPU(s) but the {name} backend can use none "
            f"(a CPU-only {name} build, or a CUDA/driver mismatch?)",
            file=sys.stderr,
        )
    return count


def backend_gpus() -> tuple[str, int]:
    """(Keras backend, GPUs it can use), from a process of its own: TensorFlow or JAX start there, not here,
    and the GPU memory JAX reserves on start is given back when it exits."""
    probe = "from unet.distributed import backend, usable_gpus; print(backend(), usable_gpus())"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}  # TensorFlow's start-up chatter
    try:
        r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300, env=env)
    except subprocess.TimeoutExpired as exc:
        raise RuntimeError("no answer in 300 s") from exc
    words = r.stdout.split()
    if r.returncode or len(words) < 2 or not words[-1].isdigit():
        raise RuntimeError((r.stderr.strip().splitlines() or [f"exit code {r.returncode}"])[-1])
    return words[-2], int(words[-1])


def gpu_devices() -> bool:
    """Whether this host has the device nodes of a GPU driver (NVIDIA's, also inside a container that was
    given GPUs, ROCm's, WSL2's) or ``nvidia-smi``: without them neither TensorFlow nor JAX can use a GPU."""
    import glob

    nodes = glob.glob("/dev/nvidia[0-9]*") + [
        p for p in ("/dev/kfd", "/dev/dxg", "/proc/driver/nvidia") if os.path.exists(p)
    ]
    return bool(nodes or shutil.which("nvidia-smi"))  # /dev/dxg: CUDA under WSL2


def driver_gpus() -> int:
    """NVIDIA GPUs that the driver lists through ``nvidia-smi`` (0 when it is missing or fails)."""
    if not shutil.which("nvidia-smi"):
        return 0
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30, check=True).stdout
    except (subprocess.SubprocessError, OSError):
        return 0
    return sum(line.startswith("GPU ") for line in out.splitlines())


def apply(path: str | Path, overrides: dict[str, Any]) -> None:
    """Set dotted keys in a YAML file, keeping its comments; the result must load as a valid config."""
    yaml = roundtrip_yaml()
    path = Path(path)
    doc = yaml.load(path.read_text())
    for dotted, value in overrides.items():
        node = doc
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w") as f:
        yaml.dump(doc, f)
    try:
        config.load(tmp)
    except ValueError:
        tmp.unlink()
        raise
    tmp.replace(path)


def check(overrides: dict[str, Any], params: str | Path = "params.yaml") -> None:
    """Raise ``ValueError`` (naming the key) unless ``params`` with ``overrides`` is a valid config."""
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "params.yaml"
        shutil.copy(params, copy)
        apply(copy, overrides)


def set_args(overrides: dict[str, Any]) -> list[str]:
    """``-S key=value`` arguments for ``dvc exp run``; values in JSON, which DVC reads as YAML."""
    return [arg for k, v in overrides.items() for arg in ("-S", f"{k}={json.dumps(v)}")]


def resolve(name: str) -> str:
    if name == "auto":
        gpus = gpu_count()
        name = "gpu" if gpus else "cpu"
        print(f"presets: {gpus} GPU(s) found: using the '{name}' preset", file=sys.stderr)
    return name


def _git(cwd: str | Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True)


def experiment_commits(cwd: str | Path = ".") -> list[str]:
    """The commits of every DVC experiment in the repository (``refs/exps``)."""
    return _git(cwd, "for-each-ref", "refs/exps", "--format=%(objectname)").stdout.split()


def committed_params(cwd: str | Path = ".") -> str | None:
    """The committed params.yaml when the workspace's copy holds an experiment's values (what ``dvc exp run
    -S`` leaves there), else ``None``: the workspace copy is the committed one, or edits of your own."""
    workspace = (Path(cwd) / "params.yaml").read_text()
    head = _git(cwd, "show", "HEAD:params.yaml")
    if head.returncode != 0 or head.stdout == workspace:
        return None
    if any(_git(cwd, "show", f"{sha}:params.yaml").stdout == workspace for sha in experiment_commits(cwd)):
        return head.stdout
    return None


def from_baseline(cwd: str | Path = ".") -> None:
    """Make presets apply to the committed params: after an experiment the workspace's params.yaml holds its
    values, which a later preset (``gpu`` is empty) would otherwise inherit. Edits of your own are kept."""
    committed = committed_params(cwd)
    if committed is not None:
        (Path(cwd) / "params.yaml").write_text(committed)
        print(
            "presets: params.yaml held an earlier experiment's values: starting from the committed ones",
            file=sys.stderr,
        )


def run_experiment(
    name: str, overrides: dict[str, Any], extra: list[str], cwd: str | Path = ".", preset: str = ""
) -> int:
    """``dvc exp run -n NAME -S ...`` in ``cwd`` from the committed params, alone in the repository and after
    undoing what an interrupted run left (:mod:`unet.ops.recovery`)."""
    with recovery.exclusive(cwd, f"experiment '{name}'", name) as run:
        if run.recovered:
            print(f"presets: {run.recovered}; resuming", file=sys.stderr)
        return _run_experiment(name, overrides, extra, cwd, run.fd, preset)


def _run_experiment(
    name: str, overrides: dict[str, Any], extra: list[str], cwd: str | Path, fd: int, preset: str = ""
) -> int:
    """The experiment, with the repository's lock held (``fd``, passed on to DVC so that it holds it too).

    An experiment of the same name on this commit whose params and stage inputs equal this run's is applied to
    the workspace (``dvc exp apply``) instead, when the workspace holds no edits of the user's: the same
    experiment, the same model, nothing run. Any other one of that name is replaced; DVC's run-cache restores
    every stage whose inputs did not change."""
    from_baseline(cwd)
    sets = [*set_args(overrides), *extra]
    same = unchanged_experiment(cwd, name, sets)
    edits = user_edits(cwd) if same else []
    if same and not edits:
        print(
            f"presets: experiment '{name}' ({same[:7]}) already ran these params and code: applying it", file=sys.stderr
        )
        if subprocess.run(["dvc", "exp", "apply", name], cwd=cwd, pass_fds=(fd,)).returncode == 0:
            return 0
        print(f"presets: applying '{name}' failed: running it instead", file=sys.stderr)
    elif same:
        shown = ", ".join(edits[:3]) + (", ..." if len(edits) > 3 else "")
        print(f"presets: running '{name}' again rather than applying it over your edits ({shown})", file=sys.stderr)
    if name in experiments_of_head(cwd):
        print(f"presets: replacing experiment '{name}' of this commit", file=sys.stderr)
        subprocess.run(["dvc", "exp", "remove", name], cwd=cwd, check=True, pass_fds=(fd,))
    stage_gitignores(cwd)
    cmd = ["dvc", "exp", "run", "-n", name, *sets]
    print(f"presets: {' '.join(cmd)}", file=sys.stderr)
    env = {**experiment_env(cwd), "UNET_PRESET": preset}  # named in the model card
    say = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
    return stream(cmd, cwd, say, env=env, pass_fds=(fd,), stderr_only=True)[0]


def user_edits(cwd: str | Path = ".") -> list[str]:
    """Uncommitted changes of tracked or staged files other than ``params.yaml`` and DVC's files (``dvc.lock``,
    ``.gitignore`` files, stage outputs): what ``dvc exp apply`` would overwrite."""
    managed = recovery.dvc_paths(Path(cwd)) | {"params.yaml"}
    status = recovery.names(Path(cwd), "status", "--porcelain", "-z", "--untracked-files=no", "--no-renames")
    paths = [entry[3:] for entry in status]  # "XY path"
    return [p for p in paths if not recovery.written_by_dvc(p, managed)]


def experiments_of_head(cwd: str | Path = ".") -> dict[str, str]:
    """DVC experiments based on the commit HEAD is at: name -> commit."""
    head = recovery.git(cwd, "rev-parse", "HEAD")
    listed = recovery.git(cwd, "for-each-ref", f"refs/exps/{head[:2]}/{head[2:]}", "--format=%(refname) %(objectname)")
    return {ref.rsplit("/", 1)[1]: sha for ref, sha in (line.split() for line in listed.splitlines())}


def unchanged_experiment(cwd: str | Path, name: str, sets: list[str]) -> str | None:
    """The commit of experiment ``name`` on HEAD when it ran all of what ``dvc exp run -S SETS`` would run now:
    every stage of ``dvc.yaml`` in its ``dvc.lock`` (a matrix stage by one of its items: they follow the
    params), the same ``params.yaml`` as DVC would write it, the same ``dvc.yaml`` and the same code and other
    files that the stages depend on (outputs aside); else ``None``.
    Options other than ``-S`` (``--force``, ...) always run."""
    sha = experiments_of_head(cwd).get(name)
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
        if params.read_text() != recovery.git(cwd, "show", f"{sha}:params.yaml", check=False) + "\n":
            return None
    inputs, stages = stage_inputs(cwd)
    locked = YAML(typ="safe", pure=True).load(recovery.git(cwd, "show", f"{sha}:dvc.lock", check=False) or "{}")
    ran_stages = {name.split("@")[0] for name in (locked or {}).get("stages", {})}
    if not {name.split("@")[0] for name in stages} <= ran_stages:  # (the folds of train@k follow the params)
        return None
    listed = recovery.git(cwd, "ls-tree", "-r", sha, "--", *inputs).splitlines()  # "<mode> blob <sha>\t<path>"
    ran = {path: meta.split()[2] for meta, path in (line.split("\t", 1) for line in listed)}
    now = recovery.git(cwd, "hash-object", "--", *inputs).split()
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
    files = [f for d in inside for f in (recovery.git(cwd, "ls-files", "--", d).splitlines() or [d])]
    return sorted({"dvc.yaml", *(f for f in files if (Path(cwd) / f).is_file())}), stages


def stage_gitignores(cwd: str | Path = ".") -> None:
    """Stage the ``.gitignore`` files DVC wrote that git does not track yet, so that the experiment commits
    them (DVC stages only those it writes during the run: ``core.autostage``); else a clone of the experiment
    or of its release would show the data and models as untracked files."""
    untracked = recovery.git(cwd, "ls-files", "--others", "--exclude-standard").splitlines()
    ignores = [p for p in untracked if Path(p).name == ".gitignore"]
    if ignores:
        recovery.git(cwd, "add", "--", *ignores)


def experiment_env(cwd: str | Path = ".") -> dict[str, str]:
    """Environment for ``dvc exp run/save``: DVC commits each experiment to a ref of its own (refs/exps,
    on no branch) and needs a git identity for it. Without one, the ref is signed 'unet experiment';
    releasing (``unet release``) never falls back like this."""
    if subprocess.run(["git", "var", "GIT_COMMITTER_IDENT"], cwd=cwd, capture_output=True).returncode == 0:
        return {}
    print("presets: git has no identity: the experiment's ref is signed 'unet experiment'", file=sys.stderr)
    env = {}
    for role in ("AUTHOR", "COMMITTER"):
        env[f"GIT_{role}_NAME"], env[f"GIT_{role}_EMAIL"] = "unet experiment", "unet-experiment@localhost"
    return env


def main(argv: list[str] | None = None) -> None:
    from unet.stages._cli import plain

    p = argparse.ArgumentParser(
        prog="python -m unet.presets",
        description=textwrap.fill(plain(__doc__), 110),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "action", choices=["run", "show"], help="run: the preset as a DVC experiment; show: its -S arguments"
    )
    p.add_argument("preset", choices=[*PRESETS, "auto"], help="a preset (listed below); auto: gpu or cpu, as found")
    p.add_argument("--name", help="experiment name (default: the preset's)")
    p.add_argument("--params", default="params.yaml", help="the params file presets apply to (default: %(default)s)")
    args, extra = p.parse_known_args(argv)
    bad = unknown_options(extra) if args.action == "run" else extra
    if bad:
        print(
            f"presets: error: unknown argument {bad[0]!r}: only -S KEY=VALUE follows the preset (see --help)",
            file=sys.stderr,
        )
        sys.exit(2)
    if args.action == "show":
        name = resolve(args.preset)
        check(PRESETS[name], args.params)
        print(" ".join(set_args(PRESETS[name])))
        return
    try:  # the lock first: a second run is refused at once, before the GPU probe
        with recovery.exclusive(".", f"python -m unet.presets run {args.preset}", args.name or args.preset) as run:
            if run.recovered:
                print(f"presets: {run.recovered}; resuming", file=sys.stderr)
            name = resolve(args.preset)
            check(PRESETS[name], args.params)  # a preset the config rejects fails here, before DVC runs anything
            code = _run_experiment(args.name or name, PRESETS[name], extra, ".", run.fd, name)
    except recovery.RunError as exc:
        print(f"presets: error: {exc}", file=sys.stderr)
        sys.exit(1)
    sys.exit(code)


def unknown_options(extra: list[str]) -> list[str]:
    """What in ``extra`` is not ``-S KEY=VALUE`` / ``--set-param KEY=VALUE`` (the only options passed on)."""
    rest, i = [], 0
    while i < len(extra):
        if extra[i] in ("-S", "--set-param") and i + 1 < len(extra) and "=" in extra[i + 1]:
            i += 2
            continue
        if extra[i].startswith("--set-param=") and "=" in extra[i][12:]:
            i += 1
            continue
        rest.append(extra[i])
        i += 1
    return rest


def overrides(
    preset: str | None = None,
    steps: int | None = None,
    precision: str | None = None,
    xla: bool | None = None,
    gpus: int | None = None,
) -> dict[str, Any]:
    """Dotted ``params.yaml`` overrides from a preset plus explicit values (explicit values win)."""
    if preset == "auto":
        preset = "gpu" if gpu_count() else "cpu"
    if preset is not None and preset not in PRESETS:
        raise ValueError(f"preset: invalid value {preset!r}: must be one of {[*PRESETS, 'auto']}")
    out = dict(PRESETS[preset]) if preset else {}
    explicit = {"train.max_steps": steps, "runtime.precision": precision, "runtime.xla": xla, "runtime.gpus": gpus}
    out |= {k: v for k, v in explicit.items() if v is not None}
    if steps is not None:  # keep the epoch/checkpoint cadence valid for short runs
        spe = min(int(out.get("train.steps_per_epoch", 100)), steps)
        out |= {"train.steps_per_epoch": spe, "train.checkpoint_every": spe * max(1, min(5, steps // spe))}
    return out


if __name__ == "__main__":
    main()
