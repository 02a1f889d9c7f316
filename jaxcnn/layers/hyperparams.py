"""Hyperparameter normalisation and sliding-window geometry shared by the leaf layers."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jaxcnn.core import Layer, Shape, ShapeError
from jaxcnn.layers import initializers
from jaxcnn.lowering.conv import check_impl, effective_kernel

Padding = Any  # "SAME" | "VALID" | int | (ph, pw) | ((top, bottom), (left, right))
Pair = tuple[int, int]

# (these run in __post_init__ so that equal layers hash equal)


def set_field(obj: Any, name: str, value: Any) -> None:
    """Set a field of a frozen dataclass (normalising a hyperparameter in ``__post_init__``)."""
    object.__setattr__(obj, name, value)


def as_pair(layer: Any, name: str, value: Any, minimum: int = 1) -> Pair:
    """``value`` (an int or a pair) as a pair of ints >= ``minimum``, or ValueError naming the layer."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = (value, value)
    try:
        a, b = (int(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{type(layer).__name__}: {name} must be an int or a pair of ints, got {value!r}") from None
    if a < minimum or b < minimum:
        raise ValueError(f"{type(layer).__name__}: {name} must be >= {minimum}, got {value!r}")
    return (a, b)


def as_padding(layer: Any, value: Any) -> Any:
    """``value`` as "SAME", "VALID" or ((top, bottom), (left, right)), or ValueError naming the layer."""
    if isinstance(value, str):
        if value.upper() not in ("SAME", "VALID"):
            raise ValueError(f"{type(layer).__name__}: padding must be 'SAME', 'VALID', an int or pairs, got {value!r}")
        return value.upper()
    if isinstance(value, int) and not isinstance(value, bool):
        value = (value, value)
    try:
        items = tuple(value)
        if len(items) != 2:
            raise ValueError
        out = []
        for item in items:
            if isinstance(item, int):
                out.append((item, item))
            else:
                lo, hi = item
                out.append((int(lo), int(hi)))
    except (TypeError, ValueError):
        raise ValueError(
            f"{type(layer).__name__}: padding must be 'SAME', 'VALID', an int, (ph, pw) or "
            f"((top, bottom), (left, right)); got {value!r}"
        ) from None
    if any(p < 0 for pair in out for p in pair):
        raise ValueError(f"{type(layer).__name__}: padding must be >= 0, got {value!r}")
    return tuple(out)


def check_init(layer: Any) -> None:
    """ValueError unless ``layer.kernel_init`` names an initializer."""
    problem = initializers.check_init_name(layer.kernel_init)
    if problem:
        raise ValueError(f"{type(layer).__name__}: {problem}")


def check_dtype(layer: Any) -> None:
    """Normalise ``layer.compute_dtype`` to a dtype name, or ValueError."""
    if layer.compute_dtype is not None:
        try:
            set_field(layer, "compute_dtype", jnp.dtype(layer.compute_dtype).name)
        except TypeError:
            raise ValueError(f"{type(layer).__name__}: unknown compute_dtype {layer.compute_dtype!r}") from None


def resolve_padding(padding: Any, size: Pair, k_eff: Pair, stride: Pair) -> tuple[Pair, Pair]:
    """Explicit ((top, bottom), (left, right)) padding; SAME follows TF/XLA (extra at the end)."""
    if padding == "VALID":
        return ((0, 0), (0, 0))
    if padding == "SAME":
        pads = []
        for n, k, s in zip(size, k_eff, stride, strict=True):
            out = -(-n // s)
            total = max((out - 1) * s + k - n, 0)
            pads.append((total // 2, total - total // 2))
        return tuple(pads)  # type: ignore[return-value]
    return padding


def window_output(
    layer: Layer, in_shape: Shape, kernel: Pair, stride: Pair, dilation: Pair, padding: Any
) -> tuple[Pair, tuple[Pair, Pair], Pair]:
    """(output H, W), explicit padding and effective kernel of a sliding window, or ShapeError."""
    if len(in_shape) != 3:
        raise ShapeError(
            layer, in_shape, "expects an image (H, W, C) per example",
            "Use it before Flatten/global pooling, or reshape the input to (H, W, C)",
        )
    size = in_shape[:2]
    k_eff = effective_kernel(kernel, dilation)
    pads = resolve_padding(padding, size, k_eff, stride)
    out = []
    for n, k, s, (lo, hi) in zip(size, k_eff, stride, pads, strict=True):
        if n + lo + hi < k:
            raise ShapeError(
                layer, in_shape,
                f"the effective kernel {k_eff[0]}x{k_eff[1]} is larger than the padded input "
                f"{size[0] + sum(pads[0])}x{size[1] + sum(pads[1])}",
                "Use a larger input, more padding, or a smaller kernel/dilation/earlier stride",
            )
        out.append((n + lo + hi - k) // s + 1)
    return tuple(out), pads, k_eff  # type: ignore[return-value]


def cast_inputs(x: jax.Array, w: jax.Array, compute_dtype: str | None) -> tuple[jax.Array, jax.Array]:
    """``x`` and ``w`` in ``compute_dtype`` (default: their promoted dtype)."""
    dtype = jnp.dtype(compute_dtype) if compute_dtype else jnp.promote_types(x.dtype, w.dtype)
    return x.astype(dtype), w.astype(dtype)


def normalize_conv(layer: Any) -> None:
    """Shared hyperparameter checks of Conv and DepthwiseConv (pairs, padding, init, dtype, impl)."""
    set_field(layer, "kernel", as_pair(layer, "kernel", layer.kernel))
    set_field(layer, "stride", as_pair(layer, "stride", layer.stride))
    set_field(layer, "dilation", as_pair(layer, "dilation", layer.dilation))
    set_field(layer, "padding", as_padding(layer, layer.padding))
    check_init(layer)
    check_dtype(layer)
    check_impl(layer, layer.impl)
