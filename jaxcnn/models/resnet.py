"""ResNet-50 (v1.5, stride on the 3x3 as in torchvision) and ResNeXt-50 32x4d.

A bottleneck block is ``Residual(1x1 -> 3x3 (grouped for ResNeXt) -> 1x1, shortcut)``
followed by ReLU; the shortcut is a strided 1x1 projection + BN where the shape
changes. Convolutions have no bias (BatchNorm follows each).
"""

from __future__ import annotations

from jaxcnn.combinators import Residual, Sequential
from jaxcnn.core import Layer
from jaxcnn.layers import BatchNorm, Conv, Dense, GlobalAvgPool, MaxPool, ReLU
from jaxcnn.transforms import scale_width


def bottleneck(width: int, out: int, stride: int = 1, groups: int = 1, project: bool = False) -> Layer:
    """One bottleneck block: in -> 1x1 width -> 3x3 width (groups, stride) -> 1x1 out, plus shortcut."""
    body = Sequential({
        "conv1": Conv(width, 1, 1, "VALID", use_bias=False),
        "bn1": BatchNorm(),
        "relu1": ReLU(),
        "conv2": Conv(width, 3, stride, 1, groups=groups, use_bias=False),
        "bn2": BatchNorm(),
        "relu2": ReLU(),
        "conv3": Conv(out, 1, 1, "VALID", use_bias=False),
        "bn3": BatchNorm(),
    })
    shortcut = None
    if project:
        shortcut = Sequential({"conv": Conv(out, 1, stride, "VALID", use_bias=False), "bn": BatchNorm()})
    return Sequential({"residual": Residual(body, shortcut), "relu": ReLU()})


def resnet(
    depths: tuple[int, ...] = (3, 4, 6, 3),
    *,
    num_classes: int = 1000,
    width: float = 1.0,
    groups: int = 1,
    width_per_group: int = 64,
    small_input: bool = False,
) -> Layer:
    """Bottleneck ResNet/ResNeXt; ``small_input`` uses a 3x3 stride-1 stem without max-pool (32x32)."""
    if small_input:
        stem = {"conv": Conv(64, 3, 1, 1, use_bias=False), "bn": BatchNorm(), "relu": ReLU()}
    else:
        stem = {"conv": Conv(64, 7, 2, 3, use_bias=False), "bn": BatchNorm(), "relu": ReLU(),
                "pool": MaxPool(3, 2, 1)}
    layers: dict[str, Layer] = {"stem": Sequential(stem)}
    in_ch = 64
    for s, n in enumerate(depths):
        planes = 64 * 2**s
        mid = planes * width_per_group // 64 * groups
        out = planes * 4
        blocks = {}
        for b in range(n):
            stride = 2 if (b == 0 and s > 0) else 1
            project = b == 0 and (stride != 1 or in_ch != out)
            blocks[f"block{b + 1}"] = bottleneck(mid, out, stride, groups, project=project)
            in_ch = out
        layers[f"stage{s + 1}"] = Sequential(blocks)
    layers["pool"] = GlobalAvgPool()
    layers["fc"] = Dense(num_classes, keep_width=True)
    return scale_width(Sequential(layers), width)


def resnet50(**kw) -> Layer:
    """ResNet-50: 25,557,032 parameters at 1000 classes (torchvision)."""
    return resnet((3, 4, 6, 3), **kw)


def resnext50_32x4d(**kw) -> Layer:
    """ResNeXt-50 32x4d: grouped 3x3 with 32 groups of 4 channels in the first stage."""
    return resnet((3, 4, 6, 3), groups=32, width_per_group=4, **kw)
