"""The one lock type: an exclusive ``flock`` on a file, shared by a process's threads, re-entrant in a thread.

Both locks jaxcnn takes are this one: an output folder held for a whole run
(:func:`jaxcnn.storage.outdir.exclusive`, non-blocking: a second run is refused) and a study's results
lock (:func:`jaxcnn.study.results_lock`, blocking: writers take turns). Across processes ``flock``
excludes (the kernel drops it when the holder dies, also on shared file systems whose ``flock``
reaches every client); across the threads of one process a ``threading.RLock`` does; the same
thread may take it again (``jaxcnn train`` holds the folder around ``fit``, which holds it too).
"""

from __future__ import annotations

import fcntl
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["LockBusy", "held"]


class LockBusy(Exception):
    """The lock is held elsewhere (another process, or another thread of this one) and blocking was off."""


@dataclass
class _Held:
    rlock: threading.RLock = field(default_factory=threading.RLock)
    depth: int = 0
    fd: int | None = None
    value: Any = None


_REGISTRY: dict[Path, _Held] = {}
_GUARD = threading.Lock()
_FLAGS = os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOFOLLOW", 0)


@contextmanager
def held(path: str | os.PathLike, *, blocking: bool, on_first: Callable[[int], Any] | None = None,
         on_last: Callable[[int], None] | None = None) -> Iterator[Any]:
    """Hold an exclusive lock on ``path`` (created if missing) and yield ``on_first(fd)``'s value.

    ``on_first`` runs once, when this process takes the lock (an exception there releases it);
    nested holds in the same thread share its value; ``on_last(fd)`` runs before the last release.
    With ``blocking=False`` a lock held elsewhere raises :class:`LockBusy` with the fd's contents
    as its message (``""`` when another thread of this process holds it). OSError from opening passes.
    """
    key = Path(path).resolve()
    with _GUARD:
        entry = _REGISTRY.setdefault(key, _Held())
    if not entry.rlock.acquire(blocking=blocking):
        raise LockBusy("")
    try:
        if entry.depth == 0:
            fd = os.open(key, _FLAGS, 0o644)
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
                except BlockingIOError:
                    raise LockBusy(os.pread(fd, 4096, 0).decode("utf-8", "replace").strip()) from None
                entry.value = on_first(fd) if on_first is not None else None
            except BaseException:
                os.close(fd)  # closing drops the flock too
                raise
            entry.fd = fd
        entry.depth += 1
        try:
            yield entry.value
        finally:
            entry.depth -= 1
            if entry.depth == 0:
                fd, entry.fd, entry.value = entry.fd, None, None
                try:
                    if on_last is not None:
                        on_last(fd)
                finally:
                    os.close(fd)
    finally:
        entry.rlock.release()
