"""Interchangeable lowerings of one 2-D convolution (NHWC input, HWIO kernel).

All compute the same function; which is fastest depends on the backend:

* ``xla``: ``lax.conv_general_dilated``, the XLA primitive.
* ``shift``: a sum over kernel taps of strided slices of the padded input, each
  multiplied by that tap's weights (a per-channel product for depthwise kernels, a
  small matmul otherwise). On CPU, XLA's grouped/depthwise convolution is far slower
  than this (see ``experiments/benchmark.py``).
* ``im2col``: gather every window into a patch matrix and do one matmul (how most
  libraries lower convolution; memory grows by kh x kw). Ungrouped, the windows are laid side
  by side along channels (one concatenation of strided slices) and the product is a plain 2-D
  dot, which XLA:CPU runs as one YNNPACK/Eigen matmul.
* ``phase``: the XLA primitive forward and for the weight gradient, but the input
  gradient of a strided convolution computed as one stride-1 convolution per output
  phase (the sub-pixel decomposition: with stride s, input rows r, r+s, r+2s, ... all
  see the same kernel rows, so each phase is a small dense stride-1 convolution of the
  output gradient). XLA:CPU lowers the input gradient of a strided convolution as a
  convolution with a dilated input, which measured 2-8x slower than these stride-1
  convolutions on the 2-core Zen 4 CPU (e.g. the 112x112x64 -> 56x56x64 3x3 layer of
  allconv6 at 224, batch 16: 147 ms vs 60 ms; whole allconv6 train step at 32x32, batch
  128: 1,479-1,651 -> 2,693-2,917 img/s, ``jaxcnn bench allconv6 --input-size 32 --batch
  128 --measure train --conv-impl xla`` against ``auto``). Dense (ungrouped) kernels
  with dilation 1 only; anything else falls back to ``xla``. Forward- and reverse-mode
  differentiation both work (a ``custom_jvp`` whose tangent map is written so that
  JAX's transpose of it is the phase form).
* ``native``: the C++ depthwise kernels of :mod:`jaxcnn.lowering.native` (XLA FFI custom calls, CPU
  only) for depthwise convolutions with channel multiplier 1, dilation 1 and float32, and for dense
  float32 convolutions (dilation 1) the native weight (+ bias) gradient of
  :mod:`jaxcnn.lowering.native_dense`, with the forward and input gradient on XLA (``phase`` when
  strided, ``dot`` for 1x1 stride-1 unpadded kernels, ``xla`` otherwise); any other conv falls back
  to what ``auto`` picks for it (a one-time warning for grouped convs it cannot take, and if the
  library is missing). XLA:CPU has no fast depthwise weight gradient: per layer of MobileNet v1 (``python
  experiments/bench_depthwise.py``, 2-core CPU, candidates interleaved, medians) the native
  weight gradient ran 2-23x faster than ``shift``'s and 12-290x faster than ``xla``'s, the
  native forward 1.5-7x faster than ``shift``'s (one layer, 32x32x32 at batch 128, 0.6x).
  ``shift``'s stride-1 input gradient (an XLA fused loop) measured faster than the native
  one in isolation, but the whole MobileNet v1 train step ran faster with every direction
  native (224x224, batch 8: 2.8 img/s with ``shift``, 3.9 with only the stride-1 input
  gradient left to XLA, 5.9 all native; 32x32, batch 128: 112, 151, 159), so all three
  directions run natively. The dense weight gradient measured 1.3-13x faster than XLA's on every
  dense layer of allconv6 and MobileNet v1 (see :data:`DOT_MAX_PIXELS` and README "Speed").
* ``dot``: a 1x1 stride-1 unpadded dense convolution as one matrix product over (N*H*W, C), so
  both gradients are dots too (XLA:CPU otherwise computes the 1x1 weight gradient as a patch
  convolution); anything else falls back to ``xla``.
* ``auto``, chosen per backend and layer by measurement: on CPU, ``native`` for depthwise
  kernels it covers (``shift`` when the library is unavailable or disabled with
  ``JAXCNN_NATIVE=0``), ``shift`` for other grouped/depthwise kernels, ``im2col`` for dense
  kernels larger than their (unpadded) input (XLA:CPU takes 5-10x longer there, e.g. a
  3x3 kernel on a 2x2 map: allconv6's last 2x2x128 -> 1x1x256 layer at batch 128 took 9.3 ms
  with XLA's, 1.0 with ``shift``'s nine products and 0.48 as one product of the four windows that
  touch the image;
  allconv6's inference at 32x32 batch 128 10.0 -> 9.3 ms, its train step 33.5 -> 31.8),
  ``native`` for float32 dense kernels (:func:`dense_native_wins`)
  except 1x1 stride-1 ones with at most :data:`DOT_MAX_PIXELS` output pixels, which get ``dot``;
  without the library (or with ``JAXCNN_NATIVE=0``, bfloat16, dilation) ``phase`` for strided
  dense kernels and ``xla`` otherwise; ``xla`` everywhere on GPU and TPU.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax
from jax.custom_derivatives import SymbolicZero

from jaxcnn.lowering import native, native_dense

IMPLS = ("auto", "xla", "shift", "im2col", "phase", "native", "dot")
_DN = ("NHWC", "HWIO", "NHWC")


_RECORDERS: list[set[str]] = []


@contextlib.contextmanager
def lowerings_used() -> Iterator[set[str]]:
    """Collect the lowerings convolutions resolve to while tracing inside this block (e.g. for a benchmark)."""
    ran: set[str] = set()
    _RECORDERS.append(ran)
    try:
        yield ran
    finally:
        _RECORDERS.remove(ran)


def check_impl(layer: Any, impl: str) -> None:
    """Raise ValueError naming the layer if ``impl`` is unknown."""
    if impl not in IMPLS:
        raise ValueError(f"{type(layer).__name__}: impl must be one of {', '.join(IMPLS)}, got {impl!r}")


def effective_kernel(kernel: tuple[int, ...], dilation: tuple[int, ...]) -> tuple[int, ...]:
    """The extent a dilated kernel covers per axis: d (k - 1) + 1."""
    return tuple(d * (k - 1) + 1 for k, d in zip(kernel, dilation, strict=True))


def choose(
    impl: str,
    groups: int,
    in_hw: tuple[int, int],
    kernel: tuple[int, int],
    stride: tuple[int, int],
    dilation: tuple[int, int],
    *,
    native_ok: bool = False,
    dense_ok: bool = False,
    channels: tuple[int, int] = (0, 0),
    batch: int = 0,
    unpadded: bool = False,
) -> str:
    """Resolve ``auto`` (and an inapplicable ``phase``, ``native`` or ``dot``) for the default backend and this conv.

    ``native_ok``: the operands fit a native depthwise kernel (:func:`jaxcnn.lowering.native.depthwise_applicable`);
    ``dense_ok``: they fit the native dense weight gradient (:func:`jaxcnn.lowering.native_dense.applicable`);
    ``channels`` (in, out) and ``batch`` feed the measured rules :func:`dense_native_wins` and :func:`dot_wins`;
    ``unpadded``: no padding (a 1x1 stride-1 conv is then a matrix product).
    """
    phase_ok = groups == 1 and dilation == (1, 1) and stride != (1, 1)
    dot_ok = groups == 1 and unpadded and tuple(kernel) == (1, 1) and stride == (1, 1) and dilation == (1, 1)
    cpu = jax.default_backend() == "cpu"
    if impl == "phase":
        return "phase" if phase_ok else "xla"
    if impl == "dot":
        return "dot" if dot_ok else "xla"
    if impl == "native":
        if (native_ok or dense_ok) and cpu and native.available():
            return "native"
        if (native_ok or dense_ok) and cpu:
            native.warn_unavailable()
        elif groups > 1 and cpu:
            native.warn_inapplicable()
        # 'native' means native where there is a kernel, auto elsewhere
        return choose("auto", groups, in_hw, kernel, stride, dilation)
    if impl != "auto":
        return impl
    if not cpu:
        return "xla"
    if groups > 1:
        if native_ok and native.enabled():
            if native.available():
                return "native"
            native.warn_unavailable()
        return "shift"
    if any(n < k for n, k in zip(in_hw, effective_kernel(kernel, dilation), strict=True)):
        return SMALL_MAP_DENSE if groups == 1 else "shift"
    if dense_ok and native.enabled() and dense_native_wins(in_hw, kernel, stride, channels, batch):
        if native.available():
            return "native"
        native.warn_unavailable()
    if dot_ok and dot_wins(in_hw, channels, batch):
        return "dot"
    return "phase" if phase_ok else "xla"


# Measured per layer shape (weight gradient alone, native vs XLA's, and vs a dot for 1x1 convs; medians of
# interleaved repetitions on the shared 2-core Zen 4; python experiments/profile_layers.py --routing, README
# "Speed"): the native kernel was 1.3-13x faster than XLA's on every dense layer of allconv6 and MobileNet v1
# (3..1024 channels, 1x1 and 3x3, stride 1 and 2, 128..200k output pixels), and faster than a dot for 1x1
# convs down to 512 output pixels; at 128 pixels (MobileNet's 1x1x1024 layers at batch 128) the dot was
# 2x faster: the kernel's fixed cost, clearing and reducing a Cin x Cout accumulator, is no longer small.
SMALL_MAP_DENSE = "im2col"  # dense kernels larger than their input: one product of the windows (module docstring)
DOT_MAX_PIXELS = 256  # 1x1 stride-1 convs with at most this many output pixels (N*H*W) use dot instead


def dense_native_wins(
    in_hw: tuple[int, int], kernel: tuple[int, int], stride: tuple[int, int], channels: tuple[int, int], batch: int,
) -> bool:
    """Whether ``auto`` gives this dense conv the native weight gradient (the rule measured per layer shape)."""
    return not (tuple(kernel) == (1, 1) and tuple(stride) == (1, 1) and dot_wins(in_hw, channels, batch))


def dot_wins(in_hw: tuple[int, int], channels: tuple[int, int], batch: int) -> bool:
    """Whether ``auto`` computes this 1x1 stride-1 conv as one matrix product rather than with the native kernel."""
    return batch * in_hw[0] * in_hw[1] <= DOT_MAX_PIXELS


def conv2d(
    x: jax.Array,
    w: jax.Array,
    stride: tuple[int, int],
    pads: tuple[tuple[int, int], tuple[int, int]],
    dilation: tuple[int, int],
    groups: int,
    impl: str = "xla",
    b: jax.Array | None = None,
    relu: bool = False,
) -> jax.Array:
    """Convolve NHWC ``x`` with HWIO ``w`` (I = C / groups) using the chosen lowering, plus bias ``b`` if given.

    ``relu=True``: ``jax.nn.relu`` of the result (what a ReLU layer after it computes, same values and
    gradients), applied by the native dense forward as it writes its output where that kernel runs.
    """
    y = _conv2d(x, w, stride, pads, dilation, groups, impl, b, relu)
    if isinstance(y, tuple):  # the lowering added the bias (its gradient is fused) and the ReLU itself
        return y[0]
    y = y if b is None else y + b.astype(y.dtype)
    return jax.nn.relu(y) if relu else y


def _conv2d(x, w, stride, pads, dilation, groups, impl, b, relu=False):
    native_ok = native.depthwise_applicable(x.dtype, w.shape, x.shape[3], groups, dilation, pads)
    dense_ok = native_dense.applicable(x.dtype, groups, dilation, pads) and w.dtype == x.dtype
    impl = choose(impl, groups, x.shape[1:3], w.shape[:2], stride, dilation, native_ok=native_ok, dense_ok=dense_ok,
                  channels=(x.shape[3], w.shape[3]), batch=x.shape[0], unpadded=not any(p for pr in pads for p in pr))
    for ran in _RECORDERS:
        ran.add(impl)
    if impl == "native" and groups == 1:
        forward = _phase_fwd if tuple(stride) != (1, 1) else _xla_fwd
        if tuple(w.shape[:2]) == (1, 1) and tuple(stride) == (1, 1) and not any(p for pr in pads for p in pr):
            forward = _dot_fwd  # a 1x1 conv's forward and input gradient as dots
        bias = None if b is None else b.astype(x.dtype)
        return (native_dense.conv(x, w, bias, stride, pads, forward, relu),)
    if impl == "dot":
        return _dot_1x1(x, w)
    if impl == "native":
        return native.depthwise(x, w.astype(x.dtype), stride, pads)
    if impl == "xla":
        return lax.conv_general_dilated(
            x, w, window_strides=stride, padding=pads, rhs_dilation=dilation,
            dimension_numbers=_DN, feature_group_count=groups,
        )
    if impl == "phase":
        return _phase_conv(x, w, stride, pads)
    live, taps = zip(*_taps(x, w.shape[:2], stride, pads, dilation), strict=True)
    kh, kw, cin_g, cout = w.shape
    n, oh, ow, c = taps[0].shape
    cout_g = cout // groups
    if impl == "shift":
        if cin_g == 1 and cout == c:  # depthwise, multiplier 1: a per-channel product per tap
            y = taps[0] * w[live[0] + (0,)]
            for (i, j), tap in zip(live[1:], taps[1:], strict=True):
                y = y + tap * w[i, j, 0]
            return y
        y = None
        for (i, j), tap in zip(live, taps, strict=True):
            part = _grouped_matmul(tap, w[i, j], groups, cin_g, cout_g)
            y = part if y is None else y + part
        return y
    # im2col: patches (N, oh, ow, taps, C) -> one (grouped) matmul
    wt = w.reshape(kh * kw, cin_g, cout) if len(live) == kh * kw else jnp.stack([w[i, j] for i, j in live])
    if groups == 1:  # the windows side by side along channels: one plain 2-D matrix product
        patches = jnp.concatenate(taps, axis=3).reshape(n * oh * ow, len(live) * c)
        return (patches @ wt.reshape(len(live) * c, cout)).reshape(n, oh, ow, cout)
    patches = jnp.stack(taps, axis=3).reshape(n, oh, ow, len(live), groups, cin_g)
    wm = wt.reshape(len(live), cin_g, groups, cout_g)
    y = jnp.einsum("nhwtgc,tcgd->nhwgd", patches, wm)
    return y.reshape(n, oh, ow, cout)


def _positions(kh: int, kw: int):
    return [(i, j) for i in range(kh) for j in range(kw)]


def _taps(x, kernel, stride, pads, dilation):
    """``(i, j), window`` for each kernel tap whose window touches the image, as strided slices of the padded input.

    A tap that sees only padding (a 3x3 kernel's outer taps on a 2x2 map with stride 2) adds nothing, so it
    is left out (at least one tap is always kept, so an all-padding output still has its shape).
    """
    xp = jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
    hp, wp = xp.shape[1:3]
    keh, kew = effective_kernel(kernel, dilation)
    oh = (hp - keh) // stride[0] + 1
    ow = (wp - kew) // stride[1] + 1

    def touches(start: int, step: int, count: int, pad: int, size: int) -> bool:
        return any(pad <= start + k * step < pad + size for k in range(count))

    live = [(i, j) for i, j in _positions(*kernel)
            if touches(i * dilation[0], stride[0], oh, pads[0][0], x.shape[1])
            and touches(j * dilation[1], stride[1], ow, pads[1][0], x.shape[2])] or [(0, 0)]
    for i, j in live:
        r, c = i * dilation[0], j * dilation[1]
        yield (i, j), lax.slice(
            xp, (0, r, c, 0), (xp.shape[0], r + (oh - 1) * stride[0] + 1, c + (ow - 1) * stride[1] + 1, xp.shape[3]),
            (1, stride[0], stride[1], 1),
        )


def _grouped_matmul(t: jax.Array, w: jax.Array, groups: int, cin_g: int, cout_g: int) -> jax.Array:
    if groups == 1:
        return t @ w
    n, oh, ow, _ = t.shape
    tg = t.reshape(n, oh, ow, groups, cin_g)
    wg = w.reshape(cin_g, groups, cout_g)
    return jnp.einsum("nhwgc,cgd->nhwgd", tg, wg).reshape(n, oh, ow, groups * cout_g)


def _dot_1x1(x: jax.Array, w: jax.Array) -> jax.Array:
    """A 1x1 stride-1 unpadded convolution as one matrix product: (N*H*W, C) @ (C, O); its gradients are dots."""
    n, h, wd, c = x.shape
    y = lax.dot_general(x.reshape(n * h * wd, c), w.reshape(c, w.shape[3]), (((1,), (0,)), ((), ())))
    return y.reshape(n, h, wd, w.shape[3])


def _dot_fwd(x: jax.Array, w: jax.Array, stride, pads) -> jax.Array:
    """``dot``'s convolution (forward and input gradient of the native path for 1x1 stride-1 unpadded convs)."""
    return _dot_1x1(x, w)


def _xla_fwd(x: jax.Array, w: jax.Array, stride, pads) -> jax.Array:
    """XLA's convolution (the forward and input gradient of the native dense path at stride 1)."""
    return _xla_dense(x, w, stride, pads)


def _phase_fwd(x: jax.Array, w: jax.Array, stride, pads) -> jax.Array:
    """``phase``'s convolution (the forward and input gradient of the native dense path when strided)."""
    return _phase_conv(x, w, stride, pads)


def _xla_dense(x: jax.Array, w: jax.Array, stride, pads) -> jax.Array:
    return lax.conv_general_dilated(x, w, stride, pads, dimension_numbers=_DN)


@functools.partial(jax.custom_jvp, nondiff_argnums=(2, 3))
def _phase_conv(x: jax.Array, w: jax.Array, stride, pads) -> jax.Array:
    return _xla_dense(x, w, stride, pads)


def _phase_conv_jvp(stride, pads, primals, tangents):
    # The tangent in x goes through the phase form, so reverse mode transposes *that*
    # (stride-1 convolutions), not XLA's dilated-input convolution. Symbolic zeros skip the
    # input gradient of the first layer (data, never differentiated) at no cost.
    x, w = primals
    dx, dw = tangents
    y = _xla_dense(x, w, stride, pads)
    parts = []
    if not isinstance(dx, SymbolicZero):
        parts.append(_phase_forward(dx, w, stride, pads))
    if not isinstance(dw, SymbolicZero):
        parts.append(_xla_dense(x, dw, stride, pads))
    if not parts:
        return y, jnp.zeros_like(y)
    return y, parts[0] if len(parts) == 1 else parts[0] + parts[1]


_phase_conv.defjvp(_phase_conv_jvp, symbolic_zeros=True)


def _phase_forward(x: jax.Array, w: jax.Array, stride, pads) -> jax.Array:
    """The strided dense convolution as a sum of stride-1 VALID convolutions, one per phase.

    With ``xp`` the padded input, ``y[o] = sum_k xp[s*o + k] w[k]``; writing ``k = a + s*m``
    gives ``y[o] = sum_a sum_m xa[o + m] w[a + s*m]`` with ``xa[t] = xp[s*t + a]``, the
    phase-``a`` rows of the input: a stride-1 convolution of ``xa`` with the kernel rows
    ``w[a::s]``. Its transpose (the input gradient) is therefore stride-1 convolutions too.
    """
    kh, kw, cin, _ = w.shape
    n, h, wd, _ = x.shape
    sh, sw = stride
    oh = (h + sum(pads[0]) - kh) // sh + 1
    ow = (wd + sum(pads[1]) - kw) // sw + 1
    th, tw = oh + -(-kh // sh) - 1, ow + -(-kw // sw) - 1  # phase lengths the largest sub-kernel needs
    # pad (or crop: lax.pad takes negative widths) to exactly s*t rows, then split rows by phase
    xp = lax.pad(x, jnp.zeros((), x.dtype), (
        (0, 0, 0), (pads[0][0], sh * th - h - pads[0][0], 0), (pads[1][0], sw * tw - wd - pads[1][0], 0), (0, 0, 0),
    ))
    xr = xp.reshape(n, th, sh, tw, sw, cin)
    y = None
    for ah in range(min(sh, kh)):
        for aw in range(min(sw, kw)):
            wa = w[ah::sh, aw::sw]
            xa = xr[:, : oh + wa.shape[0] - 1, ah, : ow + wa.shape[1] - 1, aw]
            part = _xla_dense(xa, wa, (1, 1), "VALID")
            y = part if y is None else y + part
    return y
