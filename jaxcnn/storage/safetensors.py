"""The safetensors format in pure NumPy: read and write tensors other tools load, without torch.

A file is an 8-byte little-endian header length N, N bytes of JSON
``{name: {"dtype": "F32", "shape": [...], "data_offsets": [begin, end]}, "__metadata__": {str: str}}``
and then the tensors' raw little-endian bytes, offsets counted from the end of the header. The reader
trusts nothing: the header length is checked against the bytes present (and a 100 MB cap), every
dtype, shape and offset pair is checked, the tensors must tile the data exactly (no overlaps, no
holes, nothing past the end), so a hostile file gives :class:`SafetensorsError` naming the file and the
entry, and memory is never asked for beyond the file's own bytes. No code is ever run from a file.
"""

from __future__ import annotations

import json
import math
import os
import struct
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np

from jaxcnn.storage import files
from jaxcnn.storage.files import FileProblem, read_regular

__all__ = ["DTYPES", "SafetensorsError", "dumps", "load", "loads", "save"]

DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype("<f8"), "F32": np.dtype("<f4"), "F16": np.dtype("<f2"), "BF16": np.dtype(ml_dtypes.bfloat16),
    "I64": np.dtype("<i8"), "I32": np.dtype("<i4"), "I16": np.dtype("<i2"), "I8": np.dtype("i1"),
    "U64": np.dtype("<u8"), "U32": np.dtype("<u4"), "U16": np.dtype("<u2"), "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}
_CODES = {dt.newbyteorder("=") if dt.byteorder in "<>" else dt: code for code, dt in DTYPES.items()}
MAX_HEADER = 100 * 2**20  # the reference implementation's limit: a larger header is refused unread


class SafetensorsError(ValueError):
    """A safetensors file (or tensors to write) that is invalid; the message names the file and the entry."""


def _code(name: str, a: np.ndarray) -> str:
    dt = a.dtype.newbyteorder("=") if a.dtype.byteorder in "<>" else a.dtype
    if dt not in _CODES:
        raise SafetensorsError(f"tensor {name!r} has dtype {a.dtype}, which safetensors cannot hold "
                               f"(it holds {', '.join(DTYPES)})")
    return _CODES[dt]


def _layout(tensors: Mapping[str, Any], metadata: Mapping[str, str] | None) -> tuple[bytes, list[np.ndarray]]:
    """The file's first part (length + header) and its tensors as contiguous little-endian arrays."""
    header: dict[str, Any] = {}
    if metadata:
        bad = [k for k, v in metadata.items() if not isinstance(k, str) or not isinstance(v, str)]
        if bad:
            raise SafetensorsError(f"metadata must map strings to strings; {bad[0]!r} does not")
        header["__metadata__"] = dict(metadata)
    arrays, offset = [], 0
    for name, value in tensors.items():
        if not isinstance(name, str) or not name or name == "__metadata__":
            raise SafetensorsError(f"tensor names must be non-empty strings other than __metadata__, got {name!r}")
        a = np.asarray(value)
        code = _code(name, a)
        a = np.asarray(a, DTYPES[code])  # DTYPES are explicitly little-endian
        if not a.flags.c_contiguous:  # (not ascontiguousarray: it turns a 0-d array into shape (1,))
            a = a.copy(order="C")
        header[name] = {"dtype": code, "shape": list(a.shape), "data_offsets": [offset, offset + a.nbytes]}
        arrays.append(a)
        offset += a.nbytes
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)  # pad so the data starts 8-byte aligned (as the reference writer does)
    return struct.pack("<Q", len(text)) + text, arrays


def dumps(tensors: Mapping[str, Any], metadata: Mapping[str, str] | None = None) -> bytes:
    """The safetensors bytes of ``tensors`` (name -> array) with optional string ``metadata``."""
    head, arrays = _layout(tensors, metadata)
    return head + b"".join(a.tobytes() for a in arrays)


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise SafetensorsError(f"the header names {k[:80]!r} twice")
        out[k] = v
    return out


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def loads(data: bytes | memoryview, what: str = "safetensors data") -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """``(tensors, metadata)`` from safetensors bytes; tensors are read-only views of ``data``.

    ``what`` names the source in errors (e.g. the file path).
    """
    try:
        return _loads(memoryview(data), what)
    except SafetensorsError as e:
        if str(e).startswith(what):
            raise
        raise SafetensorsError(f"{what} is not a valid safetensors file: {e}") from None


def _loads(data: memoryview, what: str) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    if len(data) < 8:
        raise SafetensorsError(f"it has {len(data)} bytes, fewer than the 8 of the header length")
    (n,) = struct.unpack("<Q", data[:8])
    if n > len(data) - 8 or n > MAX_HEADER:
        raise SafetensorsError(f"its header length {n} exceeds the {len(data) - 8} bytes after it"
                               + (f" (or the {MAX_HEADER}-byte limit)" if n > MAX_HEADER else ""))
    try:
        header = json.loads(bytes(data[8:8 + n]).decode("utf-8"), object_pairs_hook=_no_duplicates)
    except (ValueError, RecursionError) as e:  # ValueError: bad UTF-8 or JSON, or a 5000-digit number
        raise SafetensorsError(f"its header is not JSON ({type(e).__name__}: {str(e)[:80]})") from None
    if not isinstance(header, dict):
        raise SafetensorsError(f"its header is a JSON {type(header).__name__}, not an object")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise SafetensorsError("its __metadata__ is not an object of strings")
    body = data[8 + n:]
    entries = []
    for name, info in header.items():
        if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
            raise SafetensorsError(f"entry {name[:80]!r} is not {{dtype, shape, data_offsets}}")
        dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
        if not isinstance(dtype, str) or dtype not in DTYPES:
            raise SafetensorsError(f"entry {name[:80]!r} has dtype {str(dtype)[:20]!r}; readable: {', '.join(DTYPES)}")
        if not isinstance(shape, list) or len(shape) > 64 or not all(_int(d) for d in shape):
            raise SafetensorsError(f"entry {name[:80]!r} has shape {str(shape)[:60]}, not a list of sizes >= 0")
        if math.prod(max(d, 1) for d in shape) >= 2**63:  # NumPy indexes with int64, even an empty array
            raise SafetensorsError(f"entry {name[:80]!r} has shape {str(shape)[:60]}, beyond 2**63 elements")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(_int(o) for o in offsets)
                and offsets[0] <= offsets[1] <= len(body)):
            raise SafetensorsError(f"entry {name[:80]!r} has data_offsets {str(offsets)[:60]}, not a range within "
                                   f"the {len(body)} data bytes")
        size = math.prod(shape) * DTYPES[dtype].itemsize  # Python ints: a huge shape cannot overflow
        if size != offsets[1] - offsets[0]:
            raise SafetensorsError(f"entry {name[:80]!r} is {dtype} {shape[:8]}, {size} bytes, but its data_offsets "
                                   f"span {offsets[1] - offsets[0]}")
        entries.append((offsets[0], offsets[1], name, dtype, shape))
    end = 0
    for begin, stop, name, *_ in sorted(entries):
        if begin != end:
            raise SafetensorsError(f"entry {name[:80]!r} starts at byte {begin} of the data, but the previous tensor "
                                   f"ends at {end} ({'overlapping' if begin < end else 'a hole'})")
        end = stop
    if end != len(body):
        raise SafetensorsError(f"its tensors end at byte {end} of the data, but {len(body)} bytes follow the header")
    tensors = {}
    for begin, stop, name, dtype, shape in entries:
        count = (stop - begin) // DTYPES[dtype].itemsize
        tensors[name] = np.frombuffer(body, DTYPES[dtype], count, begin).reshape(shape)
    return tensors, dict(metadata)


def load(path: str | Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """``(tensors, metadata)`` of the safetensors file ``path`` (a regular file, validated as :func:`loads`)."""
    try:
        data = read_regular(path, "safetensors file")
    except FileProblem as e:
        raise SafetensorsError(str(e)) from None
    return loads(data, f"safetensors file {path}")


def save(path: str | Path, tensors: Mapping[str, Any], metadata: Mapping[str, str] | None = None) -> Path:
    """Write ``tensors`` to ``path`` atomically (temporary file + rename); returns the path.

    The tensors are streamed to the temporary file, never joined in memory (a VGG-16 is 0.5 GB).
    """
    path = Path(path)
    head, arrays = _layout(tensors, metadata)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(head)
            for a in arrays:
                f.write(memoryview(a.reshape(-1).view(np.uint8)))  # zero-copy: contiguous bytes
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # as files.atomic_write_bytes: results are meant to be shared
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise files.naming(e, path) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
