"""Run a family study: train several models with one recipe, K seeds each, resumably.

Each model trains in ``OUT/runs/<variant>/`` with a checkpoint every epoch and, once
finished, writes its record there (``record.json``, atomically). ``OUT/results.jsonl`` (one
record per finished model) and ``OUT/results.csv`` are derived from those records by
:func:`merge_results`, under an ``flock`` on ``OUT/.results.lock``: so several processes
(the shards of a cluster job array, :mod:`jaxcnn.study.shard`, or one thread per device) can run
members of one study into one folder without clobbering each other, and the merged table is
the same whichever process finished which member. Rerunning the same command skips finished
models and resumes an unfinished one from its last checkpoint, so an interruption loses at
most one epoch of one model.
"""

from __future__ import annotations

import io
import platform
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, replace
from pathlib import Path

import jax
import numpy as np

from jaxcnn import models
from jaxcnn.core import walk
from jaxcnn.storage import files, locks
from jaxcnn.study.member import Member, Task
from jaxcnn.study.record import (
    StudyError,
    StudyRecord,
    read_record,
    read_results,
    write_record,
    write_results,
)
from jaxcnn.study.shard import Shard, select
from jaxcnn.study.stats import convergence
from jaxcnn.summary import summary
from jaxcnn.train import fit
from jaxcnn.train.config import TrainConfig


def _slug(variant: str) -> str:
    return variant.replace("/", "_w")


def _check_same_run(rec: StudyRecord, m: Member, task: Task, out: Path) -> None:
    """A finished record only counts for this study if it used the same data, input and recipe."""
    now = {"dataset": task.name, "input_shape": list(task.in_shape), "recipe": asdict(m.recipe),
           "options": m.options}
    old = {k: getattr(rec, k) for k in now}
    if old["recipe"]:  # a TrainConfig field added since the record was written counts at its default value
        old["recipe"] = {**asdict(TrainConfig()), **old["recipe"]}
    differ = files.differing(old, now)
    if differ:
        raise StudyError(
            f"{out / 'results.jsonl'} already holds {m.variant} from a run with another {', '.join(differ)}; "
            "use another `out_dir` (or delete that folder) to start this one"
        )


def first_conv_kernel(model, params, in_shape) -> np.ndarray | None:
    """The first convolution's kernel (HWIO) in ``params``, or None if the model has none."""
    for node in walk(model, in_shape, leaves_only=True):
        shapes = node.layer.param_shapes(node.in_shape)
        kernels = [name for name in node.layer.decayed if len(shapes.get(name, ())) == 4]
        if node.layer.channel_groups(node.in_shape) is not None and kernels:
            tree = params
            for k in node.key_path:
                tree = tree[k]
            return np.asarray(tree[kernels[0]])
    return None


def run_member(m: Member, task: Task, out: Path, *, quiet: bool = False, command: str = "",
               devices: Sequence[jax.Device] | None = None) -> StudyRecord:
    """Train one member (resuming if a checkpoint exists) on ``devices`` (default all) and return its record."""
    model = models.get(m.build_name, num_classes=task.data.num_classes, **m.options)
    totals = summary(model, task.in_shape).totals
    run_dir = out / "runs" / _slug(m.variant)
    if not quiet:
        print(f"== {m.family} {m.variant} ({m.label}): {totals['learnable_params']:,} params, "
              f"{totals['macs']:,} MACs", file=sys.stderr)
    meta = {"model": m.build_name, "options": m.options, "dataset": task.name}
    res = fit(model, task.data, m.recipe, out_dir=run_dir, resume=True, quiet=quiet, meta=meta, keep_initial=True,
              devices=devices)
    # first-layer filters, trained and at initialisation (seed 0), for the filter figures
    k_trained = first_conv_kernel(model, jax.tree_util.tree_map(lambda a: a[0], res.params), task.in_shape)
    k_init = first_conv_kernel(model, jax.tree_util.tree_map(lambda a: a[0], res.initial_params), task.in_shape)
    accuracy_curve = [h.test_accuracy for h in res.history]
    loss_curve = [h.train_loss for h in res.history]
    if k_trained is not None:
        buf = io.BytesIO()
        np.savez(buf, trained=k_trained, init=k_init)
        files.atomic_write_bytes(run_dir / "first_layer.npz", buf.getvalue())
    return StudyRecord(
        family=m.family,
        variant=m.variant,
        label=m.label,
        options=m.options,
        learnable_params=totals["learnable_params"],
        state_params=totals["state_params"],
        macs=totals["macs"],
        input_shape=list(task.in_shape),
        dataset=task.name,
        seeds=res.seeds,
        accuracies=res.test_accuracy,
        mean_accuracy=res.mean_accuracy,
        std_accuracy=res.std_accuracy,
        test_accuracy_per_epoch=accuracy_curve,
        train_loss_per_epoch=loss_curve,
        convergence=convergence(accuracy_curve, loss_curve),
        train_seconds=round(res.train_seconds, 2),
        compile_seconds=round(res.compile_seconds, 2),
        epochs=m.recipe.epochs,
        pad_to=m.pad_to,
        recipe=asdict(m.recipe),
        device=f"{jax.default_backend()}:{jax.devices()[0].device_kind} x{len(devices or jax.devices())}",
        jax=jax.__version__,
        python=platform.python_version(),
        versions=files.versions(),
        command=command,
        model=m.model,
        train_examples=int(len(task.data.y_train)),
        code=files.code_version(),
    )


RECORD_NAME = "record.json"  # OUT/runs/<variant>/record.json: one finished member
LOCK_NAME = ".results.lock"


@contextmanager
def results_lock(out: str | Path) -> Iterator[None]:
    """Hold ``OUT/.results.lock`` (blocking): one writer of the merged results and figures at a time.

    Across processes (shards of a job array, on one host or on a shared file system whose ``flock``
    reaches every client, as NFSv4 and Lustre mounted with ``-o flock`` do) and across the threads of
    one process; re-entrant within a thread (:mod:`jaxcnn.storage.locks`).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with locks.held(out / LOCK_NAME, blocking=True):
        yield


def _merged(out: Path, members: Sequence[Member]) -> tuple[list[StudyRecord], bool]:
    """(every finished record in merge order, whether results.jsonl/csv need rewriting to hold them)."""
    old = read_results(out / "results.jsonl")
    merged = {r.variant: r for r in old}
    for path in sorted((out / "runs").glob(f"*/{RECORD_NAME}")):
        rec = read_record(path)
        merged[rec.variant] = rec
    order = {m.variant: i for i, m in enumerate(members)}
    before = {r.variant: i for i, r in enumerate(old)}
    records = sorted(merged.values(), key=lambda r: (0, order[r.variant], "") if r.variant in order
                     else (1, before.get(r.variant, len(before)), r.variant))
    return records, records != old


def merge_results(out: str | Path, members: Sequence[Member] = ()) -> list[StudyRecord]:
    """Every finished record in ``out`` (results.jsonl and runs/*/record.json), rewritten into results.jsonl/csv.

    A member's own ``record.json`` wins over its line in results.jsonl (folders written before
    record files existed keep their lines). Order: ``members``' order, then any other records in
    their previous order. Every file involved is replaced atomically, so reading needs no lock; a
    rewrite happens under :func:`results_lock`, re-reading first, and only if something changed (a
    folder with nothing new is left exactly as it is).
    """
    out = Path(out)
    records, changed = _merged(out, members)
    if changed:
        with results_lock(out):
            records, changed = _merged(out, members)  # another process may have merged in the meantime
            if changed:
                write_results(out, records)
    return records


def _train_and_record(m: Member, task: Task, out: Path, members: Sequence[Member], *, quiet: bool, command: str,
                      device: jax.Device | None = None) -> None:
    """Train one member, write its record.json, and merge it into the study's results at once."""
    t0 = time.perf_counter()
    rec = run_member(m, task, out, quiet=quiet, command=command, devices=[device] if device is not None else None)
    rec = replace(rec, wall_seconds=round(time.perf_counter() - t0, 2))
    write_record(out / "runs" / _slug(m.variant) / RECORD_NAME, rec)
    merge_results(out, members)


def _on_devices(todo: list[tuple[Member, Task]], out: Path, members: Sequence[Member], n: int, *, quiet: bool,
                command: str) -> None:
    """Train ``todo`` one member per local device at a time: device k takes members k, k+n, ... (fixed, in order)."""
    local = jax.local_devices()
    if n > len(local):
        raise StudyError(f"`devices={n}`: this process has only {len(local)} {local[0].platform} device(s); "
                         f"use `devices={len(local)}` or fewer")
    errors: list[BaseException] = []

    def work(device: jax.Device, group: list[tuple[Member, Task]]) -> None:
        try:
            with jax.default_device(device):  # thread-local: this thread's arrays and programs live on its device
                for m, t in group:
                    _train_and_record(m, t, out, members, quiet=quiet, command=command, device=device)
        except BaseException as e:  # reported after the other devices finish their members
            errors.append(e)

    threads = [threading.Thread(target=work, args=(local[k], todo[k::n]), name=f"jaxcnn-device-{k}")
               for k in range(n) if todo[k::n]]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


def run_study(members: list[Member], task: Task, out: str | Path, *, quiet: bool = False,
              command: str = "", shard: Shard | None = None, devices: int | None = None) -> list[StudyRecord]:
    """Train every member (of ``shard``, if given) not finished in ``out``; return all finished records, member order.

    ``shard`` (:mod:`jaxcnn.study.shard`) selects this process's members of the full list;
    ``devices=n`` trains n members at once, one per local device, instead of sharding each
    member's batch over all of them (the default).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    records = merge_results(out, members)
    done = {r.variant: r for r in records}
    mine = select(members, shard)
    if shard is not None and not quiet:
        print(f"== shard {shard} ({shard.source}): {len(mine)} of {len(members)} members: "
              + (", ".join(m.variant for m in mine) or "none"), file=sys.stderr)
    tasks: dict[tuple[int | None, int | None], Task] = {}
    todo: list[tuple[Member, Task]] = []
    for m in mine:
        key = (m.input_size, m.pad_to)
        if key not in tasks:
            tasks[key] = task.for_member(m)
        if m.variant in done:
            _check_same_run(done[m.variant], m, tasks[key], out)
            if not quiet:
                print(f"== {m.variant}: already in {out / 'results.jsonl'}, skipped", file=sys.stderr)
            continue
        todo.append((m, tasks[key]))
    if devices:
        _on_devices(todo, out, members, devices, quiet=quiet, command=command)
    else:
        for m, t in todo:
            _train_and_record(m, t, out, members, quiet=quiet, command=command)
    order = {m.variant: i for i, m in enumerate(members)}
    return [r for r in merge_results(out, members) if r.variant in order]


def load_first_layers(out: Path, records: list[StudyRecord]) -> dict[str, dict[str, np.ndarray]]:
    """{variant: {"trained": kernel, "init": kernel}} for records whose run saved them."""
    found = {}
    for r in records:
        path = Path(out) / "runs" / _slug(r.variant) / "first_layer.npz"
        if path.exists():
            try:
                with np.load(path, allow_pickle=False) as z:
                    found[r.variant] = {"trained": z["trained"], "init": z["init"]}
            except (OSError, ValueError, KeyError) as e:  # a damaged file costs one figure row, not the study
                print(f"warning: skipping {path} ({e})", file=sys.stderr)
    return found
