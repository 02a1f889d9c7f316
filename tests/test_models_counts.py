"""Registry models against published parameter and multiply-add counts.

Sources (see /work/shared/research/features.md): MobileNet v1 paper (arXiv:1704.04861)
Tables 2, 3, 6, 7 and the TF-slim ``mobilenet_v1.py`` per-layer docstring (2.1);
torchvision ``*_Weights`` metadata (2.2); the allconv width/depth families recomputed
from the author's prototxts (3.2, 3.3).

Parameter convention of every figure here unless a test says otherwise: learnable =
conv/dense weights and biases + BatchNorm scale/offset (what PyTorch's
``sum(p.numel())`` counts); state = BatchNorm running mean/var, reported separately.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcnn import Conv, DepthwiseConv, Sequential, models
from jaxcnn.core import count_params
from jaxcnn.summary import summary

IN224 = (224, 224, 3)


def totals(name, shape=IN224, **kw):
    return summary(models.get(name, **kw), shape).totals


def leaves(s):
    return [r for r in s.rows if r.is_leaf]


# -- MobileNet v1 -------------------------------------------------------------------------------

# Table 6 (224, 1000 classes): alpha -> (million mult-adds, million params) as printed, and the
# exact counts (features.md 2.1; params = weights + FC bias + BN scale/offset).
TABLE6 = {
    1.0: (569, 4.2, 568_740_352, 4_231_976),
    0.75: (325, 2.6, 325_400_448, 2_585_560),
    0.5: (149, 1.3, 149_497_088, 1_331_592),
    0.25: (41, 0.5, 41_030_272, 470_072),
}


@pytest.mark.parametrize("alpha", list(TABLE6))
def test_mobilenet_table6_width_multiplier(alpha):
    m_macs, m_params, macs, params = TABLE6[alpha]
    t = totals("mobilenet_v1", width=alpha)
    assert printed(t.macs / 1e6, m_macs)
    assert round(t.learnable_params / 1e6, 1) == m_params
    assert (t.macs, t.learnable_params) == (macs, params)
    assert t.output_shape == [1000]


def test_mobilenet_width_suffix_is_the_width_option():
    assert totals("mobilenet_v1/0.75") == totals("mobilenet_v1", width=0.75)


# Table 7 (alpha = 1): resolution -> million mult-adds as printed, exact count
TABLE7 = {224: (569, 568_740_352), 192: (418, 418_121_728), 160: (290, 290_675_200), 128: (186, 186_400_768)}


def printed(value, shown):
    """``value`` (millions) agrees with the paper's whole-million figure ``shown``.

    The paper rounds some cells (568.74 -> 569) and truncates others (290.68 -> 290,
    Table 9's 76.52 -> 76), so both readings of the printed digit are accepted.
    """
    return shown in (round(value), int(value))


@pytest.mark.parametrize("size", list(TABLE7))
def test_mobilenet_table7_resolution_multiplier(size):
    m_macs, macs = TABLE7[size]
    t = totals("mobilenet_v1", (size, size, 3))
    assert printed(t.macs / 1e6, m_macs) and t.macs == macs
    assert round(t.learnable_params / 1e6, 1) == 4.2  # resolution does not change parameters


def test_mobilenet_other_cells_and_table9():
    # the paper's Table 9 prints 0.50 MobileNet-160 as 76M mult-adds (76.52, truncated) and 1.32M
    # params; the count here is 1,331,592 (1.33M, the same as Table 6's 0.5-224 row, which the
    # paper prints as 1.3), so only the mult-adds are checked against Table 9
    t = totals("mobilenet_v1", (160, 160, 3), width=0.5)
    assert printed(t.macs / 1e6, 76) and t.learnable_params == 1_331_592
    # features.md 2.1 computed grid of the other alpha x resolution cells
    assert round(totals("mobilenet_v1", (192, 192, 3), width=0.75).macs / 1e6, 2) == 239.27
    assert round(totals("mobilenet_v1", (128, 128, 3), width=0.25).macs / 1e6, 2) == 13.57


def test_mobilenet_tf_slim_per_layer_vector():
    s = summary(models.get("mobilenet_v1"), IN224)
    rows = {r.name: r for r in leaves(s)}
    assert (rows["conv0"].learnable_params, rows["conv0"].macs) == (864, 10_838_016)  # Conv2d_0
    assert (rows["block13/pw"].learnable_params, rows["block13/pw"].macs) == (1_048_576, 51_380_224)
    body = [r for r in leaves(s) if r.kind in ("conv", "dwconv")]
    assert len(body) == 27  # Conv2d_0 + 13 x (depthwise, pointwise)
    assert sum(r.learnable_params for r in body) == 3_185_088
    assert sum(r.macs for r in body) == 567_716_352
    assert rows["fc"].macs == 1_024_000  # "the FC adds 1,024,000 MACs"
    s = summary(models.get("mobilenet_v1", width=0.75), (128, 128, 3))
    body = [r for r in leaves(s) if r.kind in ("conv", "dwconv")]
    assert (sum(r.learnable_params for r in body), sum(r.macs for r in body)) == (1_800_144, 106_002_432)


def test_mobilenet_bn_conventions():
    # features.md 2.1 "How BN is counted": 10,944 BN channels at alpha 1
    s = summary(models.get("mobilenet_v1"), IN224)
    bn = [r for r in leaves(s) if r.kind == "bn"]
    assert sum(r.out_shape[-1] for r in bn) == 10_944
    assert sum(r.learnable_params for r in bn) == 2 * 10_944  # scale + offset: learnable
    assert s.totals.state_params == 21_888  # running mean + var: state
    no_bn = s.totals.learnable_params - 2 * 10_944
    assert no_bn == 4_210_088  # conv weights + FC 1024x1000 + 1000
    assert s.totals.learnable_params + s.totals.state_params == 4_253_864  # Keras "Total params"


def test_mobilenet_table2_mult_add_shares():
    # paper Table 2: Conv 1x1 94.86%, Conv DW 3.06%, Conv 3x3 1.19% (printed; a digit swap for
    # 1.91%: 10,838,016 / 568,740,352, the only value that makes the column sum to 100%), FC 0.18%
    s = summary(models.get("mobilenet_v1"), IN224)
    total = s.totals.macs
    share = {"pw": 0, "dw": 0, "conv3x3": 0, "fc": 0}
    for r in leaves(s):
        if r.kind == "dwconv":
            share["dw"] += r.macs
        elif r.kind == "conv":
            share["pw" if r.name.endswith("/pw") else "conv3x3"] += r.macs
        elif r.kind == "dense":
            share["fc"] += r.macs
    pct = {k: round(100 * v / total, 2) for k, v in share.items()}
    assert pct == {"pw": 94.86, "dw": 3.06, "conv3x3": 1.91, "fc": 0.18}


@pytest.mark.parametrize("c,size,m_macs,m_params", [
    (512, 14, 52.3, 0.27),  # depthwise separable
    (384, 14, 29.6, 0.15),  # alpha = 0.75
    (384, 10, 15.1, 0.15),  # rho = 0.714 (14 -> 10)
])
def test_mobilenet_table3_separable_layer(c, size, m_macs, m_params):
    sep = Sequential([DepthwiseConv(3), Conv(c, 1, 1, "VALID", use_bias=False)])
    t = summary(sep, (size, size, c)).totals
    assert round(t.macs / 1e6, 1) == m_macs
    assert round(t.learnable_params / 1e6, 2) == m_params


def test_mobilenet_table3_full_conv():
    t = summary(Conv(512, 3, use_bias=False), (14, 14, 512)).totals
    assert round(t.macs / 1e6) == 462 and round(t.learnable_params / 1e6, 2) == 2.36


def test_mobilenet_table5_shallow():
    # paper Table 5: Shallow MobileNet 307M mult-adds, 2.9M params (the 0.75 MobileNet is 325 / 2.6)
    # (alpha 1 without the five 14x14x512 separable blocks)
    t = totals("mobilenet_v1", shallow=True)
    assert round(t.macs / 1e6) == 307 and round(t.learnable_params / 1e6, 1) == 2.9
    five_blocks = 5 * (14 * 14 * 512 * 9 + 14 * 14 * 512 * 512)
    assert t.macs == 568_740_352 - five_blocks


# -- torchvision -------------------------------------------------------------------------------

# features.md 2.2: torchvision *_Weights meta (num_params, GFLOPS printed = GMACs)
TORCHVISION = {
    "vgg16": (138_357_544, 15.47, 2),
    "resnet50": (25_557_032, 4.09, 2),
    "resnext50_32x4d": (25_028_904, 4.23, 2),
    "densenet121": (7_978_856, 2.834, 3),
}


@pytest.mark.parametrize("name", list(TORCHVISION))
def test_torchvision_counts(name):
    params, gmacs, digits = TORCHVISION[name]
    t = totals(name)
    assert t.learnable_params == params
    assert round(t.macs / 1e9, digits) == gmacs
    assert t.output_shape == [1000]


def test_keras_counts_add_running_statistics():
    # features.md 2.2: Keras counts BN with 4n; DenseNet121 = 8,062,504
    t = totals("densenet121")
    assert t.learnable_params + t.state_params == 8_062_504


# -- allconv families ----------------------------------------------------------------------------

# features.md 3.2: channels, params (20 classes, with bias), MACs at 224
ALLCONV6 = {
    "allconv6": ((64, 64, 128, 128, 256), 560_468, 238_441_472),
    "allconv6_1": ((16, 16, 32, 32, 64), 36_452, 18_967_808),
    "allconv6_2": ((32, 32, 32, 32, 64), 48_436, 49_675_520),
    "allconv6_3": ((16, 16, 64, 64, 64), 87_204, 28_902_656),
    "allconv6_4": ((16, 16, 32, 32, 128), 56_228, 19_872_256),
    "allconv6_5": ((32, 32, 64, 64, 128), 142_004, 65_030_656),
    "allconv6_6": ((64, 64, 64, 64, 128), 189_012, 177_023_488),
    "allconv6_7": ((32, 32, 128, 128, 128), 344_884, 104_770_048),
    "allconv6_8": ((32, 32, 64, 64, 256), 218_420, 68_645_888),
}


@pytest.mark.parametrize("name", list(ALLCONV6))
def test_allconv6_width_family(name):
    channels, params, macs = ALLCONV6[name]
    s = summary(models.get(name), IN224)
    convs = [r for r in leaves(s) if r.kind == "conv"]
    assert tuple(r.out_shape[-1] for r in convs) == channels
    assert [r.out_shape[0] for r in convs] == [112, 56, 28, 14, 7]
    assert (s.totals.learnable_params, s.totals.macs) == (params, macs)
    # the _bn variant drops the conv biases and adds BN scale/offset (learnable) + mean/var (state)
    bn = summary(models.get(name + "_bn"), IN224).totals
    assert bn.learnable_params == params - sum(channels) + 2 * sum(channels)
    assert bn.state_params == 2 * sum(channels)
    assert bn.macs == macs


def test_allconv6_baseline_per_layer():
    # features.md 3.2: conv1 1,792; conv2 36,928; conv3 73,856; conv4 147,584; conv5 295,168; fc 5,140
    s = summary(models.get("allconv6"), IN224)
    assert [r.learnable_params for r in leaves(s) if r.learnable_params] == [
        1_792, 36_928, 73_856, 147_584, 295_168, 5_140]


# features.md 3.3: params, MACs at 224, receptive field before the pool
DEPTH = {
    "allconv5": (265_812, 65_632_768, 61),
    "allconv6": (560_468, 238_441_472, 63),
    "allconv7_1": (1_150_548, 982_651_904, 65),
    "allconv7_2": (1_150_548, 267_342_848, 127),
    "allconv8_1": (1_740_628, 3_699_381_248, 67),
    "allconv8_2": (1_740_628, 1_011_553_280, 129),
    "allconv8_3": (1_740_628, 296_244_224, 191),
}


@pytest.mark.parametrize("name", list(DEPTH))
def test_allconv_depth_family(name):
    params, macs, rf = DEPTH[name]
    s = summary(models.get(name), IN224)
    assert (s.totals.learnable_params, s.totals.macs) == (params, macs)
    (pool,) = [r for r in s.rows if r.name == "pool"]
    last_relu = s.rows[s.rows.index(pool) - 1]
    assert last_relu.kind == "relu" and last_relu.rf == (rf, rf)
    assert last_relu.out_shape[:2] == (7, 7)


def test_allconv6_crelu_halves_conv1_2_filters():
    s = summary(models.get("allconv6_crelu"), IN224)
    convs = [r for r in leaves(s) if r.kind == "conv"]
    assert [r.out_shape[-1] for r in convs] == [32, 32, 128, 128, 256]
    crelus = [r for r in leaves(s) if r.kind == "crelu"]
    assert [r.out_shape[-1] for r in crelus] == [64, 64]  # the next layer sees the full width
    # conv1 3x3x3x32+32, conv2 3x3x64x32+32, conv3 3x3x64x128+128, then as allconv6
    assert s.totals.learnable_params == 896 + 18_464 + 73_856 + 147_584 + 295_168 + 5_140


# -- every registry entry -------------------------------------------------------------------------

SLOW = {"vgg16", "vgg16_bn", "resnet50", "resnext50_32x4d", "densenet121", "googlenet", "inception_small"}


def small_setup(name):
    """(model, input shape) at width 0.25 and the smallest input the network takes."""
    e = models.entry(name)
    size = 64 if name == "googlenet" else 32  # googlenet's 5 stride-2 layers with SAME padding
    return models.get(name + "/0.25", num_classes=7, **e.small), (size, size, 3)


def test_registry_names_are_unique_and_complete():
    names = models.names()
    assert len(names) == len(set(names))
    for expected in ["mobilenet_v1", "vgg16", "resnet50", "resnext50_32x4d", "densenet121", "googlenet",
                     "spec_a_4conv", "spec_a_3conv", "mnist_net", *ALLCONV6, *DEPTH]:
        assert expected in names


@pytest.mark.parametrize("name", models.names())
def test_registry_summary_at_default_input_allocates_nothing(name, monkeypatch):
    e = models.entry(name)
    before = len(jax.live_arrays())

    def refuse(*a, **k):
        raise AssertionError("summary must not create arrays")

    monkeypatch.setattr(jnp, "zeros", refuse)
    monkeypatch.setattr(jax.random, "normal", refuse)
    monkeypatch.setattr(jax.random, "key", refuse)
    s = summary(models.get(name), e.input_shape)
    assert len(jax.live_arrays()) == before
    assert s.totals.output_shape == [e.num_classes]
    assert s.totals.learnable_params > 0 and s.totals.macs > 0
    # container rows hold the sums of their leaves
    assert s.rows[0].learnable_params == s.totals.learnable_params
    assert sum(r.macs for r in leaves(s)) == s.totals.macs


@pytest.mark.parametrize("name", models.names())
def test_registry_traces_at_small_width(name):
    # every entry: init and apply trace to the right shapes (jax.eval_shape: no compilation)
    model, shape = small_setup(name)
    params, state = jax.eval_shape(lambda k: model.init(k, shape), jax.random.key(0))
    out = jax.eval_shape(lambda p, s, x: model.apply(p, s, x)[0], params, state,
                         jax.ShapeDtypeStruct((2, *shape), jnp.float32))
    assert out.shape == (2, 7)
    t = summary(model, shape).totals
    assert (count_params(params), count_params(state)) == (t.learnable_params, t.state_params)


def _run(name):
    model, shape = small_setup(name)
    params, state = model.init(jax.random.key(0), shape)  # the default key: draws shared across shapes
    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, *shape)), jnp.float32)
    y, new_state = jax.jit(lambda p, s, xb: model.apply(p, s, xb))(params, state, x)
    y = np.asarray(y)
    assert y.shape == (2, 7) and np.isfinite(y).all()
    t = summary(model, shape).totals
    assert (count_params(params), count_params(state)) == (t.learnable_params, t.state_params)
    assert jax.tree_util.tree_structure(new_state) == jax.tree_util.tree_structure(state)


# One real init + apply per builder in the default run; every other entry runs under the slow mark.
FAST_RUN = ["mnist_net", "spec_a_4conv", "allconv6_1_bn", "allconv5", "allconv6_crelu", "mobilenet_v1"]


@pytest.mark.parametrize("name", FAST_RUN)
def test_registry_init_apply_runs(name):
    _run(name)


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in models.names() if n not in FAST_RUN])
def test_registry_init_apply_runs_every_entry(name):
    _run(name)
