"""DenseNet-121 (Huang et al. 2017) in the torchvision layout (BN-ReLU-conv, growth 32).

Each dense layer is ``Parallel([Identity(), BN-ReLU-1x1(4k)-BN-ReLU-3x3(k)])``: the
input concatenated with k new channels. Transitions halve channels and resolution.
"""

from __future__ import annotations

from jaxcnn.combinators import Parallel, Sequential
from jaxcnn.core import Layer
from jaxcnn.layers import AvgPool, BatchNorm, Conv, Dense, GlobalAvgPool, Identity, MaxPool, ReLU
from jaxcnn.transforms import scale_width


def dense_layer(growth: int, bn_size: int = 4) -> Layer:
    """x -> concat(x, H(x)) with H = BN-ReLU-1x1(bn_size*growth)-BN-ReLU-3x3(growth)."""
    body = Sequential({
        "bn1": BatchNorm(), "relu1": ReLU(), "conv1": Conv(bn_size * growth, 1, 1, "VALID", use_bias=False),
        "bn2": BatchNorm(), "relu2": ReLU(), "conv2": Conv(growth, 3, 1, 1, use_bias=False),
    })
    return Parallel({"identity": Identity(), "new": body})


def densenet(
    blocks: tuple[int, ...] = (6, 12, 24, 16),
    *,
    growth: int = 32,
    init_features: int = 64,
    bn_size: int = 4,
    num_classes: int = 1000,
    width: float = 1.0,
    small_input: bool = False,
) -> Layer:
    """DenseNet-BC; ``small_input`` uses a 3x3 stride-1 stem without max-pool (32x32)."""
    if small_input:
        stem = {"conv": Conv(init_features, 3, 1, 1, use_bias=False), "bn": BatchNorm(), "relu": ReLU()}
    else:
        stem = {"conv": Conv(init_features, 7, 2, 3, use_bias=False), "bn": BatchNorm(), "relu": ReLU(),
                "pool": MaxPool(3, 2, 1)}
    layers: dict[str, Layer] = {"stem": Sequential(stem)}
    channels = init_features
    for b, n in enumerate(blocks, start=1):
        layers[f"block{b}"] = Sequential({f"layer{i + 1}": dense_layer(growth, bn_size) for i in range(n)})
        channels += n * growth
        if b < len(blocks):
            channels //= 2
            layers[f"transition{b}"] = Sequential({
                "bn": BatchNorm(), "relu": ReLU(), "conv": Conv(channels, 1, 1, "VALID", use_bias=False),
                "pool": AvgPool(2, 2),
            })
    layers["bn"] = BatchNorm()
    layers["relu"] = ReLU()
    layers["pool"] = GlobalAvgPool()
    layers["fc"] = Dense(num_classes, keep_width=True)
    return scale_width(Sequential(layers), width)


def densenet121(**kw) -> Layer:
    """DenseNet-121: 7,978,856 parameters at 1000 classes (torchvision)."""
    return densenet((6, 12, 24, 16), **kw)
