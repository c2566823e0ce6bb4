"""Bad arguments, files, folders and models at every command a user runs: exactly one line on stderr (no
backend start-up chatter before it), a non-zero exit, and no output."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from .conftest import ROOT, project_params

UNET = [sys.executable, "-m", "unet.cli"]


def stage(name: str, *args: str) -> list[str]:
    return [sys.executable, "-m", f"unet.stages.{name}", *args]


def evaluated(tmp: Path) -> list[str]:
    """evaluate's output arguments, under ``tmp``."""
    names = {"--metrics": "metrics", "--report": "e.json", "--slices": "s.csv", "--curves": "c.csv"}
    return [a for k, v in {**names, "--overlays": "overlays"}.items() for a in (k, str(tmp / v))]


def registered(tmp: Path) -> list[str]:
    """register's other arguments: its inputs for the package, and its outputs, under ``tmp``."""
    ins = ["--raw", str(tmp / "raw"), "--overlays", str(tmp / "overlays")]
    return [*ins, "--out", str(tmp / "registered"), "--package", str(tmp / "m.zip"), "--card", str(tmp / "card.json")]


def cases(tmp: Path, isbi: Path) -> dict[str, tuple[list[str], dict[str, str], str]]:
    """name -> (command, extra environment, what its one line must hold)."""
    (tmp / "empty").mkdir()
    cut = tmp / "cut"
    shutil.copytree(isbi, cut, ignore=shutil.ignore_patterns("*.md"))
    (cut / "train-volume.tif").write_bytes((cut / "train-volume.tif").read_bytes()[:5000])
    (tmp / "folds.json").write_text(json.dumps({"folds": [{"train": [0, 1], "val": [2]}]}))
    colour = np.zeros((64, 64, 3), np.uint8)
    colour[..., 0] = 90
    Image.fromarray(colour).save(tmp / "colour.png")
    (tmp / "junk.tif").write_text("not a TIFF\n")
    (tmp / "bad-params.yaml").write_text("split:\n  foldz: [0, 1]\n")
    raw, no = str(isbi), str(tmp / "missing")
    return {
        "download, empty ISBI_DATA_DIR": (
            stage("download", "--out", str(tmp / "raw")),
            {"ISBI_DATA_DIR": str(tmp / "empty")},
            "train-volume.tif: no source gave a valid copy",
        ),
        "download, truncated stack": (
            stage("download", "--out", str(tmp / "raw")),
            {"ISBI_DATA_DIR": str(cut)},
            "train-volume.tif: unreadable or truncated TIFF",
        ),
        "validate, no such folder": (
            stage("validate", "--raw", no, "--report", str(tmp / "r.json"), "--summary", str(tmp / "r.md")),
            {},
            "no such file",
        ),
        "split, output is the input": (stage("split", "--raw", raw, "--out", raw), {}, "--out"),
        "split, unknown param": (
            stage("split", "--params", str(tmp / "bad-params.yaml"), "--raw", raw, "--out", str(tmp / "f.json")),
            {},
            "split.foldz: unknown key",
        ),
        "train, no folds file": (
            stage(
                "train",
                "--fold",
                "0",
                "--raw",
                raw,
                "--folds",
                no,
                "--out",
                str(tmp / "m"),
                "--checkpoints",
                str(tmp / "c"),
            ),
            {},
            "missing",
        ),
        "evaluate, no models": (
            stage("evaluate", "--raw", raw, "--folds", str(tmp / "folds.json"), "--models", no, *evaluated(tmp)),
            {},
            "no model for fold 0",
        ),
        "register, no metrics": (
            stage("register", "--metrics", no, "--evaluation", no, "--models", no, *registered(tmp)),
            {},
            "missing",
        ),
        "predict, not a TIFF": ([*UNET, "predict", str(tmp / "junk.tif"), str(tmp / "o.tif")], {}, "not a TIFF"),
        "predict, colour PNG": ([*UNET, "predict", str(tmp / "colour.png"), str(tmp / "o.tif")], {}, "colour channels"),
        "predict, no model": (
            [*UNET, "predict", str(isbi / "test-volume.tif"), str(tmp / "o.tif"), "--models", no],
            {},
            "no such model file",
        ),
        "predict, output is the input": ([*UNET, "predict", str(tmp / "junk.tif"), str(tmp / "junk.tif")], {}, "input"),
        "presets, unknown option": ([sys.executable, "-m", "unet.presets", "run", "cpu", "--bogus"], {}, "--bogus"),
    }


def test_each_bad_input_is_one_line_on_stderr_and_a_non_zero_exit(isbi, tmp_path):
    (tmp_path / "params.yaml").write_text(project_params())
    params = yaml.safe_load((tmp_path / "params.yaml").read_text())
    params["download"] |= {"urls": [], "slice_mirrors": []}  # local data only: no network here
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "HOME": str(tmp_path), "PYTHONPATH": str(ROOT)}
    failed = []
    for name, (cmd, extra, expect) in cases(tmp_path, isbi).items():
        r = subprocess.run(cmd, cwd=tmp_path, env={**env, **extra}, capture_output=True, text=True, timeout=300)
        lines = r.stderr.strip().splitlines()
        if r.returncode == 0 or len(lines) != 1 or ": error: " not in lines[0] or expect not in lines[0]:
            failed.append(f"{name}: exit {r.returncode}, stderr {lines}")
    assert not failed, "\n".join(failed)
    assert not (tmp_path / "raw").exists() and not (tmp_path / "o.tif").exists()
    assert (tmp_path / "junk.tif").read_text() == "not a TIFF\n"
