"""Normalisation and regularisation: BatchNorm and Dropout."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import ClassVar

import jax
import jax.numpy as jnp
from jax import lax

from jaxcnn.core import Layer, Params, ParamsError, Shape, Spec, State
from jaxcnn.layers.hyperparams import check_dtype
from jaxcnn.lowering import native_bn
from jaxcnn.lowering.reductions import broadcast_rows, mean_leading, sum_leading

# -- normalisation and regularisation --------------------------------------------------


@dataclass(frozen=True)
class BatchNorm(Layer):
    """Batch normalisation over the last (channel) axis.

    Train mode normalises with the batch mean and biased variance, and updates the
    running statistics as ``new = ema_decay * old + (1 - ema_decay) * batch`` where the
    batch variance is the unbiased one (n / (n - 1), as PyTorch and Caffe keep it).
    ``ema_decay=0.9`` equals PyTorch's ``momentum=0.1``. Statistics are float32 always.
    """

    ema_decay: float = 0.9
    eps: float = 1e-5
    use_scale: bool = True
    use_offset: bool = True
    compute_dtype: str | None = None

    kind: ClassVar[str] = "bn"
    pointwise: ClassVar[bool] = True  # per-channel affine map of each position

    def __post_init__(self) -> None:
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"BatchNorm: ema_decay must be in [0, 1), got {self.ema_decay!r}")
        if self.eps <= 0:
            raise ValueError(f"BatchNorm: eps must be > 0, got {self.eps!r}")
        check_dtype(self)

    def spec(self, in_shape: Shape) -> Spec:
        """Same shape; 2 ops per element (scale and shift) at inference."""
        return Spec(in_shape, other_ops=2 * math.prod(in_shape))

    def param_shapes(self, in_shape: Shape) -> dict[str, Shape]:
        """``scale`` and ``offset`` per channel (each optional)."""
        c = (in_shape[-1],)
        shapes = {}
        if self.use_scale:
            shapes["scale"] = c
        if self.use_offset:
            shapes["offset"] = c
        return shapes

    def state_shapes(self, in_shape: Shape) -> dict[str, Shape]:
        """Running ``mean`` and ``var`` per channel."""
        return {"mean": (in_shape[-1],), "var": (in_shape[-1],)}

    def init_param(self, name: str, key: jax.Array, shape: Shape, in_shape: Shape) -> jax.Array:
        """scale = 1, offset = 0."""
        return jnp.ones(shape, jnp.float32) if name == "scale" else jnp.zeros(shape, jnp.float32)

    def init_state(self, name: str, shape: Shape) -> jax.Array:
        """mean = 0, var = 1."""
        return jnp.ones(shape, jnp.float32) if name == "var" else jnp.zeros(shape, jnp.float32)

    def torch_arrays(self) -> dict[str, tuple[str, str, str]]:
        """``weight``/``bias`` (scale/offset) and the running statistics, as torch's BatchNorm2d names them."""
        return {**({"weight": ("params", "scale", "")} if self.use_scale else {}),
                **({"bias": ("params", "offset", "")} if self.use_offset else {}),
                "running_mean": ("state", "mean", ""), "running_var": ("state", "var", "")}

    def forward(
        self, params: Params, state: State, x: jax.Array, *, train: bool, key: jax.Array | None
    ) -> tuple[jax.Array, State]:
        """Normalise in (at least) float32, return in the compute (or input) dtype."""
        out_dtype = jnp.dtype(self.compute_dtype) if self.compute_dtype else x.dtype
        # At least float32: bf16/f16 inputs are upcast, but float64 (x64 mode) must not be
        # silently truncated to float32 precision.
        xf = x.astype(jnp.promote_types(x.dtype, jnp.float32))
        if train:
            c = (x.shape[-1],)
            scale = params["scale"] if self.use_scale else jnp.ones(c, xf.dtype)
            offset = params["offset"] if self.use_offset else jnp.zeros(c, xf.dtype)
            y, mean, var = batch_norm_train(xf, scale, offset, self.eps)
            n = math.prod(x.shape[:-1])
            unbiased = var * (n / max(n - 1, 1))
            d = self.ema_decay
            state = {  # kept in the dtype init gave them (float32), whatever the input dtype
                "mean": (d * state["mean"] + (1.0 - d) * lax.stop_gradient(mean)).astype(state["mean"].dtype),
                "var": (d * state["var"] + (1.0 - d) * lax.stop_gradient(unbiased)).astype(state["var"].dtype),
            }
            return y.astype(out_dtype), state
        y = (xf - state["mean"]) * lax.rsqrt(state["var"] + self.eps)
        if self.use_scale:
            y = y * params["scale"]
        if self.use_offset:
            y = y + params["offset"]
        return y.astype(out_dtype), state


@functools.partial(jax.custom_jvp, nondiff_argnums=(3,))
def batch_norm_train(x: jax.Array, scale: jax.Array, offset: jax.Array, eps: float
                     ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(y, mean, var)``: ``x`` normalised over all axes but the last with its own mean and biased variance.

    Every sum, forward and backward, is two-stage (:mod:`jaxcnn.lowering.reductions`), so the
    statistics and the gradients are as accurate under XLA's own reductions as under YNNPACK's.
    """
    return _bn_primal(x, scale, offset, eps)[:3]


def _bn_primal(x, scale, offset, eps):
    axes = x.ndim - 1
    if native_bn.applicable(x):  # both statistics in one native read of x (csrc/batchnorm.cc)
        mean, var = native_bn.stats(x)
        centred = x - mean
    else:
        mean = mean_leading(x, axes)
        centred = x - mean
        var = mean_leading(jnp.square(centred), axes)
    rstd = lax.rsqrt(var + eps)
    return centred * rstd * scale + offset, mean, var, centred, rstd


@batch_norm_train.defjvp
def _bn_jvp(eps, primals, tangents):
    # The tangent, written so that its transpose (reverse mode) is PyTorch's BatchNorm backward:
    # two row sums, S(ct) and S(ct * (x - mean)), each taken once, then one elementwise pass.
    #   d xhat = rstd * (dx - mean(dx) - xhat * mean(xhat * dx)),  xhat = (x - mean) * rstd
    #   dy = scale * d xhat + xhat * d scale + d offset
    # Per-channel vectors reach the map through broadcast_rows, whose transpose is the two-stage sum;
    # rstd multiplies the sums, not the map (as PyTorch's does: one rounding fewer per term).
    x, scale, offset = primals
    tx, tscale, toffset = tangents
    y, mean, var, centred, rstd = _bn_primal(x, scale, offset, eps)
    axes, m = x.ndim - 1, math.prod(x.shape[:-1])
    k = scale * rstd
    s1, s2 = sum_leading(tx, axes), sum_leading(centred * tx, axes)

    def rows(v):
        return broadcast_rows(v.astype(x.dtype), x.shape, 0, axes)

    a, b = rstd * (tscale - k * rstd * s2 / m), toffset - k * s1 / m
    if native_bn.applicable(x):  # reverse mode: the transpose is the backward's two sums in one native pass
        ty = k * tx + native_bn.rows_affine(a.astype(x.dtype), b.astype(x.dtype), x, mean)
    else:
        ty = k * tx + centred * rows(a) + rows(b)
    return (y, mean, var), (ty, s1 / m, (2.0 / m) * s2)


@dataclass(frozen=True)
class Dropout(Layer):
    """Zero each element with probability ``rate`` in train mode and rescale by 1/(1-rate)."""

    rate: float = 0.5

    kind: ClassVar[str] = "dropout"
    in_place: ClassVar[bool] = True
    pointwise: ClassVar[bool] = True

    def __post_init__(self) -> None:
        if not 0.0 <= self.rate < 1.0:
            raise ValueError(f"{type(self).__name__}: rate is the drop probability and must be in [0, 1), "
                             f"got {self.rate!r}")

    def spec(self, in_shape: Shape) -> Spec:
        """Same shape."""
        return Spec(in_shape)

    def forward(
        self, params: Params, state: State, x: jax.Array, *, train: bool, key: jax.Array | None
    ) -> tuple[jax.Array, State]:
        """Bernoulli mask from ``key`` in train mode; identity otherwise."""
        if not train or self.rate == 0.0:
            return x, state
        if key is None:
            raise ParamsError(
                self, tuple(x.shape[1:]), "train mode needs a random key",
                "Pass key=jax.random.key(...) to apply (or train=False for evaluation)",
            )
        # float32 draws always (what bernoulli does in the default mode), so a float64 run draws the same mask
        keep = jax.random.uniform(key, self._mask_shape(x), jnp.float32) < jnp.float32(1.0 - self.rate)
        return jnp.where(keep, x / (1.0 - self.rate), jnp.zeros_like(x)), state

    def _mask_shape(self, x: jax.Array) -> tuple[int, ...]:
        """One draw per element."""
        return tuple(x.shape)
