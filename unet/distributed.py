"""Everything backend-specific about running training: precision, XLA, TF32, and (on TensorFlow) Horovod.

This and ``unet.export`` are the only modules that import ``tensorflow`` or ``jax``, and only inside
functions, so the rest of the package runs unchanged on either Keras backend.
"""

from __future__ import annotations

import logging

import keras

from unet.config import RuntimeConfig

log = logging.getLogger(__name__)


def backend() -> str:
    return keras.backend.backend()


def configure(runtime: RuntimeConfig, seed: int) -> None:
    """Set global policies once, at an entry point: seeds, precision policy and TF32."""
    keras.utils.set_random_seed(seed)
    keras.mixed_precision.set_global_policy(runtime.precision)
    if backend() == "tensorflow":
        import tensorflow as tf

        # TF32 matmuls/convs on Ampere+ GPUs: ~8x faster fp32 math at 10-bit mantissa precision
        tf.config.experimental.enable_tensor_float_32_execution(runtime.tf32)
    elif backend() == "jax":
        import jax

        jax.config.update("jax_default_matmul_precision", "tensorfloat32" if runtime.tf32 else "float32")


def jit_compile(runtime: RuntimeConfig) -> bool:
    """XLA for the train step. JAX always compiles; on TensorFlow it is ``runtime.xla``."""
    return True if backend() == "jax" else runtime.xla


def rank() -> int:
    """This process's rank (0 when not distributed)."""
    return 0


def world_size() -> int:
    return 1


def is_chief() -> bool:
    """Rank 0 alone prints progress, checkpoints and writes metrics."""
    return rank() == 0


def callbacks() -> list[keras.callbacks.Callback]:
    """Callbacks that distributed training needs (none when running alone)."""
    return []
