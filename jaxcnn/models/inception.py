"""Inception v1 (GoogLeNet, Szegedy et al. 2014) and a small Inception net for 32x32.

An Inception module is four parallel branches concatenated on channels:
1x1; 1x1 -> 3x3; 1x1 -> 5x5; 3x3 max-pool -> 1x1. This follows the paper's Table 1
(5x5 in the third branch, convolutions with bias and ReLU, no BatchNorm, no
auxiliary heads), not torchvision's variant (BN, and 3x3 in place of the 5x5).
"""

from __future__ import annotations

from jaxcnn.combinators import Parallel, Sequential
from jaxcnn.core import Layer
from jaxcnn.layers import BatchNorm, Conv, Dense, Dropout, GlobalAvgPool, MaxPool, ReLU
from jaxcnn.transforms import scale_width


def _conv(c: int, k: int, stride: int = 1, bn: bool = False) -> Layer:
    layers = {"conv": Conv(c, k, stride, "SAME", use_bias=not bn)}
    if bn:
        layers["bn"] = BatchNorm()
    layers["relu"] = ReLU()
    return Sequential(layers)


def inception_module(c1: int, c3r: int, c3: int, c5r: int, c5: int, pool_proj: int, *, bn: bool = False) -> Layer:
    """The four-branch module with the paper's column names (#1x1, #3x3 reduce, #3x3, ...)."""
    return Parallel({
        "b1x1": _conv(c1, 1, bn=bn),
        "b3x3": Sequential({"reduce": _conv(c3r, 1, bn=bn), "conv": _conv(c3, 3, bn=bn)}),
        "b5x5": Sequential({"reduce": _conv(c5r, 1, bn=bn), "conv": _conv(c5, 5, bn=bn)}),
        "pool": Sequential({"pool": MaxPool(3, 1, "SAME"), "proj": _conv(pool_proj, 1, bn=bn)}),
    })


GOOGLENET_MODULES = {
    "3a": (64, 96, 128, 16, 32, 32), "3b": (128, 128, 192, 32, 96, 64),
    "4a": (192, 96, 208, 16, 48, 64), "4b": (160, 112, 224, 24, 64, 64), "4c": (128, 128, 256, 24, 64, 64),
    "4d": (112, 144, 288, 32, 64, 64), "4e": (256, 160, 320, 32, 128, 128),
    "5a": (256, 160, 320, 32, 128, 128), "5b": (384, 192, 384, 48, 128, 128),
}


def googlenet(*, num_classes: int = 1000, width: float = 1.0, dropout: float = 0.4, bn: bool = False) -> Layer:
    """GoogLeNet without auxiliary classifiers (local response normalisation omitted)."""
    m = GOOGLENET_MODULES
    layers: dict[str, Layer] = {
        "conv1": _conv(64, 7, 2, bn), "pool1": MaxPool(3, 2, "SAME"),
        "conv2_reduce": _conv(64, 1, bn=bn), "conv2": _conv(192, 3, bn=bn), "pool2": MaxPool(3, 2, "SAME"),
        "inception3a": inception_module(*m["3a"], bn=bn), "inception3b": inception_module(*m["3b"], bn=bn),
        "pool3": MaxPool(3, 2, "SAME"),
    }
    for k in ("4a", "4b", "4c", "4d", "4e"):
        layers[f"inception{k}"] = inception_module(*m[k], bn=bn)
    layers["pool4"] = MaxPool(3, 2, "SAME")
    layers["inception5a"] = inception_module(*m["5a"], bn=bn)
    layers["inception5b"] = inception_module(*m["5b"], bn=bn)
    layers["pool"] = GlobalAvgPool()
    if dropout:
        layers["dropout"] = Dropout(dropout)
    layers["fc"] = Dense(num_classes, keep_width=True)
    return scale_width(Sequential(layers), width)


def inception_small(*, num_classes: int = 10, width: float = 1.0, bn: bool = True) -> Layer:
    """A small Inception net for 32x32 inputs: stem, 2 modules, pool, 2 modules, pool, 1 module."""
    layers: dict[str, Layer] = {
        "stem": _conv(64, 3, bn=bn),
        "inception1a": inception_module(32, 32, 48, 8, 16, 16, bn=bn),
        "inception1b": inception_module(48, 48, 64, 8, 24, 24, bn=bn),
        "pool1": MaxPool(3, 2, "SAME"),
        "inception2a": inception_module(64, 48, 96, 16, 32, 32, bn=bn),
        "inception2b": inception_module(80, 64, 112, 16, 32, 32, bn=bn),
        "pool2": MaxPool(3, 2, "SAME"),
        "inception3a": inception_module(112, 80, 160, 24, 48, 48, bn=bn),
        "pool": GlobalAvgPool(),
        "fc": Dense(num_classes, keep_width=True),
    }
    return scale_width(Sequential(layers), width)
