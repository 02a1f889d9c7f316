"""Whole-model transformations besides width: compute dtype and convolution lowering."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from jaxcnn.conv_impl import IMPLS
from jaxcnn.core import Layer, map_layers
from jaxcnn.layers import BatchNorm, Conv, Dense, DepthwiseConv


def mixed_precision(model: Layer, compute_dtype: str | None = "bfloat16") -> Layer:
    """Run convolutions, dense layers and BatchNorm outputs in ``compute_dtype``.

    Parameters stay float32 (master copies, cast on use) and BatchNorm statistics are
    computed and kept in float32; ``None`` restores full precision.
    """
    if compute_dtype is not None:
        compute_dtype = jnp.dtype(compute_dtype).name

    def cast(layer: Layer) -> Layer:
        if isinstance(layer, (Conv, DepthwiseConv, Dense, BatchNorm)):
            return dataclasses.replace(layer, compute_dtype=compute_dtype)
        return layer

    return map_layers(cast, model)


def with_conv_impl(model: Layer, impl: str = "auto", *, depthwise_only: bool = False) -> Layer:
    """Choose the convolution lowering (``jaxcnn.conv_impl.IMPLS``) for every conv layer."""
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {', '.join(IMPLS)}, got {impl!r}")

    def pick(layer: Layer) -> Layer:
        if isinstance(layer, DepthwiseConv) or (
            isinstance(layer, Conv) and (not depthwise_only or layer.groups > 1)
        ):
            return dataclasses.replace(layer, impl=impl)
        return layer

    return map_layers(pick, model)
