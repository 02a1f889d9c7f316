"""CIFAR-10/100 in its binary and python versions (pickles read only through jaxcnn.storage.safe_pickle)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from jaxcnn.data.dataset import CIFAR10_CLASSES, DataError, Dataset, Splits, labels, read_file, require_path
from jaxcnn.storage import safe_pickle

_CIFAR: dict[str, dict[str, Any]] = {
    "cifar10": {
        "num_classes": 10, "label_bytes": 1, "subdirs": ("cifar-10-batches-bin", "cifar-10-batches-py"),
        "bin": ([f"data_batch_{i}.bin" for i in range(1, 6)], ["test_batch.bin"]),
        "py": ([f"data_batch_{i}" for i in range(1, 6)], ["test_batch"]),
        "labels_key": "labels", "meta_txt": "batches.meta.txt", "meta_py": "batches.meta", "names_key": "label_names",
    },
    "cifar100": {
        "num_classes": 100, "label_bytes": 2, "subdirs": ("cifar-100-binary", "cifar-100-python"),
        "bin": (["train.bin"], ["test.bin"]),
        "py": (["train"], ["test"]),
        "labels_key": "fine_labels", "meta_txt": "fine_label_names.txt", "meta_py": "meta",
        "names_key": "fine_label_names",
    },
}
_CIFAR_PIXELS = 32 * 32 * 3
_CIFAR_FILE_RECORDS = 10000  # records per official CIFAR-10 batch file, quoted in truncation messages


def load_cifar(path: str | os.PathLike, variant: str = "cifar10") -> Splits:
    """CIFAR-10 or CIFAR-100 (binary or python version) from the folder the archive extracts to, or its parent."""
    if variant not in _CIFAR:
        raise DataError(f"unknown CIFAR variant {variant!r}; use cifar10 or cifar100")
    cfg = _CIFAR[variant]
    root = require_path(Path(path), f"folder holding the extracted {variant} batches", f"{variant}:PATH")
    candidates = [root] + [root / s for s in cfg["subdirs"]]
    for d in candidates:
        for fmt in ("bin", "py"):
            train_names, test_names = cfg[fmt]
            if (d / train_names[0]).is_file():
                for name in train_names + test_names:
                    if not (d / name).is_file():
                        raise DataError(f"{d / name} is missing ({variant} {fmt} version needs "
                                        f"{', '.join(train_names + test_names)}); extract the full archive")
                read = _read_cifar_bin if fmt == "bin" else _read_cifar_py
                train = [read(d / n, cfg) for n in train_names]
                test = [read(d / n, cfg) for n in test_names]
                names = _cifar_class_names(d, fmt, cfg)
                label = f"{variant}:{d}"
                return {
                    "train": Dataset(np.concatenate([a for a, _ in train]), np.concatenate([b for _, b in train]),
                                     cfg["num_classes"], label, names),
                    "test": Dataset(np.concatenate([a for a, _ in test]), np.concatenate([b for _, b in test]),
                                    cfg["num_classes"], label + " (test)", names),
                }
    expected = " or ".join(f"{cfg[f][0][0]} (" + ("binary" if f == "bin" else "python") + " version)"
                           for f in ("bin", "py"))
    raise DataError(f"no {variant} batches in {root}: expected {expected} there or in "
                    f"{' / '.join(cfg['subdirs'])}; pass `spec={variant}:PATH` with the extracted archive")


def _cifar_pixels_to_nhwc(flat: np.ndarray) -> np.ndarray:
    """(N, 3072) rows of 1024 red, 1024 green, 1024 blue bytes (each row-major 32x32) -> (N, 32, 32, 3)."""
    return np.ascontiguousarray(flat.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))


def _read_cifar_bin(path: Path, cfg: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """Images and labels of one binary batch: records of label byte(s) (CIFAR-100: coarse, fine) + 3072 pixels."""
    rec = cfg["label_bytes"] + _CIFAR_PIXELS
    raw = read_file(path, "CIFAR batch")
    if not raw or len(raw) % rec:
        n = len(raw) // rec
        raise DataError(f"{path} is {len(raw):,} bytes, expected a whole number of {rec:,}-byte records "
                        f"({n:,} records = {n * rec:,} bytes, {n + 1:,} = {(n + 1) * rec:,}; an official batch of "
                        f"{_CIFAR_FILE_RECORDS:,} = {_CIFAR_FILE_RECORDS * rec:,}); the file is truncated or not "
                        f"CIFAR binary, download and extract it again")
    table = np.frombuffer(raw, dtype=np.uint8).reshape(-1, rec)
    y = labels(table[:, cfg["label_bytes"] - 1], str(path), cfg["num_classes"])  # the last byte: the (fine) class
    return _cifar_pixels_to_nhwc(table[:, cfg["label_bytes"]:]), y


def _read_cifar_py(path: Path, cfg: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """Images and labels of one python-version batch, read with :func:`restricted_unpickle`."""
    batch = _str_keys(restricted_unpickle(path), path)
    data = batch.get("data")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != _CIFAR_PIXELS:
        got = f"{data.dtype} array of shape {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DataError(f"{path}: 'data' must be a uint8 array of shape (N, {_CIFAR_PIXELS}), got {got}; "
                        f"is this a CIFAR python batch?")
    key = cfg["labels_key"]
    if key not in batch:
        raise DataError(f"{path} has no '{key}' entry (keys: {', '.join(sorted(batch))}); is this the right CIFAR?")
    y = labels(batch[key], f"{path} '{key}'", cfg["num_classes"])
    if y.shape != (len(data),):
        raise DataError(f"{path}: {y.size} labels for {len(data)} images")
    return _cifar_pixels_to_nhwc(data), y


def _str_keys(obj: Any, path: Path) -> dict[str, Any]:
    """A dict with bytes keys (Python 2 pickles) decoded to str."""
    if not isinstance(obj, dict):
        raise DataError(f"{path} holds a {type(obj).__name__}, expected a dict; is this a CIFAR python batch?")
    return {k.decode("latin1") if isinstance(k, bytes) else str(k): v for k, v in obj.items()}


def _cifar_class_names(d: Path, fmt: str, cfg: dict[str, Any]) -> tuple[str, ...] | None:
    """Class names from the archive's meta file, CIFAR-10's well-known names, or None."""
    names: list[str] | None = None
    if fmt == "bin" and (d / cfg["meta_txt"]).is_file():
        text = read_file(d / cfg["meta_txt"], "CIFAR class-name file").decode("utf-8", "replace")
        names = [s.strip() for s in text.splitlines() if s.strip()]
    elif fmt == "py" and (d / cfg["meta_py"]).is_file():
        meta = _str_keys(restricted_unpickle(d / cfg["meta_py"]), d / cfg["meta_py"])
        raw = meta.get(cfg["names_key"])
        if isinstance(raw, list):
            names = [n.decode("latin1") if isinstance(n, bytes) else str(n) for n in raw]
    if names is not None and len(names) == cfg["num_classes"]:
        return tuple(names)
    return CIFAR10_CLASSES if cfg["num_classes"] == 10 else None




def restricted_unpickle(path: str | os.PathLike) -> Any:
    """The plain data in the pickle ``path``, read by :mod:`jaxcnn.storage.safe_pickle` (no constructor is ever called).

    Dicts, lists, tuples, numbers, bytes, str and numeric NumPy arrays; anything else is a DataError.
    """
    path = Path(path)
    raw = read_file(path, "pickle")
    try:
        return safe_pickle.loads(raw)
    except safe_pickle.PickleRefused as e:
        if e.refused_global:
            raise DataError(f"refusing to unpickle {e.refused_global} from {path}: only plain data and numeric "
                            f"NumPy arrays are allowed; this file is not a plain data file, do not load it") from None
        raise DataError(f"{path} is not a readable pickle of plain data and numeric arrays ({e}); "
                        f"download and extract it again") from None


