"""Layers with a kernel: Conv, DepthwiseConv and Dense."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import jax

from jaxcnn.core import Layer, Params, Shape, ShapeError, Spec, State
from jaxcnn.layers import initializers
from jaxcnn.layers.hyperparams import (
    Padding,
    Pair,
    cast_inputs,
    check_dtype,
    check_init,
    normalize_conv,
    window_output,
)
from jaxcnn.lowering.conv import conv2d


def convolve(layer: Any, params: dict, x: jax.Array, pads: tuple[Pair, Pair], groups: int,
             relu: bool = False) -> jax.Array:
    """Cast, convolve with the layer's lowering, add the bias (then ReLU when ``relu``)."""
    x, w = cast_inputs(x, params["w"], layer.compute_dtype)
    # the bias goes in with the convolution: a native weight gradient computes its gradient in the same pass
    return conv2d(x, w, layer.stride, pads, layer.dilation, groups, layer.impl,
                  params["b"] if layer.use_bias else None, relu=relu)



# -- convolutions ----------------------------------------------------------------------


def _torch_kernel(layer: Layer, layout: str) -> dict[str, tuple[str, str, str]]:
    """torch's ``weight`` (+ ``bias``) for a kernel layer of this layout."""
    return {"weight": ("params", "w", layout), **({"bias": ("params", "b", "")} if layer.use_bias else {})}


@dataclass(frozen=True)
class Conv(Layer):
    """2-D convolution, HWIO kernel ``(kh, kw, C/groups, features)``.

    ``keep_width=True`` marks a channel count the width transform must not scale
    (a classifier head written as a convolution).
    """

    features: int
    kernel: Any = 3
    stride: Any = 1
    padding: Padding = "SAME"
    dilation: Any = 1
    groups: int = 1
    use_bias: bool = True
    kernel_init: str = "he_normal"
    keep_width: bool = False
    compute_dtype: str | None = None
    impl: str = "auto"

    kind: ClassVar[str] = "conv"
    decayed: ClassVar[tuple[str, ...]] = ("w",)

    def __post_init__(self) -> None:
        if not isinstance(self.features, int) or self.features < 1:
            raise ValueError(f"Conv: features must be a positive int, got {self.features!r}")
        if not isinstance(self.groups, int) or self.groups < 1:
            raise ValueError(f"Conv: groups must be a positive int, got {self.groups!r}")
        normalize_conv(self)

    def _geometry(self, in_shape: Shape):
        out_hw, pads, k_eff = window_output(self, in_shape, self.kernel, self.stride, self.dilation, self.padding)
        cin = in_shape[2]
        if cin % self.groups:
            raise ShapeError(
                self, in_shape, f"input channels {cin} are not divisible by groups={self.groups}",
                "Choose groups that divide the input channels, or change the previous layer's features",
            )
        if self.features % self.groups:
            raise ShapeError(
                self, in_shape, f"features={self.features} is not divisible by groups={self.groups}",
                "Choose features that are a multiple of groups",
            )
        return out_hw, pads, k_eff

    def spec(self, in_shape: Shape) -> Spec:
        """Output (H', W', features); MACs = H'W' x features x kh kw C/groups."""
        (oh, ow), _, k_eff = self._geometry(in_shape)
        cin = in_shape[2] // self.groups
        out = oh * ow * self.features
        return Spec(
            (oh, ow, self.features),
            macs=out * self.kernel[0] * self.kernel[1] * cin,
            other_ops=out if self.use_bias else 0,
            rf=k_eff,
            jump=self.stride,
        )

    def param_shapes(self, in_shape: Shape) -> dict[str, Shape]:
        """``w`` (kh, kw, C/groups, features) and optional ``b`` (features,)."""
        shapes = {"w": (*self.kernel, in_shape[2] // self.groups, self.features)}
        if self.use_bias:
            shapes["b"] = (self.features,)
        return shapes

    def init_param(self, name: str, key: jax.Array, shape: Shape, in_shape: Shape) -> jax.Array:
        """Draw ``w`` with ``self.kernel_init`` and fans of the grouped kernel; ``b`` by the same rule."""
        fan_in = self.kernel[0] * self.kernel[1] * (in_shape[2] // self.groups)
        if name == "b":
            return initializers.bias(self.kernel_init, key, shape, fan_in)
        fan_out = self.kernel[0] * self.kernel[1] * self.features // self.groups
        return initializers.weight(self.kernel_init, key, shape, fan_in, fan_out)

    def torch_arrays(self) -> dict[str, tuple[str, str, str]]:
        """``weight`` (OIHW in torch) and ``bias``."""
        return _torch_kernel(self, "conv")

    def width_fields(self) -> dict[str, int]:
        """``features`` (a multiple of ``groups``) unless ``keep_width``."""
        return {} if self.keep_width else {"features": self.groups}

    def channel_groups(self, in_shape: Shape) -> int | None:
        """``groups``."""
        return self.groups

    def conv_lowering(self) -> str | None:
        """Grouped when ``groups > 1``."""
        return "grouped" if self.groups > 1 else "dense"

    def forward(
        self, params: Params, state: State, x: jax.Array, *, train: bool, key: jax.Array | None
    ) -> tuple[jax.Array, State]:
        """Convolve with the selected implementation (see :mod:`jaxcnn.lowering.conv`)."""
        _, pads, _ = self._geometry(tuple(x.shape[1:]))
        return convolve(self, params, x, pads, self.groups), state

    def apply_relu(
        self, params: Params, state: State, x: jax.Array, *, train: bool = False, key: jax.Array | None = None
    ) -> tuple[jax.Array, State]:
        """``apply`` followed by ``jax.nn.relu``: the same values and gradients, in one pass where it can.

        Sequential calls it for a Conv straight before a ReLU: where the native dense forward computes
        the convolution, it applies the ReLU as it stores its output, instead of XLA reading and writing
        the whole output again (on allconv6 at 32x32 batch 128, four such passes were ~10% of inference).
        """
        in_shape = self.check_call(params, state, x)
        _, pads, _ = self._geometry(in_shape)
        return convolve(self, params, x, pads, self.groups, relu=True), state


@dataclass(frozen=True)
class DepthwiseConv(Layer):
    """Depthwise convolution: one ``kh x kw`` filter per input channel (x ``multiplier``).

    Its channel count follows its input, so the width transform never touches it.
    """

    kernel: Any = 3
    stride: Any = 1
    padding: Padding = "SAME"
    dilation: Any = 1
    multiplier: int = 1
    use_bias: bool = False
    kernel_init: str = "he_normal"
    compute_dtype: str | None = None
    impl: str = "auto"

    kind: ClassVar[str] = "dwconv"
    decayed: ClassVar[tuple[str, ...]] = ("w",)

    def __post_init__(self) -> None:
        if not isinstance(self.multiplier, int) or self.multiplier < 1:
            raise ValueError(f"DepthwiseConv: multiplier must be a positive int, got {self.multiplier!r}")
        normalize_conv(self)

    def spec(self, in_shape: Shape) -> Spec:
        """Output (H', W', C x multiplier); MACs = H'W' x C x multiplier x kh kw."""
        (oh, ow), _, k_eff = window_output(self, in_shape, self.kernel, self.stride, self.dilation, self.padding)
        out = oh * ow * in_shape[2] * self.multiplier
        return Spec(
            (oh, ow, in_shape[2] * self.multiplier),
            macs=out * self.kernel[0] * self.kernel[1],
            other_ops=out if self.use_bias else 0,
            rf=k_eff,
            jump=self.stride,
        )

    def param_shapes(self, in_shape: Shape) -> dict[str, Shape]:
        """``w`` (kh, kw, 1, C x multiplier) and optional ``b``."""
        c = in_shape[2] * self.multiplier
        shapes = {"w": (*self.kernel, 1, c)}
        if self.use_bias:
            shapes["b"] = (c,)
        return shapes

    def init_param(self, name: str, key: jax.Array, shape: Shape, in_shape: Shape) -> jax.Array:
        """Fans of one channel's filter: fan_in = kh kw, fan_out = kh kw x multiplier."""
        fan_in = self.kernel[0] * self.kernel[1]
        if name == "b":
            return initializers.bias(self.kernel_init, key, shape, fan_in)
        return initializers.weight(self.kernel_init, key, shape, fan_in, fan_in * self.multiplier)

    def torch_arrays(self) -> dict[str, tuple[str, str, str]]:
        """``weight`` (OIHW in torch) and ``bias``."""
        return _torch_kernel(self, "conv")

    def channel_groups(self, in_shape: Shape) -> int | None:
        """One group per input channel."""
        return in_shape[-1]

    def conv_lowering(self) -> str | None:
        """Always grouped."""
        return "grouped"

    def forward(
        self, params: Params, state: State, x: jax.Array, *, train: bool, key: jax.Array | None
    ) -> tuple[jax.Array, State]:
        """Grouped convolution with one group per input channel."""
        in_shape = tuple(x.shape[1:])
        _, pads, _ = window_output(self, in_shape, self.kernel, self.stride, self.dilation, self.padding)
        return convolve(self, params, x, pads, in_shape[2]), state


@dataclass(frozen=True)
class Dense(Layer):
    """Fully connected layer on flat ``(D,)`` features: ``w`` (D, features), ``b`` (features,)."""

    features: int
    use_bias: bool = True
    kernel_init: str = "lecun_normal"
    keep_width: bool = False
    compute_dtype: str | None = None

    kind: ClassVar[str] = "dense"
    decayed: ClassVar[tuple[str, ...]] = ("w",)

    def __post_init__(self) -> None:
        if not isinstance(self.features, int) or self.features < 1:
            raise ValueError(f"Dense: features must be a positive int, got {self.features!r}")
        check_init(self)
        check_dtype(self)

    def spec(self, in_shape: Shape) -> Spec:
        """Output (features,); MACs = D x features."""
        if len(in_shape) != 1:
            raise ShapeError(
                self, in_shape, "Dense expects flat (D,) features per example",
                "Insert Flatten() or GlobalAvgPool() before it",
            )
        return Spec(
            (self.features,),
            macs=in_shape[0] * self.features,
            other_ops=self.features if self.use_bias else 0,
        )

    def param_shapes(self, in_shape: Shape) -> dict[str, Shape]:
        """``w`` (D, features) and optional ``b`` (features,)."""
        shapes = {"w": (in_shape[0], self.features)}
        if self.use_bias:
            shapes["b"] = (self.features,)
        return shapes

    def init_param(self, name: str, key: jax.Array, shape: Shape, in_shape: Shape) -> jax.Array:
        """Draw with ``self.kernel_init``; fan_in = D, fan_out = features."""
        if name == "b":
            return initializers.bias(self.kernel_init, key, shape, in_shape[0])
        return initializers.weight(self.kernel_init, key, shape, in_shape[0], self.features)

    def torch_arrays(self) -> dict[str, tuple[str, str, str]]:
        """``weight`` (out x in in torch) and ``bias``."""
        return _torch_kernel(self, "dense")

    def width_fields(self) -> dict[str, int]:
        """``features`` unless ``keep_width``."""
        return {} if self.keep_width else {"features": 1}

    def forward(
        self, params: Params, state: State, x: jax.Array, *, train: bool, key: jax.Array | None
    ) -> tuple[jax.Array, State]:
        """x @ w + b."""
        x, w = cast_inputs(x, params["w"], self.compute_dtype)
        y = x @ w
        if self.use_bias:
            y = y + params["b"].astype(y.dtype)
        return y, state
