"""Everything backend-specific about running training: precision, TF32, XLA, Horovod (TensorFlow) and
``keras.distribution.DataParallel`` (JAX).

This and ``unet.export`` are the only modules that import ``tensorflow``, ``jax`` or ``horovod``, and only
inside functions, so the rest of the package runs unchanged on either Keras backend.

Data-parallel semantics, on both backends: ``train.batch_size`` is the **global** batch; each of the
``world_size()`` replicas takes an equal slice of it (drawn from the same per-step random stream), gradients
are averaged, so N replicas take exactly the steps one replica would take on the whole batch. Learning
rate and step count therefore stay as configured (see :func:`per_replica`, the one place this is decided).
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
from typing import Any

import keras

from unet.config import RuntimeConfig, TrainConfig

log = logging.getLogger(__name__)
_HVD: Any = None  # the horovod.tensorflow module once initialised


def backend() -> str:
    return keras.backend.backend()


def usable_gpus() -> int:
    """GPUs the Keras backend itself can use: what a CPU-only build of TensorFlow or JAX reports as none,
    even where ``nvidia-smi`` lists GPUs. On JAX this starts the backend (which reserves GPU memory): call
    it in a process of its own (``unet.presets`` does)."""
    if backend() == "tensorflow":
        import tensorflow as tf

        return len(tf.config.list_physical_devices("GPU"))
    if backend() == "jax":
        import jax

        try:
            return len(jax.devices("gpu"))
        except RuntimeError:  # no GPU platform in this jaxlib, or no device for it
            return 0
    return 0


def under_horovod() -> bool:
    """True in a process started by ``horovodrun`` (Gloo or MPI)."""
    return "HOROVOD_RANK" in os.environ or "OMPI_COMM_WORLD_RANK" in os.environ


def horovod_command(runtime: RuntimeConfig, argv: list[str]) -> list[str] | None:
    """The ``horovodrun`` command that relaunches ``argv`` on ``runtime.gpus`` processes, when one is needed:
    TensorFlow, data parallelism over more than one GPU or over ``runtime.hosts``, and not already under
    Horovod. (In fold-parallel mode each fold's process gets one GPU from the orchestrator instead.)

    With hosts, horovodrun starts each host's processes over ssh (hosts that resolve to this machine's own
    addresses run locally), in this process's working directory and with its environment, so every host
    needs the same checkout path, virtual environment and data.
    """
    multi = runtime.gpus > 1 or bool(runtime.hosts)
    if not multi or runtime.parallel != "data" or under_horovod():
        return None
    if backend() != "tensorflow":
        if runtime.hosts:  # JAX runs data parallel over one host's devices only
            raise RuntimeError(f"runtime.hosts={list(runtime.hosts)} needs Horovod on TensorFlow, not {backend()}")
        return None
    if not shutil.which("horovodrun"):
        raise RuntimeError(
            f"runtime.gpus={runtime.gpus} needs Horovod on TensorFlow, but horovodrun is not installed (make horovod)"
        )
    # Gloo needs no MPI; NCCL carries the GPU allreduce when Horovod was built with it
    cmd = ["horovodrun", "-np", str(runtime.gpus)]
    if runtime.hosts:
        cmd += ["-H", ",".join(runtime.hosts)]
    if runtime.network_interface:  # Gloo's interface, and NCCL_SOCKET_IFNAME for NCCL
        cmd += ["--network-interfaces", runtime.network_interface]
    return [*cmd, "--start-timeout", str(runtime.start_timeout), "--gloo", sys.executable, *argv]


def configure(runtime: RuntimeConfig, seed: int) -> None:
    """Set global policies once, at an entry point: Horovod/devices, seeds, precision policy and TF32."""
    global _HVD
    if backend() == "tensorflow":
        import tensorflow as tf

        if under_horovod():
            import horovod.tensorflow as hvd

            hvd.init()
            _HVD = hvd
            gpus = tf.config.list_physical_devices("GPU")
            if gpus:  # one GPU per rank, chosen by its local rank
                tf.config.set_visible_devices(gpus[hvd.local_rank() % len(gpus)], "GPU")
        # TF32 matmuls/convs on Ampere+ GPUs: ~8x faster fp32 math at a 10-bit mantissa
        tf.config.experimental.enable_tensor_float_32_execution(runtime.tf32)
    elif backend() == "jax":
        import jax

        jax.config.update("jax_default_matmul_precision", "tensorfloat32" if runtime.tf32 else "float32")
        devices = jax.devices()
        if runtime.gpus > 1 and runtime.parallel == "data":
            if len(devices) < runtime.gpus:
                raise RuntimeError(f"runtime.gpus={runtime.gpus} but JAX sees {len(devices)} device(s)")
            # replicate the weights, split each global batch across the local devices
            keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices[: runtime.gpus]))
    keras.utils.set_random_seed(seed)
    keras.mixed_precision.set_global_policy(runtime.precision)


def rank() -> int:
    """This process's rank (0 when not under Horovod)."""
    return int(_HVD.rank()) if _HVD else 0


def world_size() -> int:
    """Replicas that share each global batch: Horovod ranks (TensorFlow) or local devices (JAX)."""
    if _HVD:
        return int(_HVD.size())
    dist = keras.distribution.distribution()
    return len(dist.device_mesh.devices.ravel()) if dist is not None else 1


def is_chief() -> bool:
    """Rank 0 alone prints progress, checkpoints and writes metrics."""
    return rank() == 0


def per_replica(train: TrainConfig) -> tuple[int, float, int]:
    """(batch per process, learning rate, steps): the one place where data parallelism scales anything.

    The global batch stays ``train.batch_size`` whatever the world size, so learning rate and steps are
    unchanged. Under Horovod each process feeds ``batch_size / size`` samples; on JAX one process feeds the
    whole global batch and Keras splits it across devices.
    """
    procs = per_replica_count()
    if train.batch_size % procs:
        raise ValueError(
            f"train.batch_size: invalid value {train.batch_size}: must be divisible by the {procs} Horovod processes"
        )
    return train.batch_size // procs, train.learning_rate, train.max_steps


def jit_compile(runtime: RuntimeConfig) -> bool:
    """XLA for the whole train step. JAX always compiles. Under Horovod the step is not compiled as a whole:
    :func:`horovod_train_step` compiles the gradient computation alone and reduces outside it.
    """
    if backend() == "jax":
        return True
    return runtime.xla and not _HVD


def horovod_train_step(model: keras.Model, data: Any, xla: bool) -> dict[str, Any]:
    """A TensorFlow train step whose gradients are averaged across Horovod ranks.

    Horovod's Keras ``DistributedOptimizer`` does not average gradients under Keras 3 (ranks drift apart),
    so the allreduce is explicit. The loss and gradients are computed in a ``tf.function`` compiled with
    XLA when ``xla`` is set; the allreduce runs outside it, since XLA would otherwise swallow the collective.
    Loss scaling (mixed_float16) stays in sync: every rank sees the same averaged gradients, so the same
    finite/non-finite decision.
    """
    import tensorflow as tf

    (x,) = data if isinstance(data, tuple) else (data,)
    if not hasattr(model, "_hvd_grads"):

        def loss_and_grads(x: Any) -> tuple[Any, Any, list[Any]]:
            with tf.GradientTape() as tape:
                y_pred = model(x, training=True)
                loss = model.compute_loss(x=x, y=None, y_pred=y_pred, training=True)
                scaled = model.optimizer.scale_loss(loss)
            return loss, y_pred, tape.gradient(scaled, model.trainable_weights)

        model._hvd_grads = tf.function(loss_and_grads, jit_compile=xla, reduce_retracing=True)
    loss, y_pred, grads = model._hvd_grads(x)
    grads = _HVD.grouped_allreduce(grads, op=_HVD.Average)  # one fused allreduce for all gradients
    model._loss_tracker.update_state(loss, sample_weight=tf.shape(x["index"])[0])
    model.optimizer.apply_gradients(zip(grads, model.trainable_weights, strict=True))
    return model.compute_metrics(x, None, y_pred)


def broadcast_state(model: keras.Model, step: int) -> int:
    """Make every rank start from rank 0's weights, optimizer state and ``step`` (rank 0 alone reads the
    checkpoint: on several hosts the others may not see it), then give each rank its own random stream, so
    drop-out masks differ between ranks as between samples. Returns rank 0's step.

    Keras 3 variables wrap the tf.Variable; Horovod needs the latter (``v.value``, Horovod issue #4290).
    """
    if not _HVD:
        return step
    _HVD.broadcast_variables([v.value for v in [*model.variables, *model.optimizer.variables]], root_rank=0)
    step = int(_HVD.broadcast_object(step, root_rank=0))
    for v in model.variables:  # the seed generators' states (drop-out): rank r draws from seed + r
        if "seed_generator" in v.path:
            state = v.numpy()
            state[0] += rank()
            v.assign(state)
    return step


def check_same(key: str, what: str) -> None:
    """Raise on every rank unless all Horovod ranks hold the same ``key`` (a fingerprint of ``what``): ranks on
    other hosts read their own clone's files, which may differ from rank 0's."""
    if not _HVD:
        return
    keys = _HVD.allgather_object(key)
    odd = [r for r, k in enumerate(keys) if k != keys[0]]
    if odd:
        raise RuntimeError(f"Horovod ranks {odd} have other {what} than rank 0: `dvc pull` the same data on every host")


def placement() -> str:
    """Where this run's processes are, for the log: ``2 processes on 2 hosts``."""
    if not _HVD:
        return f"{world_size()} device(s) on 1 host"
    return f"{_HVD.size()} processes on {_HVD.cross_size()} host(s)"


def per_replica_count() -> int:
    """Processes feeding slices of each global batch (Horovod ranks; 1 on JAX, where Keras splits it)."""
    return int(_HVD.size()) if _HVD else 1
