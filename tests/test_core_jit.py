"""Models are static data for jax.jit: hashable, closable over, and a train step compiles once."""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from zoo import ZOO, ZOO_IDS, nested_model

from jaxcnn import (
    AvgPool,
    BatchNorm,
    Conv,
    Dense,
    Dropout,
    GlobalAvgPool,
    L2Pool,
    MaxPool,
    Parallel,
    ReLU,
    Residual,
    Sequential,
    map_layers,
)

KEY = jax.random.key(0)


def _fresh_copy(model):
    """An equal model made of new objects, every hyperparameter normalised again."""
    return map_layers(lambda layer: dataclasses.replace(layer), model)


@pytest.mark.parametrize("case", ZOO, ids=ZOO_IDS)
def test_models_hash_equal_when_equal(case):
    copy = _fresh_copy(case.layer)
    assert copy is not case.layer
    assert copy == case.layer and hash(copy) == hash(case.layer)
    assert {case.layer: 1}[copy] == 1


def test_equality_follows_hyperparameters():
    assert Conv(4, 3, padding=1) == Conv(4, (3, 3), padding=((1, 1), (1, 1)))
    assert hash(Conv(4, 3, padding=1)) == hash(Conv(4, (3, 3), padding=((1, 1), (1, 1))))
    assert MaxPool(2) == MaxPool(2, 2) and hash(MaxPool(2)) == hash(MaxPool(2, 2))
    assert Sequential([Conv(4), ReLU()]) == Sequential((Conv(4), ReLU()))
    assert Conv(4) != Conv(5) and Conv(4) != Conv(4, stride=2) and Conv(4) != Conv(4, impl="shift")
    assert MaxPool(2) != AvgPool(2) and MaxPool(2) != L2Pool(2)
    assert Sequential({"a": ReLU()}) != Sequential({"b": ReLU()})
    assert Residual(Conv(4)) != Residual(Conv(4), Conv(4, 1))
    assert len({nested_model(), nested_model(), _fresh_copy(nested_model())}) == 1


def _model():
    return Sequential([
        Conv(4, 3), BatchNorm(), ReLU(), MaxPool(2), Dropout(0.2),
        Parallel([Conv(4, 1), AvgPool(3, 1, "SAME")]), GlobalAvgPool(), Dense(3),
    ])


@pytest.fixture(scope="module")
def setup():
    model = _model()
    params, state = model.init(KEY, (8, 8, 4))
    x = jnp.asarray(np.random.default_rng(0).standard_normal((4, 8, 8, 4)), jnp.float32)
    y = jnp.asarray([0, 1, 2, 1])
    return model, params, state, x, y


def test_model_closed_over_by_jit(setup):
    model, params, state, x, _ = setup
    eager, _ = model.apply(params, state, x)
    closed = jax.jit(lambda p, s, x: model.apply(p, s, x)[0])
    np.testing.assert_allclose(closed(params, state, x), eager, rtol=1e-5, atol=1e-5)


def test_model_as_static_argument_does_not_retrace_for_equal_models(setup):
    model, params, state, x, _ = setup
    traces = []

    @functools.partial(jax.jit, static_argnums=0, static_argnames="train")
    def run(model, params, state, x, train=False):
        traces.append(1)
        return model.apply(params, state, x, train=train, key=KEY)

    y1, s1 = run(model, params, state, x)
    y2, s2 = run(_fresh_copy(model), params, state, x)  # equal, not identical: no new trace
    assert len(traces) == 1
    np.testing.assert_array_equal(y1, y2)
    np.testing.assert_allclose(y1, model.apply(params, state, x)[0], rtol=1e-5, atol=1e-5)
    run(model, params, state, x, train=True)
    assert len(traces) == 2
    other = map_layers(lambda layer: Dropout(0.5) if isinstance(layer, Dropout) else layer, model)
    run(other, params, state, x, train=True)  # a different model is a different program
    assert len(traces) == 3


def _loss(model, params, state, x, y, key):
    logits, new_state = model.apply(params, state, x, train=True, key=key)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    return loss, new_state


def test_train_step_compiles_once(setup):
    model, params, state, x, y = setup
    opt = optax.sgd(0.1)
    traces = []

    @jax.jit
    def step(params, state, opt_state, x, y, key):
        traces.append(1)  # a Python side effect: runs only while tracing
        (loss, state), grads = jax.value_and_grad(
            functools.partial(_loss, model), has_aux=True
        )(params, state, x, y, key)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), state, opt_state, loss

    opt_state = opt.init(params)
    p, s, o = params, state, opt_state
    losses = []
    for i in range(3):
        xi = x + 0.1 * i  # new data, same shapes
        p, s, o, loss = step(p, s, o, xi, y, jax.random.key(i))
        losses.append(float(loss))
    assert len(traces) == 1
    assert all(np.isfinite(losses))
    # the step really trained: every leaf moved, the BatchNorm statistics moved;
    # except the bias of the conv that feeds BatchNorm, whose exact gradient is
    # zero (BatchNorm subtracts the batch mean), so it may move only by rounding
    moved = jax.tree.map(lambda a, b: not np.allclose(a, b), p, params)
    assert moved.pop("00_conv")["w"]
    assert all(jax.tree_util.tree_leaves(moved))
    np.testing.assert_allclose(p["00_conv"]["b"], params["00_conv"]["b"], atol=1e-5)
    assert not np.allclose(s["01_bn"]["mean"], state["01_bn"]["mean"])
