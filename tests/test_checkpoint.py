"""Checkpoints on a local directory or an fsspec URL: round trip, pruning, and no half-written checkpoint."""

from __future__ import annotations

import hashlib
import json
import uuid

import fsspec
import keras
import numpy as np
import pytest

from unet import checkpoint


def _model(seed: int) -> keras.Model:
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(optimizer=keras.optimizers.Adam(), loss="mse")
    model.optimizer.build(model.trainable_variables)
    return model


def _weights(model: keras.Model) -> list[np.ndarray]:
    return [v.numpy() for v in [*model.variables, *model.optimizer.variables]]


@pytest.fixture(params=["local", "memory"])
def where(request, tmp_path) -> str:
    """A local directory, and an fsspec URL (the in-memory filesystem stands in for s3:// or ssh://)."""
    return str(tmp_path / "ckpt") if request.param == "local" else f"memory://ckpt-{uuid.uuid4().hex}"


def test_round_trip_keeps_the_newest_and_skips_other_runs(where):
    saved = _model(0)
    for step in (5, 10, 15):
        checkpoint.save(where, step, saved, {"fingerprint": "a"}, keep=2)
    fs, root = fsspec.core.url_to_fs(where)
    assert sorted(p.rsplit("/", 1)[1] for p in fs.ls(root, detail=False)) == ["step-00000010", "step-00000015"]
    path, meta = checkpoint.latest(where, "a") or pytest.fail("no checkpoint found")
    assert meta["step"] == 15 and path.endswith("step-00000015")
    restored = _model(1)
    checkpoint.restore(path, restored)
    for a, b in zip(_weights(saved), _weights(restored), strict=True):
        np.testing.assert_array_equal(a, b)
    assert checkpoint.latest(where, "b") is None  # another run's checkpoints are never resumed


def test_a_killed_writer_leaves_the_last_complete_checkpoint(where, monkeypatch):
    model = _model(0)
    checkpoint.save(where, 10, model, {"fingerprint": "a"}, keep=2)

    def killed(f, **arrays):  # the process dies half-way through writing the arrays
        f.write(b"PK\x03\x04 half a zip")
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint.np, "savez", killed)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save(where, 20, model, {"fingerprint": "a"}, keep=2)
    monkeypatch.undo()
    fs, root = fsspec.core.url_to_fs(where)
    assert not fs.exists(f"{root}/step-00000020")  # nothing under its final name, no temp file
    assert checkpoint.latest(where, "a")[1]["step"] == 10  # type: ignore[index]
    # a writer killed by SIGKILL leaves its temp file and no commit mark: readers skip it, pruning removes it
    fs.makedirs(f"{root}/step-00000020", exist_ok=True)
    fs.pipe(f"{root}/step-00000020/state.npz.0123.tmp", b"PK\x03\x04 half a zip")
    fs.pipe(f"{root}/step-00000020/state.npz", b"PK\x03\x04 complete, but its meta.json never came")
    assert checkpoint.latest(where, "a")[1]["step"] == 10  # type: ignore[index]
    for step in (30, 40):
        checkpoint.save(where, step, model, {"fingerprint": "a"}, keep=2)
    assert sorted(p.rsplit("/", 1)[1] for p in fs.ls(root, detail=False)) == ["step-00000030", "step-00000040"]
    meta = json.loads(fs.cat(f"{root}/step-00000040/meta.json"))
    assert meta == {
        "fingerprint": "a",
        "step": 40,
        "state_sha256": hashlib.sha256(fs.cat(f"{root}/step-00000040/state.npz")).hexdigest(),
    }


@pytest.mark.parametrize("damage", ["truncated", "empty", "bit-flipped", "missing"])
def test_a_damaged_checkpoint_is_skipped_with_a_warning_for_the_previous_one(where, damage, caplog):
    model = _model(0)
    for step in (10, 20):
        checkpoint.save(where, step, model, {"fingerprint": "a"}, keep=3)
    fs, root = fsspec.core.url_to_fs(where)
    state = f"{root}/step-00000020/state.npz"
    data = fs.cat(state)
    if damage == "missing":
        fs.rm(state)
    else:
        damaged = {"truncated": data[: len(data) // 2], "empty": b"", "bit-flipped": None}[damage]
        if damaged is None:  # one bit in the middle of the arrays: still a valid zip, a wrong checksum
            flipped = bytearray(data)
            flipped[len(data) // 2] ^= 0x01
            damaged = bytes(flipped)
        fs.pipe(state, damaged)
    with caplog.at_level("WARNING", logger="unet.checkpoint"):
        path, meta = checkpoint.latest(where, "a") or pytest.fail("the intact checkpoint was not found")
    assert meta["step"] == 10 and path.endswith("step-00000010")
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "step-00000020" in warnings[0] and "\n" not in warnings[0], warnings
    checkpoint.restore(path, _model(1))  # the previous one loads
    fs.pipe(f"{root}/step-00000010/state.npz", b"")  # none intact: a fresh start
    assert checkpoint.latest(where, "a") is None


def test_a_shared_location_is_keyed_by_the_run():
    assert checkpoint.location("checkpoints/fold0", None, "k1") == "checkpoints/fold0"
    assert checkpoint.location("checkpoints/fold0", "s3://bucket/unet/", "k1") == "s3://bucket/unet/k1"
    assert checkpoint.location("checkpoints/fold0", "/mnt/shared", "k2") == "/mnt/shared/k2"


@pytest.mark.core
def test_runs_sharing_a_location_resume_only_their_own(tiny_cfg, tmp_path, caplog):
    import dataclasses

    from unet.samples import make_data
    from unet.training import resume_fingerprint, train

    from .conftest import synthetic

    cfg = dataclasses.replace(tiny_cfg, train=dataclasses.replace(tiny_cfg.train, max_steps=5, checkpoint_every=5))
    images, labels = synthetic(6, 64)
    fold0, fold1 = (make_data(images[s], labels[s], cfg.train.loss) for s in (slice(0, 4), slice(2, 6)))
    shared = tmp_path / "shared"
    train(cfg, fold0, tmp_path / "worker-a", shared_checkpoints=str(shared))
    with caplog.at_level("INFO", logger="unet.training"):
        train(cfg, fold1, tmp_path / "worker-a1", shared_checkpoints=str(shared))  # another fold: afresh
        assert "resuming" not in caplog.text
        train(cfg, fold0, tmp_path / "worker-b", shared_checkpoints=str(shared))  # any worker: resumes
    assert f"resuming from {shared / resume_fingerprint(cfg, fold0)}/step-00000005 (step 5 of 5)" in caplog.text
    assert sorted(p.name for p in shared.iterdir()) == sorted(resume_fingerprint(cfg, f) for f in (fold0, fold1))
    assert not (tmp_path / "worker-a" / "checkpoints").exists()  # nothing local beside the shared location
    metrics = [json.loads((tmp_path / w / "metrics.json").read_text()) for w in ("worker-a", "worker-b")]
    assert metrics[1]["step"] == 5 and metrics[1]["loss"] == metrics[0]["loss"]  # not lost with worker A


def test_a_run_with_other_params_in_the_same_directory_keeps_its_own_newest_checkpoint(where):
    """The fold trained earlier with other params (and more steps) left step-20 and step-30: the new run's
    step 10 must not be pruned as the oldest, and its step 20 must not be mixed with the old step 20."""
    model = _model(0)
    for step in (20, 30):
        checkpoint.save(where, step, model, {"fingerprint": "old"}, keep=2)
    checkpoint.save(where, 10, model, {"fingerprint": "new"}, keep=2)
    assert checkpoint.latest(where, "new")[1]["step"] == 10  # type: ignore[index]
    assert checkpoint.latest(where, "old") is None  # never resumed here again: removed
    checkpoint.save(where, 20, model, {"fingerprint": "new"}, keep=2)
    assert checkpoint.latest(where, "new")[1]["step"] == 20  # type: ignore[index]
