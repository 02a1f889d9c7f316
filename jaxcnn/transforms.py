"""Whole-model transformations besides width: compute dtype and convolution lowering."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from jaxcnn.conv_impl import IMPLS
from jaxcnn.core import Layer, map_layers


def _takes(layer: Layer, hyperparameter: str) -> bool:
    """Whether ``layer`` is a dataclass with a field ``hyperparameter`` (the opt-in to a transform)."""
    return dataclasses.is_dataclass(layer) and any(f.name == hyperparameter for f in dataclasses.fields(layer))


def mixed_precision(model: Layer, compute_dtype: str | None = "bfloat16") -> Layer:
    """Run every layer with a ``compute_dtype`` hyperparameter (convolutions, dense, BatchNorm) in ``compute_dtype``.

    Parameters stay float32 (master copies, cast on use) and BatchNorm statistics are
    computed and kept in float32; ``None`` restores full precision.
    """
    if compute_dtype is not None:
        compute_dtype = jnp.dtype(compute_dtype).name

    def cast(layer: Layer) -> Layer:
        if _takes(layer, "compute_dtype"):
            return dataclasses.replace(layer, compute_dtype=compute_dtype)
        return layer

    return map_layers(cast, model)


def with_conv_impl(model: Layer, impl: str = "auto", *, depthwise_only: bool = False) -> Layer:
    """Choose the lowering (``jaxcnn.conv_impl.IMPLS``) of every layer whose ``conv_lowering`` is set.

    With ``depthwise_only`` only grouped and depthwise convolutions change.
    """
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {', '.join(IMPLS)}, got {impl!r}")

    def pick(layer: Layer) -> Layer:
        kind = layer.conv_lowering()
        if kind is not None and (not depthwise_only or kind == "grouped"):
            return dataclasses.replace(layer, impl=impl)
        return layer

    return map_layers(pick, model)
