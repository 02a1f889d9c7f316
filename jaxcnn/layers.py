"""Leaf layers: convolutions, dense, pooling, normalisation, dropout, activations.

Every layer is a frozen dataclass of hyperparameters implementing the protocol in
:mod:`jaxcnn.core`. Per-example shapes are ``(H, W, C)`` for images and ``(D,)``
for flat features; arrays are batched NHWC, kernels HWIO.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxcnn import initializers
from jaxcnn.conv_impl import check_impl, conv2d, effective_kernel
from jaxcnn.core import Layer, Params, ParamsError, Shape, ShapeError, Spec, State
from jaxcnn.reductions import mean_leading

Padding = Any  # "SAME" | "VALID" | int | (ph, pw) | ((top, bottom), (left, right))
Pair = tuple[int, int]


# -- hyperparameter normalisation (runs in __post_init__ so equal layers hash equal) ------


def _set(obj: Any, name: str, value: Any) -> None:
    object.__setattr__(obj, name, value)


def _pair(layer: Any, name: str, value: Any, minimum: int = 1) -> Pair:
    if isinstance(value, int) and not isinstance(value, bool):
        value = (value, value)
    try:
        a, b = (int(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{type(layer).__name__}: {name} must be an int or a pair of ints, got {value!r}") from None
    if a < minimum or b < minimum:
        raise ValueError(f"{type(layer).__name__}: {name} must be >= {minimum}, got {value!r}")
    return (a, b)


def _padding(layer: Any, value: Any) -> Any:
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


def _check_init(layer: Any) -> None:
    problem = initializers.check_init_name(layer.kernel_init)
    if problem:
        raise ValueError(f"{type(layer).__name__}: {problem}")


def _dtype(layer: Any) -> None:
    if layer.compute_dtype is not None:
        try:
            _set(layer, "compute_dtype", jnp.dtype(layer.compute_dtype).name)
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


def _cast(x: jax.Array, w: jax.Array, compute_dtype: str | None) -> tuple[jax.Array, jax.Array]:
    dtype = jnp.dtype(compute_dtype) if compute_dtype else jnp.promote_types(x.dtype, w.dtype)
    return x.astype(dtype), w.astype(dtype)


def _normalize_conv(layer: Any) -> None:
    """Shared hyperparameter checks of Conv and DepthwiseConv (pairs, padding, init, dtype, impl)."""
    _set(layer, "kernel", _pair(layer, "kernel", layer.kernel))
    _set(layer, "stride", _pair(layer, "stride", layer.stride))
    _set(layer, "dilation", _pair(layer, "dilation", layer.dilation))
    _set(layer, "padding", _padding(layer, layer.padding))
    _check_init(layer)
    _dtype(layer)
    check_impl(layer, layer.impl)


def _convolve(layer: Any, params: dict, x: jax.Array, pads: tuple[Pair, Pair], groups: int) -> jax.Array:
    """Cast, convolve with the layer's lowering, add the bias."""
    x, w = _cast(x, params["w"], layer.compute_dtype)
    y = conv2d(x, w, layer.stride, pads, layer.dilation, groups, layer.impl)
    if layer.use_bias:
        y = y + params["b"].astype(y.dtype)
    return y


# -- convolutions ----------------------------------------------------------------------


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
        _normalize_conv(self)

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
            window=k_eff,
            stride=self.stride,
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

    def has_arrays(self) -> bool:
        """Convolutions own a kernel."""
        return True

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
        """Convolve with the selected implementation (see :mod:`jaxcnn.conv_impl`)."""
        _, pads, _ = self._geometry(tuple(x.shape[1:]))
        return _convolve(self, params, x, pads, self.groups), state


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
        _normalize_conv(self)

    def spec(self, in_shape: Shape) -> Spec:
        """Output (H', W', C x multiplier); MACs = H'W' x C x multiplier x kh kw."""
        (oh, ow), _, k_eff = window_output(self, in_shape, self.kernel, self.stride, self.dilation, self.padding)
        out = oh * ow * in_shape[2] * self.multiplier
        return Spec(
            (oh, ow, in_shape[2] * self.multiplier),
            macs=out * self.kernel[0] * self.kernel[1],
            other_ops=out if self.use_bias else 0,
            window=k_eff,
            stride=self.stride,
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

    def has_arrays(self) -> bool:
        """Depthwise convolutions own a kernel."""
        return True

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
        return _convolve(self, params, x, pads, in_shape[2]), state


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
        _check_init(self)
        _dtype(self)

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

    def has_arrays(self) -> bool:
        """Dense layers own a weight matrix."""
        return True

    def width_fields(self) -> dict[str, int]:
        """``features`` unless ``keep_width``."""
        return {} if self.keep_width else {"features": 1}

    def forward(
        self, params: Params, state: State, x: jax.Array, *, train: bool, key: jax.Array | None
    ) -> tuple[jax.Array, State]:
        """x @ w + b."""
        x, w = _cast(x, params["w"], self.compute_dtype)
        y = x @ w
        if self.use_bias:
            y = y + params["b"].astype(y.dtype)
        return y, state


# -- reshaping and pooling -------------------------------------------------------------


def _whole(in_shape: Shape) -> Pair:
    return (in_shape[0], in_shape[1]) if len(in_shape) == 3 else (1, 1)


@dataclass(frozen=True)
class Flatten(Layer):
    """Flatten each example to ``(H*W*C,)`` (row-major over H, W, C)."""

    kind: ClassVar[str] = "flatten"
    in_place: ClassVar[bool] = True  # a reshape: a view of its input

    def spec(self, in_shape: Shape) -> Spec:
        """Every output sees the whole input: the receptive window is the input size."""
        return Spec((math.prod(in_shape),), window=_whole(in_shape), stride=_whole(in_shape))

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
        _set(self, "window", _pair(self, "window", self.window))
        _set(self, "stride", self.window if self.stride is None else _pair(self, "stride", self.stride))
        _set(self, "padding", _padding(self, self.padding))

    def spec(self, in_shape: Shape) -> Spec:
        """Output (H', W', C); other ops = outputs x window size."""
        (oh, ow), _, _ = window_output(self, in_shape, self.window, self.stride, (1, 1), self.padding)
        out = oh * ow * in_shape[2]
        return Spec(
            (oh, ow, in_shape[2]),
            other_ops=out * self.window[0] * self.window[1],
            window=self.window,
            stride=self.stride,
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
        return Spec(out, other_ops=math.prod(in_shape), window=in_shape[:2], stride=in_shape[:2])


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


# -- normalisation and regularisation --------------------------------------------------


@dataclass(frozen=True)
class BatchNorm(Layer):
    """Batch normalisation over the last (channel) axis.

    Train mode normalises with the batch mean and biased variance, and updates the
    running statistics as ``new = ema_decay * old + (1 - ema_decay) * batch`` where the
    batch variance is the unbiased one (n / (n - 1), as PyTorch and Caffe keep it).
    ``ema_decay=0.9`` equals PyTorch's ``momentum=0.1``. Statistics are float32 always.
    """

    ema_decay: float = 0.9
    eps: float = 1e-5
    use_scale: bool = True
    use_offset: bool = True
    compute_dtype: str | None = None

    kind: ClassVar[str] = "bn"
    pointwise: ClassVar[bool] = True  # per-channel affine map of each position

    def __post_init__(self) -> None:
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"BatchNorm: ema_decay must be in [0, 1), got {self.ema_decay!r}")
        if self.eps <= 0:
            raise ValueError(f"BatchNorm: eps must be > 0, got {self.eps!r}")
        _dtype(self)

    def spec(self, in_shape: Shape) -> Spec:
        """Same shape; 2 ops per element (scale and shift) at inference."""
        return Spec(in_shape, other_ops=2 * math.prod(in_shape))

    def param_shapes(self, in_shape: Shape) -> dict[str, Shape]:
        """``scale`` and ``offset`` per channel (each optional)."""
        c = (in_shape[-1],)
        shapes = {}
        if self.use_scale:
            shapes["scale"] = c
        if self.use_offset:
            shapes["offset"] = c
        return shapes

    def state_shapes(self, in_shape: Shape) -> dict[str, Shape]:
        """Running ``mean`` and ``var`` per channel."""
        return {"mean": (in_shape[-1],), "var": (in_shape[-1],)}

    def init_param(self, name: str, key: jax.Array, shape: Shape, in_shape: Shape) -> jax.Array:
        """scale = 1, offset = 0."""
        return jnp.ones(shape, jnp.float32) if name == "scale" else jnp.zeros(shape, jnp.float32)

    def init_state(self, name: str, shape: Shape) -> jax.Array:
        """mean = 0, var = 1."""
        return jnp.ones(shape, jnp.float32) if name == "var" else jnp.zeros(shape, jnp.float32)

    def has_arrays(self) -> bool:
        """BatchNorm owns running statistics."""
        return True

    def forward(
        self, params: Params, state: State, x: jax.Array, *, train: bool, key: jax.Array | None
    ) -> tuple[jax.Array, State]:
        """Normalise in (at least) float32, return in the compute (or input) dtype."""
        out_dtype = jnp.dtype(self.compute_dtype) if self.compute_dtype else x.dtype
        # At least float32: bf16/f16 inputs are upcast, but float64 (x64 mode) must not be
        # silently truncated to float32 precision.
        xf = x.astype(jnp.promote_types(x.dtype, jnp.float32))
        if train:
            # two-stage sums: accurate under every XLA reduction strategy (see jaxcnn.reductions)
            mean = mean_leading(xf, x.ndim - 1)
            var = mean_leading(jnp.square(xf - mean), x.ndim - 1)
            n = math.prod(x.shape[:-1])
            unbiased = var * (n / max(n - 1, 1))
            d = self.ema_decay
            state = {  # kept in the dtype init gave them (float32), whatever the input dtype
                "mean": (d * state["mean"] + (1.0 - d) * lax.stop_gradient(mean)).astype(state["mean"].dtype),
                "var": (d * state["var"] + (1.0 - d) * lax.stop_gradient(unbiased)).astype(state["var"].dtype),
            }
        else:
            mean, var = state["mean"], state["var"]
        y = (xf - mean) * lax.rsqrt(var + self.eps)
        if self.use_scale:
            y = y * params["scale"]
        if self.use_offset:
            y = y + params["offset"]
        return y.astype(out_dtype), state


@dataclass(frozen=True)
class Dropout(Layer):
    """Zero each element with probability ``rate`` in train mode and rescale by 1/(1-rate)."""

    rate: float = 0.5

    kind: ClassVar[str] = "dropout"
    in_place: ClassVar[bool] = True
    pointwise: ClassVar[bool] = True

    def __post_init__(self) -> None:
        if not 0.0 <= self.rate < 1.0:
            raise ValueError(f"Dropout: rate is the drop probability and must be in [0, 1), got {self.rate!r}")

    def spec(self, in_shape: Shape) -> Spec:
        """Same shape."""
        return Spec(in_shape)

    def forward(
        self, params: Params, state: State, x: jax.Array, *, train: bool, key: jax.Array | None
    ) -> tuple[jax.Array, State]:
        """Bernoulli mask from ``key`` in train mode; identity otherwise."""
        if not train or self.rate == 0.0:
            return x, state
        if key is None:
            raise ParamsError(
                self, tuple(x.shape[1:]), "train mode needs a random key",
                "Pass key=jax.random.key(...) to apply (or train=False for evaluation)",
            )
        # float32 draws always (what bernoulli does in the default mode), so a float64 run draws the same mask
        keep = jax.random.uniform(key, x.shape, jnp.float32) < jnp.float32(1.0 - self.rate)
        return jnp.where(keep, x / (1.0 - self.rate), jnp.zeros_like(x)), state


# -- activations and channel tricks ----------------------------------------------------


@dataclass(frozen=True)
class _Elementwise(Layer):
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
class ReLU(_Elementwise):
    """max(x, 0)."""

    kind: ClassVar[str] = "relu"

    def fn(self, x: jax.Array) -> jax.Array:
        """max(x, 0)."""
        return jax.nn.relu(x)


@dataclass(frozen=True)
class ReLU6(_Elementwise):
    """min(max(x, 0), 6)."""

    kind: ClassVar[str] = "relu6"

    def fn(self, x: jax.Array) -> jax.Array:
        """min(max(x, 0), 6)."""
        return jax.nn.relu6(x)


@dataclass(frozen=True)
class LeakyReLU(_Elementwise):
    """x for x >= 0, negative_slope * x otherwise."""

    negative_slope: float = 0.01

    kind: ClassVar[str] = "leaky_relu"

    def fn(self, x: jax.Array) -> jax.Array:
        """Leaky ReLU."""
        return jax.nn.leaky_relu(x, self.negative_slope)


@dataclass(frozen=True)
class GELU(_Elementwise):
    """Gaussian error linear unit (tanh approximation unless ``approximate=False``)."""

    approximate: bool = True

    kind: ClassVar[str] = "gelu"

    def fn(self, x: jax.Array) -> jax.Array:
        """GELU."""
        return jax.nn.gelu(x, approximate=self.approximate)


@dataclass(frozen=True)
class Sigmoid(_Elementwise):
    """1 / (1 + exp(-x))."""

    kind: ClassVar[str] = "sigmoid"

    def fn(self, x: jax.Array) -> jax.Array:
        """Logistic sigmoid."""
        return jax.nn.sigmoid(x)


@dataclass(frozen=True)
class Tanh(_Elementwise):
    """Hyperbolic tangent."""

    kind: ClassVar[str] = "tanh"

    def fn(self, x: jax.Array) -> jax.Array:
        """tanh."""
        return jnp.tanh(x)


@dataclass(frozen=True)
class Softmax(_Elementwise):
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


LEAF_TYPES = (
    Conv, DepthwiseConv, Dense, Flatten, MaxPool, AvgPool, L2Pool, GlobalAvgPool, GlobalMaxPool,
    BatchNorm, Dropout, ReLU, ReLU6, LeakyReLU, GELU, Sigmoid, Tanh, Softmax, CReLU, Identity,
)

__all__ = [t.__name__ for t in LEAF_TYPES] + ["resolve_padding", "window_output"]
