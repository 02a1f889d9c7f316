"""VGG-16 (Simonyan & Zisserman 2014), configuration D, optionally with BatchNorm.

At 224x224 the last block gives 7x7x512 and the classifier is Flatten -> 4096 ->
4096 -> classes, as in torchvision (whose adaptive 7x7 pool is the identity there).
At other input sizes the first dense layer takes whatever the last block gives.
"""

from __future__ import annotations

from jaxcnn.combinators import Sequential
from jaxcnn.core import Layer
from jaxcnn.layers import BatchNorm, Conv, Dense, Dropout, Flatten, MaxPool, ReLU
from jaxcnn.transforms import scale_width

CFG_D = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))


def vgg16(
    *, num_classes: int = 1000, width: float = 1.0, bn: bool = False, dropout: float = 0.5,
    hidden: int = 4096, channels: tuple[tuple[int, ...], ...] = CFG_D,
) -> Layer:
    """VGG-16; ``channels``/``hidden`` shrink it for fast tests without changing its shape."""
    layers: dict[str, Layer] = {}
    for b, block in enumerate(channels, start=1):
        for i, c in enumerate(block, start=1):
            layers[f"conv{b}_{i}"] = Conv(c, 3, 1, 1)
            if bn:
                layers[f"bn{b}_{i}"] = BatchNorm()
            layers[f"relu{b}_{i}"] = ReLU()
        layers[f"pool{b}"] = MaxPool(2, 2)
    layers["flatten"] = Flatten()
    layers["fc6"] = Dense(hidden)
    layers["relu6"] = ReLU()
    if dropout:
        layers["drop6"] = Dropout(dropout)
    layers["fc7"] = Dense(hidden)
    layers["relu7"] = ReLU()
    if dropout:
        layers["drop7"] = Dropout(dropout)
    layers["fc8"] = Dense(num_classes, keep_width=True)
    return scale_width(Sequential(layers), width)
