"""MobileNet v1 (Howard et al. 2017, arXiv:1704.04861) with width and resolution multipliers.

Table 1 of the paper, with the last depthwise stride read as 1 (the printed "s2" is a
known typo: the map stays 7x7 before the 7x7 pool). Every convolution is followed by
BatchNorm and ReLU and has no bias. The resolution multiplier is simply the input
size (224, 192, 160, 128, ...). For 32x32 inputs use ``stem_stride=1``: the four
stride-2 depthwise layers then take 32x32 down to 2x2 before the global pool.
"""

from __future__ import annotations

from jaxcnn.combinators import Sequential
from jaxcnn.core import Layer
from jaxcnn.layers import BatchNorm, Conv, Dense, DepthwiseConv, Dropout, GlobalAvgPool, ReLU
from jaxcnn.transforms import scale_width

# (pointwise channels, depthwise stride) of the 13 separable blocks
BLOCKS: tuple[tuple[int, int], ...] = (
    (64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
    (512, 1), (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1),
)


def mobilenet_v1(
    *,
    num_classes: int = 1000,
    width: float = 1.0,
    stem_stride: int = 2,
    padding: str | int = "SAME",
    dropout: float = 0.0,
    divisor: int | None = None,
    shallow: bool = False,
    dw_impl: str = "auto",
) -> Layer:
    """MobileNet v1; ``width`` is alpha, ``padding=1`` gives PyTorch-style symmetric padding.

    ``shallow=True`` drops the five 14x14x512 separable blocks (the paper's Table 5).
    ``dw_impl`` picks the depthwise lowering (``jaxcnn.lowering.conv``; ``auto`` is fastest per backend).
    """
    layers: dict[str, Layer] = {
        "conv0": Conv(32, 3, stem_stride, padding, use_bias=False),
        "bn0": BatchNorm(),
        "relu0": ReLU(),
    }
    blocks = [b for i, b in enumerate(BLOCKS) if not (shallow and 6 <= i <= 10)]
    for i, (channels, stride) in enumerate(blocks, start=1):
        layers[f"block{i}"] = Sequential({
            "dw": DepthwiseConv(3, stride, padding, impl=dw_impl),
            "dw_bn": BatchNorm(),
            "dw_relu": ReLU(),
            "pw": Conv(channels, 1, 1, "VALID", use_bias=False),
            "pw_bn": BatchNorm(),
            "pw_relu": ReLU(),
        })
    layers["pool"] = GlobalAvgPool()
    if dropout:
        layers["dropout"] = Dropout(dropout)
    layers["fc"] = Dense(num_classes, keep_width=True)
    return scale_width(Sequential(layers), width, divisor=divisor)
