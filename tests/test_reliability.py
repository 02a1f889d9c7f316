"""Issue 16, one test per numbered item: hostile files, concurrent runs and corrupt checkpoints."""

import pickle
import re
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
from jaxcnn.storage import safe_pickle

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


# ---------------------------------------------------------------------------------------------------------------
# Shared helpers for items 2-10


def _cli(capsys, *argv) -> tuple[int, str]:
    """Run the CLI in-process; (exit status, stderr). An exception escaping main() fails the test."""
    from jaxcnn.cli import main

    rc = main([str(a) for a in argv])
    return rc, capsys.readouterr().err


def _one_line(err: str, *needles: str) -> None:
    lines = [line for line in err.strip().splitlines() if not line.startswith(("skipped checkpoint", "note: "))]
    assert len(lines) == 1 and "Traceback" not in err, err
    for n in needles:
        assert n in lines[0], (n, lines[0])


_HOLD = ("import sys, time; from jaxcnn.storage.outdir import exclusive\n"
         "with exclusive(sys.argv[1]):\n    print('held', flush=True); time.sleep(120)\n")


def _holder(folder):
    """A child process holding ``folder``'s lock until it is killed."""
    proc = subprocess.Popen([sys.executable, "-c", _HOLD, str(folder)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


# ---------------------------------------------------------------------------------------------------------------
# 2. Two runs into one --out: the second is refused while the first lives; a killed run's lock is not stale


def test_item2_output_folder_is_exclusive_and_a_killed_runs_lock_is_released(tmp_path, capsys):
    from jaxcnn.storage.outdir import OutputFolderError, exclusive

    out = tmp_path / "run"
    proc = _holder(out)
    try:
        with pytest.raises(OutputFolderError, match=rf"in use by another run \(pid {proc.pid} "):
            with exclusive(out):
                pass
        # the CLI refuses before reading any data: one line, exit 2
        rc, err = _cli(capsys, "train", "allconv6_1", "--data", "synthetic:64", "--out", out)
        assert rc == 2
        _one_line(err, str(out), "in use by another run", "choose another --out")
    finally:
        proc.kill()  # SIGKILL: no cleanup runs in the child
        proc.wait()
    with exclusive(out) as lock:  # the kernel released the flock: the lock file left behind is not stale
        assert f"pid {proc.pid}" in lock.previous
        with exclusive(out) as inner:  # re-entrant within one process (train holds it around fit)
            assert inner is lock
    with exclusive(out) as lock:
        assert lock.previous == ""  # the last holder finished cleanly


# ---------------------------------------------------------------------------------------------------------------
# 3. Resume with corrupt checkpoints


def _save_ckpts(folder, steps, corrupt=()):
    from jaxcnn.storage import checkpoint

    tree = {"w": np.arange(4, dtype=np.float32)}
    for s in steps:
        checkpoint.save(folder, f"ckpt-{s:06d}", tree, {"epoch": s - 1})
        if s in corrupt:
            npz = folder / f"ckpt-{s:06d}.npz"
            npz.write_bytes(npz.read_bytes()[:50])
    return tree


def test_item3_prune_never_deletes_a_good_checkpoint_for_a_corrupt_one(tmp_path):
    from jaxcnn.storage import checkpoint

    _save_ckpts(tmp_path, [1, 2, 3, 4, 5], corrupt=(4, 5))
    checkpoint.prune(tmp_path, keep=2)
    left = sorted(p.name for p in tmp_path.glob("ckpt-*.json"))
    assert left == ["ckpt-000002.json", "ckpt-000003.json", "ckpt-000004.json", "ckpt-000005.json"]
    found, skipped = checkpoint.find_latest(tmp_path)
    assert found.name == "ckpt-000003.json"
    assert [p.name for p, _ in skipped] == ["ckpt-000005.json", "ckpt-000004.json"]
    assert all("sha256" in why for _, why in skipped)


@pytest.mark.parametrize("text, needle", [
    ("[]", "holds a JSON list"), ("null", "holds a JSON NoneType"), ("{}", "'array_file'"),
    ('{"array_file": 7, "sha256": "x"}', "'array_file'"), ('{"array_file": "ckpt-000001.npz"}', "'sha256'"),
    ('{"array_file": "../../etc/passwd", "sha256": "' + "0" * 64 + '"}', "not a file name beside it"),
    ("{not json", "is corrupt"),
])
def test_item3_edited_checkpoint_json_is_a_one_line_error(tmp_path, text, needle):
    from jaxcnn.storage import checkpoint

    tree = _save_ckpts(tmp_path, [1])
    (tmp_path / "ckpt-000001.json").write_text(text)
    with pytest.raises(checkpoint.CheckpointError, match=re.escape(needle)) as e:
        checkpoint.load(tmp_path / "ckpt-000001.json", tree)
    assert "\n" not in str(e.value) and "ckpt-000001.json" in str(e.value)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A finished 2-epoch CLI run (synthetic 64 images at 8x8), copied by the tests that change it.

    Its schedule is constant, so the tests may extend it with more epochs (a cosine run may not: issue 26).
    """
    from jaxcnn.cli import main

    out = tmp_path_factory.mktemp("run") / "out"
    assert main(["train", "allconv6_1_bn", "--data", "synthetic:64", "--input-size", "8", "--epochs", "2",
                 "--batch", "16", "--schedule", "constant", "--out", str(out), "--quiet"]) == 0
    return out


def _train_args(out, *extra):
    return ["train", "allconv6_1_bn", "--data", "synthetic:64", "--input-size", "8", "--batch", "16",
            "--schedule", "constant", "--out", out, "--quiet", *extra]


@pytest.mark.slow
def test_item3_resume_reports_skipped_checkpoints_refuses_when_none_valid_and_cleans_tmp(
        finished_run, tmp_path, capsys):
    import json
    import shutil

    from jaxcnn.storage import checkpoint

    out = tmp_path / "out"
    shutil.copytree(finished_run, out)
    (out / ".ckpt-000003.npz.x1y2.tmp").write_bytes(b"half a write")  # left by a killed atomic write
    newest = out / "ckpt-000002.npz"
    newest.write_bytes(newest.read_bytes()[:-10])
    rc, err = _cli(capsys, *_train_args(out, "--epochs", "3", "--resume"))
    assert rc == 0, err
    assert "skipped checkpoint ckpt-000002.json: " in err and "sha256" in err
    assert f"resumed from {out / 'ckpt-000001.json'} after epoch 1 of 3" in err
    assert not list(out.glob("*.tmp"))
    # the resumed run rewrote epochs 2 and 3; both are valid and kept, nothing corrupt remains newer
    assert sorted(p.name for p in out.glob("ckpt-*.json")) == ["ckpt-000002.json", "ckpt-000003.json"]
    assert all(checkpoint.verify(p) for p in out.glob("ckpt-*.json"))
    assert len(json.loads((out / "result.json").read_text())["test_accuracy"]) == 1
    # every checkpoint corrupt: refused with exit 2, nothing restarts from epoch 0
    for p in out.glob("ckpt-*.npz"):
        p.write_bytes(b"garbage")
    before = sorted(p.name for p in out.iterdir())
    rc, err = _cli(capsys, *_train_args(out, "--epochs", "4", "--resume"))
    assert rc == 2
    _one_line(err, "none of the 2 checkpoint(s)", "restore a copy")
    assert sorted(p.name for p in out.iterdir()) == before  # nothing deleted or overwritten


# ---------------------------------------------------------------------------------------------------------------
# 4. Resume refuses a changed run; the epoch count is checked


@pytest.mark.slow
@pytest.mark.parametrize("change, needle", [
    (["--test-fraction", "0.5"], "test_fraction: 0.2 -> 0.5"),
    (["--input-size", "12"], "input_size: 8 -> 12"),
    (["--option", "dropout=0.25"], "options: {} -> {'dropout': 0.25}"),
    (["--lr", "0.1"], "config.lr: 0.05 -> 0.1"),
    (["--data", "synthetic:80"], "data_sha256"),
])
def test_item4_resume_refuses_a_run_that_differs(finished_run, capsys, change, needle):
    args = _train_args(finished_run, "--epochs", "3", "--resume")
    for i in range(0, len(change), 2):  # replace or append the changed option
        if change[i] in args:
            args[args.index(change[i]) + 1] = change[i + 1]
        else:
            args += change[i:i + 2]
    rc, err = _cli(capsys, *args)
    assert rc == 2
    _one_line(err, "was written by a different run", needle)


@pytest.mark.slow
def test_item4_identity_is_recorded_and_fewer_epochs_are_refused(finished_run, capsys):
    import json

    from jaxcnn.storage import checkpoint

    identity = checkpoint.read_meta(checkpoint.latest(finished_run))["identity"]
    assert identity["test_fraction"] == 0.2 and identity["input_size"] == 8 and identity["options"] == {}
    assert identity["input_shape"] == [8, 8, 3] and len(identity["data_sha256"]) == 64
    assert json.loads((finished_run / "result.json").read_text())["identity"] == identity
    rc, err = _cli(capsys, *_train_args(finished_run, "--epochs", "1", "--resume"))
    assert rc == 2
    _one_line(err, "already trained 2 epochs, more than --epochs 1", "pass --epochs 2 or more")


@pytest.mark.slow
def test_item4_checkpoints_from_before_identities_still_resume_on_their_recipe(finished_run, tmp_path, capsys):
    import json
    import shutil

    out = tmp_path / "out"
    shutil.copytree(finished_run, out)
    for p in out.glob("ckpt-*.json"):
        meta = json.loads(p.read_text())
        del meta["identity"]
        p.write_text(json.dumps(meta))
    rc, err = _cli(capsys, *_train_args(out, "--epochs", "2", "--resume"))
    assert rc == 0 and "predates run identities" in err
    rc, err = _cli(capsys, *_train_args(out, "--epochs", "2", "--resume", "--lr", "0.2"))
    assert rc == 2
    _one_line(err, "config.lr: 0.05 -> 0.2")


# ---------------------------------------------------------------------------------------------------------------
# 5. Labels are integral and in range before any cast


def test_item5_labels_are_checked_before_any_cast(tmp_path):
    x = np.zeros((2, 4, 4, 1), np.uint8)
    f = tmp_path / "a.npz"
    np.savez(f, x=x, y=np.array([2**40, 1], np.int64))  # int32 would make the first class 0
    with pytest.raises(jd.DataError, match=r"a\.npz 'y': label 1099511627776 of example 0 is out of range"):
        jd.load(f"npz:{f}")
    np.savez(f, x=x, y=np.array([0.5, 1.0]))
    with pytest.raises(jd.DataError, match=r"label 0.5 of example 0 is not a whole number"):
        jd.load(f"npz:{f}")
    flat = random_images(2).transpose(0, 3, 1, 2).reshape(2, -1)
    for labels, needle in (([0.5, 1.5], "not a whole number"), ([2**70, 1], "is not one of the integers"),
                           ([1, 10], "label 10 of example 1 is out of range")):
        d = tmp_path / f"c{len(needle)}"
        d.mkdir()
        for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
            (d / name).write_bytes(pickle.dumps({b"data": flat, b"labels": labels}, protocol=2))
        with pytest.raises(jd.DataError, match=needle):
            jd.load(f"cifar10:{d}")
    assert jd.labels([0, 3.0, np.int64(2)], "src", 4).tolist() == [0, 3, 2]  # whole floats are fine


# ---------------------------------------------------------------------------------------------------------------
# 6. --option values are parsed by the builder's parameter types


def test_item6_option_values_follow_the_builders_types(capsys):
    from jaxcnn import models

    assert models.parse_option("allconv6_1", "bn", "TRUE") is True
    assert models.parse_option("allconv6_1", "bn", "false") is False
    assert models.parse_option("mobilenet_v1", "padding", "3") == 3
    assert models.parse_option("mobilenet_v1", "padding", "VALID") == "VALID"
    for model, key, value in (("allconv6_1", "bn", "no"), ("resnet50", "small_input", "yes"),
                              ("mobilenet_v1", "stem_stride", "1.5"), ("mobilenet_v1", "dropout", "nan")):
        with pytest.raises(ValueError, match=rf"--option {key}={re.escape(value)}: "):
            models.parse_option(model, key, value)
    rc, err = _cli(capsys, "train", "allconv6_1", "--option", "bn=no", "--out", "/nonexistent/never-created")
    assert rc == 2
    _one_line(err, "--option bn=no", "must be true or false")


# ---------------------------------------------------------------------------------------------------------------
# 7. Train/test shape or channel mismatch is refused at load time, naming the files


def test_item7_train_test_mismatch_is_refused_at_load(tmp_path):
    from data_fixtures import write_idx

    f = tmp_path / "a.npz"
    np.savez(f, x=np.zeros((2, 8, 8, 1), np.uint8), y=[0, 1], x_test=np.zeros((2, 8, 8, 3), np.uint8), y_test=[0, 1])
    with pytest.raises(jd.DataError, match=r"train images \(npz:.*a\.npz\) are 8x8x1 uint8 but test images "
                                           r"\(npz:.*a\.npz \(test\)\) are 8x8x3 uint8"):
        jd.load(f"npz:{f}")
    assert jd.load(f"npz:{f}", grey=True)["test"].x.shape == (2, 8, 8, 1)  # converting both fixes it
    d = tmp_path / "mnist"
    d.mkdir()
    write_idx(d / "train-images-idx3-ubyte", np.zeros((2, 28, 28)))
    write_idx(d / "train-labels-idx1-ubyte", np.array([0, 1]))
    write_idx(d / "t10k-images-idx3-ubyte", np.zeros((2, 14, 14)))
    write_idx(d / "t10k-labels-idx1-ubyte", np.array([0, 1]))
    with pytest.raises(jd.DataError, match=r"28x28x1 uint8 but test images \(mnist:.*\(test\)\) are 14x14x1"):
        jd.load(f"mnist:{d}")
    assert jd.load(f"mnist:{d}", size=16)["test"].x.shape == (2, 16, 16, 1)
    from jaxcnn.train import TrainData

    with pytest.raises(ValueError, match="train images are"):
        TrainData(np.zeros((2, 8, 8, 1)), [0, 1], np.zeros((2, 8, 8, 3)), [0, 1], 2)


# ---------------------------------------------------------------------------------------------------------------
# 8. Only regular files are opened (a FIFO must not hang)


def test_item8_fifos_are_refused_not_waited_on(tmp_path):
    import os

    fifo = tmp_path / "pipe.npz"
    os.mkfifo(fifo)
    (tmp_path / "l.txt").write_text(f"{fifo} 0\n")
    code = ("import sys; from jaxcnn import data as jd\nfor spec in sys.argv[1:]:\n"
            "    try:\n        jd.load(spec)\n    except jd.DataError as e:\n        print('REFUSED', e)\n")
    proc = subprocess.run([sys.executable, "-c", code, f"npz:{fifo}", f"list:{tmp_path / 'l.txt'}"],
                          capture_output=True, text=True, timeout=60)  # a hang fails here
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 2 and all("is a FIFO (named pipe); only regular files are read" in s for s in lines)


# ---------------------------------------------------------------------------------------------------------------
# 9. One-line errors instead of tracebacks; sizes refused with the figure before allocating


def test_item9_cli_errors_are_one_line_and_memory_is_estimated_first(tmp_path, capsys):
    f = tmp_path / "a.npz"
    np.savez(f, x=np.zeros((2, 4, 4, 1), np.uint8), y=[0, 1], num_classes=np.array([], np.int64))
    cases = [
        (["--seed", str(2**64)], ["--seed must be an int in [0, 2**32 - K] with K = 1 seeds"]),
        (["--data", f"npz:{f}"], ["'num_classes'", "num_classes must be one integer"]),
        (["--data", "digits", "--input-size", "100000"], ["resizing 1,797 images to 100000x100000x1 needs",
                                                         "TiB of memory", "--input-size"]),
        (["--data", "synthetic:100000000000"], ["synthetic:100000000000", "needs", "of memory"]),
        (["--crop-pad", "40", "--data", "synthetic:64", "--input-size", "8", "--batch", "16"], ["crop_pad=40", "8x8"]),
    ]
    for extra, needles in cases:
        rc, err = _cli(capsys, "train", "allconv6_1", "--out", tmp_path / "o", "--quiet", *extra)
        assert rc == 2, (extra, err)
        _one_line(err, *needles)
    # an npz whose header claims terabytes is refused before anything is allocated
    import zipfile

    from fuzz_cases import hostile_npz_members
    with zipfile.ZipFile(f, "w") as z:
        z.writestr("x.npy", hostile_npz_members()["claims_terabytes"])
        z.writestr("y.npy", b"")
    with pytest.raises(jd.DataError, match=r"'x' claims shape \(1000000, 1000000, 1000\) .* but its member holds 64"):
        jd.load(f"npz:{f}")
    # unwritable outputs are found before the work: result.json a folder, --out under a file, bench --json
    out = tmp_path / "busy"
    (out / "result.json").mkdir(parents=True)
    rc, err = _cli(capsys, "train", "allconv6_1", "--data", "synthetic:64", "--out", out)
    assert rc == 2
    _one_line(err, "result.json exists and is not a regular file")
    (tmp_path / "file").write_text("x")
    rc, err = _cli(capsys, "train", "allconv6_1", "--data", "synthetic:64", "--out", tmp_path / "file" / "out")
    assert rc == 2
    _one_line(err, "cannot create output folder")
    rc, err = _cli(capsys, "bench", "allconv6", "--quick", "--json", tmp_path / "missing" / "b.json")
    assert rc == 2
    _one_line(err, "--json file", "does not exist; create it first")


def test_item9_a_real_process_prints_one_line_and_no_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "jaxcnn.cli", "train", "allconv6_1", "--data", "synthetic:64",
                           "--seed", "-1", "--out", str(tmp_path / "o")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr and "seed must be" in proc.stderr


# ---------------------------------------------------------------------------------------------------------------
# 10. The smaller ones


@pytest.mark.slow
def test_item10_smaller_checks(tmp_path, capsys):
    import jax
    import jax.numpy as jnp

    import jaxcnn as jc
    from jaxcnn import models

    model = jc.Sequential([jc.Conv(4, 3), jc.GlobalAvgPool(), jc.Dense(2)])
    params, state = model.init(jax.random.key(0), (8, 8, 1))
    with pytest.raises(jc.ParamsError, match="real-valued input, got dtype complex64"):
        model.apply(params, state, jnp.ones((1, 8, 8, 1), jnp.complex64))
    with pytest.raises(jc.ShapeError, match="tuple of ints"):
        model.init(jax.random.key(0), (8.5, 8, 1))
    assert models.get("allconv6_1", num_classes=np.int64(3)) == models.get("allconv6_1", num_classes=3)
    for bad in (True, 2.5, "3"):
        with pytest.raises(ValueError, match="num_classes must be a positive int"):
            models.get("allconv6_1", num_classes=bad)
    with pytest.raises(TypeError, match="scale_width takes a model"):
        jc.scale_width("str", 0.5)
    # a one-class data set trains, with a warning that its 100 % means nothing
    f = tmp_path / "one.npz"
    np.savez(f, x=random_images(40, (8, 8, 1)), y=np.zeros(40, np.int64), num_classes=np.array(1))
    rc, err = _cli(capsys, "train", "allconv6_1", "--data", f"npz:{f}", "--epochs", "1", "--batch", "16",
                   "--out", tmp_path / "o", "--quiet")
    assert rc == 0
    assert "only one class" in err and "trivially 100%" in err
