"""Reshaping and pooling: Flatten, Max/Avg/L2 pooling and their global forms."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxcnn.core import Layer, Params, Shape, ShapeError, Spec, State
from jaxcnn.layers.hyperparams import Padding, Pair, as_padding, as_pair, set_field, window_output

# -- reshaping and pooling -------------------------------------------------------------


def whole_window(in_shape: Shape) -> Pair:
    """The spatial size of an image input ((1, 1) for flat features): the window of a global op."""
    return (in_shape[0], in_shape[1]) if len(in_shape) == 3 else (1, 1)


@dataclass(frozen=True)
class Flatten(Layer):
    """Flatten each example to ``(H*W*C,)`` (row-major over H, W, C)."""

    kind: ClassVar[str] = "flatten"
    in_place: ClassVar[bool] = True  # a reshape: a view of its input

    def spec(self, in_shape: Shape) -> Spec:
        """Every output sees the whole input: the receptive window is the input size."""
        return Spec((math.prod(in_shape),), rf=whole_window(in_shape), jump=whole_window(in_shape))

    def forward(
        self, params: Params, state: State, x: jax.Array, *, train: bool, key: jax.Array | None
    ) -> tuple[jax.Array, State]:
        """Reshape to (N, -1)."""
        return x.reshape(x.shape[0], -1), state


@dataclass(frozen=True)
class _Pool(Layer):
    window: Any = 2
    stride: Any = None  # None: same as window
    padding: Padding = "VALID"

    def __post_init__(self) -> None:
        set_field(self, "window", as_pair(self, "window", self.window))
        set_field(self, "stride", self.window if self.stride is None else as_pair(self, "stride", self.stride))
        set_field(self, "padding", as_padding(self, self.padding))

    def spec(self, in_shape: Shape) -> Spec:
        """Output (H', W', C); other ops = outputs x window size."""
        (oh, ow), _, _ = window_output(self, in_shape, self.window, self.stride, (1, 1), self.padding)
        out = oh * ow * in_shape[2]
        return Spec(
            (oh, ow, in_shape[2]),
            other_ops=out * self.window[0] * self.window[1],
            rf=self.window,
            jump=self.stride,
        )

    def _reduce(self, x: jax.Array, init: float, op) -> jax.Array:
        _, pads, _ = window_output(self, tuple(x.shape[1:]), self.window, self.stride, (1, 1), self.padding)
        # The init value must be a concrete (NumPy) scalar: lax only maps reduce_window onto its
        # differentiable max/sum primitives when it can see the identity. ``jnp.asarray`` is a
        # tracer under jit, which made every pooling layer fail under ``jit(grad(...))``.
        return lax.reduce_window(
            x, np.asarray(init, x.dtype), op, (1, *self.window, 1), (1, *self.stride, 1),
            ((0, 0), *pads, (0, 0)),
        )


@dataclass(frozen=True)
class MaxPool(_Pool):
    """Max over each window (padding, if any, never wins)."""

    kind: ClassVar[str] = "maxpool"

    def forward(
        self, params: Params, state: State, x: jax.Array, *, train: bool, key: jax.Array | None
    ) -> tuple[jax.Array, State]:
        """reduce_window max."""
        return self._reduce(x, -jnp.inf, lax.max), state


@dataclass(frozen=True)
class AvgPool(_Pool):
    """Mean over each window; padded positions are excluded from the count unless asked."""

    count_include_pad: bool = False

    kind: ClassVar[str] = "avgpool"

    def forward(
        self, params: Params, state: State, x: jax.Array, *, train: bool, key: jax.Array | None
    ) -> tuple[jax.Array, State]:
        """Window sum divided by the number of (real) elements in the window."""
        total = self._reduce(x, 0.0, lax.add)
        if self.count_include_pad or self.padding == "VALID" or self.padding == ((0, 0), (0, 0)):
            return total / (self.window[0] * self.window[1]), state
        count = self._reduce(jnp.ones((1, *x.shape[1:3], 1), x.dtype), 0.0, lax.add)
        return total / count, state


@dataclass(frozen=True)
class L2Pool(_Pool):
    """Power-2 norm pooling: sqrt of the sum of squares over each window."""

    kind: ClassVar[str] = "l2pool"

    def forward(
        self, params: Params, state: State, x: jax.Array, *, train: bool, key: jax.Array | None
    ) -> tuple[jax.Array, State]:
        """sqrt(sum x^2) per window (gradient 0, not NaN, where a window is all zeros)."""
        s = self._reduce(x * x, 0.0, lax.add)
        positive = s > 0
        # double where: sqrt never sees 0, so its infinite derivative never meets a zero cotangent
        return jnp.where(positive, jnp.sqrt(jnp.where(positive, s, 1.0)), 0.0).astype(s.dtype), state


@dataclass(frozen=True)
class _GlobalPool(Layer):
    keepdims: bool = False

    def spec(self, in_shape: Shape) -> Spec:
        """(C,) or (1, 1, C); the window is the whole feature map."""
        if len(in_shape) != 3:
            raise ShapeError(
                self, in_shape, "global pooling expects an image (H, W, C) per example",
                "Remove the extra Flatten/global pooling before it",
            )
        out = (1, 1, in_shape[2]) if self.keepdims else (in_shape[2],)
        return Spec(out, other_ops=math.prod(in_shape), rf=in_shape[:2], jump=in_shape[:2])


@dataclass(frozen=True)
class GlobalAvgPool(_GlobalPool):
    """Mean over H and W."""

    kind: ClassVar[str] = "gap"

    def forward(
        self, params: Params, state: State, x: jax.Array, *, train: bool, key: jax.Array | None
    ) -> tuple[jax.Array, State]:
        """Mean over axes 1 and 2."""
        return jnp.mean(x, axis=(1, 2), keepdims=self.keepdims), state


@dataclass(frozen=True)
class GlobalMaxPool(_GlobalPool):
    """Max over H and W."""

    kind: ClassVar[str] = "gmp"

    def forward(
        self, params: Params, state: State, x: jax.Array, *, train: bool, key: jax.Array | None
    ) -> tuple[jax.Array, State]:
        """Max over axes 1 and 2."""
        return jnp.max(x, axis=(1, 2), keepdims=self.keepdims), state
