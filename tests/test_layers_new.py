"""The scaling families' layers (jaxcnn.layers.blocks) against NumPy references, their accounting and traits.

SiLU, squeeze-excitation, drop path (stochastic depth), the option-A shortcut (subsample + zero pad), and
the shape-aware Projection shortcut of PreActResidual (WRN and PreAct ResNet blocks).
The generic invariants (jit = eager, state handling, errors) run on them through tests/zoo.py.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcnn import (
    BatchNorm,
    Conv,
    Dense,
    DropPath,
    GlobalAvgPool,
    PreActResidual,
    Projection,
    ReLU,
    Residual,
    Sequential,
    SiLU,
    SqueezeExcite,
    SubsamplePad,
    scale_width,
)
from jaxcnn.core import ParamsError, ShapeError
from jaxcnn.summary import summary


def _x(shape, seed=0):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def _sigmoid(v):
    return 1.0 / (1.0 + np.exp(-v))


def test_silu_matches_numpy():
    x = _x((2, 5, 5, 3))
    y, _ = SiLU().apply({}, {}, x)
    xs = np.asarray(x, np.float64)
    np.testing.assert_allclose(np.asarray(y), xs * _sigmoid(xs), rtol=1e-5, atol=1e-6)
    s = SiLU().spec((5, 5, 3))
    assert (s.out_shape, s.macs, s.other_ops) == ((5, 5, 3), 0, 75)


@pytest.mark.parametrize("activation", ["silu", "relu"])
def test_squeeze_excite_matches_numpy(activation):
    layer = SqueezeExcite(3, activation=activation)
    x = _x((2, 6, 5, 8))
    params, state = layer.init(jax.random.key(0), (6, 5, 8))
    params = {k: _x(v.shape, seed=i + 1) for i, (k, v) in enumerate(params.items())}
    y, new_state = layer.apply(params, state, x)
    assert new_state == state == {}
    p = {k: np.asarray(v, np.float64) for k, v in params.items()}
    xs = np.asarray(x, np.float64)
    pooled = xs.mean(axis=(1, 2))  # (N, C)
    h = pooled @ p["reduce_w"] + p["reduce_b"]
    h = h * _sigmoid(h) if activation == "silu" else np.maximum(h, 0)
    gate = _sigmoid(h @ p["expand_w"] + p["expand_b"])
    np.testing.assert_allclose(np.asarray(y), xs * gate[:, None, None, :], rtol=1e-5, atol=1e-5)


def test_squeeze_excite_accounting():
    layer = SqueezeExcite(4)
    shapes = layer.param_shapes((7, 7, 16))
    assert shapes == {"reduce_w": (16, 4), "reduce_b": (4,), "expand_w": (4, 16), "expand_b": (16,)}
    s = layer.spec((7, 7, 16))
    assert s.out_shape == (7, 7, 16)
    assert s.macs == 2 * 16 * 4  # the two 1x1 convolutions on the pooled map; the multiply is not a MAC
    assert s.other_ops == 2 * 7 * 7 * 16 + 2 * 4 + 2 * 16  # pool + multiply, biases + activations
    t = summary(Sequential([Conv(16, 3), layer]), (7, 7, 3)).totals
    assert t.learnable_params == (3 * 3 * 3 * 16 + 16) + (16 * 4 + 4 + 4 * 16 + 16)
    assert t.macs == 7 * 7 * 16 * 27 + 128
    assert SqueezeExcite.decayed == ("reduce_w", "expand_w")


def test_squeeze_excite_width_trait():
    model = Sequential([Conv(16, 3), SqueezeExcite(4)])
    scaled = scale_width(model, 2)
    assert scaled == Sequential([Conv(32, 3), SqueezeExcite(8)])
    assert scaled.spec((8, 8, 3)).out_shape == (8, 8, 32)  # the expand side followed the scaled input
    assert scale_width(Sequential([Conv(16, 3), SqueezeExcite(4, keep_width=True)]), 2).layers[1].squeeze == 4
    with pytest.raises(ValueError, match="squeeze must be a positive int"):
        SqueezeExcite(0)
    with pytest.raises(ValueError, match="activation must be one of"):
        SqueezeExcite(2, activation="tanh")
    with pytest.raises(ShapeError, match="expects an image"):
        SqueezeExcite(2).spec((16,))


# -- drop path -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("rate", [0.2, 0.5])
def test_drop_path_drops_whole_examples_and_rescales(rate):
    n = 4000
    x = jnp.asarray(np.random.default_rng(0).uniform(1.0, 2.0, (n, 3, 3, 2)), jnp.float32)  # never 0
    layer = DropPath(rate)
    y, _ = layer.apply({}, {}, x, train=True, key=jax.random.key(3))
    y, xs = np.asarray(y), np.asarray(x)
    kept = (y != 0).reshape(n, -1)
    assert (kept.all(axis=1) | ~kept.any(axis=1)).all()  # all or nothing per example
    kept = kept[:, 0]
    assert abs(kept.mean() - (1 - rate)) < 5 * math.sqrt(rate * (1 - rate) / n)
    np.testing.assert_allclose(y[kept], xs[kept] / (1 - rate), rtol=1e-6)
    np.testing.assert_array_equal(layer.apply({}, {}, x)[0], xs)  # eval: identity
    np.testing.assert_array_equal(DropPath(0.0).apply({}, {}, x, train=True, key=jax.random.key(1))[0], xs)
    with pytest.raises(ParamsError, match="train mode needs a random key"):
        layer.apply({}, {}, x, train=True)
    with pytest.raises(ValueError, match="drop probability"):
        DropPath(1.0)


def test_drop_path_under_vmap_over_seeds_matches_each_seed_alone():
    """One key per seed, as the trainer vmaps its step: each seed drops its own examples, as if run alone."""
    block = Residual(Sequential([Conv(2, 3), DropPath(0.5)]))
    model = Sequential([block, block])
    x = _x((16, 4, 4, 2))
    params, state = model.init(jax.random.key(0), (4, 4, 2))
    keys = jax.random.split(jax.random.key(7), 3)

    def run(k):
        return model.apply(params, state, x, train=True, key=k)[0]

    batched = jax.jit(jax.vmap(run))(keys)
    single = jax.jit(run)
    alone = jnp.stack([single(k) for k in keys])
    np.testing.assert_allclose(np.asarray(batched), np.asarray(alone), rtol=1e-6, atol=1e-6)
    assert not np.array_equal(np.asarray(batched[0]), np.asarray(batched[1]))  # the seeds drop differently
    # and a training step's gradients, jitted and vmapped over the seeds' keys as the trainer batches them
    se_model = Sequential([Conv(4, 3), Residual(Sequential([Conv(4, 3), SiLU(), SqueezeExcite(2), DropPath(0.5)])),
                           GlobalAvgPool(), Dense(3)])
    p0, s0 = se_model.init(jax.random.key(1), (4, 4, 2))

    def loss(p, k):
        return jnp.mean(se_model.apply(p, s0, x, train=True, key=k)[0] ** 2)

    grads = jax.jit(jax.vmap(jax.grad(loss), in_axes=(None, 0)))(p0, keys)
    one = jax.jit(jax.grad(loss))
    alone = [one(p0, k) for k in keys]
    for i in range(3):
        for g, a in zip(jax.tree.leaves(grads), jax.tree.leaves(alone[i]), strict=True):
            np.testing.assert_allclose(np.asarray(g[i]), np.asarray(a), rtol=1e-4, atol=1e-6)


# -- option-A shortcut ---------------------------------------------------------------------------------


@pytest.mark.parametrize("in_shape,features,stride", [((8, 8, 4), 8, 2), ((9, 7, 3), 8, 2), ((5, 5, 4), 4, 1)])
def test_subsample_pad_matches_numpy(in_shape, features, stride):
    layer = SubsamplePad(features, stride)
    x = _x((2, *in_shape))
    y, _ = layer.apply({}, {}, x)
    xs = np.asarray(x)[:, ::stride, ::stride, :]
    c = in_shape[2]
    lo = (features - c) // 2
    ref = np.zeros((*xs.shape[:3], features), np.float32)
    ref[..., lo:lo + c] = xs
    np.testing.assert_array_equal(np.asarray(y), ref)
    s = layer.spec(in_shape)
    assert s.out_shape == ref.shape[1:] and s.macs == 0 and s.jump == (stride, stride)
    assert layer.param_shapes(in_shape) == {} and not layer.has_arrays()


def test_subsample_pad_is_the_papers_option_a_and_follows_scaled_widths():
    # a doubling 16 -> 32 pads 8 zeros on each side, like F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, 8, 8))
    x = _x((1, 4, 4, 16))
    y = np.asarray(SubsamplePad(32).apply({}, {}, x)[0])
    assert not y[..., :8].any() and not y[..., 24:].any()
    np.testing.assert_array_equal(y[..., 8:24], np.asarray(x)[:, ::2, ::2, :])
    block = Residual(Sequential([Conv(32, 3, stride=2), Conv(32, 3)]), SubsamplePad(32))
    model = Sequential([Conv(16, 3), block])
    for m in (0.5, 0.3, 1.7):
        scaled = scale_width(model, m)
        assert scaled.spec((8, 8, 3)).out_shape[-1] == round(32 * m)  # body and shortcut still agree
    assert summary(model, (8, 8, 3)).totals.learnable_params == (27 * 16 + 16) + (9 * 16 * 32 + 32) + (
        9 * 32 * 32 + 32)
    with pytest.raises(ShapeError, match="exceed features"):
        SubsamplePad(4).spec((8, 8, 8))


# -- pre-activation blocks ------------------------------------------------------------------------------


def _bn_relu():
    return Sequential([BatchNorm(), ReLU()])


@pytest.mark.parametrize("in_shape,features,stride", [((6, 6, 4), 8, 2), ((6, 6, 4), 8, 1), ((6, 6, 4), 4, 1)])
def test_preact_residual_projects_the_preactivated_input_and_adds_the_raw_one_otherwise(in_shape, features, stride):
    block = PreActResidual(_bn_relu(), Conv(features, 3, stride, 1, use_bias=False), Projection(features, stride))
    params, state = block.init(jax.random.key(0), in_shape)
    params = jax.tree.map(lambda a: _x(a.shape, seed=a.size), params)
    x = _x((2, *in_shape))
    y, _ = block.apply(params, state, x)
    a, _ = _bn_relu().apply(params["preact"], state["preact"], x)
    body, _ = Conv(features, 3, stride, 1, use_bias=False).apply(params["body"], {}, a)
    projects = features != in_shape[-1] or stride != 1
    assert block.shortcut.projects(in_shape) == projects
    if projects:
        w = np.asarray(params["shortcut"]["w"])[0, 0]  # (C, F)
        short = np.einsum("nhwc,cf->nhwf", np.asarray(a)[:, ::stride, ::stride, :], w)
        assert Projection(features, stride).param_shapes(in_shape) == {"w": (1, 1, in_shape[-1], features)}
    else:
        short = np.asarray(x)  # the raw input, not the pre-activated one
        assert params["shortcut"] == {} and Projection(features).spec(in_shape).macs == 0
    np.testing.assert_allclose(np.asarray(y), np.asarray(body) + short, rtol=1e-5, atol=1e-5)
    s = block.spec(in_shape)
    proj_macs = s.out_shape[0] * s.out_shape[1] * features * in_shape[-1] if projects else 0
    assert s.macs == s.out_shape[0] * s.out_shape[1] * features * 9 * in_shape[-1] + proj_macs


def test_projection_follows_scale_width_and_trains_with_decay_mask():
    from jaxcnn.train import step

    model = Sequential([Conv(16, 3, keep_width=True),
                        PreActResidual(_bn_relu(), Conv(16, 3, use_bias=False), Projection(16)),
                        GlobalAvgPool(), Dense(3, keep_width=True)])
    shape = (6, 6, 3)
    assert summary(model, shape).totals.learnable_params == summary(
        Sequential([Conv(16, 3), BatchNorm(), Conv(16, 3, use_bias=False), GlobalAvgPool(), Dense(3)]),
        shape).totals.learnable_params  # the identity Projection owns nothing
    wide = scale_width(model, 2)  # 16 -> 32 after a fixed 16-channel stem: now it must project
    assert wide.spec(shape).out_shape == (3,)
    assert wide.layers[1].shortcut.projects((6, 6, 16))
    params, state = wide.init(jax.random.key(0), shape)
    assert params["01_preact_residual"]["shortcut"]["w"].shape == (1, 1, 16, 32)
    mask = step.decay_mask(wide)(params)
    assert mask["01_preact_residual"]["shortcut"] == {"w": True}
    narrow_params, _ = model.init(jax.random.key(0), shape)
    assert step.decay_mask(model)(narrow_params)["01_preact_residual"]["shortcut"] == {}
