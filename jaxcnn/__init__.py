"""jaxcnn: pure-function CNN layers in JAX with exact accounting of every model."""

from jaxcnn.combinators import Parallel, Residual, Sequential
from jaxcnn.core import (
    Layer,
    LayerError,
    Node,
    ParamsError,
    ShapeError,
    Spec,
    count_params,
    map_layers,
    tree_shapes,
    walk,
)
from jaxcnn.layers import (
    GELU,
    AvgPool,
    BatchNorm,
    Conv,
    CReLU,
    Dense,
    DepthwiseConv,
    Dropout,
    Flatten,
    GlobalAvgPool,
    GlobalMaxPool,
    Identity,
    L2Pool,
    LeakyReLU,
    MaxPool,
    ReLU,
    ReLU6,
    Sigmoid,
    Softmax,
    Tanh,
)
from jaxcnn.transforms import mixed_precision, round_channels, scale_width, with_conv_impl

__version__ = "0.1.0"

__all__ = [
    "AvgPool", "BatchNorm", "CReLU", "Conv", "Dense", "DepthwiseConv", "Dropout", "Flatten", "GELU",
    "GlobalAvgPool", "GlobalMaxPool", "Identity", "L2Pool", "Layer", "LayerError", "LeakyReLU", "MaxPool",
    "Node", "Parallel", "ParamsError", "ReLU", "ReLU6", "Residual", "Sequential", "ShapeError", "Sigmoid",
    "Softmax", "Spec", "Tanh", "count_params", "map_layers", "mixed_precision", "round_channels",
    "scale_width", "tree_shapes", "walk", "with_conv_impl",
]
