"""BatchNorm's native sums (csrc/batchnorm.cc): the statistics and the backward's pair against float64 NumPy,
and batch_norm_train on the native path against the XLA path: gradients, forward mode, second order, vmap."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcnn.lowering import native, native_bn

pytestmark = pytest.mark.skipif(not native.available(), reason="native kernels not built")


def rel(got, want) -> float:
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return float(np.linalg.norm(got - want) / np.linalg.norm(want))


EPS32 = float(np.finfo(np.float32).eps)


@pytest.mark.parametrize("shape", [(3, 37, 29, 5), (2, 9, 11, 300), (2, 130, 7, 64), (700, 3)],
                         ids=["few_channels_odd_rows", "many_channels", "chunk_tail", "flat"])
def test_native_sums_equal_float64_to_float32_rounding(shape):
    rng = np.random.default_rng(0)
    # an offset 3x the spread: a one-pass E[x^2] - mean^2 would lose ~4 digits here, the chunked two-pass none
    x = (rng.standard_normal(shape) * 2 + 6).astype(np.float32)
    g = (rng.standard_normal(shape) + 0.5).astype(np.float32)
    xs, gs = x.reshape(-1, shape[-1]).astype(np.float64), g.reshape(-1, shape[-1]).astype(np.float64)
    mean, var = jax.jit(native_bn.stats)(jnp.asarray(x))
    assert rel(mean, xs.mean(0)) < 4 * EPS32 and rel(var, xs.var(0)) < 8 * EPS32
    mu = np.asarray(mean)
    s_gc, s_g = jax.jit(native_bn.dual_sum)(jnp.asarray(g), jnp.asarray(x), jnp.asarray(mu))
    assert rel(s_g, gs.sum(0)) < 8 * EPS32
    assert rel(s_gc, (gs * (xs - mu.astype(np.float64))).sum(0)) < 16 * EPS32
    # fixed chunks merged in order: the same bits every call
    again = jax.jit(native_bn.stats)(jnp.asarray(x))
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip((mean, var), again, strict=True))


def _case(shape=(4, 24, 24, 32)):
    rng = np.random.default_rng(5)
    x = (rng.standard_normal(shape) * 2 + 1).astype(np.float32)
    dy = (rng.standard_normal(shape) + 0.5).astype(np.float32)
    scale = (rng.standard_normal(shape[-1]) + 1).astype(np.float32)
    offset = rng.standard_normal(shape[-1]).astype(np.float32)
    return x, dy, scale, offset


def _np_backward(x, scale, dy, eps):
    c = x.shape[-1]
    x, dy = x.reshape(-1, c).astype(np.float64), dy.reshape(-1, c).astype(np.float64)
    m = x.shape[0]
    rstd = 1.0 / np.sqrt(x.var(0) + eps)
    xhat = (x - x.mean(0)) * rstd
    dscale, doffset = (dy * xhat).sum(0), dy.sum(0)
    return scale * rstd / m * (m * dy - doffset - xhat * dscale), dscale, doffset


def _both_paths(fn):
    """``fn()`` on the native path and on the XLA path (native kernels off while tracing)."""
    a = fn()
    native.set_enabled(False)
    try:
        b = fn()
    finally:
        native.set_enabled(None)
    return a, b


def test_batch_norm_train_takes_the_native_path_and_is_as_accurate_as_xla():
    from jaxcnn.layers.normalization import batch_norm_train

    x, dy, scale, offset = _case()
    assert native_bn.applicable(jnp.asarray(x))
    args = tuple(map(jnp.asarray, (x, scale, offset)))

    def grads():
        f = jax.jit(lambda x, s, o: jax.vjp(lambda *a: batch_norm_train(*a, 1e-3)[0], x, s, o)[1](jnp.asarray(dy)))
        text = jax.jit(lambda x, s, o: jax.vjp(lambda *a: batch_norm_train(*a, 1e-3)[0], x, s, o)[1](
            jnp.asarray(dy))).lower(*args).as_text()
        return f(*args), text

    (nat, nat_text), (xla, xla_text) = _both_paths(grads)
    assert native_bn.TARGET_STATS in nat_text and native_bn.TARGET_DUAL in nat_text
    assert native_bn.TARGET_STATS not in xla_text
    want = _np_backward(x, scale.astype(np.float64), dy, 1e-3)
    for g_nat, g_xla, w in zip(nat, xla, want, strict=True):
        e_nat, e_xla = rel(np.asarray(g_nat).reshape(w.shape), w), rel(np.asarray(g_xla).reshape(w.shape), w)
        assert e_nat <= 4 * max(e_xla, EPS32), (e_nat, e_xla)
    y_nat, y_xla = _both_paths(lambda: jax.jit(lambda *a: batch_norm_train(*a, 1e-3))(*args))
    for a, b in zip(y_nat, y_xla, strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-5, atol=2e-5)


def test_forward_mode_second_order_and_vmap_agree_with_the_xla_path():
    from jaxcnn.layers.normalization import batch_norm_train

    x, dy, scale, offset = _case((2, 16, 16, 64))
    args = tuple(map(jnp.asarray, (x, scale, offset)))
    rng = np.random.default_rng(1)
    tangents = tuple(jnp.asarray(rng.standard_normal(a.shape).astype(np.float32)) for a in args)

    def layer(x, s, o):
        return batch_norm_train(x, s, o, 1e-3)[0]

    def all_three():
        jvp = jax.jit(lambda: jax.jvp(layer, args, tangents)[1])()
        curv = jax.jit(jax.grad(lambda x: jnp.vdot(jnp.asarray(dy), jax.jvp(lambda x: layer(x, *args[1:]), (x,),
                                                                                (tangents[0],))[1])))(args[0])
        xs = jnp.stack([args[0], 3 * args[0] - 1])
        batched = jax.jit(jax.vmap(jax.grad(lambda x: jnp.vdot(jnp.asarray(dy), layer(x, *args[1:])))))(xs)
        return jvp, curv, batched

    nat, xla = _both_paths(all_three)
    for a, b in zip(nat, xla, strict=True):
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        assert rel(a, b) < 1e-5, rel(a, b)
