"""Leaf layers: convolutions, dense, pooling, normalisation, dropout, activations.

Every layer is a frozen dataclass of hyperparameters implementing the protocol in
:mod:`jaxcnn.core`. Per-example shapes are ``(H, W, C)`` for images and ``(D,)``
for flat features; arrays are batched NHWC, kernels HWIO.
"""

from jaxcnn.layers.activations import (
    GELU,
    CReLU,
    Elementwise,
    Identity,
    LeakyReLU,
    ReLU,
    ReLU6,
    Sigmoid,
    Softmax,
    Tanh,
)
from jaxcnn.layers.blocks import DropPath, Projection, SiLU, SqueezeExcite, SubsamplePad
from jaxcnn.layers.hyperparams import resolve_padding, window_output
from jaxcnn.layers.linear import Conv, Dense, DepthwiseConv
from jaxcnn.layers.normalization import BatchNorm, Dropout
from jaxcnn.layers.pooling import AvgPool, Flatten, GlobalAvgPool, GlobalMaxPool, L2Pool, MaxPool

LEAF_TYPES = (
    Conv, DepthwiseConv, Dense, Flatten, MaxPool, AvgPool, L2Pool, GlobalAvgPool, GlobalMaxPool,
    BatchNorm, Dropout, ReLU, ReLU6, LeakyReLU, GELU, Sigmoid, Tanh, Softmax, CReLU, Identity,
    SiLU, SqueezeExcite, DropPath, SubsamplePad, Projection,
)

__all__ = [t.__name__ for t in LEAF_TYPES] + ["Elementwise", "resolve_padding", "window_output"]
