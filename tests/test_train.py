"""Training engine: seeds under vmap, compiled epochs vs per-step, resume after SIGKILL,
multi-device data parallelism, NaN guard, checkpoint validation."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from train_helpers import tiny_data, tiny_model
from xla_test_flags import with_opt

from jaxcnn.storage import checkpoint
from jaxcnn.train import TrainConfig, TrainData, Trainer, TrainingError, fit
from jaxcnn.train import trainer as trainer_module

ROOT = Path(__file__).resolve().parent.parent


def _leaves(tree):
    return [np.asarray(a) for a in jax.tree_util.tree_leaves(tree)]


_SEEDS_CFG = TrainConfig(epochs=2, batch=32, lr=0.05, crop_pad=1, flip=True)


@pytest.fixture(scope="module")
def four_separate_runs():
    """Seeds 0-3 trained one run each: the reference both seed batchings must reproduce (trained once)."""
    return [fit(tiny_model(), tiny_data(), TrainConfig(**{**_SEEDS_CFG.__dict__, "seed": i}), quiet=True)
            for i in range(4)]


@pytest.mark.parametrize("seed_batching", ["vmap", "unroll"])
def test_four_seeds_under_vmap_equal_four_separate_runs(seed_batching, four_separate_runs):
    data = tiny_data()
    cfg = TrainConfig(**{**_SEEDS_CFG.__dict__, "num_seeds": 4, "seed_batching": seed_batching})
    together = fit(tiny_model(), data, cfg, quiet=True)
    assert together.seeds == [0, 1, 2, 3]
    for i, alone in enumerate(four_separate_runs):
        for a, b in zip(_leaves(together.params), _leaves(alone.params), strict=True):
            np.testing.assert_allclose(a[i], b[0], rtol=2e-4, atol=2e-5)
        assert abs(together.test_accuracy[i] - alone.test_accuracy[0]) <= 1 / len(data.y_test) + 1e-9
    # different seeds really differ (independent init, shuffles and dropout)
    kernel = max(_leaves(together.params), key=np.size)
    assert not np.allclose(kernel[0], kernel[1], rtol=0.1)


@pytest.mark.parametrize("chunk", [3, 4])
def test_compiled_epoch_equals_per_step_path(chunk):
    # two seeds: the per-step path once gave every seed the labels of all seeds (an unsliced label batch that
    # one_hot broadcast into an averaged loss), which one seed could not show. 6 steps an epoch: chunks of 3
    # divide it; chunks of 4 run the second one padded to 4 steps of which 2 are live (one program, not two)
    data = tiny_data()
    cfg = TrainConfig(epochs=2, batch=32, num_seeds=2, loop="device", chunk=chunk)
    assert Trainer(tiny_model(), cfg, data).padded_steps == {3: 6, 4: 8}[chunk]
    # the host loop never pads: a streamed run (loop="host") takes the permutation's length for its steps
    host = Trainer(tiny_model(), TrainConfig(epochs=2, batch=32, loop="host", chunk=chunk), data)
    assert host.padded_steps == 6 and host._perm_fn(host.epoch_keys(0))[0].shape[1] == 6
    a = fit(tiny_model(), data, cfg, quiet=True)
    b = fit(tiny_model(), data, TrainConfig(epochs=2, batch=32, num_seeds=2, loop="host"), quiet=True)
    for x, y in zip(_leaves(a.params), _leaves(b.params), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5)
    for field in ("train_loss", "train_accuracy", "test_loss"):  # the padded steps count in no mean
        np.testing.assert_allclose(getattr(a.history[-1], field), getattr(b.history[-1], field), rtol=1e-4)
    assert a.history[-1].step == b.history[-1].step == 12


def test_training_reduces_loss_and_checkpoints(tmp_path):
    data = tiny_data()
    r = fit(tiny_model(), data, TrainConfig(epochs=4, batch=32, lr=0.1), out_dir=tmp_path, quiet=True)
    assert r.history[-1].train_loss[0] < r.history[0].train_loss[0]
    assert r.test_accuracy[0] > 0.5  # 4 classes: chance is 0.25
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [0, 1, 2, 3]
    ck = checkpoint.latest(tmp_path)
    assert ck is not None and ck.name == "ckpt-000004.json"
    meta = checkpoint.read_meta(ck)
    assert meta["epoch"] == 3 and len(meta["history"]) == 4
    assert len(list(tmp_path.glob("ckpt-*.json"))) == 2  # pruned to the newest two


def test_corrupt_checkpoint_is_detected_and_skipped(tmp_path):
    data = tiny_data()
    r = fit(tiny_model(), data, TrainConfig(epochs=2, batch=32), out_dir=tmp_path, quiet=True)
    template = {"params": r.params, "state": r.state}
    checkpoint.save(tmp_path, "ckpt-000009", template, {"epoch": 8})
    npz = tmp_path / "ckpt-000009.npz"
    npz.write_bytes(npz.read_bytes()[:100])  # truncated by a crash
    with pytest.raises(checkpoint.CheckpointError, match="sha256"):
        checkpoint.load(tmp_path / "ckpt-000009.json", template)
    assert checkpoint.latest(tmp_path).name == "ckpt-000002.json"
    # a checkpoint of another model does not load into this one
    with pytest.raises(checkpoint.CheckpointError, match="does not fit"):
        checkpoint.load(tmp_path / "ckpt-000002.json", {"params": r.params})


def test_nan_guard_names_the_step_and_keeps_last_checkpoint(tmp_path):
    data = tiny_data()
    # float pixels (stats in pixel units), streamed from the host so that the poisoning below takes effect
    bad = TrainData(data.x_train.astype(np.float32), data.y_train, data.x_test.astype(np.float32), data.y_test,
                    data.num_classes, data.mean * 255.0, data.std * 255.0)

    def poison(rec):  # after epoch 0 the data gets corrupted: one NaN image poisons a step of epoch 1
        bad.x_train[5, 0, 0, 0] = np.nan

    cfg = TrainConfig(epochs=3, batch=32, lr=0.05, loop="host")
    with pytest.raises(TrainingError, match=r"at step \d+ \(epoch 1, step \d+ of the epoch, seed 0\)") as e:
        fit(tiny_model(), bad, cfg, out_dir=tmp_path, quiet=True, on_epoch=poison)
    assert "ckpt-000001.json" in str(e.value)
    last = checkpoint.latest(tmp_path)
    assert last.name == "ckpt-000001.json"
    meta = checkpoint.read_meta(last)
    assert meta["epoch"] == 0


_DRIVER = textwrap.dedent("""
    import sys
    sys.path.insert(0, {tests!r})
    import numpy as np, jax
    from train_helpers import tiny_data, tiny_model
    from jaxcnn.train import TrainConfig, fit
    out, resume, epochs = sys.argv[1], sys.argv[2] == "1", int(sys.argv[3])
    r = fit(tiny_model(), tiny_data(n=8192, size=16), TrainConfig(epochs=epochs, batch=64),
            out_dir=out, resume=resume, quiet=True)
    np.savez(out + "/final.npz", *[np.asarray(a) for a in jax.tree_util.tree_leaves(r.params)])
    print(r.history[-1].train_loss)
""")


def _driver(tmp_path):
    path = tmp_path / "driver.py"
    path.write_text(_DRIVER.format(tests=str(Path(__file__).parent)))
    return path


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_is_bit_identical(tmp_path):
    driver = _driver(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    full, killed = tmp_path / "full", tmp_path / "killed"
    subprocess.run([sys.executable, str(driver), str(full), "0", "4"], check=True, env=env, capture_output=True)
    proc = subprocess.Popen([sys.executable, str(driver), str(killed), "0", "4"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (killed / "ckpt-000002.json").exists():
        assert proc.poll() is None, "the run ended before it could be killed"
        assert time.time() < deadline
        time.sleep(0.005)
    time.sleep(0.02)  # inside epoch 3 (the default compiled-epoch path: 96 one-step chunks, a short run)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "ckpt-000003.json").exists(), "killed too late: epoch 3 had finished"
    assert not (killed / "final.npz").exists()
    # nothing in the folder is corrupt: every checkpoint there loads and verifies
    assert checkpoint.latest(killed).name == "ckpt-000002.json"
    for meta in killed.glob("ckpt-*.json"):
        template = checkpoint.read_meta(meta)["arrays"]  # every listed array is present and verified
        data = np.load(meta.with_suffix(".npz"))
        assert sorted(data.files) == sorted(template)
    subprocess.run([sys.executable, str(driver), str(killed), "1", "4"], check=True, env=env, capture_output=True)
    a, b = np.load(full / "final.npz"), np.load(killed / "final.npz")
    assert len(a.files) == len(b.files)
    for k in a.files:
        np.testing.assert_array_equal(a[k], b[k])  # bit-identical


@pytest.mark.slow
def test_four_host_devices_match_one_device(tmp_path):
    code = textwrap.dedent(f"""
        import sys, json
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        import jax
        from train_helpers import tiny_data, tiny_model
        from jaxcnn.train import TrainConfig, fit
        r = fit(tiny_model(), tiny_data(n=512), TrainConfig(epochs=3, batch=64, lr=0.05), quiet=True)
        print(json.dumps({{"devices": jax.device_count(), "loss": [h.train_loss[0] for h in r.history]}}))
    """)
    procs = {}  # both at once: they share no compiled program (another device count), and CI has 2 cores
    for n in (1, 4):
        flags = with_opt(f"--xla_force_host_platform_device_count={n}")
        env = {**os.environ, "PYTHONPATH": str(ROOT), "XLA_FLAGS": flags}
        procs[n] = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True)
    results = {}
    try:
        for n, proc in procs.items():
            out, err = proc.communicate(timeout=300)
            assert proc.returncode == 0, err[-3000:]
            results[n] = json.loads(out.strip().splitlines()[-1])
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert results[1]["devices"] == 1 and results[4]["devices"] == 4
    np.testing.assert_allclose(results[4]["loss"], results[1]["loss"], rtol=1e-3)


def test_resume_refuses_another_recipe_and_fresh_runs_refuse_old_checkpoints(tmp_path):
    data = tiny_data()
    fit(tiny_model(), data, TrainConfig(epochs=1, batch=32, lr=0.05), out_dir=tmp_path, quiet=True)
    with pytest.raises(checkpoint.CheckpointError, match=r"different run \(config\.lr: 0\.05 -> 0\.1\)"):
        fit(tiny_model(), data, TrainConfig(epochs=2, batch=32, lr=0.1), out_dir=tmp_path, resume=True, quiet=True)
    with pytest.raises(checkpoint.CheckpointError, match="already holds checkpoints"):
        fit(tiny_model(), data, TrainConfig(epochs=1, batch=32, lr=0.05), out_dir=tmp_path, quiet=True)
    meta = checkpoint.read_meta(checkpoint.latest(tmp_path))
    assert meta["step"] == 6 and meta["summary_totals"]["learnable_params"] > 0
    assert {"jax", "jaxlib", "optax", "numpy", "python"} <= set(meta["versions"])


def test_seed_batching_option_is_checked_and_auto_unrolls_on_cpu():
    with pytest.raises(ValueError, match="`seed_batching` must be one of auto, vmap, unroll"):
        TrainConfig(seed_batching="pmap").check()
    data = tiny_data()
    assert jax.default_backend() == "cpu"  # the suite runs on CPU (CI has no accelerator)
    auto = Trainer(tiny_model(), TrainConfig(batch=32, num_seeds=3), data)
    assert auto.seed_batching == "unroll" and auto.chunk == 1  # the seeds fill each program
    long = -(-trainer_module.LONG_RUN // auto.steps_per_epoch)  # the fewest epochs that repay multi-step chunks
    vmapped = Trainer(tiny_model(), TrainConfig(batch=32, num_seeds=3, seed_batching="vmap", epochs=long), data)
    assert vmapped.seed_batching == "vmap" and vmapped.chunk > 1  # multi-step chunks as for one seed
    short = Trainer(tiny_model(), TrainConfig(batch=32, num_seeds=1, epochs=long - 1), data)
    one = Trainer(tiny_model(), TrainConfig(batch=32, num_seeds=1, epochs=long), data)
    assert (short.chunk, one.chunk > 1) == (1, True)  # a short run's chunk is one step: it compiles in half the time


def test_cross_entropy_refuses_labels_that_do_not_match_the_logits():
    import jax.numpy as jnp

    from jaxcnn.train.step import cross_entropy

    with pytest.raises(ValueError, match=r"labels of shape \(2, 4\) do not match logits of shape \(4, 3\)"):
        cross_entropy()(jnp.zeros((4, 3)), jnp.zeros((2, 4), jnp.int32), {})


def test_cpu_evaluation_is_one_program_for_every_seed_and_batch_and_matches_numpy(monkeypatch):
    """Three seeds, 64 test images in batches of 7 (the last padded): one trace of one batch's evaluation, and
    per seed the loss, top-1 and top-5 of a NumPy softmax over the model's logits for the whole test set."""
    data = tiny_data(n=256)
    cfg = TrainConfig(batch=32, num_seeds=3, eval_batch=7)
    trainer = Trainer(tiny_model(), cfg, data)
    traced = []
    real = Trainer._eval_batch
    monkeypatch.setattr(Trainer, "_eval_batch", lambda self, *a: traced.append(1) or real(self, *a))
    trainer._use_options({})  # rebuilt with the counting method
    carry = trainer.init()
    got = trainer.evaluate(carry)
    assert traced == [1]
    x = (data.x_test.astype(np.float32) - trainer.mean) / trainer.std
    for s in range(3):
        params, state = jax.tree_util.tree_map(lambda a, s=s: a[s], (carry.params, carry.state))
        logits = np.asarray(trainer.model.apply(params, state, x)[0], np.float64)
        logp = logits - logits.max(1, keepdims=True)
        logp -= np.log(np.exp(logp).sum(1, keepdims=True))
        ranks = (logits > logits[np.arange(len(logits)), data.y_test][:, None]).sum(1)
        np.testing.assert_allclose(got["loss"][s], -logp[np.arange(len(logp)), data.y_test].mean(), rtol=1e-5)
        assert got["accuracy"][s] == (ranks == 0).mean() and got["top5"][s] == (ranks < 5).mean()
