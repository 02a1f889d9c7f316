"""Scores of a trained run's weights on images: accuracy per seed and of the seeds' mean, top-k, confusion.

Plain NumPy over the logits :meth:`jaxcnn.storage.weights.LoadedModel.logits` gives, so the
numbers are those of the training run's own evaluation (eval-mode BatchNorm, the recorded
normalisation); ``jaxcnn eval`` and ``jaxcnn predict`` print them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Scores", "scores", "softmax", "top_k"]


def softmax(logits: np.ndarray) -> np.ndarray:
    """Class probabilities along the last axis (float64, shifted by the maximum for stability)."""
    z = np.asarray(logits, np.float64)
    z = np.exp(z - z.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` largest scores along the last axis, largest first (ties: the lower index first)."""
    k = min(k, scores.shape[-1])
    return np.argsort(-np.asarray(scores), axis=-1, kind="stable")[..., :k]


@dataclass(frozen=True)
class Scores:
    """Accuracies of K seeds on N labelled images (fractions in [0, 1])."""

    seeds: list[int]
    accuracy: list[float]  # top-1 per seed
    top_k: list[float]  # top-k per seed
    k: int
    ensemble_accuracy: float  # top-1 of the seeds' mean class probabilities
    confusion: np.ndarray  # (K, classes, classes) counts: [seed, true, predicted]
    examples: int

    @property
    def mean_accuracy(self) -> float:
        """Mean over seeds of the top-1 accuracy."""
        return float(np.mean(self.accuracy))

    @property
    def mean_top_k(self) -> float:
        """Mean over seeds of the top-k accuracy."""
        return float(np.mean(self.top_k))

    def to_json(self) -> dict:
        """The scores as JSON (confusion counts as nested lists)."""
        return {"seeds": self.seeds, "examples": self.examples, "accuracy": self.accuracy,
                "mean_accuracy": self.mean_accuracy, f"top{self.k}": self.top_k, f"mean_top{self.k}": self.mean_top_k,
                "ensemble_accuracy": self.ensemble_accuracy, "confusion": self.confusion.tolist()}


def scores(logits: np.ndarray, y: np.ndarray, seeds: list[int], k: int = 5) -> Scores:
    """:class:`Scores` of ``(K, N, classes)`` logits against labels ``y`` (N,)."""
    logits, y = np.asarray(logits), np.asarray(y).astype(np.int64)
    n_classes = logits.shape[-1]
    if logits.ndim != 3 or logits.shape[1] != len(y) or len(y) == 0:
        raise ValueError(f"scores: logits of shape {logits.shape} do not match {len(y)} labels")
    if y.min() < 0 or y.max() >= n_classes:
        raise ValueError(f"labels run from {y.min()} to {y.max()}, but the model has {n_classes} classes")
    predicted = logits.argmax(-1)
    hits_k = (top_k(logits, k) == y[None, :, None]).any(-1)
    confusion = np.zeros((len(logits), n_classes, n_classes), np.int64)
    for s in range(len(logits)):
        np.add.at(confusion[s], (y, predicted[s]), 1)
    ensemble = softmax(logits).mean(0).argmax(-1)
    return Scores(seeds=list(seeds), accuracy=(predicted == y).mean(1).tolist(), top_k=hits_k.mean(1).tolist(),
                  k=min(k, n_classes), ensemble_accuracy=float((ensemble == y).mean()), confusion=confusion,
                  examples=len(y))
