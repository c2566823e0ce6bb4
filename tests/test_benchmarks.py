"""benchmarks/gpu.py end to end at tiny sizes on the CPU (JAX, as on the GPU machine), so that nothing about
the script is first found out on the device: its imports, the peer's interface, the table and the JSON."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import tifffile

from benchmarks.gpu import check_peer, run_peer

from .conftest import ROOT, synthetic

PEER = ROOT.parent / "shared" / "peer" / "anchor_torch.py"
FAKE_PEER = """
import unet_flops  # as the real one does

def bench(mode, batch, steps=30, warm=8, train=True):
    return {"mode": mode, "batch": batch, "train": train, "ms_step": 10.0, "img_s": 100.0 * batch / 8, "warm_s": 1.0}
"""
# what the GPU machine lacks and does not get as a wheel (see the script's docstring): the script must not need it
NOT_ON_DEVICE = ["tensorflow", "dvc", "dvclive", "prefect", "great_expectations", "gto", "pydantic", "horovod"]
BLOCKER = f"""
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in {NOT_ON_DEVICE!r}:
            raise ImportError(f"{{name}} is not on the GPU machine")
sys.meta_path.insert(0, Block())
"""


def _dry_run(tmp_path: Path, *args: str) -> dict:
    """``python -m benchmarks.gpu --dry-run ARGS`` on JAX, where the modules the GPU machine lacks fail to import."""
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(BLOCKER)
    env = {**os.environ, "KERAS_BACKEND": "jax", "PYTHONPATH": f"{tmp_path / 'site'}:{ROOT}"}
    env["OUT"] = str(tmp_path / "out")
    cmd = [sys.executable, "-m", "benchmarks.gpu", "--dry-run", *args]
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["gpu_dry_run.json", "gpu_dry_run.md"]
    return json.loads((tmp_path / "out" / "gpu_dry_run.json").read_text())


def test_dry_run_against_a_peer_writes_the_comparison(tmp_path):
    peer = tmp_path / "peer"
    peer.mkdir()
    (peer / "anchor_torch.py").write_text(FAKE_PEER)
    (peer / "unet_flops.py").write_text("def forward_flops(size=572, **kw):\n    return 2e9, 0, 0\n")
    result = _dry_run(tmp_path, "--peer", str(peer / "anchor_torch.py"), "--batches", "8")
    assert result["meta"]["backend"] == "jax" and result["meta"]["dry_run"]
    assert result["peer"]["status"] == "ran" and len(result["peer"]["runs"]) == 4
    rows = {(row["what"], row["path"].split(",")[0]): row for row in result["ours"]}
    assert set(rows) == {
        ("train", "fit (real input path)"),
        ("train", "train step"),
        ("inference", "predict"),
        ("inference", "overlap-tile"),
    }
    fit, predict = rows[("train", "fit (real input path)")], rows[("inference", "predict")]
    assert fit["batch"] == 8 and fit["img_s"] > 0 and fit["warmup_s"] > 0
    assert fit["peer_img_s"] == fit["peer_compiled_img_s"] == 100.0  # the fake peer's bf16-cl(-compile), batch 8
    assert fit["ours_over_peer"] == pytest.approx(fit["img_s"] / 100.0)
    assert fit["tflop_s"] == pytest.approx(fit["img_s"] * 3 * 2e9 / 1e12)  # forward + backward
    assert predict["ours_over_peer"] == pytest.approx(predict["img_s"] / 100.0)
    assert predict["tflop_s"] == pytest.approx(predict["img_s"] * 2e9 / 1e12)
    assert rows[("inference", "overlap-tile")]["slices_s"] > 0
    table = (tmp_path / "out" / "gpu_dry_run.md").read_text()
    assert "| ours_over_peer |" in table and "peer: ran" in table


@pytest.mark.slow
def test_dry_run_of_the_fold_0_accuracy_run(tmp_path):
    data = tmp_path / "isbi"
    data.mkdir()
    images, labels = synthetic(n=6, size=64)
    tifffile.imwrite(data / "train-volume.tif", images)
    tifffile.imwrite(data / "train-labels.tif", labels)
    result = _dry_run(tmp_path, "--batches", "2", "--accuracy", "--data", str(data), "--accuracy-steps", "3")
    assert result["peer"]["status"] == "skipped: no --peer"
    acc = result["accuracy"]
    assert acc["steps"] == 3 and acc["fold"] == 0 and acc["precision"] == "mixed_bfloat16"  # the GPU recipe's
    assert 0 <= acc["vrand"] <= 1 and 0 <= acc["pixel_error"] <= 1 and acc["img_s"] > 0
    assert "Accuracy (fold 0)" in (tmp_path / "out" / "gpu_dry_run.md").read_text()


def test_bad_arguments_fail_in_one_line_before_any_work(tmp_path):
    (tmp_path / "anchor_torch.py").write_text("def bench(mode, batch):\n    pass\n")
    for args, msg in (
        (["--peer", str(tmp_path / "missing.py")], "missing.py: no peer script there"),
        (["--peer", str(tmp_path / "anchor_torch.py")], "no bench(mode, batch, steps, warm, train) function"),
        (["--accuracy", "--data", str(tmp_path)], "--data: invalid value"),
    ):
        r = subprocess.run([sys.executable, "-m", "benchmarks.gpu", *args], cwd=ROOT, capture_output=True, text=True)
        assert r.returncode == 2 and msg in r.stderr.strip().splitlines()[-1], r.stderr


@pytest.mark.skipif(not PEER.is_file(), reason="no peer anchor beside the checkout")
def test_the_real_peer_has_the_interface_we_drive():
    check_peer(PEER)
    if importlib.util.find_spec("torch") is None:  # here: the peer is reported, and our runs go on
        peer = run_peer(PEER, dry=True)
        assert peer["runs"] == [] and peer["status"].startswith("failed: ") and "torch" in peer["status"]
