"""Image folders larger than memory: lazily decoded image files and Grain batch streams over them.

:class:`ImageFiles` is a uint8 NHWC "array" whose pixels are decoded only when indexed (the same decoder as
``folder:``/``list:`` in memory, :func:`jaxcnn.data.images.decode_image`). :class:`ImageStream` turns an order
of records (file indices) into batches, decoding and resizing (and, optionally, augmenting) in Grain worker
processes; its state (:meth:`ImageStream.get_state`) is a small JSON-able dict, and a stream given that state
continues with exactly the batches the first one would have produced next, whatever the worker count.

Which path a run takes: :func:`use_stream` compares the decoded size of the set with a memory budget
(:data:`DEFAULT_MEMORY_FRACTION` of the machine's memory unless given). Grain is an optional dependency
(``pip install 'jaxcnn[stream]'``); it is imported only when a stream is built.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from jaxcnn.data.dataset import DataError
from jaxcnn.data.images import check_size, decode_image, folder_files, list_files

STREAM_HINT = "pip install 'jaxcnn[stream]'"
# The in-memory path holds the decoded set twice on a CPU host (the NumPy array and the device copy), plus the
# test split, the model and XLA's buffers: a quarter of the memory leaves room for all of them.
DEFAULT_MEMORY_FRACTION = 0.25
STREAM_SOURCES = ("folder", "list")

Augment = Callable[[np.ndarray, np.random.Generator], np.ndarray]
"""A worker-side augmentation: ``(image HxWxC uint8, rng) -> image of the same shape and dtype``."""


def require_grain() -> Any:
    """The ``grain`` module, or one DataError naming the extra that installs it."""
    try:
        import grain
    except ImportError:
        raise DataError(f"streaming image files needs Grain, which is not installed: {STREAM_HINT}") from None
    try:  # Grain reads absl flags; outside an absl app they are unparsed and reading one raises
        from absl import flags

        if not flags.FLAGS.is_parsed():
            flags.FLAGS.mark_as_parsed()
    except ImportError:  # a Grain without absl needs nothing here
        pass
    return grain


# Memory budget


def memory_budget(budget: int | str | None = None) -> int:
    """The budget in bytes: ``budget`` as given (an int, or text like ``"6GB"``, ``"512MiB"``), else the default
    :data:`DEFAULT_MEMORY_FRACTION` of the machine's physical memory."""
    if budget is None:
        try:
            total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError, AttributeError):  # not POSIX: assume a small machine
            total = 8 << 30
        return int(total * DEFAULT_MEMORY_FRACTION)
    if isinstance(budget, (int, np.integer)) and not isinstance(budget, bool):
        value = int(budget)
    else:
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kmgt]?)(i?)b?\s*", str(budget).lower())
        if not m:
            raise DataError(f"`memory_budget={budget}` is not a size; give bytes or e.g. 6GB, 512MiB, 0.5TB")
        power = " kmgt".index(m.group(2) or " ")  # GB = 10**9 bytes, GiB = 2**30
        value = int(float(m.group(1)) * (1024 if m.group(3) else 1000) ** power)
    if value < 1:
        raise DataError(f"`memory_budget={budget}` must be a positive size")
    return value


def use_stream(nbytes: int, stream: bool | None, budget: int | str | None = None) -> bool:
    """Whether to stream a set of ``nbytes`` decoded: ``stream`` if given, else whether it is over the budget."""
    return bool(stream) if stream is not None else nbytes > memory_budget(budget)


def human(nbytes: float) -> str:
    """``nbytes`` as text with a binary unit, e.g. ``5.9 GiB``."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if nbytes < 1024:
            return f"{nbytes:.1f} {unit}" if unit != "B" else f"{int(nbytes)} B"
        nbytes /= 1024
    return f"{nbytes:.1f} TiB"


# Lazily decoded images


class ImageFiles:
    """Image files as a uint8 ``(n, size, size, channels)`` array decoded on indexing (nothing held in memory).

    ``x[i]`` is one image, ``x[a:b]`` or ``x[indices]`` a stacked batch, exactly the pixels
    :func:`jaxcnn.data.load_folder` / :func:`jaxcnn.data.load_list` would hold at those positions.
    """

    dtype = np.dtype(np.uint8)
    ndim = 4

    def __init__(self, paths: Sequence[str | os.PathLike], size: int, grey: bool = False,
                 where: Sequence[str] | str = "image files"):
        self.paths = tuple(str(p) for p in paths)
        self.size = check_size(size, 32)
        self.grey = bool(grey)
        self.where = (where,) * len(self.paths) if isinstance(where, str) else tuple(where)
        if len(self.where) != len(self.paths):
            raise DataError(f"ImageFiles: {len(self.where)} error labels for {len(self.paths)} files")

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """``(n, size, size, channels)``, as the decoded array would be."""
        return (len(self.paths), self.size, self.size, 1 if self.grey else 3)

    @property
    def nbytes(self) -> int:
        """Bytes the decoded array would take."""
        return int(np.prod(self.shape))

    def __len__(self) -> int:
        return len(self.paths)

    def decode(self, i: int) -> np.ndarray:
        """Image ``i`` decoded and resized, ``(size, size, channels)`` uint8."""
        return decode_image(Path(self.paths[i]), self.size, self.grey, self.where[i])

    def __getitem__(self, key: Any) -> np.ndarray:
        if isinstance(key, (int, np.integer)):
            return self.decode(int(np.arange(len(self))[key]))
        idx = np.arange(len(self))[key] if isinstance(key, slice) else np.asarray(key, np.int64)
        out = np.empty((idx.size, *self.shape[1:]), np.uint8)
        for j, i in enumerate(idx.reshape(-1)):
            out[j] = self.decode(int(i))
        return out.reshape(*idx.shape, *self.shape[1:])

    def take(self, indices: np.ndarray | Sequence[int]) -> ImageFiles:
        """The files at ``indices``, still undecoded."""
        idx = np.asarray(indices, np.int64).reshape(-1)
        return ImageFiles([self.paths[i] for i in idx], self.size, self.grey, [self.where[i] for i in idx])

    def digest(self) -> str:
        """sha256 of what identifies the images without decoding them: the size, colour, and each file's name
        (relative to the files' common folder, so a moved folder is the same set) and byte count."""
        h = hashlib.sha256(f"ImageFiles:{self.shape}:{self.grey};".encode())
        root = os.path.commonpath(self.paths) if len(self.paths) > 1 else os.path.dirname(self.paths[0] if
                                                                                             self.paths else "")
        for p in self.paths:
            try:
                n = os.stat(p).st_size
            except OSError:
                n = -1  # named in the digest anyway; decoding it will say why it is unreadable
            h.update(f"{os.path.relpath(p, root)}:{n};".encode())
        return h.hexdigest()

    def __repr__(self) -> str:
        return f"ImageFiles({len(self)} files, {'x'.join(map(str, self.shape[1:]))})"


def image_files(spec: str, size: int | None = None, grey: bool = False
                ) -> tuple[ImageFiles, np.ndarray, int, tuple[str, ...] | None]:
    """``(images, labels, num_classes, class_names)`` of a ``folder:PATH`` or ``list:FILE[:ROOT]`` spec, undecoded.

    The files, labels and classes are those :func:`jaxcnn.data.load` reads for the same spec (32 px by default).
    """
    from jaxcnn.data.spec import list_arg, source

    kind, _, arg = str(spec).partition(":")
    kind = source(spec)
    if kind not in STREAM_SOURCES or not arg:
        raise DataError(f"`spec={spec}` cannot be streamed: only folder:PATH and list:FILE[:ROOT] are image files "
                        "read one at a time (the other sources are single files, loaded in memory)")
    size = check_size(size, 32)
    if kind == "folder":
        paths, y, classes = folder_files(arg)
        return ImageFiles(paths, size, grey, str(Path(arg))), y, len(classes), classes
    file, root = list_arg(arg)
    paths, y, where = list_files(file, root)
    return ImageFiles(paths, size, grey, where), y, int(y.max()) + 1, None


# Grain streams


class _Decode:
    """Grain map of one record ``(position, file index)`` to its decoded (and augmented) image; picklable."""

    def __init__(self, images: ImageFiles, augment: Augment | None, key: Sequence[int]):
        self.images, self.augment, self.key = images, augment, tuple(int(k) for k in key)

    def __call__(self, record: np.ndarray) -> np.ndarray:
        position, index = (int(v) for v in record)
        x = self.images.decode(index)
        if self.augment is not None:
            x = np.array(x)  # writable: Pillow's array is read-only
            # the draw depends on (key, position) only: the same for any worker count and after a resume
            rng = np.random.default_rng(np.random.SeedSequence([*self.key, position]))
            y = np.asarray(self.augment(x, rng))
            if y.shape != x.shape or y.dtype != np.uint8:
                raise DataError(f"the stream's augment function returned {y.dtype} {y.shape} for a uint8 "
                                f"{x.shape} image; return an image of the same shape and dtype")
            x = y
        return x


class ImageStream:
    """Batches of ``images[records[i]]`` in order, ``batch`` records each, decoded by Grain.

    Args:
        images: the files (:class:`ImageFiles`).
        records: file indices in the order to read them; a final partial batch is dropped.
        batch: records per batch.
        workers: Grain worker processes decoding batches ahead (0: decode in this process, on demand).
        positions: one integer per record naming it for ``augment``'s random draws (default 0, 1, ...): give
            the records' global positions when a process streams only its shard.
        augment: :data:`Augment` run in the workers on every decoded image, with a generator seeded by
            ``(*key, position)``; it must be a picklable (module-level) function when ``workers > 0``.
        key: integers that, with the position, seed ``augment`` (e.g. seed and epoch).
    """

    def __init__(self, images: ImageFiles, records: np.ndarray | Sequence[int], batch: int, *, workers: int = 0,
                 positions: np.ndarray | None = None, augment: Augment | None = None, key: Sequence[int] = ()):
        require_grain()  # before any work: the one-line error naming the extra
        records = np.asarray(records, np.int64).reshape(-1)
        if not isinstance(workers, int) or isinstance(workers, bool) or workers < 0:
            raise DataError(f"`workers={workers}` must be an int >= 0 (Grain worker processes; 0 decodes in "
                            "this process)")
        if not isinstance(batch, int) or batch < 1:
            raise DataError(f"ImageStream: batch must be a positive int, got {batch!r}")
        if len(records) and (records.min() < 0 or records.max() >= len(images)):
            raise DataError(f"ImageStream: records must index the {len(images)} files")
        positions = np.arange(len(records)) if positions is None else np.asarray(positions, np.int64).reshape(-1)
        if positions.shape != records.shape:
            raise DataError(f"ImageStream: {len(positions)} positions for {len(records)} records")
        self.batches = len(records) // batch
        self.batch, self.workers = batch, workers
        self._table = np.stack([positions, records], 1)[: self.batches * batch]
        self._decode = _Decode(images, augment, key)
        self._it: Any = None
        self.done = 0  # batches returned so far

    def _iterator(self) -> Any:
        if self._it is None:
            grain = require_grain()
            # from the first batch not yet returned: a resumed stream is a shorter one, so its state does not
            # depend on the worker count
            ds = grain.MapDataset.source(self._table[self.done * self.batch:]).map(self._decode)
            ds = ds.batch(self.batch, drop_remainder=True)
            # no reader threads in this process: with workers the reading is theirs, without it is on demand
            it = ds.to_iter_dataset(grain.ReadOptions(num_threads=0, prefetch_buffer_size=0))
            if self.workers:
                it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=self.workers, per_worker_buffer_size=2))
            self._it = iter(it)
        return self._it

    def __iter__(self) -> Iterator[np.ndarray]:
        return self

    def __next__(self) -> np.ndarray:
        if self.done >= self.batches:
            raise StopIteration
        x = np.array(next(self._iterator()), np.uint8)  # a copy: out of Grain's shared memory
        self.done += 1
        return x

    def get_state(self) -> dict[str, Any]:
        """JSON-able state: a stream built alike (any worker count) and given it continues with this one's next
        batch. ``batches_done`` is what resumes; ``records`` (how many) and ``sha256`` (of the order) check it."""
        return {"batches_done": self.done, "records": len(self._table),
                "sha256": hashlib.sha256(np.ascontiguousarray(self._table).data).hexdigest()}

    def set_state(self, state: dict[str, Any]) -> None:
        """Continue from ``state`` (:meth:`get_state` of a stream over the same images, records and batch)."""
        if not isinstance(state, dict) or not isinstance(state.get("batches_done"), int):
            raise DataError(f"ImageStream.set_state: {str(state)[:80]} is not a stream state")
        mine = self.get_state()
        if {k: state.get(k) for k in ("records", "sha256")} != {k: mine[k] for k in ("records", "sha256")} \
                or not 0 <= state["batches_done"] <= self.batches:
            raise DataError("ImageStream.set_state: the state belongs to a stream of other records or another "
                            "order; resume with the seed, epoch and data that wrote it")
        self.close()
        self.done = state["batches_done"]

    def close(self) -> None:
        """Stop the worker processes (a stream read to its end or dropped stops them too)."""
        it, self._it = self._it, None
        close = getattr(it, "close", None)
        if close is not None:
            close()


def shard_rows(batch: int, index: int, count: int) -> np.ndarray:
    """The positions of a global batch that process ``index`` of ``count`` reads: its contiguous block.

    The blocks of all processes are disjoint and cover ``range(batch)``; ``batch`` must divide evenly (as the
    batch sharding over every process's devices requires).
    """
    if count < 1 or not 0 <= index < count or batch % count:
        raise DataError(f"shard_rows: batch {batch} cannot be split into {count} equal parts for process {index}")
    part = batch // count
    return np.arange(index * part, (index + 1) * part)
