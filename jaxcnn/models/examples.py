"""The small networks of SPEC.md's worked examples, as named models.

* ``spec_a_4conv`` / ``spec_a_3conv`` (seeds/000): "fewer layers, more parameters":
  3x3 SAME convolutions, 2x2 max-pools, flatten, FC128, FC2; removing one conv+pool
  block *raises* the parameter count because the first FC layer grows.
* ``mnist_net`` (seeds/003): conv5x5-32, pool, conv3x3-32, pool, dense 256, dense 10, VALID.
"""

from __future__ import annotations

from jaxcnn.combinators import Sequential
from jaxcnn.core import Layer
from jaxcnn.layers import Conv, Dense, Flatten, GlobalAvgPool, MaxPool, ReLU
from jaxcnn.transforms import scale_width


def spec_a(
    channels: tuple[int, ...] = (32, 64, 128, 256),
    *,
    num_classes: int = 2,
    hidden: int = 128,
    bias: bool = False,
    head: str = "flatten",
    width: float = 1.0,
) -> Layer:
    """conv-pool blocks, then ``flatten`` (or ``gap``: global average pooling) -> FC hidden -> FC classes."""
    if head not in ("flatten", "gap"):
        raise ValueError(f"spec_a: head must be 'flatten' or 'gap', got {head!r}")
    layers: dict[str, Layer] = {}
    for i, c in enumerate(channels, start=1):
        layers[f"conv{i}"] = Conv(c, 3, 1, "SAME", use_bias=bias)
        layers[f"relu{i}"] = ReLU()
        layers[f"pool{i}"] = MaxPool(2, 2)
    layers["flatten" if head == "flatten" else "gap"] = Flatten() if head == "flatten" else GlobalAvgPool()
    layers["fc1"] = Dense(hidden, use_bias=bias)
    layers["relu_fc1"] = ReLU()
    layers["fc2"] = Dense(num_classes, use_bias=bias, keep_width=True)
    return scale_width(Sequential(layers), width)


def spec_a_4conv(**kw) -> Layer:
    """SPEC A model 1: conv32-pool-conv64-pool-conv128-pool-conv256-pool-flatten-FC128-FC2."""
    return spec_a((32, 64, 128, 256), **kw)


def spec_a_3conv(**kw) -> Layer:
    """SPEC A model 2: the same without the last conv+pool (more parameters)."""
    return spec_a((32, 64, 128), **kw)


def mnist_net(*, num_classes: int = 10, width: float = 1.0) -> Layer:
    """SPEC B: 217,706 learnable parameters at 28x28x1."""
    return scale_width(Sequential({
        "conv1": Conv(32, 5, 1, "VALID"), "relu1": ReLU(), "pool1": MaxPool(2),
        "conv2": Conv(32, 3, 1, "VALID"), "relu2": ReLU(), "pool2": MaxPool(2),
        "flatten": Flatten(), "fc1": Dense(256), "relu3": ReLU(), "fc2": Dense(num_classes, keep_width=True),
    }), width)
