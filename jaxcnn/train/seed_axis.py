"""Programs over the leading seed axis of a Trainer's state: stacking, slicing, per-epoch keys."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["stack_seeds", "first_seed", "epoch_keys", "seed_slice", "per_seed"]


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


@jax.jit
def first_seed(tree: Any) -> Any:
    """The first seed's slice of every leaf."""
    return jax.tree_util.tree_map(lambda v: v[0], tree)


@jax.jit
def seed_slice(tree: Any, s: jax.Array) -> Any:
    """Seed ``s``'s slice of every leaf (one program for every seed)."""
    return jax.tree_util.tree_map(lambda v: v[s], tree)


def per_seed(fn: Any, k: int, params: Any, state: Any, *rest: Any) -> tuple[np.ndarray, ...]:
    """``fn(params, state, *rest)`` of one seed, called for each of the ``k`` seeds; its outputs stacked."""
    outs = [fn(*seed_slice((params, state), np.int32(s)), *rest) for s in range(k)]
    return tuple(np.stack([np.asarray(o[i]) for o in outs]) for i in range(len(outs[0])))
