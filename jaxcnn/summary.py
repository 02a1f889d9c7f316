"""Exact, array-free accounting of a model: per-layer rows and totals.

Conventions (printed under every table):

* MACs are forward multiply-accumulates of convolutions and dense layers for one
  example; FLOPs = 2 x MACs. Bias adds, BatchNorm, activations and pooling are
  reported separately as ``other_ops`` and are not in the headline MACs.
* Learnable parameters are weights, biases and BatchNorm scale/offset; state is the
  BatchNorm running mean and variance (not learnable, but saved and loaded).
* Activations are the elements of every layer output except layers counted as in
  place (Flatten, Identity, elementwise activations, Dropout), as in cs231n's VGG
  memory table: the tensors a backward pass keeps.
* Training memory (estimate) = parameter bytes x (1 weight + 1 gradient + optimizer
  slots: SGD 0, momentum 1, Adam 2) + state bytes + batch x (input + activations)
  bytes. Inference peak (estimate) = parameters + state + the largest set of
  simultaneously live activations for the batch, assuming no fusion or in-place ops.
* Training FLOPs (estimate) = 3 x forward FLOPs (backward ~ 2 x forward).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from jaxcnn.core import Layer, Node, Shape, check_shape, layer_label, walk
from jaxcnn.transforms import with_conv_impl

# Optimizer name -> state arrays kept per parameter (momentum 1, Adam's two moments 2). Accounting knowledge
# (the training-memory estimate reads the count), so it lives here; TrainConfig and the CLI take the names.
OPTIMIZER_SLOTS: dict[str, int] = {"sgd": 0, "momentum": 1, "nesterov": 1, "adam": 2, "adamw": 2}

# Layers declaring Layer.in_place (reshapes, aliases, elementwise activations, dropout) get no
# activation tensor of their own, as cs231n's VGG memory table counts them.


@dataclass(frozen=True)
class Row:
    """One layer of the summary, in execution order."""

    path: str
    name: str
    kind: str
    layer: str
    depth: int
    is_leaf: bool
    in_shape: Shape
    out_shape: Shape
    learnable_params: int
    state_params: int
    groups: int | None
    macs: int
    other_ops: int
    activations: int
    activation_bytes: int
    rf: tuple[int, int]
    jump: tuple[int, int]


@dataclass(frozen=True)
class Totals:
    """The whole model's figures (per example unless named per batch); JSON names each field the same."""

    learnable_params: int
    state_params: int  # BatchNorm running statistics
    total_params: int
    learnable_bytes: int
    state_bytes: int
    total_param_bytes: int
    macs: int  # forward multiply-accumulates of conv and dense layers, one example
    flops: int  # 2 x macs
    other_ops: int  # bias, BN, activations, pooling: not in macs
    input_elements: int
    activations: int  # output elements of every leaf layer, one example
    activation_bytes_per_example: int
    forward_activation_bytes: int  # for the batch
    train_memory_bytes: int  # estimate for the batch and optimizer
    train_memory_is_estimate: bool
    inference_peak_bytes: int  # estimate for the batch
    inference_peak_is_estimate: bool
    train_flops_estimate: int  # 3 x forward FLOPs, for the batch
    forward_flops_batch: int
    receptive_field: list[int]
    jump: list[int]
    output_shape: list[int]

    def to_dict(self) -> dict[str, Any]:
        """The totals as a JSON-ready dict (the field names as keys)."""
        return asdict(self)


@dataclass(frozen=True)
class Summary:
    """Rows plus totals; ``str()`` prints the table, ``to_json()`` serialises it."""

    model: str
    input_shape: Shape
    batch: int
    optimizer: str
    rows: list[Row]
    totals: Totals

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (rows as dicts) for JSON."""
        return {
            "model": self.model,
            "input_shape": list(self.input_shape),
            "batch": self.batch,
            "optimizer": self.optimizer,
            "conventions": CONVENTIONS,
            "rows": [asdict(r) for r in self.rows],
            "totals": self.totals.to_dict(),
        }

    def to_json(self, indent: int | None = 1) -> str:
        """JSON text of :meth:`to_dict`."""
        return json.dumps(self.to_dict(), indent=indent)

    def table(self, *, leaves_only: bool = False, max_depth: int | None = None) -> str:
        """Fixed-width text table followed by the totals and the conventions."""
        return format_table(self, leaves_only=leaves_only, max_depth=max_depth)

    def __str__(self) -> str:
        return self.table()


CONVENTIONS = (
    "MACs = forward multiply-accumulates of conv and dense layers per example; FLOPs = 2 x MACs; "
    "bias/BN/activation/pooling ops are in other_ops, not in MACs. Learnable = weights, biases, "
    "BN scale/offset; state = BN running mean/var. Memory figures marked (estimate) assume no fusion."
)


def _leaf_sizes(node: Node) -> tuple[int, int]:
    layer, shape = node.layer, node.in_shape
    learn = sum(math.prod(s) for s in layer.param_shapes(shape).values())
    state = sum(math.prod(s) for s in layer.state_shapes(shape).values())
    return learn, state


def _peak(layer: Layer, in_shape: Shape) -> int:
    """Largest number of simultaneously live activation elements (one example)."""
    kids = layer.children()
    n_in = math.prod(in_shape)
    out = math.prod(layer.spec(in_shape).out_shape)
    if not kids:
        return n_in if layer.in_place else n_in + out
    shapes = layer.child_shapes(in_shape)
    if layer.chained:
        return max(_peak(c, s) for (_, _, c), s in zip(kids, shapes, strict=True))
    # branches: the input stays live while each branch runs, earlier outputs too
    best, held = 0, 0
    for (_, _, child), shape in zip(kids, shapes, strict=True):
        best = max(best, n_in + held + _peak(child, shape))
        held += math.prod(child.spec(shape).out_shape)
    return max(best, n_in + held + out)


def summary(
    model: Layer,
    input_shape: Shape,
    *,
    batch: int = 1,
    optimizer: str = "sgd",
    activation_dtype: str = "float32",
    param_dtype: str = "float32",
    name: str | None = None,
) -> Summary:
    """Account for ``model`` on per-example ``input_shape`` without allocating arrays.

    Args:
        model: any model (the layers' ``spec`` and declared shapes give every number).
        input_shape: one example's shape, e.g. ``(224, 224, 3)``.
        batch: the batch size of the memory estimates.
        optimizer: the optimizer whose state slots count in the training-memory estimate.
        activation_dtype: dtype of the activations (memory columns).
        param_dtype: dtype of the parameters (memory columns).
        name: the title of the table.

    Returns:
        :class:`Summary`: per-layer rows (shapes, parameters, MACs, receptive field) and totals.
    """
    if not isinstance(batch, int) or isinstance(batch, bool) or batch < 1:
        raise ValueError(f"batch must be a positive int, got {batch!r}")
    if optimizer not in OPTIMIZER_SLOTS:
        raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZER_SLOTS)}, got {optimizer!r}")
    input_shape = check_shape(model, input_shape)
    act_bytes = np.dtype(activation_dtype).itemsize
    par_bytes = np.dtype(param_dtype).itemsize
    rows: list[Row] = []
    learn_total = state_total = macs = other = acts = 0
    for node in walk(model, input_shape):
        leaf = node.is_leaf
        learn, state = _leaf_sizes(node) if leaf else (0, 0)
        n_out = math.prod(node.spec.out_shape)
        kept = n_out if leaf and not node.layer.in_place else 0
        if leaf:
            learn_total += learn
            state_total += state
            macs += node.spec.macs
            other += node.spec.other_ops
            acts += kept
        rows.append(
            Row(
                path=node.path or "<model>",
                name="/".join(node.key_path) or "<model>",
                kind=node.layer.kind,
                layer=layer_label(node.layer),
                depth=node.depth,
                is_leaf=leaf,
                in_shape=node.in_shape,
                out_shape=node.spec.out_shape,
                learnable_params=learn,
                state_params=state,
                groups=node.layer.channel_groups(node.in_shape),
                macs=node.spec.macs,
                other_ops=node.spec.other_ops,
                activations=kept if leaf else n_out,
                activation_bytes=(kept if leaf else n_out) * act_bytes,
                rf=node.rf,
                jump=node.jump,
            )
        )
    # container rows: sums over their subtree, so a block reads like one layer
    rows = _fill_containers(rows)
    root = rows[0]
    n_in = math.prod(input_shape)
    param_bytes = learn_total * par_bytes
    state_bytes = state_total * 4  # running statistics are float32 always
    slots = OPTIMIZER_SLOTS[optimizer]
    train_bytes = param_bytes * (2 + slots) + state_bytes + batch * (n_in + acts) * act_bytes
    peak = _peak(model, input_shape)
    totals = Totals(
        learnable_params=learn_total,
        state_params=state_total,
        total_params=learn_total + state_total,
        learnable_bytes=param_bytes,
        state_bytes=state_bytes,
        total_param_bytes=param_bytes + state_bytes,
        macs=macs,
        flops=2 * macs,
        other_ops=other,
        input_elements=n_in,
        activations=acts,
        activation_bytes_per_example=acts * act_bytes,
        forward_activation_bytes=batch * acts * act_bytes,
        train_memory_bytes=train_bytes,
        train_memory_is_estimate=True,
        inference_peak_bytes=param_bytes + state_bytes + batch * peak * act_bytes,
        inference_peak_is_estimate=True,
        train_flops_estimate=3 * 2 * macs * batch,
        forward_flops_batch=2 * macs * batch,
        receptive_field=list(root.rf),
        jump=list(root.jump),
        output_shape=list(root.out_shape),
    )
    return Summary(name or type(model).__name__, input_shape, batch, optimizer, rows, totals)


def _fill_containers(rows: list[Row]) -> list[Row]:
    """Give container rows the parameter and op sums of the leaf rows below them."""
    out = list(rows)
    for i, row in enumerate(rows):
        if row.is_leaf:
            continue
        learn = state = macs = other = 0
        for below in rows[i + 1:]:
            if below.depth <= row.depth:
                break
            if below.is_leaf:
                learn += below.learnable_params
                state += below.state_params
                macs += below.macs
                other += below.other_ops
        out[i] = dataclasses.replace(row, learnable_params=learn, state_params=state, macs=macs, other_ops=other)
    return out


# -- printing --------------------------------------------------------------------------


def _fmt_shape(shape: Shape) -> str:
    return "x".join(str(d) for d in shape)


def _mib(n: int) -> str:
    return f"{n / 2**20:,.2f} MiB"


def format_table(s: Summary, *, leaves_only: bool = False, max_depth: int | None = None) -> str:
    """The summary as fixed-width text."""
    headers = ["name", "layer", "output", "learnable", "state", "MACs", "activations", "RF", "jump"]
    lines = []
    for r in s.rows:
        if r.depth == 0 and not r.is_leaf:
            continue  # the model itself is the totals
        if leaves_only and not r.is_leaf:
            continue
        if max_depth is not None and r.depth > max_depth:
            continue
        indent = "" if leaves_only else "  " * (r.depth - 1)
        label = r.layer if len(r.layer) <= 64 else r.layer[:61] + "..."
        lines.append([
            indent + r.name.split("/")[-1], label, _fmt_shape(r.out_shape), f"{r.learnable_params:,}",
            f"{r.state_params:,}", f"{r.macs:,}", f"{r.activations:,}", f"{r.rf[0]}x{r.rf[1]}",
            f"{r.jump[0]}x{r.jump[1]}",
        ])
    widths = [max(len(h), *(len(line[i]) for line in lines)) if lines else len(h) for i, h in enumerate(headers)]
    right = {3, 4, 5, 6}

    def fmt(cells: list[str]) -> str:
        return "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths,
                                                                                                strict=True)))

    t = s.totals
    out = [
        f"{s.model}  input {_fmt_shape(s.input_shape)}  batch {s.batch}  optimizer {s.optimizer}",
        fmt(headers),
        "-" * (sum(widths) + 2 * (len(widths) - 1)),
        *(fmt(line) for line in lines),
        "-" * (sum(widths) + 2 * (len(widths) - 1)),
        f"output shape:           {_fmt_shape(tuple(t.output_shape))}",
        f"learnable parameters:   {t.learnable_params:,} ({_mib(t.learnable_bytes)})",
        f"state (BN statistics):  {t.state_params:,} ({_mib(t.state_bytes)})",
        f"total parameters:       {t.total_params:,} ({_mib(t.total_param_bytes)})",
        f"MACs per example:       {t.macs:,}",
        f"FLOPs per example:      {t.flops:,} (= 2 x MACs)",
        f"other ops per example:  {t.other_ops:,} (bias, BN, activations, pooling; not in MACs)",
        f"activations:            {t.activations:,} per example; {_mib(t.forward_activation_bytes)}"
        f" forward for batch {s.batch}",
        f"training memory:        {_mib(t.train_memory_bytes)} (estimate: params x (2 + {s.optimizer} slots)"
        " + state + batch x activations)",
        f"inference peak:         {_mib(t.inference_peak_bytes)} (estimate: params + live activations)",
        f"training FLOPs / step:  {t.train_flops_estimate:,} (estimate: 3 x forward, batch {s.batch})",
        f"receptive field:        {t.receptive_field[0]}x{t.receptive_field[1]}, "
        f"jump {t.jump[0]}x{t.jump[1]}",
        f"conventions: {CONVENTIONS}",
    ]
    return "\n".join(out)


# -- XLA cross-check -------------------------------------------------------------------


def xla_flops(model: Layer, input_shape: Shape, *, batch: int = 1) -> float:
    """FLOPs of the compiled forward pass according to XLA's cost analysis (a cross-check only).

    XLA counts 2 per multiply-add over non-padded taps only, and adds elementwise
    ops, so it equals ``2 x MACs`` only for VALID/1x1 convolutions and dense layers
    without bias or activations. Convolutions are counted as the XLA primitive
    (``impl="xla"``): the other lowerings compute the same function with different
    programs (the shifted form multiplies the zero padding too), which would not test the
    analytic count.
    """
    import jax
    import jax.numpy as jnp

    model = with_conv_impl(model, "xla")

    shape = tuple(int(d) for d in input_shape)  # static: a tuple argument to eval_shape would be traced
    params, state = jax.eval_shape(lambda k: model.init(k, shape), jax.random.key(0))
    x = jax.ShapeDtypeStruct((batch, *shape), jnp.float32)

    def fwd(p, s, xb):
        return model.apply(p, s, xb, train=False)[0]

    cost = jax.jit(fwd).lower(params, state, x).compile().cost_analysis()
    if isinstance(cost, list):  # older jax returned one dict per computation
        cost = cost[0]
    return float(cost["flops"])
