"""Stratified splits and subsets, and chunked normalisation statistics."""

from __future__ import annotations

import numpy as np

from jaxcnn.data.dataset import DataError, Dataset

# Splits and normalisation


def _allocate(counts: np.ndarray, k: int, caps: np.ndarray) -> np.ndarray:
    """Split ``k`` over classes in proportion to ``counts`` (largest remainder: floor or ceil), at most ``caps``."""
    total = int(counts.sum())
    take = counts * k // total  # exact integer floors
    remainder = counts * k % total
    take = np.minimum(take, caps)
    rest = k - int(take.sum())
    order = np.lexsort((np.arange(len(counts)), -remainder))  # largest remainder first; ties by class index
    while rest > 0:  # one pass suffices unless caps bind; each pass hands out at most one per class
        open_classes = [c for c in order if take[c] < caps[c]][:rest]
        if not open_classes:
            raise DataError(f"cannot take {k} examples from classes of sizes {counts.tolist()}")
        take[open_classes] += 1
        rest -= len(open_classes)
    return take


def _resolve(n: int, fraction: float | None, size: int | None, what: str) -> int:
    """Number of examples for a split given as a fraction of ``n`` or an absolute size."""
    if fraction is not None and size is not None:
        raise DataError(f"stratified_split: give {what}_fraction or {what}_size, not both")
    if fraction is not None:
        if not 0.0 <= fraction < 1.0:
            raise DataError(f"stratified_split: {what}_fraction must be in [0, 1), got {fraction}")
        return int(np.floor(n * fraction + 0.5))
    if size is not None:
        if not 0 <= size < n:
            raise DataError(f"stratified_split: {what}_size must be in [0, {n}) for {n} examples, got {size}")
        return int(size)
    return 0


def split_indices(y: np.ndarray, num_classes: int, test_fraction: float | None = None, *,
                  test_size: int | None = None, val_fraction: float | None = None, val_size: int | None = None,
                  seed: int = 0) -> tuple[np.ndarray, ...]:
    """The sorted example indices of :func:`stratified_split`'s parts, from the labels alone (no images needed)."""
    n = len(y)
    k_test = _resolve(n, test_fraction, test_size, "test")
    k_val = _resolve(n, val_fraction, val_size, "val")
    if test_fraction is None and test_size is None:
        raise DataError("stratified_split: give test_fraction or test_size")
    if k_test < 1 or k_test + k_val >= n:
        raise DataError(f"stratified_split: {k_test} test + {k_val} validation examples out of {n} leave "
                        f"no training data or no test data; choose smaller or larger fractions")
    counts = np.bincount(y, minlength=num_classes)
    t = _allocate(counts, k_test, counts)
    v = _allocate(counts, k_val, counts - t) if k_val else np.zeros_like(t)
    rng = np.random.default_rng(seed)
    parts: tuple[list[np.ndarray], ...] = ([], [], [])
    for c in range(num_classes):
        idx = rng.permutation(np.flatnonzero(y == c))
        parts[2].append(idx[:t[c]])
        parts[1].append(idx[t[c]:t[c] + v[c]])
        parts[0].append(idx[t[c] + v[c]:])
    train, val, test = (np.sort(np.concatenate(p)) for p in parts)
    return (train, val, test) if k_val else (train, test)


def stratified_split(ds: Dataset, test_fraction: float | None = None, *, test_size: int | None = None,
                     val_fraction: float | None = None, val_size: int | None = None,
                     seed: int = 0) -> tuple[Dataset, ...]:
    """Deterministic stratified ``(train, test)``, or ``(train, val, test)`` when a validation part is asked for.

    Each class gives the floor or ceiling of its proportional share to test, then likewise to val (while it has
    examples left); the same seed always gives the same split. Examples keep their original order within a part.
    """
    parts = split_indices(ds.y, ds.num_classes, test_fraction, test_size=test_size, val_fraction=val_fraction,
                          val_size=val_size, seed=seed)
    names = (" [train]", " [val]", " [test]") if len(parts) == 3 else (" [train]", " [test]")
    return tuple(ds.take(idx, name) for idx, name in zip(parts, names, strict=True))


def subset_indices(y: np.ndarray, num_classes: int, n: int, seed: int = 0) -> np.ndarray:
    """The sorted indices of :func:`stratified_subset` from the labels alone (all of them if n >= len(y))."""
    if n < 1:
        raise DataError(f"stratified_subset: n must be at least 1, got {n}")
    if n >= len(y):
        return np.arange(len(y))
    counts = np.bincount(y, minlength=num_classes)
    take = _allocate(counts, n, counts)
    rng = np.random.default_rng(seed)
    idx = [rng.permutation(np.flatnonzero(y == c))[:take[c]] for c in range(num_classes)]
    return np.sort(np.concatenate(idx))


def stratified_subset(ds: Dataset, n: int, seed: int = 0) -> Dataset:
    """``n`` examples with the class proportions of ``ds`` (deterministic in ``seed``); all of ``ds`` if n >= len."""
    if n >= len(ds) >= 1:
        return ds
    return ds.take(subset_indices(ds.y, ds.num_classes, n, seed), f" [subset {n}]")


def _scale(x: np.ndarray) -> float:
    """Pixel units: uint8 images are measured in x / 255, float images as stored."""
    return 255.0 if x.dtype == np.uint8 else 1.0


def normalization_stats(train_x: np.ndarray, chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel float32 ``(mean, std)`` of the training images, in x/255 units for uint8 (as TrainData uses).

    Pass the training split only, so nothing about the test images leaks into training. ``std`` has 1e-6
    added (as TrainData's default) so a constant channel does not divide by zero.
    """
    x = np.asarray(train_x)
    if x.ndim != 4 or not len(x):
        raise DataError(f"normalization_stats: expected non-empty NHWC images, got shape {x.shape}")
    per_channel = x.shape[0] * x.shape[1] * x.shape[2]
    # Chunked two-pass float64 sums: exact enough and never a full float64 copy of the data set.
    total = sum(x[i:i + chunk].sum(axis=(0, 1, 2), dtype=np.float64) for i in range(0, len(x), chunk))
    mean = total / per_channel
    sq = sum(((x[i:i + chunk].astype(np.float64) - mean) ** 2).sum(axis=(0, 1, 2)) for i in range(0, len(x), chunk))
    std = np.sqrt(sq / per_channel)
    s = _scale(x)
    return (mean / s).astype(np.float32), (std / s + 1e-6).astype(np.float32)


def normalize(x: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """``(x / scale - mean) / std`` as float32, with the stats of :func:`normalization_stats`."""
    x = np.asarray(x)
    scale = np.float32(_scale(x))
    return ((x.astype(np.float32) / scale - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)).astype(
        np.float32)

