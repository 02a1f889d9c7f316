"""Property-based checks of the window arithmetic and of channel rounding (hypothesis)."""

from __future__ import annotations

import functools
import math
import re

import jax
import jax.numpy as jnp
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxcnn import AvgPool, Conv, DepthwiseConv, L2Pool, MaxPool, ReLU, Sequential, ShapeError, round_channels, walk
from jaxcnn.lowering.conv import IMPLS

KEY = jax.random.key(0)
SETTINGS = settings(max_examples=40, deadline=None)
KINDS = ("conv", "dwconv", "maxpool", "avgpool", "l2pool")


def _out_size(w, f, s, d, p):
    """The textbook formula: floor((W - d(F - 1) - 1 + 2P) / S) + 1."""
    return (w - d * (f - 1) - 1 + 2 * p) // s + 1


def _build(kind, kernel, stride, dilation, padding, cin, impl):
    if kind == "conv":
        return Conv(2 * cin, kernel, stride, padding, dilation, groups=cin, impl=impl)
    if kind == "dwconv":
        return DepthwiseConv(kernel, stride, padding, dilation, multiplier=2, impl=impl)
    pool = {"maxpool": MaxPool, "avgpool": AvgPool, "l2pool": L2Pool}[kind]
    return pool(kernel, stride, padding)


@st.composite
def window_configs(draw, fits: bool):
    """(layer, in_shape, expected spatial output) with per-axis kernel, stride, dilation and padding.

    ``fits=False`` makes the effective kernel larger than the padded input on at least one axis.
    """
    kind = draw(st.sampled_from(KINDS))
    conv = kind in ("conv", "dwconv")
    kernel, stride, dilation, padding, size = [], [], [], [], []
    bad_axis = None if fits else draw(st.integers(0, 1))
    for axis in range(2):
        d = draw(st.integers(1, 3)) if conv else 1
        if axis == bad_axis:  # room for at least one too-small input size
            f = draw(st.integers(2, 5))
            k_eff = d * (f - 1) + 1
            p = draw(st.integers(0, (k_eff - 2) // 2))
            w = draw(st.integers(1, k_eff - 2 * p - 1))
        else:
            f = draw(st.integers(1, 5))
            k_eff = d * (f - 1) + 1
            p = draw(st.integers(0, 3))
            w = draw(st.integers(max(1, k_eff - 2 * p), k_eff - 2 * p + 10))
        kernel.append(f)
        stride.append(draw(st.integers(1, 3)))
        dilation.append(d)
        padding.append(p)
        size.append(w)
    cin = draw(st.integers(1, 3))
    impl = draw(st.sampled_from(IMPLS))
    layer = _build(kind, tuple(kernel), tuple(stride), tuple(dilation), tuple(padding), cin, impl)
    expected = tuple(_out_size(*args) for args in zip(size, kernel, stride, dilation, padding, strict=True))
    return layer, (size[0], size[1], cin), expected


def _abstract_output(layer, in_shape):
    """The shape the real computation produces, traced abstractly (jax.eval_shape: nothing compiles)."""
    params, state = jax.eval_shape(functools.partial(layer.init, in_shape=in_shape), KEY)
    x = jax.ShapeDtypeStruct((2, *in_shape), jnp.float32)
    return jax.eval_shape(lambda p, s, x: layer.apply(p, s, x)[0], params, state, x).shape


@SETTINGS
@given(window_configs(fits=True))
def test_window_output_shape_formula(config):
    layer, in_shape, (oh, ow) = config
    spec = layer.spec(in_shape)
    channels = in_shape[2] * (2 if isinstance(layer, (Conv, DepthwiseConv)) else 1)
    assert spec.out_shape == (oh, ow, channels)
    assert _abstract_output(layer, in_shape) == (2, oh, ow, channels)
    assert oh >= 1 and ow >= 1


@SETTINGS
@given(window_configs(fits=False))
def test_kernel_larger_than_padded_input_raises(config):
    layer, in_shape, _ = config
    with pytest.raises(ShapeError, match="larger than the padded input"):
        layer.spec(in_shape)
    with pytest.raises(ShapeError, match="larger than the padded input"):
        layer.init(KEY, in_shape)
    shapes = layer.param_shapes(in_shape)  # shapes alone are fine; apply must refuse before any lax call
    params = {k: jnp.zeros(v) for k, v in shapes.items()}
    with pytest.raises(ShapeError, match="larger than the padded input") as info:
        layer.apply(params, {}, jnp.zeros((1, *in_shape)))
    assert type(info.value) is ShapeError
    model = Sequential([ReLU(), layer])
    with pytest.raises(ShapeError) as info:
        list(walk(model, in_shape))
    # the path, then the params key in brackets (Sequential's list keys are "NN_kind"), then the message
    assert info.value.path == "layers[1]"
    assert re.match(r"layers\[1\] \(01_[a-z0-9]+\): ", str(info.value)), str(info.value)


@SETTINGS
@given(
    depth=st.integers(1, 4),
    strides=st.lists(st.integers(1, 2), min_size=4, max_size=4),
    kernels=st.lists(st.integers(1, 4), min_size=4, max_size=4),
    size=st.integers(8, 20),
)
def test_stacked_window_layers_chain_shapes(depth, strides, kernels, size):
    layers = []
    expected = size
    for i in range(depth):
        k, s = kernels[i], strides[i]
        layers.append(Conv(2, k, s, padding="SAME") if i % 2 == 0 else MaxPool(k, s))
        if i % 2 == 0:
            expected = math.ceil(expected / s)
        elif expected >= k:
            expected = (expected - k) // s + 1
        else:
            expected = None
            break
    model = Sequential(layers)
    if expected is None:
        with pytest.raises(ShapeError):
            model.spec((size, size, 3))
        return
    out = model.spec((size, size, 3)).out_shape
    assert out[:2] == (expected, expected)
    assert _abstract_output(model, (size, size, 3)) == (2, *out)


# -- channel rounding -------------------------------------------------------------------------------------


def _tf_slim_make_divisible(v, divisor=8):
    new_v = max(8, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


@SETTINGS
@given(c=st.integers(1, 4096), m=st.floats(0.05, 3.0))
def test_round_channels_properties(c, m):
    v = c * m
    plain = round_channels(c, m)
    assert plain == max(1, math.floor(v + 0.5))
    assert plain >= 1 and (v < 0.5 or abs(plain - v) <= 0.5)

    eight = round_channels(c, m, divisor=8)
    assert eight == _tf_slim_make_divisible(v)
    assert eight % 8 == 0 and eight >= 8 and eight >= 0.9 * v


@SETTINGS
@given(c=st.integers(1, 1024), m=st.floats(0.05, 3.0), groups=st.sampled_from([1, 2, 3, 4, 8, 32]))
def test_round_channels_grouped_is_nearest_multiple_of_groups(c, m, groups):
    out = round_channels(c, m, groups=groups)
    v = c * m
    assert out % groups == 0 and out >= groups
    if v >= groups:
        assert abs(out - v) <= groups / 2 + 1e-9  # the nearest multiple of groups to c * m
        assert out == groups * math.floor(v / groups + 0.5)  # halves up
    else:
        assert out == groups  # never fewer than one channel per group


def test_a_custom_layer_is_accounted_converted_and_decayed_by_its_traits():
    # A user's layers, defined here and nowhere in jaxcnn: their declared traits alone decide activation
    # memory (in_place), FC-to-conv conversion (pointwise) and weight decay (decayed).
    import math
    from dataclasses import dataclass
    from typing import ClassVar

    import jax
    import jax.numpy as jnp
    import numpy as np

    import jaxcnn as jc
    from jaxcnn.core import Layer, Spec
    from jaxcnn.summary import summary
    from jaxcnn.train.step import decay_mask
    from jaxcnn.transforms import fc_to_conv

    @dataclass(frozen=True)
    class Swish(Layer):
        kind: ClassVar[str] = "swish"
        in_place: ClassVar[bool] = True
        pointwise: ClassVar[bool] = True

        def spec(self, in_shape):
            return Spec(in_shape, other_ops=math.prod(in_shape))

        def forward(self, params, state, x, *, train, key):
            return x * jax.nn.sigmoid(x), state

    @dataclass(frozen=True)
    class Gain(Layer):  # a per-channel learnable gain "g" (decayed) and offset "o" (not)
        kind: ClassVar[str] = "gain"
        decayed: ClassVar[tuple[str, ...]] = ("g",)

        def spec(self, in_shape):
            return Spec(in_shape, other_ops=math.prod(in_shape))

        def param_shapes(self, in_shape):
            return {"g": (in_shape[-1],), "o": (in_shape[-1],)}

        def init_param(self, name, key, shape, in_shape):
            return jnp.ones(shape) if name == "g" else jnp.zeros(shape)

        def forward(self, params, state, x, *, train, key):
            return x * params["g"] + params["o"], state

    model = jc.Sequential({"conv": jc.Conv(4, 3), "gain": Gain(), "act": Swish(), "flat": jc.Flatten(),
                           "fc": jc.Dense(3), "act2": Swish(), "out": jc.Dense(2)})
    rows = {r.path: r for r in summary(model, (6, 6, 2)).rows}
    by_kind = {r.kind: r for r in rows.values()}
    assert by_kind["swish"].activations == 0            # in place: no tensor of its own
    assert by_kind["gain"].activations == 6 * 6 * 4     # not declared in place: its output is kept (SAME conv)
    params, state = model.init(jax.random.key(0), (6, 6, 2))
    mask = decay_mask(model)(params)
    assert mask["gain"] == {"g": True, "o": False} and mask["conv"]["w"] is True and mask["conv"]["b"] is False
    conv_model, conv_params = fc_to_conv(model, params, (6, 6, 2))   # Swish after Flatten passes as pointwise
    x = jax.random.normal(jax.random.key(1), (2, 6, 6, 2))
    y, _ = model.apply(params, state, x)
    yc, _ = conv_model.apply(conv_params, state, x)
    np.testing.assert_allclose(np.asarray(yc).reshape(2, 2), np.asarray(y), rtol=1e-5, atol=1e-6)


def test_a_new_conv_like_layer_is_width_scaled_accounted_decayed_and_lowered_by_its_traits():
    # A user's 'valid' convolution written from scratch (not a Conv subclass): declaring width_fields,
    # channel_groups, conv_lowering, decayed and an impl/compute_dtype hyperparameter is all it takes.
    from dataclasses import dataclass, replace
    from typing import ClassVar

    import numpy as np

    import jaxcnn as jc
    from jaxcnn.core import Layer, Spec
    from jaxcnn.lowering.conv import conv2d, lowerings_used
    from jaxcnn.summary import summary
    from jaxcnn.train.step import decay_mask

    @dataclass(frozen=True)
    class ValidConv(Layer):
        features: int
        k: int = 3
        keep_width: bool = False
        impl: str = "auto"
        compute_dtype: str | None = None
        kind: ClassVar[str] = "validconv"
        decayed: ClassVar[tuple[str, ...]] = ("kernel",)

        def spec(self, in_shape):
            h, w, _ = in_shape
            out = (h - self.k + 1, w - self.k + 1, self.features)
            return Spec(out, macs=math.prod(out) * self.k * self.k * in_shape[2], rf=(self.k, self.k))

        def param_shapes(self, in_shape):
            return {"kernel": (self.k, self.k, in_shape[2], self.features), "shift": (self.features,)}

        def init_param(self, name, key, shape, in_shape):
            return jax.random.normal(key, shape) if name == "kernel" else jnp.zeros(shape)

        def width_fields(self):
            return {} if self.keep_width else {"features": 1}

        def channel_groups(self, in_shape):
            return 1

        def conv_lowering(self):
            return "dense"

        def torch_arrays(self):
            return {"weight": ("params", "kernel", "conv"), "bias": ("params", "shift", "")}

        def forward(self, params, state, x, *, train, key):
            y = conv2d(x, params["kernel"].astype(self.compute_dtype or x.dtype), (1, 1), ((0, 0), (0, 0)),
                       (1, 1), 1, self.impl)
            return y + params["shift"].astype(y.dtype), state

    model = jc.Sequential({"a": ValidConv(8), "relu": jc.ReLU(), "b": ValidConv(6, keep_width=True),
                           "pool": jc.GlobalAvgPool(), "fc": jc.Dense(3, keep_width=True)})
    in_shape = (9, 9, 2)

    half = jc.scale_width(model, 0.5)                            # width: features 8 -> 4, the kept one stays 6
    assert half.layers[0] == replace(model.layers[0], features=4) and half.layers[2] == model.layers[2]

    rows = {r.path: r for r in summary(half, in_shape).rows}      # accounting, against the closed forms
    assert rows["layers[0]"].learnable_params == 3 * 3 * 2 * 4 + 4 and rows["layers[0]"].macs == 7 * 7 * 4 * 9 * 2
    assert rows["layers[2]"].learnable_params == 3 * 3 * 4 * 6 + 6 and rows["layers[2]"].groups == 1
    assert rows["layers[2]"].out_shape == (5, 5, 6) and rows["layers[2]"].rf == (5, 5)

    params, state = half.init(jax.random.key(0), in_shape)     # decay: the declared kernel only
    mask = decay_mask(half)(params)
    assert mask["a"] == {"kernel": True, "shift": False} and mask["fc"] == {"w": True, "b": False}

    x = jax.random.normal(jax.random.key(1), (2, *in_shape))
    ref, _ = jc.with_conv_impl(half, "xla").apply(params, state, x)
    for impl in ("shift", "im2col"):                             # lowering: with_conv_impl reaches it
        lowered = jc.with_conv_impl(half, impl)
        assert lowered.layers[0].impl == impl and lowered.layers[2].impl == impl
        with lowerings_used() as ran:
            y, _ = lowered.apply(params, state, x)
        assert ran == {impl}
        np.testing.assert_allclose(np.asarray(y), np.asarray(ref), rtol=1e-4, atol=1e-4)
    assert jc.with_conv_impl(half, "shift", depthwise_only=True).layers[0].impl == "auto"  # dense: untouched
    assert jc.mixed_precision(half).layers[0].compute_dtype == "bfloat16"

    from jaxcnn.storage.interop import from_torch, to_torch  # interop: exported by its torch_arrays trait
    sd = to_torch(half, params, state, in_shape)
    assert list(sd) == ["0.weight", "0.bias", "2.weight", "2.bias", "4.weight", "4.bias"]
    assert sd["0.weight"].shape == (4, 2, 3, 3)                  # OIHW, as torch's Conv2d holds it
    np.testing.assert_array_equal(sd["0.weight"], np.asarray(params["a"]["kernel"]).transpose(3, 2, 0, 1))
    back, _ = from_torch(half, sd, in_shape)
    for name in ("a", "b", "fc"):
        for leaf, arr in params[name].items():
            np.testing.assert_array_equal(np.asarray(back[name][leaf]), np.asarray(arr))
