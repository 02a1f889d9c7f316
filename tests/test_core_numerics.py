"""Layer outputs (and convolution gradients) against independent NumPy references."""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest
from zoo import np_conv, np_conv_vjp, np_pool, randomize, ref_pads, small_cnn

from jaxcnn import (
    GELU,
    AvgPool,
    BatchNorm,
    Conv,
    CReLU,
    Dense,
    DepthwiseConv,
    Dropout,
    Flatten,
    GlobalAvgPool,
    GlobalMaxPool,
    Identity,
    L2Pool,
    LeakyReLU,
    MaxPool,
    Parallel,
    ReLU,
    ReLU6,
    Residual,
    Sequential,
    Sigmoid,
    Softmax,
    Tanh,
    mixed_precision,
)
from jaxcnn.lowering import native, native_dense
from jaxcnn.lowering.conv import IMPLS, choose, conv2d

KEY = jax.random.key(0)
TOL = dict(rtol=1e-4, atol=1e-4)


def _x(shape, seed=0, scale=1.0, shift=0.0):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape) * scale + shift, jnp.float32)


def _params(layer, in_shape, seed=1):
    """Random N(0, 1) params of the right shapes, without running init (no RNG compilation)."""
    abstract = jax.eval_shape(functools.partial(layer.init, in_shape=in_shape), KEY)
    return randomize(abstract[0], seed), randomize(abstract[1], seed + 1)


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


# -- convolution: every implementation against the NumPy loops ----------------------------------------

# id, depthwise?, hyperparameters, per-example input shape, all impls? (else XLA only, to keep the suite fast:
# every lowering receives the padding as explicit numbers, so the all-impl cases cover stride 1 and 2, SAME and
# VALID, asymmetric padding, dilation, grouped and depthwise with and without multiplier)
CONV_CASES = [
    ("s1_same", False, dict(features=4, kernel=3, padding="SAME"), (7, 7, 3), True),
    ("s2_same_even_input", False, dict(features=4, kernel=3, stride=2, padding="SAME"), (8, 8, 3), True),
    ("s23_even_kernel_asym", False, dict(features=3, kernel=(4, 3), stride=(2, 3), padding=((2, 1), (0, 2))),
     (9, 11, 2), True),
    ("s3_k5", False, dict(features=2, kernel=5, stride=3, padding=2), (10, 8, 3), True),
    ("kernel_larger_than_input", False, dict(features=3, kernel=3, stride=2, padding=1), (2, 2, 4), True),
    # taps that see only padding are left out of shift's and im2col's sums (both, and every output in padding)
    ("depthwise_larger_than_input", True, dict(kernel=3, stride=2, padding=1), (2, 2, 3), True),
    ("only_padding_rows", False, dict(features=2, kernel=(2, 1), stride=4, padding=((3, 0), (0, 0))), (1, 3, 2),
     True),
    ("s2_valid", False, dict(features=4, kernel=3, stride=2, padding="VALID"), (9, 8, 3), True),
    ("dilation_s2_valid", False, dict(features=3, kernel=3, stride=2, dilation=(2, 1), padding="VALID"), (9, 8, 2),
     True),
    ("groups4", False, dict(features=8, kernel=3, groups=4), (6, 6, 8), True),
    ("groups2_s2_dil", False, dict(features=6, kernel=3, stride=2, dilation=2, groups=2, padding=((1, 2), (2, 1))),
     (9, 8, 4), True),
    ("depthwise", True, dict(kernel=3), (7, 7, 4), True),
    ("depthwise_mult2_s2", True, dict(kernel=3, stride=2, multiplier=2, use_bias=True), (8, 8, 3), True),
    ("explicit_asym", False, dict(features=3, kernel=(3, 2), padding=((2, 0), (0, 1))), (6, 7, 2), False),
    ("int_pad_s2", False, dict(features=3, kernel=3, stride=2, padding=1), (7, 7, 2), False),
    ("pair_pad", False, dict(features=3, kernel=(1, 3), padding=(0, 2)), (5, 6, 2), False),
    ("dilation2_same", False, dict(features=3, kernel=3, dilation=2, padding="SAME"), (9, 9, 2), False),
    ("single_channel", False, dict(features=1, kernel=3), (5, 5, 1), False),
    ("depthwise_dil2_valid", True, dict(kernel=3, dilation=2, padding="VALID"), (8, 8, 3), False),
]


# Tiny programs: skip LLVM's optimisation passes, which dominate their compile time on CPU.
@functools.partial(jax.jit, static_argnums=0, compiler_options={"xla_backend_optimization_level": 0})
def _forward_and_grads(layer, params, x, cot):
    y, vjp = jax.vjp(lambda p, x: layer.apply(p, {}, x)[0], params, x)
    return (y, *vjp(cot))


@pytest.mark.parametrize(
    "depthwise, hp, in_shape, all_impls", [c[1:] for c in CONV_CASES], ids=[c[0] for c in CONV_CASES]
)
def test_conv_impls_match_numpy(depthwise, hp, in_shape, all_impls):
    base = DepthwiseConv(**hp) if depthwise else Conv(**hp)
    params, _ = _params(base, in_shape)
    x = _x((2, *in_shape))
    kernel, stride, dilation = _pair(hp["kernel"]), _pair(hp.get("stride", 1)), _pair(hp.get("dilation", 1))
    pads = ref_pads(hp.get("padding", "SAME"), in_shape[:2], kernel, stride, dilation)
    groups = in_shape[2] if depthwise else hp.get("groups", 1)
    w, b = np.asarray(params["w"]), params.get("b")
    expected = np_conv(x, w, b, stride, pads, dilation, groups)
    assert base.spec(in_shape).out_shape == expected.shape[1:]
    cot = np.random.default_rng(3).standard_normal(expected.shape)
    dx, dw, db = np_conv_vjp(x, w, cot, stride, pads, dilation, groups)

    ref = None
    # XLA first: the others are compared to it
    impls = ["xla", "shift", "im2col", "phase", "native", "dot"] if all_impls else ["xla"]
    for impl in impls:
        layer = dataclasses.replace(base, impl=impl)
        y, gp, gx = _forward_and_grads(layer, params, x, jnp.asarray(cot, jnp.float32))
        np.testing.assert_allclose(y, expected, **TOL, err_msg=impl)
        np.testing.assert_allclose(gx, dx, **TOL, err_msg=impl)
        np.testing.assert_allclose(gp["w"], dw, **TOL, err_msg=impl)
        if b is not None:
            np.testing.assert_allclose(gp["b"], db, **TOL, err_msg=impl)
        if impl == "xla":
            ref = (gx, gp)
        else:
            np.testing.assert_allclose(gx, ref[0], **TOL, err_msg=impl)
            jax.tree.map(lambda a, r, impl=impl: np.testing.assert_allclose(a, r, **TOL, err_msg=impl), gp, ref[1])
    if all_impls:
        # 'auto' traces to exactly the program of the lowering it picks (checked above), so it computes
        # the same values; comparing the jaxprs saves compiling a fourth copy
        assert set(IMPLS) == {"auto", *impls}
        native_ok = native.depthwise_applicable(jnp.float32, w.shape, in_shape[2], groups, dilation, pads)
        dense_ok = native_dense.applicable(jnp.float32, groups, dilation, pads)
        picked = choose("auto", groups, in_shape[:2], kernel, stride, dilation, native_ok=native_ok,
                        dense_ok=dense_ok, channels=(in_shape[2], w.shape[3]), batch=x.shape[0],
                        unpadded=not any(p for pair in pads for p in pair))
        too_small = any(n < d * (k - 1) + 1 for n, k, d in zip(in_shape[:2], kernel, dilation, strict=True))
        if jax.default_backend() != "cpu":
            assert picked == "xla"
        elif native_ok and native.available():
            assert picked == "native"
        elif groups > 1:
            assert picked == "shift"
        elif too_small:  # a dense kernel larger than its input: one matrix product of the windows
            assert picked == "im2col"
        elif dense_ok and native.available():  # the native weight gradient (no 1x1 case here: no dot)
            assert picked == "native"
        else:
            assert picked == ("phase" if stride != (1, 1) and dilation == (1, 1) else "xla")

        def program(impl):
            fn = functools.partial(_forward_and_grads.__wrapped__, dataclasses.replace(base, impl=impl))
            return str(jax.make_jaxpr(fn)(params, x, jnp.asarray(cot, jnp.float32)))

        assert program("auto") == program(picked)


def _conv_eqns(jaxpr):
    """Every conv_general_dilated equation in a jaxpr, sub-jaxprs (custom_jvp, pjit) included."""
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "conv_general_dilated":
            yield eqn
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
            yield from _conv_eqns(sub)


@pytest.mark.parametrize(
    "stride, kernel, pads", [((2, 2), (3, 3), ((1, 1), (1, 1))), ((3, 2), (5, 2), ((2, 1), (0, 0)))]
)
def test_phase_input_gradient_uses_only_stride_one_convolutions(x64, stride, kernel, pads):
    # The point of 'phase': the input gradient of a strided conv as stride-1 convolutions, never XLA's
    # dilated-input ("transposed") convolution; forward mode, reverse mode and their composition
    # (second derivatives) all equal the XLA primitive's.
    x = jnp.asarray(_x((2, 11, 9, 3)), jnp.float64)
    w = jnp.asarray(np.random.default_rng(4).standard_normal((*kernel, 3, 4)), jnp.float64)

    def conv(impl):
        return lambda x, w: conv2d(x, w, stride, pads, (1, 1), 1, impl)

    y, vjp = jax.vjp(conv("xla"), x, w)
    cot = jnp.asarray(np.random.default_rng(5).standard_normal(y.shape))
    y2, vjp2 = jax.vjp(conv("phase"), x, w)
    np.testing.assert_allclose(y2, y, rtol=1e-12, atol=1e-12)
    for got, want in zip(vjp2(cot), vjp(cot), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    tangents = (0.3 * x, 0.7 * w)
    np.testing.assert_allclose(
        jax.jvp(conv("phase"), (x, w), tangents)[1], jax.jvp(conv("xla"), (x, w), tangents)[1], rtol=1e-12, atol=1e-12
    )

    def second(impl):
        return jax.grad(lambda x: jnp.sum(jax.grad(lambda x: jnp.sum(conv(impl)(x, w) ** 2))(x) ** 3))(x)

    np.testing.assert_allclose(second("phase"), second("xla"), rtol=1e-10, atol=1e-10)
    input_grad = jax.make_jaxpr(lambda x: jax.vjp(lambda x: conv("phase")(x, w), x)[1](cot))(x).jaxpr
    dilations = [e.params["lhs_dilation"] for e in _conv_eqns(input_grad)]
    assert dilations and all(d == (1, 1) for d in dilations), dilations
    reference = jax.make_jaxpr(lambda x: jax.vjp(lambda x: conv("xla")(x, w), x)[1](cot))(x).jaxpr
    assert stride in [e.params["lhs_dilation"] for e in _conv_eqns(reference)]  # what 'phase' avoids


def test_tf_same_padding_puts_the_extra_row_at_the_end():
    # 8 wide, kernel 3, stride 2: out 4, total pad 1 -> (0, 1); an independent hand computation
    assert ref_pads("SAME", (8, 8), (3, 3), (2, 2)) == ((0, 1), (0, 1))
    layer = Conv(1, 3, stride=2, use_bias=False)
    x = jnp.arange(64, dtype=jnp.float32).reshape(1, 8, 8, 1)
    w = jnp.zeros((3, 3, 1, 1)).at[0, 0, 0, 0].set(1.0)  # picks the window's top-left pixel
    y, _ = layer.apply({"w": w}, {}, x)
    # no padding at the top/left: the first window starts at pixel (0, 0); rows 0, 2, 4, 6
    np.testing.assert_array_equal(y[0, :, :, 0], np.arange(64).reshape(8, 8)[0::2, 0::2])


# -- dense, flatten ------------------------------------------------------------------------------------


def test_dense_and_flatten_match_numpy():
    layer = Sequential([Flatten(), Dense(5)])
    params, state = _params(layer, (3, 2, 4))
    x = _x((2, 3, 2, 4))
    y, _ = layer.apply(params, state, x)
    p = params["01_dense"]
    flat = np.asarray(x, np.float64).reshape(2, -1)  # row-major over H, W, C
    np.testing.assert_allclose(Flatten().apply({}, {}, x)[0], flat, rtol=0)
    np.testing.assert_allclose(y, flat @ np.asarray(p["w"], np.float64) + np.asarray(p["b"]), **TOL)
    nobias = Dense(5, use_bias=False)
    y2, _ = nobias.apply({"w": p["w"]}, {}, jnp.asarray(flat, jnp.float32))
    np.testing.assert_allclose(y2, flat @ np.asarray(p["w"], np.float64), **TOL)


# -- BatchNorm ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("in_shape", [(3, 3, 4), (4,)], ids=["image", "flat"])
def test_batchnorm_train_and_eval_closed_form(in_shape):
    bn = BatchNorm(eps=1e-3)
    params, _ = _params(bn, in_shape)
    c = in_shape[-1]
    rng = np.random.default_rng(4)
    state = {"mean": jnp.asarray(rng.standard_normal(c), jnp.float32),
             "var": jnp.asarray(rng.uniform(0.5, 2.0, c), jnp.float32)}
    x = _x((5, *in_shape), scale=3.0, shift=1.5)
    xs = np.asarray(x, np.float64).reshape(-1, c)
    scale, offset = np.asarray(params["scale"], np.float64), np.asarray(params["offset"], np.float64)

    y, _ = bn.apply(params, state, x, train=True)
    expected = (xs - xs.mean(0)) / np.sqrt(xs.var(0) + 1e-3) * scale + offset  # biased batch variance
    np.testing.assert_allclose(np.asarray(y).reshape(-1, c), expected, **TOL)

    y, _ = bn.apply(params, state, x)
    mean, var = np.asarray(state["mean"], np.float64), np.asarray(state["var"], np.float64)
    expected = (xs - mean) / np.sqrt(var + 1e-3) * scale + offset
    np.testing.assert_allclose(np.asarray(y).reshape(-1, c), expected, **TOL)

    bare = BatchNorm(eps=1e-3, use_scale=False, use_offset=False)
    y, _ = bare.apply({}, state, x, train=True)
    np.testing.assert_allclose(np.asarray(y).reshape(-1, c), (xs - xs.mean(0)) / np.sqrt(xs.var(0) + 1e-3), **TOL)


def _np_bn_backward(x, scale, dy, eps):
    """PyTorch's (and the textbook's) BatchNorm backward in float64 NumPy: (dx, dscale, doffset)."""
    c = x.shape[-1]
    x, dy = x.reshape(-1, c), dy.reshape(-1, c)
    m = x.shape[0]
    rstd = 1.0 / np.sqrt(x.var(0) + eps)
    xhat = (x - x.mean(0)) * rstd
    dscale, doffset = (dy * xhat).sum(0), dy.sum(0)
    dx = scale * rstd / m * (m * dy - doffset - xhat * dscale)
    return dx, dscale, doffset


@pytest.mark.parametrize("shape", [(6, 5, 3, 4), (64, 9, 9, 6), (3, 5)], ids=["image", "long_rows", "flat"])
def test_batchnorm_train_derivatives_equal_the_closed_form_and_plain_autodiff(x64, shape):
    # train mode has its own derivative rule (two-stage sums in reverse mode too): gradients, forward
    # mode, second derivatives and vmap must equal the closed form and autodiff of the textbook formula
    from jaxcnn.layers.normalization import batch_norm_train

    rng = np.random.default_rng(5)
    x, dy = rng.standard_normal(shape) * 2 + 1, rng.standard_normal(shape) + 0.5
    scale, offset = rng.standard_normal(shape[-1]), rng.standard_normal(shape[-1])
    bn = BatchNorm(eps=1e-3)
    state = {"mean": jnp.zeros(shape[-1]), "var": jnp.ones(shape[-1])}

    def layer(x, scale, offset):
        return bn.apply({"scale": scale, "offset": offset}, state, x, train=True)[0]

    def textbook(x, scale, offset):
        axes = tuple(range(x.ndim - 1))
        mean, var = x.mean(axes), x.var(axes)
        return (x - mean) / jnp.sqrt(var + 1e-3) * scale + offset

    args = tuple(map(jnp.asarray, (x, scale, offset)))
    got = jax.vjp(layer, *args)[1](jnp.asarray(dy))
    for g, want in zip(got, _np_bn_backward(x, scale, dy, 1e-3), strict=True):
        np.testing.assert_allclose(np.asarray(g).reshape(want.shape), want, rtol=1e-10, atol=1e-10)

    tangents = tuple(jnp.asarray(rng.standard_normal(a.shape)) for a in args)
    np.testing.assert_allclose(jax.jvp(layer, args, tangents)[1], jax.jvp(textbook, args, tangents)[1],
                               rtol=1e-10, atol=1e-10)

    def curvature(f):  # a second derivative through the rule: d/dx of <dy, d layer/dx . v>
        return jax.grad(lambda x: jnp.vdot(jnp.asarray(dy), jax.jvp(lambda x: f(x, *args[1:]), (x,),
                                                                      (tangents[0],))[1]))(args[0])

    np.testing.assert_allclose(curvature(layer), curvature(textbook), rtol=1e-9, atol=1e-9)

    xs = jnp.stack([args[0], 3 * args[0] - 1])  # vmap over a leading (seed) axis: per-member statistics
    batched = jax.vmap(jax.grad(lambda x: jnp.vdot(jnp.asarray(dy), layer(x, *args[1:]))))(xs)
    for i in range(2):
        want = _np_bn_backward(np.asarray(xs[i]), scale, dy, 1e-3)[0]
        np.testing.assert_allclose(np.asarray(batched[i]).reshape(want.shape), want, rtol=1e-10, atol=1e-10)

    # the statistics are outputs too (for the running averages); their cotangents reach x exactly
    cm, cv = rng.standard_normal(shape[-1]), rng.standard_normal(shape[-1])

    def stats(f_mean_var):
        return jax.grad(lambda x: jnp.vdot(cm, f_mean_var(x)[0]) + jnp.vdot(cv, f_mean_var(x)[1]))(args[0])

    axes = tuple(range(len(shape) - 1))
    np.testing.assert_allclose(stats(lambda x: batch_norm_train(x, *args[1:], 1e-3)[1:]),
                               stats(lambda x: (x.mean(axes), x.var(axes))), rtol=1e-10, atol=1e-10)


# -- pooling ------------------------------------------------------------------------------------------

POOL_CASES = [
    ("max_2", MaxPool(2), (8, 8, 3), "max"),
    ("max_3s2_same_even", MaxPool(3, 2, "SAME"), (8, 8, 3), "max"),
    ("max_3s2_same_odd", MaxPool(3, 2, "SAME"), (9, 7, 2), "max"),
    ("max_explicit", MaxPool((3, 2), (1, 2), ((1, 1), (0, 1))), (5, 6, 2), "max"),
    ("avg_2", AvgPool(2), (8, 8, 3), "avg"),
    ("avg_3s2_valid", AvgPool(3, 2), (9, 8, 3), "avg"),
    ("avg_3s2_same_excl", AvgPool(3, 2, "SAME"), (8, 8, 3), "avg"),
    ("avg_3s1_same_excl", AvgPool(3, 1, "SAME"), (5, 5, 2), "avg"),
    ("avg_3s1_explicit_excl", AvgPool(3, 1, 1), (5, 5, 2), "avg"),
    ("avg_3s2_same_incl", AvgPool(3, 2, "SAME", count_include_pad=True), (8, 8, 3), "avg_incl"),
    ("avg_3s1_explicit_incl", AvgPool(3, 1, 1, count_include_pad=True), (5, 5, 2), "avg_incl"),
    ("avg_valid_incl", AvgPool(3, 2, "VALID", count_include_pad=True), (9, 8, 3), "avg"),
    ("l2_2", L2Pool(2), (8, 8, 3), "l2"),
    ("l2_3s2_same", L2Pool(3, 2, "SAME"), (8, 8, 3), "l2"),
]


@pytest.mark.parametrize("layer, in_shape, mode", [c[1:] for c in POOL_CASES], ids=[c[0] for c in POOL_CASES])
def test_pooling_matches_numpy(layer, in_shape, mode):
    # all-negative inputs: a max pool that let a zero pad win would be caught
    x = _x((2, *in_shape), shift=-3.0 if mode == "max" else 0.0)
    pads = ref_pads(layer.padding, in_shape[:2], layer.window, layer.stride)
    expected = np_pool(x, layer.window, layer.stride, pads, mode.removesuffix("_incl"), mode.endswith("_incl"))
    y, _ = layer.apply({}, {}, x)
    assert layer.spec(in_shape).out_shape == expected.shape[1:]
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("keepdims", [False, True])
def test_global_pools_match_numpy(keepdims):
    x = _x((2, 5, 4, 3), shift=-2.0)
    xs = np.asarray(x, np.float64)
    y, _ = GlobalAvgPool(keepdims=keepdims).apply({}, {}, x)
    np.testing.assert_allclose(y, xs.mean(axis=(1, 2), keepdims=keepdims), rtol=1e-5, atol=1e-6)
    y, _ = GlobalMaxPool(keepdims=keepdims).apply({}, {}, x)
    np.testing.assert_allclose(y, xs.max(axis=(1, 2), keepdims=keepdims), rtol=0)


# -- dropout ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("rate", [0.1, 0.5, 0.8])
def test_dropout_keeps_one_minus_rate_and_rescales(rate):
    x = jnp.asarray(np.random.default_rng(0).uniform(1.0, 2.0, (8, 16, 16, 8)), jnp.float32)  # never 0
    n = x.size
    layer = Dropout(rate)
    y, _ = layer.apply({}, {}, x, train=True, key=jax.random.key(11))
    y, xs = np.asarray(y), np.asarray(x)
    kept = y != 0
    assert abs(kept.mean() - (1 - rate)) < 5 * math.sqrt(rate * (1 - rate) / n)
    np.testing.assert_allclose(y[kept], xs[kept] / (1 - rate), rtol=1e-6)
    assert abs(y.mean() - xs.mean()) < 0.05 * xs.mean()  # expectation preserved
    again, _ = layer.apply({}, {}, x, train=True, key=jax.random.key(11))
    other, _ = layer.apply({}, {}, x, train=True, key=jax.random.key(12))
    np.testing.assert_array_equal(again, y)
    assert not np.array_equal(np.asarray(other) != 0, kept)
    np.testing.assert_array_equal(layer.apply({}, {}, x)[0], xs)  # eval: identity
    np.testing.assert_array_equal(Dropout(0.0).apply({}, {}, x, train=True, key=jax.random.key(1))[0], xs)


# -- activations ----------------------------------------------------------------------------------------


def _np_softmax(v):
    e = np.exp(v - v.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


_erf = np.vectorize(math.erf)

ACTIVATIONS = [
    ("relu", ReLU(), lambda v: np.maximum(v, 0)),
    ("relu6", ReLU6(), lambda v: np.minimum(np.maximum(v, 0), 6)),
    ("leaky_relu", LeakyReLU(0.2), lambda v: np.where(v >= 0, v, 0.2 * v)),
    ("leaky_relu_default", LeakyReLU(), lambda v: np.where(v >= 0, v, 0.01 * v)),
    ("gelu_tanh", GELU(), lambda v: 0.5 * v * (1 + np.tanh(math.sqrt(2 / math.pi) * (v + 0.044715 * v**3)))),
    ("gelu_exact", GELU(approximate=False), lambda v: 0.5 * v * (1 + _erf(v / math.sqrt(2)))),
    ("sigmoid", Sigmoid(), lambda v: 1 / (1 + np.exp(-v))),
    ("tanh", Tanh(), np.tanh),
    ("softmax", Softmax(), _np_softmax),
    ("identity", Identity(), lambda v: v),
    ("crelu", CReLU(), lambda v: np.maximum(np.concatenate([v, -v], axis=-1), 0)),
    ("crelu_bare", CReLU(relu=False), lambda v: np.concatenate([v, -v], axis=-1)),
]


@pytest.mark.parametrize("layer, ref", [a[1:] for a in ACTIVATIONS], ids=[a[0] for a in ACTIVATIONS])
@pytest.mark.parametrize("in_shape", [(4, 4, 3), (10,)], ids=["image", "flat"])
def test_activations_match_numpy(layer, ref, in_shape):
    x = _x((2, *in_shape), scale=4.0)  # reaches beyond ReLU6's cap and into the saturating tails
    y, _ = layer.apply({}, {}, x)
    assert y.shape == (2, *layer.spec(in_shape).out_shape)
    np.testing.assert_allclose(y, ref(np.asarray(x, np.float64)), rtol=1e-5, atol=1e-6)


# -- combinators compose their children as documented ------------------------------------------------


def test_combinators_compose_children():
    body = Sequential([Conv(4, 3), ReLU(), Conv(4, 3)])
    short = Conv(4, 1, stride=1)
    x = _x((2, 6, 6, 4))

    res = Residual(body)
    p, s = _params(res, (6, 6, 4))
    bo, _ = body.apply(p["body"], s["body"], x)
    np.testing.assert_allclose(res.apply(p, s, x)[0], np.asarray(bo) + np.asarray(x), **TOL)

    proj = Residual(body, short)
    p, s = _params(proj, (6, 6, 4))
    bo, _ = body.apply(p["body"], s["body"], x)
    sh, _ = short.apply(p["shortcut"], {}, x)
    np.testing.assert_allclose(proj.apply(p, s, x)[0], np.asarray(bo) + np.asarray(sh), **TOL)

    par = Parallel({"id": Identity(), "conv": short, "pool": MaxPool(3, 1, "SAME")})
    p, s = _params(par, (6, 6, 4))
    y, _ = par.apply(p, s, x)
    pooled, _ = MaxPool(3, 1, "SAME").apply({}, {}, x)
    parts = [np.asarray(x), np.asarray(short.apply(p["conv"], {}, x)[0]), np.asarray(pooled)]
    np.testing.assert_allclose(y, np.concatenate(parts, axis=-1), **TOL)

    seq = Sequential([ReLU(), short, Tanh()])
    p, _ = _params(seq, (6, 6, 4))
    manual = np.tanh(np.asarray(short.apply(p["01_conv"], {}, jnp.maximum(x, 0))[0], np.float64))
    np.testing.assert_allclose(seq.apply(p, {"01_conv": {}}, x)[0], manual, **TOL)


# -- mixed precision ------------------------------------------------------------------------------------


def test_mixed_precision_close_to_float32():
    model = small_cnn()
    low = mixed_precision(model)
    params, state = _params(model, (8, 8, 4))
    state = jax.tree.map(jnp.abs, state)  # running variances must be positive
    x = _x((2, 8, 8, 4))
    for train in (False, True):
        y32, s32 = model.apply(params, state, x, train=train)
        y16, s16 = low.apply(params, state, x, train=train)
        assert y32.dtype == jnp.float32 and y16.dtype == jnp.bfloat16
        y32, y16 = np.asarray(y32), np.asarray(y16, np.float32)
        np.testing.assert_allclose(y16, y32, rtol=0.05, atol=0.05 * np.abs(y32).max())
        assert not np.array_equal(y16, y32)  # it really ran in lower precision
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=0.05, atol=0.05), s16, s32)


@pytest.mark.parametrize("shape", [(1,), (5,), (1023,), (1025,), (3, 3, 3, 16), (3, 3, 96, 128), (7, 7, 3, 64),
                                   (2048, 1000), (2049, 2048)])  # the last is above the largest bucket
def test_eager_initialisers_draw_exactly_what_jax_random_draws_for_the_shape(shape):
    # eager draws are made at a few bucket sizes and cut on the host (one compile per bucket, not per shape);
    # the reference is jax.random called with the shape itself
    from jaxcnn.layers import initializers

    key = jax.random.fold_in(jax.random.key(7), len(shape))
    fan_in, fan_out = shape[0] * 3 + 1, shape[-1] + 2
    direct = {
        "he_normal": np.sqrt(2.0 / fan_in) * jax.random.normal(key, shape, jnp.float32),
        "lecun_normal": np.sqrt(1.0 / fan_in) * jax.random.normal(key, shape, jnp.float32),
        "glorot_normal": np.sqrt(2.0 / (fan_in + fan_out)) * jax.random.normal(key, shape, jnp.float32),
        "normal:0.01": 0.01 * jax.random.normal(key, shape, jnp.float32),
        "he_uniform": jax.random.uniform(key, shape, jnp.float32, -np.sqrt(6.0 / fan_in), np.sqrt(6.0 / fan_in)),
        "torch": jax.random.uniform(key, shape, jnp.float32, -1 / np.sqrt(fan_in), 1 / np.sqrt(fan_in)),
    }
    for name, want in direct.items():
        got = initializers.weight(name, key, shape, fan_in, fan_out)
        assert got.dtype == jnp.float32 and got.shape == shape
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want), err_msg=name)
    np.testing.assert_array_equal(np.asarray(initializers.bias("torch", key, shape, fan_in)),
                                  np.asarray(direct["torch"]))


def test_model_init_is_the_same_with_and_without_bucketed_draws(monkeypatch):
    import jaxcnn as jc
    from jaxcnn import models
    from jaxcnn.layers import initializers

    mixed = jc.Sequential([jc.Conv(8, 3, kernel_init="torch"), jc.DepthwiseConv(), jc.GlobalAvgPool(),
                           jc.Dense(5, kernel_init="lecun_normal")])
    cases = [(models.get("allconv6_1_bn"), (28, 28, 1)),  # he_normal kernels, BatchNorm, a glorot_uniform head
             (mixed, (8, 8, 3))]                           # torch-style weights and biases, depthwise, lecun
    bucketed = [model.init(jax.random.key(3), in_shape) for model, in_shape in cases]
    monkeypatch.setattr(initializers, "_bucketed", lambda key: False)  # every draw at its own shape
    plain = [model.init(jax.random.key(3), in_shape) for model, in_shape in cases]
    for a, b in zip(jax.tree_util.tree_leaves(bucketed), jax.tree_util.tree_leaves(plain), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
