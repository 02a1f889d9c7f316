"""File I/O of the whole package: reading what a user points at safely, writing results atomically.

Writing: :func:`atomic_write_bytes` (temporary file in the same folder, fsync, rename) is how every result,
checkpoint and figure side file reaches disk, so a crash leaves the old file or the new one, never half of
one; :func:`versions` is the record of the software that wrote it.

Reading: regular files only, and memory asked for only after it was estimated.

Every reader of user data and checkpoints opens its files through :func:`open_regular`: a FIFO, a device or a
socket named by a data spec or list file would block ``open``/``read`` forever, so files are opened
non-blocking and refused unless ``fstat`` says they are regular. :func:`check_memory` is called with the size of
an array *before* it is allocated, so a header or a command-line size that asks for terabytes is refused with
the figure instead of a MemoryError traceback (or the machine swapping).
"""

from __future__ import annotations

import io
import json
import os
import stat
import tempfile
from pathlib import Path
from typing import Any

__all__ = [
    "FileProblem", "atomic_write_bytes", "atomic_write_text", "available_memory", "check_memory", "code_version",
    "differing", "json_form", "naming", "open_regular", "read_regular", "versions",
]


class FileProblem(ValueError):
    """A file that cannot be read as data (missing, not a regular file, unreadable) or too large for memory."""


def open_regular(path: str | os.PathLike, what: str = "file") -> io.BufferedReader:
    """``path`` opened for binary reading, or FileProblem if it is missing, unreadable or not a regular file."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise FileProblem(f"{what} {path} does not exist") from None
    except (OSError, ValueError) as e:  # ValueError: a NUL byte in the name
        raise FileProblem(f"cannot open {what} {str(path)[:200]!r} ({getattr(e, 'strerror', None) or e})") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = ("a folder" if stat.S_ISDIR(mode) else "a FIFO (named pipe)" if stat.S_ISFIFO(mode)
                    else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
                    else "a socket" if stat.S_ISSOCK(mode) else "not a regular file")
            raise FileProblem(f"{what} {path} is {kind}; only regular files are read")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_regular(path: str | os.PathLike, what: str = "file") -> bytes:
    """The bytes of the regular file ``path`` (see :func:`open_regular`); its size is checked against memory."""
    with open_regular(path, what) as f:
        size = os.fstat(f.fileno()).st_size
        check_memory(size, f"reading {what} {path}")
        try:
            return f.read()
        except OSError as e:
            raise FileProblem(f"cannot read {what} {path} ({e.strerror or e})") from None


def available_memory() -> int:
    """Bytes of memory this process may still use: MemAvailable (Linux), else total physical memory."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 1 << 62  # unknown: do not refuse


def _human(n: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{n:,.0f} {unit}" if unit == "bytes" else f"{n:,.1f} {unit}"
        n /= 1024
    return f"{n:,.1f} PiB"


def check_memory(nbytes: int, what: str, hint: str = "") -> None:
    """FileProblem naming ``what`` and the figure if ``nbytes`` exceeds the memory available now."""
    avail = available_memory()
    if nbytes > avail:
        raise FileProblem(f"{what} needs {_human(nbytes)} of memory, but only {_human(avail)} is available"
                          + (f"; {hint}" if hint else ""))


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same folder and a rename."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise naming(e, path) from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; results are meant to be shared
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise naming(e, path) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def naming(e: OSError, path: str | os.PathLike) -> OSError:
    """``e`` (e.g. "No space left on device", which names no file) as the same error naming ``path``."""
    if e.filename is not None and str(path) in str(e.filename):
        return e
    try:
        return type(e)(e.errno, f"{e.strerror or e} (what was there before is kept)", str(path))
    except TypeError:  # an OSError subclass with another constructor
        return OSError(e.errno, f"{e.strerror or e} (what was there before is kept)", str(path))


def atomic_write_text(path: Path, text: str) -> None:
    """Text version of :func:`atomic_write_bytes` (UTF-8)."""
    atomic_write_bytes(path, text.encode("utf-8"))


def json_form(v: Any) -> Any:
    """``v`` as it reads back from JSON (tuples become lists, other objects their ``str``)."""
    return json.loads(json.dumps(v, default=str))


def differing(saved: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """The keys whose values differ between a recorded run and this one, compared as JSON reads them back.

    The one "is it the same run?" test: checkpoints on resume and study records on rerun both use it.
    """
    a, b = json_form(saved), json_form(now)
    return [k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


def code_version() -> dict[str, object]:
    """The code that is running: the git commit of jaxcnn's checkout and whether it had changes, else its version."""
    import subprocess
    from importlib.metadata import PackageNotFoundError, version

    root = Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        status = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True, timeout=10, check=True).stdout
        return {"git_commit": commit, "dirty": bool(status.strip())}
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        return {"version": version("jaxcnn")}
    except PackageNotFoundError:
        return {"version": "unknown"}


def versions() -> dict[str, str]:
    """Python and library versions, recorded with every checkpoint and result."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in ("jaxcnn", "jax", "jaxlib", "optax", "numpy"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out
