"""The analytic counts against XLA's cost analysis and against the arrays init really makes.

XLA counts 2 FLOPs per multiply-add over the kernel taps that land on real input (not
on padding), so it equals 2 x MACs exactly for VALID/1x1 convolutions and dense layers
without bias or activations; for padded convolutions it is the number of non-padded
taps, computed here independently (features.md 2.6).
"""

from __future__ import annotations

import jax
import pytest

from jaxcnn import Conv, Dense, DepthwiseConv, Flatten, Sequential, models
from jaxcnn.core import count_params
from jaxcnn.summary import summary, xla_flops

# (id, model, per-example input, batch): VALID, 1x1, dense; no bias, no activations
EXACT_ZOO = [
    ("valid3x3", Conv(8, 3, 1, "VALID", use_bias=False), (10, 10, 4), 1),
    ("valid_rect_stride2", Conv(6, (3, 5), 2, "VALID", use_bias=False), (11, 13, 3), 2),
    ("pointwise", Conv(32, 1, 1, "VALID", use_bias=False), (7, 7, 16), 1),
    ("pointwise_stride2", Conv(8, 1, 2, "VALID", use_bias=False), (9, 9, 4), 3),
    ("grouped_valid", Conv(8, 3, 1, "VALID", groups=4, use_bias=False), (8, 8, 8), 1),
    ("depthwise_valid", DepthwiseConv(3, 1, "VALID", impl="xla"), (8, 8, 16), 1),
    ("dilated_valid", Conv(8, 3, 1, "VALID", dilation=2, use_bias=False), (9, 9, 4), 1),
    ("dense", Dense(256, use_bias=False), (73,), 4),  # features.md 2.6: 4x73 @ 73x256 = 149,504
    ("conv_stack_dense_head", Sequential([
        Conv(6, 3, 1, "VALID", use_bias=False), Conv(6, 1, 1, "VALID", use_bias=False),
        Conv(4, 3, 2, "VALID", use_bias=False), Flatten(), Dense(10, use_bias=False), Dense(3, use_bias=False),
    ]), (12, 12, 3), 2),
]


@pytest.mark.parametrize("case", EXACT_ZOO, ids=[c[0] for c in EXACT_ZOO])
def test_xla_flops_equal_two_macs(case):
    _, model, shape, batch = case
    macs = summary(model, shape).totals.macs
    assert xla_flops(model, shape, batch=batch) == 2 * macs * batch


def test_xla_dense_reference_figure():
    assert xla_flops(Dense(256, use_bias=False), (73,), batch=4) == 149_504


def _same_pads(n, k_eff, s):
    """TensorFlow SAME: output ceil(n / s), total padding split with the extra at the end."""
    out = -(-n // s)
    total = max((out - 1) * s + k_eff - n, 0)
    return total // 2, total - total // 2


def _real_taps(n, k, s, d, lo, hi):
    """Sum over output positions of the kernel taps that land inside [0, n) along one axis."""
    out = (n + lo + hi - (d * (k - 1) + 1)) // s + 1
    return sum(1 for o in range(out) for t in range(k) if 0 <= o * s - lo + t * d < n)


def _tap_flops(kernel, stride, dilation, padding, shape, per_tap):
    counts = []
    for axis in range(2):
        n, k, s, d = shape[axis], kernel[axis], stride[axis], dilation[axis]
        lo, hi = _same_pads(n, d * (k - 1) + 1, s) if padding == "SAME" else (padding, padding)
        counts.append(_real_taps(n, k, s, d, lo, hi))
    return 2 * counts[0] * counts[1] * per_tap


# (id, model, input, kernel, stride, dilation, padding, MACs per real tap = C/groups x F)
PADDED = [
    ("same3x3", Conv(32, 3, 1, "SAME", use_bias=False), (8, 8, 16), 3, 1, 1, "SAME", 16 * 32),
    ("same3x3_stride2_odd", Conv(8, 3, 2, "SAME", use_bias=False), (9, 9, 4), 3, 2, 1, "SAME", 4 * 8),
    ("same5x5_stride2_rect", Conv(8, 5, 2, "SAME", use_bias=False), (10, 7, 4), 5, 2, 1, "SAME", 4 * 8),
    ("pad2_3x3", Conv(8, 3, 1, 2, use_bias=False), (6, 6, 4), 3, 1, 1, 2, 4 * 8),
    ("same_dilated", Conv(8, 3, 1, "SAME", dilation=2, use_bias=False), (9, 9, 4), 3, 1, 2, "SAME", 4 * 8),
    ("same_grouped", Conv(8, 3, 1, "SAME", groups=4, use_bias=False), (8, 8, 8), 3, 1, 1, "SAME", 2 * 8),
    ("same_depthwise", DepthwiseConv(3, 1, "SAME", impl="xla"), (8, 8, 16), 3, 1, 1, "SAME", 16),
    ("same_depthwise_mult2_s2", DepthwiseConv(3, 2, "SAME", multiplier=2, impl="xla"), (9, 9, 4), 3, 2, 1,
     "SAME", 8),
]


@pytest.mark.parametrize("case", PADDED, ids=[c[0] for c in PADDED])
def test_xla_flops_count_only_real_taps(case):
    _, model, shape, k, s, d, padding, per_tap = case
    expected = _tap_flops((k, k), (s, s), (d, d), padding, shape, per_tap)
    got = xla_flops(model, shape)
    assert got == expected
    assert got < 2 * summary(model, shape).totals.macs  # every case here has padded taps


def test_xla_padding_reference_figures():
    # features.md 2.6 (measured on jax 0.10.2 CPU): 495,616 vs 589,824; depthwise 15,488 vs 18,432
    conv = Conv(32, 3, 1, "SAME", use_bias=False)
    assert (xla_flops(conv, (8, 8, 16)), 2 * summary(conv, (8, 8, 16)).totals.macs) == (495_616, 589_824)
    dw = DepthwiseConv(3, 1, "SAME", impl="xla")
    assert (xla_flops(dw, (8, 8, 16)), 2 * summary(dw, (8, 8, 16)).totals.macs) == (15_488, 18_432)


# -- learnable + state counts against the arrays init returns -----------------------------------

REAL_INIT = [
    ("mobilenet_v1/0.25", (32, 32, 3), {"stem_stride": 1}),
    ("resnext50_32x4d/0.25", (32, 32, 3), {"small_input": True}),
    ("mnist_net", (28, 28, 1), {}),
    ("allconv6_5_bn", (32, 32, 3), {}),
    ("vgg16_bn/0.125", (32, 32, 3), {}),
]


@pytest.mark.parametrize("name,shape,opts", REAL_INIT, ids=[c[0] for c in REAL_INIT])
def test_summary_counts_equal_init_leaf_sizes(name, shape, opts):
    model = models.get(name, num_classes=10, **opts)
    params, state = model.init(jax.random.key(0), shape)
    leaf_sizes = [leaf.size for leaf in jax.tree_util.tree_leaves(params)]
    state_sizes = [leaf.size for leaf in jax.tree_util.tree_leaves(state)]
    t = summary(model, shape).totals
    assert sum(leaf_sizes) == t.learnable_params == count_params(params)
    assert sum(state_sizes) == t.state_params
    assert (t.state_params > 0) == (name != "mnist_net")  # every other model here has BatchNorm
