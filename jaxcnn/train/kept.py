"""A Trainer's programs kept between runs (:mod:`jaxcnn.lowering.program_cache`): their identity and reload.

:func:`identity` describes exactly what the Trainer's programs are a function of -- the model, the config
(less what is an argument or a compiler option), the data's shape and statistics, the default or given
optimizer and loss, the steps and seeds -- or says it cannot; :func:`exported` loads a program kept under
that identity without tracing it, or traces, exports and keeps it: the training chunk (:func:`chunk`), and
through :class:`Lazy` the initialisation and the epoch permutation.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax

from jaxcnn.lowering import program_cache

Trainer = Any  # a jaxcnn.train.trainer.Trainer (which imports this module, so it is not imported here)

__all__ = ["identity", "exported", "chunk", "Lazy"]

# TrainConfig fields that are no part of the chunk program: the seeds' keys and the label-noise draw are
# its arguments (or the data's), the compile options are given to the compiler, evaluation is another program
NOT_IN_CHUNK = frozenset({"seed", "label_noise_seed", "compile_options", "eval_batch"})


def identity(trainer: Trainer) -> Any | None:
    """What ``trainer``'s chunk program is a function of, described exactly (:func:`program_cache.fingerprint`),
    or None where that cannot be done (several devices, the host loop, a part from outside jaxcnn)."""
    t = trainer
    if t.multiprocess or len(t.devices) != 1 or t.cfg.loop != "device":
        return None
    cfg = [[f.name, getattr(t.cfg, f.name)] for f in dataclasses.fields(t.cfg) if f.name not in NOT_IN_CHUNK]
    try:
        return program_cache.fingerprint({
            "trainer": type(t), "model": t.model, "config": cfg, "given": t.given, "metrics": t.metrics,
            "in_shape": t.in_shape, "num_classes": t.data.num_classes, "mean": t.mean, "std": t.std,
            "x_dtype": t.data.x_train.dtype,
            "steps": [t.steps_per_epoch, t.chunk, t.padded_steps, len(t.seeds), t.seed_batching, t.on_cpu,
                      t.shard_batch],
        })
    except program_cache.Unkeyable:
        return None


def exported(trainer: Trainer, label: str, fn: Any, args: tuple[Any, ...]) -> program_cache.ExportedProgram | None:
    """``fn`` (jitted) of ``trainer`` at ``args``, loaded from the program cache without tracing, or traced and
    kept there; None where it is not kept (cache off, or :func:`identity` is None)."""
    if not program_cache.enabled() or (ident := identity(trainer)) is None:
        return None
    key = program_cache.key_of([label, ident], args)
    if (hit := program_cache.load(key)) is not None:
        return hit
    try:
        return program_cache.export(key, fn, args)
    except Exception:  # noqa: BLE001 - what jax.export refuses (another library's custom call) compiles as before
        return None


def chunk(trainer: Trainer, carry: Any, x_dev: Any, y_dev: Any) -> program_cache.ExportedProgram | None:
    """The chunk program an epoch runs (:func:`exported`; compiled by ``Trainer.compile``)."""
    args = trainer.first_chunk_args(carry, x_dev, y_dev)
    return exported(trainer, "train chunk", trainer.chunk_fn(trainer.chunk), args)


class Lazy:
    """``jax.jit(fn, **jit_kwargs)`` of ``trainer``, compiled from its kept program where it is kept (with the
    same ``compiler_options``): decided at the first call, whose arguments are the example (a Trainer builds
    its functions before their arguments exist); later calls take arguments of the same shapes."""

    def __init__(self, trainer: Trainer, label: str, fn: Any, **jit_kwargs: Any):
        self.trainer, self.label, self.fn, self.jit_kwargs, self.call = trainer, label, fn, jit_kwargs, None

    def __call__(self, *args: Any) -> Any:
        """``fn(*args)``, compiled at the first call."""
        if self.call is None:
            prog = exported(self.trainer, self.label, jax.jit(self.fn), args)
            self.call = prog.compile(compiler_options=self.jit_kwargs.get("compiler_options")) \
                if prog is not None else jax.jit(self.fn, **self.jit_kwargs)
        return self.call(*args)
