"""Everything backend-specific about running training: precision, TF32, XLA, Horovod (TensorFlow) and
``keras.distribution.DataParallel`` (JAX). :func:`configure` sets the process up once, at an entry point, and
returns the :class:`Distribution` that training is given: this module keeps no state of its own.

This and ``unet.export`` are the only modules that import ``tensorflow``, ``jax`` or ``horovod``, and only
inside functions, so the rest of the package runs unchanged on either Keras backend.

Data-parallel semantics, on both backends: ``train.batch_size`` is the **global** batch; each of the
``Distribution.replicas`` takes an equal slice of it (drawn from the same per-step random stream), gradients
are averaged, so N replicas take exactly the steps one replica would take on the whole batch. Learning
rate and step count therefore stay as configured (see :meth:`Distribution.share`, the one place this is
decided).
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
from dataclasses import dataclass, field
from typing import Any

import keras

from unet.config import RuntimeConfig

log = logging.getLogger(__name__)


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


@dataclass(frozen=True)
class Distribution:
    """How this process takes part in training, as :func:`configure` set it up (one process alone by
    default): who it is, how each global batch is shared, and the Horovod specifics training needs.

    Attributes:
        rank: this process's Horovod rank (0 without Horovod).
        processes: processes feeding a share of each global batch: Horovod ranks (1 on JAX, where one
            process feeds the whole batch and Keras splits it across devices).
        replicas: replicas sharing each global batch: Horovod ranks (TensorFlow) or local devices (JAX).
        hosts: hosts the processes run on.
        hvd: the initialised ``horovod.tensorflow`` module, under Horovod only.
    """

    rank: int = 0
    processes: int = 1
    replicas: int = 1
    hosts: int = 1
    hvd: Any = field(default=None, repr=False, compare=False)

    @property
    def chief(self) -> bool:
        """Rank 0 alone prints progress, checkpoints and writes metrics."""
        return self.rank == 0

    @property
    def horovod(self) -> bool:
        return self.hvd is not None

    def placement(self) -> str:
        """Where this run's processes are, for the log: ``2 processes on 2 hosts``."""
        if not self.horovod:
            return f"{self.replicas} device(s) on 1 host"
        return f"{self.processes} processes on {self.hosts} host(s)"

    def share(self, batch_size: int) -> slice:
        """This process's share of each global batch of ``batch_size`` samples: the one place where data
        parallelism scales anything.

        The global batch stays ``batch_size`` whatever the world size, so learning rate and steps are
        unchanged. Under Horovod each process feeds ``batch_size / processes`` samples; on JAX one process
        feeds the whole global batch and Keras splits it across devices.

        Raises:
            ValueError: ``batch_size`` does not split evenly over the Horovod processes.
        """
        if batch_size % self.processes:
            raise ValueError(
                f"train.batch_size: invalid value {batch_size}: must be divisible by the {self.processes} "
                "Horovod processes"
            )
        per = batch_size // self.processes
        return slice(self.rank * per, (self.rank + 1) * per)

    def jit_compile(self, runtime: RuntimeConfig) -> bool:
        """XLA for the whole train step. JAX always compiles. Under Horovod the step is not compiled as a
        whole: :meth:`train_step` compiles the gradient computation alone and reduces outside it."""
        if backend() == "jax":
            return True
        return runtime.xla and not self.horovod

    def train_step(self, model: keras.Model, data: Any, xla: bool) -> dict[str, Any]:
        """A TensorFlow train step whose gradients are averaged across Horovod ranks (under Horovod only).

        Horovod's Keras ``DistributedOptimizer`` does not average gradients under Keras 3 (ranks drift
        apart), so the allreduce is explicit. The loss and gradients are computed in a ``tf.function``
        compiled with XLA when ``xla`` is set; the allreduce runs outside it, since XLA would otherwise
        swallow the collective. Loss scaling (mixed_float16) stays in sync: every rank sees the same averaged
        gradients, so the same finite/non-finite decision.
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
        grads = self.hvd.grouped_allreduce(grads, op=self.hvd.Average)  # one fused allreduce for all gradients
        model._loss_tracker.update_state(loss, sample_weight=tf.shape(x["index"])[0])
        model.optimizer.apply_gradients(zip(grads, model.trainable_weights, strict=True))
        return model.compute_metrics(x, None, y_pred)

    def broadcast(self, model: keras.Model, step: int) -> int:
        """Make every rank start from rank 0's weights, optimizer state and ``step`` (rank 0 alone reads the
        checkpoint: on several hosts the others may not see it), then give each rank its own random stream,
        so drop-out masks differ between ranks as between samples. Returns rank 0's step.

        Keras 3 variables wrap the tf.Variable; Horovod needs the latter (``v.value``, Horovod issue #4290).
        """
        if not self.horovod:
            return step
        self.hvd.broadcast_variables([v.value for v in [*model.variables, *model.optimizer.variables]], root_rank=0)
        step = int(self.hvd.broadcast_object(step, root_rank=0))
        for v in model.variables:  # the seed generators' states (drop-out): rank r draws from seed + r
            if "seed_generator" in v.path:
                state = v.numpy()
                state[0] += self.rank
                v.assign(state)
        return step

    def check_same(self, key: str, what: str) -> None:
        """Raise on every rank unless all Horovod ranks hold the same ``key`` (a fingerprint of ``what``):
        ranks on other hosts read their own clone's files, which may differ from rank 0's."""
        if not self.horovod:
            return
        keys = self.hvd.allgather_object(key)
        odd = [r for r, k in enumerate(keys) if k != keys[0]]
        if odd:
            raise RuntimeError(
                f"Horovod ranks {odd} have other {what} than rank 0: `dvc pull` the same data on every host"
            )


def alone() -> Distribution:
    """One process alone: the distribution of training that is given none.

    Raises:
        RuntimeError: in a process that horovodrun started, whose ranks would each train alone, unsynchronised.
    """
    if under_horovod():
        raise RuntimeError("under horovodrun, training needs the Distribution that distributed.configure returned")
    return Distribution()


def configure(runtime: RuntimeConfig, seed: int) -> Distribution:
    """Set global policies once, at an entry point: Horovod/devices, seeds, precision policy and TF32; return
    how this process takes part in training."""
    if backend() == "tensorflow":
        dist = _configure_tensorflow(runtime)
    elif backend() == "jax":
        dist = _configure_jax(runtime)
    else:
        dist = Distribution()
    keras.utils.set_random_seed(seed)
    keras.mixed_precision.set_global_policy(runtime.precision)
    return dist


def _configure_tensorflow(runtime: RuntimeConfig) -> Distribution:
    import tensorflow as tf

    dist = Distribution()
    if under_horovod():
        import horovod.tensorflow as hvd

        hvd.init()  # Horovod's collectives (Gloo or NCCL) over the ranks horovodrun started
        # one process per replica: each rank feeds its share of every global batch; cross size = hosts
        size, hosts = int(hvd.size()), int(hvd.cross_size())
        dist = Distribution(rank=int(hvd.rank()), processes=size, replicas=size, hosts=hosts, hvd=hvd)
        gpus = tf.config.list_physical_devices("GPU")
        if gpus:  # one GPU per rank, chosen by its local rank
            tf.config.set_visible_devices(gpus[hvd.local_rank() % len(gpus)], "GPU")
    # TF32 matmuls/convs on Ampere+ GPUs: ~8x faster fp32 math at a 10-bit mantissa
    tf.config.experimental.enable_tensor_float_32_execution(runtime.tf32)
    return dist


def _configure_jax(runtime: RuntimeConfig) -> Distribution:
    import jax

    jax.config.update("jax_default_matmul_precision", "tensorfloat32" if runtime.tf32 else "float32")
    devices = jax.devices()
    if runtime.gpus > 1 and runtime.parallel == "data":
        if len(devices) < runtime.gpus:
            raise RuntimeError(f"runtime.gpus={runtime.gpus} but JAX sees {len(devices)} device(s)")
        # replicate the weights, split each global batch across the local devices
        keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices[: runtime.gpus]))
    spread = keras.distribution.distribution()
    return Distribution(replicas=len(spread.device_mesh.devices.ravel()) if spread is not None else 1)
