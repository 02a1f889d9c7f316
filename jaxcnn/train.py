"""Training engine: on-device data, compiled epochs, K seeds trained together in one program.

* The training set lives on the device as uint8 (or float) NHWC; each epoch draws a
  permutation with ``jax.random``, and the steps run as compiled ``lax.scan`` chunks
  with no Python per step (``mode="epoch"``). On GPU/TPU a chunk is the whole epoch.
  On CPU a chunk is a few fully unrolled steps (``chunk``, default 4, or 1 with several
  seeds, which already fill a program): XLA:CPU runs
  convolutions inside a while loop about 10x slower than outside one (measured here;
  jax issue #12868), and an unrolled chunk has no loop. ``mode="step"`` is the streaming path: one
  jitted step per batch, batches gathered on the host and prefetched to the device,
  for data that does not fit in device memory. Both do exactly the same math.
* K seeds of one architecture train together: init, shuffles, augmentation and
  dropout keys are independent per seed, and every step runs all seeds: ``vmap``-ed over seeds on
  GPU/TPU, unrolled (one copy of the step per seed) on CPU, where it is faster (``seed_batching``).
  Seed ``s`` of a K-seed run equals a 1-seed run with ``seed=s``.
* Data parallel over all local devices with ``jax.sharding``: batches are sharded on
  a 1-D mesh, parameters replicated; XLA inserts the gradient all-reduce. The same
  code runs on one device, and over several processes (``fit(..., distributed=True)``,
  :mod:`jaxcnn.distributed`): the mesh then spans every process's devices, each process
  computes (and in ``mode="step"`` gathers on its host) only its devices' part of the global
  batch, and only process 0 writes checkpoints and metrics.
* Keys: seed s -> ``key(s)``; init uses ``fold_in(key, 0)``; epoch e uses
  ``fold_in(fold_in(key, 1), e)``; so a resumed run replays the same randomness.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxcnn import checkpoint, compile_options, step
from jaxcnn import distributed as _distributed  # fit's ``distributed`` argument would shadow the module name
from jaxcnn.core import Layer

OPTIMIZERS = ("sgd", "momentum", "nesterov", "adam", "adamw")
SCHEDULES = ("constant", "cosine", "step")
SEED_BATCHING = ("auto", "vmap", "unroll")


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. the loss became NaN/Inf); the message names the step."""


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run besides the model and the data."""

    epochs: int = 10
    batch: int = 128
    optimizer: str = "momentum"  # sgd | momentum | nesterov | adam | adamw
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4  # applied to conv/dense weights only, never to BN or biases
    schedule: str = "cosine"  # constant | cosine | step
    step_epochs: tuple[int, ...] = ()  # 'step' schedule: lr x 0.1 at each of these epochs
    warmup_epochs: float = 0.0
    label_smoothing: float = 0.0
    crop_pad: int = 0  # random crop after padding by this many pixels (0 = off)
    flip: bool = False  # random horizontal flips (off for digits)
    seed: int = 0
    seeds: int = 1  # K seeds trained together in one program: seed, seed+1, ..., seed+K-1
    eval_batch: int = 500
    mode: str = "epoch"  # epoch: compiled scan chunks, data on device | step: per-step jit, host batches
    chunk: int = 0  # steps per compiled chunk in epoch mode; 0 = auto (CPU: 4 unrolled, else the whole epoch)
    # How K seeds share one compiled program: "vmap" batches them (one wide program: best on GPU/TPU),
    # "unroll" writes K copies of the step side by side (on CPU 1.3-2.4x faster: a vmapped
    # convolution becomes a grouped one, XLA:CPU's slowest kind); "auto" picks by backend.
    seed_batching: str = "auto"
    # XLA compile options of the training programs: "auto" times the candidates on one step and keeps the
    # fastest that is as accurate as XLA's default (cached per machine; jaxcnn.compile_options), or a name
    compile_options: str = "auto"

    def check(self) -> TrainConfig:
        """Return self or raise ValueError naming the bad option."""
        checks = [
            (isinstance(self.epochs, int) and self.epochs >= 1, "epochs must be a positive int"),
            (isinstance(self.batch, int) and self.batch >= 1, "batch must be a positive int"),
            (self.optimizer in OPTIMIZERS, f"optimizer must be one of {', '.join(OPTIMIZERS)}"),
            (self.schedule in SCHEDULES, f"schedule must be one of {', '.join(SCHEDULES)}"),
            (math.isfinite(self.lr) and self.lr > 0, "lr must be a positive number"),
            (self.weight_decay >= 0, "weight_decay must be >= 0"),
            (0 <= self.label_smoothing < 1, "label_smoothing must be in [0, 1)"),
            (self.crop_pad >= 0, "crop_pad must be >= 0"),
            (isinstance(self.seeds, int) and self.seeds >= 1, "seeds must be a positive int"),
            (isinstance(self.seed, int) and isinstance(self.seeds, int) and 0 <= self.seed <= 2**32 - self.seeds,
             f"seed must be an int in [0, 2**32 - seeds] (each of seed .. seed+seeds-1 is a random key), "
             f"got {str(self.seed)[:30]}"),
            (self.eval_batch >= 1, "eval_batch must be a positive int"),
            (self.mode in ("epoch", "step"), "mode must be 'epoch' or 'step'"),
            (isinstance(self.chunk, int) and self.chunk >= 0, "chunk must be an int >= 0"),
            (self.seed_batching in SEED_BATCHING, f"seed_batching must be one of {', '.join(SEED_BATCHING)}"),
            (self.compile_options in compile_options.CHOICES,
             f"compile_options must be one of {', '.join(compile_options.CHOICES)}"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ValueError(f"TrainConfig: {msg}")
        return self


@dataclass
class TrainData:
    """Arrays for one run: NHWC images (uint8 0-255 or float), int labels, normalisation."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    mean: np.ndarray | None = None  # per channel, from the training split only
    std: np.ndarray | None = None

    def __post_init__(self) -> None:
        for name in ("x_train", "x_test"):
            if np.ndim(getattr(self, name)) != 4:
                raise ValueError(f"TrainData: {name} must be NHWC, got shape {np.shape(getattr(self, name))}")
        if np.shape(self.x_train)[1:] != np.shape(self.x_test)[1:]:
            raise ValueError(f"TrainData: train images are {np.shape(self.x_train)[1:]} but test images are "
                             f"{np.shape(self.x_test)[1:]}; both need one per-example shape")
        from jaxcnn.data import class_count, labels  # the one label check: integral and in range before any cast

        self.num_classes = class_count(self.num_classes, "TrainData")
        for name in ("y_train", "y_test"):
            setattr(self, name, labels(getattr(self, name), f"TrainData: {name}", self.num_classes))
        if self.mean is None:
            from jaxcnn.data import normalization_stats  # chunked: no float64 copy of the whole set

            self.mean, self.std = normalization_stats(self.x_train)


@dataclass
class FitResult:
    """Per-seed outcome of :func:`fit` (arrays have a leading seed axis)."""

    params: Any
    state: Any
    history: list[dict[str, Any]]
    test_accuracy: list[float]
    train_seconds: float
    compile_seconds: float
    seeds: list[int] = field(default_factory=list)
    initial_params: Any = None  # with fit(keep_initial=True): parameters before training, per seed
    compile_choice: dict[str, Any] | None = None  # the XLA options used and the measurements behind them
    identity: dict[str, Any] = field(default_factory=dict)  # what defines the run (see run_identity)

    @property
    def mean_accuracy(self) -> float:
        """Mean final test accuracy over seeds."""
        return float(np.mean(self.test_accuracy))

    @property
    def std_accuracy(self) -> float:
        """Standard deviation (ddof=0) of the final test accuracy over seeds."""
        return float(np.std(self.test_accuracy))


# -- pieces ----------------------------------------------------------------------------


def make_optimizer(cfg: TrainConfig, steps_per_epoch: int, model: Layer) -> optax.GradientTransformation:
    """The optax chain for ``cfg`` (decoupled-from-BN weight decay, schedule, warm-up).

    Weight decay applies to the params ``model``'s layers declare ``decayed`` (:func:`jaxcnn.step.decay_mask`).
    """
    _decay_mask = step.decay_mask(model)
    total = cfg.epochs * steps_per_epoch
    warm = int(round(cfg.warmup_epochs * steps_per_epoch))
    if cfg.schedule == "cosine":
        main = optax.cosine_decay_schedule(cfg.lr, max(total - warm, 1))
    elif cfg.schedule == "step":
        main = optax.piecewise_constant_schedule(
            cfg.lr, {max(e * steps_per_epoch - warm, 1): 0.1 for e in cfg.step_epochs}
        )
    else:
        main = optax.constant_schedule(cfg.lr)
    lr = optax.join_schedules([optax.linear_schedule(0.0, cfg.lr, warm), main], [warm]) if warm else main
    if cfg.optimizer == "adamw":
        return optax.adamw(lr, weight_decay=cfg.weight_decay, mask=_decay_mask)
    decay = optax.add_decayed_weights(cfg.weight_decay, _decay_mask) if cfg.weight_decay else optax.identity()
    if cfg.optimizer == "adam":
        return optax.chain(decay, optax.adam(lr))
    if cfg.optimizer == "sgd":
        return optax.chain(decay, optax.sgd(lr))
    return optax.chain(decay, optax.sgd(lr, momentum=cfg.momentum, nesterov=cfg.optimizer == "nesterov"))


def _augment(x: jax.Array, key: jax.Array, crop_pad: int, flip: bool) -> jax.Array:
    n, h, w, c = x.shape
    k_crop, k_flip = jax.random.split(key)
    if crop_pad:
        xp = jnp.pad(x, ((0, 0), (crop_pad, crop_pad), (crop_pad, crop_pad), (0, 0)))
        offs = jax.random.randint(k_crop, (n, 2), 0, 2 * crop_pad + 1)
        x = jax.vmap(lambda img, o: jax.lax.dynamic_slice(img, (o[0], o[1], 0), (h, w, c)))(xp, offs)
    if flip:
        mirror = jax.random.bernoulli(k_flip, 0.5, (n, 1, 1, 1))
        x = jnp.where(mirror, x[:, :, ::-1, :], x)
    return x


def epoch_permutation(key: jax.Array, n: int, batch: int) -> jax.Array:
    """(steps, batch) example indices of one epoch; the last partial batch is dropped."""
    steps = n // batch
    return jax.random.permutation(jax.random.fold_in(key, 0), n)[: steps * batch].reshape(steps, batch)


def _divisor_chunk(steps: int, lo: int = 3, hi: int = 8) -> int:
    """A chunk length in [lo, hi] dividing ``steps`` (one compiled program), else 4 (plus a remainder)."""
    for c in (4, 5, 6, 8, 3, 7):
        if lo <= c <= hi and steps % c == 0:
            return c
    return 4


def _stack_seeds(per_seed: list[Any]) -> Any:
    """Per-seed pytrees -> one pytree with a leading seed axis."""
    return jax.tree_util.tree_map(lambda *vs: jnp.stack(vs), *per_seed)


class Trainer:
    """Compiled train/eval functions for one model, config and data shape (K seeds).

    ``optimizer``, ``loss`` and ``metrics`` are as in :func:`fit`; by default the config's named
    optimizer (:func:`make_optimizer`) and cross-entropy with its label smoothing. ``devices`` (default:
    every device of every process) are the mesh the batch is sharded over.
    """

    def __init__(self, model: Layer, cfg: TrainConfig, data: TrainData,
                 devices: Sequence[jax.Device] | None = None, *, optimizer: step.OptimizerLike | None = None,
                 loss: step.LossFn | None = None, metrics: dict[str, step.LossFn] | None = None):
        self.model, self.cfg, self.data = model, cfg.check(), data
        n = data.x_train.shape[0]
        if n < cfg.batch:
            raise ValueError(f"TrainConfig: batch={cfg.batch} is larger than the training set ({n} examples)")
        self.steps = n // cfg.batch
        # the named optimizers are factories of the steps per epoch too: one path for both
        self.tx = step.resolve_optimizer(
            optimizer if optimizer is not None else partial(make_optimizer, cfg, model=model), self.steps)
        self.loss = loss if loss is not None else step.cross_entropy(cfg.label_smoothing, data.num_classes)
        self.metrics = dict(metrics or {})
        bad = [k for k in self.metrics if not isinstance(k, str) or k in ("loss", "correct") or not callable(
            self.metrics[k])]
        if bad:
            raise ValueError(f"metrics: {bad[0]!r} must be a name other than 'loss'/'correct' mapped to a function "
                             "(logits, labels, batch) -> scalar")
        self.epoch_metrics: dict[str, np.ndarray] = {}  # the last epoch's extra metrics, (K, steps) each
        self.checkpoint_format = "npz"  # what fit writes: "npz" or "safetensors"
        self.devices = list(devices) if devices else jax.devices()
        self.multiprocess = any(d.process_index != jax.process_index() for d in self.devices)
        if self.multiprocess and cfg.batch % len(self.devices):
            raise ValueError(f"TrainConfig: batch={cfg.batch} must be a multiple of the {len(self.devices)} devices "
                             f"of the {jax.process_count()} processes, so that each gets an equal part of it; "
                             f"use --batch {cfg.batch // len(self.devices) * len(self.devices) or len(self.devices)}")
        self.mesh = Mesh(np.array(self.devices), ("data",))
        self.replicated = NamedSharding(self.mesh, PartitionSpec())
        self.shard_batch = len(self.devices) > 1 and cfg.batch % len(self.devices) == 0
        # seed axis first, then the batch: what a host batch of mode="step" is split along
        self.batch_sharding = NamedSharding(self.mesh, PartitionSpec(None, "data")) if self.shard_batch \
            else self.replicated
        scale = 255.0 if data.x_train.dtype == np.uint8 else 1.0
        # numpy, not device arrays: constants baked into every program, on whichever devices it runs
        self.mean = np.asarray(data.mean, np.float32) * np.float32(scale)
        self.std = np.asarray(data.std, np.float32) * np.float32(scale)
        self.in_shape = tuple(data.x_train.shape[1:])
        model.spec(self.in_shape)  # shape errors before anything is compiled
        if cfg.crop_pad and cfg.crop_pad >= min(self.in_shape[:2]):
            raise ValueError(f"TrainConfig: crop_pad={cfg.crop_pad} is not smaller than the {self.in_shape[0]}x"
                             f"{self.in_shape[1]} images (crops would be mostly padding); use at most "
                             f"{min(self.in_shape[:2]) - 1}")
        self.seeds = [cfg.seed + i for i in range(cfg.seeds)]
        self.keys = jnp.stack([jax.random.key(s) for s in self.seeds])
        if self.multiprocess:  # every input of a multi-process program is a global array
            self.keys = _distributed.put(self.keys, self.replicated)
        on_cpu = self.devices[0].platform == "cpu"
        self.seed_batching = cfg.seed_batching if cfg.seed_batching != "auto" else ("unroll" if on_cpu else "vmap")
        # K unrolled seeds already give each call K steps of work; longer chunks then only add compile
        # time (MobileNet, K=3: 4-step chunks compile in 75 s, 1-step chunks in 26 s, and train as fast)
        if not on_cpu:
            auto = self.steps
        elif self.seed_batching == "unroll" and cfg.seeds > 1:
            auto = 1
        else:
            auto = _divisor_chunk(self.steps)
        self.chunk = min(cfg.chunk or auto, self.steps)
        self._perm_fn = jax.jit(jax.vmap(self._permutation), out_shardings=self.replicated)
        self.choice: compile_options.Choice | None = None
        self._use_options({})

    def _use_options(self, options: dict[str, str]) -> None:
        """(Re)build the jitted step, chunk and eval functions with these XLA compile options."""
        self.compiler_options = dict(options)
        self._chunk_fns: dict[int, Any] = {}
        # several processes read the outputs back (losses, parameters to save): they must be replicated
        self._out = {"out_shardings": self.replicated} if self.multiprocess else {}
        self._step_fn = jax.jit(
            self._seedwise(self._step, (0, 0, None, 0)), donate_argnums=(0,), compiler_options=options, **self._out
        )
        self._eval_fn = jax.jit(self._seedwise(self._evaluate, (0, 0, None, None, None)), compiler_options=options,
                                **self._out)

    def choose_options(self, carry) -> compile_options.Choice:
        """Resolve ``cfg.compile_options`` (tuning on one seed's step when "auto") and rebuild the programs."""
        if self.multiprocess and self.cfg.compile_options == "auto":
            # each process would time the candidates on its own and could pick differently; every process
            # must compile the same program, so "auto" means XLA's default here
            self.choice = compile_options.Choice("xla", {})
            self._use_options(self.choice.options)
            return self.choice
        params, state, _ = jax.tree_util.tree_map(lambda v: v[0], carry)
        b = self.cfg.batch
        x = (jnp.asarray(self.data.x_train[:b]).astype(jnp.float32) - self.mean) / self.std
        y = jnp.asarray(self.data.y_train[:b])
        key = jax.random.key(0)

        def probe(params, state, x, y):  # what the accuracy check compares: loss, gradients, BN statistics
            (loss, (new_state, _, _)), grads = step.loss_and_grads(self.model, params, state, x, y, key, self.loss)
            return loss, grads, new_state

        self.choice = compile_options.resolve(self.cfg.compile_options, probe, (params, state, x, y))
        self._use_options(self.choice.options)
        return self.choice

    def _seedwise(self, fn: Callable[..., Any], in_axes: tuple[int | None, ...]) -> Callable[..., Any]:
        """Map ``fn`` over the leading seed axis of the arguments whose ``in_axes`` entry is 0.

        ``vmap`` batches every convolution over seeds, which XLA lowers as a grouped
        convolution: fine on GPU/TPU, 1.3-2.4x slower than K separate convolutions on CPU
        (measured, see ``seed_batching``). "unroll" traces ``fn`` once per seed instead, so
        every convolution stays a plain one; with one seed both reduce to indexing the axis away.
        """
        k = len(self.seeds)
        if k > 1 and self.seed_batching == "vmap":
            return jax.vmap(fn, in_axes=in_axes)

        def unrolled(*args):
            outs = []
            for s in range(k):
                sliced = [a if ax is None else jax.tree_util.tree_map(lambda v, s=s: v[s], a)
                          for a, ax in zip(args, in_axes, strict=True)]
                outs.append(fn(*sliced))
            return _stack_seeds(outs)

        return unrolled

    # one seed's functions; mapped over seeds by _seedwise
    def init(self) -> tuple[Any, Any, Any]:
        """(params, state, opt_state) for every seed, stacked on a leading axis."""

        def one(key):
            return step.init(self.model, jax.random.fold_in(key, 0), self.in_shape, self.tx)

        if self.seed_batching == "vmap":
            carry = jax.jit(jax.vmap(one))(self.keys)
        else:  # one compiled init called per seed: compiles faster (MobileNet: 5.8 s vs 8.9 s) and is exact
            f = jax.jit(one)
            carry = _stack_seeds([f(self.keys[i]) for i in range(len(self.seeds))])
        return self.put(carry)

    def put(self, tree: Any) -> Any:
        """``tree`` (host arrays or arrays equal on every process) replicated on every device of the mesh."""
        return _distributed.put(tree, self.replicated) if self.multiprocess else jax.device_put(tree, self.replicated)

    def _step(self, carry, xb, yb, key):
        if self.shard_batch:
            spec = NamedSharding(self.mesh, PartitionSpec("data"))
            xb = jax.lax.with_sharding_constraint(xb, spec)
            yb = jax.lax.with_sharding_constraint(yb, spec)
        k_aug, k_drop = jax.random.split(key)
        x = (xb.astype(jnp.float32) - self.mean) / self.std
        x = _augment(x, k_aug, self.cfg.crop_pad, self.cfg.flip)
        carry, out = step.train_step(self.model, self.tx, carry, x, yb, k_drop, loss=self.loss, metrics=self.metrics)
        return carry, (out.pop("loss"), out.pop("correct"), out)

    def _permutation(self, epoch_key):
        perm = epoch_permutation(epoch_key, self.data.x_train.shape[0], self.cfg.batch)
        return perm, jax.random.split(jax.random.fold_in(epoch_key, 1), self.steps)

    def _chunk(self, carry, x_all, y_all, idx, keys):
        def body(c, inp):
            i, k = inp
            return self._step(c, x_all[i], y_all[i], k)

        if idx.shape[0] == 1:  # a length-1 scan still lowers to a while loop (jax issue #25330)
            carry, out = body(carry, (idx[0], keys[0]))
            return carry, jax.tree_util.tree_map(lambda v: v[None], out)
        unroll = idx.shape[0] if self.devices[0].platform == "cpu" else 1
        return jax.lax.scan(body, carry, (idx, keys), unroll=unroll)

    def chunk_fn(self, length: int):
        """The jitted all-seeds function running ``length`` steps (compiled once per length)."""
        if length not in self._chunk_fns:
            self._chunk_fns[length] = jax.jit(
                self._seedwise(self._chunk, (0, None, None, 0, 0)), donate_argnums=(0,),
                compiler_options=self.compiler_options, **self._out,
            )
        return self._chunk_fns[length]

    def compile(self, carry, x_dev, y_dev) -> float:
        """Compile every chunk length an epoch needs; returns the seconds it took."""
        t0 = time.perf_counter()
        perm, keys = self._perm_fn(self.epoch_keys(0))
        lengths = {min(self.chunk, self.steps - i) for i in range(0, self.steps, self.chunk)}
        for n in sorted(lengths):
            self._chunk_fns[n] = self.chunk_fn(n).lower(carry, x_dev, y_dev, perm[:, :n], keys[:, :n]).compile()
        return time.perf_counter() - t0

    def _evaluate(self, params, state, x, y, mask):
        def body(acc, inp):
            xb, yb, mb = inp
            sums = step.eval_sums(self.model, params, state, (xb.astype(jnp.float32) - self.mean) / self.std, yb, mb)
            return tuple(a + s for a, s in zip(acc, sums, strict=True)), None

        zero = jnp.zeros((), jnp.float32)
        # unrolled on CPU for the same reason as the training chunks (convolutions in a loop are slow)
        unroll = x.shape[0] if self.devices[0].platform == "cpu" else 1
        return jax.lax.scan(body, (zero, zero, zero), (x, y, mask), unroll=unroll)[0]

    # host-side drivers
    def epoch_keys(self, epoch: int) -> jax.Array:
        """Per-seed keys of epoch ``epoch``."""
        return jax.vmap(lambda k: jax.random.fold_in(jax.random.fold_in(k, 1), epoch))(self.keys)

    def run_epoch(self, carry, x_dev, y_dev, epoch: int):
        """One epoch; returns (carry, losses (K, steps), correct (K, steps)); extra metrics in ``epoch_metrics``."""
        keys = self.epoch_keys(epoch)
        extras: list[dict[str, jax.Array]] = []
        if self.cfg.mode == "epoch":
            perm, step_keys = self._perm_fn(keys)
            losses, correct = [], []
            for i in range(0, self.steps, self.chunk):
                j = min(i + self.chunk, self.steps)
                carry, (loss, corr, ext) = self.chunk_fn(j - i)(carry, x_dev, y_dev, perm[:, i:j], step_keys[:, i:j])
                losses.append(loss)
                correct.append(corr)
                extras.append(ext)
            self.epoch_metrics = {k: np.concatenate([np.asarray(e[k]) for e in extras], 1) for k in self.metrics}
            return carry, jnp.concatenate(losses, 1), jnp.concatenate(correct, 1)
        # streaming: the same permutation, batches gathered on the host, one step prefetched
        perms, step_keys = self._perm_fn(keys)
        perms = np.asarray(perms)
        x_host, y_host = self.data.x_train, self.data.y_train
        losses, correct = [], []

        def put(i):
            if self.multiprocess:  # each process gathers only the rows of its own devices
                return (_distributed.put_rows(x_host, perms[:, i], self.batch_sharding),
                        _distributed.put_rows(y_host, perms[:, i], self.batch_sharding))
            return jax.device_put(x_host[perms[:, i]]), jax.device_put(y_host[perms[:, i]])

        nxt = put(0)
        for i in range(self.steps):
            xb, yb = nxt
            if i + 1 < self.steps:
                nxt = put(i + 1)  # async transfer overlaps with this step's compute
            carry, (loss, corr, ext) = self._step_fn(carry, xb, yb, step_keys[:, i])
            losses.append(loss)
            correct.append(corr)
            extras.append(ext)
        self.epoch_metrics = {k: np.stack([np.asarray(e[k]) for e in extras], 1) for k in self.metrics}
        return carry, jnp.stack(losses, 1), jnp.stack(correct, 1)

    def evaluate(self, carry, x_test=None, y_test=None) -> dict[str, np.ndarray]:
        """Test loss, top-1 and top-5 accuracy per seed."""
        x = self.data.x_test if x_test is None else x_test
        y = self.data.y_test if y_test is None else y_test
        eb = min(self.cfg.eval_batch, len(x))
        nb = -(-len(x) // eb)
        pad = nb * eb - len(x)
        xp = np.concatenate([x, np.zeros((pad, *x.shape[1:]), x.dtype)]).reshape(nb, eb, *x.shape[1:])
        yp = np.concatenate([y, np.zeros(pad, y.dtype)]).reshape(nb, eb)
        mask = np.concatenate([np.ones(len(x), np.float32), np.zeros(pad, np.float32)]).reshape(nb, eb)
        params, state, _ = carry
        if self.multiprocess:
            xp, yp, mask = self.put((xp, yp, mask))
        loss, top1, top5 = (np.asarray(v) for v in self._eval_fn(params, state, xp, yp, mask))
        return {"loss": loss / len(x), "accuracy": top1 / len(x), "top5": top5 / len(x)}


# -- the run ---------------------------------------------------------------------------


def _progress(epoch: int, epochs: int, rec: dict[str, Any], elapsed: float) -> str:
    done = epoch + 1
    bar = "=" * int(20 * done / epochs)
    eta = elapsed / done * (epochs - done)
    return (
        f"epoch {done:>3}/{epochs} [{bar:<20}] loss {np.mean(rec['train_loss']):.4f} "
        f"train {100 * np.mean(rec['train_accuracy']):5.1f}% test {100 * np.mean(rec['test_accuracy']):5.1f}% "
        f"{rec['images_per_second']:,.0f} img/s ETA {int(eta) // 60}:{int(eta) % 60:02d}"
    )


# options that may change when a run is resumed: more epochs extend it, the rest would change its meaning
_RESUMABLE_CHANGES = {"epochs", "seed_batching", "compile_options"}  # the last two change how, not what


def _json(v: Any) -> Any:
    """``v`` as it reads back from JSON (tuples become lists), so saved and current values compare equal."""
    return json.loads(json.dumps(v, default=str))


def run_identity(model: Layer, data: TrainData, cfg: TrainConfig, meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """Every field that defines a run, as recorded in its checkpoints and compared on resume.

    The model's full definition (options and width included) and the exact data (train/test split, input
    size, normalisation) enter as sha256 hashes; the recipe as ``config.*``; the caller's ``meta`` (the
    command line's model name, --option values, data spec, --test-fraction, --input-size) as given.
    """
    h = hashlib.sha256()
    for name in ("x_train", "y_train", "x_test", "y_test", "mean", "std"):
        a = np.ascontiguousarray(np.asarray(getattr(data, name)))
        h.update(f"{name}:{a.dtype.str}:{a.shape};".encode())
        h.update(a.data)
    config = {f"config.{k}": v for k, v in asdict(cfg).items() if k not in _RESUMABLE_CHANGES}
    return _json({
        **(meta or {}), **config,
        "model_sha256": hashlib.sha256(repr(model).encode()).hexdigest(),
        "input_shape": list(np.shape(data.x_train)[1:]), "num_classes": int(data.num_classes),
        "data_sha256": h.hexdigest(), "train_examples": len(data.x_train), "test_examples": len(data.x_test),
    })


def _check_same_run(ck: Path, saved: Any, now: dict[str, Any], legacy_config: Any = None) -> None:
    """CheckpointError naming every field of the run that differs from the one ``ck`` was written by."""
    if saved is None:  # written before identities were recorded: only its recipe can be compared
        print(f"note: {ck} predates run identities; only its training options are checked", file=sys.stderr)
        saved = dict(now)
        saved.update({f"config.{k}": v for k, v in _json(legacy_config).items() if f"config.{k}" in now})
    if not isinstance(saved, dict):
        raise checkpoint.CheckpointError(f"{ck} has no valid record of the run that wrote it ('identity'); "
                                         "resume cannot check it is the same run: use another folder")
    differ = [k for k in sorted(set(saved) | set(now)) if saved.get(k) != now.get(k)]
    if saved.get("data_sha256") == now["data_sha256"] and "data" in differ:
        differ.remove("data")  # the same data found at another path (a moved folder) is the same run
    if differ:
        detail = "; ".join(f"{k}: {str(saved.get(k))[:60]} -> {str(now.get(k))[:60]}" for k in differ)
        raise checkpoint.CheckpointError(
            f"--resume: {ck} was written by a different run ({detail}); resume with the same model, options, "
            "data and recipe, or use another output folder")


def _resume_point(ck: Path, meta: dict[str, Any], cfg: TrainConfig) -> tuple[int, list[dict[str, Any]]]:
    """(next epoch, history) from a checkpoint's metadata, with one-line errors for edited or foreign files."""
    epoch, history = meta.get("epoch"), meta.get("history")
    bad = None
    if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 0:
        bad = f"'epoch' is {str(epoch)[:30]}, not an epoch number"
    elif not isinstance(history, list) or len(history) != epoch + 1:
        bad = f"'history' is not a list of {epoch + 1} epoch records"
    elif not all(isinstance(h, dict) and isinstance(h.get("seconds"), (int, float))
                 and isinstance(h.get("test_accuracy"), list) and len(h["test_accuracy"]) == cfg.seeds
                 for h in history):
        bad = f"an entry of 'history' is not an epoch record of {cfg.seeds} seed(s)"
    if bad:
        raise checkpoint.CheckpointError(f"checkpoint {ck} is invalid: {bad}; delete it or restore a copy")
    if epoch + 1 > cfg.epochs:
        raise checkpoint.CheckpointError(
            f"--resume: {ck} has already trained {epoch + 1} epochs, more than --epochs {cfg.epochs}; pass "
            f"--epochs {epoch + 1} or more (or use another output folder for a shorter run)")
    return epoch + 1, history


def _describe(fn: Any) -> str:
    """A name for a custom optimizer or loss, recorded in the run identity (functions cannot be hashed)."""
    if isinstance(fn, optax.GradientTransformation):
        fn = fn.init  # optax builds transformations in functions whose name the init function carries
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', type(fn).__name__)}"


def fit(
    model: Layer,
    data: TrainData,
    cfg: TrainConfig,
    *,
    out_dir: str | Path | None = None,
    resume: bool = False,
    quiet: bool = False,
    meta: dict[str, Any] | None = None,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    keep_initial: bool = False,
    optimizer: step.OptimizerLike | None = None,
    loss: step.LossFn | None = None,
    metrics: dict[str, step.LossFn] | None = None,
    checkpoint_format: str = "npz",
    distributed: bool | _distributed.Cluster = False,
    devices: Sequence[jax.Device] | None = None,
) -> FitResult:
    """Train ``cfg.seeds`` seeds of ``model`` on ``data``; checkpoint to ``out_dir`` every epoch.

    ``optimizer`` is any ``optax.GradientTransformation`` or a function of the steps per epoch returning one
    (then ``cfg``'s optimizer, lr, momentum, weight_decay, schedule and warm-up are unused; use
    :func:`jaxcnn.step.decay_mask` for weight decay); ``loss`` is ``(logits, labels, batch) -> scalar`` in
    place of cross-entropy with ``cfg.label_smoothing``; each of ``metrics`` (same signature) is averaged
    per epoch into the history as ``train_<name>``. The test loss stays cross-entropy. See
    :mod:`jaxcnn.step`. ``checkpoint_format`` is "npz" or "safetensors" (:func:`jaxcnn.checkpoint.save`).

    With ``resume=True`` the newest valid checkpoint in ``out_dir`` is loaded and the
    run continues exactly where it stopped (same keys, same data order); it must have been written by the
    same run (:func:`run_identity`), and checkpoints skipped as corrupt are reported. ``out_dir`` is held
    exclusively (:func:`jaxcnn.outdir.exclusive`) for the whole call. ``keep_initial``
    returns the parameters at initialisation too (``FitResult.initial_params``).

    ``distributed=True`` (or a :class:`jaxcnn.distributed.Cluster`) first joins a multi-process run
    (:func:`jaxcnn.distributed.initialize`; call it before any JAX computation): every process calls
    ``fit`` with the same arguments and data, ``cfg.batch`` is the global batch, split over all
    processes' devices, and only process 0 writes to ``out_dir`` (which every process must see).
    ``devices`` restricts the run to these local devices (default: all of them, of every process).
    """
    if checkpoint_format not in checkpoint.FORMATS:
        raise ValueError(f"checkpoint_format must be one of {', '.join(checkpoint.FORMATS)}, got {checkpoint_format!r}")
    if distributed:
        _distributed.initialize(distributed if isinstance(distributed, _distributed.Cluster) else None)
    trainer = Trainer(model, cfg, data, devices, optimizer=optimizer, loss=loss, metrics=metrics)
    trainer.checkpoint_format = checkpoint_format
    custom = {f"custom.{k}": _describe(v) for k, v in (("optimizer", optimizer), ("loss", loss)) if v is not None}
    if metrics:
        custom["custom.metrics"] = sorted(metrics)
    meta = {**(meta or {}), **custom} if custom else meta  # a resumed run must bring the same custom parts
    if out_dir is None:
        return _fit(trainer, model, data, cfg, None, resume, quiet, meta, on_epoch, keep_initial)
    with _distributed.exclusive(out_dir, files=("metrics.jsonl",)) as lock:
        if lock.previous and not quiet:
            print(f"note: the last run in {out_dir} ({lock.previous}) did not finish cleanly"
                  + (f"; removed its unfinished writes {', '.join(lock.cleaned)}" if lock.cleaned else ""),
                  file=sys.stderr)
        return _fit(trainer, model, data, cfg, Path(out_dir), resume, quiet, meta, on_epoch, keep_initial)


def _fit(trainer: Trainer, model: Layer, data: TrainData, cfg: TrainConfig, out: Path | None, resume: bool,
         quiet: bool, meta: dict[str, Any] | None, on_epoch: Callable[[dict[str, Any]], None] | None,
         keep_initial: bool) -> FitResult:
    """The body of :func:`fit`, with ``out`` (if any) already held."""
    identity = run_identity(model, data, cfg, meta)
    primary = _distributed.is_primary()
    quiet = quiet or not primary  # one progress report, not one per process
    if out is not None and not resume and any(out.glob("ckpt-*.json")):
        raise checkpoint.CheckpointError(
            f"{out} already holds checkpoints of another run; pass --resume (resume=True) to continue it "
            "or choose another output folder"
        )
    carry = trainer.init()
    initial = jax.tree_util.tree_map(jnp.copy, carry[0]) if keep_initial else None  # before donation
    start, history = 0, []
    ck, skipped = (None, []) if not (resume and out is not None) else checkpoint.find_latest(out)
    for path, why in skipped:  # always said: a silently skipped checkpoint is a silently lost epoch
        print(f"skipped checkpoint {path.name}: {why}", file=sys.stderr)
    if resume and ck is None and skipped:
        raise checkpoint.CheckpointError(
            f"--resume: none of the {len(skipped)} checkpoint(s) in {out} is valid (newest: {skipped[0][1]}); "
            "restore a copy, or delete the ckpt-* files to start over")
    # every process must restore the same checkpoint: process 0 wrote it, all read it from the shared folder
    _distributed.agree(-1 if ck is None else int(ck.stem.split("-")[1]), f"the checkpoint to resume from in {out}")
    if ck is not None:
        ck_meta = checkpoint.read_meta(ck)
        legacy = ck_meta.get("config") if isinstance(ck_meta.get("config"), dict) else {}
        _check_same_run(ck, ck_meta.get("identity"), identity, legacy)
        start, history = _resume_point(ck, ck_meta, cfg)
        tree, _ = checkpoint.load(ck, {"params": carry[0], "state": carry[1], "opt_state": carry[2]})
        carry = trainer.put((tree["params"], tree["state"], tree["opt_state"]))
        if not quiet or skipped:
            print(f"resumed from {ck} after epoch {start} of {cfg.epochs}", file=sys.stderr)
    # epoch mode keeps the whole training set on every device; each device computes only its part of a batch
    x_dev = trainer.put(data.x_train) if cfg.mode == "epoch" else None
    y_dev = trainer.put(data.y_train) if cfg.mode == "epoch" else None
    compile_s = 0.0
    if start < cfg.epochs:
        t0 = time.perf_counter()
        choice = trainer.choose_options(carry)
        compile_s = time.perf_counter() - t0
        if not quiet and cfg.compile_options == "auto" and choice.seconds:
            print(f"compile options: {choice.name} ({'cached' if choice.cached else 'measured'}: "
                  + ", ".join(f"{k} {1e3 * v:.1f} ms" for k, v in choice.seconds.items())
                  + "".join(f"; {k} refused: {v}" for k, v in choice.rejected.items()) + ")", file=sys.stderr)
        if cfg.mode == "epoch":
            compile_s += trainer.compile(carry, x_dev, y_dev)
    from jaxcnn.summary import summary  # local: summary imports layers, which train does not need otherwise

    base = {
        "model": (meta or {}).get("model"), "config": asdict(cfg), **(meta or {}), "identity": identity,
        "summary_totals": summary(model, trainer.in_shape).totals,
        "versions": checkpoint.versions(),
        "compile_options": trainer.choice.record() if trainer.choice is not None else None,
    }
    t_start = time.perf_counter()
    train_s = sum(h["seconds"] for h in history)
    for epoch in range(start, cfg.epochs):
        t0 = time.perf_counter()
        carry, losses, correct = trainer.run_epoch(carry, x_dev, y_dev, epoch)
        losses = np.asarray(losses)
        seconds = time.perf_counter() - t0
        bad = ~np.isfinite(losses)
        if bad.any():
            s, i = np.argwhere(bad)[0]
            last = checkpoint.latest(out) if out is not None else None
            raise TrainingError(
                f"loss became {losses[s, i]} at step {epoch * trainer.steps + i} (epoch {epoch}, step {i} of the "
                f"epoch, seed {trainer.seeds[s]}); "
                + (f"the last good checkpoint is {last}" if last else "no checkpoint was written")
                + ". Lower the learning rate or check the data for NaN/Inf"
            )
        train_s += seconds
        ev = trainer.evaluate(carry)
        rec = {
            "epoch": epoch,
            "step": (epoch + 1) * trainer.steps,
            "train_loss": losses.mean(axis=1).tolist(),
            "train_accuracy": (np.asarray(correct).sum(axis=1) / (trainer.steps * cfg.batch)).tolist(),
            "test_loss": ev["loss"].tolist(),
            "test_accuracy": ev["accuracy"].tolist(),
            "test_top5": ev["top5"].tolist(),
            **{f"train_{k}": v.mean(axis=1).tolist() for k, v in trainer.epoch_metrics.items()},
            "seconds": seconds,
            "images_per_second": cfg.seeds * trainer.steps * cfg.batch / seconds,
        }
        history.append(rec)
        if out is not None and primary:
            tree = {"params": carry[0], "state": carry[1], "opt_state": carry[2]}
            checkpoint.save(out, f"ckpt-{epoch + 1:06d}", tree,
                            {**base, "epoch": epoch, "step": rec["step"], "history": history},
                            format=trainer.checkpoint_format)
            checkpoint.prune(out, keep=2)
            lines = "".join(json.dumps(h) + "\n" for h in history)
            checkpoint.atomic_write_text(out / "metrics.jsonl", lines)
        if out is not None:  # no process runs ahead of a checkpoint that is not complete yet
            _distributed.barrier(f"jaxcnn-checkpoint-{epoch + 1}")
        if on_epoch is not None:
            on_epoch(rec)
        if not quiet:
            print(_progress(epoch, cfg.epochs, rec, time.perf_counter() - t_start), file=sys.stderr)
    return FitResult(
        params=carry[0], state=carry[1], history=history, test_accuracy=list(history[-1]["test_accuracy"]),
        train_seconds=train_s, compile_seconds=compile_s, seeds=trainer.seeds, initial_params=initial,
        compile_choice=trainer.choice.record() if trainer.choice is not None else None,
        identity=identity,
    )
