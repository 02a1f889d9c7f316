"""Error types and texts: raised by jaxcnn's own checks, before any lax call, naming the layer path."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest

import jaxcnn.lowering.conv
from jaxcnn import (
    AvgPool,
    BatchNorm,
    Conv,
    Dense,
    DepthwiseConv,
    Dropout,
    Flatten,
    GlobalAvgPool,
    Layer,
    LayerError,
    MaxPool,
    Parallel,
    ParamsError,
    ReLU,
    Residual,
    Sequential,
    ShapeError,
    scale_width,
    walk,
    with_conv_impl,
)
from jaxcnn.layers import LEAF_TYPES

KEY = jax.random.key(0)


@pytest.fixture
def no_compute(monkeypatch):
    """Make every leaf computation (and XLA's convolution) fail loudly: the checks must come first."""

    def boom(*args, **kwargs):
        raise AssertionError("a layer computed something before the error was raised")

    for cls in LEAF_TYPES:
        monkeypatch.setattr(cls, "forward", boom)
    monkeypatch.setattr(jax.lax, "conv_general_dilated", boom)
    monkeypatch.setattr(jaxcnn.lowering.conv, "conv2d", boom)


def _raises_everywhere(model, in_shape, error=ShapeError):
    """spec, init, walk, eager apply and jitted apply all raise the same error of exactly ``error``."""
    errors = []
    x = jnp.zeros((2, *in_shape))
    calls = [
        lambda: model.spec(in_shape),
        lambda: model.init(KEY, in_shape),
        lambda: list(walk(model, in_shape)),
        lambda: model.apply({}, {}, x),
        lambda: jax.jit(lambda x: model.apply({}, {}, x))(x),
    ]
    for call in calls:
        with pytest.raises(error) as info:
            call()
        assert type(info.value) is error  # not a TypeError from lax, nor a bare ValueError
        errors.append(str(info.value))
    assert len(set(errors)) == 1, errors
    return info.value


# -- shape errors ------------------------------------------------------------------------------------------


def test_channels_not_divisible_by_groups(no_compute):
    model = Sequential([Conv(6, 3), ReLU(), Conv(8, 3, groups=4)])
    e = _raises_everywhere(model, (8, 8, 3))
    assert e.path == "layers[2]"
    assert e.keys == ("02_conv",)  # the params key is named beside the attribute path
    assert str(e).startswith("layers[2] (02_conv): Conv(features=8, groups=4) with input shape (8, 8, 6)")
    assert "input channels 6 are not divisible by groups=4" in str(e)
    e = _raises_everywhere(Conv(6, 3, groups=4), (8, 8, 8))
    assert e.path == "" and str(e).startswith("<model>: ")
    assert "features=6 is not divisible by groups=4" in str(e)


def test_dense_on_unflattened_input_suggests_flatten(no_compute):
    model = Sequential([Conv(4, 3), ReLU(), Dense(10)])
    e = _raises_everywhere(model, (8, 8, 3))
    assert e.path == "layers[2]"
    assert "Dense expects flat (D,) features" in str(e)
    assert "Flatten()" in str(e) and "(8, 8, 4)" in str(e)


def test_kernel_larger_than_padded_input(no_compute):
    model = Sequential([Conv(4, 3, stride=2), Conv(4, 5, padding="VALID")])
    e = _raises_everywhere(model, (7, 7, 3))  # 7 -> 4 after the stride; 5 > 4
    assert e.path == "layers[1]"
    assert "effective kernel 5x5 is larger than the padded input 4x4" in str(e)
    e = _raises_everywhere(Conv(4, 3, dilation=3, padding=1), (4, 4, 3))  # 7 > 4 + 2
    assert "effective kernel 7x7 is larger than the padded input 6x6" in str(e)
    e = _raises_everywhere(MaxPool(3), (2, 5, 1))
    assert "larger than the padded input 2x5" in str(e)


def test_image_layers_refuse_flat_input(no_compute):
    for layer in (Conv(4), DepthwiseConv(), MaxPool(2), AvgPool(2), GlobalAvgPool()):
        e = _raises_everywhere(Sequential([Flatten(), layer]), (4, 4, 3))
        assert e.path == "layers[1]" and "(H, W, C)" in str(e) and "(48,)" in str(e)


def test_residual_branches_with_different_shapes(no_compute):
    model = Sequential([Conv(4, 3), Residual(Sequential([Conv(8, 3), ReLU()]))])
    e = _raises_everywhere(model, (6, 6, 3))
    assert e.path == "layers[1]"
    assert "the body gives (6, 6, 8) but the shortcut gives (6, 6, 4)" in str(e)
    assert "projection shortcut" in str(e)
    strided = Residual(Conv(4, 3, stride=2), Conv(4, 1))
    e = _raises_everywhere(strided, (6, 6, 4))
    assert "body gives (3, 3, 4) but the shortcut gives (6, 6, 4)" in str(e)


def test_parallel_branches_with_different_spatial_sizes(no_compute):
    model = Parallel([Conv(4, 3), Conv(4, 3, padding="VALID")])
    e = _raises_everywhere(model, (6, 6, 3))
    assert "branch outputs differ in more than channels" in str(e)
    assert "branches[0] -> (6, 6, 4)" in str(e) and "branches[1] -> (4, 4, 4)" in str(e)


def test_nested_failure_names_the_full_path(no_compute):
    model = Sequential([Conv(4, 3), ReLU(), Parallel([Conv(2, 1), Conv(4, 3, groups=3)])])
    e = _raises_everywhere(model, (8, 8, 3))
    assert e.path == "layers[2].branches[1]"
    assert str(e).startswith(
        "layers[2].branches[1] (02_parallel/01_conv): Conv(features=4, groups=3) with input shape (8, 8, 4)"
    )

    deeper = Sequential({
        "stem": Conv(4, 3),
        "blocks": Sequential([Residual(Sequential([Conv(4, 3), BatchNorm()])),
                              Residual(Sequential([Conv(4, 3), Flatten(), Dense(3)]))]),
    })
    e = _raises_everywhere(deeper, (6, 6, 3))
    # attribute paths use positions even for named children (the names are params keys)
    assert e.path == "layers[1].layers[1]"
    assert str(e).startswith("layers[1].layers[1] (blocks/01_residual): Residual(")
    assert "body gives (3,) but the shortcut gives (6, 6, 4)" in str(e)


def test_bad_input_shapes():
    with pytest.raises(ShapeError, match="positive int"):
        Conv(4).init(KEY, (0, 8, 3))
    with pytest.raises(ShapeError, match="positive int"):
        list(walk(Sequential([Conv(4)]), (8, -1, 3)))
    with pytest.raises(ShapeError, match="tuple of ints"):
        Conv(4).init(KEY, None)
    with pytest.raises(ParamsError, match="batch axis"):
        Dense(3).apply({"w": jnp.zeros((5, 3)), "b": jnp.zeros(3)}, {}, jnp.zeros((5,)))
    with pytest.raises(ParamsError, match="batch axis"):
        ReLU().apply({}, {}, 3.0)


# -- params / state / call errors -----------------------------------------------------------------------------


def _model():
    return Sequential([Conv(4, 3), BatchNorm(), ReLU(), Residual(Sequential([Conv(4, 3), BatchNorm()]))])


@pytest.fixture(scope="module")
def trees():
    params, state = _model().init(KEY, (6, 6, 4))
    return params, state, jnp.zeros((2, 6, 6, 4))


def _copy(tree):
    return jax.tree.map(lambda a: a, tree)


def _params_error(params, state, x, path):
    with pytest.raises(ParamsError) as info:
        _model().apply(params, state, x)
    assert type(info.value) is ParamsError
    assert info.value.path == path and str(info.value).startswith(path or "<model>: ")
    return str(info.value)


def test_params_missing_key(trees):
    params, state, x = trees
    broken = _copy(params)
    del broken["03_residual"]["body"]["01_bn"]
    text = _params_error(broken, state, x, "layers[3].body")
    assert "params tree does not match the model (missing keys ['01_bn'], unexpected keys [])" in text

    broken = _copy(params)
    del broken["00_conv"]["b"]
    text = _params_error(broken, state, x, "layers[0]")
    assert "params has keys ['w'] but this layer expects ['b', 'w']" in text

    broken = _copy(params)
    broken["02_relu"] = {}
    assert "unexpected keys ['02_relu']" in _params_error(broken, state, x, "")


def test_params_wrong_shape(trees):
    params, state, x = trees
    broken = _copy(params)
    broken["03_residual"]["body"]["00_conv"]["w"] = jnp.zeros((3, 3, 4, 5))
    text = _params_error(broken, state, x, "layers[3].body.layers[0]")
    assert "params['w'] has shape (3, 3, 4, 5) but this input needs (3, 3, 4, 4)" in text
    # params made for another input shape
    broken = _copy(params)
    broken["00_conv"]["w"] = jnp.zeros((3, 3, 5, 4))
    text = _params_error(broken, state, x, "layers[0]")
    assert "params['w'] has shape (3, 3, 5, 4) but this input needs (3, 3, 4, 4)" in text and "Re-run init" in text


def test_params_not_a_dict(trees):
    params, state, x = trees
    assert "params must be a dict, got list" in _params_error([params], state, x, "")
    broken = _copy(params)
    broken["01_bn"] = (params["01_bn"]["scale"], params["01_bn"]["offset"])
    assert "params must be a dict, got tuple" in _params_error(broken, state, x, "layers[1]")
    broken = _copy(params)
    broken["00_conv"]["w"] = params["00_conv"]["w"].tolist()
    text = _params_error(broken, state, x, "layers[0]")
    assert "params['w'] has shape None but this input needs (3, 3, 4, 4)" in text


def test_wrong_state_tree(trees, no_compute):
    params, _, _ = trees
    bn = BatchNorm()
    bp, bs = bn.init(KEY, (6, 6, 4))
    with pytest.raises(ParamsError, match=r"state\['var'\] has shape \(5,\) but this input needs \(4,\)"):
        bn.apply(bp, {"mean": bs["mean"], "var": jnp.ones(5)}, jnp.zeros((2, 6, 6, 4)))
    with pytest.raises(ParamsError, match=r"state has keys \['mean'\] but this layer expects \['mean', 'var'\]"):
        bn.apply(bp, {"mean": bs["mean"]}, jnp.zeros((2, 6, 6, 4)))
    with pytest.raises(ParamsError, match="state must be a dict, got NoneType"):
        Conv(4).apply(params["00_conv"], None, jnp.zeros((2, 6, 6, 4)))
    with pytest.raises(ParamsError, match=r"params\['w'\] has shape \(3, 3, 4, 4\) but this input needs \(3, 3, 5"):
        Conv(4).apply(params["00_conv"], {}, jnp.zeros((2, 6, 6, 5)))


def test_wrong_state_tree_in_model(trees):
    params, state, x = trees
    broken = _copy(state)
    broken["01_bn"]["var"] = jnp.ones(5)
    with pytest.raises(ParamsError) as info:
        _model().apply(params, broken, x)
    assert info.value.path == "layers[1]" and "state['var'] has shape (5,)" in str(info.value)
    with pytest.raises(ParamsError, match="state tree does not match the model"):
        _model().apply(params, {}, x)
    with pytest.raises(ParamsError, match="state has keys"):
        _model().apply(params, params, x)  # params passed as state


def test_dropout_in_train_mode_needs_a_key(trees):
    model = Sequential([Conv(4, 3), Dropout(0.5), GlobalAvgPool()])
    params, state = model.init(KEY, (6, 6, 4))
    x = jnp.ones((2, 6, 6, 4))
    for call in (lambda: model.apply(params, state, x, train=True),
                 lambda: jax.jit(lambda p, s, x: model.apply(p, s, x, train=True))(params, state, x)):
        with pytest.raises(ParamsError) as info:
            call()
        assert type(info.value) is ParamsError
        assert info.value.path == "layers[1]" and "train mode needs a random key" in str(info.value)
        assert "key=jax.random.key" in str(info.value)
    model.apply(params, state, x)  # evaluation needs no key
    model.apply(params, state, x, train=True, key=KEY)


def test_errors_are_value_errors_and_carry_context():
    assert issubclass(ShapeError, LayerError) and issubclass(ParamsError, LayerError)
    assert issubclass(LayerError, ValueError)
    with pytest.raises(ShapeError) as info:
        Sequential([Flatten(), Conv(4)]).spec((4, 4, 3))
    e = info.value
    assert isinstance(e.layer, Conv) and e.in_shape == (48,) and e.hint
    assert isinstance(e.layer, Layer)


# -- bad hyperparameters: ValueError naming the class, at construction ------------------------------------------


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: Dropout(1.0), "Dropout: rate"),
        (lambda: Dropout(-0.1), "Dropout: rate"),
        (lambda: Conv(4, kernel=-1), "Conv: kernel must be >= 1"),
        (lambda: Conv(4, kernel=0), "Conv: kernel must be >= 1"),
        (lambda: DepthwiseConv(kernel=(3, -2)), "DepthwiseConv: kernel must be >= 1"),
        (lambda: Conv(4, kernel="big"), "Conv: kernel must be an int or a pair"),
        (lambda: Conv(4, stride=0), "Conv: stride"),
        (lambda: Conv(4, dilation=(1, 0)), "Conv: dilation"),
        (lambda: MaxPool(window=0), "MaxPool: window"),
        (lambda: AvgPool(2, stride=-1), "AvgPool: stride"),
        (lambda: Conv(4, padding="FULL"), "Conv: padding must be 'SAME', 'VALID'"),
        (lambda: Conv(4, padding=-1), "Conv: padding must be >= 0"),
        (lambda: MaxPool(2, padding=(1, 2, 3)), "MaxPool: padding"),
        (lambda: Conv(4, kernel_init="bogus"), "Conv: unknown initialiser 'bogus'"),
        (lambda: Dense(4, kernel_init="normal:-1"), "Dense: unknown initialiser"),
        (lambda: DepthwiseConv(kernel_init=None), "DepthwiseConv: kernel_init must be"),
        (lambda: Conv(4, impl="fast"), "Conv: impl must be one of"),
        (lambda: DepthwiseConv(impl="cuda"), "DepthwiseConv: impl must be one of"),
        (lambda: Conv(0), "Conv: features must be a positive int"),
        (lambda: Conv(4.5), "Conv: features must be a positive int"),
        (lambda: Dense(-3), "Dense: features must be a positive int"),
        (lambda: Conv(4, groups=0), "Conv: groups must be a positive int"),
        (lambda: DepthwiseConv(multiplier=0), "DepthwiseConv: multiplier"),
        (lambda: BatchNorm(ema_decay=1.0), "BatchNorm: ema_decay"),
        (lambda: BatchNorm(eps=0.0), "BatchNorm: eps"),
        (lambda: Conv(4, compute_dtype="float99"), "Conv: unknown compute_dtype"),
        (lambda: Sequential([Conv(4), "relu"]), "Sequential: item 1"),
        (lambda: Sequential([Conv(4), Conv(4)], names=("a", "a")), "Sequential: names must be unique"),
        (lambda: Sequential({"a/b": Conv(4)}), "Sequential: names must be non-empty"),
        (lambda: Parallel([]), "Parallel: needs at least one branch"),
        (lambda: Residual(body="conv"), "Residual: body must be a jaxcnn layer"),
        (lambda: with_conv_impl(Conv(4), "fast"), "impl must be one of"),
        (lambda: scale_width(Conv(4), 0.5, divisor=0), "divisor must be a positive int"),
    ],
)
def test_bad_hyperparameters_raise_value_error(make, match):
    with pytest.raises(ValueError, match=match) as info:
        make()
    assert not isinstance(info.value, LayerError)  # a construction error, not a shape/params one
