"""The U-Net of Ronneberger, Fischer and Brox (MICCAI 2015), in functional Keras 3.

Shape contract at the paper's settings: input ``(B, 572, 572, 1)`` grey values in [0, 1], output
``(B, 388, 388, 2)`` float32 logits (class 1 = foreground, i.e. the larger label value); 31,030,658
parameters. Every convolution is unpadded, so the output covers the centre of the input tile and the
overlap-tile strategy (``unet.tiling``) supplies the missing context. NVIDIA's variant replaces each
2x2 up-convolution with a 3x3 stride-2 transposed convolution (34,512,258 parameters).
"""

from __future__ import annotations

import keras
from keras import layers

from unet.config import ModelConfig
from unet.geometry import check_tile

_INIT = "he_normal"  # the paper's sqrt(2/N) initialisation


def conv_block(x: keras.KerasTensor, filters: int, name: str) -> keras.KerasTensor:
    """Two unpadded 3x3 convolutions with ReLU (each trims 2 px: 572 -> 570 -> 568)."""
    for i in (1, 2):
        x = layers.Conv2D(filters, 3, activation="relu", kernel_initializer=_INIT, name=f"{name}_conv{i}")(x)
    return x


def down_block(x: keras.KerasTensor, filters: int, name: str, dropout: float = 0.0) -> keras.KerasTensor:
    """2x2 max-pool (568 -> 284), then a conv block doubling the channels."""
    x = layers.MaxPooling2D(2, name=f"{name}_pool")(x)
    x = conv_block(x, filters, name)
    if dropout:
        x = layers.Dropout(dropout, name=f"{name}_dropout")(x)
    return x


def up_block(x: keras.KerasTensor, skip: keras.KerasTensor, filters: int, name: str, up: str) -> keras.KerasTensor:
    """Up-convolution halving the channels (28 -> 56), crop-and-concat the skip (64 -> 56), conv block."""
    if up == "upconv2x2":
        # the authors' network (caffe prototxt of the paper) follows each up-convolution with a ReLU
        x = layers.Conv2DTranspose(
            filters, 2, strides=2, activation="relu", kernel_initializer=_INIT, name=f"{name}_upconv"
        )(x)
    else:  # NVIDIA's variant
        x = layers.Conv2DTranspose(
            filters, 3, strides=2, padding="same", activation="relu", kernel_initializer=_INIT, name=f"{name}_upconv"
        )(x)
    crop = (skip.shape[1] - x.shape[1]) // 2
    skip = layers.Cropping2D(crop, name=f"{name}_crop")(skip)
    x = layers.Concatenate(name=f"{name}_concat")([skip, x])
    return conv_block(x, filters, name)


def build_unet(cfg: ModelConfig, tile: int | None = None) -> keras.Model:
    """Build the U-Net described by ``cfg`` for square input tiles of side ``tile`` (default ``cfg.tile``).

    Raises:
        ValueError: the tile side is not valid for ``cfg.depth`` (the message names the nearest valid).
    """
    tile = tile or cfg.tile
    check_tile(tile, cfg.depth)
    inputs = keras.Input((tile, tile, 1), name="image")
    x = conv_block(inputs, cfg.base_filters, "enc0")
    skips = []
    for level in range(1, cfg.depth):
        skips.append(x)
        deepest = level == cfg.depth - 1
        x = down_block(x, cfg.base_filters * 2**level, f"enc{level}", cfg.dropout if deepest else 0.0)
    for level in reversed(range(cfg.depth - 1)):
        x = up_block(x, skips[level], cfg.base_filters * 2**level, f"dec{level}", cfg.up)
    # float32 head: logits, softmax and losses stay in float32 under mixed precision
    logits = layers.Conv2D(2, 1, dtype="float32", name="logits")(x)
    return keras.Model(inputs, logits, name="unet")
