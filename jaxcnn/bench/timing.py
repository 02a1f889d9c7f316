"""How jaxcnn times things: first call, calibrated repetitions interleaved across programs, other-load meter.

Every benchmark of the project (``jaxcnn bench``, ``experiments/compare_peers.py``, the device peak) times
its programs the same way:

1. the first call (trace + compile + one step) is timed on its own, then one warm-up call;
2. each program gets the number of calls that makes one repetition last ``min_seconds``;
3. repetitions are interleaved: program A rep 1, B rep 1, ..., A rep 2, ... so a slow minute of the
   machine hits every program alike instead of one;
4. a :class:`LoadMeter` records the CPU time other processes used during each repetition; one above
   ``max_other_load`` cores is redone (up to ``retries`` times) and, if still disturbed, kept and counted.

The median over repetitions is the figure reported; min/max and the spread ((max - min) / median) say how
much to trust it.
"""

from __future__ import annotations

import math
import os
import statistics
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

__all__ = ["LoadMeter", "Series", "calibrate", "interleave", "prepare", "timed"]

Run = Callable[[int], None]  # run(n): n calls, blocked on at the end


class LoadMeter:
    """Cores' worth of CPU time other processes used between ``start()`` and ``stop()`` (None off Linux).

    ``pids``: helper processes whose CPU time counts as the benchmark's own (compare_peers's PyTorch
    workers), read from ``/proc/<pid>/stat``.
    """

    def __init__(self, pids: Iterable[int] = ()) -> None:
        self.hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        self.pids = list(pids)
        self.ok = self._busy() is not None
        self._t = self._busy_at = self._own = 0.0

    @staticmethod
    def _busy() -> float | None:
        try:
            with open("/proc/stat") as f:
                fields = [int(v) for v in f.readline().split()[1:8]]
        except (OSError, ValueError):
            return None
        user, nice, system, _idle, _iowait, irq, softirq = fields
        return float(user + nice + system + irq + softirq)

    def _own_seconds(self) -> float:
        t = os.times()
        own = t.user + t.system
        for pid in self.pids:
            try:
                with open(f"/proc/{pid}/stat") as f:
                    # fields after the ")" that closes the command name: utime and stime are the 12th and 13th
                    rest = f.read().rsplit(")", 1)[1].split()
                own += (int(rest[11]) + int(rest[12])) / self.hz
            except (OSError, ValueError, IndexError):
                pass  # a helper that exited uses no CPU
        return own

    def start(self) -> None:
        """Begin an interval."""
        self._t = time.perf_counter()
        self._busy_at = self._busy() or 0.0
        self._own = self._own_seconds()

    def stop(self) -> float | None:
        """Other processes' average CPU use over the interval, in cores."""
        wall = time.perf_counter() - self._t
        if not self.ok or wall <= 0:
            return None
        busy = ((self._busy() or 0.0) - self._busy_at) / self.hz
        return max(0.0, (busy - (self._own_seconds() - self._own)) / wall)


@dataclass
class Series:
    """One program's timings: its first call, calls per repetition, and per-call seconds of each repetition."""

    first_call_s: float = 0.0
    calls_per_rep: int = 1
    rep_s: list[float] = field(default_factory=list)
    rep_other_load: list[float | None] = field(default_factory=list)
    redone_reps: int = 0
    disturbed_reps: int = 0

    @property
    def median(self) -> float:
        """Median per-call seconds over the repetitions."""
        return statistics.median(self.rep_s)

    @property
    def low(self) -> float:
        """Fastest repetition's per-call seconds (best-of)."""
        return min(self.rep_s)

    @property
    def high(self) -> float:
        """Slowest repetition's per-call seconds."""
        return max(self.rep_s)

    @property
    def spread(self) -> float:
        """(slowest - fastest) / median over the repetitions."""
        return (self.high - self.low) / self.median

    @property
    def max_other_load(self) -> float | None:
        """The most CPU (cores) other processes used during any repetition, None where unmeasured."""
        loads = [v for v in self.rep_other_load if v is not None]
        return max(loads) if loads else None


def timed(run: Run, n: int) -> float:
    """Seconds that ``run(n)`` takes."""
    t = time.perf_counter()
    run(n)
    return time.perf_counter() - t


def calibrate(run: Run, min_seconds: float) -> int:
    """Calls per repetition so that one repetition lasts >= ``min_seconds`` (from a short doubling probe)."""
    calls, elapsed = 1, timed(run, 1)
    target = min(0.25, 0.1 * min_seconds)
    while elapsed < target and calls < 4096:
        calls *= 2
        elapsed = timed(run, calls)
    per_call = max(elapsed / calls, 1e-7)
    return max(1, math.ceil(min_seconds / per_call))


def prepare(run: Run, min_seconds: float, first_call_s: float | None = None) -> Series:
    """Time the first call (unless given), warm up once, and calibrate: a :class:`Series` ready for reps."""
    first = timed(run, 1) if first_call_s is None else first_call_s
    run(1)  # warm-up: the first call may include one-off work beyond compiling (allocation, thread start)
    return Series(first_call_s=first, calls_per_rep=calibrate(run, min_seconds))


def interleave(
    runs: Mapping[str, Run], series: Mapping[str, Series], reps: int, *, meter: LoadMeter | None = None,
    max_other_load: float = 0.25, retries: int = 2, log: Callable[[str], None] | None = None,
) -> None:
    """Time ``reps`` repetitions of every program, interleaved, appending to each one's :class:`Series`.

    A repetition during which other processes used more than ``max_other_load`` cores is redone up to
    ``retries`` times; the least disturbed attempt is kept, and counted in ``disturbed_reps`` if still above.
    """
    meter = meter if meter is not None else LoadMeter()
    for rep in range(reps):
        for name, run in runs.items():
            s = series[name]
            best: tuple[float | None, float] | None = None
            for attempt in range(1 + max(0, retries)):
                if meter.ok:
                    meter.start()
                elapsed = timed(run, s.calls_per_rep)
                load = meter.stop() if meter.ok else None
                if best is None or (load is not None and best[0] is not None and load < best[0]):
                    best = (load, elapsed)
                if load is None or load <= max_other_load:
                    break
                if attempt < retries:
                    s.redone_reps += 1
                    if log:
                        log(f"  {name} rep {rep + 1}: other processes used {load:.2f} cores; redoing it")
            load, elapsed = best
            if load is not None and load > max_other_load:
                s.disturbed_reps += 1
            s.rep_s.append(elapsed / s.calls_per_rep)
            s.rep_other_load.append(load)
