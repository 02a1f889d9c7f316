"""The training step as public pure functions: bring your own optimizer, loss, metrics and loop.

:func:`jaxcnn.train.fit` is built from these pieces, so a custom loop written with them does the
same math as ``fit`` (its compiled epochs add only data handling: normalisation, augmentation,
shuffling, seeds and checkpoints)::

    ts = init(model, key, in_shape, optimizer)               # TrainState(params, state, opt_state, step, ema)
    ts, out = train_step(model, optimizer, ts, x, y, key, loss=..., metrics=...)  # accumulate=, ema_decay=
    scores = evaluate(model, ts.params, ts.state, x_test, y_test)

* ``optimizer`` is any ``optax.GradientTransformation``; :func:`resolve_optimizer` also takes a
  factory called with the steps per epoch (for schedules). :func:`decay_mask` gives the weight
  decay mask from the layers' declared ``decayed`` traits (kernels of Conv, DepthwiseConv and
  Dense; never biases or BatchNorm), to use in ``optax.add_decayed_weights`` or ``optax.adamw``.
* ``loss`` is ``(logits, labels, batch) -> scalar``; ``batch`` is a dict with the model input
  ``x``, the integer labels ``y``, the ``params`` being differentiated (for regularisers), the
  updated model ``state`` and a ``key`` for the loss's own randomness (label noise), independent
  of the model's dropout keys. Extra ``metrics`` have the same signature and are reported, not
  differentiated.
* ``train_step(..., accumulate=A)`` splits the batch into A micro-batches (rows ``i::A``) and makes one
  update from the mean of their gradients: with equal micro-batches that is the gradient of the whole
  batch's mean loss, so the update equals the big-batch one to float32 rounding, for any model whose
  loss is a mean over independent examples. BatchNorm is not such a model: each micro-batch is
  normalised with its own statistics (a smaller, "ghost" batch) and the running statistics move once
  per micro-batch; dropout draws a key per micro-batch.
* ``init(..., ema=True)`` adds ``TrainState.ema`` = ``{"params", "state"}``, starting at the initial
  values; ``train_step(..., ema_decay=d)`` moves it after each update: ``ema = d_n * ema + (1 - d_n) * new``
  with ``d_n = min(d, (1 + n) / (10 + n))`` at step ``n`` (counted from 0; TensorFlow's
  ``ExponentialMovingAverage(num_updates=n)``), so the initial values weigh less than 1e-6 after 50
  steps whatever ``d``; for the weights and the floating-point BatchNorm statistics alike (the
  running statistics of the raw weights are themselves averages, and averaging them beside the
  weights keeps the pair consistent, as timm's ModelEmaV2 averages every buffer); evaluate it with
  ``evaluate(model, ts.ema["params"], ts.ema["state"], ...)``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxcnn.core import Layer, Params, Shape, State

__all__ = [
    "LossFn", "TrainState", "accumulated_grads", "cross_entropy", "decay_mask", "ema_update", "evaluate", "eval_sums",
    "init", "loss_and_grads", "pad_batches", "resolve_optimizer", "train_step",
]


class TrainState(NamedTuple):
    """What a training step reads and writes (a pytree): parameters, model state, optimizer state, step count, EMA."""

    params: Params
    state: State
    opt_state: Any
    step: jax.Array  # int32: optimizer steps taken
    ema: Any = None  # {"params", "state"}: their moving average (init(ema=True)); None: no EMA kept


LossFn = Callable[[jax.Array, jax.Array, dict[str, Any]], jax.Array]
OptimizerLike = optax.GradientTransformation | Callable[[int], optax.GradientTransformation]

# The loss's key is fold_in(step key, LOSS_KEY): containers fold in child indices (small numbers) to
# derive the layers' dropout keys from the same step key, so this one never equals any of them.
LOSS_KEY = 0x6C6F7373  # "loss"


def _mask(layer: Layer, tree: Any, where: str) -> Any:
    """The decay mask of ``layer``'s params subtree ``tree`` (same structure, bool leaves)."""
    kids = layer.children()
    if not isinstance(tree, Mapping):  # a custom layer's non-dict params: decayed only if declared as a whole
        return jax.tree_util.tree_map(lambda _: False, tree)
    if not kids:
        return {name: jax.tree_util.tree_map(lambda _, d=name in layer.decayed: d, value)
                for name, value in tree.items()}
    owned = {k: child for _, k, child in kids}
    extra = sorted(set(tree) - set(owned))
    if extra:
        raise ValueError(f"decay_mask: params key {where + extra[0]!r} is not a child of {type(layer).__name__}; "
                         "pass the params of the model the mask was made for")
    return {k: _mask(owned[k], sub, f"{where}{k}/") for k, sub in tree.items()}


def decay_mask(model: Layer) -> Callable[[Params], Any]:
    """An optax mask function: True for the params the layers declare ``decayed`` (conv/dense kernels)."""
    return lambda params: _mask(model, params, "")


def resolve_optimizer(optimizer: OptimizerLike, steps_per_epoch: int) -> optax.GradientTransformation:
    """``optimizer`` itself, or the transformation its factory builds for ``steps_per_epoch``."""
    if isinstance(optimizer, optax.GradientTransformation):
        return optimizer
    if not callable(optimizer):
        raise TypeError(f"optimizer must be an optax.GradientTransformation or a function of the steps per epoch "
                        f"returning one, got {type(optimizer).__name__}")
    tx = optimizer(steps_per_epoch)
    if not isinstance(tx, optax.GradientTransformation):
        raise TypeError(f"the optimizer factory {getattr(optimizer, '__name__', optimizer)!r} returned "
                        f"{type(tx).__name__}, not an optax.GradientTransformation")
    return tx


def cross_entropy(label_smoothing: float = 0.0, num_classes: int | None = None) -> LossFn:
    """Mean softmax cross-entropy against integer labels, with optional label smoothing (fit's default loss).

    With ``num_classes`` the logits must have exactly that many entries (fit passes the data's).
    """

    def loss(logits: jax.Array, labels: jax.Array, batch: dict[str, Any]) -> jax.Array:
        if labels.shape != logits.shape[:-1]:  # one_hot would broadcast: a silently averaged loss, not an error
            raise ValueError(f"cross_entropy: labels of shape {labels.shape} do not match logits of shape "
                             f"{logits.shape} (one integer label per row of logits)")
        target = jax.nn.one_hot(labels, num_classes or logits.shape[-1])
        if label_smoothing:
            target = optax.smooth_labels(target, label_smoothing)
        return optax.softmax_cross_entropy(logits, target).mean()

    loss.__qualname__ = f"cross_entropy(label_smoothing={label_smoothing})"
    return loss


def init(model: Layer, key: jax.Array, in_shape: Shape, optimizer: optax.GradientTransformation, *,
         ema: bool = False) -> TrainState:
    """The :class:`TrainState` of ``model`` for per-example ``in_shape``, before any step.

    Args:
        model: the network.
        key: the random key of its initialisation.
        in_shape: one example's shape, e.g. ``(32, 32, 3)`` (no batch axis).
        optimizer: the optax transformation whose state is initialised.
        ema: also keep a moving average of the params and state (``TrainState.ema``), starting at them.
    """
    params, state = model.init(key, in_shape)
    average = {"params": params, "state": state} if ema else None
    return TrainState(params, state, optimizer.init(params), jnp.zeros((), jnp.int32), average)


def ema_update(average: Any, new: Any, decay: float | jax.Array) -> Any:
    """``decay * average + (1 - decay) * new`` on floating-point leaves; other leaves (counters) come from ``new``."""

    def one(a, n):
        if not jnp.issubdtype(jnp.result_type(n), jnp.floating):
            return n
        return (decay * a.astype(jnp.float32) + (1.0 - decay) * n.astype(jnp.float32)).astype(n.dtype)

    return jax.tree_util.tree_map(one, average, new)


def _scalar(value: Any, what: str) -> jax.Array:
    try:
        value = jnp.asarray(value)
    except (TypeError, ValueError):  # a str, dict, None...: JAX's own message names neither the function nor why
        raise TypeError(f"{what} must return a real scalar (a mean over the batch), got {type(value).__name__} "
                        f"{str(value)[:40]!r}") from None
    if not (jnp.issubdtype(value.dtype, jnp.floating) or jnp.issubdtype(value.dtype, jnp.integer)):
        raise TypeError(f"{what} must return a real scalar (a mean over the batch), got dtype {value.dtype}")
    if value.shape != ():
        raise TypeError(f"{what} must return a scalar (a mean over the batch), got shape {value.shape}")
    return value.astype(jnp.float32)


def loss_and_grads(model: Layer, params: Params, state: State, x: jax.Array, y: jax.Array, key: jax.Array,
                   loss: LossFn | None = None) -> tuple[tuple[jax.Array, tuple[State, jax.Array, dict]], Params]:
    """``((loss, (new_state, logits, batch)), grads)`` of one train-mode forward and backward pass."""
    loss_fn = loss or cross_entropy()
    k_loss = jax.random.fold_in(key, LOSS_KEY)

    def objective(p):
        logits, new_state = model.apply(p, state, x, train=True, key=key)
        logits = logits.astype(jnp.float32)
        batch = {"x": x, "y": y, "params": p, "state": new_state, "key": k_loss}
        return _scalar(loss_fn(logits, y, batch), "the loss function"), (new_state, logits, batch)

    return jax.value_and_grad(objective, has_aux=True)(params)


def accumulated_grads(model: Layer, params: Params, state: State, x: jax.Array, y: jax.Array, key: jax.Array,
                      loss: LossFn | None = None, metrics: Mapping[str, LossFn] | None = None, accumulate: int = 1,
                      unroll: bool = False) -> tuple[dict[str, jax.Array], State, Params]:
    """``(outputs, new_state, grads)`` of the batch as ``accumulate`` micro-batches (rows ``i::accumulate``).

    ``grads`` and ``outputs["loss"]`` and the metrics are means over the micro-batches, ``outputs["correct"]`` a
    sum; the model state threads through them in order. ``unroll`` writes the micro-batch loop out (XLA:CPU
    runs convolutions in a loop slowly); with ``accumulate=1`` this is one :func:`loss_and_grads` pass.
    """
    n = x.shape[0]
    if accumulate < 1 or n % accumulate:
        raise ValueError(f"accumulate={accumulate} must be a positive divisor of the batch of {n} examples")

    def micro(st, xb, yb, k):
        (value, (st, logits, batch)), grads = loss_and_grads(model, params, st, xb, yb, k, loss)
        out = {"loss": value, "correct": jnp.sum(jnp.argmax(logits, -1) == yb)}
        for name, fn in (metrics or {}).items():
            out[name] = _scalar(fn(logits, yb, batch), f"metric {name!r}")
        return st, (out, grads)

    if accumulate == 1:  # the key as it always was, so runs without accumulation keep their randomness
        state, (out, grads) = micro(state, x, y, key)
        return out, state, grads
    # strided rows: under a batch sharded over devices every micro-batch spans all of them
    split = [jnp.swapaxes(v.reshape(n // accumulate, accumulate, *v.shape[1:]), 0, 1) for v in (x, y)]
    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(accumulate))
    state, (outs, grads) = jax.lax.scan(lambda st, inp: micro(st, *inp), state, (*split, keys),
                                        unroll=accumulate if unroll else 1)
    out = {k: (jnp.sum(v) if k == "correct" else jnp.mean(v)) for k, v in outs.items()}
    return out, state, jax.tree_util.tree_map(lambda g: jnp.mean(g, axis=0), grads)


def train_step(
    model: Layer,
    optimizer: optax.GradientTransformation,
    carry: TrainState,
    x: jax.Array,
    y: jax.Array,
    key: jax.Array,
    *,
    loss: LossFn | None = None,
    metrics: Mapping[str, LossFn] | None = None,
    accumulate: int = 1,
    ema_decay: float = 0.0,
    unroll: bool = False,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimizer step on batch ``(x, y)``; returns the new :class:`TrainState` and {loss, correct, *metrics}.

    Pure: wrap it in ``jax.jit`` (closing over ``model``, ``optimizer`` and ``loss``).

    Args:
        model: the network.
        optimizer: the optax transformation (its state is ``carry.opt_state``).
        carry: the :class:`TrainState` before the step.
        x: a batch of inputs, already normalised, ``(B, *in_shape)``.
        y: integer labels ``(B,)``.
        key: feeds the model's dropout (and ``batch["key"]`` of a custom loss).
        loss: ``(logits, labels, batch) -> scalar`` in place of cross-entropy.
        metrics: name -> function of the same signature, returned beside the loss.
        accumulate: micro-batches whose mean gradient makes the one update (see the module docstring).
        ema_decay: decay of ``carry.ema`` (kept by ``init(..., ema=True)``), warmed up as in the module
            docstring; 0 leaves it as it is.
        unroll: write the micro-batch loop out instead of a ``lax.scan`` (faster convolutions on CPU).

    Returns:
        ``(new TrainState, {"loss", "correct" (top-1 hits), *metrics})``.
    """
    if not isinstance(carry, TrainState):
        raise TypeError(f"train_step takes the TrainState that step.init returns, got {type(carry).__name__}")
    if ema_decay and carry.ema is None:
        raise ValueError("train_step: ema_decay needs a TrainState that keeps an EMA; make it with init(..., ema=True)")
    params, state, opt_state, count, average = carry
    out, new_state, grads = accumulated_grads(model, params, state, x, y, key, loss, metrics, accumulate, unroll)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    if ema_decay:
        n = count.astype(jnp.float32)
        decay = jnp.minimum(jnp.float32(ema_decay), (1.0 + n) / (10.0 + n))
        average = ema_update(average, {"params": params, "state": new_state}, decay)
    return TrainState(params, new_state, opt_state, count + 1, average), out


def eval_sums(model: Layer, params: Params, state: State, x: jax.Array, y: jax.Array,
              mask: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Sums over the examples where ``mask`` is 1 of cross-entropy, top-1 and top-5 hits (eval mode)."""
    logits, _ = model.apply(params, state, x)
    logits = logits.astype(jnp.float32)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, y)
    top1 = jnp.argmax(logits, -1) == y
    k = min(5, logits.shape[-1])
    topk = jnp.any(jax.lax.top_k(logits, k)[1] == y[:, None], axis=-1)
    return jnp.sum(ce * mask), jnp.sum(top1 * mask), jnp.sum(topk * mask)


@partial(jax.jit, static_argnums=0)
def _eval_sums_jit(model, params, state, x, y, mask):
    return eval_sums(model, params, state, x, y, mask)


def pad_batches(x: np.ndarray, y: np.ndarray, batch_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(x, y)`` as ``(nb, b, ...)`` batches of one shape, the last padded with zeros, and the 0/1 mask of real rows.

    ``b = min(batch_size, len(x))``: every batch compiles once, and sums over ``mask`` count each example once.
    """
    b = min(batch_size, len(x))
    nb = -(-len(x) // b)
    pad = nb * b - len(x)
    xp = np.concatenate([x, np.zeros((pad, *x.shape[1:]), x.dtype)]).reshape(nb, b, *x.shape[1:])
    yp = np.concatenate([y, np.zeros(pad, y.dtype)]).reshape(nb, b)
    mask = np.concatenate([np.ones(len(x), np.float32), np.zeros(pad, np.float32)]).reshape(nb, b)
    return xp, yp, mask


def evaluate(model: Layer, params: Params, state: State, x: Any, y: Any, *, batch_size: int = 500
             ) -> dict[str, float]:
    """Mean cross-entropy ``loss``, top-1 ``accuracy`` and ``top5`` of ``model`` on ``(x, y)`` in eval mode.

    ``x`` is the model's input as is (already normalised); the last batch is padded and masked, so
    every batch has one shape and compiles once.
    """
    x, y = np.asarray(x), np.asarray(y)
    if len(x) != len(y) or not len(x):
        raise ValueError(f"evaluate: x has {len(x)} examples and y {len(y)}; give the same positive number")
    totals = np.zeros(3)
    for xb, yb, mask in zip(*pad_batches(x, y, batch_size), strict=True):
        totals += [float(v) for v in _eval_sums_jit(model, params, state, xb, yb, mask)]
    loss, top1, top5 = totals / len(x)
    return {"loss": float(loss), "accuracy": float(top1), "top5": float(top5)}
