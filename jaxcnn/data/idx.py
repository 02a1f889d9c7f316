"""IDX files (MNIST, Fashion-MNIST), plain or gzipped."""

from __future__ import annotations

import math
import os
import zlib
from pathlib import Path

import numpy as np

from jaxcnn.data.dataset import (
    DIGIT_CLASSES,
    FASHION_CLASSES,
    DataError,
    Dataset,
    Splits,
    labels,
    read_file,
    require_memory,
    require_path,
)

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
    path = require_path(Path(path), "IDX file", "mnist:PATH")
    raw = read_file(path, "IDX file")
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
        require_memory(expected, f"{path} (dimensions {dims})", "the header is corrupt, download the file again")
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
    root = require_path(Path(path), "folder holding the four IDX files", f"{name}:PATH")
    if not root.is_dir():
        raise DataError(f"{root} is not a folder; pass `spec={name}:PATH` with the folder holding the IDX files")
    names = FASHION_CLASSES if name == "fashion" else DIGIT_CLASSES
    out: Splits = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        files = {}
        for part in ("images-idx3-ubyte", "labels-idx1-ubyte"):
            found = _find_idx(root, f"{prefix}-{part}")
            if found is None:
                raise DataError(f"{root / (prefix + '-' + part)}[.gz] does not exist; pass `spec={name}:PATH` with "
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


