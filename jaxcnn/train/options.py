"""The training options that change the model or the data before anything compiles: precision and label noise.

EMA and gradient accumulation live in the step itself (:mod:`jaxcnn.train.step`); these two act once,
when a :class:`~jaxcnn.train.Trainer` is built:

* ``precision="bf16"``: :func:`jaxcnn.transforms.mixed_precision` on the model, the dtype policy its layers
  declare (``compute_dtype``): convolutions, dense layers and BatchNorm compute in bfloat16 from float32
  master weights, BatchNorm statistics are computed and kept in float32, and the loss is taken in
  float32 (the step casts the logits).
* ``label_noise=f``: ``round(f * n)`` training examples, chosen at random, get a class drawn uniformly from
  the other ``num_classes - 1`` classes (so every flipped label is wrong), the protocol of the deep
  double-descent experiments (Nakkiran et al. 2019). The draw depends only on ``label_noise_seed`` and
  the labels: the same labels for every seed of a run, every epoch, a resumed run and a rerun. The test
  labels stay clean; the training accuracy of a run is measured against the labels it trains on.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from jaxcnn.core import Layer, map_layers
from jaxcnn.train.config import TrainConfig
from jaxcnn.train.inputs import TrainData

__all__ = ["NOISE_DOMAIN", "apply", "noise_record", "noisy_labels", "with_precision"]

# mixed into the noise seed, so label_noise_seed=s never draws the same stream as another use of seed s
NOISE_DOMAIN = 0x6E6F697365  # "noise"


def noisy_labels(y: np.ndarray, num_classes: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(labels, flipped)``: ``y`` with ``round(fraction * len(y))`` entries moved to another class, and their indices.

    Which entries and their new classes depend only on ``seed`` (and ``len(y)``, ``num_classes``).
    """
    y = np.asarray(y)
    n_flip = round(fraction * len(y))
    if n_flip and num_classes < 2:
        raise ValueError(f"TrainConfig: label_noise={fraction} needs at least 2 classes to draw a wrong one")
    rng = np.random.default_rng([NOISE_DOMAIN, int(seed)])
    flipped = np.sort(rng.choice(len(y), size=n_flip, replace=False))
    out = y.copy()
    # an offset in 1 .. K-1 lands on each of the other K-1 classes with equal probability, never on the label
    out[flipped] = (y[flipped] + rng.integers(1, num_classes, size=n_flip)) % num_classes
    return out.astype(y.dtype), flipped


def noise_record(data: TrainData, cfg: TrainConfig) -> dict[str, Any]:
    """What a run with label noise records of it beside its config (nothing without noise)."""
    if not cfg.label_noise:
        return {}
    _, flipped = noisy_labels(data.y_train, data.num_classes, cfg.label_noise, cfg.label_noise_seed)
    return {"label_noise_flipped": int(len(flipped))}


def with_precision(model: Layer, precision: str) -> Layer:
    """``model`` computing in ``precision`` ("float32": as it is; "bf16": bfloat16 compute, float32 weights)."""
    if precision == "float32":
        return model
    from jaxcnn.transforms import mixed_precision

    found: list[Layer] = []
    map_layers(lambda layer: found.append(layer) or layer, model)
    if not any(dataclasses.is_dataclass(layer) and any(f.name == "compute_dtype" for f in dataclasses.fields(layer))
               for layer in found):
        raise ValueError(f"TrainConfig: precision={precision!r} changes layers with a `compute_dtype` field "
                         f"(Conv, Dense, BatchNorm, ...), and {type(model).__name__} has none; use precision='float32'")
    return mixed_precision(model, "bfloat16")


def apply(model: Layer, data: TrainData, cfg: TrainConfig) -> tuple[Layer, TrainData]:
    """The model and the training data a run with ``cfg`` trains: its precision and its label noise applied."""
    model = with_precision(model, cfg.precision)
    if cfg.label_noise:
        y, _ = noisy_labels(data.y_train, data.num_classes, cfg.label_noise, cfg.label_noise_seed)
        data = dataclasses.replace(data, y_train=y)
    return model, data
