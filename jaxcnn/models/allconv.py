"""The allconv family of the width/depth study (seeds/004; the book's Caffe prototxts).

Every model is a stack of 3x3 convolutions with padding 1 (allconv5's first layer is
5x5 stride 4), each followed by ReLU (BatchNorm before the ReLU with ``bn=True``),
then global average pooling and a dense classifier. The original used a 7x7 average
pool at 224x224 input, which is global there; ``global_pool=False`` keeps that
literal 7x7/stride-1 pool (and then needs a 7x7 final map, e.g. 224x224 input).
"""

from __future__ import annotations

from jaxcnn.combinators import Sequential
from jaxcnn.core import Layer
from jaxcnn.layers import AvgPool, BatchNorm, Conv, CReLU, Dense, Dropout, Flatten, GlobalAvgPool, ReLU
from jaxcnn.transforms import scale_width

# SPEC.md's table: channels of conv1..conv5, all stride 2.
ALLCONV6_CHANNELS: dict[str, tuple[int, ...]] = {
    "allconv6": (64, 64, 128, 128, 256),
    "allconv6_1": (16, 16, 32, 32, 64),
    "allconv6_2": (32, 32, 32, 32, 64),
    "allconv6_3": (16, 16, 64, 64, 64),
    "allconv6_4": (16, 16, 32, 32, 128),
    "allconv6_5": (32, 32, 64, 64, 128),
    "allconv6_6": (64, 64, 64, 64, 128),
    "allconv6_7": (32, 32, 128, 128, 128),
    "allconv6_8": (32, 32, 64, 64, 256),
}

# The depth family (book chapter 4): (kernel, stride, channels) per convolution.
DEPTH_FAMILY: dict[str, tuple[tuple[int, int, int], ...]] = {
    "allconv5": ((5, 4, 64), (3, 2, 64), (3, 2, 128), (3, 2, 128)),
    "allconv6": ((3, 2, 64), (3, 2, 64), (3, 2, 128), (3, 2, 128), (3, 2, 256)),
    "allconv7_1": ((3, 1, 64), (3, 2, 64), (3, 2, 128), (3, 2, 128), (3, 2, 256), (3, 2, 256)),
    "allconv7_2": ((3, 2, 64), (3, 2, 64), (3, 2, 128), (3, 2, 128), (3, 2, 256), (3, 1, 256)),
    "allconv8_1": ((3, 1, 64), (3, 1, 64), (3, 2, 128), (3, 2, 128), (3, 2, 256), (3, 2, 256), (3, 2, 256)),
    "allconv8_2": ((3, 1, 64), (3, 2, 64), (3, 2, 128), (3, 2, 128), (3, 2, 256), (3, 2, 256), (3, 1, 256)),
    "allconv8_3": ((3, 2, 64), (3, 2, 64), (3, 2, 128), (3, 2, 128), (3, 2, 256), (3, 1, 256), (3, 1, 256)),
}


def allconv(
    convs: tuple[tuple[int, int, int], ...],
    *,
    num_classes: int = 20,
    bn: bool = False,
    width: float = 1.0,
    dropout: float = 0.0,
    global_pool: bool = True,
    crelu_layers: int = 0,
    kernel_init: str = "he_normal",
) -> Layer:
    """An all-convolutional net from (kernel, stride, channels) triples.

    ``crelu_layers=k`` gives the first ``k`` convolutions half the filters followed by
    CReLU (concatenate x and -x), so the next layer sees the same width.
    """
    layers: dict[str, Layer] = {}
    for i, (k, s, c) in enumerate(convs, start=1):
        half = i <= crelu_layers
        if half and c % 2:
            raise ValueError(f"allconv: conv{i} has {c} channels; CReLU needs an even count")
        # padding 1 everywhere, as in the prototxts (allconv5's 5x5/4 first layer too)
        layers[f"conv{i}"] = Conv(c // 2 if half else c, k, s, 1, use_bias=not bn, kernel_init=kernel_init)
        if bn:
            layers[f"bn{i}"] = BatchNorm()
        layers[f"relu{i}" if not half else f"crelu{i}"] = CReLU() if half else ReLU()
    if dropout:
        layers["dropout"] = Dropout(dropout)
    if global_pool:
        layers["pool"] = GlobalAvgPool()
    else:
        layers["pool"] = AvgPool(7, 1)
        layers["flatten"] = Flatten()
    layers["fc"] = Dense(num_classes, keep_width=True, kernel_init="glorot_uniform")
    return scale_width(Sequential(layers), width)


def allconv6_variant(name: str = "allconv6", **kw) -> Layer:
    """allconv6 or one of its width variants ``allconv6_1`` ... ``allconv6_8`` (all stride 2)."""
    if name not in ALLCONV6_CHANNELS:
        raise ValueError(f"unknown allconv6 variant {name!r}; choose from {', '.join(ALLCONV6_CHANNELS)}")
    return allconv(tuple((3, 2, c) for c in ALLCONV6_CHANNELS[name]), **kw)


def allconv_depth(name: str, **kw) -> Layer:
    """A member of the depth family (allconv5 ... allconv8_3)."""
    if name not in DEPTH_FAMILY:
        raise ValueError(f"unknown depth variant {name!r}; choose from {', '.join(DEPTH_FAMILY)}")
    return allconv(DEPTH_FAMILY[name], **kw)


def allconv6_crelu(*, crelu_layers: int = 2, **kw) -> Layer:
    """allconv6 whose first ``crelu_layers`` convolutions use half the filters + CReLU (seeds/004 4.1)."""
    return allconv(DEPTH_FAMILY["allconv6"], crelu_layers=crelu_layers, **kw)
