"""From a data spec to what :func:`jaxcnn.train.fit` takes: the one path the CLI and the study scripts share.

``prepare`` loads the spec, splits off a stratified test part where the source has no official one,
optionally subsamples (smoke tests), and normalises with the training part's statistics only.
``augmentation`` gives the default crop padding and flips for a data source and image size.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from jaxcnn import data as jdata
from jaxcnn.data.stream import STREAM_SOURCES, image_files, require_grain, use_stream
from jaxcnn.data.stream import memory_budget as memory_budget_bytes
from jaxcnn.train import TrainData

# sources of hand-written digits: a mirrored digit is another symbol (or none), so no flips
DIGIT_SOURCES = ("mnist5k", "digits", "mnist", "fashion")


@dataclass(frozen=True)
class Prepared:
    """The arrays of a run and what they are."""

    data: TrainData
    source: str  # the spec's source name, e.g. "mnist5k" or "cifar10"
    official_test: bool  # False when the test part was split off the training data (test_fraction)
    train_classes: int  # classes present in the training part

    @property
    def name(self) -> str:
        """e.g. ``mnist5k (4000 train / 1000 test, 28x28x1)``."""
        d = self.data
        shape = "x".join(map(str, d.x_train.shape[1:]))
        return f"{self.source} ({len(d.y_train)} train / {len(d.y_test)} test, {shape})"


def prepare(spec: str, *, size: int | None = None, test_fraction: float = 0.2,
            subset: tuple[int, int] | None = None, stream: bool | None = None,
            memory_budget: int | str | None = None, workers: int = 0) -> Prepared:
    """Load ``spec`` (see :data:`jaxcnn.data.SPEC_HELP`) at ``size`` x ``size`` into train/test arrays.

    ``test_fraction`` (in (0, 1)) is the stratified test share when the source has no test split;
    ``subset=(n_train, n_test)`` keeps stratified subsets of both (before the statistics are taken).
    Image files (``folder:``/``list:``) are streamed from disk (:class:`jaxcnn.train.streaming.StreamData`,
    decoded by ``workers`` Grain processes) when ``stream`` is True, or when it is None and, decoded, they
    would take more than ``memory_budget`` (bytes or text like "6GB"; default: a quarter of the memory).
    """
    if not 0 < test_fraction < 1:
        raise ValueError(f"`test_fraction` must be between 0 and 1, got {test_fraction}")
    if jdata.source(spec) in STREAM_SOURCES and stream is not False:
        images, y, k, _ = image_files(spec, size)
        if use_stream(images.nbytes, stream, memory_budget):
            require_grain()
            from jaxcnn.train import streaming

            if stream is None:
                streaming.note(spec, images, memory_budget_bytes(memory_budget))
            data = streaming.streamed(images, y, k, test_fraction=test_fraction, subset=subset, workers=workers)
            return Prepared(data, jdata.source(spec), False, len(np.unique(data.y_train)))
    elif stream:
        raise jdata.DataError(f"`stream=True` reads image files one at a time (folder:PATH, list:FILE); {spec} is "
                              "one file, loaded in memory: drop `stream`")
    splits = jdata.load(spec, size=size)
    train, test = splits["train"], splits.get("test")
    official = test is not None
    if not official:
        train, test = jdata.stratified_split(train, test_fraction=test_fraction, seed=0)
    if subset is not None:
        train = jdata.stratified_subset(train, subset[0], seed=0)
        test = jdata.stratified_subset(test, subset[1], seed=0)
    mean, std = jdata.normalization_stats(train.x)
    data = TrainData(train.x, train.y, test.x, test.y, splits["train"].num_classes, mean, std,
                     class_names=splits["train"].class_names)
    return Prepared(data, jdata.source(spec), official, len(np.unique(train.y)))


def augmentation(spec: str, size: int) -> dict[str, int | bool]:
    """Default ``crop_pad`` and ``flip`` for images of ``size`` pixels from ``spec``'s source.

    Crops shift by up to 4 pixels at 32 px and above, 2 at 16-31 px, 1 below (an eighth of the image
    or less); flips are off for digits.
    """
    crop = 4 if size >= 32 else 2 if size >= 16 else 1
    return {"crop_pad": crop, "flip": jdata.source(spec) not in DIGIT_SOURCES}
