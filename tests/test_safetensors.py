"""Issue 15: the pure-NumPy safetensors reader and writer (jaxcnn.storage.safetensors), no torch needed.

The writer's bytes are checked by parsing the format by hand (length, JSON header, raw little-endian
data); the reader must refuse every hostile file with an error naming it.
"""

import json
import struct

import numpy as np
import pytest

from jaxcnn.storage import interop, safetensors


def _file(header, data=b""):
    text = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + data


F32 = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}
HOSTILE = {
    "empty": b"",
    "header length past the end": struct.pack("<Q", 2**63) + b"{}",
    "header not JSON": _file(b"{not json"),
    "header a list": _file([1, 2]),
    "unknown dtype": _file({"a": {**F32, "dtype": "F99"}}, bytes(8)),
    "negative size": _file({"a": {**F32, "shape": [-1]}}, bytes(8)),
    "huge shape, few bytes": _file({"a": {**F32, "shape": [2**40, 2**40]}}, bytes(8)),
    "offsets past the end": _file({"a": {**F32, "data_offsets": [0, 8]}}, bytes(4)),
    "overlap": _file({"a": F32, "b": {**F32, "data_offsets": [4, 12]}}, bytes(12)),
    "hole": _file({"a": F32}, bytes(12)),
    "duplicate name": _file(b'{"a": %s, "a": %s}' % (json.dumps(F32).encode(), json.dumps(F32).encode()), bytes(8)),
    "metadata not strings": _file({"__metadata__": {"k": 1}}),
    "bool offsets": _file({"a": {**F32, "data_offsets": [False, 8]}}, bytes(8)),
    "extra field": _file({"a": {**F32, "code": "x"}}, bytes(8)),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_safetensors_reader_refuses_hostile_files(case, tmp_path):
    path = tmp_path / "x.safetensors"
    path.write_bytes(HOSTILE[case])
    with pytest.raises(safetensors.SafetensorsError, match="x.safetensors"):
        safetensors.load(path)
    with pytest.raises(interop.InteropError, match="x.safetensors"):
        interop.read_state_dict(path)


def test_safetensors_writer_layout_and_dtypes(tmp_path):
    import ml_dtypes

    tensors = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "h": np.array([1.5, -2], ml_dtypes.bfloat16),
               "n": np.array(7, np.int64), "e": np.zeros((0, 3), np.float16), "m": np.array([True, False]),
               "big": np.arange(3, dtype=">f8")}  # big-endian in, little-endian on disk
    path = safetensors.save(tmp_path / "t.safetensors", tensors, {"who": "test"})
    raw = path.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    assert (8 + n) % 8 == 0 and header["__metadata__"] == {"who": "test"}
    assert header["w"] == {"dtype": "F32", "shape": [2, 3], "data_offsets": header["w"]["data_offsets"]}
    b0, b1 = header["big"]["data_offsets"]
    assert raw[8 + n + b0:8 + n + b1] == np.arange(3, dtype="<f8").tobytes()
    loaded, meta = safetensors.load(path)
    assert meta == {"who": "test"} and set(loaded) == set(tensors)
    for k, v in tensors.items():
        assert loaded[k].dtype.name == v.dtype.name and np.array_equal(loaded[k], v), k
    with pytest.raises(safetensors.SafetensorsError, match="complex64"):
        safetensors.dumps({"c": np.zeros(2, np.complex64)})
