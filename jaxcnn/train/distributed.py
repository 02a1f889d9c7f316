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
speaks first (:mod:`jaxcnn.train.peers`).

Single-process runs take none of these paths: every helper reduces to what it wraps.
"""

from __future__ import annotations

import atexit
import ipaddress
import os
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import jax
import numpy as np

from jaxcnn.lowering import host_allocator
from jaxcnn.storage import outdir
from jaxcnn.train import peers
from jaxcnn.train.cluster import Cluster, DistributedError, split_address

__all__ = ["Cluster", "DistributedError", "agree", "barrier", "exclusive", "initialize", "is_multiprocess",
           "is_primary", "put", "put_rows"]


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
        host, port = split_address(cluster.coordinator)
        where = f"the coordinator {host}:{port}"
        bind = "127.0.0.1" if host == "localhost" else host
        if cluster.process_id == 0:
            peers.claim_port(bind if _is_loopback(host) else ("::" if ":" in host else "0.0.0.0"), port)
        if _is_loopback(host):
            kwargs["coordinator_bind_address"] = f"[{bind}]:{port}" if ":" in bind else f"{bind}:{port}"
            _gloo_on_loopback()
    n, pid = cluster.num_processes, cluster.process_id
    watchdog = peers.STATE["watchdog"] = peers.STATE["watchdog"] or peers.Watchdog()
    watchdog.arm(cluster.init_timeout, (
        f"--distributed: {'this process' if pid is None else f'process {pid}'}{'' if n is None else f' of {n}'}: "
        f"not every process joined {where} within {cluster.init_timeout:g} s (--init-timeout); start all "
        f"{n or 'N'} processes with ids 0 .. {n - 1 if n else 'N-1'} (each id once) and the same --coordinator, or "
        "raise --init-timeout") if pid != 0 or n is None else (
        f"--distributed: process 0 of {n}: not every process joined {where} within {cluster.init_timeout:g} s "
        f"(--init-timeout): no peer, or two with the same --process-id; start "
        f"{'process 1' if n == 2 else f'processes 1 .. {n - 1} once each'} with the same --coordinator, or raise "
        "--init-timeout"))
    host_allocator.restore_dispatch("a multi-process run")
    try:
        with peers.service_errors_end_in_one_line():
            jax.distributed.initialize(**kwargs)
    except (ValueError, RuntimeError, TypeError) as e:
        watchdog.disarm()
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise DistributedError(f"--distributed: the distributed runtime did not start ({first}); outside a "
                               "detected cluster (SLURM, Open MPI, ...) pass --coordinator HOST:PORT "
                               "--num-processes N --process-id I") from None
    watchdog.disarm()
    atexit.register(peers.exit_without_shutdown)  # after JAX's own atexit hook, so it runs before it
    from jax._src import distributed as jdist

    client = jdist.global_state.client
    if client is not None and jax.process_count() > 1:
        threading.Thread(target=peers.heartbeat, args=(client, jax.process_index(), jax.process_count(),
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
            peers.STATE["epochs_done"] = int(name[18:])


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
    peers.STATE["folder"] = Path(folder)
    try:
        with _exclusive(folder, files) as lock:
            yield lock
    except Exception as e:  # a collective failing because a peer is gone: one line, and exit without JAX's shutdown
        lost = peers.lost_peer(e)
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
    when batches come from the host (``loop="host"``).
    """
    rows = np.asarray(rows)
    shape = (*rows.shape, *x_host.shape[1:])
    lead = rows.ndim
    return jax.make_array_from_callback(
        shape, sharding, lambda idx: x_host[rows[idx[:lead]]][(*(slice(None),) * lead, *idx[lead:])])
