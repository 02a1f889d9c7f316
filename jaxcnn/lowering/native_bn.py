"""BatchNorm's per-channel sums in one native pass each (``csrc/batchnorm.cc``), on the CPU backend.

Compiled XLA makes about ten passes over a training BatchNorm's map (the mean; ``x - mean``
written out; the sum of its squares; the backward's two sums; the elementwise passes). Two
primitives take the sums over to the native library, each reading its operands once:

* :func:`stats` -- the batch mean and biased variance of ``x`` (used in the primal of
  :func:`jaxcnn.layers.normalization.batch_norm_train`);
* :func:`rows_affine` -- ``(x - mean) * rows(a) + rows(b)``, computed by XLA (elementwise), linear
  in ``a`` and ``b``; its transpose, :func:`dual_sum` (``S(g * (x - mean))`` and ``S(g)``), is the
  backward's pair of sums in one native pass.

Both native sums cut the rows into fixed chunks summed in float32 and merge the chunks in
order in float64, so the results do not depend on the thread count and every float32
accumulation is at most 256 terms long (the bound of :mod:`jaxcnn.lowering.reductions`). Under
``vmap``, and for derivatives of the sums themselves (second order), the primitives fall back
to the same formulas in XLA's two-stage sums.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax.extend.core import Primitive
from jax.interpreters import ad, batching, mlir

from jaxcnn.lowering import native
from jaxcnn.lowering.reductions import broadcast_rows, mean_leading, sum_leading

# below this many elements a map is in cache and XLA's fused reductions are as fast as a call out
MIN_ELEMENTS = 1 << 15

TARGET_STATS, TARGET_DUAL = native.TARGET_BN_STATS, native.TARGET_BN_DUAL  # registered when the library loads


def applicable(x: jax.Array) -> bool:
    """Whether :func:`stats` and :func:`rows_affine` run natively for ``x`` (float32, big enough, CPU, loaded).

    Whatever the device count, so a result does not depend on it (a study member trained beside another
    on a second device must equal its one-device run). A batch sharded over several devices reaches the
    custom call gathered whole (XLA cannot split it): the same values, at the cost of that gather.
    """
    return (x.dtype == jnp.float32 and x.ndim >= 2 and math.prod(x.shape) >= MIN_ELEMENTS
            and jax.default_backend() == "cpu" and native.available())


def _rows(v: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    return broadcast_rows(v, shape, 0, len(shape) - 1)


def _xla_stats(x):
    axes = x.ndim - 1
    mean = mean_leading(x, axes)
    return mean, mean_leading(jnp.square(x - mean), axes)


def _xla_dual_sum(g, x, mean):
    axes = x.ndim - 1
    return sum_leading(g * (x - mean), axes), sum_leading(g, axes)


def _xla_rows_affine(a, b, x, mean):
    return (x - mean) * _rows(a, x.shape) + _rows(b, x.shape)


# -- stats: (mean, var) of x over all axes but the last ------------------------------------

stats_p = Primitive("jaxcnn_bn_stats")
stats_p.multiple_results = True


def stats(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(mean, var)`` per channel (last axis) of ``x`` over all other axes; the variance is the biased one."""
    return tuple(stats_p.bind(x))


def _stats_abstract(x):
    c = jax.core.ShapedArray((x.shape[-1],), x.dtype)
    return [c, c]


def _stats_ffi(x):
    c = jax.ShapeDtypeStruct((x.shape[-1],), x.dtype)
    return list(jax.ffi.ffi_call(TARGET_STATS, (c, c))(x))


def _stats_jvp(primals, tangents):
    return jax.jvp(_xla_stats, tuple(primals), (ad.instantiate_zeros(tangents[0]),))


stats_p.def_abstract_eval(_stats_abstract)
stats_p.def_impl(lambda x: list(jax.jit(_stats_ffi)(x)))
mlir.register_lowering(stats_p, mlir.lower_fun(_stats_ffi, multiple_results=True), platform="cpu")
ad.primitive_jvps[stats_p] = lambda p, t: tuple(map(list, _stats_jvp(p, t)))
batching.primitive_batchers[stats_p] = lambda args, dims: (
    list(jax.vmap(_xla_stats, in_axes=dims)(*args)), [0, 0])


# -- dual_sum: (S(g * (x - mean)), S(g)); linear in g --------------------------------------

dual_sum_p = Primitive("jaxcnn_bn_dual_sum")
dual_sum_p.multiple_results = True


def dual_sum(g: jax.Array, x: jax.Array, mean: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(S(g * (x - mean)), S(g))``, the sums over all axes but the last, in one read of ``g`` and ``x``."""
    return tuple(dual_sum_p.bind(g, x, mean))


def _dual_ffi(g, x, mean):
    c = jax.ShapeDtypeStruct((x.shape[-1],), x.dtype)
    s_g, s_gc = jax.ffi.ffi_call(TARGET_DUAL, (c, c))(g, x, mean)
    return [s_gc, s_g]


def _dual_jvp(primals, tangents):
    return jax.jvp(_xla_dual_sum, tuple(primals), tuple(ad.instantiate_zeros(t) for t in tangents))


def _dual_transpose(cts, g, x, mean):
    if ad.is_undefined_primal(x) or ad.is_undefined_primal(mean):
        raise NotImplementedError("jaxcnn_bn_dual_sum is linear in its first operand only")
    ct_gc, ct_g = (ad.instantiate_zeros(c) for c in cts)
    return [rows_affine(ct_gc, ct_g, x, mean), None, None]


dual_sum_p.def_abstract_eval(lambda g, x, mean: _stats_abstract(x))
dual_sum_p.def_impl(lambda g, x, mean: list(jax.jit(_dual_ffi)(g, x, mean)))
mlir.register_lowering(dual_sum_p, mlir.lower_fun(_dual_ffi, multiple_results=True), platform="cpu")
ad.primitive_jvps[dual_sum_p] = lambda p, t: tuple(map(list, _dual_jvp(p, t)))
ad.primitive_transposes[dual_sum_p] = _dual_transpose
batching.primitive_batchers[dual_sum_p] = lambda args, dims: (
    list(jax.vmap(_xla_dual_sum, in_axes=dims)(*args)), [0, 0])


# -- rows_affine: (x - mean) * rows(a) + rows(b); linear in a and b --------------------------

rows_affine_p = Primitive("jaxcnn_bn_rows_affine")


def rows_affine(a: jax.Array, b: jax.Array, x: jax.Array, mean: jax.Array) -> jax.Array:
    """``(x - mean) * a + b`` with the per-channel ``a``, ``b`` repeated over the rows; its transpose in
    ``(a, b)`` is :func:`dual_sum`, one native pass."""
    return rows_affine_p.bind(a, b, x, mean)


def _affine_jvp(primals, tangents):
    return jax.jvp(_xla_rows_affine, tuple(primals), tuple(ad.instantiate_zeros(t) for t in tangents))


def _affine_transpose(ct, a, b, x, mean):
    if ad.is_undefined_primal(x) or ad.is_undefined_primal(mean):
        raise NotImplementedError("jaxcnn_bn_rows_affine is linear in its first two operands only")
    if type(ct) is ad.Zero:
        return [None, None, None, None]
    s_gc, s_g = dual_sum(ct, x, mean)
    return [s_gc if ad.is_undefined_primal(a) else None, s_g if ad.is_undefined_primal(b) else None, None, None]


rows_affine_p.def_abstract_eval(lambda a, b, x, mean: jax.core.ShapedArray(x.shape, x.dtype))
rows_affine_p.def_impl(lambda a, b, x, mean: jax.jit(_xla_rows_affine)(a, b, x, mean))
mlir.register_lowering(rows_affine_p, mlir.lower_fun(_xla_rows_affine, multiple_results=False))
ad.primitive_jvps[rows_affine_p] = _affine_jvp
ad.primitive_transposes[rows_affine_p] = _affine_transpose
batching.primitive_batchers[rows_affine_p] = lambda args, dims: (
    jax.vmap(_xla_rows_affine, in_axes=dims)(*args), 0)
