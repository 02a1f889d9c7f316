"""Which members of a study this process runs: ``--shard I/N``, or the cluster's job array (SLURM).

A study of M members run as N shards (N jobs of an array, started by the cluster's scheduler):
shard ``I`` takes members ``I-1, I-1+N, I-1+2N, ...`` of the study's fixed member list, round
robin, so each shard gets a similar mix of small and large models, and the assignment depends on
nothing but (I, N, the member list). ``I`` counts from 1 (``--shard 1/4`` ... ``--shard 4/4``:
"shard I of N").

Inside a SLURM array job (``sbatch --array=...``), ``SLURM_ARRAY_TASK_ID`` and
``SLURM_ARRAY_TASK_COUNT`` pick the shard by themselves: the shard is the task's position in the
array, ``(ID - SLURM_ARRAY_TASK_MIN) / SLURM_ARRAY_TASK_STEP + 1``, so ``--array=0-3`` and
``--array=1-4`` both mean shards 1..4 of 4. An explicit ``--shard`` wins over the variables.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

__all__ = ["Shard", "ShardError", "from_env", "parse", "resolve", "select"]

T = TypeVar("T")


class ShardError(ValueError):
    """A ``--shard`` value or SLURM array variables that do not name a shard; the message says what to pass."""


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` (1-based) of ``count``, and where that came from (for messages)."""

    index: int
    count: int
    source: str = "--shard"

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def parse(text: str) -> Shard:
    """``"I/N"`` with 1 <= I <= N, or ShardError naming ``--shard``."""
    i, sep, n = str(text).strip().partition("/")
    try:
        index, count = int(i), int(n)
    except ValueError:
        index = count = 0
    if not sep or count < 1:
        raise ShardError(f"`shard` takes I/N (shard I of N, e.g. 1/4), got {text!r}")
    if not 1 <= index <= count:
        hint = f"; shards count from 1, so the first is 1/{count}" if index == 0 else ""
        raise ShardError(f"`shard={text}`: I must be between 1 and {count}{hint}")
    return Shard(index, count, "--shard")


def _int_var(env: Mapping[str, str], name: str) -> int | None:
    value = env.get(name)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise ShardError(f"{name}={value!r} is not an integer; pass `shard=I/N` to choose the shard") from None


def from_env(env: Mapping[str, str] | None = None) -> Shard | None:
    """The shard of a SLURM array task (None outside an array job), or ShardError when the variables disagree."""
    env = os.environ if env is None else env
    task = _int_var(env, "SLURM_ARRAY_TASK_ID")
    if task is None:
        return None
    count = _int_var(env, "SLURM_ARRAY_TASK_COUNT")
    if count is None or count < 1:
        raise ShardError(f"SLURM_ARRAY_TASK_ID={task} is set but SLURM_ARRAY_TASK_COUNT is "
                         f"{env.get('SLURM_ARRAY_TASK_COUNT')!r}; pass `shard=I/N` to choose the shard")
    low = _int_var(env, "SLURM_ARRAY_TASK_MIN")
    step = _int_var(env, "SLURM_ARRAY_TASK_STEP") or 1
    low = 0 if low is None else low  # without MIN, the IDs are taken to count from 0
    offset, rest = divmod(task - low, step)
    if rest or not 0 <= offset < count:
        raise ShardError(f"SLURM array task {task} (MIN {low}, STEP {step}, COUNT {count}) is not one of "
                         f"{count} evenly spaced tasks, so its shard is ambiguous; submit a range such as "
                         f"--array=1-{count}, or pass `shard=I/{count}`")
    return Shard(offset + 1, count, f"SLURM array task {task}")


def resolve(option: str | None, env: Mapping[str, str] | None = None) -> Shard | None:
    """``--shard`` if given, else the SLURM array task's shard, else None (run every member)."""
    return parse(option) if option is not None else from_env(env)


def select(items: Sequence[T], shard: Shard | None) -> list[T]:
    """The items of ``shard``: positions ``index-1, index-1+count, ...``; every item when ``shard`` is None."""
    if shard is None:
        return list(items)
    return [x for i, x in enumerate(items) if i % shard.count == shard.index - 1]
