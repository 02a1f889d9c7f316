"""Training chunks kept as exported programs: found again without tracing, the same bits, keys that see every change."""

import dataclasses
import functools

import jax
import numpy as np
import pytest
from train_helpers import tiny_data, tiny_model

import jaxcnn as jc
from jaxcnn.lowering import program_cache
from jaxcnn.train import TrainConfig, TrainData, Trainer, fit, kept, step
from jaxcnn.train import trainer as trainer_module

CFG = TrainConfig(epochs=1, batch=32, lr=0.05, compile_options="xla", num_seeds=2)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A fresh program folder (JAX's compilation cache stays the session's, so the cache is on)."""
    monkeypatch.setenv("JAXCNN_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("JAXCNN_KEEP_PROGRAMS", "1")  # the session turns it off for the other tests (conftest)
    assert program_cache.enabled()
    return tmp_path / "programs"


def _traced(monkeypatch) -> list[str]:
    """Records the traces of the chunk body and of the parameter initialisation (a kept program has none)."""
    calls: list[str] = []
    chunk, init = Trainer._chunk, step.init

    def counting_chunk(self, *a, **k):
        calls.append("chunk")
        return chunk(self, *a, **k)

    def counting_init(*a, **k):
        calls.append("init")
        return init(*a, **k)

    monkeypatch.setattr(trainer_module.Trainer, "_chunk", counting_chunk)
    monkeypatch.setattr(step, "init", counting_init)
    return calls


def _leaves(res) -> list[np.ndarray]:
    return [np.asarray(v) for v in jax.tree_util.tree_leaves((res.params, res.state))]


def test_a_repeated_fit_loads_its_chunk_untraced_and_every_path_trains_the_same_bits(cache, monkeypatch):
    calls = _traced(monkeypatch)
    first = fit(tiny_model(), tiny_data(), CFG, quiet=True)
    assert set(calls) == {"chunk", "init"}
    # init, the epoch's permutation and the chunk
    assert len(list(cache.glob("*.jaxexport"))) == 3 and len(list(cache.glob("*.json"))) == 3
    calls.clear()
    second = fit(tiny_model(), tiny_data(), CFG, quiet=True)
    assert calls == []  # loaded: neither program was traced
    monkeypatch.setenv("JAXCNN_KEEP_PROGRAMS", "0")
    assert not program_cache.enabled()
    plain = fit(tiny_model(), tiny_data(), CFG, quiet=True)  # traced and compiled directly, as without a cache
    assert calls
    for a, b, c in zip(_leaves(first), _leaves(second), _leaves(plain), strict=True):
        assert np.array_equal(a, b) and np.array_equal(a, c)
    assert first.history[0].train_loss == second.history[0].train_loss == plain.history[0].train_loss


def test_a_run_that_the_chunk_does_not_divide_and_another_seed_share_a_kept_program(cache, monkeypatch):
    calls = _traced(monkeypatch)
    cfg = dataclasses.replace(CFG, batch=16, num_seeds=1, chunk=4)  # chunks of 4 unrolled steps
    data = tiny_data(n=236)  # 177 training examples: 11 steps of 16, the third chunk padded
    assert Trainer(tiny_model(), cfg, data).padded
    a = fit(tiny_model(), data, cfg, quiet=True)
    calls.clear()
    b = fit(tiny_model(), data, dataclasses.replace(cfg, seed=7), quiet=True)
    assert calls == [] and len(list(cache.glob("*.jaxexport"))) == 3  # the seed is an argument, not the program
    assert not all(np.array_equal(x, y) for x, y in zip(_leaves(a), _leaves(b), strict=True))
    monkeypatch.setattr(program_cache, "enabled", lambda: False)
    c = fit(tiny_model(), data, dataclasses.replace(cfg, seed=7), quiet=True)
    assert all(np.array_equal(x, y) for x, y in zip(_leaves(b), _leaves(c), strict=True))


def _identity(model=None, cfg=CFG, data=None, **kw):
    return kept.identity(Trainer(model or tiny_model(), cfg, data or tiny_data(), **kw))


def test_the_identity_sees_the_model_config_and_data_but_not_the_seed_or_compile_options():
    base = _identity()
    assert base is not None
    assert _identity(cfg=dataclasses.replace(CFG, seed=5, compile_options="auto", eval_batch=7)) == base
    wider = jc.Sequential([jc.Conv(9, 3, 2, 1), *tiny_model().layers[1:]])
    assert _identity(model=wider) != base
    assert _identity(cfg=dataclasses.replace(CFG, lr=np.nextafter(0.05, 1.0))) != base  # one ulp of lr
    assert _identity(cfg=dataclasses.replace(CFG, epochs=2)) != base  # the schedule is baked in
    d = tiny_data()
    shifted = TrainData((d.x_train // 2).astype(np.uint8), d.y_train, d.x_test, d.y_test, d.num_classes)
    assert not np.allclose(shifted.mean, d.mean)
    assert _identity(data=shifted) != base  # another mean: a constant of the program


class MyLayer(jc.ReLU):
    """A layer class from outside jaxcnn: its code is not in the key."""


def test_what_has_no_exact_description_is_not_kept():
    assert _identity(loss=lambda logits, y, batch=None: logits.sum()) is None
    assert _identity(model=jc.Sequential([*tiny_model().layers[:2], MyLayer(), *tiny_model().layers[3:]])) is None
    assert _identity(metrics={"m": lambda logits, y, batch: logits.mean()}) is None
    assert _identity(cfg=dataclasses.replace(CFG, loop="host")) is None


def test_fingerprint_is_exact_and_refuses_what_it_cannot_describe():
    fp = program_cache.fingerprint
    assert fp(0.1) != fp(float(np.nextafter(0.1, 1.0))) and fp(0.1) == fp(0.1)
    assert fp((1, 2)) != fp([1, 2]) and fp({"a": 1, "b": 2}) == fp({"b": 2, "a": 1})
    a = np.arange(6, dtype=np.float32)
    assert fp(a) == fp(a.copy()) and fp(a) != fp(a.astype(np.float64))
    b = a.copy()
    b[3] += 1
    assert fp(a) != fp(b) and fp(a) != fp(a.reshape(2, 3))
    assert fp(jc.Conv(16, 3)) != fp(jc.Conv(17, 3))
    assert fp(jax.nn.relu) == fp(jax.nn.relu) and fp(functools.partial(jax.nn.relu)) != fp(jax.nn.relu)

    def local(x):
        return x

    @dataclasses.dataclass(frozen=True)
    class Mine:
        n: int = 1

    a_conv, b_conv = jc.Conv(16, 3), jc.Conv(17, 3)
    assert fp(a_conv.spec) != fp(b_conv.spec) and fp(a_conv.spec) == fp(jc.Conv(16, 3).spec)  # bound methods
    for bad in (lambda x: x, local, Mine(), {1: "a"}, object(), MyLayer(), np.random.default_rng(0).normal,
                [].append):
        with pytest.raises(program_cache.Unkeyable):
            fp(bad)


def test_the_key_sees_the_environment_and_the_source(monkeypatch):
    args = (np.zeros((2, 3), np.float32), np.int32(1))
    base = program_cache.key_of(["x"], args)
    assert program_cache.key_of(["x"], args) == base
    assert program_cache.key_of(["x"], (np.zeros((2, 4), np.float32), np.int32(1))) != base
    for var, value in (("JAXCNN_NATIVE", "0"), ("XLA_FLAGS", "--xla_cpu_use_thunk_runtime=true"),
                       ("JAX_DEFAULT_MATMUL_PRECISION", "highest")):
        with monkeypatch.context() as m:
            m.setenv(var, value)
            assert program_cache.key_of(["x"], args) != base, var
    with monkeypatch.context() as m:
        m.setattr(program_cache, "_source_digest", lambda: "edited")
        assert program_cache.key_of(["x"], args) != base


def test_a_damaged_kept_program_is_reported_then_replaced(cache, monkeypatch, capsys):
    first = fit(tiny_model(), tiny_data(), CFG, quiet=True)
    for path in cache.glob("*.jaxexport"):
        path.write_bytes(b"not a flatbuffer")
    capsys.readouterr()
    calls = _traced(monkeypatch)
    second = fit(tiny_model(), tiny_data(), CFG, quiet=True)
    assert "ignoring saved program" in capsys.readouterr().err and calls
    assert all(np.array_equal(x, y) for x, y in zip(_leaves(first), _leaves(second), strict=True))
    calls.clear()
    fit(tiny_model(), tiny_data(), CFG, quiet=True)
    assert calls == []  # the entry was written again and loads
