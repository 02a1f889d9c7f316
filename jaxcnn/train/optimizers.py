"""The named optimizers and learning-rate schedules of :class:`~jaxcnn.train.TrainConfig` (listed once here)."""

from __future__ import annotations

import optax

from jaxcnn.core import Layer
from jaxcnn.train import step
from jaxcnn.train.config import TrainConfig


def learning_rate(cfg: TrainConfig, steps_per_epoch: int) -> optax.Schedule:
    """The learning rate per step: a linear warm-up from 0 over ``warmup_epochs``, then the schedule.

    ``step``: ``lr`` times ``milestone_factor`` at each epoch of ``milestones`` (counted from the start of
    training, warm-up included); ``cosine``: cosine decay to 0 over the epochs after the warm-up.
    """
    total = cfg.epochs * steps_per_epoch
    warm = int(round(cfg.warmup_epochs * steps_per_epoch))
    if cfg.schedule == "cosine":
        main = optax.cosine_decay_schedule(cfg.lr, max(total - warm, 1))
    elif cfg.schedule == "multistep":
        main = optax.piecewise_constant_schedule(
            cfg.lr, {max(e * steps_per_epoch - warm, 1): cfg.milestone_factor for e in cfg.milestones}
        )
    else:
        main = optax.constant_schedule(cfg.lr)
    return optax.join_schedules([optax.linear_schedule(0.0, cfg.lr, warm), main], [warm]) if warm else main


def make_optimizer(cfg: TrainConfig, steps_per_epoch: int, model: Layer) -> optax.GradientTransformation:
    """The optax chain for ``cfg`` (decoupled-from-BN weight decay, schedule, warm-up).

    Weight decay applies to the params ``model``'s layers declare ``decayed`` (:func:`jaxcnn.train.step.decay_mask`).
    """
    _decay_mask = step.decay_mask(model)
    lr = learning_rate(cfg, steps_per_epoch)
    if cfg.optimizer == "adamw":
        return optax.adamw(lr, weight_decay=cfg.weight_decay, mask=_decay_mask)
    decay = optax.add_decayed_weights(cfg.weight_decay, _decay_mask) if cfg.weight_decay else optax.identity()
    if cfg.optimizer == "adam":
        return optax.chain(decay, optax.adam(lr))
    if cfg.optimizer == "sgd":
        return optax.chain(decay, optax.sgd(lr))
    return optax.chain(decay, optax.sgd(lr, momentum=cfg.momentum, nesterov=cfg.optimizer == "nesterov"))
