"""User .npz archives, read member by member without pickle."""

from __future__ import annotations

import os
import zipfile
import zlib
from pathlib import Path

import numpy as np

from jaxcnn.data.dataset import DataError, Dataset, Splits, class_count, labels, require_path
from jaxcnn.storage.files import FileProblem, check_memory, open_regular

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
    file = require_path(Path(file), ".npz file with arrays x and y", "npz:FILE")
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


