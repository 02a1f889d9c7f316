"""Output folders: one run at a time, checked writable before any work, cleaned of a killed run's debris.

:func:`exclusive` is the one gate every writer of a run folder goes through (``fit`` with ``out_dir``, the
``train`` command). It holds an advisory ``flock`` on ``FOLDER/.jaxcnn.lock`` for the run's whole life, so a
second run into the same folder is refused at once instead of silently overwriting the first one's
checkpoints and results. The kernel drops the lock when its process dies, however it dies (SIGKILL
included), so a lock left by a killed run is never stale: the next run takes it and is told that the last
run did not finish cleanly. The lock is :mod:`jaxcnn.storage.locks`'s, re-entrant within a thread (``train`` holds
it around ``fit``).
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from jaxcnn.storage import locks

__all__ = ["LOCK_NAME", "OutputFolderError", "RunLock", "check_writable_file", "exclusive"]

LOCK_NAME = ".jaxcnn.lock"


class OutputFolderError(ValueError):
    """An output folder that is in use by another run, cannot be created, or cannot be written."""


@dataclass
class RunLock:
    """A held output-folder lock; ``previous`` describes a run that held it and did not release it cleanly."""

    folder: Path
    previous: str = ""
    cleaned: tuple[str, ...] = ()


def _probe(folder: Path, what: str) -> None:
    """OutputFolderError unless a file can be created, written and removed in ``folder``."""
    probe = folder / f".jaxcnn-write-test-{os.getpid()}.tmp"
    try:
        with open(probe, "wb") as f:
            f.write(b"ok")
            f.flush()
            os.fsync(f.fileno())
        probe.unlink()
    except OSError as e:
        raise OutputFolderError(f"{what} {folder} is not writable ({e.strerror or e}); "
                                f"fix its permissions or choose another folder") from None


def check_writable_file(path: str | os.PathLike, what: str = "output file") -> Path:
    """``path`` if a file can be written there (its folder exists and is writable, it is not a folder)."""
    path = Path(path)
    if path.is_dir():
        raise OutputFolderError(f"{what} {path} is a folder; give a file name")
    if not path.parent.is_dir():
        raise OutputFolderError(f"{what} {path}: folder {path.parent} does not exist; create it first")
    _probe(path.parent, f"folder of {what}")
    return path


def _clean_tmp(folder: Path) -> tuple[str, ...]:
    """Remove temporary files a killed atomic write left behind (``.NAME.XXXX.tmp``); safe: we hold the lock."""
    removed = []
    for p in folder.iterdir():
        if p.name.startswith(".") and p.name.endswith(".tmp") and p.is_file() and not p.is_symlink():
            try:
                p.unlink()
                removed.append(p.name)
            except OSError:
                pass
    return tuple(sorted(removed))


@contextmanager
def exclusive(folder: str | os.PathLike, files: Sequence[str] = ()) -> Iterator[RunLock]:
    """Hold ``folder`` (created if missing) for one run; ``files`` are names the run will write there.

    Raises OutputFolderError when another live process holds the folder, when it cannot be created or
    written, or when one of ``files`` exists as something other than a regular file.
    """
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputFolderError(f"cannot create output folder {folder} ({e.strerror or e}); "
                                f"choose another `out_dir`") from None
    if not folder.is_dir():
        raise OutputFolderError(f"output folder {folder} is not a folder; choose another `out_dir`")
    lock_path = folder / LOCK_NAME

    def take(fd: int) -> RunLock:  # once per process: record the holder, check the folder, clean up
        previous = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip()
        me = f"pid {os.getpid()} on {socket.gethostname()}, started {time.strftime('%Y-%m-%d %H:%M:%S')}"
        os.ftruncate(fd, 0)
        os.pwrite(fd, me.encode(), 0)
        _probe(folder, "output folder")
        for name in files:
            p = folder / name
            if p.is_symlink() or (p.exists() and not p.is_file()):
                raise OutputFolderError(f"{p} exists and is not a regular file; the run writes its "
                                        f"{name} there, so remove it or choose another `out_dir`")
        return RunLock(folder, previous, _clean_tmp(folder))

    def release(fd: int) -> None:
        try:
            os.ftruncate(fd, 0)  # an empty lock file means the last run finished cleanly
        except OSError:
            pass

    stack = ExitStack()  # acquired here, held around the body: errors of the run itself are not lock errors
    try:
        lock = stack.enter_context(locks.held(lock_path, blocking=False, on_first=take, on_last=release))
    except locks.LockBusy as busy:
        holder = str(busy) or "another thread of this process"
        raise OutputFolderError(f"output folder {folder} is in use by another run ({holder}); wait for it to "
                                f"finish or choose another `out_dir`") from None
    except OSError as e:
        raise OutputFolderError(f"output folder {folder} is not writable (cannot create {lock_path.name}: "
                                f"{e.strerror or e}); fix its permissions or choose another `out_dir`") from None
    with stack:
        yield lock
