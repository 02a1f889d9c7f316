"""The layer protocol: hyperparameters as frozen data, three pure functions per layer.

A layer is a frozen dataclass that holds only hyperparameters. It offers

* ``spec(in_shape) -> Spec``: plain Python, no arrays. Output shape, multiply-adds,
  receptive-field window and stride. Validates the input shape and raises
  :class:`ShapeError` naming the layer path and what to do.
* ``init(key, in_shape) -> (params, state)``: arrays built from the shapes the layer
  declares in ``param_shapes``/``state_shapes`` (so an analytic count cannot drift
  from the real one).
* ``apply(params, state, x, *, train=False, key=None) -> (y, state)``: ``x`` is batched
  NHWC; every layer returns its state, stateless layers return it untouched.

Shapes given to ``spec`` and ``init`` are per example (no batch axis).
"""

from __future__ import annotations

import dataclasses
import math
import operator
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import jax
import jax.numpy as jnp

Shape = tuple[int, ...]
Params = dict[str, Any]
State = dict[str, Any]
PyTree = Any


class LayerError(ValueError):
    """A problem located at a layer path; containers prefix their part of the path."""

    def __init__(
        self, layer: Any, in_shape: Any, problem: str, hint: str = "", path: str = "", keys: tuple[str, ...] = ()
    ):
        self.layer = layer
        self.in_shape = in_shape
        self.problem = problem
        self.hint = hint
        self.path = path
        self.keys = keys  # the params-tree keys along the path, e.g. ("stage2", "block1", "conv2")
        super().__init__(self._text())

    def _text(self) -> str:
        where = self.path or "<model>"
        if self.keys:
            where += f" ({'/'.join(self.keys)})"
        text = f"{where}: {layer_label(self.layer)} with input shape {self.in_shape}: {self.problem}"
        if self.hint:
            text += f". {self.hint}"
        return text

    def with_prefix(self, prefix: str, key: str | None = None) -> LayerError:
        """Return the same error with ``prefix`` (and the child's params key) put in front of its path."""
        sep = "" if self.path.startswith("[") else "."  # an index joins its container's path directly
        path = f"{prefix}{sep}{self.path}" if self.path else prefix
        keys = ((key,) if key else ()) + self.keys
        return type(self)(self.layer, self.in_shape, self.problem, self.hint, path, keys)

    def __str__(self) -> str:
        return self._text()


class ShapeError(LayerError):
    """An input shape a layer cannot take, raised by ``spec``/``init`` before any tracing."""


class ParamsError(LayerError):
    """A params/state tree (or a call argument) that does not fit the layer, raised by ``apply``."""


def layer_label(layer: Any) -> str:
    """Short human label of a layer: its class and non-default hyperparameters."""
    if not dataclasses.is_dataclass(layer):
        return repr(layer)
    parts = []
    for f in dataclasses.fields(layer):
        if not f.repr:
            continue
        value = getattr(layer, f.name)
        if isinstance(value, Layer) or (isinstance(value, tuple) and value and isinstance(value[0], Layer)):
            continue  # children are named by their own path
        if f.default is not dataclasses.MISSING and value in (f.default, (f.default, f.default)):
            continue
        parts.append(f"{f.name}={_compact(value)!r}")
    kids = layer.children() if isinstance(layer, Layer) else ()
    if kids:
        parts.insert(0, f"{len(kids)} children")
    return f"{type(layer).__name__}({', '.join(parts)})"


def _compact(value: Any) -> Any:
    """(3, 3) -> 3 and ((1, 1), (1, 1)) -> 1 for labels."""
    if isinstance(value, tuple) and value and all(v == value[0] for v in value):
        return _compact(value[0])
    return value


@dataclass(frozen=True)
class Spec:
    """What a layer does to one example, computed without arrays.

    ``rf``/``jump`` are the receptive field (in input pixels) of one output position and the
    distance in input pixels between adjacent outputs (the product of strides), per spatial axis:
    what :class:`Node` calls ``rf``/``jump`` for the whole model up to a layer.
    ``macs`` are forward multiply-accumulates of convolutions and dense layers only;
    ``other_ops`` counts the rest (bias adds, normalisation, activations, pooling).
    """

    out_shape: Shape
    macs: int = 0
    other_ops: int = 0
    rf: tuple[int, int] = (1, 1)
    jump: tuple[int, int] = (1, 1)


def compose_rf(
    first: tuple[tuple[int, int], tuple[int, int]],
    second: tuple[tuple[int, int], tuple[int, int]],
) -> tuple[tuple[int, int], tuple[int, int]]:
    """Receptive field of ``second`` after ``first``: w = wa + (wb - 1) * sa, s = sa * sb."""
    (wa, sa), (wb, sb) = first, second
    window = tuple(a + (b - 1) * s for a, b, s in zip(wa, wb, sa, strict=True))
    stride = tuple(a * b for a, b in zip(sa, sb, strict=True))
    return window, stride  # type: ignore[return-value]


class Layer:
    """Base of every layer and combinator: see the module docstring for the protocol."""

    kind: ClassVar[str] = "layer"
    # True when children run one after another (each sees the previous output);
    # False when they all see the container's input (branches). Used for receptive fields.
    chained: ClassVar[bool] = False
    # Names of the params weight decay applies to (kernels). Declared by the layer rather than guessed
    # from a leaf name, so custom layers and optimizers get the same mask (jaxcnn.train.step.decay_mask).
    decayed: ClassVar[tuple[str, ...]] = ()
    # True when the output needs no buffer of its own (a view or an in-place op: activations, Flatten),
    # which the activation-memory accounting (jaxcnn.summary) reads.
    in_place: ClassVar[bool] = False
    # True when each position's features are transformed on their own, so the layer commutes with turning
    # a Flatten -> Dense head into convolutions (jaxcnn.transforms.fc_to_conv keeps it as it is).
    pointwise: ClassVar[bool] = False

    # -- traits that whole-model transforms read (so a new layer needs no edit elsewhere) ------
    def width_fields(self) -> dict[str, int]:
        """Hyperparameters holding free channel counts, each with the group count it must stay a multiple of.

        ``jaxcnn.transforms.scale_width`` multiplies exactly these; layers whose channels follow their input
        (depthwise, BatchNorm, pooling) declare none.
        """
        return {}

    def channel_groups(self, in_shape: Shape) -> int | None:
        """Channel groups of a convolution at input ``in_shape`` (1 = dense); None for other layers."""
        return None

    def conv_lowering(self) -> str | None:
        """``"dense"`` or ``"grouped"`` when the layer's ``impl`` hyperparameter picks a convolution lowering.

        ``jaxcnn.transforms.with_conv_impl`` sets ``impl`` on these (only the grouped ones with
        ``depthwise_only``); None for layers without that choice.
        """
        return None

    def torch_arrays(self) -> dict[str, tuple[str, str, str]]:
        """``{torch name: (tree, array name, layout)}`` for :mod:`jaxcnn.storage.interop` ({}: no torch counterpart).

        Tree ``"params"`` or ``"state"``; layout ``"conv"`` (HWIO here, OIHW in torch), ``"dense"`` (in x out
        here, out x in there) or ``""`` (as is).
        """
        return {}

    # -- analytic side -------------------------------------------------------------
    def spec(self, in_shape: Shape) -> Spec:
        """Output shape, MACs and receptive field for one example of ``in_shape``."""
        raise NotImplementedError

    def param_shapes(self, in_shape: Shape) -> dict[str, Shape]:
        """Shapes of the learnable arrays this layer owns (leaf layers only)."""
        return {}

    def state_shapes(self, in_shape: Shape) -> dict[str, Shape]:
        """Shapes of the non-learnable arrays (e.g. running statistics)."""
        return {}

    def children(self) -> tuple[tuple[str, str, Layer], ...]:
        """(attribute path, params key, child) for each direct child; empty for leaves."""
        return ()

    def replace_children(self, new: tuple[Layer, ...]) -> Layer:
        """A copy of this layer whose children are ``new`` (same order as ``children``)."""
        if new:
            raise TypeError(f"{type(self).__name__} has no children")
        return self

    def child_shapes(self, in_shape: Shape) -> tuple[Shape, ...]:
        """The input shape each child sees, given this layer's input shape."""
        return ()

    # -- array side ------------------------------------------------------------------
    def init(self, key: jax.Array, in_shape: Shape) -> tuple[Params, State]:
        """Fresh ``(params, state)`` for an input of per-example shape ``in_shape``."""
        in_shape = check_shape(self, in_shape)
        self.spec(in_shape)
        params = {
            name: self.init_param(name, jax.random.fold_in(key, i), shape, in_shape)
            for i, (name, shape) in enumerate(self.param_shapes(in_shape).items())
        }
        state = {
            name: self.init_state(name, shape) for name, shape in self.state_shapes(in_shape).items()
        }
        return params, state

    def init_param(self, name: str, key: jax.Array, shape: Shape, in_shape: Shape) -> jax.Array:
        """Initial value of learnable array ``name`` (leaf layers override)."""
        raise NotImplementedError

    def init_state(self, name: str, shape: Shape) -> jax.Array:
        """Initial value of state array ``name`` (zeros unless overridden)."""
        return jnp.zeros(shape, jnp.float32)

    def apply(
        self,
        params: Params,
        state: State,
        x: jax.Array,
        *,
        train: bool = False,
        key: jax.Array | None = None,
    ) -> tuple[jax.Array, State]:
        """Run the layer on a batch ``x`` (NHWC); returns ``(y, new_state)``."""
        self.check_call(params, state, x)
        return self.forward(params, state, x, train=train, key=key)

    def check_call(self, params: Params, state: State, x: jax.Array) -> Shape:
        """Check ``x``'s shape and the two trees as :meth:`apply` does; returns the per-example input shape."""
        in_shape = batched_shape(self, x)
        self.spec(in_shape)
        check_tree(self, in_shape, params, self.param_shapes(in_shape), "params")
        check_tree(self, in_shape, state, self.state_shapes(in_shape), "state")
        return in_shape

    def forward(
        self, params: Params, state: State, x: jax.Array, *, train: bool, key: jax.Array | None
    ) -> tuple[jax.Array, State]:
        """The computation itself, after ``apply`` has validated its arguments."""
        raise NotImplementedError

    # -- conveniences ----------------------------------------------------------------
    def has_arrays(self) -> bool:
        """Whether this layer (or a descendant) owns params or state; static, no shapes needed.

        Derived from the declarations: a layer whose class defines ``param_shapes`` or
        ``state_shapes`` owns arrays, so a custom leaf cannot declare shapes and forget this.
        """
        cls = type(self)
        if cls.param_shapes is not Layer.param_shapes or cls.state_shapes is not Layer.state_shapes:
            return True
        return any(child.has_arrays() for _, _, child in self.children())

    def __call__(self, params: Params, state: State, x: jax.Array, **kw: Any):
        """Same as ``apply``."""
        return self.apply(params, state, x, **kw)


def check_shape(layer: Layer, in_shape: Any) -> Shape:
    """Normalise ``in_shape`` to a tuple of positive ints or raise ShapeError."""
    try:
        # operator.index: ints and NumPy integers only, so (8.5, 8, 1) is refused rather than truncated to 8
        shape = tuple(operator.index(d) for d in in_shape)
    except TypeError:
        raise ShapeError(
            layer, in_shape, "the input shape must be a tuple of ints", "Pass e.g. (32, 32, 3)"
        ) from None
    if any(d <= 0 for d in shape) or not shape:
        raise ShapeError(
            layer, in_shape, "every dimension must be a positive int",
            "Give the per-example shape without the batch axis, e.g. (32, 32, 3)",
        )
    return shape


def batched_shape(layer: Layer, x: Any) -> Shape:
    """Per-example shape of a batched array, raising ParamsError for non-arrays."""
    shape = getattr(x, "shape", None)
    if shape is None or len(shape) < 2:
        raise ParamsError(
            layer, getattr(x, "shape", type(x).__name__),
            "apply takes a batched array with a leading batch axis",
            "Add a batch axis, e.g. x[None]",
        )
    dtype = getattr(x, "dtype", None)
    if dtype is not None and not (jnp.issubdtype(dtype, jnp.floating) or jnp.issubdtype(dtype, jnp.integer)
                                  or jnp.issubdtype(dtype, jnp.bool_)):
        raise ParamsError(
            layer, tuple(shape[1:]), f"apply takes real-valued input, got dtype {dtype}",
            "Pass a float (or integer) array, e.g. x.real.astype(jnp.float32) if the data is complex by mistake",
        )
    return tuple(shape[1:])


def check_tree(
    layer: Layer, in_shape: Shape, tree: Any, expected: Mapping[str, Shape], what: str
) -> None:
    """Raise ParamsError unless ``tree`` is a dict with exactly the expected arrays."""
    if not isinstance(tree, Mapping):
        raise ParamsError(
            layer, in_shape, f"{what} must be a dict, got {type(tree).__name__}",
            f"Pass the {what} returned by init for this layer",
        )
    if set(tree) != set(expected):
        raise ParamsError(
            layer, in_shape,
            f"{what} has keys {sorted(tree)} but this layer expects {sorted(expected)}",
            f"Pass the {what} that init returned for this model and input shape",
        )
    for name, shape in expected.items():
        got = getattr(tree[name], "shape", None)
        if got is None or tuple(got) != tuple(shape):
            raise ParamsError(
                layer, in_shape,
                f"{what}['{name}'] has shape {got} but this input needs {tuple(shape)}",
                "Re-run init with the input shape you apply the model to",
            )


# -- traversal -------------------------------------------------------------------------


@dataclass(frozen=True)
class Node:
    """One layer met by :func:`walk`: where it is, what it is, what it gets and gives."""

    path: str  # attribute path, e.g. "layers[3].branches[1]"
    key_path: tuple[str, ...]  # keys into the params/state trees
    layer: Layer
    in_shape: Shape
    spec: Spec
    depth: int
    rf: tuple[int, int]  # receptive field of one output position, in model-input pixels
    jump: tuple[int, int]  # distance in model-input pixels between adjacent outputs

    @property
    def is_leaf(self) -> bool:
        """True for layers without children."""
        return not self.layer.children()


def walk(model: Layer, in_shape: Shape, *, leaves_only: bool = False) -> Iterator[Node]:
    """Yield every layer of ``model`` in execution order (containers before their children)."""
    in_shape = check_shape(model, in_shape)
    yield from _walk(model, in_shape, "", (), 0, leaves_only, ((1, 1), (1, 1)))


def _walk(
    layer: Layer,
    in_shape: Shape,
    path: str,
    keys: tuple[str, ...],
    depth: int,
    leaves_only: bool,
    rf_in: tuple[tuple[int, int], tuple[int, int]],
) -> Iterator[Node]:
    spec = layer.spec(in_shape)  # errors already carry the path: the root's spec checks all
    rf_out = compose_rf(rf_in, (spec.rf, spec.jump))
    kids = layer.children()
    if not kids or not leaves_only:
        yield Node(path, keys, layer, in_shape, spec, depth, rf_out[0], rf_out[1])
    rf_child = rf_in
    for (attr, key, child), shape in zip(kids, layer.child_shapes(in_shape), strict=True):
        child_path = f"{path}{attr}" if attr.startswith("[") or not path else f"{path}.{attr}"
        yield from _walk(child, shape, child_path, keys + (key,), depth + 1, leaves_only, rf_child)
        if layer.chained:
            s = child.spec(shape)
            rf_child = compose_rf(rf_child, (s.rf, s.jump))


def map_layers(fn: Callable[[Layer], Layer], model: Layer) -> Layer:
    """Rebuild ``model`` bottom-up, replacing every layer ``l`` by ``fn(l)``."""
    kids = model.children()
    if kids:
        model = model.replace_children(tuple(map_layers(fn, c) for _, _, c in kids))
    return fn(model)


def count_params(tree: PyTree) -> int:
    """Number of scalars in a params or state tree."""
    return sum(math.prod(getattr(leaf, "shape", ())) for leaf in jax.tree_util.tree_leaves(tree))


def tree_shapes(tree: PyTree) -> PyTree:
    """The same tree with every array replaced by its shape tuple (for printing)."""
    return jax.tree_util.tree_map(lambda a: tuple(a.shape), tree)
