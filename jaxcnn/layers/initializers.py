"""Weight initialisers by name, so a layer's choice stays plain hashable data."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

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


# Eager random draws compile one XLA program per distinct shape, about 0.9 s each for a normal on a CPU core,
# so GoogLeNet's 66 kernel shapes took 25 s to initialise. Threefry's partitionable bit generation (JAX's default)
# makes element i of a draw depend only on the key and i, so a draw of n values is the first n values of any
# longer draw with the same key: eager draws are made at a few bucket sizes (one program each, shared by every
# shape) and cut and scaled on the host, which gives exactly the values jax.random gives for the shape itself
# (tests/test_core_numerics.py checks it). Inside jit (a traced key) the draw is the plain one.
_SMALLEST, _LARGEST = 1 << 10, 1 << 22  # below: one bucket; above: drawn at its own size (no 2x memory)


def _bucketed(key: jax.Array) -> bool:
    return (not isinstance(key, jax.core.Tracer) and bool(jax.config.jax_threefry_partitionable)
            and str(jax.random.key_impl(key)) == "threefry2x32")


def _bucket(n: int) -> int:
    return n if n > _LARGEST else max(_SMALLEST, 1 << (n - 1).bit_length())


def _normal(key: jax.Array, shape: tuple[int, ...], scale: float) -> jax.Array:
    """``scale * jax.random.normal(key, shape)`` in float32."""
    if not _bucketed(key):
        return scale * jax.random.normal(key, shape, jnp.float32)
    n = math.prod(shape)
    draw = np.asarray(jax.random.normal(key, (_bucket(n),), jnp.float32))
    return jnp.asarray(np.float32(scale) * draw[:n].reshape(shape))


def _uniform(key: jax.Array, shape: tuple[int, ...], bound: float) -> jax.Array:
    """``jax.random.uniform(key, shape, float32, -bound, bound)``."""
    if not _bucketed(key):
        return jax.random.uniform(key, shape, jnp.float32, -bound, bound)
    n = math.prod(shape)
    draw = np.asarray(jax.random.uniform(key, (_bucket(n),), jnp.float32, -bound, bound))
    return jnp.asarray(draw[:n].reshape(shape))


def weight(name: str, key: jax.Array, shape: tuple[int, ...], fan_in: int, fan_out: int) -> jax.Array:
    """A float32 weight array drawn by the named rule with the given fans."""
    if name == "zeros":
        return jnp.zeros(shape, jnp.float32)
    if name.startswith("normal:"):
        return _normal(key, shape, float(name.split(":", 1)[1]))
    if name == "he_normal":
        return _normal(key, shape, math.sqrt(2.0 / fan_in))
    if name == "lecun_normal":
        return _normal(key, shape, math.sqrt(1.0 / fan_in))
    if name == "glorot_normal":
        return _normal(key, shape, math.sqrt(2.0 / (fan_in + fan_out)))
    if name == "he_uniform":
        bound = math.sqrt(6.0 / fan_in)
    elif name == "glorot_uniform":
        bound = math.sqrt(6.0 / (fan_in + fan_out))
    elif name == "torch":  # PyTorch's default for Conv2d/Linear: kaiming_uniform(a=sqrt(5))
        bound = 1.0 / math.sqrt(fan_in)
    else:
        raise ValueError(check_init_name(name))
    return _uniform(key, shape, bound)


def bias(name: str, key: jax.Array, shape: tuple[int, ...], fan_in: int) -> jax.Array:
    """Bias: zeros, except PyTorch's default rule which draws it like the weight."""
    if name == "torch":
        return _uniform(key, shape, 1.0 / math.sqrt(fan_in))
    return jnp.zeros(shape, jnp.float32)
