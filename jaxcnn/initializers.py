"""Weight initialisers by name, so a layer's choice stays plain hashable data."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

NAMES = ("he_normal", "he_uniform", "lecun_normal", "glorot_uniform", "glorot_normal", "torch", "zeros")


def check_init_name(name: str) -> str | None:
    """Return an error text if ``name`` is not a known initialiser, else None."""
    if not isinstance(name, str):  # else ``name.startswith`` below raises AttributeError
        return f"kernel_init must be an initialiser name (a string), got {name!r}"
    if name in NAMES:
        return None
    if name.startswith("normal:"):
        try:
            std = float(name.split(":", 1)[1])
        except ValueError:
            std = -1.0
        if std > 0:
            return None
    return f"unknown initialiser {name!r}; use one of {', '.join(NAMES)} or 'normal:STD' (e.g. 'normal:0.01')"


def weight(name: str, key: jax.Array, shape: tuple[int, ...], fan_in: int, fan_out: int) -> jax.Array:
    """A float32 weight array drawn by the named rule with the given fans."""
    if name == "zeros":
        return jnp.zeros(shape, jnp.float32)
    if name.startswith("normal:"):
        return float(name.split(":", 1)[1]) * jax.random.normal(key, shape, jnp.float32)
    if name == "he_normal":
        return math.sqrt(2.0 / fan_in) * jax.random.normal(key, shape, jnp.float32)
    if name == "lecun_normal":
        return math.sqrt(1.0 / fan_in) * jax.random.normal(key, shape, jnp.float32)
    if name == "glorot_normal":
        return math.sqrt(2.0 / (fan_in + fan_out)) * jax.random.normal(key, shape, jnp.float32)
    if name == "he_uniform":
        bound = math.sqrt(6.0 / fan_in)
    elif name == "glorot_uniform":
        bound = math.sqrt(6.0 / (fan_in + fan_out))
    elif name == "torch":  # PyTorch's default for Conv2d/Linear: kaiming_uniform(a=sqrt(5))
        bound = 1.0 / math.sqrt(fan_in)
    else:
        raise ValueError(check_init_name(name))
    return jax.random.uniform(key, shape, jnp.float32, -bound, bound)


def bias(name: str, key: jax.Array, shape: tuple[int, ...], fan_in: int) -> jax.Array:
    """Bias: zeros, except PyTorch's default rule which draws it like the weight."""
    if name == "torch":
        bound = 1.0 / math.sqrt(fan_in)
        return jax.random.uniform(key, shape, jnp.float32, -bound, bound)
    return jnp.zeros(shape, jnp.float32)
