"""Logging (TensorBoard, MLflow) read back with each library's own reader; weights reloaded from the run folder alone.

One tiny registered model trains once (2 epochs, 2 seeds) for the whole module; the references are the
run's own history and result (what fit returned), read through EventAccumulator, mlflow's search API,
an independent NumPy forward pass over the loaded weights, and the PNG files' own pixels.
"""

import json
import sys

import jax
import numpy as np
import pytest

from jaxcnn import Conv, Dense, GlobalAvgPool, ReLU, Sequential, models
from jaxcnn.cli import main
from jaxcnn.storage import checkpoint
from jaxcnn.storage.weights import load_model
from jaxcnn.train import TrainConfig, fit
from jaxcnn.train.prepare import prepare

pytest.importorskip("tensorboardX")
pytest.importorskip("mlflow")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

NAME = "tiny_eval_net"
RECIPE = TrainConfig(epochs=2, batch=64, num_seeds=2, lr=0.1, schedule="constant", compile_options="xla")


@pytest.fixture(scope="module", autouse=True)
def local_mlflow_store():
    """The tests' MLflow runs go to the run folders' own stores, whatever the environment names."""
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        yield


@pytest.fixture(scope="module")
def registered():
    def tiny_eval_net(num_classes: int = 10, width: float = 1.0, depth: int = 1):
        """Test net: depth 3x3 convs of 8*width channels, GAP, dense."""
        layers = []
        for _ in range(depth):
            layers += [Conv(max(1, round(8 * width)), 3, 1, 1), ReLU()]
        return Sequential([*layers, GlobalAvgPool(), Dense(num_classes, keep_width=True)])

    models.register_model(tiny_eval_net, input_shape=(8, 8, 1), num_classes=10, name=NAME)
    yield NAME
    models.REGISTRY.pop(NAME, None)  # test_readme checks every registered name is documented


@pytest.fixture(scope="module")
def trained(registered, tmp_path_factory):
    """A 2-epoch, 2-seed run with both loggers, then resumed for a 3rd epoch (the same MLflow run continues)."""
    out = tmp_path_factory.mktemp("logged") / "run"
    data = prepare("digits").data
    model = models.get(NAME, num_classes=10, depth=2)
    first = fit(model, data, RECIPE, out_dir=out, quiet=True, loggers=["tensorboard", "mlflow"])
    resumed = fit(model, data, TrainConfig(**{**RECIPE.__dict__, "epochs": 3}), out_dir=out, quiet=True,
                  resume=True, loggers="tensorboard,mlflow")
    return out, data, first, resumed


def test_tensorboard_events_hold_every_epoch_per_seed_and_mean(trained):
    out, _, first, resumed = trained
    history = resumed.history
    assert [h.test_accuracy for h in history[:2]] == [h.test_accuracy for h in first.history]
    for i, s in enumerate(resumed.seeds):
        ea = EventAccumulator(str(out / "tensorboard" / f"seed_{s}"))
        ea.Reload()
        for tag, field in (("test_accuracy", "test_accuracy"), ("train_loss", "train_loss")):
            events = ea.Scalars(tag)
            assert [e.step for e in events] == [1, 2, 3]  # the resumed epoch appended, nothing repeated
            np.testing.assert_allclose([e.value for e in events], [getattr(h, field)[i] for h in history], rtol=1e-6)
    ea = EventAccumulator(str(out / "tensorboard" / "mean"))
    ea.Reload()
    np.testing.assert_allclose([e.value for e in ea.Scalars("test_accuracy")],
                               [np.mean(h.test_accuracy) for h in history], rtol=1e-6)
    text = ea.Tensors("parameters/text_summary")[0].tensor_proto.string_val[0].decode()
    assert f"| model | {NAME} |" in text and "| seeds | 0,1 |" in text and "| config.lr | 0.1 |" in text


def test_mlflow_run_has_the_identity_as_parameters_and_metrics_per_seed_and_mean(trained):
    import mlflow

    out, _, _, resumed = trained
    uri = (out / "mlruns").resolve().as_uri()
    mlflow.set_tracking_uri(uri)
    try:
        runs = mlflow.search_runs(experiment_names=["jaxcnn"], output_format="list")
    finally:
        mlflow.set_tracking_uri(None)
    assert len(runs) == 1  # the resumed call continued the run its first call made
    run = runs[0]
    assert run.info.status == "FINISHED" and run.info.run_name == "run"
    p = run.data.params
    assert p["seeds"] == "0,1" and p["config.lr"] == "0.1" and p["config.epochs"] == "2"
    assert p["data_sha256"] == resumed.identity["data_sha256"] and p["num_classes"] == "10"
    assert "code.git_commit" in p or "code.version" in p
    client = mlflow.MlflowClient(uri)
    for i, s in enumerate(resumed.seeds):
        got = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, f"seed_{s}/test_accuracy"))
        assert got == [(e + 1, pytest.approx(h.test_accuracy[i], rel=1e-12)) for e, h in enumerate(resumed.history)]
    mean = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, "test_accuracy"))
    assert [v for _, v in mean] == pytest.approx([np.mean(h.test_accuracy) for h in resumed.history], rel=1e-12)


def test_load_model_needs_only_the_folder_and_scores_as_training_did(trained):
    out, data, _, resumed = trained
    meta = checkpoint.read_meta(checkpoint.latest(out))
    assert meta["model"] == NAME and meta["model_spec"]["options"] == {"depth": 2}  # built by models.get in Python
    loaded = load_model(out)
    assert loaded.seeds == [0, 1] and loaded.input_shape == (8, 8, 1) and loaded.class_name(3) == "3"
    for a, b in zip(jax.tree_util.tree_leaves(loaded.params), jax.tree_util.tree_leaves(resumed.params), strict=True):
        np.testing.assert_array_equal(a, np.asarray(b))
    predicted = loaded.logits(data.x_test).argmax(-1)
    np.testing.assert_allclose((predicted == data.y_test[None]).mean(1), resumed.test_accuracy, atol=1e-6)
    # an independent forward pass in NumPy (float64): conv 3x3 SAME -> ReLU, twice, mean over space, dense
    p = jax.tree_util.tree_map(lambda v: np.asarray(v[1], np.float64), loaded.params)  # seed 1
    h = (data.x_test[:50].astype(np.float64) / 255 - loaded.mean) / loaded.std
    for name in ("00_conv", "02_conv"):
        win = np.lib.stride_tricks.sliding_window_view(np.pad(h, ((0, 0), (1, 1), (1, 1), (0, 0))), (3, 3),
                                                       axis=(1, 2))  # n, 8, 8, cin, 3, 3
        h = np.maximum(np.einsum("nhwcij,ijco->nhwo", win, p[name]["w"]) + p[name]["b"], 0)
    reference = h.mean((1, 2)) @ p["05_dense"]["w"] + p["05_dense"]["b"]
    np.testing.assert_allclose(loaded.logits(data.x_test[:50])[1], reference, rtol=1e-4, atol=1e-4)


def test_template_mismatches_name_their_cause(trained):
    out, _, _, _ = trained
    ck = checkpoint.latest(out)
    loaded = load_model(out)
    weights_only = {"params": loaded.params, "state": loaded.state}
    with pytest.raises(checkpoint.CheckpointError, match="also holds opt_state that the template lacks"):
        checkpoint.load(ck, weights_only)
    tree, _ = checkpoint.load(ck, weights_only, allow_extra=True)
    for a, b in zip(jax.tree_util.tree_leaves(tree), jax.tree_util.tree_leaves(weights_only), strict=True):
        np.testing.assert_array_equal(a, b)
    one_seed = jax.tree_util.tree_map(lambda v: v[0], weights_only)
    with pytest.raises(checkpoint.CheckpointError, match="2 seed.s. on a leading axis"):
        checkpoint.load(ck, one_seed, allow_extra=True)
    wider = models.get(NAME, num_classes=10, depth=2, width=2.0)
    p, s = wider.init(jax.random.key(0), (8, 8, 1))
    stacked = jax.tree_util.tree_map(lambda v: np.stack([v, v]), {"params": p, "state": s})
    with pytest.raises(checkpoint.CheckpointError, match="another width"):
        checkpoint.load(ck, stacked, allow_extra=True)


def test_eval_and_predict_commands(trained, tmp_path, capsys):
    from PIL import Image

    out, data, _, resumed = trained
    assert main(["eval", str(out), "--data", "digits", "--top-k", "3", "--out", str(tmp_path / "ev")]) == 0
    printed = capsys.readouterr().out
    report = json.loads((tmp_path / "ev" / "eval.json").read_text())
    np.testing.assert_allclose(report["accuracy"], resumed.test_accuracy, atol=1e-9)  # the same held-out part
    confusion = np.asarray(report["confusion"])
    assert confusion.shape == (2, 10, 10) and (confusion.sum((1, 2)) == len(data.y_test)).all()
    np.testing.assert_allclose(np.trace(confusion, axis1=1, axis2=2) / len(data.y_test), report["accuracy"])
    assert (confusion.sum(2)[0] == np.bincount(data.y_test, minlength=10)).all()  # rows are the true classes
    assert (tmp_path / "ev" / "confusion.png").stat().st_size > 1000
    assert f"| mean | {100 * np.mean(resumed.test_accuracy):.2f}" in printed
    # predict: PNGs of test images (8x8 grey, lossless) get the classes the loaded weights give those arrays
    files = []
    for i in range(4):
        path = tmp_path / f"img{i}.png"
        Image.fromarray(data.x_test[i, :, :, 0]).save(path)
        files.append(str(path))
    assert main(["predict", str(out), *files, "--top-k", "2", "--json", "--per-seed"]) == 0
    rows = json.loads(capsys.readouterr().out)
    logits = load_model(out).logits(data.x_test[:4])
    assert len(rows) == 8
    for r in rows:
        i, seed = files.index(r["image"]), int(r["seeds"].split()[1])
        assert r["top"][0]["index"] == int(logits[seed, i].argmax())
        assert r["top"][0]["probability"] >= r["top"][1]["probability"]
    assert main(["predict", str(out), files[0]]) == 0
    assert "mean of 2 seed(s)" in capsys.readouterr().out


def test_missing_logging_package_and_unknown_logger_are_one_line_errors(registered, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboardX", None)  # import tensorboardX now raises ImportError
    args = ["train", NAME, "--data", "digits", "--epochs", "1", "--out", str(tmp_path / "t"), "--quiet"]
    assert main([*args, "--log", "tensorboard"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pip install 'jaxcnn[logging]'" in err[0] and "tensorboardX" in err[0]
    assert not (tmp_path / "t").exists()  # found before anything was written
    assert main([*args, "--log", "wandb"]) == 2
    assert "--log takes tensorboard, mlflow" in capsys.readouterr().err
    assert main(["eval", str(tmp_path / "nothing"), "--data", "digits"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_the_readme_commands_of_logging_evaluation_and_comparison_parse():
    """Every `jaxcnn ...` line of the README's logging, eval and compare blocks is accepted by the CLI parser."""
    import shlex
    from pathlib import Path

    from jaxcnn.cli import build_parser

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    commands = []
    for block in ("logging-commands", "eval-commands", "compare-commands"):
        section = readme.split(f"<!-- {block}:begin -->", 1)[1].split(f"<!-- {block}:end -->", 1)[0]
        commands += [line.split("#")[0] for line in section.splitlines() if line.startswith("jaxcnn ")]
    assert {c.split()[1] for c in commands} == {"train", "eval", "predict", "study", "compare"}
    parser = build_parser()
    for command in commands:
        args = parser.parse_args(shlex.split(command)[1:])  # argparse exits 2 on an unknown or bad flag
        assert args.command == shlex.split(command)[1]


def test_training_without_logging_imports_neither_library():
    import subprocess

    probe = ("import sys\nfrom jaxcnn.train import fit\nimport jaxcnn.train.loop, jaxcnn.study.runner, jaxcnn.cli\n"
             "from jaxcnn.cli import build_parser\nbuild_parser()\n"
             "print(sorted(m for m in ('mlflow', 'tensorboardX', 'tensorboard') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=300)
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_mlflow_continues_a_run_only_when_fit_resumes_epochs(tmp_path):
    """A resumed fit (history so far) continues the folder's MLflow run; a fresh run there gets a new one."""
    from jaxcnn.train.loggers import MLflowLogger
    from jaxcnn.train.loop import EpochRecord

    rec = EpochRecord(epoch=0, step=10, train_loss=[1.0, 2.0], train_accuracy=[0.5, 0.6], test_loss=[1.1, 2.1],
                      test_accuracy=[0.25, 0.75], test_top5=[0.9, 1.0], seconds=1.0, images_per_second=100.0)
    first = MLflowLogger(state_dir=tmp_path)
    first.start({"a": "1"}, [3, 4], [])
    first.epoch(rec)
    first.finish(False)
    resumed = MLflowLogger(state_dir=tmp_path)
    resumed.start({"a": "1"}, [3, 4], [rec])
    assert resumed.run_id == first.run_id
    resumed.finish(True)
    fresh = MLflowLogger(state_dir=tmp_path)
    fresh.start({"a": "2"}, [3, 4], [])
    fresh.finish(True)
    assert fresh.run_id != first.run_id
    run = fresh.client.get_run(first.run_id)
    assert run.info.status == "FINISHED" and run.data.params == {"a": "1"}
    assert run.data.metrics["test_accuracy"] == 0.5 and run.data.metrics["seed_4/test_accuracy"] == 0.75


def test_load_model_says_what_it_needs_when_the_checkpoint_cannot_rebuild_the_model(trained, tmp_path):
    import shutil

    out, _, _, resumed = trained
    ck = checkpoint.latest(out)
    copy = tmp_path / "run"
    copy.mkdir()
    for p in (ck, ck.with_suffix(".npz")):
        shutil.copy(p, copy / p.name)
    meta = json.loads((copy / ck.name).read_text())
    meta["model_spec"]["model"] = None  # as a model put together by hand records it
    (copy / ck.name).write_text(json.dumps(meta))
    with pytest.raises(checkpoint.CheckpointError, match=r"built by hand\): pass that model, load_model\(DIR, model="):
        load_model(copy)
    loaded = load_model(copy, model=models.get(NAME, num_classes=10, depth=2))
    np.testing.assert_array_equal(loaded.params["05_dense"]["w"], resumed.params["05_dense"]["w"])
    del meta["model_spec"]  # a checkpoint from before model_spec: the weights load, images cannot be fed
    (copy / ck.name).write_text(json.dumps(meta))
    with pytest.raises(checkpoint.CheckpointError, match="predates recorded input normalisation"):
        load_model(copy)
    with pytest.raises(checkpoint.CheckpointError, match="holds no complete checkpoint"):
        load_model(tmp_path)


def test_a_run_resumed_within_the_same_second_keeps_the_earlier_event_file(tmp_path, monkeypatch):
    """tensorboardX names event files by the whole second; a resume inside that second must not truncate them."""
    import time as time_module

    from jaxcnn.train.loggers import TensorBoardLogger
    from jaxcnn.train.records import EpochRecord

    monkeypatch.setattr(time_module, "time", lambda: 1_800_000_000.25)  # both writers open in one second
    def record(e):
        return EpochRecord(epoch=e, step=10 * (e + 1), train_loss=[1.0 / (e + 1)] * 2, train_accuracy=[0.5] * 2,
                           test_loss=[2.0 / (e + 1)] * 2, test_accuracy=[0.1 * (e + 1), 0.2 * (e + 1)],
                           test_top5=[0.9] * 2, seconds=1.0, images_per_second=100.0)
    first = TensorBoardLogger(tmp_path)
    first.start({"model": "m"}, [0, 1], [])
    for e in range(2):
        first.epoch(record(e))
    first.finish(True)
    resumed = TensorBoardLogger(tmp_path)
    resumed.start({"model": "m"}, [0, 1], [record(0), record(1)])
    resumed.epoch(record(2))
    resumed.finish(True)
    assert len(list((tmp_path / "seed_1").glob("events.out.tfevents.1800000000.*"))) == 2
    ea = EventAccumulator(str(tmp_path / "seed_1"))
    ea.Reload()
    events = ea.Scalars("test_accuracy")
    assert [e.step for e in events] == [1, 2, 3]
    np.testing.assert_allclose([e.value for e in events], [0.2, 0.4, 0.6], rtol=1e-6)
