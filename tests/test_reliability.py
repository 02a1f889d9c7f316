"""Issue 16, one test per numbered item: hostile files, concurrent runs and corrupt checkpoints."""

import pickle
import subprocess
import sys

import numpy as np
import pytest
from data_fixtures import random_images, write_cifar_py2
from fuzz_cases import hostile_pickles
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from jaxcnn import data as jd
from jaxcnn import safe_pickle

# ---------------------------------------------------------------------------------------------------------------
# 1. A crafted CIFAR python batch must not crash the process (forged object pointers through numpy.dtype state)


def _cifar_py_folder(root, test_batch: bytes):
    d = root / "cifar-10-batches-py"
    d.mkdir()
    x = random_images(1).transpose(0, 3, 1, 2).reshape(1, -1)
    for i in range(1, 6):
        write_cifar_py2(d / f"data_batch_{i}", x, [i])
    (d / "test_batch").write_bytes(test_batch)
    return d


def test_item1_forged_object_dtype_pickle_is_refused_without_crashing(tmp_path):
    evil = hostile_pickles()["object_dtype_flags0"]
    _cifar_py_folder(tmp_path, evil)
    # plain pickle really does build an object array out of the raw bytes 'AAAA...' (the forged pointers)
    probe = subprocess.run([sys.executable, "-c", "import pickle,sys; a = pickle.loads(sys.stdin.buffer.read(), "
                            "encoding='bytes')[b'data']; print(a.dtype)"], input=evil, capture_output=True)
    assert probe.returncode != 0 or probe.stdout.strip() == b"object", probe
    # jaxcnn refuses it, in a child process so that a crash would show as a return code
    code = ("import sys; from jaxcnn import data as jd\n"
            "try:\n    jd.load_cifar(sys.argv[1])\nexcept jd.DataError as e:\n    print('REFUSED', e)\n")
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("REFUSED") and "test_batch" in proc.stdout and "'O8'" in proc.stdout


@pytest.mark.parametrize("name", sorted(hostile_pickles()))
def test_item1_every_hostile_pickle_is_a_one_line_data_error(tmp_path, name):
    p = tmp_path / "batch"
    p.write_bytes(hostile_pickles()[name])
    try:
        value = jd.restricted_unpickle(p)
    except jd.DataError as e:
        assert str(p) in str(e) and "\n" not in str(e)
    else:  # only the many-views case is plain data; it must not have copied the buffer
        assert name == "shared_buffer_many_arrays"
        assert len(value) == 20_000 and all(np.shares_memory(a, value[0]) for a in value[:100])


_numeric = hnp.arrays(st.sampled_from([np.uint8, np.int16, np.int32, np.int64, np.uint64, np.float16, np.float32,
                                       np.float64, np.bool_]),
                      hnp.array_shapes(min_dims=0, max_dims=3, max_side=4))
_leaf = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=False),
                  st.binary(max_size=300), st.text(max_size=20), _numeric)
_plain = st.recursive(_leaf, lambda c: st.one_of(st.lists(c, max_size=4), st.tuples(c, c),
                                                  st.dictionaries(st.one_of(st.text(max_size=5), st.binary(max_size=5),
                                                                            st.integers()), c, max_size=4)),
                      max_leaves=12)


def _same(a, b) -> bool:
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


@settings(max_examples=150, deadline=None)
@given(value=_plain, protocol=st.sampled_from([2, 3, 4, 5]), fortran=st.booleans())
def test_item1_safe_pickle_reads_what_pickle_writes(value, protocol, fortran):
    """Against pickle itself as the reference: plain data and numeric arrays (C or Fortran order) read back equal."""
    if fortran and isinstance(value, np.ndarray):
        value = np.asfortranarray(value)
    raw = pickle.dumps(value, protocol=protocol)
    assert _same(value, pickle.loads(raw))  # the reference agrees with itself
    assert _same(value, safe_pickle.loads(raw))


def test_item1_numpy_scalars_and_byte_orders():
    value = {"s": np.int64(-3), "f": np.float32(1.5), "be": np.arange(4, dtype=">u4"), "le": np.arange(3, dtype="<f8")}
    for protocol in (2, 5):
        got = safe_pickle.loads(pickle.dumps(value, protocol=protocol))
        assert got["s"] == -3 and got["s"].dtype == np.int64 and got["f"] == np.float32(1.5)
        assert got["be"].dtype == np.dtype(">u4") and got["be"].tolist() == [0, 1, 2, 3]
        assert got["le"].tolist() == [0.0, 1.0, 2.0]
