"""Model registry: choose the model(s) to publish, describe them in ``dvc.yaml`` ``artifacts:``, and
tag versions and stages with GTO (git tags ``name@vX.Y.Z`` and ``name#stage#N``).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
from pathlib import Path
from typing import Any

from unet.config import RegisterConfig
from unet.io import roundtrip_yaml
from unet.metrics import METRICS

log = logging.getLogger(__name__)
LOWER_IS_BETTER = {"pixel_error"}


def choose(per_fold: dict[int, dict[str, Any]], cfg: RegisterConfig) -> list[int]:
    """The folds whose models are published: the best by ``cfg.metric``, or all of them."""
    if cfg.metric not in METRICS:
        raise ValueError(f"register.metric: invalid value {cfg.metric!r}: must be one of {list(METRICS)}")
    if cfg.select == "ensemble":
        return sorted(per_fold)
    sign = -1 if cfg.metric in LOWER_IS_BETTER else 1
    return [max(per_fold, key=lambda k: sign * per_fold[k][cfg.metric])]


def describe(name: str, folds: list[int], metrics: dict[str, float]) -> str:
    what = f"fold {folds[0]}" if len(folds) == 1 else f"ensemble of folds {', '.join(map(str, folds))}"
    scores = ", ".join(f"{k} {metrics[k]:.4f}" for k in METRICS if k in metrics)
    return f"U-Net (Ronneberger 2015) for ISBI 2012 EM membranes, {what}: {scores}"


def record_artifact(dvc_yaml: str | Path, name: str, path: str, desc: str) -> None:
    """Create or update ``artifacts.<name>`` in ``dvc.yaml`` (comments and stages kept)."""
    yaml = roundtrip_yaml()
    dvc_yaml = Path(dvc_yaml)
    doc = yaml.load(dvc_yaml.read_text())
    arts = doc.setdefault("artifacts", {})
    arts[name] = {"path": path, "type": "model", "desc": desc, "labels": ["unet", "segmentation", "isbi2012"]}
    tmp = dvc_yaml.with_suffix(".yaml.tmp")
    with open(tmp, "w") as f:
        yaml.dump(doc, f)
    tmp.replace(dvc_yaml)


def _git(*args: str, cwd: str | Path = ".") -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True)


def _tagger_env(cwd: str | Path) -> dict[str, str]:
    """GTO writes annotated tags, which need an identity; fall back to a neutral one if git has none."""
    env = dict(os.environ)
    if not _git("config", "user.email", cwd=cwd).stdout.strip():
        for role in ("AUTHOR", "COMMITTER"):
            env.setdefault(f"GIT_{role}_NAME", "unet-medical")
            env.setdefault(f"GIT_{role}_EMAIL", "unet-medical@localhost")
    return env


RECORD = ("dvc.lock", "dvc.yaml", "params.yaml")  # what pins a model version in git


def publish(name: str, stage: str, card_path: str | Path, cwd: str | Path = ".") -> dict[str, str]:
    """Commit the pipeline's record (``dvc.lock``, ``dvc.yaml``, ``params.yaml``) if it changed, then tag
    that commit as a new GTO version of ``name`` and assign ``stage`` — unless the newest version already
    holds this model (same sha256). Tagging a commit that pins the model is what lets ``dvc artifacts get``
    and ``gto`` resolve a version to its files.

    Raises:
        RuntimeError: not a git repository with a commit, or git/GTO failed.
    """
    env = _tagger_env(cwd)
    if _git("rev-parse", "--verify", "HEAD", cwd=cwd).returncode != 0:
        raise RuntimeError(f"{Path(cwd).resolve()}: GTO needs a git repository with at least one commit")
    card = json.loads(Path(card_path).read_text())
    digest, message = card["sha256"], card["description"]
    shown = subprocess.run(["gto", "show", name, "--json"], cwd=cwd, capture_output=True, text=True)
    versions = json.loads(shown.stdout) if shown.returncode == 0 and shown.stdout.strip() else []
    for v in versions if isinstance(versions, list) else []:
        note = _git("tag", "-l", "--format=%(contents)", f"{name}@{v['version']}", cwd=cwd).stdout
        if digest in note:
            log.info("GTO: %s %s already holds model %s", name, v["version"], digest[:12])
            return {"version": v["version"], "stage": stage}
    changed = [p for p in RECORD if _git("status", "--porcelain", "--", p, cwd=cwd).stdout.strip()]
    if changed:
        _git("add", "--", *changed, cwd=cwd)
        r = subprocess.run(
            ["git", "commit", "-q", "-m", f"{name}: {message}", "--", *changed],
            cwd=cwd,
            capture_output=True,
            text=True,
            env=env,
        )
        if r.returncode != 0:
            raise RuntimeError(f"git commit {' '.join(changed)}: {(r.stderr or r.stdout).strip()}")
        log.info("committed %s", ", ".join(changed))
    msg = f"{message} (model.keras sha256 {digest})"
    for cmd in (["gto", "register", name, "--message", msg], ["gto", "assign", name, "--stage", stage]):
        r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env)
        if r.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd[:3])}: {(r.stderr or r.stdout).strip().splitlines()[-1]}")
    latest = json.loads(subprocess.run(["gto", "show", name, "--json"], cwd=cwd, capture_output=True, text=True).stdout)
    version = latest[0]["version"] if latest else ""
    log.info(
        "GTO: %s %s registered at %s, stage %s",
        name,
        version,
        _git("rev-parse", "--short", "HEAD", cwd=cwd).stdout.strip(),
        stage,
    )
    return {"version": version, "stage": stage}
