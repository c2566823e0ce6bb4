"""Steps-based training of one fold: on-device augmentation inside the step, Adam with warm-up, exact resume.

``train(cfg, data, workdir, dist)`` wraps ``compile`` + ``fit``. The model that ``fit`` sees is a
:class:`Trainer`: it holds the fold's slices on the device, and each step, from the slice indices and
augmentation parameters that the host draws (a few numbers a sample), it cuts the batch's augmented tiles,
runs the U-Net, and hands the augmented labels to the loss, so all per-pixel work runs inside the
(XLA-compiled) step.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

import keras
from keras import ops

from unet import checkpoint, distributed
from unet.augment import augment
from unet.config import PLACEMENT, Config, TrainConfig, fingerprint, to_dict
from unet.distributed import Distribution
from unet.intensity import with_intensity
from unet.io import pixel_sha256
from unet.losses import SegmentationLoss, SoftDice
from unet.model import build_unet
from unet.outputs import atomic_path, fsync_tree
from unet.samples import DeviceSlices, SliceData, batches
from unet.samples import make_data as make_data  # re-exported: benchmarks/step_overhead.py runs older revisions

log = logging.getLogger(__name__)


@keras.saving.register_keras_serializable(package="unet")
class WarmupSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up over ``warmup`` steps, then constant or cosine decay to 0 at ``total`` steps."""

    def __init__(self, lr: float, warmup: int, total: int, kind: str = "constant"):
        self.lr, self.warmup, self.total, self.kind = lr, warmup, total, kind

    def __call__(self, step: Any) -> Any:
        step = ops.cast(step, "float32")
        rate = self.lr * ops.minimum(1.0, (step + 1.0) / max(self.warmup, 1))
        if self.kind == "cosine":
            rate = rate * 0.5 * (1.0 + ops.cos(math.pi * ops.minimum(step / self.total, 1.0)))
        return rate

    def get_config(self) -> dict[str, Any]:
        return {"lr": self.lr, "warmup": self.warmup, "total": self.total, "kind": self.kind}


class Trainer(keras.Model):
    """Wraps the U-Net for ``fit``. It holds the fold's training slices on the device; each step's input is a
    batch's slice indices and augmentation parameters (:func:`batches`), from which it cuts the batch there.

    The slices are copied to the device once, when the trainer is built, in their own dtype: uint8 images and
    labels take 1 byte a pixel each (ISBI's 24 training slices of 512 x 512: 6.3 MB of images, as much of
    labels), border weights 4 bytes (float32), non-uint8 images 4 (float32); a step adds its batch's B whole
    slices (gathered, still uint8) and the tiles. Every data-parallel replica (Horovod rank, JAX device) holds a
    whole copy. They are input, not state: ``variables``, checkpoints and Horovod's broadcast leave them out.
    TensorFlow has no GPU gather kernel for uint8, so on a GPU keep ``runtime.xla`` on (the default: XLA
    compiles the gather) or TensorFlow gathers on the host.
    """

    def __init__(self, unet: keras.Model, data: SliceData, dist: Distribution, **kwargs: Any):
        # float32 here keeps the augmentation parameters in float32 under mixed precision; the U-Net's layers
        # carry their own (mixed) policy
        super().__init__(dtype="float32", **kwargs)
        self.unet, self.dist = unet, dist
        self.tile = int(unet.input_shape[1])
        self.out = int(unet.output_shape[1])
        self.xla_gradients = False
        self.slices = DeviceSlices.place(data)

    @property
    def non_trainable_variables(self) -> list[Any]:
        # the slices travel with the step's state, so the JAX trainer passes them to the compiled step as
        # arguments (an array the step closed over would be embedded in the program as a constant);
        # TensorFlow's step captures the variables by reference either way
        return [*super().non_trainable_variables, *self.slices.variables()]

    def train_step(self, *args: Any) -> Any:
        # (data) on TensorFlow, (state, data) on JAX; Horovod (TensorFlow only) averages gradients across
        # ranks, the one reason to override the step
        if self.dist.horovod:
            return self.dist.train_step(self, args[-1], xla=self.xla_gradients)
        return super().train_step(*args)

    def tiles(self, params: dict[str, Any]) -> tuple[Any, Any, Any]:
        """The batch that ``params`` (one step's input) draws: image, label and weight tiles (:func:`augment`)."""
        return augment({**params, **self.slices.take(params["index"])}, self.tile, self.out)

    def call(self, params: dict[str, Any], training: bool = False) -> tuple[Any, Any]:
        image, label, weight = self.tiles(params)
        return self.unet(image, training=training), ops.stack([label, weight], axis=-1)

    def compute_loss(
        self, x: Any = None, y: Any = None, y_pred: Any = None, sample_weight: Any = None, training: bool = True
    ) -> Any:
        logits, target = y_pred
        return super().compute_loss(x, target, logits, sample_weight, training=training)

    def compute_metrics(self, x: Any, y: Any, y_pred: Any, sample_weight: Any = None) -> Any:
        logits, target = y_pred
        return super().compute_metrics(x, target, logits, sample_weight)


def make_trainer(cfg: Config, data: SliceData, dist: Distribution | None = None) -> Trainer:
    """Build and compile the trainer on ``data`` for ``dist`` (default: one process alone; the optimizer is
    built too, so a checkpoint can be restored)."""
    t, dist = cfg.train, dist or distributed.alone()
    keras.utils.set_random_seed(t.seed)  # the initial weights depend on the seed alone
    trainer = Trainer(build_unet(t.model), data, dist)
    # the global batch is the same on any number of replicas (Distribution.share): so are rate and steps
    opt = keras.optimizers.Adam(
        WarmupSchedule(t.learning_rate, t.warmup_steps, t.max_steps, t.schedule),
        weight_decay=t.weight_decay or None,
    )
    if cfg.runtime.precision == "mixed_float16":  # dynamic loss scaling keeps float16 gradients in range
        opt = keras.optimizers.LossScaleOptimizer(opt)
    trainer.compile(
        optimizer=opt,
        loss=SegmentationLoss(t.loss.dice_weight),
        metrics=[SoftDice()],
        jit_compile=dist.jit_compile(cfg.runtime),
    )
    trainer.optimizer.build(trainer.trainable_variables)
    trainer.xla_gradients = cfg.runtime.xla
    return trainer


def resume_fingerprint(cfg: Config, data: SliceData) -> str:
    """What a checkpoint must share to be resumed: the training slices themselves (another fold or split is
    other data), every train param and every runtime param that shapes the optimizer's variables or the
    numerics (precision, XLA, TF32, device count), not where the processes run (``config.PLACEMENT``)."""
    runtime = {k: v for k, v in to_dict(cfg.runtime).items() if k not in PLACEMENT}
    slices = [pixel_sha256(data.images), pixel_sha256(data.labels)]
    return fingerprint({"train": to_dict(cfg.train), "runtime": runtime, "data": slices})


class _Monitor(keras.callbacks.Callback):
    """Counts optimizer steps; every ``steps_per_epoch`` steps (and at the last): stop on a non-finite
    loss, log, and checkpoint (rank 0, the one given a ``live``)."""

    def __init__(self, cfg: Config, checkpoints: str, start: int, live: Any, key: str, history: list[dict[str, float]]):
        super().__init__()
        self.cfg, self.checkpoints, self.live = cfg, checkpoints, live
        self.step, self.t0, self.t0_step = start, time.perf_counter(), start
        self.failed: str | None = None
        self.meta = {"fingerprint": key, "config": to_dict(cfg)}
        self.history = list(history)  # every logged row so far, {"step": ..., metric: ...}: checkpoints carry it

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        self.step += 1

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        t = self.cfg.train
        logs = dict(logs or {})
        if not all(math.isfinite(float(v)) for v in logs.values()):
            self.failed = f"non-finite loss/metric at step {self.step}: {logs}"
            self.model.stop_training = True
            return
        now = time.perf_counter()
        logs["img_per_s"] = (self.step - self.t0_step) * t.batch_size / max(now - self.t0, 1e-9)
        self.t0, self.t0_step = now, self.step
        if self.live is None:
            return
        row = {k: float(v) for k, v in logs.items()}
        log_rows(self.live, [{"step": self.step, **row}])
        self.history.append({"step": self.step, **row})
        if self.step % t.checkpoint_every == 0 or self.step >= t.max_steps:
            # the curves so far travel with the state: a resume after DVC deleted the stage's outputs (DVCLive's
            # files with them) or on another worker writes them again
            meta = {**self.meta, "metrics": row, "history": self.history}
            checkpoint.save(self.checkpoints, self.step, self.model, meta, t.keep_checkpoints)
        # the fold's progress, one line an epoch (after its checkpoint), in place of Keras's two
        scores = ", ".join(f"{k} {float(v):.4f}" for k, v in logs.items() if k != "img_per_s")
        log.info("step %d/%d: %s, %.1f img/s", self.step, t.max_steps, scores, logs["img_per_s"])


def log_rows(live: Any, rows: list[dict[str, float]]) -> None:
    """Log each ``{"step": s, metric: value, ...}`` row to DVCLive at its step."""
    for row in rows:
        live.step = int(row["step"])
        for k, v in row.items():
            if k != "step":
                live.log_metric(k, float(v))
        live.make_summary()


def _resume(
    cfg: Config, data: SliceData, dist: Distribution, checkpoints: str, key: str
) -> tuple[Trainer, int, list[dict[str, float]]]:
    """A trainer restored from the newest checkpoint written with the same fingerprint ``key``, its step and
    the rows logged up to that step; a fresh trainer, step 0 and no rows when there is none (or it does not
    fit: resume state never crashes a run). A checkpoint written before rows were kept gives its own step's.
    Rank 0 alone reads checkpoints (on several hosts the others may not see them); every rank then starts from
    its state (:meth:`Distribution.broadcast`)."""
    trainer, step = make_trainer(cfg, data, dist), 0
    history: list[dict[str, float]] = []
    found = checkpoint.latest(checkpoints, key) if dist.chief else None
    if found:
        try:
            checkpoint.restore(found[0], trainer)
        except ValueError as exc:
            log.info("%s: cannot resume (%s): starting afresh", found[0], exc)
            trainer = make_trainer(cfg, data, dist)
        else:
            log.info("resuming from %s (step %d of %d)", found[0], found[1]["step"], cfg.train.max_steps)
            step, meta = int(found[1]["step"]), found[1]
            history = meta.get("history") or ([{"step": step, **meta["metrics"]}] if meta.get("metrics") else [])
    elif dist.chief and checkpoint.exists(checkpoints):
        log.info("%s: no checkpoint of these data and train/runtime params: starting afresh", checkpoints)
    return trainer, dist.broadcast(trainer, step), history


def _fit(trainer: Trainer, data: SliceData, t: TrainConfig, share: slice, monitor: _Monitor, callbacks: list) -> None:
    """Train from ``monitor.step`` to exactly ``max_steps`` steps on this process's ``share`` of each batch: whole
    epochs of ``steps_per_epoch``, then one short epoch for the remainder; no more after a non-finite loss."""
    left, spe = t.max_steps - monitor.step, t.steps_per_epoch
    for epochs, steps in ((left // spe, spe), (1, left % spe)):
        if not epochs or not steps or monitor.failed:
            continue
        trainer.fit(
            batches(data, t, monitor.step, trainer.tile, trainer.out, share),
            epochs=epochs,
            steps_per_epoch=steps,
            shuffle=False,
            callbacks=[monitor, *callbacks],
            verbose=0,  # the monitor logs each epoch
        )


def train(
    cfg: Config,
    data: SliceData,
    workdir: str | Path,
    dist: Distribution | None = None,
    callbacks: list[Any] | None = None,
    checkpoints: str | Path | None = None,
    shared_checkpoints: str | None = None,
) -> dict[str, float]:
    """Train ``cfg.train`` on ``data`` for exactly ``max_steps`` optimizer steps; write metrics and
    ``model.keras`` under ``workdir`` and checkpoints under ``checkpoints`` (default ``workdir/checkpoints``),
    or under ``<shared_checkpoints>/<resume fingerprint>/`` when a shared location (a path or an fsspec URL
    that every worker reaches) is given, so that any worker resumes the run and none resumes another's.

    Resumes from the newest checkpoint written for the same training slices with the same train and runtime
    params. ``dist`` is what :func:`unet.distributed.configure` returned (default: one process alone).

    Raises:
        ValueError: ``train.batch_size`` does not split evenly over the Horovod processes.
        RuntimeError: the loss became NaN/Inf (the last good checkpoint is kept).
    """
    from dvclive import Live

    t, workdir, dist = cfg.train, Path(workdir), dist or distributed.alone()
    key = resume_fingerprint(cfg, data)
    dist.check_same(key, "training slices or params")
    share = dist.share(t.batch_size)
    ckpt_dir = checkpoint.location(checkpoints or workdir / "checkpoints", shared_checkpoints, key)
    trainer, start, history = _resume(cfg, data, dist, ckpt_dir, key)
    chief = dist.chief
    live = Live(str(workdir), resume=start > 0, report=None, save_dvc_exp=False, dvcyaml=None) if chief else None
    if live is not None and history and "loss" not in live.summary:  # resumed where the run's curves are not
        log_rows(live, history)
    monitor = _Monitor(cfg, ckpt_dir, start, live, key, history)
    _fit(trainer, data, t, share, monitor, callbacks or [])
    if monitor.failed:
        raise RuntimeError(f"{workdir}: training stopped: {monitor.failed}; last good checkpoint kept in {ckpt_dir}")
    if live is not None:
        with atomic_path(workdir / "model.keras") as tmp:  # takes raw grey values: the map travels with it
            with_intensity(trainer.unet, data.intensity).save(tmp)
        live.end()
        fsync_tree(workdir)  # DVCLive's metrics and plots, written by DVCLive itself, reach the disk too
    return {k: float(v) for k, v in (monitor.live.summary if live else {}).items() if isinstance(v, int | float)}
