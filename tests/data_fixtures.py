"""Writers for the on-disk data formats, from the published format descriptions, independent of jaxcnn.data.

CIFAR binary (https://www.cs.toronto.edu/~kriz/cifar.html): each record is the label byte (CIFAR-100: coarse
then fine) followed by 3072 pixel bytes, the 1024 red values, then green, then blue, each plane row-major 32x32.
IDX (http://yann.lecun.com/exdb/mnist/): magic 0x00 0x00 <type 0x08 = ubyte> <ndim>, then ndim big-endian
uint32 sizes, then the data row-major. CIFAR python version: a cPickle'd dict {'data': uint8 (N, 3072) array,
'labels' (or 'fine_labels'): list of ints}; :func:`write_cifar_py2` assembles such a Python 2 pickle opcode by
opcode, as the official files are.
"""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np


def write_cifar_bin(path: Path, images: np.ndarray, labels: list[int], coarse: list[int] | None = None) -> None:
    """CIFAR binary records; ``images`` is (N, 32, 32, 3) uint8 NHWC."""
    out = bytearray()
    for i, img in enumerate(images):
        if coarse is not None:
            out.append(coarse[i])
        out.append(labels[i])
        for ch in range(3):  # red plane, green plane, blue plane
            for row in range(32):
                for col in range(32):
                    out.append(int(img[row, col, ch]))
    Path(path).write_bytes(bytes(out))


def write_idx(path: Path, arr: np.ndarray, gz: bool = False, magic: int | None = None) -> None:
    """An IDX unsigned-byte file (``magic`` overrides the computed one, to write a broken file)."""
    arr = np.asarray(arr, np.uint8)
    header = struct.pack(">I", magic if magic is not None else 0x0800 | arr.ndim)
    header += b"".join(struct.pack(">I", d) for d in arr.shape)
    body = bytes(int(v) for v in arr.ravel())
    data = header + body
    Path(path).write_bytes(gzip.compress(data) if gz else data)


def _py2_str(b: bytes) -> bytes:
    """A Python 2 str: SHORT_BINSTRING (< 256 bytes) or BINSTRING."""
    if len(b) < 256:
        return b"U" + bytes([len(b)]) + b
    return b"T" + struct.pack("<I", len(b)) + b


def _py2_int(v: int) -> bytes:
    """BININT (4-byte signed little-endian)."""
    return b"J" + struct.pack("<i", v)


def write_cifar_py2(path: Path, data: np.ndarray, labels: list[int], labels_key: bytes = b"labels") -> None:
    """A protocol-2 pickle as Python 2 cPickle writes the CIFAR python batches (uint8 (N, 3072) data)."""
    n, m = data.shape
    ndarray = (
        b"cnumpy.core.multiarray\n_reconstruct\n"  # _reconstruct(ndarray, (0,), 'b')
        b"cnumpy\nndarray\n" + _py2_int(0) + b"\x85" + _py2_str(b"b") + b"\x87R"
        # state: (1, shape, dtype, is_fortran, raw bytes); dtype = dtype('u1', 0, 1) with its own state
        + b"(" + _py2_int(1) + _py2_int(n) + _py2_int(m) + b"\x86"
        + b"cnumpy\ndtype\n" + _py2_str(b"u1") + _py2_int(0) + _py2_int(1) + b"\x87R"
        + b"(" + _py2_int(3) + _py2_str(b"|") + b"NNN" + _py2_int(-1) + _py2_int(-1) + _py2_int(0) + b"tb"
        + b"\x89" + _py2_str(np.ascontiguousarray(data, np.uint8).tobytes()) + b"tb"
    )
    label_list = b"](" + b"".join(_py2_int(v) for v in labels) + b"e"
    body = (b"\x80\x02}(" + _py2_str(b"batch_label") + _py2_str(b"testing batch 1 of 1")
            + _py2_str(b"data") + ndarray + _py2_str(labels_key) + label_list + b"u.")
    Path(path).write_bytes(body)


def write_cifar_py3(path: Path, data: np.ndarray, labels: list[int], labels_key: bytes = b"labels",
                    protocol: int = 2) -> None:
    """The same dict pickled by Python 3 (as users re-save batches)."""
    with open(path, "wb") as f:
        pickle.dump({b"data": data, labels_key: labels, b"filenames": [b"a.png"] * len(labels)}, f,
                    protocol=protocol)


class Payload:
    """Unpickling this calls ``func(*args)``: how a malicious pickle runs code."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def random_images(n: int, shape: tuple[int, ...] = (32, 32, 3), seed: int = 0) -> np.ndarray:
    """Random uint8 NHWC images."""
    return np.random.default_rng(seed).integers(0, 256, (n, *shape), dtype=np.uint8)


def write_png(path: Path, rgb: tuple[int, int, int], size: tuple[int, int] = (10, 6), mode: str = "RGB") -> None:
    """A solid-colour image file (format from the suffix) made with Pillow."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, rgb).convert(mode).save(path)
