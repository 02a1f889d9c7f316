"""Issue 27 item 3: image folders larger than memory, streamed through Grain.

The streamed run is checked against the in-memory run on the same generated folder (the same examples in
the same order, so the same parameters), and the stream itself for order, resume, shards and the budget.
"""

import json
import sys

import jax
import numpy as np
import pytest
from PIL import Image

pytest.importorskip("grain")

import jaxcnn.data as jd  # noqa: E402
from jaxcnn.data import stream as js  # noqa: E402
from jaxcnn.train import TrainConfig, TrainData, fit  # noqa: E402
from jaxcnn.train.prepare import prepare  # noqa: E402
from jaxcnn.train.streaming import StreamData, StreamTrainer  # noqa: E402
from tests.train_helpers import tiny_model  # noqa: E402

CLASSES, PER_CLASS, SIDE = 3, 12, 16


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """3 classes x 12 images of 16x16, PNG and JPEG alternating, each class a colour plus noise."""
    root = tmp_path_factory.mktemp("imgs")
    rng = np.random.default_rng(0)
    for c in range(CLASSES):
        (root / f"class{c}").mkdir()
        for i in range(PER_CLASS):
            base = np.array([c * 90, 60, 220 - c * 90])
            a = np.clip(rng.integers(0, 70, (SIDE, SIDE, 3)) + base, 0, 255).astype(np.uint8)
            Image.fromarray(a).save(root / f"class{c}" / f"{i:02d}.{'png' if i % 2 else 'jpg'}")
    return root


def test_image_files_decode_the_pixels_and_labels_load_folder_holds(folder, tmp_path):
    ds = jd.load_folder(folder, size=12)
    images, y, k, names = js.image_files(f"folder:{folder}", size=12)
    assert (k, names, images.shape) == (CLASSES, ds.class_names, ds.x.shape)
    np.testing.assert_array_equal(y, ds.y)
    idx = np.array([5, 0, 35, 17])
    np.testing.assert_array_equal(images[idx], ds.x[idx])
    np.testing.assert_array_equal(images[3], ds.x[3])
    np.testing.assert_array_equal(images[30:], ds.x[30:])
    # a list file naming the same images reads the same pixels
    lst = tmp_path / "list.txt"
    lst.write_text("".join(f"{p} {label}\n" for p, label in zip(images.paths, y, strict=True)))
    listed, ly, lk, _ = js.image_files(f"list:{lst}", size=12)
    np.testing.assert_array_equal(listed[idx], ds.x[idx])
    assert lk == CLASSES and np.array_equal(ly, y)
    # the digest names files and sizes relative to their folder: a copy elsewhere is the same set
    copy = tmp_path / "moved"
    for p in images.paths:
        dst = copy / p[len(str(folder)) + 1:]
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_bytes(open(p, "rb").read())
    assert js.image_files(f"folder:{copy}", size=12)[0].digest() == images.digest()
    assert js.image_files(f"folder:{copy}", size=8)[0].digest() != images.digest()


def _leaves_equal(a, b) -> bool:
    return all(np.array_equal(u, v) for u, v in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b),
                                                    strict=True))


def test_streamed_training_sees_the_in_memory_batches_and_resumes_to_the_same_run(folder, tmp_path):
    mem = prepare(f"folder:{folder}", size=SIDE)
    st = prepare(f"folder:{folder}", size=SIDE, stream=True)
    assert isinstance(st.data, StreamData) and type(mem.data) is TrainData
    # the same split and statistics (the sample is every training image when there are fewer than 2048)
    np.testing.assert_array_equal(st.data.y_train, mem.data.y_train)
    np.testing.assert_array_equal(st.data.x_test[:], mem.data.x_test)
    np.testing.assert_array_equal(st.data.mean, mem.data.mean)
    cfg = TrainConfig(epochs=2, batch=8, num_seeds=2, loop="host", schedule="constant", crop_pad=1, flip=True,
                      compile_options="xla")
    model = tiny_model(CLASSES)
    a = fit(model, mem.data, cfg, quiet=True)
    # streamed: one epoch into a folder, then resumed for the second
    out = tmp_path / "run"
    fit(model, st.data, TrainConfig(**{**cfg.__dict__, "epochs": 1}), out_dir=out, quiet=True)
    meta = json.loads((out / "ckpt-000001.json").read_text())
    assert meta["input"]["epoch"] == 0 and meta["input"]["batches_done"] == len(st.data.y_train) // cfg.batch
    b = fit(model, st.data, cfg, out_dir=out, resume=True, quiet=True)
    # batch for batch the same examples, augmentations and keys: the same parameters, bit for bit
    assert _leaves_equal(a.params, b.params)
    assert [h.train_loss for h in a.history] == [h.train_loss for h in b.history]
    np.testing.assert_allclose(b.test_accuracy, a.test_accuracy, rtol=0, atol=1e-7)
    assert a.identity["data_sha256"] != b.identity["data_sha256"]  # streamed data is identified by its files


def _draws(stream):
    return [x.copy() for x in stream]


def flip_some(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A worker-side augmentation: mirror with probability 1/2, plus one random pixel set to 255."""
    x = x[:, ::-1] if rng.random() < 0.5 else x.copy()
    x[rng.integers(x.shape[0]), rng.integers(x.shape[1])] = 255
    return np.ascontiguousarray(x)


def test_stream_order_is_the_seeds_permutation_and_a_stream_resumes_mid_epoch(folder):
    images, y, k, _ = js.image_files(f"folder:{folder}", size=SIDE)
    data = StreamData(images.take(range(30)), y[:30], images.take(range(30, 36)), y[30:36], k)
    trainer = StreamTrainer(tiny_model(CLASSES), TrainConfig(batch=6, num_seeds=2, compile_options="xla"), data)
    r0, p0, _ = trainer.epoch_records(0)
    assert r0.shape == (5, 2, 6)  # steps x seeds x batch
    for s in range(2):  # every epoch of every seed reads each training image once, in its own order
        assert sorted(r0[:, s].ravel()) == list(range(30))
    assert not np.array_equal(r0[:, 0], r0[:, 1])
    assert np.array_equal(trainer.epoch_records(0)[0], r0)  # the same seed: the same order
    assert not np.array_equal(trainer.epoch_records(1)[0], r0)  # another epoch: another order
    np.testing.assert_array_equal(np.sort(p0.ravel()), np.arange(60))

    records = r0.reshape(-1)
    whole = _draws(js.ImageStream(data.x_train, records, 12))
    assert len(whole) == 5
    for i, xb in enumerate(whole):
        np.testing.assert_array_equal(xb, data.x_train[records[12 * i:12 * (i + 1)]])
    first = js.ImageStream(data.x_train, records, 12)
    next(first), next(first)
    state = json.loads(json.dumps(first.get_state()))  # what a checkpoint would hold
    rest = js.ImageStream(data.x_train, records, 12)
    rest.set_state(state)
    later = _draws(rest)
    assert len(later) == 3 and all(np.array_equal(u, v) for u, v in zip(later, whole[2:], strict=True))
    with pytest.raises(jd.DataError, match="not a stream state"):
        rest.set_state({"grain": {}})
    with pytest.raises(jd.DataError, match="another order"):
        js.ImageStream(data.x_train, records[::-1], 12).set_state(state)


def test_one_worker_process_decodes_and_augments_the_same_batches_as_none(folder):
    images = js.image_files(f"folder:{folder}", size=SIDE)[0]
    records = np.random.default_rng(3).permutation(36)
    kw = {"augment": flip_some, "key": (7, 1)}
    here = _draws(js.ImageStream(images, records, 9, **kw))
    worker = js.ImageStream(images, records, 9, workers=1, **kw)
    next(worker)
    state = worker.get_state()
    rest = _draws(worker)
    assert all(np.array_equal(u, v) for u, v in zip(here[1:], rest, strict=True))
    resumed = js.ImageStream(images, records, 9, **kw)  # a worker's state resumes in-process too
    resumed.set_state(state)
    assert all(np.array_equal(u, v) for u, v in zip(_draws(resumed), rest, strict=True))
    plain = _draws(js.ImageStream(images, records, 9))
    assert not all(np.array_equal(u, v) for u, v in zip(plain, here, strict=True))  # the augment ran
    assert all((u == 255).any() for u in here)


def test_process_shards_are_disjoint_and_cover_every_record():
    rng = np.random.default_rng(0)
    perms = np.stack([rng.permutation(48)[:40].reshape(5, 8) for _ in range(2)])  # seeds x steps x batch
    for count in (1, 2, 4, 8):
        rows = [js.shard_rows(8, i, count) for i in range(count)]
        assert sorted(np.concatenate(rows).tolist()) == list(range(8))
        got = np.concatenate([perms[:, :, r].reshape(-1) for r in rows])
        assert sorted(got.tolist()) == sorted(perms.reshape(-1).tolist())
    with pytest.raises(jd.DataError, match="equal parts"):
        js.shard_rows(8, 0, 3)


def test_the_memory_budget_picks_the_path_and_bad_options_are_named(folder, capsys):
    spec = f"folder:{folder}"
    decoded = CLASSES * PER_CLASS * SIDE * SIDE * 3
    assert type(prepare(spec, size=SIDE, memory_budget=decoded).data) is TrainData  # fits exactly
    assert isinstance(prepare(spec, size=SIDE, memory_budget=decoded - 1).data, StreamData)
    assert "over the memory budget" in capsys.readouterr().err
    assert type(prepare(spec, size=SIDE, memory_budget=1, stream=False).data) is TrainData
    assert type(prepare(spec, size=SIDE).data) is TrainData  # the default budget: a quarter of the memory
    assert js.memory_budget() > 10 * decoded
    assert js.memory_budget("2GB") == 2 * 10**9 and js.memory_budget("512MiB") == 512 << 20
    with pytest.raises(jd.DataError, match="memory_budget=lots"):
        js.memory_budget("lots")
    with pytest.raises(jd.DataError, match="stream=True"):
        prepare("synthetic:40", stream=True)
    with pytest.raises(jd.DataError, match="workers=-1"):
        js.ImageStream(js.image_files(spec)[0], [0, 1], 2, workers=-1)


def test_without_grain_streaming_says_which_extra_to_install(folder, monkeypatch):
    monkeypatch.setitem(sys.modules, "grain", None)  # import grain now raises ImportError
    with pytest.raises(jd.DataError, match=r"jaxcnn\[stream\]"):
        prepare(f"folder:{folder}", size=SIDE, stream=True)
    assert type(prepare(f"folder:{folder}", size=SIDE).data) is TrainData  # small data needs no Grain


def test_cli_streaming_flags_reach_prepare():
    from jaxcnn.cli import build_parser
    from jaxcnn.cli.args import data_options

    for command in (["train", "allconv6", "--out", "o"], ["study", "--out", "o"]):
        args = build_parser().parse_args([*command, "--stream", "--memory-budget", "6GB", "--workers", "2"])
        assert data_options(args) == {"stream": True, "memory_budget": "6GB", "workers": 2}
        assert data_options(build_parser().parse_args(command))["stream"] is None


def test_a_study_cannot_pad_streamed_images_and_says_what_to_do(folder):
    from jaxcnn.study import Task
    from jaxcnn.study.record import StudyError

    data = prepare(f"folder:{folder}", size=SIDE, stream=True).data
    task = Task("streamed", data)
    assert task.padded(SIDE) is task  # nothing to pad: fine
    with pytest.raises(StudyError, match="--no-stream"):
        task.padded(SIDE + 4)
