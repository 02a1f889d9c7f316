"""Dense convolutions whose weight (and bias) gradient is the native kernel of ``csrc/conv_wgrad.cc``.

XLA:CPU computes a dense convolution's weight gradient as a forward convolution of the input
with the output gradient (batch and feature axes swapped), transposed into Eigen's layout and
run through its image-patch contraction (element by element for strided layers); the native
kernel reads NHWC input and output gradient and writes the HWIO gradient directly, with
register-blocked outer products (``csrc/conv_wgrad.cc``). The input gradient stays on XLA
(``xla`` or ``phase``, as :func:`jaxcnn.lowering.conv.choose` picks them), and so does the
forward, except where :func:`native_forward_wins` measured the native forward kernel
(``csrc/conv_fwd.cc``) faster: small maps with few channels.

:func:`conv` is a ``custom_jvp``: the tangent of the kernel (and bias) goes through the linear
primitive ``wconv`` (XLA's convolution of the primal input with the kernel tangent, plus the
bias tangent), whose transpose is the native kernel ``wgrad`` (one call for both gradients).
``wgrad`` is in turn linear in the output gradient (its transpose is ``wconv``) and in the input
(its transpose is XLA's input gradient), so forward mode, reverse mode, higher derivatives,
``jit`` and ``vmap`` (an unrolled loop over the mapped axis) all work.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.custom_derivatives import SymbolicZero
from jax.extend.core import Primitive
from jax.interpreters import ad, batching, mlir

from jaxcnn.lowering import native

_DN = ("NHWC", "HWIO", "NHWC")
_UNROLL = 16  # vmap over at most this many: one call per element; more: lax.map


def applicable(x_dtype: Any, groups: int, dilation: tuple[int, int], pads: Any) -> bool:
    """Whether the native weight-gradient kernel computes this convolution's weight gradient."""
    return (
        jnp.dtype(x_dtype) == jnp.float32
        and groups == 1
        and tuple(dilation) == (1, 1)
        and all(p >= 0 for pair in pads for p in pair)
    )


def _xla(x, w, stride, pads):
    return lax.conv_general_dilated(x, w, stride, pads, dimension_numbers=_DN)


def _input_grad(ct, w, stride, pads, in_shape):
    """XLA's input gradient of the convolution (the transpose of ``_xla`` in ``x``)."""
    x0 = jax.ShapeDtypeStruct(in_shape, ct.dtype)
    return jax.linear_transpose(lambda x: _xla(x, w, stride, pads), x0)(ct)[0]


# -- primitives ---------------------------------------------------------------------------
# wconv(x, dw[, db]) = conv(x, dw) (+ db), then ReLU when relu=True: linear in (dw, db) when relu=False.
# wgrad(x, dy) = (dW[, db]): the transpose of wconv in (dw, db); linear in dy, and in x for dW.

wconv_p = Primitive("jaxcnn_dense_wconv")
wgrad_p = Primitive("jaxcnn_dense_wgrad")
wgrad_p.multiple_results = True


def _wconv_impl(x, dw, *db, stride, pads, kernel, relu=False):
    y = _xla(x, dw, stride, pads)
    y = y + db[0] if db else y
    return jax.nn.relu(y) if relu else y


def _wconv_abstract(x, dw, *db, stride, pads, kernel, relu=False):
    n, h, w, _ = x.shape
    oh, ow = ((s + lo + hi - k) // st + 1 for s, k, st, (lo, hi) in zip((h, w), kernel, stride, pads, strict=True))
    return jax.core.ShapedArray((n, oh, ow, dw.shape[3]), x.dtype)


def _wgrad_abstract(x, dy, *, stride, pads, kernel, bias):
    dw = jax.core.ShapedArray((*kernel, x.shape[3], dy.shape[3]), x.dtype)
    return [dw, jax.core.ShapedArray((dy.shape[3],), x.dtype)] if bias else [dw]


def _wgrad_ffi(x, dy, *, stride, pads, kernel, bias):
    if not native._load():
        raise RuntimeError(f"jaxcnn: the native weight-gradient kernel is not available: {native.load_error()}")
    outs = [jax.ShapeDtypeStruct(a.shape, a.dtype) for a in _wgrad_abstract(x, dy, stride=stride, pads=pads,
                                                                              kernel=kernel, bias=bias)]
    res = jax.ffi.ffi_call(native.TARGET_DENSE_W, outs)(
        x, dy, sh=np.int64(stride[0]), sw=np.int64(stride[1]), pt=np.int64(pads[0][0]), pl=np.int64(pads[1][0])
    )
    return list(res)


@functools.cache
def _eager(prim, **params):
    return jax.jit(lambda *a: prim.bind(*a, **params))


def _wconv_ffi(x, dw, *db, stride, pads, kernel, relu=False):
    if not native._load():
        raise RuntimeError(f"jaxcnn: the native convolution kernel is not available: {native.load_error()}")
    out = _wconv_abstract(x, dw, *db, stride=stride, pads=pads, kernel=kernel)
    return jax.ffi.ffi_call(native.TARGET_DENSE_FWD, jax.ShapeDtypeStruct(out.shape, out.dtype))(
        x, dw, *db, sh=np.int64(stride[0]), sw=np.int64(stride[1]), pt=np.int64(pads[0][0]), pl=np.int64(pads[1][0]),
        relu=np.int64(relu),
    )


wconv_p.def_abstract_eval(_wconv_abstract)
wconv_p.def_impl(lambda *a, **p: _eager(wconv_p, **p)(*a))
mlir.register_lowering(wconv_p, mlir.lower_fun(_wconv_impl, multiple_results=False))
# on CPU wconv is the native forward kernel (csrc/conv_fwd.cc) wherever it is bound: as the primal where
# native_forward_wins routes it, and (any shape) as a forward-mode kernel tangent or the transpose of a
# weight gradient in second derivatives; each computes conv(x, dw) + db (and the fused ReLU where asked)
mlir.register_lowering(wconv_p, mlir.lower_fun(_wconv_ffi, multiple_results=False), platform="cpu")
wgrad_p.def_abstract_eval(_wgrad_abstract)
wgrad_p.def_impl(lambda *a, **p: _eager(wgrad_p, **p)(*a))
mlir.register_lowering(wgrad_p, mlir.lower_fun(_wgrad_ffi, multiple_results=True), platform="cpu")


def _wconv_jvp(primals, tangents, *, stride, pads, kernel, relu=False):
    x, dw, *db = primals
    tx, tdw, *tdb = tangents
    y = wconv_p.bind(x, dw, *db, stride=stride, pads=pads, kernel=kernel, relu=relu)
    parts = []
    if type(tx) is not ad.Zero:
        parts.append(_xla(tx, dw, stride, pads))
    if type(tdw) is not ad.Zero or (tdb and type(tdb[0]) is not ad.Zero):
        tdw = ad.instantiate_zeros(tdw)
        tdb = [ad.instantiate_zeros(t) for t in tdb]
        parts.append(wconv_p.bind(x, tdw, *tdb, stride=stride, pads=pads, kernel=kernel, relu=False))
    if not parts:
        return y, ad.Zero.from_primal_value(y)
    return y, _relu_tangent(y, functools.reduce(jnp.add, parts), relu)


def _relu_tangent(y, t, relu: bool):
    """The tangent through a ReLU whose output is ``y``: jax.nn.relu's rule (zero where y <= 0, and at NaN)."""
    return jnp.where(y > 0, t, jnp.zeros_like(t)) if relu else t


def _wconv_transpose(ct, x, dw, *db, stride, pads, kernel, relu=False):
    if relu:  # only its JVP's linear parts (relu=False) are ever transposed
        raise NotImplementedError("jaxcnn: wconv with a fused ReLU is not linear")
    if ad.is_undefined_primal(x):  # only the kernel and bias are linear
        raise NotImplementedError("jaxcnn: wconv is linear in the kernel and bias only")
    nb = len(db)
    if type(ct) is ad.Zero:
        return [None] * (2 + nb)
    grads = wgrad_p.bind(x, ct, stride=stride, pads=pads, kernel=kernel, bias=bool(nb))
    out = [None, grads[0] if ad.is_undefined_primal(dw) else None]
    if nb:
        out.append(grads[1] if ad.is_undefined_primal(db[0]) else None)
    return out


ad.primitive_jvps[wconv_p] = _wconv_jvp
ad.primitive_transposes[wconv_p] = _wconv_transpose


def _wgrad_jvp(primals, tangents, *, stride, pads, kernel, bias):
    x, dy = primals
    tx, tdy = tangents
    outs = wgrad_p.bind(x, dy, stride=stride, pads=pads, kernel=kernel, bias=bias)
    touts = [jnp.zeros_like(o) for o in outs]
    if type(tdy) is not ad.Zero:
        touts = [t + g for t, g in zip(touts, wgrad_p.bind(x, tdy, stride=stride, pads=pads, kernel=kernel, bias=bias),
                                       strict=True)]
    if type(tx) is not ad.Zero:  # dW is linear in x too; db does not depend on x
        touts[0] = touts[0] + wgrad_p.bind(tx, dy, stride=stride, pads=pads, kernel=kernel, bias=False)[0]
    return outs, touts


def _wgrad_transpose(cts, x, dy, *, stride, pads, kernel, bias):
    cdw = ad.instantiate_zeros(cts[0]) if type(cts[0]) is not ad.Zero else None
    cdb = cts[1] if bias and type(cts[1]) is not ad.Zero else None
    if ad.is_undefined_primal(dy):  # <wgrad(x, dy), (cdw, cdb)> = <dy, wconv(x, cdw, cdb)>
        if cdw is None and cdb is None:
            return [None, ad.Zero(dy.aval)]
        cdw = jnp.zeros((*kernel, x.shape[3], dy.aval.shape[3]), x.dtype) if cdw is None else cdw
        extra = [jnp.zeros((dy.aval.shape[3],), x.dtype) if cdb is None else cdb] if bias else []
        return [None, wconv_p.bind(x, cdw, *extra, stride=stride, pads=pads, kernel=kernel, relu=False)]
    # linear in x (dW only): <wgrad(x, dy)[0], cdw> = <x, input gradient of dy through kernel cdw>
    if cdw is None:
        return [ad.Zero(x.aval), None]
    return [_input_grad(dy, cdw, stride, pads, x.aval.shape), None]


ad.primitive_jvps[wgrad_p] = _wgrad_jvp
ad.primitive_transposes[wgrad_p] = _wgrad_transpose


def _unrolled(fn: Callable, args, dims, size):
    """Apply ``fn`` to each element along the mapped axes (unmapped operands shared), stacked on axis 0."""
    moved = [a if d is None else jnp.moveaxis(a, d, 0) for a, d in zip(args, dims, strict=True)]

    def one(i):
        return fn(*[a if d is None else a[i] for a, d in zip(moved, dims, strict=True)])

    if size <= _UNROLL:
        outs = [one(i) for i in range(size)]
        return jax.tree_util.tree_map(lambda *o: jnp.stack(o), *outs)
    mapped = [a for a, d in zip(moved, dims, strict=True) if d is not None]

    def body(sl):
        it = iter(sl)
        return fn(*[a if d is None else next(it) for a, d in zip(moved, dims, strict=True)])

    return lax.map(body, mapped)


def _batch_wconv(args, dims, **params):
    x, dw, *db = args
    size = next(a.shape[d] for a, d in zip(args, dims, strict=True) if d is not None)
    if all(d is None for d in dims[1:]):  # only images mapped: fold into the batch axis
        xb = jnp.moveaxis(x, dims[0], 0)
        y = wconv_p.bind(xb.reshape(-1, *xb.shape[2:]), dw, *db, **params)
        return y.reshape(size, -1, *y.shape[1:]), 0
    return _unrolled(lambda *a: wconv_p.bind(*a, **params), args, dims, size), 0


def _batch_wgrad(args, dims, **params):
    size = next(a.shape[d] for a, d in zip(args, dims, strict=True) if d is not None)
    outs = _unrolled(lambda *a: wgrad_p.bind(*a, **params), args, dims, size)
    return outs, [0] * len(outs)


batching.primitive_batchers[wconv_p] = _batch_wconv
batching.primitive_batchers[wgrad_p] = _batch_wgrad


# -- the convolution ---------------------------------------------------------------------


def conv(x: jax.Array, w: jax.Array, b: jax.Array | None, stride: tuple[int, int],
         pads: tuple[tuple[int, int], tuple[int, int]], forward: Callable[..., jax.Array],
         relu: bool = False) -> jax.Array:
    """``forward(x, w, stride, pads) (+ b)`` whose kernel and bias gradients are the native kernel.

    ``forward`` is the lowering of the convolution itself (XLA's, or ``phase``'s, whose input
    gradient is what reverse mode gets for ``x``), a module-level function (it is a static
    argument); it must compute the convolution of ``x`` with ``w``. ``relu=True`` returns
    ``jax.nn.relu`` of the result, with jax.nn.relu's derivative; where the native forward computes
    the convolution, the ReLU is applied as it stores its output (one pass over the output fewer).
    """
    stride, pads = tuple(stride), tuple(map(tuple, pads))
    if b is None:
        return _conv_nobias(x, w, stride, pads, forward, bool(relu))
    return _conv_bias(x, w, b, stride, pads, forward, bool(relu))


FORWARD_MAX_COUT = 64  # the native forward wins up to this many output channels,
FORWARD_MAX_WINDOW = 192  # kernel-row windows (kw * Cin floats) this long
FORWARD_MAX_PIXELS = 32 * 32  # and output maps this large (per image), for kernels larger than 1x1
SMALL_MAP_PIXELS, SMALL_MAP_MAX_COUT, SMALL_MAP_MAX_WINDOW = 4 * 4, 128, 3 * 128
STEM_MAX_CIN, STEM_MAX_COUT = 4, 32  # and image stems (RGB or grey in, few channels out) on maps of any size


def native_forward_wins(kernel: tuple[int, int], cin: int, cout: int, out_hw: tuple[int, int],
                        isa: str | None = None) -> bool:
    """Whether the convolution itself runs as the native kernel (csrc/conv_fwd.cc) rather than XLA's.

    ``isa``: the native kernels' instruction set (default: this CPU's, :func:`jaxcnn.lowering.native.isa`).
    With AVX2 and no AVX-512 the native forward also runs every kernel larger than 1x1 on maps larger than
    4x4, whatever the channels: on a 2-core AMD EPYC Zen 3 (family 25 model 1, 2026-12-07, medians of 7
    interleaved repetitions of whole programs built under both rules, with the tuned XLA options; the ratio
    to PyTorch is ``python experiments/compare_peers.py --cases allconv6:224:16``) allconv6's inference
    at 224x224 batch 16 took 55.8 against 77.0 ms and its train step 178 against 209; at 32x32 batch 128
    (where only the 2x2 -> 1x1 layer is left to XLA's) and for the width study's members at 28x28 batch
    125 the two were within 3 % either way (allconv6_8_bn's inference 2.70 against 3.14 ms). Below is
    what was measured where AVX-512 is there:

    Measured on a 2-core Xeon (family 6 model 167) in whole programs (a layer's output feeding the
    next op, as in a model; the same op alone in its own program pays for a fresh output buffer and
    misleads), medians of interleaved repetitions under the ``ynn-dot`` options: with the native
    forward on layers up to 64 output channels and 3 x 64-float windows, allconv6_1_bn's inference
    on 28x28 MNIST at batch 125 took 1.27 ms against 2.21 (train step 5.1 against 6.4), allconv6_4_bn's
    1.33 against 2.13, allconv6's at 32x32 batch 128 7.3 against 7.7. Widening it to 128 channels and
    3 x 128-float windows was slower (1.64, 1.54, 7.7 ms), and at 224x224 the native kernel lost on the
    112x112 maps (allconv6's inference at batch 16: 58 against 36 ms), so larger maps keep XLA's, as do
    1x1 layers, which XLA computes as a matrix product. The exception is a stem of at most 4 input and 32
    output channels: XLA's convolution of 3-channel images is slow (MobileNet v1's 224x224 -> 112x112x32 stem
    took 6.4 ms alone against PyTorch's 0.6; ``experiments/profile_layers.py``), and with the native one
    MobileNet v1's inference at 224x224 batch 8 took 45.2 ms against 52.6 (train step 254 against 258), after
    the kernel's tiles were reordered (2026-12-04). allconv6's 224x224 stem (64 channels, bias and ReLU
    straight after) stays on XLA: there XLA runs the whole network as one YNNPACK fusion, and taking the stem
    out of it cost 38.6 against 25.7 ms. On output maps of at most 4x4 the native kernel also wins up to 128
    channels (2026-12-04, interleaved medians, whole programs under default options): allconv6's 4x4x128 ->
    2x2x128 layer at batch 128 took 0.86 against XLA's 1.13 ms alone (allconv6's inference at 32x32 batch 128
    9.3 -> 8.9 ms), and its 8x8x64 -> 4x4x128 layer on the native kernel took that inference 8.35 -> 6.38 and
    7.47 -> 5.82 ms in two runs (train step 23.9 -> 22.6, 23.6 -> 22.3), allconv6_7_bn's on 28x28 inputs at
    batch 125 3.62 -> 2.96 ms; allconv6_5_bn's level (1.81 / 1.86).
    """
    if tuple(kernel) == (1, 1):
        return False
    if cin <= STEM_MAX_CIN and cout <= STEM_MAX_COUT:
        return True
    if (native.isa() if isa is None else isa) == "avx2" and out_hw[0] * out_hw[1] > SMALL_MAP_PIXELS:
        return True
    if out_hw[0] * out_hw[1] <= SMALL_MAP_PIXELS:
        return cout <= SMALL_MAP_MAX_COUT and kernel[1] * cin <= SMALL_MAP_MAX_WINDOW
    return (cout <= FORWARD_MAX_COUT and kernel[1] * cin <= FORWARD_MAX_WINDOW
            and out_hw[0] * out_hw[1] <= FORWARD_MAX_PIXELS)


def _primal(x, w, b, stride, pads, forward, relu):
    out_hw = _wconv_abstract(x, w, stride=stride, pads=pads, kernel=tuple(w.shape[:2])).shape[1:3]
    if native_forward_wins(tuple(w.shape[:2]), w.shape[2], w.shape[3], out_hw):
        return wconv_p.bind(x, w, *b, stride=stride, pads=pads, kernel=tuple(w.shape[:2]), relu=relu)
    y = forward(x, w, stride, pads)
    y = y + b[0] if b else y
    return jax.nn.relu(y) if relu else y


@functools.partial(jax.custom_jvp, nondiff_argnums=(2, 3, 4, 5))
def _conv_nobias(x, w, stride, pads, forward, relu):
    return _primal(x, w, (), stride, pads, forward, relu)


@functools.partial(jax.custom_jvp, nondiff_argnums=(3, 4, 5, 6))
def _conv_bias(x, w, b, stride, pads, forward, relu):
    return _primal(x, w, (b,), stride, pads, forward, relu)


def _tangent(forward, x, w, tx, twb, stride, pads):
    parts = []
    if not isinstance(tx, SymbolicZero):
        parts.append(jax.jvp(lambda x_: forward(x_, w, stride, pads), (x,), (tx,))[1])
    if any(not isinstance(t, SymbolicZero) for t in twb):
        twb = [jnp.zeros(t.shape, t.dtype) if isinstance(t, SymbolicZero) else t for t in twb]
        parts.append(wconv_p.bind(x, *twb, stride=stride, pads=pads, kernel=tuple(w.shape[:2]), relu=False))
    return parts


def _nobias_jvp(stride, pads, forward, relu, primals, tangents):
    x, w = primals
    tx, tw = tangents
    y = _primal(x, w, (), stride, pads, forward, relu)
    parts = _tangent(forward, x, w, tx, [tw], stride, pads)
    return y, _relu_tangent(y, functools.reduce(jnp.add, parts), relu) if parts else jnp.zeros_like(y)


def _bias_jvp(stride, pads, forward, relu, primals, tangents):
    x, w, b = primals
    tx, tw, tb = tangents
    y = _primal(x, w, (b,), stride, pads, forward, relu)
    parts = _tangent(forward, x, w, tx, [tw, tb], stride, pads)
    return y, _relu_tangent(y, functools.reduce(jnp.add, parts), relu) if parts else jnp.zeros_like(y)


_conv_nobias.defjvp(_nobias_jvp, symbolic_zeros=True)
_conv_bias.defjvp(_bias_jvp, symbolic_zeros=True)
