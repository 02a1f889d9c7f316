"""Hostile and mutated files for every on-disk reader, and a driver that loads them in a child process.

``python tests/fuzz_cases.py READER SEED N`` writes N cases for READER (hand-crafted hostile files first, then
random byte flips, truncations and insertions of a valid file), loads each with the jaxcnn reader, and prints
one JSON object: per-outcome counts, every outcome that is neither a correct load nor the reader's clean error
(DataError / CheckpointError), and the peak resident memory. The parent test runs it in a subprocess so that a
segfault shows up as a return code and a hang as a timeout, instead of taking the test run down.
"""

from __future__ import annotations

import json
import pickle
import resource
import struct
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

_TESTS = Path(__file__).resolve().parent
for _p in (_TESTS.parent, _TESTS):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

from data_fixtures import random_images, write_cifar_py2  # noqa: E402

# ---------------------------------------------------------------------------------------------------------------
# Hand-crafted hostile pickles (protocol 2, opcode by opcode)


def _s(b: bytes) -> bytes:
    return (b"U" + bytes([len(b)]) + b) if len(b) < 256 else (b"T" + struct.pack("<i", len(b)) + b)


def _i(v: int) -> bytes:
    return b"J" + struct.pack("<i", v)


def _dtype(code: bytes, order: bytes = b"|", flags: int = 0, names: bytes = b"N", elsize: int = -1) -> bytes:
    return (b"cnumpy\ndtype\n" + _s(code) + _i(0) + _i(1) + b"\x87R"
            + b"(" + _i(3) + _s(order) + b"N" + names + b"N" + _i(elsize) + _i(-1) + _i(flags) + b"tb")


def _array(shape: tuple[int, ...], dtype: bytes, raw: bytes, klass: bytes = b"cnumpy\nndarray\n") -> bytes:
    shp = b"(" + b"".join(_i(d) if -2**31 <= d < 2**31 else b"\x8a\x08" + struct.pack("<q", d) for d in shape) + b"t"
    return (b"cnumpy.core.multiarray\n_reconstruct\n" + klass + _i(0) + b"\x85" + _s(b"b") + b"\x87R"
            + b"(" + _i(1) + shp + dtype + b"\x89" + _s(raw) + b"tb")


def _batch(data: bytes, labels: bytes = b"](e") -> bytes:
    return b"\x80\x02}(" + _s(b"data") + data + _s(b"labels") + labels + b"u."


def hostile_pickles() -> dict[str, bytes]:
    """Name -> bytes of pickles that must be refused (never loaded, never crash)."""
    u1 = _dtype(b"u1")
    cases = {
        # issue 16 item 1: object dtype whose flags (0) strip the 'holds objects' marker -> raw bytes as pointers
        "object_dtype_flags0": _batch(_array((2,), _dtype(b"O8", flags=0), b"A" * 16)),
        "object_dtype": _batch(_array((2,), _dtype(b"O8", flags=63), b"A" * 16)),
        "void_dtype": _batch(_array((2,), _dtype(b"V8"), b"A" * 16)),
        "unicode_dtype": _batch(_array((2,), _dtype(b"U2", order=b"<"), b"A" * 16)),
        "bytes_dtype": _batch(_array((2,), _dtype(b"S8"), b"A" * 16)),
        "datetime_dtype": _batch(_array((2,), _dtype(b"M8", order=b"<"), b"A" * 16)),
        "complex_dtype": _batch(_array((1,), _dtype(b"c16", order=b"<"), b"A" * 16)),
        "structured_dtype": _batch(_array((2,), _dtype(b"u1", names=b"(" + _s(b"a") + b"t"), b"AB")),
        "u1_with_object_flags": _batch(_array((2,), _dtype(b"u1", flags=63), b"AB")),
        "u1_wrong_itemsize": _batch(_array((2,), _dtype(b"u1", elsize=8), b"AB")),
        "shape_claims_terabytes": _batch(_array((2**20, 2**20, 3072), u1, b"A" * 64)),
        "shape_overflows_int64": _batch(_array((2**62, 2**62, 16), u1, b"")),
        "negative_dimension": _batch(_array((-1, 4), u1, b"A" * 4)),
        "data_too_short": _batch(_array((2, 3072), u1, b"A" * 6000)),
        "ndarray_subclass": _batch(_array((2,), u1, b"AB", klass=b"cnumpy\nrecarray\n")),
        "reconstruct_with_dtype_class": _batch(_array((2,), u1, b"AB", klass=b"cnumpy\ndtype\n")),
        "os_system": b"\x80\x02cposix\nsystem\n" + _s(b"true") + b"\x85R.",
        "builtins_eval": b"\x80\x02c__builtin__\neval\n" + _s(b"1") + b"\x85R.",
        "numpy_load": b"\x80\x02cnumpy\nload\n" + _s(b"/etc/passwd") + b"\x85R.",
        "codecs_rot13": b"\x80\x02c_codecs\nencode\n" + b"X\x01\x00\x00\x00x" + _s(b"rot13") + b"\x86R.",
        "build_on_dict": b"\x80\x02}" + b"}" + b"b.",
        "reduce_on_list": b"\x80\x02])R.",
        "memo_get_unset": b"\x80\x02h\x07.",
        "self_containing_list": b"\x80\x02]q\x00h\x00a.",
        "deep_nesting": b"\x80\x02" + b"]" * 100_000 + b"a" * 99_999 + b".",
        "huge_long4": b"\x80\x02\x8b" + struct.pack("<i", 2**30) + b"\x01" * 16 + b".",
        "binbytes8_claims_exabytes": b"\x80\x05\x8e" + struct.pack("<Q", 2**63) + b"xx.",
        "out_of_band_buffer": b"\x80\x05\x97.",
        "scalar_wrong_size": (b"\x80\x02cnumpy.core.multiarray\nscalar\n" + _dtype(b"i8", order=b"<")
                              + _s(b"abc") + b"\x86R."),
        "dtype_as_value": b"\x80\x02" + u1 + b".",
        "unbuilt_array_as_value": _batch(b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n" + _i(0)
                                         + b"\x85" + _s(b"b") + b"\x87R"),
        "protocol_0_text": b"(dp0\nS'data'\np1\nI1\ns.",
        "unhashable_key": b"\x80\x02}(]Nu.",
        "stack_underflow": b"\x80\x02u.",
        "stop_with_marks_open": b"\x80\x02((N.",
        "empty": b"",
    }
    # one 1 MB buffer named by 20,000 arrays: they must be views of it, not 20 GB of copies
    big = 1_000_000
    one = b"cnumpy.core.numeric\n_frombuffer\n(h\x00" + u1 + _i(big) + b"\x85" + _s(b"C") + b"tR"
    cases["shared_buffer_many_arrays"] = (b"\x80\x05\x8e" + struct.pack("<Q", big) + b"\x00" * big + b"\x940]("
                                          + one * 20_000 + b"e.")
    return cases


# ---------------------------------------------------------------------------------------------------------------
# Valid files to mutate, and readers


def mutate(data: bytes, rng: np.random.Generator) -> bytes:
    """A random corruption: byte flips, a truncation, an insertion or a duplicated run."""
    b = bytearray(data)
    kind = rng.integers(4)
    if kind == 0:
        for _ in range(int(rng.integers(1, 9))):
            i = int(rng.integers(len(b)))
            b[i] = int(rng.integers(256))
    elif kind == 1:
        del b[int(rng.integers(len(b))):]
    elif kind == 2:
        i = int(rng.integers(len(b) + 1))
        b[i:i] = rng.integers(0, 256, int(rng.integers(1, 9)), dtype=np.uint8).tobytes()
    else:
        i, j = sorted(int(v) for v in rng.integers(0, len(b) + 1, 2))
        b[j:j] = b[i:j][:64]
    return bytes(b)


def _cifar_py_seeds(tmp: Path) -> list[bytes]:
    x = random_images(2).transpose(0, 3, 1, 2).reshape(2, -1)
    write_cifar_py2(tmp / "py2", x, [3, 7])
    seeds = [(tmp / "py2").read_bytes()]
    for protocol in (2, 4, 5):
        seeds.append(pickle.dumps({b"data": x, b"labels": [3, 7], b"filenames": [b"a.png", b"b.png"]},
                                  protocol=protocol))
    return seeds


def _cifar_py(tmp: Path, rng: np.random.Generator) -> Iterator[tuple[str, Callable[[], object]]]:
    """Cases for the CIFAR python reader: a folder of valid batches whose test_batch is the hostile file."""
    from jaxcnn import data as jd

    d = tmp / "cifar-10-batches-py"
    d.mkdir()
    x = random_images(2).transpose(0, 3, 1, 2).reshape(2, -1)
    for i in range(1, 6):
        write_cifar_py2(d / f"data_batch_{i}", x, [1, 2])
    seeds = _cifar_py_seeds(tmp)

    def case(raw: bytes) -> Callable[[], object]:
        def run() -> object:
            (d / "test_batch").write_bytes(raw)
            return jd.load_cifar(tmp, "cifar10")
        return run

    for name, raw in hostile_pickles().items():
        yield f"hostile:{name}", case(raw)
    while True:
        seed = seeds[int(rng.integers(len(seeds)))]
        yield "mutated", case(mutate(seed, rng))


READERS: dict[str, Callable[[Path, np.random.Generator], Iterator[tuple[str, Callable[[], object]]]]] = {
    "cifar_py": _cifar_py,
}


def drive(reader: str, seed: int, n: int) -> dict[str, object]:
    """Run ``n`` cases of ``reader``; return counts, unexpected outcomes and peak memory."""
    from jaxcnn.checkpoint import CheckpointError
    from jaxcnn.data import DataError

    rng = np.random.default_rng(seed)
    counts: dict[str, int] = {}
    bad: list[str] = []
    slowest = 0.0
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with tempfile.TemporaryDirectory() as tmp:
        cases = READERS[reader](Path(tmp), rng)
        for _ in range(n):
            name, run = next(cases)
            t0 = time.perf_counter()
            try:
                run()
                outcome = "loaded"
            except (DataError, CheckpointError) as e:
                outcome = "refused"
                if "\n" in str(e):
                    bad.append(f"{name}: multi-line error {str(e)!r}")
                if name.startswith("hostile:") and "Traceback" in str(e):
                    bad.append(f"{name}: {e}")
            except Exception as e:  # anything else is a reader bug: the CLI would show a traceback
                outcome = "other"
                bad.append(f"{name}: {type(e).__name__}: {e}"[:300])
            slowest = max(slowest, time.perf_counter() - t0)
            if name.startswith("hostile:") and outcome == "loaded":
                bad.append(f"{name}: loaded, should have been refused")
            counts[outcome] = counts.get(outcome, 0) + 1
    peak_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base_rss) / 1024
    return {"counts": counts, "bad": bad, "peak_extra_mb": peak_mb, "slowest_s": slowest}


if __name__ == "__main__":
    print(json.dumps(drive(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))))
