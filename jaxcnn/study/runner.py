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

import hashlib
import io
import json
import platform
import re
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import jax
import numpy as np

from jaxcnn import models
from jaxcnn.core import walk
from jaxcnn.lowering.compile_cache import enable as enable_compile_cache
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
from jaxcnn.train.config import fill_new_fields
from jaxcnn.train.loggers import LogSpec


def _slug(variant: str) -> str:
    return variant.replace("/", "_w")


def _options_text(options: dict[str, Any]) -> str:
    return json.dumps(options, sort_keys=True, default=str)


def member_key(variant: str, options: dict[str, Any] | None) -> str:
    """A member's whole identity: its variant, and its builder options when it has any (``v{"k": 1}``)."""
    return variant + (_options_text(options) if options else "")


def run_folder(variant: str, options: dict[str, Any] | None) -> str:
    """``runs/<this>/`` of a member: its variant's slug, plus its options and their hash when it has any.

    Members without options keep the folder name they always had; members that differ only in
    builder options get distinct folders (``mobilenet_v1_w0.25__stem_stride=1_3f2a9c1e``). The hash is
    of the options left after dropping those the variant spells itself.
    """
    # options a variant already spells (``jaxcnn study``'s ``resnet_cifar/0.5,depth=8``) need no second mention
    options = {k: v for k, v in (options or {}).items() if f",{k}={v}" not in variant}
    if not options:
        return _slug(variant)
    text = "_".join(f"{k}={v}" for k, v in sorted(options.items()))
    readable = re.sub(r"[^A-Za-z0-9.=+-]+", "_", text)[:60]
    return f"{_slug(variant)}__{readable}_{hashlib.sha256(_options_text(options).encode()).hexdigest()[:8]}"


def _key(r: StudyRecord | Member) -> str:
    return member_key(r.variant, r.options)


def _check_folder(path: Path, rec: StudyRecord) -> None:
    """StudyError unless ``path`` (a record.json) lies in its own member's run folder."""
    folder = path.parent.name
    legacy = _slug(rec.variant)  # members with options used the variant's folder before run_folder existed
    if folder not in (run_folder(rec.variant, rec.options), legacy):
        raise StudyError(f"{path} records member {_key(rec)}, whose run folder is "
                         f"runs/{run_folder(rec.variant, rec.options)}, not runs/{folder}: it was copied or edited; "
                         "delete it to retrain that member")


def _study_folder(out: Path, create: bool) -> Path:
    """``out`` as a study folder (made if ``create``), or StudyError naming it."""
    if out.exists() and not out.is_dir():
        raise StudyError(f"study folder `out_dir={out}` exists but is not a folder; choose another `out_dir`")
    if not out.exists():
        if not create:
            raise StudyError(f"study folder `out_dir={out}` does not exist; run the study first (or check the path)")
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StudyError(f"cannot create study folder `out_dir={out}` ({e.strerror or e})") from None
    return out


def _check_same_run(rec: StudyRecord, m: Member, task: Task, out: Path) -> None:
    """A finished record only counts for this study if it used the same data, input and recipe."""
    now = {"dataset": task.name, "input_shape": list(task.in_shape), "recipe": asdict(m.recipe),
           "options": m.options}
    old = {k: getattr(rec, k) for k in now}
    if old["recipe"]:  # an empty recipe is a record from before recipes were recorded: not compared
        old["recipe"] = fill_new_fields(old["recipe"], now["recipe"])
    differ = files.differing(old, now)
    if differ:
        raise StudyError(
            f"{out / 'results.jsonl'} already holds {m.variant} from a run with another {', '.join(differ)}; "
            "use another `out_dir` (or delete that folder) to start this one"
        )


def first_conv_kernel(model, params, in_shape) -> np.ndarray | None:
    """The first convolution's kernel in ``params`` (HWIO; with a leading seed axis where ``params`` has one),
    or None if the model has none."""
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
               devices: Sequence[jax.Device] | None = None, log: LogSpec | None = None) -> StudyRecord:
    """Train one member (resuming if a checkpoint exists) on ``devices`` (default all) and return its record.

    ``log`` (``--log``) sends its epochs to TensorBoard/MLflow as one run of the study's (jaxcnn.train.loggers).
    """
    model = models.get(m.build_name, num_classes=task.data.num_classes, **m.options)
    totals = summary(model, task.in_shape).totals
    run_dir = out / "runs" / run_folder(m.variant, m.options)
    if not quiet:
        print(f"== {m.family} {m.variant} ({m.label}): {totals.learnable_params:,} params, "
              f"{totals.macs:,} MACs", file=sys.stderr)
    meta = {"model": m.build_name, "options": m.options, "dataset": task.name}
    res = fit(model, task.data, m.recipe, out_dir=run_dir, resume=True, quiet=quiet, meta=meta, keep_initial=True,
              devices=devices, loggers=log.member(out, m.variant, run_dir) if log is not None else None)
    # first-layer filters, trained and at initialisation (seed 0), for the filter figures: the one kernel is
    # fetched whole and indexed on the host (slicing every leaf on the device compiled one program per shape:
    # 4 s of MobileNet v1 0.25's member)
    k_trained = first_conv_kernel(model, res.params, task.in_shape)
    k_init = first_conv_kernel(model, res.initial_params, task.in_shape)
    k_trained, k_init = (None, None) if k_trained is None else (k_trained[0], k_init[0])
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
        learnable_params=totals.learnable_params,
        state_params=totals.state_params,
        macs=totals.macs,
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
    out = _study_folder(Path(out), create=True)
    with locks.held(out / LOCK_NAME, blocking=True):
        yield


def _merged(out: Path, members: Sequence[Member]) -> tuple[list[StudyRecord], bool]:
    """(every finished record in merge order, whether results.jsonl/csv need rewriting to hold them)."""
    old = read_results(out / "results.jsonl")
    merged = {_key(r): r for r in old}
    found: dict[str, Path] = {}
    for path in sorted((out / "runs").glob(f"*/{RECORD_NAME}")):
        rec = read_record(path)
        _check_folder(path, rec)
        if _key(rec) in found:
            raise StudyError(f"{path} and {found[_key(rec)]} both record member {_key(rec)}; delete the one in the "
                             "wrong folder")
        found[_key(rec)] = path
        merged[_key(rec)] = rec
    order = {_key(m): i for i, m in enumerate(members)}
    before = {_key(r): i for i, r in enumerate(old)}
    records = sorted(merged.values(), key=lambda r: (0, order[_key(r)], "") if _key(r) in order
                     else (1, before.get(_key(r), len(before)), _key(r)))
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


def finished_results(out: str | Path, members: Sequence[Member] = ()) -> list[StudyRecord]:
    """:func:`merge_results` of an existing folder with results (``--plot-only``), else StudyError, creating nothing."""
    out = _study_folder(Path(out), create=False)
    records = merge_results(out, members)
    if not records:
        raise StudyError(f"{out} holds no results to plot (no results.jsonl line, no runs/*/record.json); "
                         "run the study first")
    return records


def _train_and_record(m: Member, task: Task, out: Path, members: Sequence[Member], *, quiet: bool, command: str,
                      device: jax.Device | None = None, log: LogSpec | None = None) -> None:
    """Train one member, write its record.json, and merge it into the study's results at once."""
    t0 = time.perf_counter()
    rec = run_member(m, task, out, quiet=quiet, command=command, devices=[device] if device is not None else None,
                     log=log)
    rec = replace(rec, wall_seconds=round(time.perf_counter() - t0, 2))
    write_record(out / "runs" / run_folder(m.variant, m.options) / RECORD_NAME, rec)
    merge_results(out, members)


def _on_devices(todo: list[tuple[Member, Task]], out: Path, members: Sequence[Member], n: int, *, quiet: bool,
                command: str, log: LogSpec | None = None) -> None:
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
                    _train_and_record(m, t, out, members, quiet=quiet, command=command, device=device, log=log)
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
              command: str = "", shard: Shard | None = None, devices: int | None = None,
              log: LogSpec | None = None, compile_cache: bool = True) -> list[StudyRecord]:
    """Train every member (of ``shard``, if given) not finished in ``out``; return all finished records, member order.

    Args:
        members: the study's members, in the order of its table.
        task: the data (and, for members with their own ``input_size``, how to resize it).
        out: the study folder (resumable: finished members are skipped, an unfinished one resumes).
        quiet: no progress lines.
        command: the command line recorded in each record.
        shard: this process's subset of ``members`` (:mod:`jaxcnn.study.shard`); None runs them all.
        devices: train n members at once, one per local device, instead of sharding each member's
            batch over all of them (the default).
        log: TensorBoard/MLflow logging of every member (:class:`jaxcnn.train.loggers.LogSpec`).
        compile_cache: keep compiled programs in JAX's persistent cache
            (:func:`jaxcnn.lowering.compile_cache.enable`), so members that share a program, a resumed study
            and a rerun load it instead of compiling it again. False leaves JAX's setting as it is.

    Returns:
        Every finished record of ``members``, in their order.
    """
    if compile_cache:
        enable_compile_cache()
    out = _study_folder(Path(out), create=True)
    records = merge_results(out, members)
    done = {_key(r): r for r in records}
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
        if _key(m) in done:
            _check_same_run(done[_key(m)], m, tasks[key], out)
            if not quiet:
                print(f"== {m.variant}: already in {out / 'results.jsonl'}, skipped", file=sys.stderr)
            continue
        todo.append((m, tasks[key]))
    if devices:
        _on_devices(todo, out, members, devices, quiet=quiet, command=command, log=log)
    else:
        for m, t in todo:
            _train_and_record(m, t, out, members, quiet=quiet, command=command, log=log)
    order = {_key(m) for m in members}
    return [r for r in merge_results(out, members) if _key(r) in order]


def load_first_layers(out: Path, records: list[StudyRecord]) -> dict[str, dict[str, np.ndarray]]:
    """{variant: {"trained": kernel, "init": kernel}} for records whose run saved them."""
    found = {}
    for r in records:
        path = Path(out) / "runs" / run_folder(r.variant, r.options) / "first_layer.npz"
        if not path.exists():
            path = Path(out) / "runs" / _slug(r.variant) / "first_layer.npz"  # a folder from before run_folder
        if path.exists():
            try:
                with np.load(path, allow_pickle=False) as z:
                    found[r.variant] = {"trained": z["trained"], "init": z["init"]}
            except (OSError, ValueError, KeyError) as e:  # a damaged file costs one figure row, not the study
                print(f"warning: skipping {path} ({e})", file=sys.stderr)
    return found
