"""Combinators: Sequential, Residual and Parallel (channel concatenation).

Containers hold their children's params/state under readable keys in execution
order (``"03_conv"`` or a name you give), but only for children that own arrays,
so a tree path reads like the summary row. Errors from a child are re-raised with
the child's attribute path in front (``layers[3].branches[1]``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import jax
import jax.numpy as jnp

from jaxcnn.core import (
    Layer,
    LayerError,
    Params,
    ParamsError,
    Shape,
    ShapeError,
    Spec,
    State,
    batched_shape,
    check_shape,
    compose_rf,
)


def _named(owner: str, items: Any, names: Any) -> tuple[tuple[Layer, ...], tuple[str, ...] | None]:
    """Accept a list/tuple of layers or a {name: layer} mapping; validate both."""
    if isinstance(items, Mapping):
        if names is not None:
            raise ValueError(f"{owner}: give names either as dict keys or as names=, not both")
        names = tuple(items)
        items = tuple(items.values())
    items = tuple(items)
    for i, item in enumerate(items):
        if not isinstance(item, Layer):
            raise ValueError(f"{owner}: item {i} is {item!r}, not a jaxcnn layer")
    if names is not None:
        names = tuple(str(n) for n in names)
        if len(names) != len(items):
            raise ValueError(f"{owner}: {len(names)} names for {len(items)} layers")
        if len(set(names)) != len(names):
            raise ValueError(f"{owner}: names must be unique, got {names}")
        bad = [n for n in names if not n or "/" in n]
        if bad:
            raise ValueError(f"{owner}: names must be non-empty and contain no '/', got {bad}")
    return items, names


def _keys(items: tuple[Layer, ...], names: tuple[str, ...] | None) -> tuple[str, ...]:
    if names is not None:
        return names
    digits = max(2, len(str(len(items) - 1)))  # zero-padded so sorted keys keep execution order
    return tuple(f"{i:0{digits}d}_{layer.kind}" for i, layer in enumerate(items))


def _child_call(attr: str, fn, *args, _key: str | None = None, **kw):
    try:
        return fn(*args, **kw)
    except LayerError as e:
        raise e.with_prefix(attr, _key) from None


def _check_container_tree(layer: Layer, in_shape: Shape, tree: Any, what: str) -> None:
    expected = [key for _, key, child in layer.children() if child.has_arrays()]
    if not isinstance(tree, Mapping):
        raise ParamsError(
            layer, in_shape, f"{what} must be a dict, got {type(tree).__name__}",
            f"Pass the {what} returned by init for this model",
        )
    if set(tree) != set(expected):
        missing = sorted(set(expected) - set(tree))
        extra = sorted(set(tree) - set(expected))
        raise ParamsError(
            layer, in_shape,
            f"{what} tree does not match the model (missing keys {missing}, unexpected keys {extra})",
            f"Pass the {what} that init returned for this model",
        )


class _Container(Layer):
    """Shared init/apply plumbing of the combinators."""

    def init(self, key: jax.Array, in_shape: Shape) -> tuple[Params, State]:
        """Initialise every child with its own folded key; keep only array-owning children."""
        in_shape = check_shape(self, in_shape)
        self.spec(in_shape)
        params: Params = {}
        state: State = {}
        for i, ((attr, k, child), shape) in enumerate(zip(self.children(), self.child_shapes(in_shape), strict=True)):
            if not child.has_arrays():
                continue
            p, s = _child_call(attr, child.init, jax.random.fold_in(key, i), shape, _key=k)
            params[k], state[k] = p, s
        return params, state

    def apply(self, params, state, x, *, train=False, key=None):
        """Validate the trees at this level, then run ``combine`` over the children."""
        in_shape = batched_shape(self, x)
        self.spec(in_shape)
        _check_container_tree(self, in_shape, params, "params")
        _check_container_tree(self, in_shape, state, "state")
        return self.forward(params, state, x, train=train, key=key)

    def _run(self, i: int, params, state, x, new_state, *, train, key, relu: bool = False):
        attr, k, child = self.children()[i]
        sub_key = None if key is None else jax.random.fold_in(key, i)
        fn = child.apply_relu if relu else child.apply  # relu: see _fuses_relu
        y, s = _child_call(attr, fn, params.get(k, {}), state.get(k, {}), x, train=train, key=sub_key, _key=k)
        if child.has_arrays():
            new_state[k] = s
        return y


@dataclass(frozen=True)
class Sequential(_Container):
    """Run layers one after another. ``layers`` may be a list or a {name: layer} dict."""

    layers: Any
    names: tuple[str, ...] | None = field(default=None, repr=False)

    kind: ClassVar[str] = "seq"
    chained: ClassVar[bool] = True

    def __post_init__(self) -> None:
        layers, names = _named("Sequential", self.layers, self.names)
        object.__setattr__(self, "layers", layers)
        object.__setattr__(self, "names", names)

    def children(self):
        """(``layers[i]``, key, layer) per layer."""
        keys = _keys(self.layers, self.names)
        return tuple((f"layers[{i}]", k, layer) for i, (k, layer) in enumerate(zip(keys, self.layers, strict=True)))

    def replace_children(self, new):
        """Same names, new layers."""
        return Sequential(tuple(new), self.names)

    def child_shapes(self, in_shape):
        """Each layer sees the previous layer's output."""
        shapes = []
        for (attr, k, layer) in self.children():
            shapes.append(in_shape)
            in_shape = _child_call(attr, layer.spec, in_shape, _key=k).out_shape
        return tuple(shapes)

    def spec(self, in_shape: Shape) -> Spec:
        """Chain shapes, add MACs, compose receptive fields."""
        rf = ((1, 1), (1, 1))
        macs = other = 0
        shape = in_shape
        for attr, k, layer in self.children():
            s = _child_call(attr, layer.spec, shape, _key=k)
            macs += s.macs
            other += s.other_ops
            rf = compose_rf(rf, (s.rf, s.jump))
            shape = s.out_shape
        return Spec(shape, macs, other, rf[0], rf[1])

    def forward(self, params, state, x, *, train, key):
        """Feed x through each layer in order (a Conv and the ReLU after it as one call, see _fuses_relu)."""
        new_state: State = {}
        i = 0
        while i < len(self.layers):
            fuse = _fuses_relu(self.layers, i)
            x = self._run(i, params, state, x, new_state, train=train, key=key, relu=fuse)
            i += 2 if fuse else 1
        return x, new_state


def _fuses_relu(layers: tuple[Layer, ...], i: int) -> bool:
    """Whether ``layers[i]`` is a plain Conv followed by a plain ReLU, run as ``Conv.apply_relu``.

    Exact classes only: a subclass may compute something else, and stays two calls. The ReLU has no
    arrays, so skipping its own call loses no state and no check.
    """
    from jaxcnn.layers.activations import ReLU  # the layers import this module
    from jaxcnn.layers.linear import Conv

    return i + 1 < len(layers) and type(layers[i]) is Conv and type(layers[i + 1]) is ReLU


def _joined(layer: Layer, in_shape: Shape, body: Spec, short: Spec, fix: str) -> tuple[tuple[int, ...], ...]:
    """(receptive field, jump) of a residual join of two branches, or ShapeError when their shapes differ."""
    if body.out_shape != short.out_shape:
        raise ShapeError(layer, in_shape, f"the body gives {body.out_shape} but the shortcut gives {short.out_shape}",
                         f"Use {fix} so both match")
    window = tuple(max(a, b) for a, b in zip(body.rf, short.rf, strict=True))
    stride = tuple(max(a, b) for a, b in zip(body.jump, short.jump, strict=True))
    return window, stride


@dataclass(frozen=True)
class Residual(_Container):
    """``body(x) + shortcut(x)``; the shortcut is the identity unless given (a projection)."""

    body: Layer
    shortcut: Layer | None = None

    kind: ClassVar[str] = "residual"

    def __post_init__(self) -> None:
        for name in ("body", "shortcut"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, Layer):
                raise ValueError(f"Residual: {name} must be a jaxcnn layer, got {value!r}")

    def children(self):
        """body, then the shortcut if it is not the identity."""
        kids = [("body", "body", self.body)]
        if self.shortcut is not None:
            kids.append(("shortcut", "shortcut", self.shortcut))
        return tuple(kids)

    def replace_children(self, new):
        """Same structure, new body/shortcut."""
        return Residual(new[0], new[1] if len(new) > 1 else None)

    def child_shapes(self, in_shape):
        """Both branches see the block's input."""
        return tuple(in_shape for _ in self.children())

    def spec(self, in_shape: Shape) -> Spec:
        """Branch shapes must agree; the receptive field is the larger branch's."""
        body = _child_call("body", self.body.spec, in_shape, _key="body")
        short = (
            Spec(in_shape) if self.shortcut is None
            else _child_call("shortcut", self.shortcut.spec, in_shape, _key="shortcut")
        )
        window, stride = _joined(self, in_shape, body, short, "a projection shortcut (e.g. a 1x1 Conv with the "
                                                            "body's stride and features)")
        other = body.other_ops + short.other_ops + math.prod(body.out_shape)  # + the addition
        return Spec(body.out_shape, body.macs + short.macs, other, window, stride)

    def forward(self, params, state, x, *, train, key):
        """Sum of the two branches."""
        new_state: State = {}
        y = self._run(0, params, state, x, new_state, train=train, key=key)
        s = x if self.shortcut is None else self._run(1, params, state, x, new_state, train=train, key=key)
        return y + s, new_state


@dataclass(frozen=True)
class Parallel(_Container):
    """Run branches on the same input and concatenate their outputs on channels.

    Inception modules, DenseNet growth (``Parallel([Identity(), body])``) and
    channel-complement tricks are all this combinator.
    """

    branches: Any
    names: tuple[str, ...] | None = field(default=None, repr=False)

    kind: ClassVar[str] = "parallel"

    def __post_init__(self) -> None:
        branches, names = _named("Parallel", self.branches, self.names)
        if not branches:
            raise ValueError("Parallel: needs at least one branch")
        object.__setattr__(self, "branches", branches)
        object.__setattr__(self, "names", names)

    def children(self):
        """(``branches[i]``, key, branch) per branch."""
        keys = _keys(self.branches, self.names)
        return tuple((f"branches[{i}]", k, b) for i, (k, b) in enumerate(zip(keys, self.branches, strict=True)))

    def replace_children(self, new):
        """Same names, new branches."""
        return Parallel(tuple(new), self.names)

    def child_shapes(self, in_shape):
        """Every branch sees the block's input."""
        return tuple(in_shape for _ in self.branches)

    def spec(self, in_shape: Shape) -> Spec:
        """Outputs must agree except on channels; window = the largest branch's."""
        specs = [_child_call(attr, b.spec, in_shape, _key=k) for attr, k, b in self.children()]
        leading = {s.out_shape[:-1] for s in specs}
        if len(leading) != 1:
            shapes = ", ".join(f"branches[{i}] -> {s.out_shape}" for i, s in enumerate(specs))
            raise ShapeError(
                self, in_shape, f"branch outputs differ in more than channels ({shapes})",
                "Give every branch the same stride and padding so their H and W agree",
            )
        channels = sum(s.out_shape[-1] for s in specs)
        window = tuple(max(s.rf[a] for s in specs) for a in range(2))
        stride = tuple(max(s.jump[a] for s in specs) for a in range(2))
        return Spec(
            (*specs[0].out_shape[:-1], channels),
            sum(s.macs for s in specs), sum(s.other_ops for s in specs), window, stride,
        )

    def forward(self, params, state, x, *, train, key):
        """Concatenate the branch outputs on the last axis."""
        new_state: State = {}
        ys = [self._run(i, params, state, x, new_state, train=train, key=key) for i in range(len(self.branches))]
        return jnp.concatenate(ys, axis=-1), new_state


@dataclass(frozen=True)
class PreActResidual(_Container):
    """A pre-activation residual block: ``a = preact(x)``, then ``body(a) + (shortcut(a) or x)``.

    The shortcut takes the *pre-activated* ``a`` where it projects and the raw ``x`` where it is the
    identity, as in the Wide ResNet and PreAct ResNet code (He et al. 2016, Zagoruyko & Komodakis 2016):
    a :class:`~jaxcnn.layers.Projection` shortcut decides from the input shape (1x1 convolution where the
    channels or the stride change), so the block stays right under ``scale_width``. Any other shortcut
    layer always takes ``a``; ``shortcut=None`` is the identity.
    """

    preact: Layer
    body: Layer
    shortcut: Layer | None = None

    kind: ClassVar[str] = "preact_residual"

    def __post_init__(self) -> None:
        for name in ("preact", "body", "shortcut"):
            value = getattr(self, name)
            if (value is not None or name != "shortcut") and not isinstance(value, Layer):
                raise ValueError(f"PreActResidual: {name} must be a jaxcnn layer, got {value!r}")

    def children(self):
        """preact, body, then the shortcut if any."""
        kids = [("preact", "preact", self.preact), ("body", "body", self.body)]
        if self.shortcut is not None:
            kids.append(("shortcut", "shortcut", self.shortcut))
        return tuple(kids)

    def replace_children(self, new):
        """Same structure, new children."""
        return PreActResidual(new[0], new[1], new[2] if len(new) > 2 else None)

    def child_shapes(self, in_shape):
        """The body and the shortcut see the pre-activation's output."""
        a = _child_call("preact", self.preact.spec, in_shape, _key="preact").out_shape
        return (in_shape, a) + ((a,) if self.shortcut is not None else ())

    def _projects(self, shape: Shape) -> bool:
        if self.shortcut is None:
            return False
        projects = getattr(self.shortcut, "projects", None)
        return True if projects is None else bool(projects(shape))

    def spec(self, in_shape: Shape) -> Spec:
        """Pre-activation, then body and shortcut as :class:`Residual` combines them."""
        pre = _child_call("preact", self.preact.spec, in_shape, _key="preact")
        if pre.out_shape != in_shape:
            raise ShapeError(self, in_shape, f"the pre-activation changes the shape to {pre.out_shape}",
                             "Use shape-preserving layers (BatchNorm, an activation) as preact")
        body = _child_call("body", self.body.spec, pre.out_shape, _key="body")
        short = (
            _child_call("shortcut", self.shortcut.spec, pre.out_shape, _key="shortcut")
            if self.shortcut is not None else Spec(in_shape)
        )
        window, stride = _joined(self, in_shape, body, short,
                                 "a Projection shortcut with the body's stride and features")
        rf = compose_rf((pre.rf, pre.jump), (window, stride))
        other = pre.other_ops + body.other_ops + short.other_ops + math.prod(body.out_shape)  # + the addition
        return Spec(body.out_shape, pre.macs + body.macs + short.macs, other, rf[0], rf[1])

    def forward(self, params, state, x, *, train, key):
        """``body(preact(x)) + shortcut(preact(x))`` where the shortcut projects, ``+ x`` where it does not."""
        new_state: State = {}
        a = self._run(0, params, state, x, new_state, train=train, key=key)
        y = self._run(1, params, state, a, new_state, train=train, key=key)
        if self.shortcut is None:
            return y + x, new_state
        s = self._run(2, params, state, a if self._projects(tuple(a.shape[1:])) else x, new_state, train=train,
                      key=key)
        return y + s, new_state
