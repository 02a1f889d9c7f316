"""Issue 27's training options: EMA, gradient accumulation, bf16 precision and label noise (tiny data, fast)."""

import json
import pydoc
import re
from dataclasses import asdict, fields, replace
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxcnn as jc
from jaxcnn.train import TrainConfig, fit, step
from jaxcnn.train.options import noisy_labels
from jaxcnn.train.trainer import Trainer
from tests.train_helpers import tiny_data

ROOT = Path(__file__).resolve().parent.parent

# no BatchNorm and no Dropout: the loss is a mean over independent examples, so accumulation is exact
PLAIN = jc.Sequential([jc.Conv(8, 3, 2, 1), jc.ReLU(), jc.GlobalAvgPool(), jc.Dense(4, keep_width=True)])
WITH_BN = jc.Sequential([jc.Conv(8, 3, 2, 1), jc.BatchNorm(), jc.ReLU(), jc.GlobalAvgPool(),
                         jc.Dense(4, keep_width=True)])
BASE = TrainConfig(epochs=1, batch=64, lr=0.1, schedule="constant", weight_decay=1e-3, compile_options="xla")


def _max_rel(a, b) -> float:
    diffs = jax.tree_util.tree_map(lambda u, v: float(np.max(np.abs(np.asarray(u) - np.asarray(v)))
                                   / (np.max(np.abs(np.asarray(v))) + 1e-12)), a, b)
    return max(jax.tree_util.tree_leaves(diffs))


def test_accumulated_step_equals_the_big_batch_step():
    """One update from 4 micro-batches of 32 equals the update from the batch of 128 (float32 rounding)."""
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(128, 8, 8, 1)), jnp.float32)
    y = jnp.asarray(rng.integers(0, 4, 128), jnp.int32)
    tx = optax.chain(optax.add_decayed_weights(1e-3), optax.sgd(0.1, momentum=0.9))
    ts = step.init(PLAIN, jax.random.key(0), (8, 8, 1), tx)
    key = jax.random.key(1)
    big, out_big = step.train_step(PLAIN, tx, ts, x, y, key)
    for unroll in (False, True):
        acc, out_acc = step.train_step(PLAIN, tx, ts, x, y, key, accumulate=4, unroll=unroll)
        assert _max_rel(acc.params, big.params) < 1e-5
        assert abs(float(out_acc["loss"]) - float(out_big["loss"])) < 1e-5
        assert int(out_acc["correct"]) == int(out_big["correct"])
    # the reference itself: the update is -lr * (mean gradient + decay * w) from the whole batch's mean loss
    def mean_loss(p):
        logits, _ = PLAIN.apply(p, ts.state, x, train=True, key=key)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    g = jax.grad(mean_loss)(ts.params)
    manual = jax.tree_util.tree_map(lambda w, gw: w - 0.1 * (gw + 1e-3 * w), ts.params, g)
    assert _max_rel(big.params, manual) < 1e-5
    with pytest.raises(ValueError, match="accumulate=3 must be a positive divisor"):
        step.train_step(PLAIN, tx, ts, x, y, key, accumulate=3)


def test_fit_with_accumulation_equals_the_big_batch_and_bn_runs():
    data = tiny_data(n=512)  # 384 training examples: 3 updates of 128
    cfg = replace(BASE, batch=128)
    big = fit(PLAIN, data, cfg, quiet=True)
    acc = fit(PLAIN, data, replace(cfg, accumulate=4), quiet=True)
    assert _max_rel(acc.params, big.params) < 1e-4  # 3 momentum steps of float32 rounding
    assert acc.history[-1].step == big.history[-1].step == 3  # the same updates, not 4x as many
    # BatchNorm: each micro-batch is normalised by its own statistics, so the run differs, but it trains
    bn = fit(WITH_BN, data, replace(cfg, accumulate=4), quiet=True)
    assert np.all(np.isfinite(bn.history[-1].train_loss))
    with pytest.raises(ValueError, match="batch=128 must be a multiple of accumulate=3"):
        TrainConfig(batch=128, accumulate=3).check()


def test_ema_matches_its_definition_and_is_evaluated_checkpointed_and_resumed(tmp_path):
    tx = optax.sgd(0.1)
    ts = step.init(WITH_BN, jax.random.key(0), (8, 8, 1), tx, ema=True)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(32, 8, 8, 1)), jnp.float32)
    y = jnp.asarray(rng.integers(0, 4, 32), jnp.int32)
    # ema_n+1 = d_n * ema_n + (1 - d_n) * new_n+1, d_n = min(d, (1 + n) / (10 + n)), ema_0 the initial values
    want = {"params": ts.params, "state": ts.state}
    train = jax.jit(lambda ts, key: step.train_step(WITH_BN, tx, ts, x, y, key, ema_decay=0.75))
    for n in range(40):
        ts, _ = train(ts, jax.random.key(n))
        d = min(0.75, (1 + n) / (10 + n))
        want = jax.tree_util.tree_map(lambda a, b, d=d: d * np.asarray(a, np.float64) + (1 - d) * np.asarray(b),
                                      want, {"params": ts.params, "state": ts.state})
        if n in (0, 39):  # before and after the warm-up reaches 0.75
            assert _max_rel(ts.ema, want) < 1e-5
    with pytest.raises(ValueError, match="init\\(..., ema=True\\)"):
        step.train_step(WITH_BN, tx, step.init(WITH_BN, jax.random.key(0), (8, 8, 1), tx), x, y, jax.random.key(1),
                        ema_decay=0.5)

    data = tiny_data()
    cfg = replace(BASE, epochs=2, batch=32, ema=0.9, num_seeds=2)
    whole = fit(WITH_BN, data, cfg, quiet=True, out_dir=tmp_path / "a")
    rec = whole.history[-1]
    assert set(rec.ema) == {"test_loss", "test_accuracy", "test_top5"} and len(rec.ema["test_accuracy"]) == 2
    # the reported EMA accuracy is the EMA weights' accuracy, checked with the public evaluate
    norm = (data.x_test.astype(np.float32) - data.mean * 255) / (data.std * 255)
    for s in range(2):
        ema = jax.tree_util.tree_map(lambda a, s=s: a[s], whole.ema)
        score = step.evaluate(WITH_BN, ema["params"], ema["state"], norm, data.y_test)
        assert abs(score["accuracy"] - rec.ema["test_accuracy"][s]) < 1e-6
    assert _max_rel(whole.ema["params"], whole.params) > 1e-3  # an average, not the raw weights
    line = json.loads((tmp_path / "a" / "metrics.jsonl").read_text().splitlines()[-1])
    assert line["ema_test_accuracy"] == rec.ema["test_accuracy"]
    names = np.load(tmp_path / "a" / "ckpt-000002.npz").files
    assert any(n.startswith("['ema']['params']") for n in names) and any(n.startswith("['params']") for n in names)
    # one epoch, then resume to two: the EMA comes back from the checkpoint and ends where the whole run did
    fit(WITH_BN, data, replace(cfg, epochs=1), quiet=True, out_dir=tmp_path / "b")
    resumed = fit(WITH_BN, data, cfg, quiet=True, out_dir=tmp_path / "b", resume=True)
    assert _max_rel(resumed.ema, whole.ema) < 1e-6
    assert resumed.history[-1].ema == rec.ema


def test_bf16_trains_and_evaluates_with_float32_weights_and_statistics():
    data = tiny_data()
    cfg = replace(BASE, epochs=2, batch=32, precision="bf16")
    trainer = Trainer(WITH_BN, cfg, data)
    assert {layer.compute_dtype for layer in trainer.model.layers if hasattr(layer, "compute_dtype")} == {"bfloat16"}
    res = fit(WITH_BN, data, cfg, quiet=True)
    f32 = fit(WITH_BN, data, replace(cfg, precision="float32"), quiet=True)
    leaves = jax.tree_util.tree_leaves((res.params, res.state))
    assert all(leaf.dtype == jnp.float32 for leaf in leaves)  # master weights and BN statistics
    assert all(np.isfinite(np.asarray(leaf)).all() for leaf in leaves)
    assert res.history[-1].train_loss[0] < res.history[0].train_loss[0]  # it trains
    assert res.mean_accuracy > 0.4  # four blob classes: chance is 0.25
    flat = [np.concatenate([np.ravel(v) for v in jax.tree_util.tree_leaves(r.params)]) for r in (res, f32)]
    diff = np.linalg.norm(flat[0] - flat[1]) / np.linalg.norm(flat[1])
    assert 1e-4 < diff < 0.2, diff  # bf16 really computed (not float32), and near it
    with pytest.raises(ValueError, match="precision='bf16'.*has none"):
        Trainer(jc.Sequential([jc.Flatten()]), cfg, data)


def test_label_noise_flips_exactly_and_only_wrongly_and_is_fixed():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 10, 1001).astype(np.int32)
    for frac in (0.0, 0.15, 0.2, 0.5):
        noisy, flipped = noisy_labels(y, 10, frac, seed=7)
        changed = np.flatnonzero(noisy != y)
        assert len(changed) == round(frac * len(y)) and np.array_equal(changed, flipped)  # all incorrect
        again, _ = noisy_labels(y, 10, frac, seed=7)
        assert np.array_equal(again, noisy)
    other, _ = noisy_labels(y, 10, 0.2, seed=8)
    assert not np.array_equal(other, noisy_labels(y, 10, 0.2, seed=7)[0])
    # the wrong classes are spread over all the others (not a fixed shift)
    noisy, flipped = noisy_labels(y, 10, 0.5, seed=0)
    assert len(np.unique((noisy[flipped] - y[flipped]) % 10)) == 9

    data = tiny_data()
    cfg = replace(BASE, batch=32, label_noise=0.25, label_noise_seed=5)
    want, _ = noisy_labels(data.y_train, 4, 0.25, 5)
    # identical across training seeds, seed batching, epochs (the Trainer keeps one label array)
    for c in (cfg, replace(cfg, seed=9, num_seeds=2), replace(cfg, num_seeds=2, seed_batching="vmap", epochs=3)):
        assert np.array_equal(Trainer(PLAIN, c, data).data.y_train, want)
    res = fit(PLAIN, data, cfg, quiet=True)
    assert res.identity["config.label_noise"] == 0.25 and res.identity["config.label_noise_seed"] == 5
    assert res.identity["label_noise_flipped"] == round(0.25 * len(data.y_train))
    assert "label_noise_flipped" not in fit(PLAIN, data, BASE, quiet=True).identity


@pytest.mark.parametrize("seed_batching", ["vmap", "unroll"])
def test_all_options_with_k_seeds_in_one_program_equal_separate_runs(seed_batching):
    """Seed s of a K-seed run with every option on equals a 1-seed run with seed s."""
    data = tiny_data()
    cfg = replace(BASE, epochs=1, batch=64, num_seeds=2, ema=0.5, accumulate=2, label_noise=0.1,
                  seed_batching=seed_batching)
    both = fit(PLAIN, data, cfg, quiet=True)
    alone = fit(PLAIN, data, replace(cfg, seed=1, num_seeds=1), quiet=True)
    one = jax.tree_util.tree_map(lambda a: a[1:], both.ema)
    assert _max_rel(one, alone.ema) < 1e-5
    assert abs(both.history[-1].ema["test_accuracy"][1] - alone.history[-1].ema["test_accuracy"][0]) < 1e-6


def test_old_checkpoints_without_the_new_fields_resume(tmp_path):
    """A checkpoint whose identity predates the options reads as a run at their defaults."""
    data = tiny_data()
    cfg = replace(BASE, epochs=2, batch=32)
    fit(PLAIN, data, replace(cfg, epochs=1), quiet=True, out_dir=tmp_path)
    ck = tmp_path / "ckpt-000001.json"
    meta = json.loads(ck.read_text())
    new = ("ema", "accumulate", "precision", "label_noise", "label_noise_seed")
    for k in new:
        del meta["identity"][f"config.{k}"]
        del meta["config"][k]
    ck.write_text(json.dumps(meta))
    res = fit(PLAIN, data, cfg, quiet=True, out_dir=tmp_path, resume=True)
    assert len(res.history) == 2
    # ... and a run with another option is refused, naming it
    from jaxcnn.storage.checkpoint import CheckpointError
    fit(PLAIN, data, replace(cfg, epochs=1), quiet=True, out_dir=tmp_path / "c")
    with pytest.raises(CheckpointError, match="config.ema"):
        fit(PLAIN, data, replace(cfg, ema=0.9), quiet=True, out_dir=tmp_path / "c", resume=True)


def test_options_reach_the_cli_and_study_files():
    from jaxcnn.cli import build_parser
    from jaxcnn.cli.args import recipe_from_args

    args = build_parser().parse_args(["train", "allconv6", "--out", "x", "--ema", "0.99", "--accumulate", "4",
                                      "--precision", "bf16", "--label-noise", "0.2", "--label-noise-seed", "3"])
    cfg = recipe_from_args(args, TrainConfig())
    assert (cfg.ema, cfg.accumulate, cfg.precision, cfg.label_noise, cfg.label_noise_seed) == (0.99, 4, "bf16", 0.2, 3)
    for bad in (["--precision", "fp16"], ["--accumulate", "0"]):
        with pytest.raises(SystemExit):
            build_parser().parse_args(["train", "allconv6", "--out", "x", *bad])
    from jaxcnn.study.plan import Plan
    plan = Plan(models=("allconv6",), recipe=TrainConfig(ema=0.9), overrides={"allconv6": {"label_noise": 0.1}})
    (m,) = plan.members()
    assert (m.recipe.ema, m.recipe.label_noise) == (0.9, 0.1)
    assert asdict(m.recipe)["label_noise"] == 0.1  # the study record's recipe, compared on rerun


def test_every_field_is_documented_in_help_cli_and_readme():
    text = pydoc.render_doc(TrainConfig, renderer=pydoc.plaintext)
    from jaxcnn.cli import build_parser
    def norm(t: str) -> str:  # argparse wraps lines to the terminal, possibly after a hyphen
        return re.sub(r"-\s+", "-", re.sub(r"\s+", " ", t))

    train_help = norm(build_parser()._subparsers._group_actions[0].choices["train"].format_help())
    readme = (ROOT / "README.md").read_text()
    table = readme.split("<!-- train-config:begin -->", 1)[1].split("<!-- train-config:end -->", 1)[0]
    for f in fields(TrainConfig):
        assert f.metadata["help"] in text, f.name
        assert f"--{f.name.replace('_', '-')}" in train_help and norm(f.metadata["help"][:40]) in train_help, f.name
        assert f"| `{f.name}` | `{f.default!r}` |" in table, f.name
        if "cli_default" in f.metadata:  # where the command line's default differs, all three say so
            assert f.metadata["cli_default"] in text and norm(f.metadata["cli_default"]) in train_help
            assert f.metadata["cli_default"] in table
