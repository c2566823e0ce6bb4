"""Data parallelism: Horovod over Gloo on 2 CPU ranks (TensorFlow), and DataParallel over 2 host devices (JAX)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from unet.config import Config

from .conftest import ROOT, TINY

WORKER = ROOT / "tests" / "hvd_worker.py"
BIN = Path(sys.executable).parent
# 2-process runs take about a minute each on 2 cores: they run in CI (make test), not in the default suite
needs_horovod = pytest.mark.skipif(
    shutil.which("horovodrun", path=f"{BIN}:{os.environ.get('PATH', '')}") is None and not os.environ.get("CI"),
    reason="Horovod not built (make horovod); required in CI",
)


def config(**runtime) -> str:
    cfg = json.loads(json.dumps(TINY))
    cfg["train"] |= {"batch_size": 4, "max_steps": 6, "steps_per_epoch": 3, "checkpoint_every": 3}
    cfg["runtime"] |= runtime
    return json.dumps(cfg)


def run(cmd: list[str], env: dict[str, str] | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "TF_CPP_MIN_LOG_LEVEL": "3", **(env or {})}
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout, cwd=ROOT)


def weights(path: Path) -> list[np.ndarray]:
    with np.load(path) as f:
        return [f[k] for k in sorted(f.files, key=lambda k: int(k.split("_")[1]))]


def horovod(np_: int, cfg: str, out: Path, *extra: str) -> subprocess.CompletedProcess:
    out.mkdir(parents=True, exist_ok=True)
    return run(["horovodrun", "-np", str(np_), "--gloo", sys.executable, str(WORKER), cfg, str(out), *extra])


@pytest.mark.slow
@needs_horovod
@pytest.mark.parametrize("runtime", [{}, {"xla": True}, {"precision": "mixed_float16"}], ids=["fp32", "xla", "fp16"])
def test_two_ranks_stay_identical_and_match_one_rank(tmp_path, runtime):
    cfg = config(gpus=2, **runtime)
    r = horovod(2, cfg, tmp_path / "two")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    rank0, rank1 = weights(tmp_path / "two" / "rank0.npz"), weights(tmp_path / "two" / "rank1.npz")
    for a, b in zip(rank0, rank1, strict=True):
        np.testing.assert_array_equal(a, b)  # bit-identical across ranks
    (tmp_path / "one").mkdir()
    r = run([sys.executable, str(WORKER), config(gpus=1, **runtime), str(tmp_path / "one")])
    assert r.returncode == 0, r.stderr[-3000:]
    atol = 2e-3 if runtime.get("precision") == "mixed_float16" else 2e-5
    for a, b in zip(rank0, weights(tmp_path / "one" / "rank0.npz"), strict=True):
        np.testing.assert_allclose(a, b, atol=atol)  # same global batch, averaged gradients
    assert (tmp_path / "two" / "run" / "model.keras").is_file()  # rank 0 alone writes outputs
    assert sorted(p.name for p in (tmp_path / "two" / "run" / "checkpoints").iterdir()) == [
        "step-00000003",
        "step-00000006",
    ]


@pytest.mark.slow
@needs_horovod
def test_a_crashing_rank_fails_the_job_instead_of_hanging(tmp_path):
    r = horovod(2, config(gpus=2), tmp_path / "crash", "--crash-rank", "1")
    assert r.returncode != 0
    assert "crashes on purpose" in r.stdout + r.stderr


@pytest.mark.slow
def test_jax_data_parallel_over_two_devices_matches_one(tmp_path):
    env = {"KERAS_BACKEND": "jax", "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    for name, gpus in (("two", 2), ("one", 1)):
        (tmp_path / name).mkdir()
        r = run([sys.executable, str(WORKER), config(gpus=gpus), str(tmp_path / name)], env=env)
        assert r.returncode == 0, r.stderr[-3000:]
    for a, b in zip(weights(tmp_path / "two" / "rank0.npz"), weights(tmp_path / "one" / "rank0.npz"), strict=True):
        np.testing.assert_allclose(a, b, atol=2e-5)


@pytest.mark.slow
@needs_horovod
def test_train_stage_runs_one_fold_over_two_hosts(tmp_path):
    """``runtime.hosts``: the stage relaunches itself as ``horovodrun -H``. ``localhost`` and ``127.0.0.1`` are
    two hosts to Horovod (each rank's host name), both started without ssh since both resolve to this
    machine's own address: cross size 2, and the weights equal one process's on the same global batch."""
    import keras
    import tifffile
    import yaml

    from unet.config import from_dict
    from unet.folds import kfold
    from unet.samples import make_data
    from unet.training import train

    from .conftest import synthetic

    images, labels = synthetic(6, 64)
    raw = tmp_path / "raw"
    raw.mkdir()
    tifffile.imwrite(raw / Config().download.images[0], images)  # the names the tiny params take by default
    tifffile.imwrite(raw / Config().download.labels, labels)
    folds = kfold(6, 2, 0)
    (tmp_path / "folds.json").write_text(json.dumps(folds))
    hosts = {"hosts": ["localhost:1", "127.0.0.1:1"], "network_interface": "lo", "start_timeout": 120}
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(json.loads(config(gpus=2, **hosts))))
    out = tmp_path / "fold0"
    args = ["--fold", "0", "--params", str(params), "--raw", str(raw), "--folds", str(tmp_path / "folds.json")]
    r = run(
        [sys.executable, "-m", "unet.stages.train", *args, "--out", str(out), "--checkpoints", str(tmp_path / "ck")]
    )
    assert r.returncode == 0, r.stderr[-3000:]
    launch = "horovodrun -np 2 -H localhost:1,127.0.0.1:1 --network-interfaces lo --start-timeout 120 --gloo"
    assert f"starting 2 Horovod processes: {launch}" in r.stderr
    assert "tensorflow, 2 processes on 2 host(s)" in r.stdout + r.stderr  # hvd.size(), hvd.cross_size()
    assert (out / "model.keras").is_file() and json.loads((out / "metrics.json").read_text())["step"] == 6
    assert r.stderr.count("train: step 6/6: loss ") == 1  # rank 0 alone logs progress

    idx = folds["folds"][0]["train"]
    cfg = from_dict(Config, json.loads(config(gpus=1)))
    train(cfg, make_data(images[idx], labels[idx], cfg.train.loss), tmp_path / "one")
    load = lambda d: keras.saving.load_model(d / "model.keras", compile=False).get_weights()  # noqa: E731
    for a, b in zip(load(out), load(tmp_path / "one"), strict=True):
        np.testing.assert_allclose(a, b, atol=2e-5)  # same global batch, averaged gradients


def test_no_relaunch_on_one_gpu_or_in_fold_parallel_mode():
    from unet.config import RuntimeConfig
    from unet.distributed import horovod_command

    assert horovod_command(RuntimeConfig(gpus=1), ["x"]) is None
    assert horovod_command(RuntimeConfig(gpus=4, parallel="fold"), ["x"]) is None


def test_relaunch_command_on_one_host_and_on_several(monkeypatch):
    from unet import distributed
    from unet.config import RuntimeConfig

    monkeypatch.setattr(distributed.shutil, "which", lambda name: f"/bin/{name}")  # Horovod need not be built
    one = distributed.horovod_command(RuntimeConfig(gpus=2), ["-m", "unet.stages.train"])
    launch = ["horovodrun", "-np", "2", "--start-timeout", "30", "--gloo"]
    assert one == [*launch, sys.executable, "-m", "unet.stages.train"]
    hosts = RuntimeConfig(gpus=6, hosts=("gpu1:4", "gpu2:2"), network_interface="eth0", start_timeout=120)
    several = distributed.horovod_command(hosts, ["x"])
    assert several is not None and " ".join(several[:10]) == (
        "horovodrun -np 6 -H gpu1:4,gpu2:2 --network-interfaces eth0 --start-timeout 120 --gloo"
    )
    one_slot = distributed.horovod_command(RuntimeConfig(gpus=1, hosts=("gpu2:1",)), ["x"])
    assert one_slot is not None and one_slot[:5] == ["horovodrun", "-np", "1", "-H", "gpu2:1"]  # run it there


def test_each_process_takes_its_share_of_the_global_batch():
    from unet.distributed import Distribution

    assert Distribution().share(4) == slice(0, 4)  # one process: the whole batch
    assert [Distribution(rank=r, processes=2, replicas=2).share(4) for r in (0, 1)] == [slice(0, 2), slice(2, 4)]
    with pytest.raises(ValueError, match=r"^train\.batch_size: invalid value 3: must be divisible by the 2 Horovod"):
        Distribution(rank=1, processes=2, replicas=2).share(3)


def test_training_under_horovodrun_needs_the_configured_distribution(monkeypatch, tiny_cfg, tmp_path):
    """A rank that trained alone would neither average gradients nor leave checkpoints to rank 0."""
    from unet.samples import make_data
    from unet.training import train

    from .conftest import synthetic

    monkeypatch.setenv("HOROVOD_RANK", "1")
    with pytest.raises(RuntimeError, match=r"the Distribution that distributed\.configure returned"):
        train(tiny_cfg, make_data(*synthetic(2, 64), tiny_cfg.train.loss), tmp_path)
    assert not any(tmp_path.iterdir())  # before any output
