"""Host memory for XLA:CPU programs: keep freed buffers in the process instead of faulting them in again.

XLA:CPU allocates one buffer for all of a program's temporaries on every call (329 MB for a MobileNet
v1 224x224 batch-8 train step) and frees it when the call ends. glibc serves an allocation that large
with a fresh ``mmap`` and returns it with ``munmap``, so every call page-faults the whole buffer in
again, 4 KB at a time: about 56,000 faults and 22% of the CPU time of that step on the Xeon of
README's tables. Two settings, made before JAX starts its CPU backend, keep the buffer instead:

* glibc's ``M_MMAP_MAX = 0`` and ``M_TRIM_THRESHOLD`` = 2 GiB: the main malloc arena grows its heap
  for large requests instead of mapping them, and a freed buffer stays there for the next call;
* ``jax_cpu_enable_async_dispatch = False``: a single-device program then runs on the calling thread,
  whose allocations come from that main arena. Dispatched asynchronously, the buffer is allocated on
  one of XLA's pool threads, whose own arena maps anything over 64 MB whatever the settings say.
  (Putting every thread on the main arena instead, ``M_ARENA_MAX = 1``, also removes the faults but
  slowed MobileNet v1 0.25's step 15% through XLA's many small aligned allocations.)

Measured on that Xeon, train steps in ms, default -> these settings: MobileNet v1 1.0 224x224 b8
257 -> 197, MobileNet v1 1.0 32x32 b128 97 -> 67, allconv6 32x32 b128 16.3 -> 16.1, MobileNet v1
0.25 17.2 -> 17.5. The cost: the process keeps its high-water mark of host memory (as PyTorch's
caching allocator and JAX's GPU preallocation do for device memory; the peak does not change), and
a Python loop no longer overlaps its own work with a running single-device step (the engine's
loops move data while the previous step's results are read back, so they lose little).

Now and then (one call in 30-180 in the probe of ``tests/test_host_allocator.py``, and in bursts on a
busy machine) a call still faults the whole buffer in once, when the heap's layout moved under it; the
calls after it reuse the buffer again.

``import jaxcnn`` applies both when it can (Linux with glibc, JAX's backend not started yet, the
dispatch option not set by the user); ``JAXCNN_MALLOC=0`` leaves both as they are. :func:`status`
says which happened, and the benchmarks print it.
"""

from __future__ import annotations

import ctypes
import os
import platform
import sys
from dataclasses import dataclass

ENV = "JAXCNN_MALLOC"
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # glibc malloc.h
TRIM_THRESHOLD = 2**31 - 1  # mallopt takes an int: 2 GiB is its largest value
SETTINGS = ((_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
DISPATCH_OPTION = "jax_cpu_enable_async_dispatch"


@dataclass(frozen=True)
class AllocatorStatus:
    """Whether the caching settings are in force, and why (not)."""

    cached: bool
    reason: str

    def describe(self) -> str:
        """One line for reports: ``host malloc: cached (...)`` or ``host malloc: not cached (reason)``."""
        return "host malloc: cached (no mmap, 2 GiB trim, CPU dispatch inline)" if self.cached else \
            f"host malloc: not cached ({self.reason})"


_status = AllocatorStatus(False, "not configured")


def _jax_started() -> bool:
    """True once JAX has created a backend (and with it XLA's threads, whose arenas are then fixed)."""
    if "jax" not in sys.modules:
        return False
    try:
        from jax._src import xla_bridge
    except ImportError:  # a JAX without this module: assume the worst, change nothing
        return True
    return bool(xla_bridge.backends_are_initialized())


def configure(enable: bool | None = None) -> AllocatorStatus:
    """Apply the settings (``enable=None``: unless ``JAXCNN_MALLOC=0``); returns :func:`status`.

    Does nothing, and says why, off Linux/glibc, once JAX's backend has started (its dispatch mode is
    fixed then) or when the user chose the dispatch mode (``JAX_CPU_ENABLE_ASYNC_DISPATCH``).
    """
    global _status
    if _status.cached:
        return _status
    if enable is None:
        enable = os.environ.get(ENV, "1").strip().lower() not in ("0", "false", "no", "off")
    if not enable:
        _status = AllocatorStatus(False, f"{ENV}=0")
    elif not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        _status = AllocatorStatus(False, "not Linux with glibc")
    elif _jax_started():
        _status = AllocatorStatus(False, "JAX's backend started before jaxcnn was imported")
    elif DISPATCH_OPTION.upper() in os.environ:
        _status = AllocatorStatus(False, f"{DISPATCH_OPTION.upper()} is set")
    else:
        try:
            mallopt = ctypes.CDLL(None).mallopt
        except (OSError, AttributeError):
            _status = AllocatorStatus(False, "mallopt not found")
        else:
            mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
            ok = all(mallopt(param, value) == 1 for param, value in SETTINGS)
            if ok:
                import jax

                jax.config.update(DISPATCH_OPTION, False)
            _status = AllocatorStatus(ok, "" if ok else "mallopt refused a setting")
    return _status


def restore_dispatch(reason: str) -> None:
    """Put JAX's CPU dispatch back to asynchronous (before its backend starts), for runs that need it.

    Multi-process runs call this before ``jax.distributed.initialize``: their failure paths (a peer
    killed mid-collective) are written for the asynchronous runtime, and inline dispatch turned them
    into aborts. The malloc settings stay; they only matter to single-device programs anyway.
    """
    global _status
    if _status.cached and not _jax_started():
        import jax

        jax.config.update(DISPATCH_OPTION, True)
        _status = AllocatorStatus(False, f"CPU dispatch left asynchronous: {reason}")


def status() -> AllocatorStatus:
    """What :func:`configure` did in this process."""
    return _status
