"""Programs over the leading seed axis of a Trainer's state: stacking, slicing, per-epoch keys."""

from __future__ import annotations

from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["stack_seeds", "chunk_rows", "first_seed", "epoch_keys", "seed_slice", "per_seed_and_batch"]


# One program each, not one per leaf shape: eagerly, stacking or slicing a model's ~20 leaves compiles (or
# loads from the persistent cache) ~20 tiny programs, a second of a short run's start-up.
@jax.jit
def stack_seeds(per_seed: list[Any]) -> Any:
    """Per-seed pytrees -> one pytree with a leading seed axis."""
    return jax.tree_util.tree_map(lambda *vs: jnp.stack(vs), *per_seed)


@jax.jit
def epoch_keys(keys: jax.Array, epoch: int) -> jax.Array:
    """Every seed's key of epoch ``epoch`` (one program for every epoch; eagerly it was two per call)."""
    return jax.vmap(lambda k: jax.random.fold_in(jax.random.fold_in(k, 1), epoch))(keys)


@partial(jax.jit, static_argnums=(2, 3, 4))
def chunk_rows(perm: jax.Array, keys: jax.Array, chunk: int, steps: int, padded: bool) -> tuple[tuple[Any, ...], ...]:
    """Each chunk's ``(perm[:, i:i + chunk], keys[:, i:i + chunk])`` of an epoch of ``steps`` steps, cut in one
    program; with its live step count appended when ``padded`` (the last chunk runs past ``steps``)."""
    return tuple((perm[:, i:i + chunk], keys[:, i:i + chunk]) + ((jnp.int32(min(chunk, steps - i)),) if padded else ())
                 for i in range(0, steps, chunk))


@jax.jit
def first_seed(tree: Any) -> Any:
    """The first seed's slice of every leaf."""
    return jax.tree_util.tree_map(lambda v: v[0], tree)


@jax.jit
def seed_slice(tree: Any, s: jax.Array) -> Any:
    """Seed ``s``'s slice of every leaf (one program for every seed)."""
    return jax.tree_util.tree_map(lambda v: v[s], tree)


def per_seed_and_batch(fn: Any, k: int, params: Any, state: Any, *batches: Any) -> tuple[np.ndarray, ...]:
    """Per seed, the float64 sum over the leading (batch) axis of ``batches`` of ``fn(params, state, *batch)``,
    ``fn`` called for one seed and one batch at a time (one program, whatever ``k`` and the batch count)."""
    on_device = [jax.device_put(b) for b in zip(*(np.asarray(a) for a in batches), strict=True)]  # once, not k times
    totals = []
    for s in range(k):
        weights = seed_slice((params, state), np.int32(s))
        outs = [fn(*weights, *batch) for batch in on_device]
        totals.append(np.sum([[np.asarray(v, np.float64) for v in o] for o in outs], axis=0))
    return tuple(np.stack(totals, axis=1))
