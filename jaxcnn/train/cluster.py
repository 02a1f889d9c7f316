"""How to join a multi-process run, as plain data: :class:`Cluster`, its errors and its address rule.

Importable without JAX's runtime (the CLI parses ``--distributed`` options through it).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Cluster", "DistributedError", "split_address"]


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


def split_address(text: str) -> tuple[str, int]:
    """(host, port) of ``HOST:PORT``, or DistributedError naming the option."""
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise DistributedError(f"--coordinator must be HOST:PORT with a port in 1..65535, got {text!r}")
    return host, int(port)
