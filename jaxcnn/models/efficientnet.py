"""EfficientNet B0-B7 (Tan & Le 2019, arXiv:1905.11946) with the reference implementation's coefficients.

Layout and rounding follow tensorflow/tpu ``efficientnet_builder.py`` (and torchvision, whose counts
are the same): channels ``round_channels(c, w, divisor=8)`` (``make_divisible``: the nearest multiple
of 8, at least 8, never more than 10 % below ``c * w``), repeats ``ceil(d * L)``, head
``make_divisible(1280 * w)``. The compound rule d = 1.2^phi, w = 1.1^phi, r = 1.15^phi of the paper is
offered as ``compound_phi``: its values are NOT the official table's (B1-B7 were hand-rounded).
"""

from __future__ import annotations

import math
from functools import partial

from jaxcnn.combinators import Residual, Sequential
from jaxcnn.core import Layer
from jaxcnn.layers import BatchNorm, Conv, Dense, DepthwiseConv, Dropout, DropPath, GlobalAvgPool, SiLU, SqueezeExcite
from jaxcnn.models.registry import register_model
from jaxcnn.transforms import check_width, round_channels

# B0 stages: (expansion, kernel, first stride, output channels, repeats); stem conv3x3 32 s2, head 1x1 1280
STAGES: tuple[tuple[int, int, int, int, int], ...] = (
    (1, 3, 1, 16, 1),
    (6, 3, 2, 24, 2),
    (6, 5, 2, 40, 2),
    (6, 3, 2, 80, 3),
    (6, 5, 1, 112, 3),
    (6, 5, 2, 192, 4),
    (6, 3, 1, 320, 1),
)

# the official (width, depth, resolution, dropout) of tensorflow/tpu efficientnet_builder.py
VARIANTS: dict[str, tuple[float, float, int, float]] = {
    "b0": (1.0, 1.0, 224, 0.2),
    "b1": (1.0, 1.1, 240, 0.2),
    "b2": (1.1, 1.2, 260, 0.3),
    "b3": (1.2, 1.4, 300, 0.3),
    "b4": (1.4, 1.8, 380, 0.4),
    "b5": (1.6, 2.2, 456, 0.4),
    "b6": (1.8, 2.6, 528, 0.5),
    "b7": (2.0, 3.1, 600, 0.5),
}

ALPHA, BETA, GAMMA = 1.2, 1.1, 1.15  # depth, width, resolution bases of the compound rule


def compound_coefficients(phi: float) -> tuple[float, float, int]:
    """(width, depth, resolution) of the paper's compound rule: 1.1^phi, 1.2^phi, round(224 * 1.15^phi).

    These differ from the official B1-B7 table (e.g. phi = 1 gives width 1.1, depth 1.2, 258 px where
    B1 is 1.0, 1.1, 240 px): the released models' coefficients were rounded by hand.
    """
    return BETA**phi, ALPHA**phi, round(224 * GAMMA**phi)


def mbconv(in_ch: int, out: int, expand: int, kernel: int, stride: int, drop_path: float) -> Layer:
    """MBConv: [1x1 expand-BN-SiLU], depthwise kxk-BN-SiLU, SE (squeeze = in // 4), 1x1 project-BN, residual."""
    bn = partial(BatchNorm, ema_decay=0.99, eps=1e-3)
    expanded = round_channels(in_ch, expand, divisor=8)
    layers: dict[str, Layer] = {}
    if expanded != in_ch:
        layers.update(expand=Conv(expanded, 1, 1, "VALID", use_bias=False), expand_bn=bn(), expand_act=SiLU())
    layers.update(
        dw=DepthwiseConv(kernel, stride, (kernel - 1) // 2), dw_bn=bn(), dw_act=SiLU(),
        se=SqueezeExcite(max(1, in_ch // 4), "silu"),
        project=Conv(out, 1, 1, "VALID", use_bias=False), project_bn=bn(),
    )
    if stride == 1 and in_ch == out:
        if drop_path:
            layers["drop_path"] = DropPath(drop_path)
        return Residual(Sequential(layers))
    return Sequential(layers)


def efficientnet(
    variant: str,
    *,
    num_classes: int = 1000,
    width: float = 1.0,
    depth: float = 1.0,
    dropout: float | None = None,
    drop_path: float = 0.2,
    compound_phi: float | None = None,
) -> Layer:
    """EfficientNet (Tan & Le 2019, arXiv:1905.11946): MBConv + squeeze-excitation, SiLU, compound scaling.

    ``variant`` picks the official (width, depth, resolution, dropout) coefficients (:data:`VARIANTS`);
    ``width`` and ``depth`` multiply them (``efficientnet_b0/1.1`` has B2's widths; ``depth=1.2`` gives
    ``ceil(1.2 * L)`` blocks per stage, the stated rule for a depth multiplier, which must be > 0).
    ``jaxcnn.transforms.scale_width`` also works on the built model, but rounds every channel count by its own
    rule (not to multiples of 8, and expansions and squeezes independently): it equals building with
    ``width=m`` for integer m only.
    ``compound_phi`` replaces the variant's width and depth by the paper's compound rule 1.1^phi and 1.2^phi
    (:func:`compound_coefficients`; use the input size round(224 * 1.15^phi)), which differs from the
    official table. ``dropout`` before the classifier defaults to the variant's; ``drop_path`` is the
    stochastic-depth rate, rising linearly with the block index from 0 to ``drop_path * (N-1)/N`` over
    the N blocks (only residual blocks have a branch to drop). BatchNorm eps 1e-3, decay 0.99; the
    depthwise convolutions pad (k-1)/2 on each side. The registered input sizes are the official
    resolutions (224 ... 600).

    B0 at 224, 1000 classes: 5,288,548 parameters, 0.39 G multiply-adds (the paper's "FLOPS").
    ImageNet top-1 [paper]: B0 76.3 ... B7 84.4.

    Reference recipe [paper, tensorflow/tpu]: RMSProp decay 0.9 momentum 0.9, lr 0.256 per 4096 images
    decaying by 0.97 every 2.4 epochs, weight decay 1e-5, BN momentum 0.99, AutoAugment, stochastic depth
    0.2, 350 epochs, warm-up 5 epochs. jaxcnn has no RMSProp or exponential decay: the nearest of its
    recipes is ``TrainConfig(optimizer="nesterov", schedule="cosine", warmup_epochs=5, weight_decay=1e-5)``.
    """
    if variant not in VARIANTS:
        raise ValueError(f"efficientnet variant must be one of {', '.join(VARIANTS)}, got {variant!r}")
    name = f"efficientnet_{variant}"
    w_coef, d_coef, _, default_dropout = VARIANTS[variant]
    if compound_phi is not None:
        w_coef, d_coef, _ = compound_coefficients(compound_phi)
    try:
        depth = check_width(depth, "depth")
    except ValueError:
        raise ValueError(f"{name} depth={depth!r}: depth is a multiplier of the block counts (ceil(depth * "
                         "repeats)) and must be a positive number") from None
    w = w_coef * check_width(width)
    d = d_coef * depth
    dropout = default_dropout if dropout is None else dropout
    if not 0.0 <= dropout < 1.0 or not 0.0 <= drop_path < 1.0:
        raise ValueError(f"{name}: dropout and drop_path are drop probabilities and must be in [0, 1)")
    bn = partial(BatchNorm, ema_decay=0.99, eps=1e-3)
    stem = round_channels(32, w, divisor=8)
    layers: dict[str, Layer] = {"stem": Sequential({"conv": Conv(stem, 3, 2, 1, use_bias=False), "bn": bn(),
                                                    "act": SiLU()})}
    repeats = [int(math.ceil(n * d)) for *_, n in STAGES]
    total = sum(repeats)
    in_ch, index = stem, 0
    for s, ((expand, kernel, stride, channels, _), n) in enumerate(zip(STAGES, repeats, strict=True)):
        out = round_channels(channels, w, divisor=8)
        blocks = {}
        for b in range(n):
            blocks[f"block{b + 1}"] = mbconv(in_ch, out, expand, kernel, stride if b == 0 else 1,
                                             drop_path * index / total)
            in_ch, index = out, index + 1
        layers[f"stage{s + 1}"] = Sequential(blocks)
    head = round_channels(1280, w, divisor=8)
    layers["head"] = Sequential({"conv": Conv(head, 1, 1, "VALID", use_bias=False), "bn": bn(), "act": SiLU()})
    layers["pool"] = GlobalAvgPool()
    if dropout:
        layers["dropout"] = Dropout(dropout)
    layers["fc"] = Dense(num_classes, keep_width=True)
    return Sequential(layers)


for _v, (_w, _d, _r, _p) in VARIANTS.items():
    register_model(
        partial(efficientnet, _v), input_shape=(_r, _r, 3), num_classes=1000, name=f"efficientnet_{_v}",
        description=f"EfficientNet-{_v.upper()} (Tan & Le 2019): width {_w}, depth {_d}, {_r}px, dropout {_p}; "
                    "MBConv + SE, SiLU",
    )
