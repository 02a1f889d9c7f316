"""The compiled side of training: :class:`Trainer` builds the step, chunk and evaluation programs.

A Trainer is a compiled program and nothing else: built once for a model, config, data shape,
devices and XLA compile options, it holds no results (an epoch returns :class:`EpochOut`) and no
I/O settings; :meth:`Trainer.with_compile_options` returns a new one. See :mod:`jaxcnn.train` for how
epochs, seeds and devices map onto programs.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxcnn.core import Layer
from jaxcnn.lowering import compile_options, program_cache
from jaxcnn.train import distributed as _distributed
from jaxcnn.train import kept, seed_axis, step
from jaxcnn.train import options as _options
from jaxcnn.train.config import TrainConfig
from jaxcnn.train.inputs import TrainData, augment, epoch_permutation
from jaxcnn.train.optimizers import make_optimizer

LONG_RUN = 1000  # steps of a one-seed CPU run from which multi-step chunks repay their compile time


def _divisor_chunk(steps: int, lo: int = 3, hi: int = 8) -> int:
    """A chunk length in [lo, hi] dividing ``steps`` (one compiled program), else 4 (plus a remainder)."""
    for c in (4, 5, 6, 8, 3, 7):
        if lo <= c <= hi and steps % c == 0:
            return c
    return 4


class EpochOut(NamedTuple):
    """What one epoch returns: the new state and its per-step losses, top-1 hits and custom metrics, (K, steps)."""

    carry: step.TrainState
    losses: np.ndarray
    correct: np.ndarray
    metrics: dict[str, np.ndarray]


class Trainer:
    """Compiled train/eval functions for one model, config and data shape (K seeds).

    ``optimizer``, ``loss`` and ``metrics`` are as in :func:`fit`; by default the config's named
    optimizer (:func:`make_optimizer`) and cross-entropy with its label smoothing. ``devices`` (default:
    every device of every process) are the mesh the batch is sharded over. ``model`` and ``data`` are kept
    as the run trains them: with the config's precision and label noise applied (:mod:`jaxcnn.train.options`).
    """

    def __init__(self, model: Layer, cfg: TrainConfig, data: TrainData,
                 devices: Sequence[jax.Device] | None = None, *, optimizer: step.OptimizerLike | None = None,
                 loss: step.LossFn | None = None, metrics: dict[str, step.LossFn] | None = None):
        self.cfg = cfg.check()
        self.given = {"optimizer": optimizer, "loss": loss}  # None: the config's (jaxcnn.train.kept describes it)
        self.model, self.data = _options.apply(model, data, cfg)
        n = data.x_train.shape[0]
        if n < cfg.batch:
            raise ValueError(f"TrainConfig: batch={cfg.batch} is larger than the training set ({n} examples)")
        self.steps_per_epoch = n // cfg.batch
        # the named optimizers are factories of the steps per epoch too: one path for both
        self.tx = step.resolve_optimizer(
            optimizer if optimizer is not None else partial(make_optimizer, cfg, model=model), self.steps_per_epoch)
        self.loss = loss if loss is not None else step.cross_entropy(cfg.label_smoothing, data.num_classes)
        self.metrics = dict(metrics or {})
        bad = [k for k in self.metrics if not isinstance(k, str) or k in ("loss", "correct") or not callable(
            self.metrics[k])]
        if bad:
            raise ValueError(f"metrics: {bad[0]!r} must be a name other than 'loss'/'correct' mapped to a function "
                             "(logits, labels, batch) -> scalar")
        self.devices = list(devices) if devices else jax.devices()
        self.on_cpu = self.devices[0].platform == "cpu"
        self.multiprocess = any(d.process_index != jax.process_index() for d in self.devices)
        if self.multiprocess and cfg.batch % len(self.devices):
            raise ValueError(f"TrainConfig: batch={cfg.batch} must be a multiple of the {len(self.devices)} devices "
                             f"of the {jax.process_count()} processes, so that each gets an equal part of it; "
                             f"use `batch={cfg.batch // len(self.devices) * len(self.devices) or len(self.devices)}`")
        self.mesh = Mesh(np.array(self.devices), ("data",))
        self.replicated = NamedSharding(self.mesh, PartitionSpec())
        self.shard_batch = len(self.devices) > 1 and cfg.batch % len(self.devices) == 0
        # seed axis first, then the batch: what a host batch of loop="host" is split along
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
        self.seeds = [cfg.seed + i for i in range(cfg.num_seeds)]
        self.keys = jnp.stack([jax.random.key(s) for s in self.seeds])
        if self.multiprocess:  # every input of a multi-process program is a global array
            self.keys = _distributed.put(self.keys, self.replicated)
        self.seed_batching = cfg.seed_batching if cfg.seed_batching != "auto" else (
            "unroll" if self.on_cpu else "vmap")
        # K unrolled seeds already give each call K steps of work; longer chunks then only add compile
        # time (MobileNet, K=3: 4-step chunks compile in 75 s, 1-step chunks in 26 s, and train as fast). One
        # seed: 4-step chunks save ~2 ms a step of allconv6_bn (7 %) and cost 2 s more compile, so only runs of
        # LONG_RUN steps or more get them (the same bits either way: tests/test_train.py)
        if not self.on_cpu:
            auto = self.steps_per_epoch
        elif ((self.seed_batching == "unroll" and cfg.num_seeds > 1) or cfg.accumulate > 1  # micro-batches unroll
              or cfg.epochs * self.steps_per_epoch < LONG_RUN):
            auto = 1
        else:
            auto = _divisor_chunk(self.steps_per_epoch)
        self.chunk = min(cfg.chunk or auto, self.steps_per_epoch)
        # an epoch on the device that the chunk does not divide runs its last chunk padded with steps that
        # change nothing: one program, not a second one for the remainder (each costs its trace, lowering and
        # compile or cache load, ~0.5 s of a warm start). The host loop (and so a streamed run, which reads
        # the permutation's length as its step count) never pads.
        self.padded_steps = self.steps_per_epoch if cfg.loop != "device" else \
            -(-self.steps_per_epoch // self.chunk) * self.chunk
        self._perm_fn = kept.Lazy(self, "permutation", jax.vmap(self._permutation), out_shardings=self.replicated)
        self.choice: compile_options.Choice | None = None
        self._use_options({})

    def _use_options(self, options: dict[str, str]) -> None:
        """(Re)build the jitted step, chunk and eval functions with these XLA compile options."""
        self.compiler_options = dict(options)
        self._chunk_fns: dict[int, Any] = {}
        # several processes read the outputs back (losses, parameters to save): they must be replicated
        self._out = {"out_shardings": self.replicated} if self.multiprocess else {}
        self._step_fn = jax.jit(
            self._seedwise(self._step, (0, 0, 0, 0)), donate_argnums=(0,), compiler_options=options, **self._out
        )
        # on CPU one batch of one seed's evaluation is the program, called per batch and per seed: the same
        # convolutions as K seeds x B batches unrolled, compiled in 1/(KB) of the time (MobileNet v1 0.25 at
        # 32x32, 3 seeds, 2 batches: 5.9 -> 1.3 s of a study member; a 10,000-image test set is 20 batches)
        if self.on_cpu and not self.multiprocess:
            one = jax.jit(self._eval_batch, compiler_options=options)
            self._eval_fn = partial(seed_axis.per_seed_and_batch, one, len(self.seeds))
        else:
            self._eval_fn = jax.jit(self._seedwise(self._evaluate, (0, 0, None, None, None)),
                                    compiler_options=options, **self._out)

    def with_compile_options(self, carry: step.TrainState, epochs: int | None = None) -> Trainer:
        """A Trainer whose programs use ``cfg.compile_options`` (tuned on one seed's step when "auto").

        ``epochs``: how many epochs the run will train (default ``cfg.epochs``); tuning is skipped when
        that is too short to repay it (:func:`jaxcnn.lowering.compile_options.tune`). The returned
        Trainer's ``choice`` says which options and the measurements behind them.
        """
        return self.with_choice(self._choose(carry, self.probe_calls(epochs)))

    def probe_calls(self, epochs: int | None = None) -> int:
        """How many one-seed steps (the tuning probe's work) ``epochs`` epochs of every seed make."""
        return max(1, (self.cfg.epochs if epochs is None else epochs) * self.steps_per_epoch * len(self.seeds))

    def with_choice(self, choice: compile_options.Choice) -> Trainer:
        """A Trainer whose programs use the options of ``choice`` (already made, e.g. read from the cache)."""
        new = copy.copy(self)
        new.choice = choice
        new._use_options(choice.options)
        return new

    def tunes_options(self) -> bool:
        """Whether choosing this Trainer's compile options measures candidates (never in a multi-process run)."""
        return not self.multiprocess and compile_options.tunes(self.cfg.compile_options)

    def _choose(self, carry: step.TrainState, calls: int | None = None) -> compile_options.Choice:
        if self.multiprocess and self.cfg.compile_options == "auto":
            # each process would time the candidates on its own and could pick differently; every process
            # must compile the same program, so "auto" means XLA's default here
            return compile_options.Choice("xla", {})
        first = seed_axis.first_seed(carry)
        params, state = first.params, first.state
        b = self.cfg.batch
        x = (jnp.asarray(self.data.x_train[:b]).astype(jnp.float32) - self.mean) / self.std
        y = jnp.asarray(self.data.y_train[:b])
        key = jax.random.key(0)

        def probe(params, state, x, y):  # what the accuracy check compares: loss, gradients, BN statistics
            (loss, (new_state, _, _)), grads = step.loss_and_grads(self.model, params, state, x, y, key, self.loss)
            return loss, grads, new_state

        return compile_options.resolve(self.cfg.compile_options, probe, (params, state, x, y), calls=calls)

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
            return seed_axis.stack_seeds(outs)

        return unrolled

    # one seed's functions; mapped over seeds by _seedwise
    def init(self) -> step.TrainState:
        """The :class:`~jaxcnn.train.step.TrainState` of every seed, stacked on a leading axis."""

        def one(key):
            return step.init(self.model, jax.random.fold_in(key, 0), self.in_shape, self.tx, ema=self.cfg.ema > 0)

        # runs once: on CPU it is compiled with less LLVM optimisation (bit-identical values, a fraction of the
        # time: allconv6_bn's init 2.7 -> 1.2 s, MobileNet v1 0.25's 6.2 -> 3.0 s, of a short study member's start)
        opts = compile_options.ONE_SHOT if self.on_cpu else {}
        if self.seed_batching == "vmap":
            carry = kept.Lazy(self, "init", jax.vmap(one), compiler_options=opts)(self.keys)
        else:  # one compiled init called per seed: compiles faster (MobileNet: 5.8 s vs 8.9 s) and is exact
            f = kept.Lazy(self, "init", one, compiler_options=opts)
            carry = seed_axis.stack_seeds([f(self.keys[i]) for i in range(len(self.seeds))])
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
        x = augment(x, k_aug, self.cfg.crop_pad, self.cfg.flip)
        carry, out = step.train_step(self.model, self.tx, carry, x, yb, k_drop, loss=self.loss, metrics=self.metrics,
                                     accumulate=self.cfg.accumulate, ema_decay=self.cfg.ema, unroll=self.on_cpu)
        return carry, (out.pop("loss"), out.pop("correct"), out)

    def _permutation(self, epoch_key):
        perm = epoch_permutation(epoch_key, self.data.x_train.shape[0], self.cfg.batch)
        keys = jax.random.split(jax.random.fold_in(epoch_key, 1), self.steps_per_epoch)
        if self.padded:  # rows the padded last chunk reads and discards
            extra = self.padded_steps - self.steps_per_epoch
            perm = jnp.concatenate([perm, jnp.zeros((extra, perm.shape[1]), perm.dtype)])
            keys = jnp.concatenate([keys, jnp.repeat(keys[-1:], extra, axis=0)])
        return perm, keys

    def _chunk(self, carry, x_all, y_all, idx, keys, live=None):
        def body(c, inp):
            i, k, n = inp
            new, out = self._step(c, x_all[i], y_all[i], k)
            if n is not None:  # the padded last chunk: steps at or past ``live`` leave the state as it was
                new = jax.tree_util.tree_map(lambda a, b: jnp.where(n < live, a, b), new, c)
            return new, out

        length = idx.shape[0]
        nums = None if live is None else jnp.arange(length)
        if length == 1:  # a length-1 scan still lowers to a while loop (jax issue #25330)
            carry, out = body(carry, (idx[0], keys[0], None if nums is None else nums[0]))
            return carry, jax.tree_util.tree_map(lambda v: v[None], out)
        unroll = length if self.on_cpu else 1
        return jax.lax.scan(body, carry, (idx, keys, nums), unroll=unroll)

    def chunk_fn(self, length: int):
        """The jitted all-seeds function running ``length`` steps (compiled once per length).

        When :attr:`padded`, it takes a sixth argument: how many of its steps are live.
        """
        if length not in self._chunk_fns:
            self._chunk_fns[length] = jax.jit(
                self._seedwise(self._chunk, (0, None, None, 0, 0) + ((None,) if self.padded else ())),
                donate_argnums=(0,), compiler_options=self.compiler_options, **self._out,
            )
        return self._chunk_fns[length]

    @property
    def padded(self) -> bool:
        """True when the epoch's last chunk runs padded (the chunk programs then take a live count)."""
        return self.padded_steps > self.steps_per_epoch

    def _chunk_args(self, epoch: int) -> tuple[tuple[Any, ...], ...]:
        """Every chunk's per-call arguments in epoch ``epoch`` (:func:`seed_axis.chunk_rows`; one program, not two
        eager slices per call, which cost ~0.8 ms of each: a quarter of a small model's step on CPU)."""
        perm, keys = self._perm_fn(self.epoch_keys(epoch))
        return seed_axis.chunk_rows(perm, keys, self.chunk, self.steps_per_epoch, self.padded)

    def first_chunk_args(self, carry, x_dev, y_dev) -> tuple[Any, ...]:
        """The arguments of the epoch's first chunk (the shapes every chunk call has)."""
        return (carry, x_dev, y_dev, *self._chunk_args(0)[0])

    def lower_chunk(self, carry, x_dev, y_dev) -> Any:
        """The chunk program an epoch runs, traced and lowered (its text does not depend on compile options)."""
        return self.chunk_fn(self.chunk).lower(*self.first_chunk_args(carry, x_dev, y_dev))

    def compile(self, carry, x_dev, y_dev, lowered: Any = None,
                exported: program_cache.ExportedProgram | None = None) -> float:
        """Compile the one chunk program an epoch runs (``lowered``: as lowered by an untuned Trainer's
        :meth:`lower_chunk`; ``exported``: as :func:`jaxcnn.train.kept.chunk` gave it), with this Trainer's options;
        returns the seconds it took."""
        t0 = time.perf_counter()
        if exported is not None:
            exe = exported.compile((0,), self.compiler_options)
        elif lowered is None:
            exe = self.lower_chunk(carry, x_dev, y_dev).compile()
        else:
            exe = lowered.compile(compiler_options=self.compiler_options or None)
        self._chunk_fns[self.chunk] = exe
        return time.perf_counter() - t0

    def _eval_batch(self, params, state, xb, yb, mb):
        return step.eval_sums(self.model, params, state, (xb.astype(jnp.float32) - self.mean) / self.std, yb, mb)

    def _evaluate(self, params, state, x, y, mask):
        def body(acc, inp):
            sums = self._eval_batch(params, state, *inp)
            return tuple(a + s for a, s in zip(acc, sums, strict=True)), None

        zero = jnp.zeros((), jnp.float32)  # unrolled on CPU (several processes): convolutions in a loop are slow
        return jax.lax.scan(body, (zero, zero, zero), (x, y, mask), unroll=x.shape[0] if self.on_cpu else 1)[0]

    # host-side drivers
    def epoch_keys(self, epoch: int) -> jax.Array:
        """Per-seed keys of epoch ``epoch``."""
        return seed_axis.epoch_keys(self.keys, epoch)

    def run_epoch(self, carry: step.TrainState, x_dev: Any, y_dev: Any, epoch: int) -> EpochOut:
        """One epoch of every seed: on the device (``loop="device"``) or streaming host batches (``loop="host"``)."""
        if self.cfg.loop == "device":
            return self._epoch_on_device(carry, x_dev, y_dev, epoch)
        return self._epoch_streaming(carry, epoch)

    def _epoch_on_device(self, carry: step.TrainState, x_dev: Any, y_dev: Any, epoch: int) -> EpochOut:
        outs = []
        for args in self._chunk_args(epoch):
            carry, out = self.chunk_fn(self.chunk)(carry, x_dev, y_dev, *args)
            outs.append(out)
        n = self.steps_per_epoch  # a padded last chunk's extra steps are dropped

        def steps(get):
            return np.concatenate([np.asarray(get(o)) for o in outs], 1)[:, :n]

        return EpochOut(carry, steps(lambda o: o[0]), steps(lambda o: o[1]),
                        {k: steps(lambda o, k=k: o[2][k]) for k in self.metrics})

    def _epoch_streaming(self, carry: step.TrainState, epoch: int) -> EpochOut:
        # the same permutation as on the device; batches gathered on the host, one step prefetched
        perms, step_keys = self._perm_fn(self.epoch_keys(epoch))
        perms = np.asarray(perms)
        x_host, y_host = self.data.x_train, self.data.y_train

        def put(i):
            if self.multiprocess:  # each process gathers only the rows of its own devices
                return (_distributed.put_rows(x_host, perms[:, i], self.batch_sharding),
                        _distributed.put_rows(y_host, perms[:, i], self.batch_sharding))
            return jax.device_put(x_host[perms[:, i]]), jax.device_put(y_host[perms[:, i]])

        outs = []
        nxt = put(0)
        for i in range(self.steps_per_epoch):
            xb, yb = nxt
            if i + 1 < self.steps_per_epoch:
                nxt = put(i + 1)  # async transfer overlaps with this step's compute
            carry, out = self._step_fn(carry, xb, yb, step_keys[:, i])
            outs.append(out)
        return EpochOut(carry, np.stack([np.asarray(o[0]) for o in outs], 1),
                        np.stack([np.asarray(o[1]) for o in outs], 1),
                        {k: np.stack([np.asarray(o[2][k]) for o in outs], 1) for k in self.metrics})

    def input_meta(self) -> dict[str, Any]:
        """What a checkpoint records of the input position besides the epoch: nothing for in-memory data."""
        return {}

    def restore_input(self, saved: Any, start: int, where: Any) -> None:
        """Continue the input from a checkpoint's ``input`` record (in-memory data: the epoch says it all)."""

    def evaluate(self, carry, x_test=None, y_test=None) -> dict[str, np.ndarray]:
        """Test loss, top-1 and top-5 accuracy per seed; of the EMA weights too (``ema_loss``, ...) when kept."""
        x = self.data.x_test if x_test is None else x_test
        y = self.data.y_test if y_test is None else y_test
        xp, yp, mask = step.pad_batches(x, y, self.cfg.eval_batch)
        if self.multiprocess:
            xp, yp, mask = self.put((xp, yp, mask))
        weights = {"": (carry.params, carry.state)}
        if carry.ema is not None:
            weights["ema_"] = (carry.ema["params"], carry.ema["state"])
        out = {}
        for prefix, (params, state) in weights.items():
            loss, top1, top5 = (np.asarray(v) for v in self._eval_fn(params, state, xp, yp, mask))
            out.update({f"{prefix}loss": loss / len(x), f"{prefix}accuracy": top1 / len(x),
                        f"{prefix}top5": top5 / len(x)})
        return out
