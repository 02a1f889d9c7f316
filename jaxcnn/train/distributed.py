"""One model over several processes (hosts) on JAX's own multi-controller runtime.

Every process runs the same program. :func:`initialize` calls ``jax.distributed.initialize()``
once (its cluster auto-detection covers SLURM, Open MPI and others, or the coordinator, process
count and id are given); ``jax.devices()`` then lists every process's devices, the training
engine's mesh spans them all, each process feeds its own devices, and XLA's collectives (NCCL on
GPU, gloo on CPU) all-reduce the gradients. Nothing here schedules, sends messages or starts
processes: the cluster's launcher (``srun``, ``mpirun``, or one command per host) does that.

Files: only process 0 (the *primary*) writes checkpoints, metrics and results and holds the
output folder's lock; the others wait at a barrier after each write and read the same files
on resume, so the output folder must be on a file system every process sees.

Failures end in bounded time with one line and exit status 2, never a hang or JAX's C++ abort:
no peer within ``init_timeout`` (``--init-timeout``), a coordinator port already in use (or a second
process 0 on this host), and a peer lost mid-run (its heartbeat silent for ``peer_timeout``,
``--peer-timeout``, or a collective failing at once), which names the epoch and the last good
checkpoint. JAX's own timeouts are set longer than these, so a watchdog of this module always
speaks first (see :class:`_Watchdog`).

Single-process runs take none of these paths: every helper reduces to what it wraps.
"""

from __future__ import annotations

import argparse
import atexit
import fcntl
import ipaddress
import os
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import numpy as np

from jaxcnn.storage import outdir

__all__ = ["Cluster", "DistributedError", "add_arguments", "agree", "barrier", "cluster_from_args", "exclusive",
           "initialize", "is_multiprocess", "is_primary", "put", "put_rows"]


class DistributedError(ValueError):
    """The distributed runtime cannot start, or the processes disagree; the message says what to do."""


@dataclass(frozen=True)
class Cluster:
    """How to join a multi-process run; a ``None`` field is left to JAX's cluster auto-detection."""

    coordinator: str | None = None  # HOST:PORT of process 0's coordination service
    num_processes: int | None = None
    process_id: int | None = None
    init_timeout: float = 30.0  # seconds every process waits for all the others to join
    peer_timeout: float = 15.0  # seconds without a peer's heartbeat before the run is given up


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``--distributed``, ``--coordinator``, ``--num-processes`` and ``--process-id`` options."""
    g = parser.add_argument_group("multi-process training (JAX's distributed runtime)")
    g.add_argument("--distributed", action="store_true",
                   help="join a multi-process run: jax.distributed.initialize() (auto-detects SLURM, Open MPI, ...); "
                        "the batch is split over every process's devices and only process 0 writes files")
    g.add_argument("--coordinator", default=None, metavar="HOST:PORT",
                   help="with --distributed: process 0's address, when the cluster is not auto-detected")
    g.add_argument("--num-processes", type=int, default=None, metavar="N", help="with --distributed: process count")
    g.add_argument("--process-id", type=int, default=None, metavar="I",
                   help="with --distributed: this process's index, 0 .. N-1 (0 writes the files)")
    g.add_argument("--init-timeout", type=float, default=Cluster.init_timeout, metavar="S",
                   help="with --distributed: give up (exit 2) when not every process has joined after S seconds "
                        f"(default {Cluster.init_timeout:g})")
    g.add_argument("--peer-timeout", type=float, default=Cluster.peer_timeout, metavar="S",
                   help="with --distributed: give up (exit 2, naming the epoch and the last good checkpoint) when "
                        f"a process has sent no heartbeat for S seconds (default {Cluster.peer_timeout:g})")


def _split_address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise DistributedError(f"--coordinator must be HOST:PORT with a port in 1..65535, got {text!r}")
    return host, int(port)


def cluster_from_args(args: argparse.Namespace) -> Cluster | None:
    """The :class:`Cluster` the options ask for (None without ``--distributed``); bad values name the option."""
    init_timeout = getattr(args, "init_timeout", Cluster.init_timeout)
    peer_timeout = getattr(args, "peer_timeout", Cluster.peer_timeout)
    explicit = [name for name, v in (("--coordinator", args.coordinator), ("--num-processes", args.num_processes),
                                     ("--process-id", args.process_id)) if v is not None]
    explicit += [name for name, v, d in (("--init-timeout", init_timeout, Cluster.init_timeout),
                                         ("--peer-timeout", peer_timeout, Cluster.peer_timeout)) if v != d]
    if not args.distributed:
        if explicit:
            raise DistributedError(f"{', '.join(explicit)} only apply to a multi-process run; add --distributed")
        return None
    if args.coordinator is not None:
        _split_address(args.coordinator)
    if args.num_processes is not None and args.num_processes < 1:
        raise DistributedError(f"--num-processes must be >= 1, got {args.num_processes}")
    if args.process_id is not None:
        if args.process_id < 0:
            raise DistributedError(f"--process-id must be >= 0, got {args.process_id}")
        if args.num_processes is not None and args.process_id >= args.num_processes:
            raise DistributedError(f"--process-id must be below --num-processes {args.num_processes} "
                                   f"(ids count from 0), got {args.process_id}")
    for name, v in (("--init-timeout", init_timeout), ("--peer-timeout", peer_timeout)):
        if not 1 <= v <= 86400:  # also refuses nan
            raise DistributedError(f"{name} must be a number of seconds in 1 .. 86400, got {v:g}")
    return Cluster(args.coordinator, args.num_processes, args.process_id, init_timeout, peer_timeout)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _gloo_on_loopback() -> None:
    """Make gloo (JAX's CPU collectives) listen on 127.0.0.1 instead of the address the host name resolves to.

    JAX has no public switch for gloo's address, so this re-registers the CPU backend factory with
    gloo created on 127.0.0.1 (private API, checked): with a coordinator on loopback every process is on this
    host, and a same-host run should open no port outside 127.0.0.0/8.
    """
    try:
        from jax._src import distributed as jdist
        from jax._src import xla_bridge
        from jax._src.lib import _jax

        def cpu_client():
            collectives = _jax.make_gloo_tcp_collectives(distributed_client=jdist.global_state.client,
                                                         hostname="127.0.0.1")
            return xla_bridge.make_cpu_client(collectives=collectives)

        xla_bridge.register_backend_factory("cpu", cpu_client, priority=0, fail_quietly=False)
    except (ImportError, AttributeError, TypeError) as e:
        raise DistributedError(f"this jax version ({jax.__version__}) offers no way to keep gloo on 127.0.0.1 "
                               f"({type(e).__name__}: {e}); use a coordinator address that is not loopback") from None


class _Watchdog:
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


_STATE: dict[str, Any] = {"watchdog": None, "folder": None, "epochs_done": 0, "lost": False, "stopping": False,
                          "port_lock": None}


def _where() -> str:
    """'during epoch E; the last good checkpoint is PATH' for the run in progress (as far as this process knows)."""
    folder = _STATE["folder"]
    text = f"during epoch {_STATE['epochs_done'] + 1}"
    if folder is None:
        return text
    try:
        from jaxcnn.storage import checkpoint

        ck = checkpoint.find_latest(Path(folder))[0]
    except Exception:  # noqa: BLE001 - a message, not a decision
        ck = None
    return text + (f"; the last good checkpoint is {ck}: restart every process with --resume" if ck is not None
                   else f"; {folder} holds no checkpoint yet: restart every process")


def _claim_port(host: str, port: int) -> None:
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
        _STATE["port_lock"] = fd  # held for this process's life
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a closed run's TIME_WAIT is no obstacle
        try:
            s.bind((host, port))
        except OSError as e:
            raise DistributedError(f"--coordinator {host}:{port}: process 0 cannot listen there ({e.strerror}); "
                                   "another program (or run) uses that port: pick a free --coordinator port"
                                   + ("" if e.errno == 98 else ", or run process 0 on that host")) from None


def _heartbeat(client: Any, pid: int, n: int, timeout: float) -> None:
    """Each process writes a counter to the coordination store and watches the others' (daemon thread)."""
    interval = max(0.2, min(1.0, timeout / 10))
    seen: dict[int, tuple[str, float]] = {}
    beat = 0
    while True:
        beat += 1
        now = time.monotonic()
        if _STATE["stopping"]:  # this process is exiting normally: keep beating while JAX shuts down, judge nobody
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
                _STATE["lost"] = True
                give_up(f"--distributed: lost the coordinator, process 0 ({str(e).strip().splitlines()[0][:80]}) "
                        f"{_where()}")
            values = {}
        for j, value in values.items():
            if j not in seen or seen[j][0] != value:
                seen[j] = (value, now)
            elif now - seen[j][1] > timeout:
                _STATE["lost"] = True
                give_up(f"--distributed: lost process {j} of {n} (no heartbeat for {timeout:g} s, --peer-timeout) "
                        f"{_where()}")
        time.sleep(interval)


def _exit_without_shutdown() -> None:
    """atexit, registered after JAX's: once a peer is lost, skip JAX's shutdown barrier (it would wait, then abort)."""
    _STATE["stopping"] = True
    if _STATE["lost"]:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(2)


def lost_peer(e: BaseException) -> DistributedError | None:
    """The one-line DistributedError for a JAX runtime error that means another process is gone, else None."""
    if not is_multiprocess() or isinstance(e, (ValueError, KeyboardInterrupt, SystemExit)):
        return None
    if type(e).__name__ not in ("JaxRuntimeError", "XlaRuntimeError"):
        return None
    _STATE["lost"] = True
    first = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
    watchdog = _STATE["watchdog"]
    if watchdog is not None:  # whatever happens next, this process ends soon
        watchdog.arm(10.0, f"--distributed: lost another process {_where()} ({first})")
    return DistributedError(f"--distributed: lost another process {_where()} ({first})")


def initialize(cluster: Cluster | None = None) -> None:
    """Join the multi-process run (once per process; later calls do nothing); call before any JAX computation.

    A coordinator on a loopback address (127.x, localhost: every process on this host) binds the
    coordination service and gloo to loopback only; any other address keeps JAX's defaults.
    """
    if jax.distributed.is_initialized():
        return
    from jax._src import xla_bridge

    cluster = cluster or Cluster()
    if xla_bridge.backends_are_initialized():
        raise DistributedError("the distributed runtime must start before JAX computes anything in this process; "
                               "call jaxcnn.train.distributed.initialize() (or fit(..., distributed=True)) first thing")
    # JAX's own limits are longer than ours, so the watchdog and the heartbeat thread speak first (no C++ abort)
    kwargs: dict[str, Any] = {"coordinator_address": cluster.coordinator, "num_processes": cluster.num_processes,
                              "process_id": cluster.process_id,
                              "initialization_timeout": int(cluster.init_timeout * 2 + 10),
                              "heartbeat_timeout_seconds": int(cluster.peer_timeout * 2 + 10),
                              "shutdown_timeout_seconds": int(cluster.peer_timeout * 2 + 10)}
    where = "the coordinator"
    if cluster.coordinator is not None:
        host, port = _split_address(cluster.coordinator)
        where = f"the coordinator {host}:{port}"
        bind = "127.0.0.1" if host == "localhost" else host
        if cluster.process_id == 0:
            _claim_port(bind if _is_loopback(host) else ("::" if ":" in host else "0.0.0.0"), port)
        if _is_loopback(host):
            kwargs["coordinator_bind_address"] = f"[{bind}]:{port}" if ":" in bind else f"{bind}:{port}"
            _gloo_on_loopback()
    n, pid = cluster.num_processes, cluster.process_id
    watchdog = _STATE["watchdog"] = _STATE["watchdog"] or _Watchdog()
    watchdog.arm(cluster.init_timeout, (
        f"--distributed: {'this process' if pid is None else f'process {pid}'}{'' if n is None else f' of {n}'}: "
        f"not every process joined {where} within {cluster.init_timeout:g} s (--init-timeout); start all "
        f"{n or 'N'} processes with ids 0 .. {n - 1 if n else 'N-1'} (each id once) and the same --coordinator, or "
        "raise --init-timeout") if pid != 0 or n is None else (
        f"--distributed: process 0 of {n}: not every process joined {where} within {cluster.init_timeout:g} s "
        f"(--init-timeout): no peer, or two with the same --process-id; start "
        f"{'process 1' if n == 2 else f'processes 1 .. {n - 1} once each'} with the same --coordinator, or raise "
        "--init-timeout"))
    try:
        jax.distributed.initialize(**kwargs)
    except (ValueError, RuntimeError, TypeError) as e:
        watchdog.disarm()
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise DistributedError(f"--distributed: the distributed runtime did not start ({first}); outside a "
                               "detected cluster (SLURM, Open MPI, ...) pass --coordinator HOST:PORT "
                               "--num-processes N --process-id I") from None
    watchdog.disarm()
    atexit.register(_exit_without_shutdown)  # after JAX's own atexit hook, so it runs before it
    from jax._src import distributed as jdist

    client = jdist.global_state.client
    if client is not None and jax.process_count() > 1:
        threading.Thread(target=_heartbeat, args=(client, jax.process_index(), jax.process_count(),
                                                  cluster.peer_timeout), name="jaxcnn-heartbeat", daemon=True).start()


def is_multiprocess() -> bool:
    """True when this process is one of several in a distributed run."""
    return jax.process_count() > 1


def is_primary() -> bool:
    """True on process 0, the one that writes files (also in a single-process run)."""
    return jax.process_index() == 0


def barrier(name: str) -> None:
    """Wait until every process reaches the barrier ``name`` (nothing in a single-process run)."""
    if is_multiprocess():
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)
        if name.startswith("jaxcnn-checkpoint-") and name[18:].isdigit():  # for the message if a peer is lost
            _STATE["epochs_done"] = int(name[18:])


def _broadcast_text(text: str) -> str:
    """Process 0's ``text`` on every process (truncated to 4 KiB)."""
    from jax.experimental import multihost_utils

    raw = text.encode("utf-8")[:4096]
    buf = np.zeros(4097, np.uint8)
    buf[0], buf[1:1 + len(raw)] = 1 if raw else 0, np.frombuffer(raw, np.uint8)
    out = np.asarray(multihost_utils.broadcast_one_to_all(buf))
    return bytes(out[1:]).rstrip(b"\0").decode("utf-8", "replace") if out[0] else ""


def agree(value: int, what: str) -> int:
    """``value`` if every process computed the same, else DistributedError naming ``what`` (one process: as is)."""
    if not is_multiprocess():
        return value
    from jax.experimental import multihost_utils

    seen = np.asarray(multihost_utils.process_allgather(np.asarray(value, np.int32))).ravel().tolist()
    if len(set(seen)) > 1:
        each = ", ".join(f"process {i}: {v}" for i, v in enumerate(seen))
        raise DistributedError(f"the processes disagree on {what} ({each}); the output folder must be on a file "
                               "system every process shares")
    return value


@contextmanager
def exclusive(folder: str | os.PathLike, files: Sequence[str] = ()) -> Iterator[outdir.RunLock]:
    """:func:`jaxcnn.storage.outdir.exclusive`, taken by process 0 only; every process gets its outcome.

    When process 0 cannot take the folder, every process raises the same OutputFolderError
    (instead of the others waiting at their first collective for a process that has left).
    """
    if not is_multiprocess():
        with outdir.exclusive(folder, files) as lock:
            yield lock
        return
    _STATE["folder"] = Path(folder)
    try:
        with _exclusive(folder, files) as lock:
            yield lock
    except Exception as e:  # a collective failing because a peer is gone: one line, and exit without JAX's shutdown
        lost = lost_peer(e)
        if lost is None:
            raise
        raise lost from None


@contextmanager
def _exclusive(folder: str | os.PathLike, files: Sequence[str]) -> Iterator[outdir.RunLock]:
    """The multi-process part of :func:`exclusive`."""
    if not is_primary():
        problem = _broadcast_text("")  # returns once process 0 holds the folder (or failed to)
        if problem:
            raise outdir.OutputFolderError(problem)
        yield outdir.RunLock(Path(folder))
        return
    try:
        cm = outdir.exclusive(folder, files)
        lock = cm.__enter__()
    except Exception as e:  # the others raise it too, rather than wait at a collective for a process that left
        _broadcast_text(str(e) or f"output folder {folder} unavailable ({type(e).__name__})")
        raise
    try:
        _broadcast_text("")  # the others look into the folder only once it is ready
        yield lock
    except BaseException as e:
        if not cm.__exit__(type(e), e, e.__traceback__):
            raise
    else:
        cm.__exit__(None, None, None)


def _is_key(x: Any) -> bool:
    return jax.dtypes.issubdtype(getattr(x, "dtype", None), jax.dtypes.prng_key)


def put(tree: Any, sharding: jax.sharding.Sharding) -> Any:
    """``tree`` (host arrays, or arrays equal on every process) as arrays with ``sharding`` over all processes.

    One process: ``jax.device_put``. Several: ``jax.device_put`` would compare the value across
    processes (a collective per leaf); here each process builds its own devices' shards from the host
    value it holds, which every process must hold identically (the same data, the same checkpoint).
    """
    if not is_multiprocess():
        return jax.device_put(tree, sharding)

    def one(x):
        if _is_key(x):
            return jax.random.wrap_key_data(one(jax.random.key_data(x)))
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            if x.sharding.is_equivalent_to(sharding, x.ndim):
                return x
            return jax.jit(lambda a: a, out_shardings=sharding)(x)
        host = np.asarray(x)
        return jax.make_array_from_callback(host.shape, sharding, lambda idx: host[idx])

    return jax.tree_util.tree_map(one, tree)


def put_rows(x_host: np.ndarray, rows: np.ndarray, sharding: jax.sharding.Sharding) -> jax.Array:
    """``x_host[rows]`` as one global array, each process gathering only the rows of its own devices' shards.

    ``rows`` is an integer index array (e.g. seeds x global batch); the result has shape
    ``rows.shape + x_host.shape[1:]``. This is how each process is fed its part of the global batch
    when batches come from the host (``mode="step"``).
    """
    rows = np.asarray(rows)
    shape = (*rows.shape, *x_host.shape[1:])
    lead = rows.ndim
    return jax.make_array_from_callback(
        shape, sharding, lambda idx: x_host[rows[idx[:lead]]][(*(slice(None),) * lead, *idx[lead:])])
