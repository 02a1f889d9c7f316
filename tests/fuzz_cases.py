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


def hostile_npz_members() -> dict[str, bytes]:
    """Name -> raw .npy member bytes that an .npz reader must refuse without allocating what they claim."""
    def npy(header: str, body: bytes = b"") -> bytes:
        h = header.encode("latin1")
        h += b" " * ((64 - (10 + len(h) + 1) % 64) % 64) + b"\n"
        return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(h)) + h + body
    return {
        "claims_terabytes": npy("{'descr': '|u1', 'fortran_order': False, 'shape': (1000000, 1000000, 1000), }",
                                b"\x00" * 64),
        "object_dtype": npy("{'descr': '|O', 'fortran_order': False, 'shape': (2,), }", b"\x80\x02N."),
        "negative_shape": npy("{'descr': '|u1', 'fortran_order': False, 'shape': (-5, 3), }", b"\x00" * 15),
        "bad_header": npy("{'descr': __import__('os'), 'shape': (1,)}", b"\x00"),
        "huge_header_len": b"\x93NUMPY\x02\x00" + struct.pack("<I", 2**31) + b"{",
        "structured": npy("{'descr': [('a', '<i4')], 'fortran_order': False, 'shape': (1,), }", b"\x00" * 4),
    }


def _zip_npz(members: dict[str, bytes]) -> bytes:
    import io
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, raw in members.items():
            z.writestr(name + ".npy", raw)
    return buf.getvalue()


def _npz(tmp: Path, rng: np.random.Generator) -> Iterator[tuple[str, Callable[[], object]]]:
    import io

    from jaxcnn import data as jd

    f = tmp / "d.npz"
    valid = []
    for compress in (False, True):
        buf = io.BytesIO()
        (np.savez_compressed if compress else np.savez)(
            buf, x=random_images(4, (6, 6, 1)), y=np.array([0, 1, 2, 1]), x_test=random_images(2, (6, 6, 1)),
            y_test=np.array([1, 0]), num_classes=np.array(3))
        valid.append(buf.getvalue())
    y_ok = io.BytesIO()
    np.save(y_ok, np.array([0, 1]))

    def case(raw: bytes) -> Callable[[], object]:
        def run() -> object:
            f.write_bytes(raw)
            return jd.load(f"npz:{f}")
        return run

    for name, member in hostile_npz_members().items():
        yield f"hostile:{name}", case(_zip_npz({"x": member, "y": y_ok.getvalue()}))
    while True:
        yield "mutated", case(mutate(valid[int(rng.integers(2))], rng))


def _cifar_bin(tmp: Path, rng: np.random.Generator) -> Iterator[tuple[str, Callable[[], object]]]:
    from data_fixtures import write_cifar_bin

    from jaxcnn import data as jd

    for i in range(1, 6):
        write_cifar_bin(tmp / f"data_batch_{i}.bin", random_images(1), [i])
    write_cifar_bin(tmp / "seed.bin", random_images(2), [3, 4])
    valid = (tmp / "seed.bin").read_bytes()

    def case(raw: bytes) -> Callable[[], object]:
        def run() -> object:
            (tmp / "test_batch.bin").write_bytes(raw)
            return jd.load_cifar(tmp, "cifar10")
        return run

    while True:
        yield "mutated", case(mutate(valid, rng))


def _gzip_bomb(head: bytes, zeros: int) -> bytes:
    """gzip of ``head`` + ``zeros`` zero bytes (256 MB -> ~250 kB), made in 1 MB steps so the maker stays small."""
    import zlib

    c = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    parts, block = [c.compress(head)], bytes(1 << 20)
    for _ in range(zeros >> 20):
        parts.append(c.compress(block))
    return b"".join(parts) + c.flush()


def _idx(tmp: Path, rng: np.random.Generator) -> Iterator[tuple[str, Callable[[], object]]]:
    import gzip

    from data_fixtures import write_idx

    from jaxcnn import data as jd

    d = tmp / "mnist"
    d.mkdir()
    files = {}
    for prefix, n in (("train", 3), ("t10k", 2)):
        write_idx(d / f"{prefix}-images-idx3-ubyte", random_images(n, (5, 5, 1))[..., 0])
        write_idx(d / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 10)
    for p in d.iterdir():
        files[p.name] = p.read_bytes()

    hostile = {  # headers that claim far more than the file holds
        "huge_dims": struct.pack(">I", 0x0803) + struct.pack(">III", 2**31, 2**31, 2**31),
        "many_dims": struct.pack(">I", 0x08FF) + b"\xff" * 1020,
        "gzip_bomb": _gzip_bomb(struct.pack(">I", 0x0803) + struct.pack(">III", 10, 10, 10), 1 << 28),
    }

    def case(name: str, raw: bytes, gz: bool) -> Callable[[], object]:
        def run() -> object:
            for other, data in files.items():
                (d / other).write_bytes(data)
                (d / (other + ".gz")).unlink(missing_ok=True)
            if gz:
                (d / name).unlink()
                (d / (name + ".gz")).write_bytes(raw)
            else:
                (d / name).write_bytes(raw)
            return jd.load_idx(d, "mnist")
        return run

    for key, raw in hostile.items():
        yield f"hostile:{key}", case("t10k-images-idx3-ubyte", raw, key == "gzip_bomb")
    names = sorted(files)
    while True:
        name = names[int(rng.integers(len(names)))]
        gz = bool(rng.integers(2))
        raw = files[name]
        yield "mutated", case(name, mutate(gzip.compress(raw) if gz else raw, rng), gz)


def _list(tmp: Path, rng: np.random.Generator) -> Iterator[tuple[str, Callable[[], object]]]:
    from data_fixtures import write_png

    from jaxcnn import data as jd

    write_png(tmp / "a.png", (255, 0, 0))
    write_png(tmp / "b.png", (0, 0, 255))
    valid = b"# images\na.png 0\nb.png 1\n"
    png = (tmp / "a.png").read_bytes()

    def case(listing: bytes, image: bytes) -> Callable[[], object]:
        def run() -> object:
            (tmp / "l.txt").write_bytes(listing)
            (tmp / "c.png").write_bytes(image)
            return jd.load(f"list:{tmp / 'l.txt'}", size=8)
        return run

    yield "hostile:huge_label", case(b"a.png 0\nb.png 99999999999999999999999999\n", png)
    yield "hostile:float_label", case(b"a.png 0.5\n", png)
    while True:
        if rng.integers(2):
            yield "mutated", case(mutate(valid, rng), png)
        else:
            yield "mutated", case(b"a.png 0\nc.png 1\n", mutate(png, rng))


def _checkpoint(tmp: Path, rng: np.random.Generator) -> Iterator[tuple[str, Callable[[], object]]]:
    from jaxcnn.storage import checkpoint

    tree = {"params": {"w": np.arange(6, dtype=np.float32).reshape(2, 3)}, "step": np.int32(3)}
    checkpoint.save(tmp, "ckpt-000001", tree, {"epoch": 0})
    valid_json = (tmp / "ckpt-000001.json").read_bytes()
    valid_npz = (tmp / "ckpt-000001.npz").read_bytes()
    d = tmp / "run"
    d.mkdir()

    def case(js: bytes, npz: bytes) -> Callable[[], object]:
        def run() -> object:
            (d / "ckpt-000001.json").write_bytes(js)
            (d / "ckpt-000001.npz").write_bytes(npz)
            found, skipped = checkpoint.find_latest(d)
            if found is None:
                raise checkpoint.CheckpointError(skipped[0][1])
            loaded, _ = checkpoint.load(found, tree)
            assert np.array_equal(loaded["params"]["w"], tree["params"]["w"])  # a load is a correct load
            return loaded
        return run

    for text in (b"[]", b"null", b"{}", b'{"array_file": 5}', b'{"array_file": "../x.npz", "sha256": "0"}',
                 b"[" * 100_000, b'{"array_file": "ckpt-000001.npz"}'):
        yield f"hostile:json {text[:20]!r}", case(text, valid_npz)
    while True:
        if rng.integers(2):
            yield "mutated", case(mutate(valid_json, rng), valid_npz)
        else:
            yield "mutated", case(valid_json, mutate(valid_npz, rng))


# ---------------------------------------------------------------------------------------------------------------
# JSON values: a valid document with one value replaced by something hostile (what an edited file holds)

_HOSTILE_VALUES: tuple = (None, True, False, 0, -1, 2**63, -(2**70), 1e308, float("nan"), float("inf"), -0.0, "",
                          "x" * 5000, "../../etc/passwd", [], [None], [[[]]], {}, {"": None}, [1.5, "a"], 10**400)


def mutate_json(value: object, rng: np.random.Generator) -> object:
    """``value`` with one randomly chosen nested value (or key) replaced, dropped or duplicated."""
    import copy

    value = copy.deepcopy(value)
    path: list[tuple[object, object]] = []
    node = value
    while isinstance(node, (dict, list)) and len(node) and (not path or rng.random() < 0.6):
        key = sorted(node, key=str)[int(rng.integers(len(node)))] if isinstance(node, dict) \
            else int(rng.integers(len(node)))
        path.append((node, key))
        node = node[key]
    if not path:
        return _HOSTILE_VALUES[int(rng.integers(len(_HOSTILE_VALUES)))]
    parent, key = path[-1]
    kind = int(rng.integers(4))
    if kind == 0 and isinstance(parent, dict):
        del parent[key]
    elif kind == 1 and isinstance(parent, dict):
        parent[str(_HOSTILE_VALUES[int(rng.integers(len(_HOSTILE_VALUES)))])[:40]] = parent[key]
    else:
        parent[key] = _HOSTILE_VALUES[int(rng.integers(len(_HOSTILE_VALUES)))]
    return value


def _json_or_bytes(valid: object, rng: np.random.Generator) -> bytes:
    """Half the time a JSON-value mutation of ``valid``, else a byte mutation of its text."""
    if rng.integers(2):
        return json.dumps(mutate_json(valid, rng)).encode()
    return mutate(json.dumps(valid).encode(), rng)


def _folder(tmp: Path, rng: np.random.Generator) -> Iterator[tuple[str, Callable[[], object]]]:
    from data_fixtures import write_png

    from jaxcnn import data as jd

    root = tmp / "imgs"
    for cls, rgb in (("cat", (255, 0, 0)), ("dog", (0, 0, 255))):
        (root / cls).mkdir(parents=True)
        write_png(root / cls / "a.png", rgb)
        write_png(root / cls / "b.png", rgb, mode="L")
    png = (root / "cat" / "a.png").read_bytes()
    jpeg = tmp / "j.jpg"
    from PIL import Image

    Image.new("RGB", (9, 7), (10, 200, 30)).save(jpeg, quality=80)
    seeds = [png, jpeg.read_bytes()]

    def case(raw: bytes, name: str = "c.png") -> Callable[[], object]:
        def run() -> object:
            for old in (root / "dog").iterdir():
                if old.name.startswith("c."):
                    old.unlink()
            (root / "dog" / name).write_bytes(raw)
            return jd.load(f"folder:{root}", size=8)
        return run

    yield "hostile:empty_image", case(b"")
    yield "hostile:text_as_png", case(b"not an image at all")
    yield "hostile:png_header_only", case(png[:33])
    while True:
        k = int(rng.integers(2))
        yield "mutated", case(mutate(seeds[k], rng), "c.png" if k == 0 else "c.jpg")


def _safetensors(tmp: Path, rng: np.random.Generator) -> Iterator[tuple[str, Callable[[], object]]]:
    from jaxcnn.storage import safetensors as st

    valid = st.dumps({"w": np.arange(12, dtype=np.float32).reshape(3, 4), "b": np.ones(3, np.float16),
                      "n": np.array([1, 2], np.int64)}, {"format": "pt"})
    header_len = struct.unpack("<Q", valid[:8])[0]
    header = json.loads(valid[8:8 + header_len])
    body = valid[8 + header_len:]
    f = tmp / "w.safetensors"

    def case(raw: bytes) -> Callable[[], object]:
        def run() -> object:
            f.write_bytes(raw)
            tensors, _ = st.load(f)
            assert tensors["w"].shape == (3, 4)  # a load is a correct load
            return tensors
        return run

    def with_header(h: bytes) -> bytes:
        return struct.pack("<Q", len(h)) + h + body

    yield "hostile:header_claims_exabytes", case(struct.pack("<Q", 2**63) + b"{}")
    yield "hostile:overlapping", case(with_header(json.dumps({
        "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
        "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}).encode()))
    yield "hostile:huge_shape", case(with_header(json.dumps({
        "w": {"dtype": "F32", "shape": [2**40, 2**40], "data_offsets": [0, 48]}}).encode()))
    while True:
        if rng.integers(2):
            yield "mutated", case(with_header(json.dumps(mutate_json(header, rng)).encode()))
        else:
            yield "mutated", case(mutate(valid, rng))


def _valid_record() -> dict:
    return {"family": "allconv6", "variant": "allconv6/0.5", "label": "width=0.5", "learnable_params": 1000,
            "macs": 20000, "input_shape": [8, 8, 1], "accuracies": [0.5, 0.6], "mean_accuracy": 0.55,
            "std_accuracy": 0.05, "test_accuracy_per_epoch": [[0.4, 0.45], [0.5, 0.6]], "train_seconds": 3.0,
            "options": {"bn": True}, "state_params": 20, "dataset": "digits", "seeds": [0, 1],
            "train_loss_per_epoch": [[2.0, 2.1], [1.0, 1.1]], "convergence": None, "compile_seconds": 1.0,
            "wall_seconds": 5.0, "epochs": 2, "pad_to": None, "recipe": {"epochs": 2}, "device": "cpu",
            "train_examples": 100}


def _study_record(tmp: Path, rng: np.random.Generator) -> Iterator[tuple[str, Callable[[], object]]]:
    from jaxcnn.study import record, report

    valid = _valid_record()
    f = tmp / "record.json"

    def case(raw: bytes) -> Callable[[], object]:
        def run() -> object:
            f.write_bytes(raw)
            rec = record.read_record(f)
            report.table([rec])  # what reads a record next: it must not trip over a value the reader let in
            return rec
        return run

    yield "hostile:deep_nesting", case(b"[" * 100_000)
    yield "hostile:not_utf8", case(b'{"family": "\xff\xfe"}')
    while True:
        yield "mutated", case(_json_or_bytes(valid, rng))


def _results_jsonl(tmp: Path, rng: np.random.Generator) -> Iterator[tuple[str, Callable[[], object]]]:
    from jaxcnn.study import record, report

    a, b = _valid_record(), {**_valid_record(), "variant": "allconv6/1", "learnable_params": 4000, "macs": 80000}
    f = tmp / "results.jsonl"

    def case(raw: bytes) -> Callable[[], object]:
        def run() -> object:
            f.write_bytes(raw)
            recs = record.read_results(f)
            report.table(recs)
            return recs
        return run

    yield "hostile:huge_number", case(b'{"macs": ' + b"9" * 5000 + b"}\n")
    while True:
        line = _json_or_bytes(a if rng.integers(2) else b, rng)
        yield "mutated", case(json.dumps(a).encode() + b"\n" + line + b"\n")


def _compile_options_cache(tmp: Path, rng: np.random.Generator) -> Iterator[tuple[str, Callable[[], object]]]:
    import os

    os.environ["JAXCNN_CACHE_DIR"] = str(tmp)
    from jaxcnn.lowering import compile_options as co

    names = ("xla", "ynn-dot")
    valid = {"name": "ynn-dot", "seconds": {"xla": 0.02, "ynn-dot": 0.015}, "errors": {"xla": 1e-7, "ynn-dot": 2e-7},
             "rejected": {}, "key": "k"}
    d = tmp / "compile-options"
    d.mkdir()

    class Refused(Exception):
        """The cache ignored the entry (a damaged entry costs a new measurement, never a wrong choice)."""

    def case(raw: bytes) -> Callable[[], object]:
        def run() -> object:
            (d / "k.json").write_bytes(raw)
            import contextlib
            import io

            with contextlib.redirect_stderr(io.StringIO()) as err:
                got = co._read_cache("k", names)
            if got is None:
                if "\n" in err.getvalue().strip():
                    raise AssertionError(f"multi-line warning {err.getvalue()!r}")
                raise Refused()
            assert got.name in names and got.options == co.options(got.name)
            return got
        return run

    yield "hostile:rejected_choice", case(json.dumps({**valid, "rejected": {"ynn-dot": "too inaccurate"}}).encode())
    yield "hostile:unknown_candidate", case(json.dumps({**valid, "name": "--xla_cpu_everything"}).encode())
    yield "hostile:no_accuracy_record", case(json.dumps({**valid, "errors": {}}).encode())
    for bad in (-5, "many", 10**400, True):  # a skipped tuning's run length must be a count
        yield "hostile:tune_above_calls_not_a_count", case(json.dumps({**valid, "tune_above_calls": bad}).encode())
    while True:
        yield "mutated", case(_json_or_bytes(valid, rng))


def _torch_state_dict(tmp: Path, rng: np.random.Generator) -> Iterator[tuple[str, Callable[[], object]]]:
    import io

    import torch

    from jaxcnn.storage import interop

    buf = io.BytesIO()
    torch.save({"conv.weight": torch.arange(24, dtype=torch.float32).reshape(2, 3, 2, 2),
                "bn.num_batches_tracked": torch.tensor(3)}, buf)
    valid = buf.getvalue()
    f = tmp / "w.pth"

    def case(raw: bytes) -> Callable[[], object]:
        def run() -> object:
            f.write_bytes(raw)
            sd = interop.read_state_dict(f)
            assert tuple(sd["conv.weight"].shape) == (2, 3, 2, 2)
            return sd
        return run

    for name, raw in list(hostile_pickles().items())[:12]:
        yield f"hostile:{name}", case(raw)
    while True:
        yield "mutated", case(mutate(valid, rng))


READERS: dict[str, Callable[[Path, np.random.Generator], Iterator[tuple[str, Callable[[], object]]]]] = {
    "cifar_py": _cifar_py,
    "cifar_bin": _cifar_bin,
    "idx": _idx,
    "npz": _npz,
    "list": _list,
    "checkpoint": _checkpoint,
    "folder": _folder,
    "safetensors": _safetensors,
    "study_record": _study_record,
    "results_jsonl": _results_jsonl,
    "compile_options_cache": _compile_options_cache,
    "torch_state_dict": _torch_state_dict,
}


def drive(reader: str, seed: int, n: int) -> dict[str, object]:
    """Run ``n`` cases of ``reader``; return counts, unexpected outcomes and peak memory."""
    from jaxcnn.data import DataError
    from jaxcnn.storage.checkpoint import CheckpointError
    from jaxcnn.storage.interop import InteropError
    from jaxcnn.storage.safetensors import SafetensorsError
    from jaxcnn.study.record import StudyError

    clean = (DataError, CheckpointError, SafetensorsError, StudyError, InteropError)

    rng = np.random.default_rng(seed)
    counts: dict[str, int] = {}
    bad: list[str] = []
    slowest = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        cases = READERS[reader](Path(tmp), rng)
        pending = [next(cases)]  # the reader's set-up (imports, valid files) is not what the cap is about
        base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        for _ in range(n):
            name, run = pending.pop() if pending else next(cases)
            t0 = time.perf_counter()
            try:
                run()
                outcome = "loaded"
            except clean as e:
                outcome = "refused"
                if "\n" in str(e):
                    bad.append(f"{name}: multi-line error {str(e)!r}")
                if name.startswith("hostile:") and "Traceback" in str(e):
                    bad.append(f"{name}: {e}")
            except Exception as e:  # anything else is a reader bug: the CLI would show a traceback
                if type(e).__name__ == "Refused":  # the compile-options cache's quiet refusal
                    outcome = "refused"
                    counts[outcome] = counts.get(outcome, 0) + 1
                    slowest = max(slowest, time.perf_counter() - t0)
                    continue
                outcome = "other"
                bad.append(f"{name}: {type(e).__name__}: {e}"[:300])
            slowest = max(slowest, time.perf_counter() - t0)
            if name.startswith("hostile:") and outcome == "loaded":
                bad.append(f"{name}: loaded, should have been refused")
            counts[outcome] = counts.get(outcome, 0) + 1
    peak_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base_rss) / 1024
    return {"counts": counts, "bad": bad, "peak_extra_mb": peak_mb, "slowest_s": slowest}


if __name__ == "__main__":  # READER[,READER...] SEED N: one JSON report per reader, one line each
    for r in sys.argv[1].split(","):
        print(json.dumps({"reader": r, **drive(r, int(sys.argv[2]), int(sys.argv[3]))}), flush=True)
