"""Invariants every layer must keep, checked over the whole zoo, plus gradients,
BatchNorm running statistics, ``walk``/``map_layers``, width and precision transforms."""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads
from zoo import ZOO, ZOO_IDS, Case, make_input, nested_model, randomize, small_cnn

from jaxcnn import (
    GELU,
    AvgPool,
    BatchNorm,
    Conv,
    Dense,
    DepthwiseConv,
    Flatten,
    GlobalAvgPool,
    GlobalMaxPool,
    Identity,
    L2Pool,
    Layer,
    MaxPool,
    Parallel,
    ReLU,
    Residual,
    Sequential,
    Tanh,
    combinators,
    count_params,
    map_layers,
    mixed_precision,
    round_channels,
    scale_width,
    walk,
)
from jaxcnn.layers import LEAF_TYPES

KEY = jax.random.key(0)


def _leaves_equal(a, b) -> bool:
    la, ta = jax.tree_util.tree_flatten(a)
    lb, tb = jax.tree_util.tree_flatten(b)
    return ta == tb and all(
        x.dtype == y.dtype and np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(la, lb, strict=True)
    )


@functools.cache
def _eager(case: Case):
    """init + eager eval-mode apply, shared by the tests of one descriptor.

    The state is init's with every value replaced by a random positive one (same tree, shapes and
    dtypes), so that "eval mode returns the state unchanged" cannot pass by accident on zeros and ones.
    """
    params, state = case.layer.init(KEY, case.in_shape)
    state = jax.tree.map(lambda a: jnp.abs(a) + 0.5, randomize(state, seed=9))
    x = make_input(case)
    y, new_state = case.layer.apply(params, state, x)
    return params, state, x, y, new_state


# -- the zoo itself ----------------------------------------------------------------------------------


def test_zoo_covers_every_layer_and_variant():
    layers = [node.layer for case in ZOO for node in walk(case.layer, case.in_shape)]
    types = {type(layer) for layer in layers}
    missing = set(LEAF_TYPES) | {Sequential, Residual, Parallel}
    assert not missing - types, f"zoo lacks {missing - types}"

    def has(pred) -> bool:
        return any(pred(layer) for layer in layers)

    required = {
        "conv SAME": lambda m: isinstance(m, Conv) and m.padding == "SAME",
        "conv VALID": lambda m: isinstance(m, Conv) and m.padding == "VALID",
        "conv symmetric explicit": lambda m: isinstance(m, Conv) and m.padding == ((1, 1), (1, 1)),
        "conv asymmetric explicit": lambda m: isinstance(m, Conv)
        and not isinstance(m.padding, str) and m.padding[0][0] != m.padding[0][1],
        "conv stride 2": lambda m: isinstance(m, Conv) and m.stride == (2, 2),
        "conv dilation 2": lambda m: isinstance(m, Conv) and m.dilation == (2, 2),
        "conv groups 4": lambda m: isinstance(m, Conv) and m.groups == 4,
        "conv no bias": lambda m: isinstance(m, Conv) and not m.use_bias,
        "conv shift": lambda m: isinstance(m, (Conv, DepthwiseConv)) and m.impl == "shift",
        "conv im2col": lambda m: isinstance(m, (Conv, DepthwiseConv)) and m.impl == "im2col",
        "depthwise multiplier 2": lambda m: isinstance(m, DepthwiseConv) and m.multiplier == 2,
        "avgpool VALID": lambda m: isinstance(m, AvgPool) and m.padding == "VALID" and not m.count_include_pad,
        "avgpool VALID incl": lambda m: isinstance(m, AvgPool) and m.padding == "VALID" and m.count_include_pad,
        "avgpool SAME excl": lambda m: isinstance(m, AvgPool) and m.padding == "SAME" and not m.count_include_pad,
        "avgpool SAME incl": lambda m: isinstance(m, AvgPool) and m.padding == "SAME" and m.count_include_pad,
        "gmp keepdims": lambda m: isinstance(m, GlobalMaxPool) and m.keepdims,
        "sequential list": lambda m: isinstance(m, Sequential) and m.names is None and m.layers,
        "sequential dict": lambda m: isinstance(m, Sequential) and m.names is not None,
        "residual identity": lambda m: isinstance(m, Residual) and m.shortcut is None,
        "residual projection": lambda m: isinstance(m, Residual) and m.shortcut is not None,
        "parallel densenet": lambda m: isinstance(m, Parallel) and isinstance(m.branches[0], Identity),
        "parallel inception": lambda m: isinstance(m, Parallel) and len(m.branches) >= 3,
        "bfloat16": lambda m: getattr(m, "compute_dtype", None) == "bfloat16",
    }
    absent = [name for name, pred in required.items() if not has(pred)]
    assert not absent, f"zoo lacks {absent}"
    nested = [c for c in ZOO if c.id == "nested"][0]
    assert max(node.depth for node in walk(nested.layer, nested.in_shape)) >= 3


# -- per-descriptor invariants ----------------------------------------------------------------------


@pytest.mark.parametrize("case", ZOO, ids=ZOO_IDS)
def test_spec_shape_is_real_shape(case, monkeypatch):
    spec = case.layer.spec(case.in_shape)
    params, state, x, y, _ = _eager(case)
    assert y.shape == (case.batch, *spec.out_shape)
    # every inner layer too: the leaves run in walk order and get the input shapes walk reports
    seen = []
    original = Layer.apply  # leaves use the base apply; containers override it

    def recording(self, params, state, x, **kw):
        seen.append((id(self), tuple(x.shape[1:])))
        return original(self, params, state, x, **kw)

    monkeypatch.setattr(Layer, "apply", recording)
    # a Conv and the ReLU after it run as one call by design (tests/test_native_dense.py): here every leaf
    # must run on its own, with the shape walk reports
    monkeypatch.setattr(combinators, "_fuses_relu", lambda layers, i: False)
    out = jax.eval_shape(lambda p, s, x: case.layer.apply(p, s, x, train=True, key=KEY)[0], params, state, x)
    monkeypatch.undo()
    assert out.shape == y.shape
    expected = [(id(n.layer), n.in_shape) for n in walk(case.layer, case.in_shape, leaves_only=True)
                if not isinstance(n.layer, Sequential)]  # an empty Sequential is a leaf of the walk
    assert seen == expected


@pytest.mark.parametrize("case", ZOO, ids=ZOO_IDS)
def test_param_counts_agree(case):
    leaves = list(walk(case.layer, case.in_shape, leaves_only=True))
    analytic_p = sum(math.prod(s) for n in leaves for s in n.layer.param_shapes(n.in_shape).values())
    analytic_s = sum(math.prod(s) for n in leaves for s in n.layer.state_shapes(n.in_shape).values())

    params, state, _, _, _ = _eager(case)
    real_p = sum(leaf.size for leaf in jax.tree_util.tree_leaves(params))
    real_s = sum(leaf.size for leaf in jax.tree_util.tree_leaves(state))

    abstract = jax.eval_shape(functools.partial(case.layer.init, in_shape=case.in_shape), KEY)
    abs_p = sum(math.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(abstract[0]))
    abs_s = sum(math.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(abstract[1]))

    assert analytic_p == real_p == abs_p == count_params(params)
    assert analytic_s == real_s == abs_s == count_params(state)
    assert jax.tree_util.tree_structure(abstract) == jax.tree_util.tree_structure((params, state))
    # has_arrays is static; a Projection owns its kernel only at shapes where it projects (else it is the identity)
    shape_dependent = getattr(case.layer, "projects", None) is not None and not case.layer.projects(case.in_shape)
    assert case.layer.has_arrays() == bool(params or state) or (shape_dependent and params == state == {})


@pytest.mark.parametrize(
    "layer, in_shape, n_params, n_state",
    [
        (Conv(4, 3), (8, 8, 3), 3 * 3 * 3 * 4 + 4, 0),
        (Conv(8, (3, 1), groups=4, use_bias=False), (5, 5, 8), 3 * 1 * (8 // 4) * 8, 0),
        (DepthwiseConv(5, multiplier=2, use_bias=True), (9, 9, 3), 5 * 5 * 3 * 2 + 3 * 2, 0),
        (Dense(7), (10,), 10 * 7 + 7, 0),
        (BatchNorm(), (4, 4, 6), 2 * 6, 2 * 6),
        (BatchNorm(use_scale=False), (6,), 6, 2 * 6),
        (Sequential([Conv(4, 1), ReLU(), Flatten(), Dense(2)]), (2, 2, 3), (3 * 4 + 4) + (16 * 2 + 2), 0),
    ],
    ids=["conv", "conv_grouped", "dwconv", "dense", "bn", "bn_noscale", "seq"],
)
def test_param_counts_against_formula(layer, in_shape, n_params, n_state):
    params, state = jax.eval_shape(functools.partial(layer.init, in_shape=in_shape), KEY)
    assert count_params(params) == n_params
    assert count_params(state) == n_state


@pytest.mark.parametrize("case", ZOO, ids=ZOO_IDS)
def test_jit_matches_eager_and_eval_keeps_state(case):
    params, state, x, y, new_state = _eager(case)
    dkey = jax.random.key(7)

    def both(params, state, x, key):
        return case.layer.apply(params, state, x), case.layer.apply(params, state, x, train=True, key=key)

    (jy, js), (jty, jts) = jax.jit(both)(params, state, x, dkey)
    ty, ts = case.layer.apply(params, state, x, train=True, key=dkey)

    tol = dict(rtol=case.rtol, atol=case.atol)
    assert jy.dtype == y.dtype and jty.dtype == ty.dtype
    np.testing.assert_allclose(np.asarray(jy, np.float32), np.asarray(y, np.float32), **tol)
    np.testing.assert_allclose(np.asarray(jty, np.float32), np.asarray(ty, np.float32), **tol)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, **tol), jts, ts)
    # eval mode returns the state it was given, eagerly and under jit
    assert _leaves_equal(new_state, state)
    assert _leaves_equal(js, state)
    assert jax.tree_util.tree_structure(ts) == jax.tree_util.tree_structure(state)


@pytest.mark.parametrize("case", ZOO, ids=ZOO_IDS)
def test_init_is_deterministic_in_the_key(case):
    p1, s1 = case.layer.init(jax.random.key(3), case.in_shape)
    p2, s2 = case.layer.init(jax.random.key(3), case.in_shape)
    assert _leaves_equal(p1, p2) and _leaves_equal(s1, s2)
    random_init = any(
        isinstance(n.layer, (Conv, DepthwiseConv, Dense)) for n in walk(case.layer, case.in_shape)
    )
    if random_init:
        p3, _ = case.layer.init(jax.random.key(4), case.in_shape)
        assert not _leaves_equal(p1, p3)


def test_sibling_layers_get_different_keys():
    model = Sequential([Conv(4, 3), Conv(4, 3), Parallel([Conv(4, 1), Conv(4, 1)])])
    params, _ = model.init(KEY, (5, 5, 4))
    assert not np.array_equal(params["00_conv"]["w"], params["01_conv"]["w"])
    branches = params["02_parallel"]
    assert not np.array_equal(branches["00_conv"]["w"], branches["01_conv"]["w"])


# -- gradients against finite differences (float64) -------------------------------------------------

GRAD_CASES = [
    ("conv_s2", Conv(3, 3, stride=2), (5, 5, 2), False),
    ("conv_grouped_dilated", Conv(4, 3, dilation=2, groups=2, padding=1), (6, 6, 4), False),
    ("dense", Dense(3), (5,), False),
    ("batchnorm_train", BatchNorm(), (3, 3, 2), True),
    ("batchnorm_train_flat", BatchNorm(), (4,), True),
    ("batchnorm_eval", BatchNorm(), (3, 3, 2), False),
    ("maxpool", MaxPool(2), (4, 4, 2), False),
    ("maxpool_same", MaxPool(3, 2, "SAME"), (5, 5, 2), False),
    ("avgpool", AvgPool(2), (4, 4, 2), False),
    ("avgpool_same_excl", AvgPool(3, 2, "SAME"), (4, 4, 2), False),
    ("l2pool", L2Pool(2), (4, 4, 2), False),
    ("gap", GlobalAvgPool(), (3, 3, 2), False),
    ("dwconv", DepthwiseConv(3, multiplier=2, use_bias=True), (4, 4, 2), False),
    ("dwconv_s2", DepthwiseConv(3, stride=2), (5, 5, 3), False),
]


@pytest.mark.parametrize("name, layer, in_shape, train", GRAD_CASES, ids=[c[0] for c in GRAD_CASES])
def test_gradients_match_finite_differences(x64, name, layer, in_shape, train):
    abstract = jax.eval_shape(functools.partial(layer.init, in_shape=in_shape), KEY)
    params = randomize(abstract[0], dtype=jnp.float64)
    state = {}
    if abstract[1]:  # a non-trivial running mean and variance for eval mode
        c = in_shape[-1]
        state = {"mean": jnp.linspace(-0.5, 0.5, c), "var": jnp.linspace(0.5, 2.0, c)}
    # distinct values spaced far more than the finite-difference step: no near-ties for max pooling
    n = 2 * math.prod(in_shape)
    x = jnp.asarray(np.random.default_rng(2).permutation(n).reshape(2, *in_shape) * (4.0 / n) - 2.0 + 1.0 / n)
    assert x.dtype == jnp.float64

    @jax.jit  # one compilation per derivative instead of one per eager op
    def f(x, params):
        return layer.apply(params, state, x, train=train)[0]

    assert f(x, params).dtype == jnp.float64
    if params:
        check_grads(f, (x, params), order=1, modes=("fwd", "rev"))
    else:
        check_grads(lambda x: f(x, params), (x,), order=1, modes=("fwd", "rev"))


# -- BatchNorm running statistics --------------------------------------------------------------------


@pytest.mark.parametrize("decay", [0.9, 0.7])
@pytest.mark.parametrize("in_shape", [(3, 3, 4), (4,)], ids=["image", "flat"])
def test_batchnorm_running_stats_follow_documented_formula(decay, in_shape):
    bn = BatchNorm(ema_decay=decay)
    params, _ = bn.init(KEY, in_shape)
    rng = np.random.default_rng(5)
    c = in_shape[-1]
    old = {"mean": rng.standard_normal(c).astype(np.float32), "var": rng.uniform(0.5, 2, c).astype(np.float32)}
    state = {k: jnp.asarray(v) for k, v in old.items()}
    for step in range(2):
        x = rng.standard_normal((5, *in_shape)) * 2.0 + 3.0
        _, state = bn.apply(params, state, jnp.asarray(x, jnp.float32), train=True)
        flat = np.asarray(x, np.float32).astype(np.float64).reshape(-1, c)
        old = {
            "mean": decay * old["mean"] + (1 - decay) * flat.mean(axis=0),
            "var": decay * old["var"] + (1 - decay) * flat.var(axis=0, ddof=1),  # unbiased
        }
        assert state["mean"].dtype == jnp.float32 and state["var"].dtype == jnp.float32, step
        np.testing.assert_allclose(state["mean"], old["mean"], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(state["var"], old["var"], rtol=1e-5, atol=1e-5)


def test_batchnorm_state_stays_float32_for_float64_inputs(x64):
    bn = BatchNorm()
    params, state = bn.init(KEY, (3,))
    x = jnp.asarray(np.random.default_rng(0).standard_normal((6, 3)))
    y, new = bn.apply(params, state, x, train=True)
    assert y.dtype == jnp.float64
    assert new["mean"].dtype == jnp.float32 and new["var"].dtype == jnp.float32


# -- walk ------------------------------------------------------------------------------------------


def _walk_model():
    return Sequential([
        Conv(4, 3),
        ReLU(),
        Residual(Sequential([Conv(4, 3), BatchNorm()]), Conv(4, 1)),
        Parallel({"skip": Identity(), "grow": Sequential([BatchNorm(), Conv(2, 3)])}),
        GlobalAvgPool(),
        Dense(3),
    ])


def test_walk_order_paths_and_key_paths():
    model = _walk_model()
    got = [(n.path, n.key_path, type(n.layer), n.depth) for n in walk(model, (6, 6, 3))]
    assert got == [
        ("", (), Sequential, 0),
        ("layers[0]", ("00_conv",), Conv, 1),
        ("layers[1]", ("01_relu",), ReLU, 1),
        ("layers[2]", ("02_residual",), Residual, 1),
        ("layers[2].body", ("02_residual", "body"), Sequential, 2),
        ("layers[2].body.layers[0]", ("02_residual", "body", "00_conv"), Conv, 3),
        ("layers[2].body.layers[1]", ("02_residual", "body", "01_bn"), BatchNorm, 3),
        ("layers[2].shortcut", ("02_residual", "shortcut"), Conv, 2),
        ("layers[3]", ("03_parallel",), Parallel, 1),
        ("layers[3].branches[0]", ("03_parallel", "skip"), Identity, 2),
        ("layers[3].branches[1]", ("03_parallel", "grow"), Sequential, 2),
        ("layers[3].branches[1].layers[0]", ("03_parallel", "grow", "00_bn"), BatchNorm, 3),
        ("layers[3].branches[1].layers[1]", ("03_parallel", "grow", "01_conv"), Conv, 3),
        ("layers[4]", ("04_gap",), GlobalAvgPool, 1),
        ("layers[5]", ("05_dense",), Dense, 1),
    ]
    shapes = {n.path: n.in_shape for n in walk(model, (6, 6, 3))}
    assert shapes["layers[3].branches[1].layers[1]"] == (6, 6, 4)
    assert shapes["layers[5]"] == (6,)
    leaves = [n.path for n in walk(model, (6, 6, 3), leaves_only=True)]
    assert leaves == [n.path for n in walk(model, (6, 6, 3)) if not n.layer.children()]


def _get(tree, keys):
    for k in keys:
        tree = tree[k]
    return tree


def _has(tree, keys) -> bool:
    for k in keys:
        if k not in tree:
            return False
        tree = tree[k]
    return True


@pytest.mark.parametrize("case", ZOO, ids=ZOO_IDS)
def test_walk_key_paths_index_params_and_state(case):
    params, state, _, _, _ = _eager(case)
    for node in walk(case.layer, case.in_shape):
        if not node.layer.has_arrays():  # arrayless layers own no entry in their parent's tree
            assert not node.key_path or not _has(params, node.key_path)
            assert not node.key_path or not _has(state, node.key_path)
            continue
        p, s = _get(params, node.key_path), _get(state, node.key_path)
        if not node.layer.children():
            assert {k: v.shape for k, v in p.items()} == node.layer.param_shapes(node.in_shape), node.path
            assert {k: v.shape for k, v in s.items()} == node.layer.state_shapes(node.in_shape), node.path


# -- map_layers ----------------------------------------------------------------------------------


def test_map_layers_replaces_relu_with_gelu():
    model = nested_model()
    swapped = map_layers(lambda m: GELU() if isinstance(m, ReLU) else m, model)
    before = list(walk(model, (9, 9, 3)))
    after = list(walk(swapped, (9, 9, 3)))
    assert [n.path for n in before] == [n.path for n in after]
    assert not any(isinstance(n.layer, ReLU) for n in after)
    relu_paths = [n.path for n in before if isinstance(n.layer, ReLU)]
    assert relu_paths and relu_paths == [n.path for n in after if isinstance(n.layer, GELU)]
    for b, a in zip(before, after, strict=True):  # everything else kept (leaves equal, names kept)
        if not isinstance(b.layer, ReLU) and not b.layer.children():
            assert a.layer == b.layer
    assert swapped.names == model.names

    hand = Sequential({"a": Conv(4, 3), "r": ReLU(), "res": Residual(Sequential([Conv(4, 3), ReLU()]))})
    hand_gelu = Sequential({"a": Conv(4, 3), "r": GELU(), "res": Residual(Sequential([Conv(4, 3), GELU()]))})
    mapped = map_layers(lambda m: GELU() if isinstance(m, ReLU) else m, hand)
    assert mapped == hand_gelu and hash(mapped) == hash(hand_gelu)
    params, state = hand.init(KEY, (5, 5, 4))
    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 5, 5, 4)), jnp.float32)
    np.testing.assert_array_equal(mapped.apply(params, state, x)[0], hand_gelu.apply(params, state, x)[0])


def test_map_layers_is_bottom_up_and_identity_rebuilds_equal():
    model = _walk_model()
    visited = []

    def descendants(layer):
        for _, _, child in layer.children():
            yield child
            yield from descendants(child)

    def fn(layer):
        # children are mapped first: a container arrives with its ReLUs already replaced
        assert not any(isinstance(d, ReLU) for d in descendants(layer))
        visited.append(type(layer).__name__)
        return Tanh() if isinstance(layer, ReLU) else layer

    out = map_layers(fn, model)
    assert visited[-1] == "Sequential" and visited.index("Conv") < visited.index("Residual")
    assert visited.count("ReLU") == 1 and len(visited) == len(list(walk(model, (6, 6, 3))))
    assert isinstance(out.layers[1], Tanh)
    same = map_layers(lambda m: m, model)
    assert same == model and hash(same) == hash(model)


# -- width transform ----------------------------------------------------------------------------------


def test_scale_width_scales_free_features_only():
    model = Sequential([
        Conv(16, 3), BatchNorm(), ReLU(), DepthwiseConv(3), BatchNorm(), Conv(32, 1),
        GlobalAvgPool(), Dense(64), Dense(10, keep_width=True),
    ])
    scaled = scale_width(model, 0.5)
    assert [getattr(m, "features", None) for m in scaled.layers] == [8, None, None, None, None, 16, None, 32, 10]
    for i in (1, 2, 3, 4, 6):  # BN, activation, depthwise, pooling: same hyperparameters, follow the input
        assert scaled.layers[i] == model.layers[i]
    nodes = {n.path: n for n in walk(scaled, (8, 8, 3))}
    assert nodes["layers[3]"].layer.param_shapes(nodes["layers[3]"].in_shape) == {"w": (3, 3, 1, 8)}
    assert nodes["layers[4]"].layer.param_shapes(nodes["layers[4]"].in_shape) == {"scale": (8,), "offset": (8,)}
    params, state = jax.eval_shape(functools.partial(scaled.init, in_shape=(8, 8, 3)), KEY)
    y = jax.eval_shape(lambda p, s, x: scaled.apply(p, s, x)[0], params, state, jnp.zeros((2, 8, 8, 3)))
    assert y.shape == (2, 10)

    conv_head = Sequential([Conv(12, 3), Conv(10, 1, keep_width=True), GlobalAvgPool()])
    assert [m.features for m in scale_width(conv_head, 2.0).layers[:2]] == [24, 10]
    assert scale_width(model, 1.0) == model


def test_scale_width_grouped_conv_keeps_cardinality():
    model = Sequential([Conv(32, 3, groups=4), ReLU(), Conv(8, 1, keep_width=True)])
    for m in (0.3, 0.5, 0.7, 1.6):
        conv = scale_width(model, m).layers[0]
        assert conv.groups == 4 and conv.features % 4 == 0
        assert abs(conv.features - math.floor(32 * m + 0.5)) <= 2  # the rounded count's nearest multiple of 4
        conv.spec((6, 6, 8))  # still valid on the (unscaled) 8 input channels


@pytest.mark.parametrize(
    "c, m, expected",
    [(32, 0.75, 24), (64, 0.5, 32), (1024, 0.25, 256), (5, 0.5, 3), (7, 0.5, 4), (10, 0.25, 3),
     (3, 0.5, 2), (24, 1.4, 34), (3, 0.1, 1), (1, 0.01, 1), (100, 1.0, 100)],
)
def test_round_channels_nearest_half_up(c, m, expected):
    assert round_channels(c, m) == expected


def _tf_slim_make_divisible(v, divisor=8, min_value=None):
    min_value = min_value or divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


def test_round_channels_divisor_8_is_tf_slim_rule():
    assert round_channels(119, 0.1, divisor=8) == 16  # 11.9: 8 would lose > 10%
    assert round_channels(32, 0.35, divisor=8) == 16
    assert round_channels(32, 0.1, divisor=8) == 8
    assert round_channels(96, 0.75, divisor=8) == 72
    for c in range(1, 400, 3):
        for m in (0.1, 0.25, 0.35, 0.5, 0.75, 1.0, 1.3, 1.4, 2.0):
            assert round_channels(c, m, divisor=8) == _tf_slim_make_divisible(c * m), (c, m)


def test_round_channels_grouped():
    assert round_channels(32, 0.3, groups=4) == 8  # 9.6 = 2.4 groups -> 2 groups (rounded once, from c * m)
    assert round_channels(40, 0.25, groups=4) == 12  # 10 = 2.5 groups -> 3 groups (halves up)
    assert round_channels(32, 0.2, groups=4) == 8  # 6.4 -> 8
    assert round_channels(8, 0.1, groups=4) == 4  # never below one per group
    assert round_channels(64, 0.5, groups=32) == 32


@pytest.mark.parametrize("bad", [0, 0.0, -0.5, -1, float("nan"), float("inf"), "wide", None])
def test_scale_width_rejects_nonpositive_width(bad):
    with pytest.raises(ValueError, match="width"):
        scale_width(nested_model(), bad)


# -- mixed precision (structure; numerics are in test_core_numerics) ------------------------------------


def test_mixed_precision_dtypes():
    model = mixed_precision(small_cnn())
    for node in walk(model, (8, 8, 3)):
        if isinstance(node.layer, (Conv, DepthwiseConv, Dense, BatchNorm)):
            assert node.layer.compute_dtype == "bfloat16"
    params, state = model.init(KEY, (8, 8, 3))
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree_util.tree_leaves(params))
    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 8, 8, 3)), jnp.float32)
    y, _ = model.apply(params, state, x)
    assert y.dtype == jnp.bfloat16
    _, new_state = model.apply(params, state, x, train=True)
    leaves = jax.tree_util.tree_leaves(new_state)
    assert leaves and all(leaf.dtype == jnp.float32 for leaf in leaves)
    assert not _leaves_equal(new_state, state)  # train mode did update the statistics
    assert mixed_precision(model, None) == small_cnn()


def test_leaf_layers_are_all_in_the_public_api():
    import jaxcnn

    for t in LEAF_TYPES + (Sequential, Residual, Parallel):
        assert getattr(jaxcnn, t.__name__) is t


def test_scale_width_keeps_grouped_conv_inputs_consistent():
    from jaxcnn.models.resnet import bottleneck

    block = bottleneck(128, 256, stride=1, groups=32, project=True)
    for m in (0.3, 0.5, 0.8, 1.7):
        scaled = scale_width(block, m)
        spec = scaled.spec((8, 8, 64))  # would raise ShapeError if the grouped conv's input disagreed
        convs = [n.layer for n in walk(scaled, (8, 8, 64)) if isinstance(n.layer, Conv)]
        grouped = [c for c in convs if c.groups == 32]
        assert len(grouped) == 1 and grouped[0].features % 32 == 0
        assert grouped[0].features == 32 * max(1, math.floor(128 * m / 32 + 0.5))
        assert spec.out_shape[-1] == 32 * max(1, math.floor(256 * m / 32 + 0.5))
