"""SPEC.md's worked examples A-G, every figure computed by jaxcnn from models built with layers.

The expected numbers are the published or closed-form figures of SPEC.md (section
named in each test) and of /work/shared/research/features.md; none is read back from
the library. Parameter conventions: "learnable" = conv/dense weights and biases plus
BatchNorm scale/offset; "state" = BatchNorm running mean/variance.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcnn import (
    AvgPool,
    BatchNorm,
    Conv,
    Dense,
    DepthwiseConv,
    Flatten,
    GlobalAvgPool,
    Identity,
    MaxPool,
    Parallel,
    ReLU,
    Sequential,
    ShapeError,
    models,
)
from jaxcnn.models.resnet import bottleneck
from jaxcnn.summary import OPTIMIZER_SLOTS, summary
from jaxcnn.transforms import fc_to_conv


def leaf_rows(s):
    return [r for r in s.rows if r.is_leaf]


def weighted_rows(s):
    """Leaf rows that own learnable parameters, in execution order."""
    return [r for r in leaf_rows(s) if r.learnable_params]


def row(s, name):
    (r,) = [r for r in s.rows if r.name == name]
    return r


# -- A. fewer layers, more parameters (SPEC A, seeds/000) ----------------------------------

IN_A = (224, 224, 3)


def test_a_totals_without_bias():
    # SPEC A: "total 6,810,720" (model 1) and "12,938,336" (model 2); bias=False is the default
    assert summary(models.get("spec_a_4conv"), IN_A).totals.learnable_params == 6_810_720
    assert summary(models.get("spec_a_3conv"), IN_A).totals.learnable_params == 12_938_336


def test_a_totals_with_bias():
    # SPEC A: "With biases the totals are 6,811,330 and 12,938,690."
    assert summary(models.get("spec_a_4conv", bias=True), IN_A).totals.learnable_params == 6_811_330
    assert summary(models.get("spec_a_3conv", bias=True), IN_A).totals.learnable_params == 12_938_690


def test_a_per_layer_rows():
    # SPEC A model 1: 864, 18,432, 73,728, 294,912, FC 14x14x256x128 = 6,422,528, 128x2 = 256
    s = summary(models.get("spec_a_4conv"), IN_A)
    assert [r.learnable_params for r in weighted_rows(s)] == [864, 18_432, 73_728, 294_912, 6_422_528, 256]
    assert [r.kind for r in weighted_rows(s)] == ["conv"] * 4 + ["dense"] * 2
    assert row(s, "flatten").out_shape == (14 * 14 * 256,)
    # SPEC A model 2: FC 28x28x128x128 = 12,845,056
    s2 = summary(models.get("spec_a_3conv"), IN_A)
    assert [r.learnable_params for r in weighted_rows(s2)] == [864, 18_432, 73_728, 12_845_056, 256]
    # the paradox itself: removing a conv+pool block raises the count
    assert s2.totals.learnable_params > s.totals.learnable_params


def test_a_hand_built_model_matches_registry():
    # the same network written out with layers gives the same rows as the registry builder
    layers = []
    for c in (32, 64, 128, 256):
        layers += [Conv(c, 3, 1, "SAME", use_bias=False), ReLU(), MaxPool(2, 2)]
    layers += [Flatten(), Dense(128, use_bias=False), ReLU(), Dense(2, use_bias=False)]
    s = summary(Sequential(layers), IN_A)
    assert [r.learnable_params for r in weighted_rows(s)] == [864, 18_432, 73_728, 294_912, 6_422_528, 256]


def test_a_global_average_pool_collapses_the_fc():
    # SPEC A: GAP instead of flatten -> first FC is 256x128 = 32,768 instead of 6,422,528
    s = summary(models.get("spec_a_4conv", head="gap"), IN_A)
    fc1 = row(s, "fc1")
    assert fc1.learnable_params == 256 * 128 == 32_768
    assert s.totals.learnable_params == 6_810_720 - 6_422_528 + 32_768


# -- B. the MNIST net (SPEC B, seeds/003) -----------------------------------------------------


def test_b_mnist_rows():
    s = summary(models.get("mnist_net"), (28, 28, 1))
    # SPEC B table: (layer, output, parameters)
    expected = [
        ("conv1", (24, 24, 32), (5 * 5 * 1 + 1) * 32),  # 832
        ("pool1", (12, 12, 32), 0),
        ("conv2", (10, 10, 32), (3 * 3 * 32 + 1) * 32),  # 9,248
        ("pool2", (5, 5, 32), 0),
        ("fc1", (256,), (32 * 5 * 5 + 1) * 256),  # 205,056
        ("fc2", (10,), (256 + 1) * 10),  # 2,570
    ]
    for name, shape, params in expected:
        r = row(s, name)
        assert (r.out_shape, r.learnable_params) == (shape, params), name
    assert [p for _, _, p in expected] == [832, 0, 9_248, 0, 205_056, 2_570]
    assert row(s, "flatten").out_shape == (800,)
    assert s.totals.learnable_params == 217_706  # SPEC B total
    assert s.totals.state_params == 0
    assert s.totals.output_shape == [10]


@pytest.mark.parametrize("n", [1, 16, 32, 100])
def test_b_batchnorm_adds_2n_learnable_and_2n_state(n):
    # SPEC B: "BatchNorm over n channels adds 2n learnable parameters and 2n state entries"
    plain = summary(Sequential([Conv(n, 3, use_bias=False)]), (6, 6, 3)).totals
    with_bn = summary(Sequential([Conv(n, 3, use_bias=False), BatchNorm()]), (6, 6, 3)).totals
    assert with_bn.learnable_params - plain.learnable_params == 2 * n
    assert with_bn.state_params - plain.state_params == 2 * n


# -- C. small kernels (SPEC C, seeds/002 and seeds/001) -----------------------------------------

SIZES_C = [(4, 8, 5, 7), (16, 16, 14, 14), (64, 32, 28, 20), (3, 96, 9, 11)]  # (C, F, H, W)


@pytest.mark.parametrize("c,f,h,w", SIZES_C)
def test_c_one_5x5_vs_two_3x3(c, f, h, w):
    one = summary(Conv(f, 5, 1, "SAME", use_bias=False), (h, w, c)).totals
    assert one.learnable_params == 25 * c * f
    assert one.macs == 25 * h * w * c * f
    assert one.receptive_field == [5, 5]
    # two stacked 3x3 with C = F (the C -> C comparison of seeds/002)
    two = summary(Sequential([Conv(c, 3, 1, "SAME", use_bias=False)] * 2), (h, w, c)).totals
    assert two.learnable_params == 18 * c * c
    assert two.macs == 18 * h * w * c * c
    assert two.receptive_field == [5, 5]
    assert two.output_shape == [h, w, c]


@pytest.mark.parametrize("c", [1, 8, 64, 256])
def test_c_three_3x3_vs_one_7x7(c):
    three = summary(Sequential([Conv(c, 3, 1, "SAME", use_bias=False)] * 3), (12, 12, c)).totals
    seven = summary(Conv(c, 7, 1, "SAME", use_bias=False), (12, 12, c)).totals
    assert three.learnable_params == 27 * c * c
    assert seven.learnable_params == 49 * c * c
    assert three.receptive_field == seven.receptive_field == [7, 7]


@pytest.mark.parametrize("c", [4, 16, 64, 256])
def test_c_bottleneck_3_25_c_squared(c):
    # C -> 1x1 C/2 -> 3x3 C/2 -> 1x1 C: C^2/2 + 9C^2/4 + C^2/2 = 3.25 C^2, vs 9 C^2 for a plain 3x3
    block = Sequential([
        Conv(c // 2, 1, 1, "VALID", use_bias=False),
        Conv(c // 2, 3, 1, "SAME", use_bias=False),
        Conv(c, 1, 1, "VALID", use_bias=False),
    ])
    plain = Conv(c, 3, 1, "SAME", use_bias=False)
    assert summary(block, (7, 7, c)).totals.learnable_params * 4 == 13 * c * c
    assert summary(plain, (7, 7, c)).totals.learnable_params == 9 * c * c


# -- D. ResNet bottleneck vs ResNeXt block (SPEC D, seeds/004) --------------------------------
# Counted here: convolution weights only (no conv has a bias). The library's bottleneck also
# has BatchNorm after each conv; its scale/offset are excluded from the SPEC figures and
# checked separately.


def conv_weight_count(s):
    return sum(r.learnable_params for r in leaf_rows(s) if r.kind == "conv")


def test_d_resnet_bottleneck_69632():
    s = summary(bottleneck(64, 256), (14, 14, 256))
    assert [r.learnable_params for r in leaf_rows(s) if r.kind == "conv"] == [16_384, 36_864, 16_384]
    assert conv_weight_count(s) == 69_632
    bn = sum(r.learnable_params for r in leaf_rows(s) if r.kind == "bn")
    assert bn == 2 * (64 + 64 + 256)
    assert s.totals.learnable_params == 69_632 + bn


def test_d_resnext_grouped_block_70144():
    s = summary(bottleneck(128, 256, groups=32), (14, 14, 256))
    convs = [r for r in leaf_rows(s) if r.kind == "conv"]
    assert [r.groups for r in convs] == [1, 32, 1]
    assert [r.learnable_params for r in convs] == [256 * 128, 9 * 4 * 128, 128 * 256]
    assert conv_weight_count(s) == 70_144 == 32 * (1_024 + 144 + 1_024)


def _path(stages):
    """One ResNeXt path: 1x1,4 -> 3x3,4 (-> 1x1,256 when ``stages == 3``), no bias."""
    layers = [Conv(4, 1, 1, "VALID", use_bias=False), Conv(4, 3, 1, 1, use_bias=False)]
    if stages == 3:
        layers.append(Conv(256, 1, 1, "VALID", use_bias=False))
    return Sequential(layers)


def test_d_explicit_32_paths_count_like_the_grouped_conv():
    in_shape = (14, 14, 256)
    grouped = summary(bottleneck(128, 256, groups=32), in_shape)
    first_two = sum(r.learnable_params for r in leaf_rows(grouped) if r.name.endswith(("conv1", "conv2")))
    paths2 = summary(Parallel([_path(2) for _ in range(32)]), in_shape)
    assert paths2.totals.output_shape == [14, 14, 128]
    assert paths2.totals.learnable_params == first_two == 32 * (1_024 + 144)
    # all three stages per path: the summing that merges the paths has no parameters
    paths3 = summary(Parallel([_path(3) for _ in range(32)]), in_shape)
    assert paths3.totals.learnable_params == 70_144


def _np_conv(x, w, pad):
    """Plain NumPy stride-1 convolution of one (H, W, C) image with an HWIO kernel (reference)."""
    kh, kw = w.shape[:2]
    xp = np.pad(x, ((pad, pad), (pad, pad), (0, 0)))
    h, wd = xp.shape[0] - kh + 1, xp.shape[1] - kw + 1
    return sum(xp[i:i + h, j:j + wd] @ w[i, j] for i in range(kh) for j in range(kw))


def test_d_explicit_paths_compute_the_grouped_block():
    # numerically: 32 paths (1x1,4 -> 3x3,4 -> 1x1,256) summed == 1x1 128 -> grouped 3x3 -> 1x1 256
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 5, 256)).astype(np.float32)
    w1 = rng.standard_normal((32, 1, 1, 256, 4)).astype(np.float32) / 16
    w2 = rng.standard_normal((32, 3, 3, 4, 4)).astype(np.float32) / 6
    w3 = rng.standard_normal((32, 1, 1, 4, 256)).astype(np.float32) / 2
    summed = sum(_np_conv(_np_conv(_np_conv(x, w1[g], 0), w2[g], 1), w3[g], 0) for g in range(32))
    grouped = bottleneck(128, 256, groups=32).children()[0][2].children()[0][2]  # residual -> body
    body = Sequential([layer for layer in grouped.layers if isinstance(layer, Conv)])
    assert [layer.groups for layer in body.layers] == [1, 32, 1]
    init_params, state = body.init(jax.random.key(0), x.shape)
    k = sorted(init_params)
    params = {
        k[0]: {"w": jnp.asarray(np.concatenate(list(w1), axis=-1))},  # (1, 1, 256, 128)
        k[1]: {"w": jnp.asarray(np.concatenate(list(w2), axis=-1))},  # (3, 3, 4, 128): group g = path g
        k[2]: {"w": jnp.asarray(np.concatenate(list(w3), axis=2))},  # (1, 1, 128, 256)
    }
    y = np.asarray(body.apply(params, state, jnp.asarray(x)[None])[0][0])
    np.testing.assert_allclose(y, summed, rtol=1e-4, atol=1e-4 * np.abs(summed).max())


# -- E. output size, dilation, receptive field (SPEC E, seeds/001) ----------------------------


@pytest.mark.parametrize("w,f,p,s", [(224, 3, 1, 1), (224, 7, 3, 2), (10, 3, 0, 2), (32, 5, 0, 1), (13, 3, 1, 2),
                                     (227, 11, 0, 4), (7, 7, 0, 1), (9, 1, 0, 3)])
def test_e_output_size_formula(w, f, p, s):
    out = summary(Conv(2, f, s, p), (w, w + 1, 1)).totals.output_shape
    assert out[0] == (w - f + 2 * p) // s + 1
    assert out[1] == (w + 1 - f + 2 * p) // s + 1


@pytest.mark.parametrize("f,d", [(3, 1), (3, 2), (3, 4), (5, 3), (2, 5)])
def test_e_dilation_effective_kernel(f, d):
    k_eff = d * (f - 1) + 1
    t = summary(Conv(2, f, 1, "VALID", dilation=d), (40, 40, 1)).totals
    assert t.output_shape[:2] == [40 - k_eff + 1] * 2
    assert t.receptive_field == [k_eff, k_eff]
    # the kernel still holds f x f weights
    assert t.learnable_params == f * f * 2 + 2


def test_e_stacked_3x3_receptive_fields():
    for n, rf in ((1, 3), (2, 5), (3, 7)):
        t = summary(Sequential([Conv(4, 3, 1, "SAME")] * n), (16, 16, 4)).totals
        assert t.receptive_field == [rf, rf]
        assert t.jump == [1, 1]


def test_e_dilated_stacks():
    assert summary(Conv(4, 3, dilation=2), (16, 16, 4)).totals.receptive_field == [5, 5]
    stack = Sequential([Conv(4, 3, dilation=d) for d in (1, 2, 4)])
    s = summary(stack, (32, 32, 4))
    assert [r.rf[0] for r in leaf_rows(s)] == [3, 7, 15]
    assert s.totals.receptive_field == [15, 15]


def test_e_parallel_branches_take_the_largest():
    branches = Parallel([Conv(2, 1), Conv(2, 3), Conv(2, 5)])
    assert summary(branches, (16, 16, 3)).totals.receptive_field == [5, 5]
    # after a stride-2 3x3 conv: rf 3, jump 2; each branch composes from there
    s = summary(Sequential([Conv(4, 3, 2), branches]), (16, 16, 3))
    convs = [r for r in leaf_rows(s) if r.kind == "conv"]
    assert [r.rf[0] for r in convs] == [3, 3 + 0 * 2, 3 + 2 * 2, 3 + 4 * 2]
    assert all(r.jump == (2, 2) for r in convs)
    assert s.totals.receptive_field == [11, 11]
    assert s.totals.output_shape == [8, 8, 6]


def test_e_global_pooling_covers_the_input():
    assert summary(GlobalAvgPool(), (9, 13, 2)).totals.receptive_field == [9, 13]
    s = summary(Sequential([Conv(4, 3, 2), Conv(4, 3, 2), GlobalAvgPool()]), (32, 32, 3))
    assert all(v >= 32 for v in row(s, "02_gap").rf)
    assert all(v < 32 for v in row(s, "01_conv").rf)


def _leaf_layers(model):
    """Leaf layers in execution order, found through ``children()`` only."""
    kids = model.children()
    return [model] if not kids else [leaf for _, _, child in kids for leaf in _leaf_layers(child)]


def _independent_rf(model, in_shape):
    """r_out = r_in + (k_eff - 1) * j_in, j_out = j_in * s, from layer hyperparameters (chained models).

    Shapes are tracked here too (square inputs), only to know the window of global pooling.
    """
    r, j, h, out = 1, 1, in_shape[0], []
    for layer in _leaf_layers(model):
        if isinstance(layer, (Conv, DepthwiseConv)):
            k, st = layer.dilation[0] * (layer.kernel[0] - 1) + 1, layer.stride[0]
            pad = layer.padding
            if pad == "SAME":
                h = -(-h // st)
            else:
                lo, hi = (0, 0) if pad == "VALID" else pad[0]
                h = (h + lo + hi - k) // st + 1
        elif isinstance(layer, (MaxPool, AvgPool)):
            k, st = layer.window[0], layer.stride[0]
            h = (h - k) // st + 1
        elif isinstance(layer, (GlobalAvgPool, Flatten)):
            k = st = h
        else:
            k = st = 1
        r, j = r + (k - 1) * j, j * st
        out.append((r, j))
    return out


@pytest.mark.parametrize("name,before_pool,rf,jump", [
    ("vgg16", "pool5", 212, 32),  # google-research/receptive_field: vgg_16 212 / 32 (features.md 2.4)
    ("mobilenet_v1", "block13/pw_relu", 315, 32),  # mobilenet_v1 315 / 32
    ("allconv6", "relu5", 63, 32),  # features.md 2.4 / 3.3: 63 before the pool, jump 32
])
def test_e_published_receptive_fields_and_every_layer(name, before_pool, rf, jump):
    model = models.get(name)
    s = summary(model, (224, 224, 3))
    r = row(s, before_pool)
    assert r.rf == (rf, rf) and r.jump == (jump, jump)
    for (ref_r, ref_j), got in zip(_independent_rf(model, (224, 224)), leaf_rows(s), strict=True):
        assert (got.rf, got.jump) == ((ref_r, ref_r), (ref_j, ref_j)), got.name


def test_e_allconv6_with_its_pool():
    # features.md 2.4: 255 including the 7x7 average pool at 224 (global there)
    assert summary(models.get("allconv6"), (224, 224, 3)).totals.receptive_field == [255, 255]
    literal = models.get("allconv6", global_pool=False)
    assert row(summary(literal, (224, 224, 3)), "pool").rf == (255, 255)


# -- F. FC layers as convolutions (SPEC F, seeds/001; cs231n) ---------------------------------

NARROW_VGG = dict(channels=((4, 4), (8, 8), (8, 8, 8), (8, 8, 8), (8, 8, 8)), hidden=16, num_classes=5, dropout=0.0)


def KEY():  # noqa: N802
    """The key of these tests' random inits."""
    return jax.random.key(0)


def _fwd(model):
    return jax.jit(lambda p, s, x: model.apply(p, s, x)[0])


def test_f_vgg_shaped_network_logits_and_score_map():
    model = models.get("vgg16", **NARROW_VGG)
    params, state = model.init(KEY(), (224, 224, 3))
    conv_model, conv_params = fc_to_conv(model, params, (224, 224, 3))
    # the head is now 7x7 VALID then 1x1 convolutions, with the same weights reshaped
    head = [r for r in leaf_rows(summary(conv_model, (224, 224, 3))) if r.kind == "conv"][-3:]
    assert [(r.in_shape, r.out_shape) for r in head] == [((7, 7, 8), (1, 1, 16)), ((1, 1, 16), (1, 1, 16)),
                                                          ((1, 1, 16), (1, 1, 5))]
    assert [r.learnable_params for r in head] == [7 * 7 * 8 * 16 + 16, 16 * 16 + 16, 16 * 5 + 5]
    assert summary(conv_model, (224, 224, 3)).totals.learnable_params == \
        summary(model, (224, 224, 3)).totals.learnable_params
    x = jax.random.normal(jax.random.key(1), (2, 224, 224, 3))
    y = np.asarray(_fwd(model)(params, state, x))
    conv = _fwd(conv_model)
    yc = np.asarray(conv(conv_params, state, x))
    assert yc.shape == (2, 1, 1, 5)
    np.testing.assert_allclose(yc.reshape(2, 5), y, rtol=1e-5, atol=1e-5 * np.abs(y).max())
    big = conv(conv_params, state, jax.random.normal(jax.random.key(2), (1, 384, 384, 3)))
    assert big.shape == (1, 6, 6, 5)  # (12 - 7) / 1 + 1 = 6
    assert summary(conv_model, (384, 384, 3)).totals.output_shape == [6, 6, 5]


def test_f_valid_network_score_map_is_the_sliding_window():
    # VALID body: 22 -> conv3 20 -> pool 10 -> conv3 8 -> pool 4 -> 4x4x6 -> FC 12 -> FC 3; stride 4
    model = Sequential([
        Conv(5, 3, 1, "VALID"), ReLU(), MaxPool(2), Conv(6, 3, 1, "VALID"), ReLU(), MaxPool(2),
        Flatten(), Dense(12), ReLU(), Dense(3),
    ])
    params, state = model.init(KEY(), (22, 22, 3))
    conv_model, conv_params = fc_to_conv(model, params, (22, 22, 3))
    big = np.random.default_rng(1).standard_normal((1, 30, 34, 3)).astype(np.float32)  # map 3 x 4
    score = np.asarray(_fwd(conv_model)(conv_params, state, big))
    assert score.shape == (1, 3, 4, 3)
    crops = np.stack([big[0, 4 * i:4 * i + 22, 4 * j:4 * j + 22] for i in range(3) for j in range(4)])
    ref = np.asarray(_fwd(model)(params, state, crops)).reshape(3, 4, 3)
    np.testing.assert_allclose(score[0], ref, rtol=1e-5, atol=1e-6)


def test_f_padded_network_is_exact_at_the_training_size_only():
    # convert.py's docstring: with padding the map equals the window evaluation only approximately
    model = Sequential([Conv(4, 3, 1, 1), ReLU(), MaxPool(2), Flatten(), Dense(3)])
    params, state = model.init(KEY(), (8, 8, 2))
    conv_model, conv_params = fc_to_conv(model, params, (8, 8, 2))
    big = jax.random.normal(jax.random.key(1), (1, 12, 12, 2))
    score = np.asarray(conv_model.apply(conv_params, state, big)[0])
    assert score.shape == (1, 3, 3, 3)
    corner = np.asarray(model.apply(params, state, big[:, :8, :8])[0])[0]
    # the crop's right/bottom edge saw zero padding, the big input saw real pixels
    assert not np.allclose(score[0, 0, 0], corner, atol=1e-6)
    x = big[:, 2:10, 2:10]
    np.testing.assert_allclose(
        np.asarray(conv_model.apply(conv_params, state, x)[0]).reshape(1, 3),
        np.asarray(model.apply(params, state, x)[0]), rtol=1e-5, atol=1e-6,
    )


def test_f_no_flatten_dense_head_is_an_error():
    gap = models.get("allconv6", width=0.125)
    params, _ = jax.eval_shape(lambda k: gap.init(k, (32, 32, 3)), jax.random.key(0))
    with pytest.raises(ShapeError, match="no Flatten -> Dense head"):
        fc_to_conv(gap, params, (32, 32, 3))
    convs = Sequential([Conv(2, 3), Identity()])
    with pytest.raises(ShapeError, match="no Flatten -> Dense head"):
        fc_to_conv(convs, convs.init(jax.random.key(0), (6, 6, 1))[0], (6, 6, 1))


# -- G. memory (SPEC G, seeds/001; cs231n "VGGNet in detail") ---------------------------------

VGG_PARAMS = 138_357_544  # SPEC G / torchvision
CS231N_ACTIVATIONS = 15_237_608  # features.md 2.3: sum of cs231n's listed per-layer counts, input included


@pytest.fixture(scope="module")
def vgg():
    return summary(models.get("vgg16"), (224, 224, 3))


def test_g_vgg16_params_and_first_fc(vgg):
    assert vgg.totals.learnable_params == VGG_PARAMS
    assert row(vgg, "fc6").learnable_params == 7 * 7 * 512 * 4096 + 4096 == 102_764_544
    assert row(vgg, "fc6").learnable_params / VGG_PARAMS > 0.70
    # cs231n's per-layer weights exclude biases: conv1_1 = 1,728, FC1 = 102,760,448
    assert row(vgg, "conv1_1").learnable_params - 64 == 1_728
    assert row(vgg, "fc6").learnable_params - 4096 == 102_760_448


def test_g_early_layers_hold_most_activations(vgg):
    early = sum(r.activations for r in leaf_rows(vgg) if r.name.startswith(("conv1_", "pool1", "conv2_", "pool2")))
    assert early / vgg.totals.activations > 0.5
    # cs231n's table sums to 15,237,608 (not the printed "24M", cs231n issue #88)
    assert vgg.totals.input_elements == 224 * 224 * 3 == 150_528
    assert vgg.totals.activations + vgg.totals.input_elements == CS231N_ACTIVATIONS


@pytest.mark.parametrize("optimizer,slots", [("sgd", 0), ("momentum", 1), ("adam", 2)])
@pytest.mark.parametrize("batch", [1, 8])
def test_g_training_memory_formula(optimizer, slots, batch):
    assert OPTIMIZER_SLOTS[optimizer] == slots
    t = summary(models.get("vgg16"), (224, 224, 3), batch=batch, optimizer=optimizer).totals
    expected = VGG_PARAMS * (2 + slots) * 4 + batch * CS231N_ACTIVATIONS * 4
    assert t.train_memory_bytes == expected
    # cs231n: params x3 (params + grads + momentum) ~ 1,583 MiB; Adam x4 ~ 2,111 MiB
    if optimizer == "momentum":
        assert round(VGG_PARAMS * 3 * 4 / 2**20) == 1583
    if optimizer == "adam":
        assert round(VGG_PARAMS * 4 * 4 / 2**20) == 2111


def test_g_training_memory_counts_bn_state_once():
    # with BatchNorm the running statistics are saved but get no gradient or optimizer slot
    t = summary(models.get("vgg16_bn"), (224, 224, 3), optimizer="adam").totals
    bn_channels = 2 * 64 + 2 * 128 + 3 * 256 + 6 * 512
    assert t.state_params == 2 * bn_channels
    assert t.learnable_params == VGG_PARAMS + 2 * bn_channels
    n_act = t.input_elements + t.activations
    assert t.train_memory_bytes == t.learnable_params * 4 * 4 + t.state_params * 4 + n_act * 4
    # each BN output is one more kept tensor the size of its conv's output
    conv_outputs = sum(n * (224 // 2**b) ** 2 * c for b, (n, c) in enumerate(((2, 64), (2, 128), (3, 256),
                                                                               (3, 512), (3, 512))))
    assert n_act == CS231N_ACTIVATIONS + conv_outputs


def test_g_activation_bytes_scale_with_batch_and_dtype():
    m = models.get("mnist_net")
    one = summary(m, (28, 28, 1)).totals
    eight = summary(m, (28, 28, 1), batch=8, activation_dtype="bfloat16").totals
    assert eight.forward_activation_bytes == 8 * one.activations * 2
    assert math.isclose(one.flops, 2 * one.macs)
