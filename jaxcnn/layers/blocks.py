"""Layers of the scaling families: SiLU, squeeze-excitation, drop path, the CIFAR ResNet's option-A shortcut.

* :class:`SiLU` (swish, ``x * sigmoid(x)``): EfficientNet's activation.
* :class:`SqueezeExcite` (Hu et al. 2018): global average pool, 1x1 reduce to ``squeeze`` channels +
  activation, 1x1 expand back to the input's channels + sigmoid, multiply the input by the result.
  The two 1x1 convolutions count as conv MACs (``C*S + S*C`` per example); the pool, biases,
  activations and the multiply are ``other_ops``, as for every other elementwise layer.
* :class:`DropPath` (stochastic depth, Huang et al. 2016): drop a whole residual branch per example.
* :class:`SubsamplePad` (He et al. 2015, sec. 4.2, "option A"): stride-``s`` subsample and zero channel
  padding up to ``features``; no parameters.
* :class:`Projection`: a shortcut that is a bias-free 1x1 convolution where the shape changes and the
  identity where it does not (decided from the input shape), for :class:`~jaxcnn.combinators.PreActResidual`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import jax
import jax.numpy as jnp

from jaxcnn.core import Layer, Params, Shape, ShapeError, Spec, State
from jaxcnn.layers import initializers
from jaxcnn.layers.activations import Elementwise
from jaxcnn.layers.hyperparams import cast_inputs, check_dtype, check_init
from jaxcnn.layers.linear import Conv
from jaxcnn.layers.normalization import Dropout

_GATES = {"silu": jax.nn.silu, "relu": jax.nn.relu}


@dataclass(frozen=True)
class SiLU(Elementwise):
    """x * sigmoid(x) (swish with beta = 1)."""

    kind: ClassVar[str] = "silu"

    def fn(self, x: jax.Array) -> jax.Array:
        """x * sigmoid(x)."""
        return jax.nn.silu(x)


@dataclass(frozen=True)
class SqueezeExcite(Layer):
    """Squeeze-and-excitation: ``x * sigmoid(expand(act(reduce(mean_hw(x)))))``.

    ``squeeze`` is the reduced channel count, given explicitly so a builder can derive it from
    whatever it likes (EfficientNet: the block's *input* channels // 4, not the expanded ones).
    The expand side always has the input's channel count, so the block can never disagree with
    the tensor it gates. Under ``jaxcnn.transforms.scale_width`` ``squeeze`` is a free channel count
    (scaled like the others, by the same rounding rule) unless ``keep_width``.

    Params: ``reduce_w`` (C, S), ``reduce_b`` (S,), ``expand_w`` (S, C), ``expand_b`` (C,): the
    1x1 convolutions' kernels as matrices (a 1x1 HWIO kernel without its two unit axes).
    """

    squeeze: int
    activation: str = "silu"  # "silu" (EfficientNet) or "relu" (SENet)
    kernel_init: str = "he_normal"
    keep_width: bool = False
    compute_dtype: str | None = None

    kind: ClassVar[str] = "se"
    decayed: ClassVar[tuple[str, ...]] = ("reduce_w", "expand_w")

    def __post_init__(self) -> None:
        if not isinstance(self.squeeze, int) or isinstance(self.squeeze, bool) or self.squeeze < 1:
            raise ValueError(f"SqueezeExcite: squeeze must be a positive int, got {self.squeeze!r}")
        if self.activation not in _GATES:
            raise ValueError(f"SqueezeExcite: activation must be one of {', '.join(_GATES)}, got {self.activation!r}")
        check_init(self)
        check_dtype(self)

    def spec(self, in_shape: Shape) -> Spec:
        """Same shape; MACs = 2 x C x S (the two 1x1 convolutions on the pooled 1x1 map)."""
        if len(in_shape) != 3:
            raise ShapeError(
                self, in_shape, "squeeze-excitation expects an image (H, W, C) per example",
                "Use it before Flatten/global pooling",
            )
        c, s, n = in_shape[2], self.squeeze, math.prod(in_shape)
        # pool (n) + reduce bias and activation (2s) + expand bias and sigmoid (2c) + the multiply (n)
        # every output sees the whole map (through the pool): the receptive window is the input size
        return Spec(in_shape, macs=2 * c * s, other_ops=2 * n + 2 * s + 2 * c, rf=in_shape[:2], jump=(1, 1))

    def param_shapes(self, in_shape: Shape) -> dict[str, Shape]:
        """``reduce_w`` (C, S), ``reduce_b`` (S,), ``expand_w`` (S, C), ``expand_b`` (C,)."""
        c, s = in_shape[-1], self.squeeze
        return {"reduce_w": (c, s), "reduce_b": (s,), "expand_w": (s, c), "expand_b": (c,)}

    def init_param(self, name: str, key: jax.Array, shape: Shape, in_shape: Shape) -> jax.Array:
        """Kernels by ``kernel_init`` with the 1x1 convolutions' fans; biases by the same rule."""
        if name == "reduce_b":
            return initializers.bias(self.kernel_init, key, shape, in_shape[-1])
        if name == "expand_b":
            return initializers.bias(self.kernel_init, key, shape, self.squeeze)
        return initializers.weight(self.kernel_init, key, shape, shape[0], shape[1])

    def width_fields(self) -> dict[str, int]:
        """``squeeze`` unless ``keep_width`` (the expand side follows the input)."""
        return {} if self.keep_width else {"squeeze": 1}

    def forward(
        self, params: Params, state: State, x: jax.Array, *, train: bool, key: jax.Array | None
    ) -> tuple[jax.Array, State]:
        """Pool, reduce, activate, expand, sigmoid, multiply."""
        xc, w1 = cast_inputs(x, params["reduce_w"], self.compute_dtype)
        pooled = jnp.mean(xc, axis=(1, 2))
        h = _GATES[self.activation](pooled @ w1 + params["reduce_b"].astype(w1.dtype))
        _, w2 = cast_inputs(h, params["expand_w"], self.compute_dtype)
        gate = jax.nn.sigmoid(h.astype(w2.dtype) @ w2 + params["expand_b"].astype(w2.dtype))
        return xc * gate[:, None, None, :], state


@dataclass(frozen=True)
class DropPath(Dropout):
    """Stochastic depth: in train mode zero the whole input of an example with probability ``rate``.

    Survivors are scaled by 1/(1 - rate), so evaluation (the identity) needs no rescaling. Put it
    last in a residual body: ``Residual(Sequential([..., DropPath(p)]))`` drops the branch and keeps
    the shortcut. The key is used as :class:`~jaxcnn.layers.Dropout` uses it: the container folds in
    the child's index, the layer draws one uniform per example from what it is given, so under
    ``jax.vmap`` over seeds (one key per seed) each seed drops its own examples.
    """

    rate: float = 0.0

    kind: ClassVar[str] = "droppath"

    def _mask_shape(self, x: jax.Array) -> tuple[int, ...]:
        """One draw per example: the whole input of an example is kept or dropped."""
        return (x.shape[0],) + (1,) * (x.ndim - 1)


@dataclass(frozen=True)
class SubsamplePad(Layer):
    """Parameter-free shortcut: ``x[:, ::stride, ::stride, :]`` zero-padded on channels to ``features``.

    The CIFAR ResNets' option A (He et al. 2015, sec. 4.2). The new channels are split as evenly as
    possible, the extra one at the end: for a doubling C -> 2C that is C/2 zeros on each side, as
    ``F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, C // 2, C // 2))`` in the common PyTorch port.
    ``features`` is a width field, so under ``scale_width`` the padding follows the scaled widths.
    """

    features: int
    stride: int = 2
    keep_width: bool = False

    kind: ClassVar[str] = "subsample_pad"

    def __post_init__(self) -> None:
        if not isinstance(self.features, int) or isinstance(self.features, bool) or self.features < 1:
            raise ValueError(f"SubsamplePad: features must be a positive int, got {self.features!r}")
        if not isinstance(self.stride, int) or isinstance(self.stride, bool) or self.stride < 1:
            raise ValueError(f"SubsamplePad: stride must be a positive int, got {self.stride!r}")

    def spec(self, in_shape: Shape) -> Spec:
        """(ceil(H/s), ceil(W/s), features); no MACs, no ops (a strided copy)."""
        if len(in_shape) != 3:
            raise ShapeError(self, in_shape, "expects an image (H, W, C) per example",
                             "Use it as the shortcut of an image block")
        if in_shape[2] > self.features:
            raise ShapeError(
                self, in_shape, f"input channels {in_shape[2]} exceed features={self.features}",
                "Zero padding only adds channels: use a 1x1 projection shortcut to reduce them",
            )
        s = self.stride
        return Spec((-(-in_shape[0] // s), -(-in_shape[1] // s), self.features), jump=(s, s))

    def width_fields(self) -> dict[str, int]:
        """``features`` unless ``keep_width``."""
        return {} if self.keep_width else {"features": 1}

    def forward(
        self, params: Params, state: State, x: jax.Array, *, train: bool, key: jax.Array | None
    ) -> tuple[jax.Array, State]:
        """Strided slice, then zeros before and after the channels."""
        y = x[:, :: self.stride, :: self.stride, :]
        extra = self.features - x.shape[-1]
        lo = extra // 2
        return jnp.pad(y, ((0, 0), (0, 0), (0, 0), (lo, extra - lo))), state


@dataclass(frozen=True)
class Projection(Layer):
    """A residual shortcut that projects only where it must: a bias-free 1x1 convolution (stride ``stride``)
    to ``features`` channels when the input has another channel count or ``stride > 1``, else the identity.

    Whether it projects is read from the input shape (:meth:`projects`), so the same block stays right
    when ``scale_width`` makes two equal widths differ (a Wide ResNet's fixed 16-channel stem before a
    widened group). As the identity it has no parameters and no MACs. ``features`` is a width field.
    """

    features: int
    stride: int = 1
    kernel_init: str = "he_normal"
    keep_width: bool = False
    compute_dtype: str | None = None
    impl: str = "auto"

    kind: ClassVar[str] = "projection"
    decayed: ClassVar[tuple[str, ...]] = ("w",)

    def __post_init__(self) -> None:
        if not isinstance(self.features, int) or isinstance(self.features, bool) or self.features < 1:
            raise ValueError(f"Projection: features must be a positive int, got {self.features!r}")
        if not isinstance(self.stride, int) or isinstance(self.stride, bool) or self.stride < 1:
            raise ValueError(f"Projection: stride must be a positive int, got {self.stride!r}")
        check_init(self)
        check_dtype(self)
        self._conv()  # checks impl

    def _conv(self) -> Conv:
        return Conv(self.features, 1, self.stride, "VALID", use_bias=False, kernel_init=self.kernel_init,
                    compute_dtype=self.compute_dtype, impl=self.impl)

    def projects(self, in_shape: Shape) -> bool:
        """True when the shape changes (other channel count or stride > 1): then it is a 1x1 convolution."""
        return in_shape[-1] != self.features or self.stride != 1

    def spec(self, in_shape: Shape) -> Spec:
        """The 1x1 convolution's spec, or the identity's (same shape, nothing counted)."""
        if len(in_shape) != 3:
            raise ShapeError(self, in_shape, "expects an image (H, W, C) per example",
                             "Use it as the shortcut of an image block")
        return self._conv().spec(in_shape) if self.projects(in_shape) else Spec(in_shape)

    def param_shapes(self, in_shape: Shape) -> dict[str, Shape]:
        """``w`` (1, 1, C, features) when projecting; nothing otherwise."""
        return self._conv().param_shapes(in_shape) if self.projects(in_shape) else {}

    def init_param(self, name: str, key: jax.Array, shape: Shape, in_shape: Shape) -> jax.Array:
        """As the 1x1 convolution draws it."""
        return self._conv().init_param(name, key, shape, in_shape)

    def width_fields(self) -> dict[str, int]:
        """``features`` unless ``keep_width``."""
        return {} if self.keep_width else {"features": 1}

    def channel_groups(self, in_shape: Shape) -> int | None:
        """1 when it is a (dense) convolution at this input, None as the identity."""
        return 1 if self.projects(in_shape) else None

    def conv_lowering(self) -> str | None:
        """Dense."""
        return "dense"

    def forward(
        self, params: Params, state: State, x: jax.Array, *, train: bool, key: jax.Array | None
    ) -> tuple[jax.Array, State]:
        """The 1x1 convolution, or ``x``."""
        if not self.projects(tuple(x.shape[1:])):
            return x, state
        return self._conv().forward(params, state, x, train=train, key=key)
