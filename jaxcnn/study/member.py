"""A study's members and the data they train on: plain data, importable without the training engine."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from jaxcnn.study.record import StudyError
from jaxcnn.train.config import TrainConfig
from jaxcnn.train.inputs import TrainData

__all__ = ["Member", "Task"]


@dataclass(frozen=True)
class Member:
    """One model of a study: registry name (with /width), builder options and how to describe it."""

    family: str
    variant: str
    label: str  # e.g. "16,16,32,32,64" or "alpha=0.5"
    options: dict[str, Any] = field(default_factory=dict)
    recipe: TrainConfig = field(default_factory=TrainConfig)
    pad_to: int | None = None  # zero-pad smaller images to pad_to x pad_to (MobileNet's 28 -> 32 for MNIST)
    model: str = ""  # the registry name (with /width) to build, when ``variant`` names more (e.g. "...,depth=8")
    input_size: int | None = None  # train on the data resized to this (a study's resolution axis); None: as given

    @property
    def build_name(self) -> str:
        """The registry name (with /width) this member builds."""
        return self.model or self.variant


@dataclass
class Task:
    """The data a study trains on, with a name for the records."""

    name: str
    data: TrainData
    # size -> the same data resized to size x size (a study with a resolution axis); None: one resolution only
    resize: Callable[[int], Task] | None = None

    @property
    def in_shape(self) -> tuple[int, ...]:
        """Per-example input shape."""
        return tuple(self.data.x_train.shape[1:])

    def padded(self, size: int | None) -> Task:
        """This task with images smaller than size x size zero-padded to it, centred (as LeNet-5 fed MNIST).

        The normalisation statistics stay those of the unpadded images, so every original pixel
        is fed exactly as before and the border gets the value of a zero (background) pixel.
        """
        if size is None:
            return self
        h, w = self.in_shape[:2]
        if h >= size and w >= size:
            return self
        if not isinstance(self.data.x_train, np.ndarray):
            raise StudyError(f"padding images to {size}x{size} (pad_to) needs them in memory, but this study's data "
                             "is streamed from disk; pass --no-stream (or a larger --memory-budget), or drop pad_to")
        ph, pw = max(0, size - h), max(0, size - w)
        widths = ((0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0))
        d = self.data
        return Task(self.name, replace(d, x_train=np.pad(d.x_train, widths), x_test=np.pad(d.x_test, widths)))

    def for_member(self, m: Member) -> Task:
        """The data member ``m`` trains on: resized to its ``input_size`` (if any), then padded to its ``pad_to``."""
        task = self
        if m.input_size is not None and m.input_size != self.in_shape[0]:
            if self.resize is None:
                raise StudyError(f"{m.variant} asks for input_size {m.input_size}, but this study's data comes at one "
                                 f"size ({self.in_shape[0]}); build the Task with `resize`")
            task = self.resize(m.input_size)
        return task.padded(m.pad_to)
