"""``--help`` of every command a user types: plain text, every option described, no backend started."""

from __future__ import annotations

import subprocess
import sys

import pytest

from .conftest import ROOT

COMMANDS = [
    *(["-m", f"unet.stages.{s}"] for s in ("download", "validate", "split", "train", "evaluate", "register")),
    ["-m", "unet.presets"],
    ["-m", "unet.cli"],
    ["-m", "unet.cli", "predict"],
    ["-m", "unet.cli", "release"],
]


def undescribed(text: str) -> list[str]:
    """Options in the ``options:`` section of argparse's help that have no description."""
    lines = text.split("options:", 1)[-1].splitlines()
    bare = []
    for i, line in enumerate(lines):
        if not line.startswith("  -"):
            continue
        described = "  " in line.strip() or (i + 1 < len(lines) and lines[i + 1].startswith(" " * 10))
        if not described and not line.strip().startswith("-h, --help"):
            bare.append(line.strip())
    return bare


@pytest.mark.parametrize("cmd", COMMANDS, ids=lambda c: " ".join(c[1:]))
def test_help_is_plain_text_describes_every_option_and_starts_no_backend(cmd):
    r = subprocess.run([sys.executable, "-X", "importtime", *cmd, "--help"], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-2000:]
    for markup in ("``", ":mod:", ":func:", ":class:"):
        assert markup not in r.stdout, (markup, r.stdout)
    assert not undescribed(r.stdout), undescribed(r.stdout)
    imported = {line.split("|")[-1].strip() for line in r.stderr.splitlines() if line.startswith("import time:")}
    assert not {"keras", "tensorflow", "jax", "great_expectations"} & imported


def test_presets_help_lists_each_preset_and_the_set_param_option_and_refuses_unknown_ones():
    out = subprocess.run([sys.executable, "-m", "unet.presets", "--help"], capture_output=True, text=True, cwd=ROOT)
    for preset in ("cpu ", "cpu-long ", "gpu ", "auto "):
        assert f"\n  {preset}" in out.stdout, out.stdout
    assert "-S KEY=VALUE" in out.stdout and "-S train.max_steps=" in out.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "unet.presets", "show", "cpu", "--bogus"], capture_output=True, text=True, cwd=ROOT
    )
    assert bad.returncode == 2 and bad.stderr.strip().splitlines() == [
        "presets: error: unknown argument '--bogus': only -S KEY=VALUE follows the preset (see --help)"
    ]
