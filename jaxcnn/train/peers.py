"""When a peer of a multi-process run fails: a watchdog, a heartbeat, and one line instead of JAX's C++ abort.

JAX's coordination client terminates the process (SIGABRT, a C++ stack) when initialisation times
out or a peer's heartbeat stops, and those paths raise no Python error. :mod:`jaxcnn.train.distributed`
therefore sets JAX's own timeouts longer than the user's and relies on this module to speak first:
:class:`Watchdog` deadlines, a :func:`heartbeat` thread over the coordination store, :func:`claim_port`
before process 0 binds, and :func:`lost_peer` for a collective that fails because a process is gone.
Each ends in :func:`give_up`: one error line naming the epoch and the last good checkpoint, exit status 2.
"""

from __future__ import annotations

import fcntl
import os
import re
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import jax

from jaxcnn.train.cluster import DistributedError

__all__ = ["STATE", "Watchdog", "claim_port", "exit_without_shutdown", "give_up", "heartbeat", "lost_peer",
           "service_errors_end_in_one_line", "where"]


class Watchdog:
    """Ends the process with one line and exit status 2 when a deadline passes (JAX's C++ side would abort).

    JAX's coordination client terminates the process (SIGABRT, a C++ stack) when initialisation times
    out or a peer's heartbeat stops, and those paths raise no Python error that could be caught. So this
    module sets JAX's own timeouts longer than the user's and keeps a deadline here: a daemon thread
    that, when it passes, prints the message, flushes and leaves with ``os._exit(2)`` (no shutdown
    barrier that would wait for a process that is gone). The blocking JAX calls release the GIL.
    """

    def __init__(self) -> None:
        self._lock = threading.Condition()
        self._deadline: float | None = None
        self._message = ""
        threading.Thread(target=self._run, name="jaxcnn-distributed-watchdog", daemon=True).start()

    def arm(self, seconds: float, message: str) -> None:
        """Exit with ``message`` unless :meth:`disarm` is called within ``seconds``."""
        with self._lock:
            self._deadline, self._message = time.monotonic() + seconds, message
            self._lock.notify()

    def disarm(self) -> None:
        """Cancel the deadline."""
        with self._lock:
            self._deadline = None
            self._lock.notify()

    def _run(self) -> None:
        while True:
            with self._lock:
                while self._deadline is None or time.monotonic() < self._deadline:
                    self._lock.wait(None if self._deadline is None else self._deadline - time.monotonic())
                message = self._message
            give_up(message)


def give_up(message: str) -> None:
    """Print ``message`` as one error line, flush, and end this process with status 2 at once."""
    try:
        print(f"jaxcnn: error: {message}", file=sys.stderr, flush=True)
        sys.stdout.flush()
    finally:
        os._exit(2)


STATE: dict[str, Any] = {"watchdog": None, "folder": None, "epochs_done": 0, "lost": False, "stopping": False,
                          "port_lock": None}


def where() -> str:
    """'during epoch E; the last good checkpoint is PATH' for the run in progress (as far as this process knows)."""
    folder, done = STATE["folder"], STATE["epochs_done"]
    if folder is None:
        return f"during epoch {done + 1}"
    try:
        from jaxcnn.storage import checkpoint

        ck = checkpoint.find_latest(Path(folder))[0]
        if ck is not None:  # ckpt-N is written after epoch N (a resumed run passes no barrier before its first)
            done = max(done, int(ck.stem.split("-")[1]))
    except Exception:  # noqa: BLE001 - a message, not a decision
        ck = None
    return f"during epoch {done + 1}" + (
        f"; the last good checkpoint is {ck}: restart every process with --resume" if ck is not None
        else f"; {folder} holds no checkpoint yet: restart every process")


def claim_port(host: str, port: int) -> None:
    """On process 0: DistributedError if another process 0 on this host, or any program, holds the port."""
    path = Path(tempfile.gettempdir()) / f"jaxcnn-coordinator-{host}-{port}.lock"
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666)
    except OSError:
        fd = None  # no lock file possible: the bind check below still runs
    if fd is not None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise DistributedError(f"--process-id 0: another process 0 on this host already coordinates at "
                                   f"{host}:{port}; give each process its own --process-id (0 .. N-1), or stop "
                                   "the other run") from None
        STATE["port_lock"] = fd  # held for this process's life
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a closed run's TIME_WAIT is no obstacle
        try:
            s.bind((host, port))
        except OSError as e:
            raise DistributedError(f"--coordinator {host}:{port}: process 0 cannot listen there ({e.strerror}); "
                                   "another program (or run) uses that port: pick a free --coordinator port"
                                   + ("" if e.errno == 98 else ", or run process 0 on that host")) from None


def heartbeat(client: Any, pid: int, n: int, timeout: float) -> None:
    """Each process writes a counter to the coordination store and watches the others' (daemon thread)."""
    interval = max(0.2, min(1.0, timeout / 10))
    seen: dict[int, tuple[str, float]] = {}
    beat = 0
    while True:
        beat += 1
        now = time.monotonic()
        if STATE["stopping"]:  # this process is exiting normally: keep beating while JAX shuts down, judge nobody
            try:
                client.key_value_set(f"jaxcnn/heartbeat/{pid}", str(beat), allow_overwrite=True)
            except Exception:  # noqa: BLE001 - the client is already shut down
                return
            time.sleep(interval)
            continue
        try:
            client.key_value_set(f"jaxcnn/heartbeat/{pid}", str(beat), allow_overwrite=True)
            values = {}
            for j in range(n):
                if j != pid:
                    try:
                        values[j] = client.key_value_try_get(f"jaxcnn/heartbeat/{j}")
                    except Exception:  # noqa: BLE001 - not written yet (NOT_FOUND)
                        values[j] = ""
        except Exception as e:  # noqa: BLE001 - the coordination service itself is gone (process 0 died)
            if pid != 0:
                STATE["lost"] = True
                give_up(f"--distributed: lost the coordinator, process 0 ({str(e).strip().splitlines()[0][:80]}) "
                        f"{where()}")
            values = {}
        for j, value in values.items():
            if j not in seen or seen[j][0] != value:
                seen[j] = (value, now)
            elif now - seen[j][1] > timeout:
                STATE["lost"] = True
                give_up(f"--distributed: lost process {j} of {n} (no heartbeat for {timeout:g} s, --peer-timeout) "
                        f"{where()}")
        time.sleep(interval)


@contextmanager
def service_errors_end_in_one_line() -> Iterator[None]:
    """While JAX's distributed client is made, give it an error callback that ends in :func:`give_up`.

    When a process dies, the coordination service tells every other process, whose client by default
    terminates it (SIGABRT, a C++ stack: JAX passes no callback). Whether that or the failed collective
    (:func:`lost_peer`) comes first is a race a busy machine decides; with this callback both end in the
    same line. A jaxlib without the hook keeps its default (the heartbeat and watchdog still bound the time).
    """
    from jax._src import distributed as jdist

    module = jdist._jax
    make = getattr(module, "get_distributed_runtime_client", None)
    if make is None or "missed_heartbeat_callback" not in (make.__doc__ or ""):
        yield
        return

    def on_error(status: Any, *_: Any) -> None:
        STATE["lost"] = True
        first = (str(status).strip().splitlines() or ["an error"])[0][:160]
        if STATE["stopping"]:  # a normal exit under way: a peer that finished first is no failure of ours
            sys.stderr.flush()
            os._exit(0)
        give_up(f"--distributed: lost another process {where()} (the coordination service reported: {first})")

    def with_callback(*args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("missed_heartbeat_callback", on_error)
        return make(*args, **kwargs)

    module.get_distributed_runtime_client = with_callback
    try:
        yield
    finally:
        module.get_distributed_runtime_client = make


def exit_without_shutdown() -> None:
    """atexit, registered after JAX's: once a peer is lost, skip JAX's shutdown barrier (it would wait, then abort)."""
    STATE["stopping"] = True
    if STATE["lost"]:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(2)


_RUNTIME_STATUS = re.compile(r"(UNKNOWN|INTERNAL|UNAVAILABLE|ABORTED|CANCELLED|DEADLINE_EXCEEDED|"
                             r"FAILED_PRECONDITION|DATA_LOSS): ")


def lost_peer(e: BaseException) -> DistributedError | None:
    """The one-line DistributedError for a JAX runtime error that means another process is gone, else None."""
    if jax.process_count() == 1 or isinstance(e, (DistributedError, KeyboardInterrupt, SystemExit)):
        return None
    # a program whose collective fails raises JaxRuntimeError, except that a jitted program's failure can
    # come back as a ValueError carrying the runtime's status ("UNKNOWN: Gloo AllGather failed: ... Connection
    # closed by peer", seen from multihost_utils' barrier); a ValueError of ours never starts with a status code
    runtime = type(e).__name__ in ("JaxRuntimeError", "XlaRuntimeError")
    if not runtime and not (type(e) is ValueError and _RUNTIME_STATUS.match(str(e))
                            and any(w in str(e).lower() for w in ("gloo", "nccl", "mpi"))):
        return None
    if not any(w in str(e).lower() for w in ("gloo", "nccl", "connection", "peer", "socket", "unavailable",
                                             "deadline", "closed", "reset", "heartbeat", "barrier")):
        return None  # another runtime error (out of memory, ...): reported as it is
    STATE["lost"] = True
    first = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
    watchdog = STATE["watchdog"]
    if watchdog is not None:  # whatever happens next, this process ends soon
        watchdog.arm(10.0, f"--distributed: lost another process {where()} ({first})")
    return DistributedError(f"--distributed: lost another process {where()} ({first})")
