"""The training inputs: the :class:`TrainData` container, epoch shuffles and augmentation (on device)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np


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
    class_names: tuple[str, ...] | None = None  # recorded in checkpoints, for `jaxcnn predict`

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

    def digest(self) -> str:
        """sha256 of the exact data (both splits, their shapes and dtypes, the normalisation): the run identity's."""
        h = hashlib.sha256()
        for name in ("x_train", "y_train", "x_test", "y_test", "mean", "std"):
            a = np.ascontiguousarray(np.asarray(getattr(self, name)))
            h.update(f"{name}:{a.dtype.str}:{a.shape};".encode())
            h.update(a.data)
        return h.hexdigest()


def augment(x: jax.Array, key: jax.Array, crop_pad: int, flip: bool) -> jax.Array:
    """Random crops after zero-padding by ``crop_pad`` and random horizontal flips of a batch."""
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
