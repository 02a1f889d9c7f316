"""XLA compile options per program: no global setting on import, tuning by speed and accuracy, a disk cache."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcnn.lowering import compile_options as co
from jaxcnn.train import TrainConfig


def test_import_leaves_the_environment_and_jax_flags_alone():
    code = (
        "import os, json; before = dict(os.environ); import jaxcnn, jaxcnn.train, jaxcnn.bench; "
        "import jax.numpy as jnp; jnp.ones(2).sum().block_until_ready(); "
        "print(json.dumps([before == dict(os.environ), os.environ.get('XLA_FLAGS')]))"
    )
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.splitlines()[-1]) == [True, None]


def test_names_resolve_to_their_options_and_bad_names_are_named():
    assert co.options("xla") == {}
    assert "LIBRARY_FUSION_TYPE_REDUCE" in co.options("ynn-dot")[co._YNN]
    with pytest.raises(ValueError, match="compile_options must be one of auto, xla"):
        co.options("fast")
    with pytest.raises(ValueError, match="compile_options"):
        TrainConfig(compile_options="fast").check()
    fn, args = (lambda x: x * 2), (jnp.ones(3),)
    assert co.resolve("ynn-dot", fn, args).name == "ynn-dot"


def test_tuning_off_means_xla_default(monkeypatch):
    monkeypatch.setenv("JAXCNN_TUNE", "0")
    choice = co.resolve("auto", lambda x: x + 1, (jnp.ones(2),))
    assert (choice.name, choice.options, choice.seconds) == ("xla", {}, {})


def test_relative_errors_and_verdict_by_hand():
    want = {"a": np.array([3.0, 4.0]), "i": np.array([1, 2])}  # integer leaves are not compared
    got = {"a": np.array([3.0, 4.5]), "i": np.array([9, 9])}
    assert co.relative_errors(got, want) == [pytest.approx(0.1)]  # |(0, .5)| / |(3, 4)|
    assert co.accuracy_verdict([4e-7], [1e-7]) is None  # within 4 x the reference
    assert "leaf 0" in co.accuracy_verdict([5e-7], [1e-7])
    assert co.accuracy_verdict([4e-7], [0.0]) is None  # the float32 eps floor: 4 x 1.19e-7
    assert co.accuracy_verdict([float("nan")], [1e-7]) is not None


def test_tune_measures_once_then_reads_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("JAXCNN_CACHE_DIR", str(tmp_path))
    x = jnp.asarray(np.random.default_rng(0).standard_normal((64, 32)), jnp.float32)

    def fn(x):
        return jnp.tanh(x @ x.T).sum(0)

    first = co.tune(fn, (x,), reps=2)
    assert not first.cached and set(first.seconds) == set(co.candidates_for()) and first.key
    assert all(e < 1e-5 for e in first.errors.values())
    files = list((tmp_path / "compile-options").glob("*.json"))
    assert [f.stem for f in files] == [first.key]
    second = co.tune(fn, (x,), reps=2)
    assert second.cached and second.name == first.name and second.seconds == first.seconds
    files[0].write_text("{not json")  # a damaged entry costs a new measurement, never an error
    assert not co.tune(fn, (x,), reps=2).cached
    other = co.tune(lambda x: jnp.sin(x).sum(0), (x,), reps=2)  # another program, another key
    assert other.key != first.key


def test_a_run_too_short_to_repay_tuning_keeps_the_reference_and_a_longer_one_tunes(tmp_path, monkeypatch):
    monkeypatch.setenv("JAXCNN_CACHE_DIR", str(tmp_path))
    x = jnp.asarray(np.random.default_rng(0).standard_normal((64, 32)), jnp.float32)
    compiles, references = [], []
    real_compile, real_reference = jax.stages.Lowered.compile, co._float64_reference
    monkeypatch.setattr(jax.stages.Lowered, "compile",
                        lambda self, **kw: compiles.append(1) or real_compile(self, **kw))
    monkeypatch.setattr(co, "_float64_reference", lambda *a: references.append(1) or real_reference(*a))

    def fn(x):
        return jnp.tanh(x @ x.T).sum(0)

    short = co.tune(fn, (x,), reps=2, calls=3)
    # the reference alone was compiled and timed: 3 calls of ~50 us cannot repay ~4 compiles
    assert (short.name, list(short.seconds), short.errors) == ("xla", ["xla"], {})
    assert (len(compiles), references) == (1, [])
    t_ref = short.seconds["xla"]
    assert 3 < short.tune_above_calls and co.GAIN_BOUND * short.tune_above_calls * t_ref < 4 * 60  # a bound, not 0
    again = co.tune(fn, (x,), reps=2, calls=short.tune_above_calls)  # no longer: the record serves it
    assert again.cached and again.name == "xla" and len(compiles) == 1
    longer = co.tune(fn, (x,), reps=2, calls=short.tune_above_calls + 1)  # may repay it: measured afresh
    assert not longer.cached and set(longer.seconds) == set(co.candidates_for())
    assert longer.tune_above_calls == 0
    full = co.tune(fn, (x,), reps=2, use_cache=False)  # no run length given (benchmarks): every candidate checked
    assert set(full.errors) == set(co.candidates_for()) and references[-1:] == [1]


def test_only_a_candidate_whose_gain_repays_the_float64_check_is_checked(monkeypatch):
    x = jnp.asarray(np.random.default_rng(3).standard_normal((4, 16, 16, 64)) + 5, jnp.float32)

    def plain(x):  # a long plain sum: inaccurate under ynn-dot-only (test_numerics)
        return jnp.mean(x, axis=(0, 1, 2))

    names, references = ("xla", "ynn-dot-only"), []
    real_reference = co._float64_reference
    monkeypatch.setattr(co, "_float64_reference", lambda *a: references.append(1) or real_reference(*a))
    # long enough runs that tuning starts (0.35 x calls x 1 ms exceeds any compile); the second case's gain
    # (1e-15 s per call) repays no float64 check, which costs at least a lowering
    for faster, calls, checked in ((0.5, 10**9, True), (1 - 1e-12, 10**6, False), (2.0, 10**9, False)):
        # the candidates' medians set by hand: the decision, not the machine's speed, is under test
        monkeypatch.setattr(co, "_interleaved_seconds", lambda compiled, args, reps, f=faster:
                            {n: 1e-3 * (f if n != "xla" else 1.0) for n in compiled})
        references.clear()
        choice = co.tune(plain, (x,), names=names, reps=1, use_cache=False, calls=calls)
        assert choice.name == "xla" and choice.tune_above_calls == 0
        assert (references == [1]) == checked and (set(choice.errors) == set(names)) == checked
        assert ("ynn-dot-only" in choice.rejected) == checked  # checked, it is refused; unchecked, never chosen


def _tiny_run(monkeypatch, tmp_path, seed: int):
    """A 4-channel conv net and 48 random 8x8 images, tuning on and its cache in ``tmp_path / "cache"``."""
    from jaxcnn import Conv, Dense, GlobalAvgPool, ReLU, Sequential
    from jaxcnn.train import TrainData

    monkeypatch.setenv("JAXCNN_TUNE", "1")
    monkeypatch.setenv("JAXCNN_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(co, "GAIN_BOUND", 1e12)  # these runs are far too short to repay tuning: tune anyway
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 255, (48, 8, 8, 1), dtype=np.uint8)
    y = rng.integers(0, 3, 48)
    model = Sequential([Conv(4, 3), ReLU(), GlobalAvgPool(), Dense(3)])
    return model, TrainData(x[:32], y[:32], x[32:], y[32:], num_classes=3)


def test_fit_tunes_and_records_the_choice(monkeypatch, tmp_path):
    from jaxcnn.train import fit

    model, data = _tiny_run(monkeypatch, tmp_path, 0)
    result = fit(model, data, TrainConfig(epochs=1, batch=16, schedule="constant"), quiet=True,
                 out_dir=tmp_path / "run")
    rec = result.compile_choice
    assert rec["name"] in co.candidates_for() and set(rec["seconds"]) == set(co.candidates_for())
    meta = json.loads(sorted((tmp_path / "run").glob("ckpt-*.json"))[-1].read_text())
    assert meta["compile_options"]["name"] == rec["name"]  # recorded with the run
    # resuming with other options is allowed: they change how, not what, is computed
    again = fit(model, data, TrainConfig(epochs=2, batch=16, schedule="constant", compile_options="xla"), quiet=True,
                out_dir=tmp_path / "run", resume=True)
    assert again.compile_choice["name"] == "xla" and len(again.history) == 2
    assert jax.tree_util.tree_structure(again.params) == jax.tree_util.tree_structure(result.params)


def test_a_repeated_run_finds_its_choice_from_the_training_program_without_the_probe(monkeypatch, tmp_path):
    from jaxcnn.train import fit
    from jaxcnn.train.trainer import Trainer

    model, data = _tiny_run(monkeypatch, tmp_path, 1)
    cfg = TrainConfig(epochs=1, batch=16, schedule="constant")
    first = fit(model, data, cfg, quiet=True, out_dir=tmp_path / "a")
    assert not first.compile_choice["cached"]
    entries = sorted((tmp_path / "cache" / "compile-options").glob("*.json"))
    assert len(entries) == 2  # the probe's key and the training program's
    probes = []
    original = Trainer._choose
    monkeypatch.setattr(Trainer, "_choose", lambda self, carry, *a: probes.append(1) or original(self, carry, *a))
    second = fit(model, data, cfg, quiet=True, out_dir=tmp_path / "b")
    assert probes == [] and second.compile_choice["cached"]  # found without tracing the probe
    assert second.compile_choice["name"] == first.compile_choice["name"]
    assert second.compile_choice["seconds"] == first.compile_choice["seconds"]
    np.testing.assert_array_equal(second.test_accuracy, first.test_accuracy)  # the same compiled program
    # another program (a different batch) has no entry of its own: its probe is tuned, then both are kept
    third = fit(model, data, TrainConfig(epochs=1, batch=8, schedule="constant"), quiet=True, out_dir=tmp_path / "c")
    assert probes == [1] and not third.compile_choice["cached"]
    assert len(list((tmp_path / "cache" / "compile-options").glob("*.json"))) == 4
    # a damaged program entry costs a new measurement, with a warning, never a wrong choice
    for e in (tmp_path / "cache" / "compile-options").glob("*.json"):
        e.write_text("{not json")
    fourth = fit(model, data, cfg, quiet=True, out_dir=tmp_path / "d")
    assert probes == [1, 1] and not fourth.compile_choice["cached"]
