"""Programs over the leading seed axis of a Trainer's state: stacking, slicing, per-epoch keys."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

__all__ = ["stack_seeds", "first_seed", "epoch_keys"]


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
