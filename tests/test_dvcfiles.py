"""``unet.ops.dvcfiles``: what tools outside the stages (the flow, ``unet release``) read of ``dvc.yaml``."""

from __future__ import annotations

import subprocess

import pytest
import yaml

from unet.ops.dvcfiles import stage_option

from .conftest import ROOT


def test_stage_option_is_the_path_the_stage_writes_and_dvc_yaml_declares():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    for stage, option in (("register", "--card"), ("evaluate", "--overlays"), ("evaluate", "--metrics")):
        path = stage_option(ROOT, stage, option)
        declared = [
            next(iter(o)) if isinstance(o, dict) else o
            for key in ("outs", "metrics")
            for o in stages[stage].get(key, [])
        ]
        assert path in declared, (stage, option, path, declared)


def test_stage_option_names_what_is_missing(tmp_path):
    (tmp_path / "dvc.yaml").write_text("stages:\n  register:\n    cmd: python -m unet.stages.register --card\n")
    with pytest.raises(ValueError, match="no stage 'evaluate'"):
        stage_option(tmp_path, "evaluate", "--overlays")
    with pytest.raises(ValueError, match="register's command has no --card option"):
        stage_option(tmp_path, "register", "--card")  # an option with no value
    (tmp_path / "dvc.yaml").write_text("stages:\n  a:\n    cmd: [x --card y]\n  b:\n    cmd: x --card=c.json\n")
    with pytest.raises(ValueError, match="stage a has no single command string"):
        stage_option(tmp_path, "a", "--card")
    assert stage_option(tmp_path, "b", "--card") == "c.json"


def test_stage_option_of_a_commit_reads_that_commits_dvc_yaml(tmp_path):
    from .test_pipeline import git_env

    (tmp_path / "dvc.yaml").write_text("stages:\n  register:\n    cmd: r --card old/card.json\n")
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "old"]):
        subprocess.run(cmd, cwd=tmp_path, check=True, env=git_env())
    (tmp_path / "dvc.yaml").write_text("stages:\n  register:\n    cmd: r --card new/card.json\n")
    assert stage_option(tmp_path, "register", "--card") == "new/card.json"
    assert stage_option(tmp_path, "register", "--card", rev="HEAD") == "old/card.json"
