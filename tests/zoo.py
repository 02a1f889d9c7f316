"""Test helpers for the core suite (not a test file).

* ``ZOO``: (id, layer, per-example input shape) descriptors covering every layer and
  combinator, with the hyperparameter variants the invariants must hold for.
* Independent NumPy references (TF-style SAME padding, naive loop convolution and
  pooling) shared by the numerics and property tests. They deliberately reuse nothing
  from ``jaxcnn`` beyond plain hyperparameter values.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from jaxcnn import (
    GELU,
    AvgPool,
    BatchNorm,
    Conv,
    CReLU,
    Dense,
    DepthwiseConv,
    Dropout,
    DropPath,
    Flatten,
    GlobalAvgPool,
    GlobalMaxPool,
    Identity,
    L2Pool,
    Layer,
    LeakyReLU,
    MaxPool,
    Parallel,
    PreActResidual,
    Projection,
    ReLU,
    ReLU6,
    Residual,
    Sequential,
    Sigmoid,
    SiLU,
    Softmax,
    SqueezeExcite,
    SubsamplePad,
    Tanh,
    mixed_precision,
    with_conv_impl,
)


@dataclass(frozen=True)
class Case:
    """One zoo descriptor: a layer, the per-example input shape, and jit-vs-eager tolerances."""

    id: str
    layer: Layer
    in_shape: tuple[int, ...]
    batch: int = 2
    rtol: float = 1e-5
    atol: float = 1e-5


# Most cases use 4 input channels and 4 features so that parameter shapes repeat: on CPU every
# new shape costs a fresh compile of the random-number generator during init.


def _inception() -> Parallel:
    return Parallel([
        Conv(4, 1),
        Sequential([Conv(4, 1), ReLU(), Conv(4, 3)]),
        Sequential([MaxPool(3, 1, "SAME"), Conv(4, 1)]),
    ])


def _dense_block(growth: int = 4) -> Parallel:
    return Parallel([Identity(), Sequential([BatchNorm(), ReLU(), Conv(growth, 3)])])


def _basic_block(c: int) -> Residual:
    conv = Conv(c, 3, use_bias=False)
    return Residual(Sequential([conv, BatchNorm(), ReLU(), conv, BatchNorm()]))


def _projection_block(c: int) -> Residual:
    return Residual(
        Sequential([Conv(c, 3, stride=2), BatchNorm(), ReLU(), Conv(c, 3, use_bias=False), BatchNorm()]),
        Sequential([Conv(c, 1, stride=2, use_bias=False), BatchNorm()]),
    )


def nested_model() -> Sequential:
    """A small network using every combinator, nested up to four levels deep."""
    return Sequential({
        "stem": Sequential([Conv(4, 3, use_bias=False), BatchNorm(), ReLU()]),
        "block1": _basic_block(4),
        "block2": _projection_block(4),
        "mixed": Parallel([Sequential([DepthwiseConv(3), Conv(4, 1)]), Conv(4, 1), _dense_block(4)]),
        "pool": GlobalAvgPool(),
        "drop": Dropout(0.25),
        "head": Dense(4),
    })


def small_cnn() -> Sequential:
    """Conv -> BN -> ReLU -> pool -> depthwise -> ... -> Dense, as in a mobile network."""
    return Sequential([
        Conv(4, 3), BatchNorm(), ReLU(), MaxPool(2), DepthwiseConv(3), BatchNorm(), ReLU6(),
        Conv(4, 1), GlobalAvgPool(), Dense(4),
    ])


def grouped_stack() -> Sequential:
    """Grouped, depthwise and dense convolutions, for the alternative lowerings."""
    return Sequential([Conv(8, 3, stride=2, groups=4), DepthwiseConv(3), ReLU(), Conv(4, 1, groups=2)])


IMG = (8, 8, 4)

ZOO: list[Case] = [
    # convolutions
    Case("conv_same", Conv(4, 3, padding="SAME"), IMG),
    Case("conv_valid", Conv(4, 3, padding="VALID"), IMG),
    Case("conv_int_pad", Conv(4, 3, padding=1), IMG),
    Case("conv_explicit_pad", Conv(4, 3, padding=((2, 0), (1, 1))), IMG),
    Case("conv_stride2", Conv(4, 3, stride=2), (9, 9, 4)),
    Case("conv_dilation2", Conv(4, 3, dilation=2), IMG),
    Case("conv_groups4", Conv(8, 3, groups=4), (8, 8, 8)),
    Case("conv_no_bias", Conv(4, 3, use_bias=False), IMG),
    Case("conv_impl_shift", Conv(8, 3, stride=2, groups=2, impl="shift"), (9, 9, 4)),
    Case("conv_impl_im2col", Conv(4, 3, dilation=2, impl="im2col"), IMG),
    Case("dwconv", DepthwiseConv(3), IMG),
    Case("dwconv_mult2", DepthwiseConv(3, stride=2, multiplier=2, use_bias=True), (9, 9, 4)),
    Case("stack_shift", with_conv_impl(grouped_stack(), "shift"), IMG),
    Case("stack_im2col", with_conv_impl(grouped_stack(), "im2col"), IMG),
    Case("stack_auto", with_conv_impl(grouped_stack(), "auto"), IMG),
    # dense and reshaping
    Case("dense", Dense(4), (16,)),
    Case("dense_no_bias", Dense(4, use_bias=False), (16,)),
    Case("flatten", Flatten(), (2, 2, 4)),
    # pooling
    Case("maxpool", MaxPool(2), IMG),
    Case("maxpool_same_s2", MaxPool(3, 2, "SAME"), (9, 9, 4)),
    Case("avgpool_valid", AvgPool(2), IMG),
    Case("avgpool_valid_incl", AvgPool(3, 2, "VALID", count_include_pad=True), (9, 9, 4)),
    Case("avgpool_same_excl", AvgPool(3, 2, "SAME"), IMG),
    Case("avgpool_same_incl", AvgPool(3, 2, "SAME", count_include_pad=True), IMG),
    Case("l2pool", L2Pool(2), IMG),
    Case("gap", GlobalAvgPool(), IMG),
    Case("gap_keepdims", GlobalAvgPool(keepdims=True), IMG),
    Case("gmp", GlobalMaxPool(), IMG),
    Case("gmp_keepdims", GlobalMaxPool(keepdims=True), IMG),
    # normalisation, regularisation
    Case("batchnorm", BatchNorm(), IMG),
    Case("batchnorm_flat", BatchNorm(ema_decay=0.5, use_offset=False), (16,)),
    Case("dropout", Dropout(0.3), IMG),
    # activations and channel tricks
    Case("relu", ReLU(), IMG),
    Case("relu6", ReLU6(), IMG),
    Case("leaky_relu", LeakyReLU(0.2), IMG),
    Case("gelu", GELU(), IMG),
    Case("gelu_exact", GELU(approximate=False), IMG),
    Case("sigmoid", Sigmoid(), IMG),
    Case("tanh", Tanh(), IMG),
    Case("softmax", Softmax(), (16,)),
    Case("crelu", CReLU(), IMG),
    Case("crelu_bare", CReLU(relu=False), IMG),
    Case("identity", Identity(), IMG),
    # the scaling families' layers (jaxcnn.layers.blocks)
    Case("silu", SiLU(), IMG),
    Case("squeeze_excite", SqueezeExcite(2), IMG),
    Case("squeeze_excite_relu", SqueezeExcite(3, activation="relu"), IMG),
    Case("droppath", DropPath(0.3), IMG),
    Case("subsample_pad", SubsamplePad(8), (9, 9, 4)),
    Case("projection", Projection(8, 2), (9, 9, 4)),
    Case("projection_identity", Projection(4), IMG),
    Case("preact_projecting", PreActResidual(Sequential([BatchNorm(), ReLU()]),
                                             Sequential([Conv(8, 3, stride=2), BatchNorm(), ReLU(), Conv(8, 3)]),
                                             Projection(8, 2)), IMG),
    Case("preact_identity", PreActResidual(Sequential([BatchNorm(), ReLU()]), Conv(4, 3, use_bias=False),
                                           Projection(4)), IMG),
    Case("residual_option_a", Residual(Sequential([Conv(8, 3, stride=2), ReLU(), Conv(8, 3), DropPath(0.2)]),
                                       SubsamplePad(8)), IMG),
    # combinators
    Case("seq_list", Sequential([Conv(4, 3), BatchNorm(), ReLU(), MaxPool(2), MaxPool(2), Flatten(), Dense(4)]), IMG),
    Case("seq_dict", Sequential({"conv": Conv(4, 3), "act": ReLU(), "pool": GlobalAvgPool(), "fc": Dense(4)}), IMG),
    Case("seq_empty", Sequential([]), IMG),
    Case("residual_identity", _basic_block(4), IMG),
    Case("residual_projection", _projection_block(4), IMG),
    Case("parallel_inception", _inception(), IMG),
    Case("parallel_densenet", _dense_block(), IMG),
    Case("nested", nested_model(), (9, 9, 4)),
    Case("mixed_bf16", mixed_precision(small_cnn()), IMG, rtol=2e-2, atol=2e-2),
]

ZOO_IDS = [c.id for c in ZOO]
assert len(set(ZOO_IDS)) == len(ZOO_IDS), "zoo ids must be unique"


def make_input(case: Case, seed: int = 0) -> jax.Array:
    """A float32 batch for ``case`` drawn from N(0, 1) (no ties, almost surely)."""
    rng = np.random.default_rng(seed)
    return jnp.asarray(rng.standard_normal((case.batch, *case.in_shape)), jnp.float32)


def randomize(tree, seed: int = 1, dtype=None):
    """The same tree with every array replaced by N(0, 1) values (non-trivial biases, scales)."""
    rng = np.random.default_rng(seed)
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    new = [jnp.asarray(rng.standard_normal(leaf.shape), dtype or leaf.dtype) for leaf in leaves]
    return jax.tree_util.tree_unflatten(treedef, new)


# -- independent NumPy references ------------------------------------------------------------


def ref_pads(padding, size, kernel, stride, dilation=(1, 1)):
    """((top, bottom), (left, right)) for a padding argument, SAME computed the TF way.

    SAME: out = ceil(n / s), total = max((out - 1) * s + k_eff - n, 0), top = total // 2.
    """
    k_eff = [d * (k - 1) + 1 for k, d in zip(kernel, dilation, strict=True)]
    if isinstance(padding, str):
        if padding.upper() == "VALID":
            return ((0, 0), (0, 0))
        pads = []
        for n, k, s in zip(size, k_eff, stride, strict=True):
            out = math.ceil(n / s)
            total = max((out - 1) * s + k - n, 0)
            pads.append((total // 2, total - total // 2))
        return tuple(pads)
    if isinstance(padding, int):
        return ((padding, padding), (padding, padding))
    a, b = padding
    if isinstance(a, int) and isinstance(b, int):
        return ((a, a), (b, b))
    return (tuple(a), tuple(b))


def np_conv(x, w, b=None, stride=(1, 1), pads=((0, 0), (0, 0)), dilation=(1, 1), groups=1):
    """Naive grouped 2-D convolution (cross-correlation), NHWC x HWIO, in float64 loops."""
    x = np.asarray(x, np.float64)
    w = np.asarray(w, np.float64)
    n, _, _, c = x.shape
    kh, kw, cin_g, cout = w.shape
    assert c == cin_g * groups and cout % groups == 0
    cout_g = cout // groups
    xp = np.pad(x, ((0, 0), tuple(pads[0]), tuple(pads[1]), (0, 0)))
    oh = (xp.shape[1] - (dilation[0] * (kh - 1) + 1)) // stride[0] + 1
    ow = (xp.shape[2] - (dilation[1] * (kw - 1) + 1)) // stride[1] + 1
    y = np.zeros((n, oh, ow, cout))
    for i in range(oh):
        for j in range(ow):
            for ki in range(kh):
                for kj in range(kw):
                    pixel = xp[:, i * stride[0] + ki * dilation[0], j * stride[1] + kj * dilation[1], :]
                    for g in range(groups):
                        xin = pixel[:, g * cin_g:(g + 1) * cin_g]
                        y[:, i, j, g * cout_g:(g + 1) * cout_g] += xin @ w[ki, kj, :, g * cout_g:(g + 1) * cout_g]
    if b is not None:
        y = y + np.asarray(b, np.float64)
    return y


def np_pool(x, window, stride, pads, mode, count_include_pad=False):
    """Naive pooling: ``mode`` in {'max', 'avg', 'l2'}; padded positions never take part,
    except that ``avg`` with ``count_include_pad`` divides by the full window size."""
    x = np.asarray(x, np.float64)
    n, h, wd, c = x.shape
    (top, bottom), (left, right) = pads
    oh = (h + top + bottom - window[0]) // stride[0] + 1
    ow = (wd + left + right - window[1]) // stride[1] + 1
    y = np.zeros((n, oh, ow, c))
    for i in range(oh):
        for j in range(ow):
            r0, c0 = i * stride[0] - top, j * stride[1] - left
            rows = [r for r in range(r0, r0 + window[0]) if 0 <= r < h]
            cols = [q for q in range(c0, c0 + window[1]) if 0 <= q < wd]
            vals = x[:, rows][:, :, cols]
            if mode == "max":
                y[:, i, j] = vals.max(axis=(1, 2))
            elif mode == "l2":
                y[:, i, j] = np.sqrt((vals**2).sum(axis=(1, 2)))
            elif count_include_pad:
                y[:, i, j] = vals.sum(axis=(1, 2)) / (window[0] * window[1])
            else:
                y[:, i, j] = vals.sum(axis=(1, 2)) / (len(rows) * len(cols))
    return y


def np_conv_vjp(x, w, cot, stride=(1, 1), pads=((0, 0), (0, 0)), dilation=(1, 1), groups=1):
    """Gradients (dx, dw, db) of ``sum(np_conv(x, w, b) * cot)``, by the same loops run backwards."""
    x = np.asarray(x, np.float64)
    w = np.asarray(w, np.float64)
    cot = np.asarray(cot, np.float64)
    _, h, wd, _ = x.shape
    kh, kw, cin_g, cout = w.shape
    cout_g = cout // groups
    xp = np.pad(x, ((0, 0), tuple(pads[0]), tuple(pads[1]), (0, 0)))
    dxp = np.zeros_like(xp)
    dw = np.zeros_like(w)
    for i in range(cot.shape[1]):
        for j in range(cot.shape[2]):
            for ki in range(kh):
                for kj in range(kw):
                    r, c = i * stride[0] + ki * dilation[0], j * stride[1] + kj * dilation[1]
                    for g in range(groups):
                        cin, co = slice(g * cin_g, (g + 1) * cin_g), slice(g * cout_g, (g + 1) * cout_g)
                        dw[ki, kj, :, co] += xp[:, r, c, cin].T @ cot[:, i, j, co]
                        dxp[:, r, c, cin] += cot[:, i, j, co] @ w[ki, kj, :, co].T
    dx = dxp[:, pads[0][0]:pads[0][0] + h, pads[1][0]:pads[1][0] + wd]
    return dx, dw, cot.sum(axis=(0, 1, 2))
