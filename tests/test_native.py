"""Native depthwise kernels (C++ through XLA's FFI) against XLA's grouped convolution, and their fallbacks."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax
from train_helpers import tiny_data

import jaxcnn as jc
from jaxcnn.lowering import native
from jaxcnn.lowering.conv import choose, conv2d
from jaxcnn.train import TrainConfig, fit

ROOT = Path(__file__).resolve().parent.parent
TOL = dict(rtol=2e-5, atol=2e-5)
on_cpu = pytest.mark.skipif(jax.default_backend() != "cpu", reason="the native kernels are CPU-only")


def _ref(x, w, stride, pads):
    """XLA's grouped convolution in float64: the independent reference."""
    with jax.enable_x64(True):
        y = lax.conv_general_dilated(
            jnp.asarray(x, jnp.float64), jnp.asarray(w, jnp.float64), stride, pads,
            dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=x.shape[3],
        )
    return y


def _ref_vjp(x, w, stride, pads, ct):
    with jax.enable_x64(True):
        x64, w64 = jnp.asarray(x, jnp.float64), jnp.asarray(w, jnp.float64)
        y, vjp = jax.vjp(lambda x, w: _ref(x, w, stride, pads), x64, w64)
        return (np.asarray(y), *(np.asarray(g) for g in vjp(jnp.asarray(ct, jnp.float64))))


def _rand(shape, seed):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


# (id, input NHWC, kernel (kh, kw), stride, explicit pads). Channel counts 1, 3, 17, 20, 67 and 80 cover the
# scalar tail, the one-vector and the four-vector blocks of the kernel's variant on this CPU (16 and 64
# floats with AVX-512, 8 and 32 with AVX2); rows and columns that see no input
# (padding wider than the kernel reach) must come out zero.
CASES = [
    ("s1_same_odd", (2, 7, 9, 3), (3, 3), (1, 1), ((1, 1), (1, 1))),
    ("s2_same_even_batch1", (1, 8, 8, 17), (3, 3), (2, 2), ((0, 1), (0, 1))),
    ("s21_explicit_c1", (3, 11, 6, 1), (3, 3), (2, 1), ((2, 0), (1, 2))),
    ("s2_valid_c80", (2, 9, 9, 80), (3, 3), (2, 2), ((0, 0), (0, 0))),
    ("k53_s12_c67", (1, 5, 7, 67), (5, 3), (1, 2), ((2, 2), (0, 1))),
    ("kernel_larger_than_input", (1, 2, 2, 5), (3, 3), (1, 1), ((1, 1), (1, 1))),
    ("pad_beyond_kernel_s2", (2, 4, 4, 3), (3, 3), (2, 2), ((3, 3), (3, 2))),
    ("k35_one_sided_pads_c20", (2, 6, 9, 20), (3, 5), (1, 1), ((0, 4), (4, 0))),
    ("k17_wide_pad", (1, 3, 10, 4), (1, 7), (1, 1), ((0, 0), (6, 6))),
]


@on_cpu
def test_library_is_built_and_loads():
    # `pip install -e .` compiles csrc/; if it did not, every test below would silently test the fallback
    assert native.available(), native.load_error()


@on_cpu
def test_kernel_isa_is_the_one_this_cpu_reports():
    # the variant the kernels picked (and the forward rule reads) against the kernel's own CPU flags
    flags_file = Path("/proc/cpuinfo")
    if os.uname().machine != "x86_64":
        assert native.isa() == "baseline"  # built once, for the baseline, off x86
        return
    if not flags_file.exists():
        pytest.skip("no /proc/cpuinfo to read the CPU's flags from")
    flags = set(next(line for line in flags_file.read_text().splitlines() if line.startswith("flags")).split())
    want = ("avx512" if {"avx512f", "avx512vl"} <= flags else "avx2" if {"avx2", "fma"} <= flags else "baseline")
    cap = os.environ.get(native.ISA_VARIABLE) or "avx512"  # a cap set for the whole run lowers it
    assert native.isa() == max(want, cap, key=native.ISAS.index)


@on_cpu
@pytest.mark.parametrize("shape, kernel, stride, pads", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_forward_and_gradients_equal_xla(shape, kernel, stride, pads):
    x = _rand(shape, 0)
    w = _rand((*kernel, 1, shape[3]), 1)
    y_ref = _ref(x, w, stride, pads)
    ct = _rand(y_ref.shape, 2)
    want = _ref_vjp(x, w, stride, pads, ct)

    @jax.jit
    def run(x, w, ct):
        y, vjp = jax.vjp(lambda x, w: native.depthwise(x, w, stride, pads), x, w)
        return (y, *vjp(ct))

    for got, ref, name in zip(run(x, w, ct), want, ("forward", "input grad", "weight grad"), strict=True):
        assert got.shape == ref.shape, name
        np.testing.assert_allclose(got, ref, **TOL, err_msg=name)
    # eager (op-by-op) dispatch too
    np.testing.assert_allclose(native.depthwise(x, w, stride, pads), want[0], **TOL)


@on_cpu
def test_forward_mode_and_second_derivatives_equal_xla():
    stride, pads = (2, 2), ((1, 1), (0, 1))
    x, w = _rand((2, 7, 6, 5), 3), _rand((3, 3, 1, 5), 4)
    tx, tw = _rand(x.shape, 5), _rand(w.shape, 6)

    def nat(x, w):
        return native.depthwise(x, w, stride, pads)

    def ref(x, w):
        return _ref(x, w, stride, pads)

    y, t = jax.jit(lambda x, w, tx, tw: jax.jvp(nat, (x, w), (tx, tw)))(x, w, tx, tw)
    with jax.enable_x64(True):
        y64, t64 = jax.jvp(ref, (x.astype(jnp.float64), w.astype(jnp.float64)),
                           (tx.astype(jnp.float64), tw.astype(jnp.float64)))
        # a second-order quantity: gradient in w of a loss that depends on the input gradient
        g64 = jax.grad(lambda w: jnp.sum(jax.grad(lambda x: jnp.sum(jnp.tanh(ref(x, w))))(x.astype(jnp.float64))
                                         ** 2))(w.astype(jnp.float64))
    np.testing.assert_allclose(y, y64, **TOL)
    np.testing.assert_allclose(t, t64, **TOL)
    g = jax.jit(jax.grad(lambda w: jnp.sum(jax.grad(lambda x: jnp.sum(jnp.tanh(nat(x, w))))(x) ** 2)))(w)
    np.testing.assert_allclose(g, g64, rtol=1e-4, atol=1e-4)


@on_cpu
def test_vmap_images_only_kernels_too_and_per_example_gradients():
    stride, pads = (2, 2), ((1, 1), (1, 1))
    xs, w = _rand((3, 2, 7, 7, 6), 7), _rand((3, 3, 1, 6), 8)
    ws = _rand((3, 3, 3, 1, 6), 9)

    def nat(x, w):
        return native.depthwise(x, w, stride, pads)

    def ref(x, w):
        return _ref(x, w, stride, pads)

    np.testing.assert_allclose(jax.jit(jax.vmap(nat, (0, None)))(xs, w),
                               np.stack([ref(x, w) for x in xs]), **TOL)
    pairs = list(zip(xs, ws, strict=True))
    np.testing.assert_allclose(jax.jit(jax.vmap(nat))(xs, ws), np.stack([ref(x, v) for x, v in pairs]), **TOL)
    # mapped axis not leading, kernel mapped only
    np.testing.assert_allclose(jax.vmap(nat, (None, 2), 1)(xs[0], jnp.moveaxis(ws, 0, 2)),
                               np.stack([ref(xs[0], v) for v in ws], 1), **TOL)

    # per-example gradients of both arguments (the weight gradient's two operands both mapped)
    def loss(f):
        return lambda x, w: jnp.sum(jnp.sin(f(x, w)))

    got = jax.jit(jax.vmap(jax.grad(loss(nat), (0, 1)), (0, 0)))(xs, ws)
    with jax.enable_x64(True):
        want = [jax.grad(loss(ref), (0, 1))(x.astype(jnp.float64), v.astype(jnp.float64)) for x, v in pairs]
    for k in range(2):
        np.testing.assert_allclose(got[k], np.stack([wt[k] for wt in want]), rtol=1e-4, atol=1e-4)


def _prims(fn, *args):
    """Names of every primitive in fn's jaxpr, nested jaxprs included."""
    names = set()

    def walk(jaxpr):
        for eqn in jaxpr.eqns:
            names.add(eqn.primitive.name)
            for sub in jax.extend.core.jaxprs_in_params(eqn.params):
                walk(sub)

    walk(jax.make_jaxpr(fn)(*args).jaxpr)
    return names


@on_cpu
def test_layer_auto_picks_native_for_float32_depthwise_only():
    x = _rand((2, 6, 6, 4), 10)

    def prims(layer, x=x):
        params, state = layer.init(jax.random.key(0), x.shape[1:])
        return _prims(lambda p, x: layer.apply(p, state, x)[0], params, x)

    assert "jaxcnn_depthwise_fwd" in prims(jc.DepthwiseConv(3, 2))
    assert "jaxcnn_depthwise_fwd" in prims(jc.DepthwiseConv(3, 1, impl="native"))
    # no native kernel: multiplier 2, dilation 2, bfloat16 compute, a dense conv -> today's lowerings
    assert "jaxcnn_depthwise_fwd" not in prims(jc.DepthwiseConv(3, multiplier=2))
    assert "jaxcnn_depthwise_fwd" not in prims(jc.DepthwiseConv(3, dilation=2))
    assert "jaxcnn_depthwise_fwd" not in prims(jc.DepthwiseConv(3, compute_dtype="bfloat16"))
    assert "jaxcnn_depthwise_fwd" not in prims(jc.Conv(4, 3, impl="native"))
    assert choose("native", 1, (6, 6), (3, 3), (2, 2), (1, 1)) == choose("auto", 1, (6, 6), (3, 3), (2, 2), (1, 1))
    with pytest.warns(RuntimeWarning, match="covers depthwise convolutions"):
        native._state["warned_inapplicable"] = False
        prims(jc.DepthwiseConv(3, multiplier=2, impl="native"))


@on_cpu
def test_layer_values_equal_xla_lowering_with_bias_and_multiplier_fallback():
    x = _rand((3, 9, 7, 17), 11)
    for layer in (jc.DepthwiseConv(3, 2, use_bias=True), jc.DepthwiseConv((3, 5), 1, padding="VALID")):
        params, state = layer.init(jax.random.key(1), x.shape[1:])
        ref_layer = dataclasses.replace(layer, impl="xla")

        def loss(p, x, layer=layer, state=state):
            return jnp.sum(jnp.cos(layer.apply(p, state, x)[0]))

        def ref_loss(p, x, ref_layer=ref_layer, state=state):
            return jnp.sum(jnp.cos(ref_layer.apply(p, state, x)[0]))

        got = jax.jit(jax.value_and_grad(loss, (0, 1)))(params, x)
        want = jax.jit(jax.value_and_grad(ref_loss, (0, 1)))(params, x)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4), got, want)


def _tiny_mobilenet(impl):
    return jc.Sequential([
        jc.Conv(8, 3, 1, use_bias=False, impl=impl), jc.BatchNorm(), jc.ReLU(),
        jc.DepthwiseConv(3, 2, impl=impl), jc.BatchNorm(), jc.ReLU(),
        jc.Conv(12, 1, 1, "VALID", use_bias=False, impl=impl), jc.BatchNorm(), jc.ReLU(),
        jc.DepthwiseConv(3, 1, impl=impl), jc.ReLU(),
        jc.GlobalAvgPool(), jc.Dense(4, keep_width=True),
    ])


@on_cpu
@pytest.mark.slow
def test_two_unrolled_seeds_train_the_same_with_native_and_shift():
    # the K-seed program of the engine (seeds unrolled side by side, as on CPU); the vmapped form of
    # the same step is covered kernel by kernel in test_vmap_images_only_kernels_too_and_per_example_gradients
    data = tiny_data(n=64)
    cfg = TrainConfig(epochs=1, batch=16, lr=0.05, num_seeds=2, seed_batching="unroll", loop="host", eval_batch=16)
    nat = fit(_tiny_mobilenet("native"), data, cfg, quiet=True)
    ref = fit(_tiny_mobilenet("shift"), data, cfg, quiet=True)
    for a, b in zip(jax.tree_util.tree_leaves(nat.params), jax.tree_util.tree_leaves(ref.params), strict=True):
        assert a.shape[0] == 2
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5)


_FALLBACK_SCRIPT = textwrap.dedent("""
    import json, sys, warnings
    import jax, jax.numpy as jnp, numpy as np
    from jax import lax
    from jaxcnn.lowering import native
    from jaxcnn.lowering.conv import conv2d
    if sys.argv[1] == "missing":
        native._LIB_MODULE = "jaxcnn._no_such_library"  # as if the build had not produced it
    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 7, 7, 5)), jnp.float32)
    w = jnp.asarray(np.random.default_rng(1).standard_normal((3, 3, 1, 5)), jnp.float32)
    out = {"available": native.available(), "error": native.load_error(), "max_err": 0.0}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for impl, stride in (("auto", 1), ("auto", 2), ("native", 1), ("native", 2)):
            f = lambda x, w: conv2d(x, w, (stride, stride), ((1, 1), (1, 1)), (1, 1), 5, impl)
            y, g = jax.jit(jax.value_and_grad(lambda x, w: jnp.sum(jnp.sin(f(x, w))), (0, 1)))(x, w)
            r = lambda x, w: lax.conv_general_dilated(x, w, (stride, stride), ((1, 1), (1, 1)),
                dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=5)
            yr, gr = jax.value_and_grad(lambda x, w: jnp.sum(jnp.sin(r(x, w))), (0, 1))(x, w)
            errs = [abs(float(y - yr))] + [float(jnp.max(jnp.abs(a - b))) for a, b in zip(g, gr)]
            out["max_err"] = max(out["max_err"], *errs)
            out.setdefault("native_in_program", []).append("jaxcnn_depthwise" in str(jax.make_jaxpr(f)(x, w)))
    out["warnings"] = [str(c.message) for c in caught if issubclass(c.category, RuntimeWarning)]
    print(json.dumps(out))
""")


def _run_fallback(mode, **env):
    proc = subprocess.run(
        [sys.executable, "-c", _FALLBACK_SCRIPT, mode], capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": str(ROOT), **env}, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


@on_cpu
def test_missing_library_falls_back_to_xla_lowerings_with_one_warning():
    out = _run_fallback("missing", JAXCNN_NATIVE="1")
    assert not out["available"] and "not there" in out["error"]
    assert out["native_in_program"] == [False] * 4
    assert out["max_err"] < 1e-4
    assert len(out["warnings"]) == 1 and "native CPU kernels unavailable" in out["warnings"][0]


@on_cpu
def test_disabled_by_environment_runs_shift_silently():
    out = _run_fallback("present", JAXCNN_NATIVE="0")
    assert not out["available"] and out["error"] is None  # never even loaded
    assert out["native_in_program"] == [False] * 4
    assert out["max_err"] < 1e-4
    assert out["warnings"] == []


@on_cpu
def test_set_enabled_switches_lowering_in_process():
    x, w = _rand((1, 5, 5, 3), 12), _rand((3, 3, 1, 3), 13)

    def f(x, w):
        return conv2d(x, w, (1, 1), ((1, 1), (1, 1)), (1, 1), 3, "auto")

    # a fresh function each time: the choice is made when a function is traced, and traces are cached
    try:
        native.set_enabled(False)
        assert "jaxcnn_depthwise_fwd" not in _prims(lambda x, w: f(x, w), x, w)
    finally:
        native.set_enabled(None)
    assert "jaxcnn_depthwise_fwd" in _prims(lambda x, w: f(x, w), x, w)


@on_cpu
def test_bench_table_names_the_lowerings_that_ran():
    from jaxcnn import bench
    from jaxcnn.lowering.conv import lowerings_used

    model = jc.with_conv_impl(_tiny_mobilenet("auto"), "native")
    params, state = model.init(jax.random.key(0), (8, 8, 1))
    with lowerings_used() as ran:
        jax.make_jaxpr(lambda p, x: model.apply(p, state, x)[0])(params, jnp.zeros((2, 8, 8, 1)))
    # the depthwise convs ran natively, and the dense ones too (their weight gradient: csrc/conv_wgrad.cc)
    assert ran == {"native"}
    def row(impl, ran):
        return SimpleNamespace(conv_impl=impl, lowerings=ran)

    assert bench._conv_column(row("native", sorted(ran))) == "native"
    assert bench._conv_column(row("native", ["native", "xla"])) == "native: native+xla"
    assert bench._conv_column(row("shift", ["shift"])) == "shift"
