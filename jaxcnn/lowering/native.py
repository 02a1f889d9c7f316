"""Native CPU kernels (C++ called through XLA's FFI) for what XLA:CPU does slowly.

Today: depthwise convolution (channel multiplier 1, float32, dilation 1, any stride and
non-negative padding), forward, input gradient and weight gradient, from
``csrc/depthwise.cc``, compiled into ``jaxcnn/_native*.so`` by ``pip install -e .``; the same
library holds the dense convolutions' weight gradient (``csrc/conv_wgrad.cc``), whose JAX side is
:mod:`jaxcnn.lowering.native_dense`.

Each direction is a JAX primitive lowered to an ``ffi_call``. The three are bilinear and
transpose into each other (the input gradient of the forward is the input-gradient kernel,
the transpose of that in its kernel argument is the weight-gradient kernel, and so on), so
``jax.grad``, ``jax.jvp``/``jax.linearize``, higher derivatives and ``jit`` all work
natively. ``vmap`` folds the mapped axis into the batch (when only the images are mapped)
or into the channels (when the kernels are mapped too, e.g. one kernel per seed).

If the library is missing or fails to load, :func:`available` is False and callers fall
back to XLA's lowerings after one warning (:func:`warn_unavailable`). ``JAXCNN_NATIVE=0`` in
the environment, or :func:`set_enabled` ``(False)``, turns the kernels off. They run on the
CPU backend only.
"""

from __future__ import annotations

import ctypes
import functools
import importlib.util
import os
import warnings
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend.core import Primitive
from jax.interpreters import ad, batching, mlir

_LIB_MODULE = "jaxcnn._native"
_TARGETS = {
    "fwd": "jaxcnn_depthwise_forward",
    "dx": "jaxcnn_depthwise_input_grad",
    "dw": "jaxcnn_depthwise_weight_grad",
}
_SYMBOLS = {"fwd": "JaxcnnDepthwiseForward", "dx": "JaxcnnDepthwiseInputGrad", "dw": "JaxcnnDepthwiseWeightGrad"}
# the dense convolutions' weight gradient (csrc/conv_wgrad.cc; the bias gradient is an optional second
# result) and forward (csrc/conv_fwd.cc; the bias an optional third operand), used by jaxcnn.lowering.native_dense
TARGET_DENSE_W, TARGET_DENSE_FWD = "jaxcnn_conv_weight_grad", "jaxcnn_conv_forward"
_TARGETS.update(dense_w=TARGET_DENSE_W, dense_fwd=TARGET_DENSE_FWD)
_SYMBOLS.update(dense_w="JaxcnnConvWeightGrad", dense_fwd="JaxcnnConvForward")
# BatchNorm's sums (csrc/batchnorm.cc), used by jaxcnn.lowering.native_bn
TARGET_BN_STATS, TARGET_BN_DUAL = "jaxcnn_batchnorm_stats", "jaxcnn_batchnorm_dual_sum"
_TARGETS.update(bn_stats=TARGET_BN_STATS, bn_dual=TARGET_BN_DUAL)
_SYMBOLS.update(bn_stats="JaxcnnBatchNormStats", bn_dual="JaxcnnBatchNormDualSum")

# JAXCNN_NATIVE_ISA caps the instruction set the kernels pick (csrc/conv_common.h's SelectIsa; read when the
# library loads): the tests run each variant on one CPU with it. It never raises the choice above the CPU's.
ISA_VARIABLE, ISAS = "JAXCNN_NATIVE_ISA", ("avx512", "avx2", "baseline")

_state: dict[str, Any] = {"loaded": None, "error": None, "warned": False, "warned_inapplicable": False, "enabled": None}


def target_names() -> tuple[str, ...]:
    """The FFI target names of every native kernel (what a program calling them names in its custom calls)."""
    return tuple(_TARGETS.values())


def _env_enabled() -> bool:
    return os.environ.get("JAXCNN_NATIVE", "1").strip().lower() not in ("0", "false", "no", "off")


def set_enabled(flag: bool | None) -> None:
    """Turn the native kernels on or off for this process (None: follow ``JAXCNN_NATIVE``)."""
    _state["enabled"] = flag


def enabled() -> bool:
    """Whether native kernels may be used (``set_enabled`` wins over ``JAXCNN_NATIVE``)."""
    return _env_enabled() if _state["enabled"] is None else bool(_state["enabled"])


def _load() -> bool:
    """Load the shared library and register its FFI targets once; remember why if that fails."""
    if _state["loaded"] is not None:
        return _state["loaded"]
    try:
        spec = importlib.util.find_spec(_LIB_MODULE)
        if spec is None or not spec.origin:
            raise ImportError(
                "the compiled library jaxcnn/_native*.so is not there (reinstall with `pip install -e .`, "
                "which compiles csrc/ with the C++ compiler)"
            )
        cap = os.environ.get(ISA_VARIABLE)
        if cap and cap not in ISAS:  # empty: as if unset, as the library reads it
            raise ValueError(f"{ISA_VARIABLE}={cap!r} is not one of {', '.join(ISAS)} (unset it to let the "
                             "kernels pick this CPU's best)")
        lib = ctypes.CDLL(spec.origin)
        for key, symbol in _SYMBOLS.items():
            jax.ffi.register_ffi_target(_TARGETS[key], jax.ffi.pycapsule(getattr(lib, symbol)), platform="cpu")
        _state["lib"] = lib
        _state["loaded"] = True
    except Exception as e:  # any failure (missing file, bad ELF, missing symbol) means: use XLA
        _state["error"] = f"{type(e).__name__}: {e}"
        _state["loaded"] = False
    return _state["loaded"]


def available() -> bool:
    """Whether the native kernels are enabled and loaded (loads them on first call)."""
    return enabled() and _load()


def isa() -> str | None:
    """The instruction set the native kernels run with here (``avx512``, ``avx2``, ``baseline``); None if not loaded."""
    if not _load():
        return None
    if "isa" not in _state:  # fixed once the library has loaded; the routing rule asks at every trace
        fn = _state["lib"].JaxcnnKernelIsa
        fn.restype = ctypes.c_char_p
        _state["isa"] = fn().decode()
    return _state["isa"]


def load_error() -> str | None:
    """Why the library failed to load (None if it loaded or was not tried)."""
    return _state["error"]


def warn_unavailable() -> None:
    """Warn, once per process, that native kernels were wanted but XLA's lowerings run instead."""
    if _state["warned"] or not enabled():
        return
    _state["warned"] = True
    warnings.warn(
        f"jaxcnn: native CPU kernels unavailable ({load_error()}); using XLA's lowerings instead, which are "
        "slower for depthwise convolutions and dense weight gradients. Set JAXCNN_NATIVE=0 to silence this.",
        RuntimeWarning,
        stacklevel=3,
    )


def warn_inapplicable() -> None:
    """Warn, once per process, that ``impl="native"`` met a grouped conv the native kernel does not cover."""
    if _state["warned_inapplicable"]:
        return
    _state["warned_inapplicable"] = True
    warnings.warn(
        "jaxcnn: impl='native' covers depthwise convolutions with channel multiplier 1, dilation 1, float32 and "
        "non-negative padding only; other grouped convolutions use the 'auto' lowering (shift on CPU)",
        RuntimeWarning,
        stacklevel=3,
    )


def depthwise_applicable(
    x_dtype: Any, w_shape: tuple[int, ...], channels: int, groups: int, dilation: tuple[int, int],
    pads: tuple[tuple[int, int], tuple[int, int]],
) -> bool:
    """Whether the native depthwise kernel computes this convolution (else use a fallback)."""
    return (
        jnp.dtype(x_dtype) == jnp.float32
        and groups == channels
        and len(w_shape) == 4
        and w_shape[2] == 1
        and w_shape[3] == channels
        and tuple(dilation) == (1, 1)
        and all(p >= 0 for pair in pads for p in pair)
    )


# -- primitives --------------------------------------------------------------------------
# All three carry the full geometry: stride (sh, sw), pads ((top, bottom), (left, right)),
# in_hw (input height, width) and kernel (kh, kw), so each can build any other.


def _out_hw(in_hw, kernel, stride, pads):
    return tuple((n + lo + hi - k) // s + 1 for n, k, s, (lo, hi) in zip(in_hw, kernel, stride, pads, strict=True))


fwd_p = Primitive("jaxcnn_depthwise_fwd")  # (x, w) -> y
dx_p = Primitive("jaxcnn_depthwise_dx")  # (dy, w) -> dx
dw_p = Primitive("jaxcnn_depthwise_dw")  # (x, dy) -> dw


def depthwise(x: jax.Array, w: jax.Array, stride: tuple[int, int], pads: tuple[tuple[int, int], tuple[int, int]]):
    """Depthwise convolution of NHWC ``x`` with ``w`` (kh, kw, 1, C) by the native kernel."""
    return fwd_p.bind(
        x, w, stride=tuple(stride), pads=tuple(map(tuple, pads)), in_hw=tuple(x.shape[1:3]), kernel=tuple(w.shape[:2])
    )


def _abstract(key):
    def rule(a, b, *, stride, pads, in_hw, kernel):
        n, c = a.shape[0], a.shape[3]  # x, dy and x: batch and channels
        if key == "fwd":
            shape = (n, *_out_hw(in_hw, kernel, stride, pads), c)
        elif key == "dx":
            shape = (n, *in_hw, c)
        else:
            shape = (*kernel, 1, c)
        return jax.core.ShapedArray(shape, a.dtype)

    return rule


def _ffi(key):
    def call(a, b, *, stride, pads, in_hw, kernel):
        if not _load():
            raise RuntimeError(f"jaxcnn: the native depthwise kernels are not available: {load_error()}")
        out = _abstract(key)(a, b, stride=stride, pads=pads, in_hw=in_hw, kernel=kernel)
        return jax.ffi.ffi_call(_TARGETS[key], jax.ShapeDtypeStruct(out.shape, out.dtype))(
            a, b, sh=np.int64(stride[0]), sw=np.int64(stride[1]), pt=np.int64(pads[0][0]), pl=np.int64(pads[1][0])
        )

    return call


@functools.cache
def _eager(prim, **params):
    return jax.jit(lambda a, b: prim.bind(a, b, **params))


for _key, _p in (("fwd", fwd_p), ("dx", dx_p), ("dw", dw_p)):
    _p.def_abstract_eval(_abstract(_key))
    _p.def_impl(lambda a, b, _p=_p, **params: _eager(_p, **params)(a, b))
    mlir.register_lowering(_p, mlir.lower_fun(_ffi(_key), multiple_results=False), platform="cpu")


# Transposes. y = fwd(x, w); dx = dx(dy, w); dw = dw(x, dy): each is bilinear, and
# <ct, fwd(x, w)> = <dx(ct, w), x> = <dw(x, ct), w> ties the three together.
ad.defbilinear(
    fwd_p,
    lambda ct, x, w, **p: dx_p.bind(ct, w, **p),
    lambda ct, x, w, **p: dw_p.bind(x, ct, **p),
)
ad.defbilinear(
    dx_p,
    lambda ct, dy, w, **p: fwd_p.bind(ct, w, **p),
    lambda ct, dy, w, **p: dw_p.bind(ct, dy, **p),
)
ad.defbilinear(
    dw_p,
    lambda ct, x, dy, **p: dx_p.bind(dy, ct, **p),
    lambda ct, x, dy, **p: fwd_p.bind(x, ct, **p),
)


# Batching. The first operand of fwd and dx is image-like and the second a kernel; both
# operands of dw are image-like. With only image-like operands mapped (and an unmapped
# kernel) the mapped axis joins the batch axis (not for dw, whose batch axis is summed);
# otherwise it joins the channel axis: depthwise channels are independent, so B maps of C
# channels are one call with B*C channels.


def _to_channels(a, bdim, size):
    """Move a mapped axis (or broadcast an unmapped operand) into the channel axis."""
    if bdim is None:
        a = jnp.broadcast_to(a, (size, *a.shape))
    else:
        a = jnp.moveaxis(a, bdim, 0)
    # (B, ..., C) -> (..., B, C) -> (..., B*C)
    a = jnp.moveaxis(a, 0, -2)
    return a.reshape(*a.shape[:-2], a.shape[-2] * a.shape[-1])


def _from_channels(y, size):
    y = y.reshape(*y.shape[:-1], size, y.shape[-1] // size)
    return jnp.moveaxis(y, -2, 0)


def _batcher(prim):
    def rule(args, dims, **params):
        a, b = args
        da, db = dims
        size = next(x.shape[d] for x, d in zip(args, dims, strict=True) if d is not None)
        if prim is not dw_p and db is None:
            a = jnp.moveaxis(a, da, 0)
            n = a.shape[1]
            y = prim.bind(a.reshape(size * n, *a.shape[2:]), b, **params)
            return y.reshape(size, n, *y.shape[1:]), 0
        a = _to_channels(a, da, size)
        b = _to_channels(b, db, size)
        return _from_channels(prim.bind(a, b, **params), size), 0

    return rule


batching.primitive_batchers[fwd_p] = _batcher(fwd_p)
batching.primitive_batchers[dx_p] = _batcher(dx_p)
batching.primitive_batchers[dw_p] = _batcher(dw_p)
