"""A Trainer's chunk program kept between runs (:mod:`jaxcnn.lowering.program_cache`): its identity and its reload.

:func:`identity` describes exactly what the chunk program is a function of -- the model, the config
(less what is an argument or a compiler option), the data's shape and statistics, the default or given
optimizer and loss, the steps and seeds -- or says it cannot; :func:`chunk` loads the program kept under
that identity without tracing it, or traces, exports and keeps it.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

import jax

from jaxcnn.lowering import program_cache

if TYPE_CHECKING:
    from jaxcnn.train.trainer import Trainer

__all__ = ["identity", "chunk"]

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


def chunk(trainer: Trainer, carry: Any, x_dev: Any, y_dev: Any) -> program_cache.ExportedProgram | None:
    """The chunk program an epoch runs, loaded from the program cache without tracing, or traced and kept
    there; None where it is not kept (cache off, or :func:`identity` is None)."""
    if not program_cache.enabled() or (ident := identity(trainer)) is None:
        return None
    args = trainer.first_chunk_args(carry, x_dev, y_dev)
    key = program_cache.key_of(["train chunk", ident], args)
    if (hit := program_cache.load(key)) is not None:
        return hit

    def out_keys(tree: Any) -> dict[str, Any]:  # the metric names a reload rebuilds the outputs with
        return {"out_keys": list(jax.tree_util.tree_unflatten(tree, [0] * tree.num_leaves)[1][2])}

    try:
        return program_cache.export(key, trainer.chunk_fn(trainer.chunk), args, out_keys)
    except Exception:  # noqa: BLE001 - what jax.export refuses (another library's custom call) compiles as before
        return None
