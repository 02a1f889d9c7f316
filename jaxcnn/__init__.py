"""jaxcnn: pure-function CNN layers in JAX with exact accounting of every model."""

from jaxcnn.combinators import Parallel, PreActResidual, Residual, Sequential
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
    DropPath,
    Flatten,
    GlobalAvgPool,
    GlobalMaxPool,
    Identity,
    L2Pool,
    LeakyReLU,
    MaxPool,
    Projection,
    ReLU,
    ReLU6,
    Sigmoid,
    SiLU,
    Softmax,
    SqueezeExcite,
    SubsamplePad,
    Tanh,
)
from jaxcnn.lowering import host_allocator
from jaxcnn.transforms import mixed_precision, round_channels, scale_width, with_conv_impl

# before any JAX computation starts XLA's threads (importing jaxcnn starts none; see the module's docstring)
host_allocator.configure()

__version__ = "0.1.0"

__all__ = [
    "AvgPool", "BatchNorm", "CReLU", "Conv", "Dense", "DepthwiseConv", "DropPath", "Dropout", "Flatten", "GELU",
    "GlobalAvgPool", "GlobalMaxPool", "Identity", "L2Pool", "Layer", "LayerError", "LeakyReLU", "MaxPool", "Node",
    "Parallel", "ParamsError", "PreActResidual", "Projection", "ReLU", "ReLU6", "Residual", "Sequential",
    "ShapeError", "Sigmoid", "SiLU", "Softmax", "Spec", "SqueezeExcite", "SubsamplePad", "Tanh", "count_params",
    "map_layers", "mixed_precision", "round_channels", "scale_width", "tree_shapes", "walk", "with_conv_impl",
]
