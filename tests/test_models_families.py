"""The canonical scaling families (issue 24): published counts, depth rules, scale_width, cross-checks.

Published integers (research/scaling-families.md): CIFAR ResNets from akamaster/pytorch_resnet_cifar10
(option A) and osmr/imgclsmob's resnet_cifar tests (option B); WRN from szagoruyko/wide-residual-networks
and imgclsmob's wrn_cifar tests; PreAct ResNet-18 from kuangliu/pytorch-cifar; EfficientNet from
torchvision's weights metadata (``num_params``) and the paper's 0.39 G multiply-adds. Independently here:
small PyTorch re-implementations of the three CIFAR families (counts over several depths and widths, and
one forward pass each with copied weights), and torchvision's EfficientNet B0-B7 built on the meta device.
Models at 224+ are only ever summarised (spec), never initialised. The PyTorch checks are in
test_models_families_torch.py.
"""

from __future__ import annotations

import math

import pytest

from jaxcnn import (
    BatchNorm,
    Conv,
    DepthwiseConv,
    DropPath,
    PreActResidual,
    Projection,
    SqueezeExcite,
    models,
    scale_width,
    walk,
)
from jaxcnn.models.cifar_resnets import resnet18k, resnet_cifar, wrn
from jaxcnn.models.efficientnet import VARIANTS, compound_coefficients, efficientnet
from jaxcnn.summary import summary

CIFAR = (32, 32, 3)


def params_of(model, shape=CIFAR):
    return summary(model, shape).totals.learnable_params


def totals(name, **options):
    return summary(models.get(name, **options), models.entry(name).input_shape).totals


# -- published counts ---------------------------------------------------------------------------------------

PUBLISHED = [
    ("resnet_cifar", {"depth": 20}, 269_722),  # ResNet-20, option A
    ("resnet_cifar", {"depth": 56}, 853_018),  # ResNet-56, option A
    ("resnet_cifar", {"depth": 20, "shortcut": "B"}, 272_474),
    ("resnet_cifar", {"depth": 56, "shortcut": "B"}, 855_770),
    ("wrn/10", {"depth": 28}, 36_479_194),  # WRN-28-10
    ("wrn/8", {"depth": 16}, 10_961_370),  # WRN-16-8
    ("wrn/10", {"depth": 16}, 17_116_634),  # WRN-16-10
    ("resnet18k", {"k": 64}, 11_171_146),
    ("efficientnet_b0", {}, 5_288_548),
]


@pytest.mark.parametrize("name,options,count", PUBLISHED, ids=[f"{n}-{o}" for n, o, _ in PUBLISHED])
def test_published_parameter_counts(name, options, count):
    t = summary(models.get(name, **options), models.entry(name).input_shape).totals
    assert t.learnable_params == count
    assert t.output_shape == [models.entry(name).num_classes]


def test_efficientnet_b0_multiply_adds_and_official_variants():
    t = totals("efficientnet_b0")
    assert round(t.macs / 1e9, 2) == 0.39  # the paper's "0.39B FLOPS" are multiply-adds
    assert t.macs == 385_814_752  # exact: conv, depthwise, SE 1x1 and dense MACs at 224
    # torchvision's weights metadata (num_params), at the official resolutions
    official = {"b1": 7_794_184, "b2": 9_109_994, "b3": 12_233_232, "b4": 19_341_616, "b5": 30_389_784,
                "b6": 43_040_704, "b7": 66_347_960}
    for v, count in official.items():
        e = models.entry(f"efficientnet_{v}")
        assert e.input_shape == (VARIANTS[v][2],) * 2 + (3,) and e.num_classes == 1000
        assert totals(f"efficientnet_{v}").learnable_params == count, v
    assert [models.entry(f"efficientnet_b{i}").input_shape[0] for i in range(8)] == [224, 240, 260, 300, 380, 456,
                                                                                      528, 600]


def test_families_are_registered_with_their_descriptions():
    for name in ("resnet_cifar", "wrn", "resnet18k", *(f"efficientnet_b{i}" for i in range(8))):
        assert name in models.names()
    e = models.entry("resnet_cifar")
    assert (e.input_shape, e.num_classes) == (CIFAR, 10)
    assert e.description.startswith("CIFAR ResNet (He et al. 2015")
    assert models.entry("efficientnet_b3").description.startswith("EfficientNet-B3 (Tan & Le 2019): width 1.2")
    assert set(models.builder_options("efficientnet_b5")) == {"depth", "dropout", "drop_path", "compound_phi"}
    assert set(models.builder_options("resnet_cifar")) == {"depth", "shortcut", "widths"}
    assert set(models.builder_options("wrn")) == {"depth", "dropout"}
    assert set(models.builder_options("resnet18k")) == {"k", "depth"}
    assert models.parse_option("resnet_cifar", "widths", "(8, 16, 32)") == (8, 16, 32)
    assert models.parse_option("resnet_cifar", "shortcut", "B") == "B"
    assert models.parse_option("efficientnet_b0", "compound_phi", "none") is None
    assert models.parse_option("efficientnet_b0", "depth", "1.4") == 1.4
    assert models.parse_option("resnet18k", "k", "12") == 12


# -- depth rules --------------------------------------------------------------------------------------------

BAD_DEPTHS = [
    ("resnet_cifar", 21, "resnet_cifar depth=21: depth must be 6n+2"),
    ("resnet_cifar", 2, "resnet_cifar depth=2: depth must be 6n+2"),
    ("resnet_cifar", 20.0, "resnet_cifar's option depth must be an integer"),  # typed before the rule
    ("wrn", 27, "wrn depth=27: depth must be 6n+4"),
    ("wrn", 4, "wrn depth=4: depth must be 6n+4"),
    ("resnet18k", 20, "resnet18k depth=20: depth must be 8n+2"),
    ("efficientnet_b0", 0.0, "efficientnet_b0 depth=0.0: depth is a multiplier of the block counts"),
    ("efficientnet_b4", -1.0, "efficientnet_b4 depth=-1.0: depth is a multiplier"),
]


@pytest.mark.parametrize("name,depth,message", BAD_DEPTHS)
def test_invalid_depths_are_refused_in_one_line(name, depth, message):
    with pytest.raises(ValueError) as info:
        models.get(name, depth=depth)
    assert str(info.value).startswith(message)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("depth", [8, 14, 20, 32, 44, 110])
def test_resnet_cifar_depths_have_n_blocks_per_stage(depth):
    model = resnet_cifar(depth=depth)
    n = (depth - 2) // 6
    assert [len(model.layers[i].layers) for i in (1, 2, 3)] == [n, n, n]
    convs = [x for x in walk(model, CIFAR) if isinstance(x.layer, Conv)]
    assert len(convs) + 1 == depth  # 6n + 1 convolutions and the dense layer (option A: no shortcut convs)


def test_other_options_are_checked():
    with pytest.raises(ValueError, match="shortcut must be 'A'"):
        models.get("resnet_cifar", shortcut="C")
    with pytest.raises(ValueError, match="dropout is the drop probability"):
        models.get("wrn", dropout=1.0)
    with pytest.raises(ValueError, match="k must be a positive int"):
        models.get("resnet18k", k=0)


# -- structure the papers specify ------------------------------------------------------------------------


def test_wrn_projection_only_where_widths_differ_and_it_takes_the_preactivated_input():
    def projections(model):
        return [n for n in walk(model, CIFAR) if isinstance(n.layer, Projection) and n.layer.projects(n.in_shape)]

    assert len(projections(wrn(depth=40, width=1))) == 2  # WRN-40-1: group 1 is 16 -> 16
    assert len(projections(wrn(depth=16, width=8))) == 3
    assert len(projections(scale_width(wrn(depth=40, width=1), 2))) == 3  # scaled, group 1 is 16 -> 32
    for n in projections(wrn(depth=16, width=8)):
        assert n.layer.param_shapes(n.in_shape) == {"w": (1, 1, n.in_shape[-1], n.layer.features)}  # no bias
    block = wrn(depth=16, width=8).layers[1].layers[0]  # group1.block1: 16 -> 128
    assert isinstance(block, PreActResidual) and list(block.preact.names) == ["bn1", "relu1"]
    drop = wrn(depth=16, width=8, dropout=0.3).layers[1].layers[1]
    assert list(drop.body.names) == ["conv1", "bn2", "relu2", "dropout", "conv2"]
    assert wrn(depth=28, width=10).layers[0] == Conv(16, 3, 1, 1, use_bias=False, keep_width=True)


def test_efficientnet_blocks_follow_the_reference_builder():
    model = efficientnet("b0")
    nodes = list(walk(model, (224, 224, 3)))
    bns = [n.layer for n in nodes if isinstance(n.layer, BatchNorm)]
    assert bns and all(b.eps == 1e-3 and b.ema_decay == 0.99 for b in bns)
    # squeeze width from the block's INPUT channels // 4 (not the expanded ones)
    ses = [n for n in nodes if isinstance(n.layer, SqueezeExcite)]
    assert len(ses) == 16
    assert [s.layer.squeeze for s in ses[:4]] == [8, 4, 6, 6]  # inputs 32, 16, 24, 24
    assert [s.in_shape[-1] for s in ses[:4]] == [32, 96, 144, 144]  # the expanded tensors they gate
    # stochastic depth rises linearly with the block index (0.2 * i / 16), only on residual blocks
    rates = [n.layer.rate for n in nodes if isinstance(n.layer, DropPath)]
    assert rates == pytest.approx([0.2 * i / 16 for i in [2, 4, 6, 7, 9, 10, 12, 13, 14]])  # residual blocks
    assert all(a < b for a, b in zip(rates, rates[1:], strict=False)) and max(rates) < 0.2
    dws = [n.layer for n in nodes if isinstance(n.layer, DepthwiseConv)]
    assert [d.kernel[0] for d in dws] == [3, 3, 3, 5, 5, 3, 3, 3, 5, 5, 5, 5, 5, 5, 5, 3]


def _stage_blocks(model):
    return [len(model.layers[i].layers) for i in range(1, 8)]


def test_efficientnet_depth_multiplier_is_ceil_of_d_times_repeats():
    base = (1, 2, 2, 3, 3, 4, 1)
    for d in (0.5, 1.0, 1.5, 3.1):
        assert _stage_blocks(efficientnet("b0", depth=d)) == [math.ceil(d * n) for n in base]
    assert _stage_blocks(efficientnet("b7")) == [math.ceil(3.1 * n) for n in base]
    # depth multiplies the variant's coefficient: B0 with depth 1.1 has B1's blocks (and B1's widths: 1.0)
    assert efficientnet("b0", depth=1.1) == efficientnet("b1", dropout=0.2)


def test_efficientnet_compound_phi_is_the_papers_rule_not_the_official_table():
    w, d, r = compound_coefficients(1)
    assert (round(w, 4), round(d, 4), r) == (1.1, 1.2, 258)
    assert (w, d) != VARIANTS["b1"][:2]  # B1 is width 1.0, depth 1.1 at 240
    w3, d3, r3 = compound_coefficients(3)
    assert (round(w3, 3), round(d3, 3), r3) == (1.331, 1.728, 341)  # B3 is 1.2, 1.4 at 300
    # phi = 1 gives width 1.1, depth 1.2: B2's coefficients, so B2's parameters (dropout differs, no params)
    phi1 = params_of(models.get("efficientnet_b0", compound_phi=1.0), (64, 64, 3))
    assert phi1 == params_of(models.get("efficientnet_b2"), (64, 64, 3)) == 9_109_994


# -- width ---------------------------------------------------------------------------------------------------


def test_scale_width_equals_building_with_the_scaled_widths():
    assert scale_width(resnet_cifar(), 0.5) == resnet_cifar(widths=(8, 16, 32))
    assert models.get("resnet_cifar/2", shortcut="B") == resnet_cifar(widths=(32, 64, 128), shortcut="B")
    assert scale_width(resnet_cifar(depth=8), 0.75) == resnet_cifar(depth=8, widths=(12, 24, 48))
    assert scale_width(wrn(width=2, depth=16), 1.5) == wrn(width=3, depth=16)
    assert scale_width(wrn(width=4, depth=10), 0.5) == wrn(width=2, depth=10)
    assert scale_width(wrn(width=1, depth=16), 2) == wrn(width=2, depth=16)  # k = 1 too: Projection decides
    assert params_of(scale_width(wrn(width=1, depth=28), 10)) == 36_479_194  # WRN-28-1 widened is WRN-28-10
    assert models.get("resnet18k/0.5") == resnet18k(k=32)
    assert scale_width(resnet18k(k=12), 2) == resnet18k(k=24)
    # EfficientNet's own width rounds to multiples of 8; an integer multiplier needs no rounding
    assert scale_width(efficientnet("b0"), 2) == efficientnet("b0", width=2.0)
    # the width suffix multiplies the variant's width coefficient: B0/1.1 has B2's stem, stage and head widths
    def channels(model):
        return sorted({n.layer.features for n in walk(model, (224, 224, 3))
                       if isinstance(n.layer, Conv) and n.key_path[-1] in ("project", "conv")})

    assert channels(models.get("efficientnet_b0/1.1")) == channels(efficientnet("b2"))


@pytest.mark.parametrize("name,options", [("resnet_cifar", {"shortcut": "A"}), ("resnet_cifar", {"shortcut": "B"}),
                                          ("wrn", {"width": 2, "depth": 10}), ("wrn", {"width": 1, "depth": 16}),
                                          ("resnet18k", {"k": 8, "depth": 10}),
                                          ("efficientnet_b0", {})])
@pytest.mark.parametrize("m", [0.3, 0.75, 1.7])
def test_scale_width_keeps_every_family_consistent(name, options, m):
    model = models.get(name, **options)
    scaled = scale_width(model, m)
    shape = models.entry(name).input_shape if name.startswith("efficientnet") else CIFAR
    spec = scaled.spec(shape)  # a ShapeError here would mean a shortcut or SE disagrees with its block
    assert spec.out_shape == model.spec(shape).out_shape
    before, after = params_of(model, shape), params_of(scaled, shape)
    assert (after > before) == (m > 1)
    if name == "resnet_cifar" and options["shortcut"] == "A":
        pads = [n.layer for n in walk(scaled, shape) if n.layer.kind == "subsample_pad"]
        assert [p.features for p in pads] == [round(32 * m), round(64 * m)]

