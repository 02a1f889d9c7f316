"""Core data types and checks: Dataset, Splits, DataError, label and split validation."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from jaxcnn.storage.files import FileProblem, check_memory, read_regular

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp")
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                   "Ankle boot")
DIGIT_CLASSES = tuple(str(i) for i in range(10))
MAX_CLASSES = 100_000  # 4.6x ImageNet-21k; a label beyond it is a corrupt file, not a class (a 2**40 bincount)
EXPERIMENTS_HINT = "pip install 'jaxcnn[experiments]'"


class DataError(ValueError):
    """A data source is missing, malformed or inconsistent; the message names the file and the fix."""


@dataclass
class Dataset:
    """Images ``x`` (NHWC, uint8 0-255 or float32) with int32 labels ``y`` in ``[0, num_classes)``."""

    x: np.ndarray
    y: np.ndarray
    num_classes: int
    name: str = ""
    class_names: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        where = self.name or "Dataset"
        x = self.x
        if not isinstance(x, np.ndarray) or x.ndim != 4:
            raise DataError(f"{where}: images must be a 4-d NHWC array, got shape {np.shape(x)}")
        if np.issubdtype(x.dtype, np.floating) and x.dtype != np.float32:
            self.x = x = x.astype(np.float32)  # widening is lossless in what models see; float32 is the contract
        if x.dtype not in (np.uint8, np.float32):
            raise DataError(f"{where}: images must be uint8 (0-255) or float32, got {x.dtype}")
        self.num_classes = class_count(self.num_classes, where)
        y = labels(self.y, where, self.num_classes)
        if len(y) != len(x):
            raise DataError(f"{where}: labels must be a 1-d array with one label per image "
                            f"({len(x)} images), got shape {np.shape(self.y)}")
        self.y = y
        if self.class_names is not None:
            self.class_names = tuple(str(c) for c in self.class_names)
            if len(self.class_names) != self.num_classes:
                raise DataError(f"{where}: {len(self.class_names)} class names for {self.num_classes} classes")

    def __len__(self) -> int:
        return len(self.y)

    def take(self, indices: np.ndarray | Sequence[int], suffix: str = "") -> Dataset:
        """The examples at ``indices`` (same classes and names; ``suffix`` is appended to the name)."""
        idx = np.asarray(indices)
        if idx.dtype == np.bool_:  # a mask, not the indices 0 and 1
            idx = np.flatnonzero(idx)
        idx = idx.astype(np.int64, copy=False)
        return Dataset(self.x[idx], self.y[idx], self.num_classes, self.name + suffix, self.class_names)

    def class_counts(self) -> np.ndarray:
        """Number of examples of each class, shape ``(num_classes,)``."""
        return np.bincount(self.y, minlength=self.num_classes)


Splits = dict[str, Dataset]
"""What :func:`load` returns: ``"train"`` always, ``"test"`` where the source has an official test split."""


def class_count(k: Any, source: str) -> int:
    """``k`` as a number of classes in [1, MAX_CLASSES], or DataError naming ``source``."""
    try:
        arr = np.asarray(k)
    except (TypeError, ValueError, OverflowError):
        arr = np.asarray(None)
    if arr.size == 1 and arr.dtype.kind in "iuf" and np.isfinite(arr).all() and float(arr.ravel()[0]).is_integer():
        value = int(arr.ravel()[0])
        if 1 <= value <= MAX_CLASSES:
            return value
    raise DataError(f"{source}: num_classes must be one integer in [1, {MAX_CLASSES:,}], got {k!r}")


def labels(values: Any, source: str, num_classes: int | None = None) -> np.ndarray:
    """``values`` as int32 class labels, checked integral and in [0, num_classes) *before* any cast.

    The one label check of every loader: floats must be whole numbers, Python ints of any size are compared
    exactly, and without ``num_classes`` labels must be below :data:`MAX_CLASSES`. Errors name ``source``
    and the first offending example.
    """
    limit = MAX_CLASSES if num_classes is None else num_classes
    allowed = f"integers in [0, {limit:,})" + (f" (at most {MAX_CLASSES:,} classes)" if num_classes is None else "")
    try:
        y = np.asarray(values)
    except (TypeError, ValueError, OverflowError):
        raise DataError(f"{source}: labels must be a flat list of integers") from None
    if y.ndim != 1:
        raise DataError(f"{source}: labels must be a 1-d list of integers, got shape {y.shape}")
    if y.dtype.kind == "O":  # e.g. Python ints beyond int64: compare them exactly, one by one
        for i, v in enumerate(y.tolist()):
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or not 0 <= v < limit:
                raise DataError(f"{source}: label {v!r:.40} of example {i} is not one of the {allowed}")
        return y.astype(np.int32)
    if y.dtype.kind not in "iuf" or (y.dtype.kind == "b"):
        raise DataError(f"{source}: labels must be integers, got {y.dtype}")
    if y.dtype.kind == "f":
        bad = ~np.isfinite(y) | (y != np.floor(y))
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise DataError(f"{source}: label {y[i]} of example {i} is not a whole number; labels must be {allowed}")
    out = (y < 0) | (y >= limit)
    if out.any():
        i = int(np.flatnonzero(out)[0])
        v = int(y[i]) if y.dtype.kind != "f" else y[i]
        raise DataError(f"{source}: label {v} of example {i} is out of range; labels must be {allowed}")
    return y.astype(np.int32)


def require_memory(nbytes: int, what: str, hint: str) -> None:
    """DataError with the figure if ``nbytes`` will not fit in the memory available now."""
    try:
        check_memory(nbytes, what, hint)
    except FileProblem as e:
        raise DataError(str(e)) from None


def check_splits(train: Dataset, test: Dataset | None) -> None:
    """DataError naming both sources unless train and test images have one shape and dtype (and classes)."""
    if test is None:
        return
    (a, b) = (train.x, test.x)
    if a.shape[1:] != b.shape[1:] or a.dtype != b.dtype:
        def desc(x: np.ndarray) -> str:
            return f"{'x'.join(map(str, x.shape[1:]))} {x.dtype}"
        raise DataError(f"train images ({train.name}) are {desc(a)} but test images ({test.name}) are {desc(b)}; "
                        f"save both at one size, channel count and dtype (or pass `size=N` to resize both)")
    if train.num_classes != test.num_classes:
        raise DataError(f"train data ({train.name}) has {train.num_classes} classes but test data ({test.name}) "
                        f"has {test.num_classes}; declare the same num_classes for both")


def read_file(path: Path, what: str) -> bytes:
    """The bytes of a regular file, or DataError (missing, a FIFO or folder, unreadable, too large)."""
    try:
        return read_regular(path, what)
    except FileProblem as e:
        raise DataError(str(e)) from None


def require_path(path: Path, what: str, spec: str) -> Path:
    """``path`` if it exists, else a DataError saying what to pass instead."""
    if not path.exists():
        raise DataError(f"{path} does not exist; pass `spec={spec}` with the {what}")
    return path
