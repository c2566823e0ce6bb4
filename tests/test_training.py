import dataclasses
import json
import shutil

import keras
import numpy as np
import pytest
from keras import ops

from unet.augment import augment, draw_params
from unet.config import Config, LossConfig, TrainConfig
from unet.distributed import Distribution
from unet.intensity import intensities
from unet.samples import batches, draw_step, make_data
from unet.training import make_trainer, train

from .conftest import synthetic

pytestmark = pytest.mark.core


class Killed(Exception):
    pass


class KillAt(keras.callbacks.Callback):
    """Simulates a kill: raises in the middle of an epoch, after a checkpoint was written."""

    def __init__(self, step: int, steps_per_epoch: int):
        super().__init__()
        self.step, self.spe, self.epoch = step, steps_per_epoch, 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if self.epoch * self.spe + batch + 1 == self.step:
            raise Killed()


@pytest.fixture(scope="module")
def data():
    images, labels = synthetic(6, 64)
    return make_data(images, labels, TrainConfig().loss)


def test_device_batches_match_the_host_definition(tiny_cfg):
    """Global batch s is defined on the host (slices ``images[idx]`` and parameters from default_rng([seed, s]));
    the trainer, holding the slices on the device and given only rank r's share of the indices and parameters,
    must cut exactly rank r's share of that batch. The slices are input, not state: on the device in their own
    dtype and passed to the step with its state, but not among the variables that checkpoints save."""
    images, labels = synthetic(5, 40)
    data = make_data(images, labels, LossConfig(border_weight=True))  # weight maps travel too
    t = dataclasses.replace(tiny_cfg.train, batch_size=4, seed=7)
    trainer = make_trainer(dataclasses.replace(tiny_cfg, train=t), data)
    on_device = trainer.slices.variables()
    assert [v.dtype for v in on_device] == ["uint8", "uint8", "float32"]
    assert not {id(v) for v in on_device} & {id(v) for v in trainer.variables}
    assert {id(v) for v in on_device} <= {id(v) for v in trainer.non_trainable_variables}
    tile, out, step = trainer.tile, trainer.out, 13
    rng = np.random.default_rng([7, step])  # the reference: what the host once gathered and sent each step
    idx = rng.integers(0, 5, size=4)
    ref = {"image": data.images[idx], "label": data.labels[idx], "weight": data.weights[idx]}
    ref |= draw_params(rng, 4, t.augment, (40, 40), tile, out)
    expected = [
        ops.convert_to_numpy(a) for a in augment({k: ops.convert_to_tensor(v) for k, v in ref.items()}, tile, out)
    ]
    assert (expected[2] != 1).any()  # border weights are exercised
    np.testing.assert_array_equal(draw_step(t, step, 5, (40, 40), tile, out)["index"], idx)
    for rank in (0, 1):
        (params,) = next(batches(data, t, step, tile, out, Distribution(rank=rank, processes=2).share(4)))
        assert set(params) == {"index", "center", "dihedral", "grid", "brightness", "contrast"}  # no pixels
        got = trainer.tiles({k: ops.convert_to_tensor(v) for k, v in params.items()})
        for a, b in zip(got, expected, strict=True):
            np.testing.assert_array_equal(ops.convert_to_numpy(a), b[2 * rank : 2 * rank + 2])


def _weights(path):
    return [w for w in keras.saving.load_model(path, compile=False).get_weights()]


def test_short_run_writes_model_metrics_and_checkpoints(tiny_cfg, data, tmp_path):
    metrics = train(tiny_cfg, data, tmp_path)
    assert metrics["step"] == 20 and np.isfinite(metrics["loss"]) and 0 < metrics["soft_dice"] <= 1
    assert json.loads((tmp_path / "metrics.json").read_text())["step"] == 20
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-00000010", "step-00000020"]
    with np.load(tmp_path / "checkpoints" / "step-00000020" / "state.npz") as state:
        assert all(state[k].shape != data.images.shape for k in state.files)  # the slices are not state
    assert (tmp_path / "plots" / "metrics" / "loss.tsv").read_text().count("\n") == 5  # header + 4 epochs
    model = keras.saving.load_model(tmp_path / "model.keras", compile=False)
    assert model.output_shape == (None, 52, 52, 2)
    assert intensities(model) == [data.intensity]  # the map travels with the model (unet.intensity)


def test_killed_run_resumes_to_the_same_weights(tiny_cfg, data, tmp_path):
    straight = tmp_path / "straight"
    train(tiny_cfg, data, straight)
    resumed = tmp_path / "resumed"
    with pytest.raises(Killed):
        train(tiny_cfg, data, resumed, callbacks=[KillAt(12, tiny_cfg.train.steps_per_epoch)])
    assert not (resumed / "model.keras").exists()
    assert [p.name for p in (resumed / "checkpoints").iterdir()] == ["step-00000010"]
    metrics = train(tiny_cfg, data, resumed)
    assert metrics["step"] == 20
    for a, b in zip(_weights(straight / "model.keras"), _weights(resumed / "model.keras"), strict=True):
        np.testing.assert_array_equal(a, b)
    loss = lambda d: (d / "plots" / "metrics" / "loss.tsv").read_text().splitlines()  # noqa: E731
    assert loss(straight) == loss(resumed)  # the curves continue where they stopped


def test_a_resume_into_an_emptied_directory_writes_the_whole_curves_again(tiny_cfg, data, tmp_path):
    """As ``dvc repro`` reruns a killed train stage: its outputs (DVCLive's files) deleted, the checkpoints kept."""
    straight, resumed, kept = tmp_path / "straight", tmp_path / "resumed", tmp_path / "checkpoints"
    train(tiny_cfg, data, straight)
    with pytest.raises(Killed):
        train(tiny_cfg, data, resumed, callbacks=[KillAt(17, tiny_cfg.train.steps_per_epoch)], checkpoints=kept)
    shutil.rmtree(resumed)
    assert train(tiny_cfg, data, resumed, checkpoints=kept)["step"] == 20
    for name in ("loss.tsv", "soft_dice.tsv"):
        curve = lambda d: (d / "plots" / "metrics" / name).read_text().splitlines()  # noqa: B023, E731
        assert len(curve(resumed)) == 5 and curve(resumed) == curve(straight), name  # header + 4 epochs


def test_changed_params_or_data_do_not_resume(tiny_cfg, data, tmp_path):
    train(tiny_cfg, data, tmp_path)
    other = dataclasses.replace(tiny_cfg, train=dataclasses.replace(tiny_cfg.train, max_steps=10))
    assert train(other, data, tmp_path)["step"] == 10  # trained afresh, not "already done"
    meta = tmp_path / "checkpoints" / "step-00000010" / "meta.json"
    before = json.loads(meta.read_text())["fingerprint"]
    fold = dataclasses.replace(data, images=data.images[1:], labels=data.labels[1:])
    train(other, fold, tmp_path)  # same params, another fold's slices: afresh again
    assert json.loads(meta.read_text())["fingerprint"] != before  # step 10 was trained again, not resumed


class PoisonAfterFirstEpoch(keras.callbacks.Callback):
    """Turns the head's bias into NaN once the first epoch (and its checkpoint) is done."""

    def on_epoch_end(self, epoch, logs=None):
        if epoch == 0:
            bias = self.model.unet.get_layer("logits").bias
            bias.assign(np.full(bias.shape, np.nan, np.float32))


def test_nan_loss_stops_with_clear_error_and_keeps_last_good_checkpoint(tiny_cfg, data, tmp_path):
    cfg = dataclasses.replace(tiny_cfg, train=dataclasses.replace(tiny_cfg.train, checkpoint_every=5))
    with pytest.raises(RuntimeError, match=r"non-finite loss/metric at step 10: .*last good checkpoint kept"):
        train(cfg, data, tmp_path, callbacks=[PoisonAfterFirstEpoch()])
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step-00000005"]
    assert not (tmp_path / "model.keras").exists()
    state = np.load(tmp_path / "checkpoints" / "step-00000005" / "state.npz")
    assert all(np.isfinite(state[k]).all() for k in state.files if state[k].dtype.kind == "f")


def test_mixed_float16_trains_with_loss_scaling(tiny_cfg, data, tmp_path):
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        cfg = dataclasses.replace(tiny_cfg, runtime=dataclasses.replace(tiny_cfg.runtime, precision="mixed_float16"))
        trainer = make_trainer(cfg, data)
        assert isinstance(trainer.optimizer, keras.optimizers.LossScaleOptimizer)
        metrics = train(cfg, data, tmp_path)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert np.isfinite(metrics["loss"])


def test_step_compiles_with_xla(tiny_cfg, data, tmp_path):
    """Every op of the step (augmentation included) must lower to XLA: the GPU recipe runs with jit_compile."""
    t = dataclasses.replace(tiny_cfg.train, max_steps=5, checkpoint_every=5)
    cfg = dataclasses.replace(tiny_cfg, train=t, runtime=dataclasses.replace(tiny_cfg.runtime, xla=True))
    assert make_trainer(cfg, data).jit_compile is True
    assert np.isfinite(train(cfg, data, tmp_path)["loss"])


@pytest.mark.parametrize("spe", [3, 2])
def test_exactly_max_steps_whatever_steps_per_epoch(tiny_cfg, data, tmp_path, spe):
    t = dataclasses.replace(tiny_cfg.train, max_steps=7, steps_per_epoch=spe, checkpoint_every=2 * spe)
    cfg = dataclasses.replace(tiny_cfg, train=t)
    metrics = train(cfg, data, tmp_path)
    assert metrics["step"] == 7
    meta = json.loads((tmp_path / "checkpoints" / "step-00000007" / "meta.json").read_text())
    assert meta["step"] == 7
    state = np.load(tmp_path / "checkpoints" / "step-00000007" / "state.npz")
    iterations = [state[k] for k in state.files if k.startswith("optimizer/") and state[k].dtype.kind == "i"]
    assert int(iterations[0]) == 7  # the optimizer took exactly 7 steps
    curve = (tmp_path / "plots" / "metrics" / "loss.tsv").read_text().splitlines()[1:]
    steps = [int(line.split("\t")[0]) for line in curve]
    assert steps[-1] == 7 and steps == sorted(steps)


def test_precision_change_with_a_checkpoint_starts_afresh(tiny_cfg, data, tmp_path, caplog):
    """float32 -> mixed_float16 changes the optimizer's variables: a log line and a fresh run, no crash."""
    train(tiny_cfg, data, tmp_path, checkpoints=tmp_path / "ckpt")
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        cfg = dataclasses.replace(tiny_cfg, runtime=dataclasses.replace(tiny_cfg.runtime, precision="mixed_float16"))
        with caplog.at_level("INFO", logger="unet.training"):
            metrics = train(cfg, data, tmp_path, checkpoints=tmp_path / "ckpt")
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert metrics["step"] == 20 and "starting afresh" in caplog.text


def test_tiny_config_is_valid(tiny_cfg):
    assert isinstance(tiny_cfg, Config) and tiny_cfg.train.model.tile == 92
