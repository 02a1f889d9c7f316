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

Single-process runs take none of these paths: every helper reduces to what it wraps.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
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


def _split_address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise DistributedError(f"--coordinator must be HOST:PORT with a port in 1..65535, got {text!r}")
    return host, int(port)


def cluster_from_args(args: argparse.Namespace) -> Cluster | None:
    """The :class:`Cluster` the options ask for (None without ``--distributed``); bad values name the option."""
    explicit = [name for name, v in (("--coordinator", args.coordinator), ("--num-processes", args.num_processes),
                                     ("--process-id", args.process_id)) if v is not None]
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
    return Cluster(args.coordinator, args.num_processes, args.process_id)


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
    kwargs: dict[str, Any] = {"coordinator_address": cluster.coordinator, "num_processes": cluster.num_processes,
                              "process_id": cluster.process_id}
    if cluster.coordinator is not None:
        host, port = _split_address(cluster.coordinator)
        if _is_loopback(host):
            bind = "127.0.0.1" if host == "localhost" else host
            kwargs["coordinator_bind_address"] = f"[{bind}]:{port}" if ":" in bind else f"{bind}:{port}"
            _gloo_on_loopback()
    try:
        jax.distributed.initialize(**kwargs)
    except (ValueError, RuntimeError, TypeError) as e:
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise DistributedError(f"--distributed: the distributed runtime did not start ({first}); outside a "
                               "detected cluster (SLURM, Open MPI, ...) pass --coordinator HOST:PORT "
                               "--num-processes N --process-id I") from None


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
