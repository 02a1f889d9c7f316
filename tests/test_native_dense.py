"""The native dense weight gradient (csrc/conv_wgrad.cc through XLA's FFI) against XLA's convolution gradients."""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import jaxcnn as jc
from jaxcnn.lowering import compile_options, native, native_dense
from jaxcnn.lowering.conv import DOT_MAX_PIXELS, choose, conv2d

ROOT = Path(__file__).resolve().parent.parent
on_cpu = pytest.mark.skipif(jax.default_backend() != "cpu", reason="the native kernels are CPU-only")
_DN = ("NHWC", "HWIO", "NHWC")


def _rand(shape, seed, scale=1.0):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape) * scale, jnp.float32)


def _ref_grads(x, w, b, stride, pads, ct, dtype):
    """(dx, dw, db) of XLA's convolution (+ bias) in ``dtype``: float64 is the reference, float32 XLA's own."""
    with jax.enable_x64(dtype == jnp.float64):
        args = [jnp.asarray(a, dtype) for a in (x, w, b)]

        def f(x, w, b):
            return lax.conv_general_dilated(x, w, stride, pads, dimension_numbers=_DN) + b

        _, vjp = jax.vjp(f, *args)
        return [np.asarray(g, np.float64) for g in vjp(jnp.asarray(ct, dtype))]


def _rel(got, want):
    return float(np.linalg.norm(np.asarray(got, np.float64) - want) / max(np.linalg.norm(want), 1e-30))


# (id, input NHWC, kernel, Cout, stride, explicit pads). Input channels 3, 5, 16, 64 and 13 with the window of
# kw * Cin floats cut into 12-float tiles with every tail; Cout 1, 17, 40 (padded to 16s), 16, 64; stride 2
# with odd sizes; pads wider than the kernel reach (rows and columns that see no input).
CASES = [
    ("c3_s2_odd", (2, 9, 7, 3), (3, 3), 17, (2, 2), ((1, 1), (1, 1))),
    ("c16_s1_same", (3, 6, 6, 16), (3, 3), 16, (1, 1), ((1, 1), (1, 1))),
    ("c64_s2_even_asym", (2, 8, 8, 64), (3, 3), 64, (2, 2), ((0, 1), (0, 1))),
    ("c13_k53_s21", (1, 7, 9, 13), (5, 3), 40, (2, 1), ((2, 0), (1, 2))),
    ("c5_valid_cout1", (4, 5, 6, 5), (3, 3), 1, (1, 1), ((0, 0), (0, 0))),
    ("c20_1x1", (5, 3, 4, 20), (1, 1), 33, (1, 1), ((0, 0), (0, 0))),
    ("c7_1x1_s2", (2, 7, 7, 7), (1, 1), 8, (2, 2), ((0, 0), (0, 0))),
    ("pad_beyond_kernel", (2, 4, 5, 3), (3, 3), 9, (2, 2), ((3, 3), (3, 2))),
    ("kernel_larger_than_input", (3, 2, 2, 6), (3, 3), 24, (1, 1), ((1, 1), (1, 1))),
]


@on_cpu
def test_library_has_the_dense_kernel():
    assert native.available(), native.load_error()
    assert hasattr(native._state["lib"], "JaxcnnConvWeightGrad") and hasattr(native._state["lib"], "JaxcnnConvForward")


@on_cpu
@pytest.mark.parametrize("shape, kernel, cout, stride, pads", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_gradients_equal_float64_as_closely_as_xla_float32(shape, kernel, cout, stride, pads):
    x, w, b = _rand(shape, 0), _rand((*kernel, shape[3], cout), 1, 0.3), _rand((cout,), 2)
    y = lax.conv_general_dilated(x, w, stride, pads, dimension_numbers=_DN)
    ct = _rand(y.shape, 3)
    want = _ref_grads(x, w, b, stride, pads, ct, jnp.float64)
    xla32 = _ref_grads(x, w, b, stride, pads, ct, jnp.float32)

    @jax.jit
    def run(x, w, b, ct):
        out, vjp = jax.vjp(lambda x, w, b: conv2d(x, w, stride, pads, (1, 1), 1, "native", b), x, w, b)
        return (out, *vjp(ct))

    yn, *got = run(x, w, b, ct)
    np.testing.assert_allclose(yn, np.asarray(y) + np.asarray(b), rtol=1e-5, atol=1e-5)
    for name, g, r, r32 in zip(("dx", "dw", "db"), got, want, xla32, strict=True):
        assert g.shape == r.shape, name
        # within float32 rounding of the exact value, and no worse than 4x XLA's own float32 error
        err = _rel(g, r)
        assert err <= 4 * max(_rel(r32, r), 1e-7), (name, err, _rel(r32, r))
    # the program holds the native kernel (not XLA's weight gradient), and eager dispatch works too
    assert "jaxcnn_dense_wgrad" in str(jax.make_jaxpr(lambda x, w, b, ct: run(x, w, b, ct))(x, w, b, ct))
    gw = native_dense.wgrad_p.bind(x, ct, stride=stride, pads=pads, kernel=kernel, bias=True)
    np.testing.assert_allclose(gw[0], want[1], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(gw[1], want[2], rtol=1e-4, atol=1e-4)
    # one handler, the bias gradient an optional result: without it dw is the same
    (gw_only,) = native_dense.wgrad_p.bind(x, ct, stride=stride, pads=pads, kernel=kernel, bias=False)
    np.testing.assert_array_equal(gw_only, gw[0])


# rows longer than the 12-pixel tile (29 = 12 + 12 + 5), and 70 channels: two 32-channel blocks and a 6-channel tail
FORWARD_CASES = [*CASES, ("long_rows_c70", (2, 5, 29, 7), (3, 3), 70, (1, 1), ((1, 1), (1, 1))),
                 ("long_rows_s2", (3, 6, 31, 4), (3, 3), 24, (2, 2), ((1, 0), (1, 1))),
                 # an RGB stem whose 35x33 output map is over the size limit: native by the stem rule
                 ("stem_large_map", (1, 70, 66, 3), (3, 3), 16, (2, 2), ((1, 1), (1, 1)))]


@on_cpu
@pytest.mark.parametrize("shape, kernel, cout, stride, pads", [c[1:] for c in FORWARD_CASES],
                         ids=[c[0] for c in FORWARD_CASES])
def test_forward_equals_float64_as_closely_as_xla_float32(shape, kernel, cout, stride, pads):
    # the convolution itself is the native kernel too (csrc/conv_fwd.cc), with and without bias, jitted and eager
    x, w, b = _rand(shape, 30), _rand((*kernel, shape[3], cout), 31, 0.3), _rand((cout,), 32)

    def xla(x, w, b):
        return lax.conv_general_dilated(x, w, stride, pads, dimension_numbers=_DN) + b

    with jax.enable_x64(True):
        want = np.asarray(xla(*(jnp.asarray(a, jnp.float64) for a in (x, w, b))))
    bound = 4 * max(_rel(xla(x, w, b), want), 1e-7)
    fwd = jax.jit(lambda x, w, b: conv2d(x, w, stride, pads, (1, 1), 1, "native", b))
    y_hw = lax.conv_general_dilated(x, w, stride, pads, dimension_numbers=_DN).shape[1:3]
    wins = native_dense.native_forward_wins(kernel, shape[3], cout, y_hw)  # 1x1 and wide layers stay on XLA
    stem = kernel != (1, 1) and shape[3] <= 4 and cout <= 32  # image stems: native on maps of any size
    pixels = y_hw[0] * y_hw[1]
    small = kernel != (1, 1) and cout <= 64 and kernel[1] * shape[3] <= 192 and 16 < pixels <= 1024
    tiny = kernel != (1, 1) and cout <= 128 and kernel[1] * shape[3] <= 384 and pixels <= 16
    avx2 = kernel != (1, 1) and native.isa() == "avx2" and pixels > 16  # without AVX-512: every map beyond 4x4
    assert wins == (stem or small or tiny or avx2)
    assert ("jaxcnn_conv_forward" in fwd.lower(x, w, b).as_text()) == wins
    assert _rel(fwd(x, w, b), want) <= bound
    # the kernel itself, whatever the rule: every case (1x1 and 40-channel tails included), eager dispatch
    eager = native_dense.wconv_p.bind(x, w, stride=stride, pads=pads, kernel=kernel)
    assert _rel(np.asarray(eager) + np.asarray(b, np.float64), want) <= bound
    assert np.all(np.isfinite(np.asarray(eager)))  # nothing read past a row's end or a padded channel
    # the bias as the handler's optional operand: the same products, the bias added inside the kernel
    with_b = native_dense.wconv_p.bind(x, w, b, stride=stride, pads=pads, kernel=kernel)
    assert _rel(with_b, want) <= bound


@on_cpu
@pytest.mark.parametrize("padding", ["SAME", "VALID", ((2, 0), (1, 1))])
def test_conv_layer_same_valid_explicit_stride2_odd_with_and_without_bias(padding):
    x = _rand((3, 9, 11, 3), 4)
    for layer in (jc.Conv(16, 3, 2, padding, impl="native"), jc.Conv(20, (3, 5), 2, padding, use_bias=False,
                                                                         impl="native")):
        params, state = layer.init(jax.random.key(0), x.shape[1:])
        ref = dataclasses.replace(layer, impl="xla")

        def loss(p, x, layer=layer, state=state):
            return jnp.sum(jnp.sin(layer.apply(p, state, x)[0]))

        def loss_ref(p, x, ref=ref, state=state):
            return jnp.sum(jnp.sin(ref.apply(p, state, x)[0]))

        got = jax.jit(jax.value_and_grad(loss, (0, 1)))(params, x)
        with jax.enable_x64(True):
            p64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), params)
            want = jax.value_and_grad(loss_ref, (0, 1))(p64, jnp.asarray(x, jnp.float64))
        jax.tree.map(lambda a, r: np.testing.assert_allclose(a, r, rtol=1e-4, atol=1e-4), got, want)
        assert "jaxcnn_dense_wgrad" in str(jax.make_jaxpr(jax.grad(loss))(params, x))


@on_cpu
def test_forward_mode_second_derivatives_and_second_use_in_one_program():
    stride, pads = (2, 2), ((1, 1), (0, 1))
    x, w, b = _rand((1, 7, 6, 5), 5), _rand((3, 3, 5, 6), 6, 0.3), _rand((6,), 7)
    w2 = _rand((3, 3, 6, 4), 8, 0.3)

    def net(impl):
        def f(x, w, b, w2):  # the same kernel applied twice, then another layer: three uses in one program
            h = jnp.tanh(conv2d(x, w, stride, pads, (1, 1), 1, impl, b))
            h2 = jnp.tanh(conv2d(x * 0.5, w, stride, pads, (1, 1), 1, impl, b))
            return conv2d(h + h2, w2, (1, 1), ((1, 1), (1, 1)), (1, 1), 1, impl)

        return f

    nat, ref = net("native"), net("xla")
    args = (x, w, b, w2)
    tans = tuple(_rand(a.shape, 10 + i) for i, a in enumerate(args))
    y, t = jax.jit(lambda a, ta: jax.jvp(nat, a, ta))(args, tans)
    with jax.enable_x64(True):
        a64 = tuple(jnp.asarray(a, jnp.float64) for a in args)
        t64 = tuple(jnp.asarray(a, jnp.float64) for a in tans)
        y64, tt64 = jax.jvp(ref, a64, t64)

        def second(f, args):  # gradient in the kernels of a loss that contains the input gradient
            return jax.grad(lambda w, w2: jnp.sum(jax.grad(lambda x: jnp.sum(f(x, w, args[2], w2) ** 2))(args[0])
                                                  ** 2), (0, 1))(args[1], args[3])

        g64 = second(ref, a64)
    np.testing.assert_allclose(y, y64, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(t, tt64, rtol=1e-4, atol=1e-4)
    g = jax.jit(lambda a: second(nat, a))(args)
    for a, r in zip(g, g64, strict=True):
        np.testing.assert_allclose(a, r, rtol=1e-3, atol=1e-3)
    prims = str(jax.make_jaxpr(jax.grad(lambda *a: jnp.sum(nat(*a)), (1, 2, 3)))(*args))
    assert prims.count("jaxcnn_dense_wgrad") == 3


@on_cpu
@pytest.mark.parametrize("seeds", [3, native_dense._UNROLL + 1], ids=["unrolled", "lax_map"])
def test_vmap_over_seeds_equals_per_seed_float64(seeds):
    stride, pads = (2, 2), ((1, 1), (1, 1))
    x = _rand((2, 7, 7, 3), 20)
    ws, bs = _rand((seeds, 3, 3, 3, 8), 21, 0.3), _rand((seeds, 8), 22)
    xs = _rand((seeds, 2, 7, 7, 3), 23)

    def loss(impl):
        return lambda w, b, x: jnp.sum(jnp.sin(conv2d(x, w, stride, pads, (1, 1), 1, impl, b)))

    shared = jax.jit(jax.vmap(jax.grad(loss("native"), (0, 1)), (0, 0, None)))(ws, bs, x)
    per_ex = jax.jit(jax.vmap(jax.grad(loss("native"), (0, 1, 2))))(ws, bs, xs)  # input and output grad mapped
    with jax.enable_x64(True):
        f64 = jax.grad(loss("xla"), (0, 1, 2))
        c = [jnp.asarray(a, jnp.float64) for a in (ws, bs, x, xs)]
        want_shared = [f64(c[0][i], c[1][i], c[2]) for i in range(seeds)]
        want_ex = [f64(c[0][i], c[1][i], c[3][i]) for i in range(seeds)]
    for k in range(2):
        np.testing.assert_allclose(shared[k], np.stack([g[k] for g in want_shared]), rtol=1e-4, atol=1e-4)
    for k in range(3):
        np.testing.assert_allclose(per_ex[k], np.stack([g[k] for g in want_ex]), rtol=1e-4, atol=1e-4)
    # and vmap inside grad (a loss summed over seeds): the batched forward keeps the native transpose
    g = jax.jit(jax.grad(lambda ws, bs: jnp.sum(jax.vmap(loss("native"), (0, 0, None))(ws, bs, x)), (0, 1)))(ws, bs)
    for k in range(2):
        np.testing.assert_allclose(g[k], np.stack([w[k] for w in want_shared]), rtol=1e-4, atol=1e-4)


@on_cpu
def test_auto_routes_by_the_measured_rule():
    args = dict(groups=1, in_hw=(8, 8), kernel=(3, 3), stride=(2, 2), dilation=(1, 1))
    assert choose("auto", **args, dense_ok=True, channels=(3, 16), batch=4) == "native"
    assert choose("auto", **args, dense_ok=False) == "phase"  # bfloat16, dilated, ...: as before
    one = dict(groups=1, kernel=(1, 1), stride=(1, 1), dilation=(1, 1), dense_ok=True, channels=(64, 64),
               unpadded=True)
    assert choose("auto", in_hw=(2, 2), batch=DOT_MAX_PIXELS // 4, **one) == "dot"
    assert choose("auto", in_hw=(2, 2), batch=DOT_MAX_PIXELS // 4 + 1, **one) == "native"
    assert choose("auto", **{**args, "in_hw": (2, 2)}, dense_ok=True) == "im2col"  # kernel larger than input
    assert choose("auto", **{**args, "in_hw": (2, 2), "groups": 2}) == "shift"  # grouped: per-tap products
    # the convolution itself, with AVX-512: native on small maps with few channels, XLA's on 112x112 maps and
    # wide layers
    wins = functools.partial(native_dense.native_forward_wins, isa="avx512")
    assert wins((3, 3), 3, 64, (16, 16))
    assert not wins((3, 3), 3, 64, (112, 112))
    assert not wins((3, 3), 64, 128, (8, 8))
    assert not wins((1, 1), 16, 32, (8, 8))
    # 4x4 maps and smaller: native up to 128 channels (allconv6's 8x8x64 -> 4x4x128 and 4x4x128 -> 2x2x128
    # layers), XLA's beyond
    assert wins((3, 3), 128, 128, (2, 2))
    assert wins((3, 3), 64, 128, (4, 4))
    assert not wins((3, 3), 128, 256, (2, 2))
    assert not wins((3, 3), 256, 128, (2, 2))
    # with AVX2 alone: native for every kernel larger than 1x1 on maps beyond 4x4; the same rule up to 4x4
    avx2 = functools.partial(native_dense.native_forward_wins, isa="avx2")
    assert avx2((3, 3), 3, 64, (112, 112)) and avx2((3, 3), 128, 256, (7, 7)) and avx2((3, 3), 64, 128, (5, 5))
    assert not avx2((1, 1), 256, 256, (56, 56))
    assert avx2((3, 3), 128, 128, (2, 2)) and not avx2((3, 3), 128, 256, (2, 2)) and avx2((3, 3), 64, 128, (4, 4))
    # the default is this CPU's
    here = native.isa()
    for case in [((3, 3), 3, 64, (112, 112)), ((3, 3), 128, 256, (7, 7)), ((3, 3), 128, 256, (2, 2))]:
        assert native_dense.native_forward_wins(*case) == native_dense.native_forward_wins(*case, isa=here)
    try:
        native.set_enabled(False)
        assert choose("auto", **args, dense_ok=True, channels=(3, 16), batch=4) == "phase"
    finally:
        native.set_enabled(None)


@on_cpu
def test_dot_lowering_emits_dots_not_convolutions():
    x, w = _rand((4, 3, 5, 6), 30), _rand((1, 1, 6, 7), 31)

    def f(x, w):
        return jnp.sum(jnp.sin(conv2d(x, w, (1, 1), ((0, 0), (0, 0)), (1, 1), 1, "dot")))

    hlo = jax.jit(jax.grad(f, (0, 1))).lower(x, w).as_text()
    assert "convolution" not in hlo and "dot_general" in hlo
    with jax.enable_x64(True):
        ref = jax.grad(lambda x, w: jnp.sum(jnp.sin(lax.conv_general_dilated(x, w, (1, 1), "VALID",
                                                                             dimension_numbers=_DN))), (0, 1))
        want = ref(jnp.asarray(x, jnp.float64), jnp.asarray(w, jnp.float64))
    for a, r in zip(jax.jit(jax.grad(f, (0, 1)))(x, w), want, strict=True):
        np.testing.assert_allclose(a, r, rtol=1e-4, atol=1e-5)


def _tiny(impl):
    return jc.Sequential([
        jc.Conv(8, 3, 2, 1, impl=impl), jc.ReLU(),
        jc.Conv(16, 3, 1, "SAME", use_bias=False, impl=impl), jc.BatchNorm(), jc.ReLU(),
        jc.Conv(12, 1, 1, "VALID", use_bias=False, impl=impl), jc.BatchNorm(), jc.ReLU(),
        jc.GlobalAvgPool(), jc.Dense(4, keep_width=True),
    ])


@on_cpu
def test_twenty_training_steps_match_the_xla_path():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((20, 16, 9, 9, 3)), jnp.float32)
    y = jnp.asarray(rng.integers(0, 4, (20, 16)), jnp.int32)

    def run(model):
        params, state = model.init(jax.random.key(0), (9, 9, 3))

        def loss(p, s, xb, yb):
            out, s = model.apply(p, s, xb, train=True)
            return -jnp.mean(jax.nn.log_softmax(out)[jnp.arange(yb.shape[0]), yb]), s

        @jax.jit
        def step(p, s, m, xb, yb):
            (val, s), g = jax.value_and_grad(loss, has_aux=True)(p, s, xb, yb)
            m = jax.tree.map(lambda m, g: 0.9 * m + g, m, g)
            return jax.tree.map(lambda p, m: p - 0.05 * m, p, m), s, m, val

        m = jax.tree.map(jnp.zeros_like, params)
        text = str(jax.make_jaxpr(step)(params, state, m, x[0], y[0]))
        losses = []
        for i in range(20):
            params, state, m, val = step(params, state, m, x[i], y[i])
            losses.append(float(val))
        return np.array(losses), params, text

    got, p_nat, text = run(_tiny("auto"))
    want, p_xla, text_xla = run(jc.with_conv_impl(_tiny("auto"), "xla"))
    assert "jaxcnn_dense_wgrad" in text and "jaxcnn_dense_wgrad" not in text_xla
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4), p_nat, p_xla)
    assert got[-1] < got[0]  # it trains


@on_cpu
def test_accuracy_guard_covers_the_native_path():
    # compile_options.tune checks every candidate's float32 program against a float64 one: the float32
    # programs hold the native kernel, the float64 reference XLA's gradients (the kernel is float32 only)
    model = _tiny("auto")
    params, state = model.init(jax.random.key(1), (9, 9, 3))
    xb = _rand((8, 9, 9, 3), 40)

    def probe(p, x):
        return jax.grad(lambda p: jnp.sum(jnp.sin(model.apply(p, state, x, train=True)[0])))(p)

    assert "jaxcnn_dense_wgrad" in str(jax.make_jaxpr(probe)(params, xb))
    with jax.enable_x64(True):
        p64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), params)
        assert "jaxcnn_dense_wgrad" not in str(jax.make_jaxpr(probe)(p64, jnp.asarray(xb, jnp.float64)))
    choice = compile_options.tune(probe, (params, xb), names=("xla", "ynn-dot"), reps=1, use_cache=False)
    assert not choice.rejected, choice.rejected
    # and the guard's own test passes the native program against the all-XLA one as its reference
    ref_model = jc.with_conv_impl(model, "xla")

    def probe_xla(p, x):
        return jax.grad(lambda p: jnp.sum(jnp.sin(ref_model.apply(p, state, x, train=True)[0])))(p)

    want = compile_options._float64_reference(probe_xla, (params, xb))
    errs = compile_options.relative_errors(jax.jit(probe)(params, xb), want)
    errs_xla = compile_options.relative_errors(jax.jit(probe_xla)(params, xb), want)
    assert compile_options.accuracy_verdict(errs, errs_xla) is None, (errs, errs_xla)
    assert max(errs) < 1e-4


_FALLBACK = textwrap.dedent("""
    import json, sys, warnings
    import jax, jax.numpy as jnp, numpy as np
    from jax import lax
    from jaxcnn.lowering import native
    from jaxcnn.lowering.conv import conv2d
    if sys.argv[1] == "missing":
        native._LIB_MODULE = "jaxcnn._no_such_library"
    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 7, 7, 5)), jnp.float32)
    w = jnp.asarray(np.random.default_rng(1).standard_normal((3, 3, 5, 6)), jnp.float32)
    b = jnp.ones((6,), jnp.float32)
    out = {"available": native.available(), "max_err": 0.0, "native_in_program": []}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for impl, s in (("auto", 1), ("auto", 2), ("native", 2)):
            f = lambda x, w, b: conv2d(x, w, (s, s), ((1, 1), (1, 1)), (1, 1), 1, impl, b)
            g = jax.jit(jax.grad(lambda *a: jnp.sum(jnp.sin(f(*a))), (0, 1, 2)))(x, w, b)
            r = lambda x, w, b: lax.conv_general_dilated(x, w, (s, s), ((1, 1), (1, 1)),
                dimension_numbers=("NHWC", "HWIO", "NHWC")) + b
            gr = jax.grad(lambda *a: jnp.sum(jnp.sin(r(*a))), (0, 1, 2))(x, w, b)
            out["max_err"] = max(out["max_err"], *[float(jnp.max(jnp.abs(u - v))) for u, v in zip(g, gr)])
            out["native_in_program"].append("jaxcnn_dense" in str(jax.make_jaxpr(jax.grad(
                lambda *a: jnp.sum(f(*a)), (1,)))(x, w, b)))
    out["warnings"] = [str(c.message) for c in caught if issubclass(c.category, RuntimeWarning)]
    print(json.dumps(out))
""")


def _fallback(mode, **env):
    proc = subprocess.run([sys.executable, "-c", _FALLBACK, mode], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT), **env}, check=False)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


@on_cpu
@pytest.mark.parametrize("mode, env, warned", [("present", "0", 0), ("missing", "1", 1)], ids=["disabled", "missing"])
def test_without_the_kernel_everything_runs_on_xla(mode, env, warned):
    out = _fallback(mode, JAXCNN_NATIVE=env)
    assert not out["available"]
    assert out["native_in_program"] == [False] * 3
    assert out["max_err"] < 1e-4
    assert len(out["warnings"]) == warned


# (input NHWC, kernel, Cout, stride, padding): native forward (stem, small map, 4x4 output) and one on XLA
# (a 4x4 output with 200 channels: XLA's with AVX-512 or AVX2)
RELU_CASES = [((2, 9, 7, 3), (3, 3), 17, 2, 1), ((3, 8, 8, 16), (3, 3), 24, 1, "SAME"),
              ((2, 8, 8, 64), (3, 3), 128, 2, 1), ((2, 6, 6, 96), (3, 3), 200, 1, "VALID")]


@on_cpu
@pytest.mark.parametrize("shape, kernel, cout, stride, padding", RELU_CASES, ids=["stem", "small", "4x4", "xla"])
def test_a_conv_and_its_relu_run_as_one_call_with_the_same_values_and_gradients(shape, kernel, cout, stride, padding):
    x = _rand(shape, 40)
    fused = jc.Sequential([jc.Conv(cout, kernel, stride, padding), jc.ReLU()])
    apart = jc.Sequential([jc.Conv(cout, kernel, stride, padding), jc.Sequential([jc.ReLU()])])  # not adjacent
    params, state = fused.init(jax.random.key(1), shape[1:])
    assert apart.init(jax.random.key(1), shape[1:])[1] == state  # the same trees: the ReLU owns none

    def loss(model, p, x):
        return jnp.sum(jnp.sin(model.apply(p, state, x)[0]) ** 2)

    def run(model):
        return jax.jit(lambda p, x: (model.apply(p, state, x)[0],
                                     jax.grad(lambda p, x: loss(model, p, x), (0, 1))(p, x)))(params, x)

    (y, (gp, gx)), (y2, (gp2, gx2)) = run(fused), run(apart)
    native_wins = native_dense.native_forward_wins(kernel, shape[3], cout, y.shape[1:3])
    assert native_wins == (cout != 200)
    text = str(jax.make_jaxpr(lambda p, x: fused.apply(p, state, x)[0])(params, x))
    # where the native forward runs, the ReLU is inside it: no max of XLA's left in the forward
    assert ("relu=True" in text and "max" not in text) == native_wins
    np.testing.assert_array_equal(np.asarray(y), np.asarray(y2))  # max(y, 0) in the kernel or after: the same
    np.testing.assert_allclose(gx, gx2, rtol=1e-6, atol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6), gp, gp2)
    # and against float64 XLA: relu(conv + b), the gradients through jax.nn.relu's rule
    with jax.enable_x64(True):
        p64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), params)
        ref = jc.with_conv_impl(apart, "xla")
        want = np.asarray(ref.apply(p64, state, jnp.asarray(x, jnp.float64))[0])
        gwant = jax.grad(lambda p, x: loss(ref, p, x), (0, 1))(p64, jnp.asarray(x, jnp.float64))
    assert np.all(np.asarray(y) >= 0) and np.mean(np.asarray(y) == 0) > 0.2  # the ReLU did cut
    np.testing.assert_allclose(y, want, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(gx, gwant[1], rtol=1e-3, atol=1e-4)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4), gp, gwant[0])


@on_cpu
def test_the_fused_relu_keeps_nan_as_jnp_maximum_does():
    x = np.array(_rand((2, 9, 7, 3), 41))
    x[1, 4, 3, 0] = np.nan  # poisons every output window that covers it: output row 2, columns 1 and 2
    x = jnp.asarray(x)
    conv = jc.Conv(17, 3, 2, 1)
    params, _ = conv.init(jax.random.key(2), x.shape[1:])
    y, _ = jax.jit(conv.apply_relu)(params, {}, x)
    want = jax.nn.relu(jc.with_conv_impl(conv, "xla").apply(params, {}, x)[0])
    assert "jaxcnn_conv_forward" in jax.jit(conv.apply_relu).lower(params, {}, x).as_text()
    np.testing.assert_array_equal(np.isnan(y), np.isnan(want))
    assert np.isnan(np.asarray(y)).sum() == 2 * 17  # those two output pixels, every channel
    np.testing.assert_allclose(np.nan_to_num(y), np.nan_to_num(want), rtol=1e-5, atol=1e-6)


def test_only_a_plain_conv_then_a_plain_relu_fuse():
    from jaxcnn.combinators import _fuses_relu

    @dataclasses.dataclass(frozen=True)
    class ScaledConv(jc.Conv):  # a subclass may compute something else: it keeps its own forward
        def forward(self, params, state, x, *, train, key):
            y, s = super().forward(params, state, x, train=train, key=key)
            return 2 * y, s

    assert _fuses_relu((jc.Conv(4), jc.ReLU()), 0)
    assert not _fuses_relu((jc.Conv(4), jc.ReLU6()), 0)
    assert not _fuses_relu((jc.ReLU(), jc.Conv(4)), 0)
    assert not _fuses_relu((jc.Conv(4),), 0)
    assert not _fuses_relu((ScaledConv(4), jc.ReLU()), 0)
    model = jc.Sequential([ScaledConv(4, 3, 1, 1), jc.ReLU()])
    x = _rand((2, 5, 5, 3), 42)
    params, state = model.init(jax.random.key(0), x.shape[1:])
    y = model.apply(params, state, x)[0]
    (conv_params,) = params.values()
    assert "max" in str(jax.make_jaxpr(lambda x: model.apply(params, state, x)[0])(x))  # its own ReLU ran
    np.testing.assert_allclose(y, jax.nn.relu(2 * jc.Conv(4, 3, 1, 1).apply(conv_params, {}, x)[0]), rtol=1e-6)
