"""What a run reports per epoch: :class:`EpochRecord`, as ``metrics.jsonl`` and checkpoints hold it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["EpochRecord"]


@dataclass(frozen=True)
class EpochRecord:
    """One epoch of a run; every list has one entry per seed (the seed order of ``FitResult.seeds``)."""

    epoch: int  # counted from 0
    step: int  # optimizer steps taken by the end of this epoch
    train_loss: list[float]  # mean over the epoch's steps
    train_accuracy: list[float]
    test_loss: list[float]
    test_accuracy: list[float]
    test_top5: list[float]
    seconds: float  # training time of the epoch (evaluation and checkpointing excluded)
    images_per_second: float  # all seeds together
    metrics: dict[str, list[float]] = field(default_factory=dict)  # fit(metrics=...) by name, averaged per epoch
    ema: dict[str, list[float]] = field(default_factory=dict)  # with cfg.ema: test_loss/_accuracy/_top5 of the EMA

    _PER_SEED = ("train_loss", "train_accuracy", "test_loss", "test_accuracy", "test_top5")

    def to_json(self) -> dict[str, Any]:
        """The record as metrics.jsonl and checkpoints hold it (custom metrics as ``train_<name>``)."""
        out = {f: getattr(self, f) for f in ("epoch", "step", *self._PER_SEED)}
        out.update({f"train_{k}": v for k, v in self.metrics.items()} | {f"ema_{k}": v for k, v in self.ema.items()})
        return {**out, "seconds": self.seconds, "images_per_second": self.images_per_second}

    @classmethod
    def from_json(cls, value: Any, seeds: int) -> EpochRecord | None:
        """The record of a decoded JSON value with ``seeds`` entries per list, or None if it is not one."""
        if not isinstance(value, dict) or not all(isinstance(value.get(k), (int, float)) and not isinstance(
                value.get(k), bool) for k in ("epoch", "step", "seconds", "images_per_second")):
            return None
        per_seed = {k: value.get(k) for k in cls._PER_SEED}
        if not all(isinstance(v, list) and len(v) == seeds for v in per_seed.values()):
            return None
        metrics = {k[len("train_"):]: v for k, v in value.items()
                   if k.startswith("train_") and k not in cls._PER_SEED and isinstance(v, list)}
        ema = {k[len("ema_"):]: v for k, v in value.items() if k.startswith("ema_") and isinstance(v, list)}
        return cls(epoch=int(value["epoch"]), step=int(value["step"]), seconds=float(value["seconds"]),
                   images_per_second=float(value["images_per_second"]), metrics=metrics, ema=ema, **per_seed)
