"""Interchangeable lowerings of one 2-D convolution (NHWC input, HWIO kernel).

All compute the same function; which is fastest depends on the backend:

* ``xla``: ``lax.conv_general_dilated``, the XLA primitive.
* ``shift``: a sum over kernel taps of strided slices of the padded input, each
  multiplied by that tap's weights (a per-channel product for depthwise kernels, a
  small matmul otherwise). On CPU, XLA's grouped/depthwise convolution is far slower
  than this (see ``experiments/benchmark.py``).
* ``im2col``: gather every window into a patch matrix and do one matmul (how most
  libraries lower convolution; memory grows by kh x kw).
* ``auto``: ``shift`` for grouped/depthwise kernels on CPU, ``xla`` otherwise.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

IMPLS = ("auto", "xla", "shift", "im2col")


def check_impl(layer: Any, impl: str) -> None:
    """Raise ValueError naming the layer if ``impl`` is unknown."""
    if impl not in IMPLS:
        raise ValueError(f"{type(layer).__name__}: impl must be one of {', '.join(IMPLS)}, got {impl!r}")


def choose(impl: str, groups: int) -> str:
    """Resolve ``auto`` for the current default backend."""
    if impl != "auto":
        return impl
    if groups > 1 and jax.default_backend() == "cpu":
        return "shift"
    return "xla"


def conv2d(
    x: jax.Array,
    w: jax.Array,
    stride: tuple[int, int],
    pads: tuple[tuple[int, int], tuple[int, int]],
    dilation: tuple[int, int],
    groups: int,
    impl: str = "xla",
) -> jax.Array:
    """Convolve NHWC ``x`` with HWIO ``w`` (I = C / groups) using the chosen lowering."""
    impl = choose(impl, groups)
    if impl == "xla":
        return lax.conv_general_dilated(
            x, w, window_strides=stride, padding=pads, rhs_dilation=dilation,
            dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=groups,
        )
    taps = list(_taps(x, w.shape[:2], stride, pads, dilation))
    kh, kw, cin_g, cout = w.shape
    n, oh, ow, c = taps[0].shape
    cout_g = cout // groups
    if impl == "shift":
        if cin_g == 1 and cout == c:  # depthwise, multiplier 1: a per-channel product per tap
            y = taps[0] * w[0, 0, 0]
            for t, (i, j) in enumerate(_positions(kh, kw)):
                if t:
                    y = y + taps[t] * w[i, j, 0]
            return y
        y = None
        for t, (i, j) in enumerate(_positions(kh, kw)):
            part = _grouped_matmul(taps[t], w[i, j], groups, cin_g, cout_g)
            y = part if y is None else y + part
        return y
    # im2col: patches (N, oh, ow, kh*kw, C) -> one (grouped) matmul
    patches = jnp.stack(taps, axis=3).reshape(n, oh, ow, kh * kw, groups, cin_g)
    wm = w.reshape(kh * kw, cin_g, groups, cout_g)
    y = jnp.einsum("nhwtgc,tcgd->nhwgd", patches, wm)
    return y.reshape(n, oh, ow, cout)


def _positions(kh: int, kw: int):
    return [(i, j) for i in range(kh) for j in range(kw)]


def _taps(x, kernel, stride, pads, dilation):
    """The input window seen by each kernel tap, as strided slices of the padded input."""
    xp = jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
    hp, wp = xp.shape[1:3]
    keh = dilation[0] * (kernel[0] - 1) + 1
    kew = dilation[1] * (kernel[1] - 1) + 1
    oh = (hp - keh) // stride[0] + 1
    ow = (wp - kew) // stride[1] + 1
    for i, j in _positions(*kernel):
        r, c = i * dilation[0], j * dilation[1]
        yield lax.slice(
            xp, (0, r, c, 0), (xp.shape[0], r + (oh - 1) * stride[0] + 1, c + (ow - 1) * stride[1] + 1, xp.shape[3]),
            (1, stride[0], stride[1], 1),
        )


def _grouped_matmul(t: jax.Array, w: jax.Array, groups: int, cin_g: int, cout_g: int) -> jax.Array:
    if groups == 1:
        return t @ w
    n, oh, ow, _ = t.shape
    tg = t.reshape(n, oh, ow, groups, cin_g)
    wg = w.reshape(cin_g, groups, cout_g)
    return jnp.einsum("nhwgc,cgd->nhwgd", tg, wg).reshape(n, oh, ow, groups * cout_g)
