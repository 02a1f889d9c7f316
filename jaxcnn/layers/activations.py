"""Activations and channel tricks: elementwise functions, CReLU, Identity."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import jax
import jax.numpy as jnp

from jaxcnn.core import Layer, Params, Shape, Spec, State

# -- activations and channel tricks ----------------------------------------------------


@dataclass(frozen=True)
class Elementwise(Layer):
    """Base of activations: ``fn`` applied to every element, in place, position by position."""

    in_place: ClassVar[bool] = True
    pointwise: ClassVar[bool] = True

    def spec(self, in_shape: Shape) -> Spec:
        """Same shape; one op per element."""
        return Spec(in_shape, other_ops=math.prod(in_shape))

    def forward(
        self, params: Params, state: State, x: jax.Array, *, train: bool, key: jax.Array | None
    ) -> tuple[jax.Array, State]:
        """Apply ``fn`` to every element."""
        return self.fn(x), state

    def fn(self, x: jax.Array) -> jax.Array:
        """The elementwise function."""
        raise NotImplementedError


@dataclass(frozen=True)
class ReLU(Elementwise):
    """max(x, 0)."""

    kind: ClassVar[str] = "relu"

    def fn(self, x: jax.Array) -> jax.Array:
        """max(x, 0)."""
        return jax.nn.relu(x)


@dataclass(frozen=True)
class ReLU6(Elementwise):
    """min(max(x, 0), 6)."""

    kind: ClassVar[str] = "relu6"

    def fn(self, x: jax.Array) -> jax.Array:
        """min(max(x, 0), 6)."""
        return jax.nn.relu6(x)


@dataclass(frozen=True)
class LeakyReLU(Elementwise):
    """x for x >= 0, negative_slope * x otherwise."""

    negative_slope: float = 0.01

    kind: ClassVar[str] = "leaky_relu"

    def fn(self, x: jax.Array) -> jax.Array:
        """Leaky ReLU."""
        return jax.nn.leaky_relu(x, self.negative_slope)


@dataclass(frozen=True)
class GELU(Elementwise):
    """Gaussian error linear unit (tanh approximation unless ``approximate=False``)."""

    approximate: bool = True

    kind: ClassVar[str] = "gelu"

    def fn(self, x: jax.Array) -> jax.Array:
        """GELU."""
        return jax.nn.gelu(x, approximate=self.approximate)


@dataclass(frozen=True)
class Sigmoid(Elementwise):
    """1 / (1 + exp(-x))."""

    kind: ClassVar[str] = "sigmoid"

    def fn(self, x: jax.Array) -> jax.Array:
        """Logistic sigmoid."""
        return jax.nn.sigmoid(x)


@dataclass(frozen=True)
class Tanh(Elementwise):
    """Hyperbolic tangent."""

    kind: ClassVar[str] = "tanh"

    def fn(self, x: jax.Array) -> jax.Array:
        """tanh."""
        return jnp.tanh(x)


@dataclass(frozen=True)
class Softmax(Elementwise):
    """Softmax over the last axis."""

    kind: ClassVar[str] = "softmax"

    def fn(self, x: jax.Array) -> jax.Array:
        """Softmax over channels/classes."""
        return jax.nn.softmax(x, axis=-1)


@dataclass(frozen=True)
class CReLU(Layer):
    """Channel complement: concatenate ``x`` and ``-x`` on channels (doubling them).

    With ``relu=True`` (the default, as in Shang et al. 2016) the result is
    ``relu(concat(x, -x))``; with ``relu=False`` it is the bare concatenation.
    """

    relu: bool = True

    kind: ClassVar[str] = "crelu"

    def spec(self, in_shape: Shape) -> Spec:
        """Channels doubled."""
        out = (*in_shape[:-1], 2 * in_shape[-1])
        return Spec(out, other_ops=math.prod(out))

    def forward(
        self, params: Params, state: State, x: jax.Array, *, train: bool, key: jax.Array | None
    ) -> tuple[jax.Array, State]:
        """concat(x, -x) on the last axis, then ReLU if asked."""
        y = jnp.concatenate([x, -x], axis=-1)
        return (jax.nn.relu(y) if self.relu else y), state


@dataclass(frozen=True)
class Identity(Layer):
    """Return the input unchanged."""

    kind: ClassVar[str] = "identity"
    in_place: ClassVar[bool] = True
    pointwise: ClassVar[bool] = True

    def spec(self, in_shape: Shape) -> Spec:
        """Same shape."""
        return Spec(in_shape)

    def forward(
        self, params: Params, state: State, x: jax.Array, *, train: bool, key: jax.Array | None
    ) -> tuple[jax.Array, State]:
        """x."""
        return x, state
