"""Small models and data shared by the training tests (deterministic, fast on CPU)."""

import numpy as np

import jaxcnn as jc
from jaxcnn.train import TrainData


def tiny_model(classes: int = 4) -> jc.Layer:
    return jc.Sequential([
        jc.Conv(8, 3, 2, 1), jc.BatchNorm(), jc.ReLU(), jc.Dropout(0.1), jc.GlobalAvgPool(),
        jc.Dense(classes, keep_width=True),
    ])


def tiny_data(n: int = 256, size: int = 8, classes: int = 4, seed: int = 0) -> TrainData:
    """Class-dependent blobs plus noise, uint8 like real images."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n).astype(np.int32)
    centres = rng.uniform(0, 255, (classes, size, size, 1))
    x = np.clip(centres[y] + rng.normal(0, 40, (n, size, size, 1)), 0, 255).astype(np.uint8)
    split = n * 3 // 4
    return TrainData(x[:split], y[:split], x[split:], y[split:], classes)
