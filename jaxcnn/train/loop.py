"""The run: :func:`fit` -- resume, the epoch loop, NaN checks, checkpoints, metrics and progress."""

from __future__ import annotations

import hashlib
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxcnn.core import Layer
from jaxcnn.lowering import compile_options
from jaxcnn.storage import checkpoint, files, weights
from jaxcnn.summary import summary
from jaxcnn.train import distributed as _distributed  # fit's ``distributed`` argument would shadow the module name
from jaxcnn.train import kept, options, step
from jaxcnn.train import loggers as _loggers
from jaxcnn.train.config import TrainConfig, TrainingError, fill_new_fields
from jaxcnn.train.inputs import TrainData
from jaxcnn.train.records import EpochRecord
from jaxcnn.train.trainer import EpochOut, Trainer


@dataclass
class FitResult:
    """Per-seed outcome of :func:`fit` (arrays have a leading seed axis)."""

    params: Any
    state: Any
    history: list[EpochRecord]
    test_accuracy: list[float]
    train_seconds: float
    compile_seconds: float
    seeds: list[int] = field(default_factory=list)  # the seed values trained (TrainConfig.seeds is their count)
    initial_params: Any = None  # with fit(keep_initial=True): parameters before training, per seed (NumPy)
    compile_choice: dict[str, Any] | None = None  # the XLA options used and the measurements behind them
    identity: dict[str, Any] = field(default_factory=dict)  # what defines the run (see run_identity)
    ema: Any = None  # with cfg.ema: {"params", "state"} of the moving average, per seed

    @property
    def mean_accuracy(self) -> float:
        """Mean final test accuracy over seeds."""
        return float(np.mean(self.test_accuracy))

    @property
    def std_accuracy(self) -> float:
        """Standard deviation (ddof=0) of the final test accuracy over seeds."""
        return float(np.std(self.test_accuracy))


# options that may change when a run is resumed: more epochs extend it, the rest would change its meaning
_RESUMABLE_CHANGES = {"epochs", "seed_batching", "compile_options"}  # the last two change how, not what


def run_identity(model: Layer, data: TrainData, cfg: TrainConfig, meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """Every field that defines a run, as recorded in its checkpoints and compared on resume.

    The model's full definition (options and width included) and the exact data (train/test split, input
    size, normalisation) enter as sha256 hashes; the recipe as ``config.*``; the caller's ``meta`` (the
    command line's model name, --option values, data spec, --test-fraction, --input-size) as given.
    """
    config = {f"config.{k}": v for k, v in asdict(cfg).items() if k not in _RESUMABLE_CHANGES}
    return files.json_form({
        **(meta or {}), **config,
        "model_sha256": hashlib.sha256(repr(model).encode()).hexdigest(),
        "input_shape": list(np.shape(data.x_train)[1:]), "num_classes": int(data.num_classes),
        "data_sha256": data.digest(), "train_examples": len(data.x_train), "test_examples": len(data.x_test),
        **options.noise_record(data, cfg),  # how many labels the noise flipped (a fact of the run, not an input)
    })


def _check_same_run(ck: Path, saved: Any, now: dict[str, Any], legacy_config: Any = None) -> None:
    """CheckpointError naming every field of the run that differs from the one ``ck`` was written by."""
    if saved is None:  # written before identities were recorded: only its recipe can be compared
        print(f"note: {ck} predates run identities; only its training options are checked", file=sys.stderr)
        saved = dict(now)
        saved.update({f"config.{k}": v for k, v in files.json_form(legacy_config).items() if f"config.{k}" in now})
    if not isinstance(saved, dict):
        raise checkpoint.CheckpointError(f"{ck} has no valid record of the run that wrote it ('identity'); "
                                         "resume cannot check it is the same run: use another folder")
    saved = fill_new_fields(saved, now, prefix="config.")
    differ = files.differing(saved, now)
    if saved.get("data_sha256") == now["data_sha256"] and "data" in differ:
        differ.remove("data")  # the same data found at another path (a moved folder) is the same run
    if differ:
        detail = "; ".join(f"{k}: {str(saved.get(k))[:60]} -> {str(now.get(k))[:60]}" for k in differ)
        raise checkpoint.CheckpointError(
            f"`resume=True`: {ck} was written by a different run ({detail}); resume with the same model, options, "
            "data and recipe, or use another output folder")


def _resume_point(ck: Path, meta: dict[str, Any], cfg: TrainConfig) -> tuple[int, list[EpochRecord]]:
    """(next epoch, history) from a checkpoint's metadata, with one-line errors for edited or foreign files."""
    epoch, raw = meta.get("epoch"), meta.get("history")
    bad, history = None, []
    if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 0:
        bad = f"'epoch' is {str(epoch)[:30]}, not an epoch number"
    elif not isinstance(raw, list) or len(raw) != epoch + 1:
        bad = f"'history' is not a list of {epoch + 1} epoch records"
    else:
        history = [EpochRecord.from_json(h, cfg.num_seeds) for h in raw]
        if any(h is None for h in history):
            bad = f"an entry of 'history' is not an epoch record of {cfg.num_seeds} seed(s)"
    if bad:
        raise checkpoint.CheckpointError(f"checkpoint {ck} is invalid: {bad}; delete it or restore a copy")
    if epoch + 1 > cfg.epochs:
        raise checkpoint.CheckpointError(
            f"`resume=True`: {ck} has already trained {epoch + 1} epochs, more than `epochs={cfg.epochs}`; pass "
            f"`epochs={epoch + 1}` or more (or use another output folder for a shorter run)")
    return epoch + 1, history


def _saved(carry: step.TrainState) -> dict[str, Any]:
    """The trees a checkpoint holds (the EMA's beside the raw weights when the run keeps one)."""
    return {"params": carry.params, "state": carry.state, "opt_state": carry.opt_state} | (
        {} if carry.ema is None else {"ema": carry.ema})


def _describe(fn: Any) -> str:
    """A name for a custom optimizer or loss, recorded in the run identity (functions cannot be hashed)."""
    if isinstance(fn, optax.GradientTransformation):
        fn = fn.init  # optax builds transformations in functions whose name the init function carries
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', type(fn).__name__)}"


def fit(
    model: Layer,
    data: TrainData,
    cfg: TrainConfig,
    *,
    out_dir: str | Path | None = None,
    resume: bool = False,
    quiet: bool = False,
    meta: dict[str, Any] | None = None,
    on_epoch: Callable[[EpochRecord], None] | None = None,
    keep_initial: bool = False,
    optimizer: step.OptimizerLike | None = None,
    loss: step.LossFn | None = None,
    metrics: dict[str, step.LossFn] | None = None,
    checkpoint_format: str = "npz",
    distributed: bool | _distributed.Cluster = False,
    devices: Sequence[jax.Device] | None = None,
    loggers: Sequence[_loggers.Logger | str] | str | None = None,
) -> FitResult:
    """Train ``cfg.num_seeds`` seeds of ``model`` on ``data``; checkpoint to ``out_dir`` every epoch.

    Args:
        model: the network (any :class:`~jaxcnn.core.Layer`).
        data: training and test arrays with their normalisation (:class:`~jaxcnn.train.TrainData`).
        cfg: the recipe (:class:`~jaxcnn.train.TrainConfig`); checked before anything is compiled.
        out_dir: folder for ``ckpt-*`` checkpoints and ``metrics.jsonl``, held exclusively for the whole call
            (:func:`jaxcnn.storage.outdir.exclusive`); None writes nothing.
        resume: continue from the newest valid checkpoint in ``out_dir``, exactly where it stopped (same
            keys, same data order). It must have been written by the same run (:func:`run_identity`);
            checkpoints skipped as corrupt are reported.
        quiet: no progress lines.
        meta: JSON-able facts recorded in every checkpoint and compared on resume (the CLI's model name,
            options, data spec).
        on_epoch: called with each epoch's :class:`EpochRecord` after its checkpoint is written.
        keep_initial: also return the parameters at initialisation (``FitResult.initial_params``).
        optimizer: an ``optax.GradientTransformation`` or a function of the steps per epoch returning one, in
            place of ``cfg``'s optimizer, lr, momentum, weight_decay, schedule and warm-up (use
            :func:`jaxcnn.train.step.decay_mask` for weight decay).
        loss: ``(logits, labels, batch) -> scalar`` in place of cross-entropy with ``cfg.label_smoothing``
            (the test loss stays cross-entropy).
        metrics: name -> function of the same signature, averaged per epoch into ``EpochRecord.metrics``.
        checkpoint_format: "npz" or "safetensors" (:func:`jaxcnn.storage.checkpoint.save`).
        distributed: True (or a :class:`jaxcnn.train.distributed.Cluster`) first joins a multi-process run
            (:func:`jaxcnn.train.distributed.initialize`; before any JAX computation). Every process calls
            ``fit`` with the same arguments and data; ``cfg.batch`` is the global batch, split over all
            processes' devices; only process 0 writes to ``out_dir`` (which every process must see).
        devices: restrict the run to these devices (default: all of them, of every process).
        loggers: ``"tensorboard"``, ``"mlflow"`` (into ``out_dir``) or :mod:`jaxcnn.train.loggers` objects; each
            gets the run's identity, every epoch per seed and mean, and how it ended (process 0 only).

    Returns:
        :class:`FitResult`: final parameters and state per seed, the history, accuracies and timings.
    """
    if checkpoint_format not in checkpoint.FORMATS:
        raise ValueError(f"checkpoint_format must be one of {', '.join(checkpoint.FORMATS)}, got {checkpoint_format!r}")
    if distributed:
        _distributed.initialize(distributed if isinstance(distributed, _distributed.Cluster) else None)
    trainer = getattr(data, "trainer_class", Trainer)(model, cfg, data, devices, optimizer=optimizer, loss=loss,
                                                      metrics=metrics)  # streamed data brings its own
    custom = {f"custom.{k}": _describe(v) for k, v in (("optimizer", optimizer), ("loss", loss)) if v is not None}
    if metrics:
        custom["custom.metrics"] = sorted(metrics)
    meta = {**(meta or {}), **custom}  # a resumed run must bring the same custom parts
    run = _Run(out=Path(out_dir) if out_dir is not None else None, resume=resume,
               quiet=quiet or not _distributed.is_primary(), meta=meta, on_epoch=on_epoch, keep_initial=keep_initial,
               checkpoint_format=checkpoint_format, identity=run_identity(model, data, cfg, meta),
               loggers=tuple(_loggers.resolve(loggers, out_dir)) if _distributed.is_primary() else ())
    if run.out is None:
        return _fit(trainer, run)
    with _distributed.exclusive(run.out, files=("metrics.jsonl",)) as lock:
        if lock.previous and not quiet:
            print(f"note: the last run in {run.out} ({lock.previous}) did not finish cleanly"
                  + (f"; removed its unfinished writes {', '.join(lock.cleaned)}" if lock.cleaned else ""),
                  file=sys.stderr)
        return _fit(trainer, run)


@dataclass(frozen=True)
class _Run:
    """What one :func:`fit` call does besides training: where it writes, what it reports, what it is."""

    out: Path | None  # held exclusively while the run lasts
    resume: bool
    quiet: bool  # also True on every process but 0
    meta: dict[str, Any]
    on_epoch: Callable[[EpochRecord], None] | None
    keep_initial: bool
    checkpoint_format: str
    identity: dict[str, Any]  # run_identity: compared with a checkpoint's on resume
    loggers: tuple[_loggers.Logger, ...] = ()  # TensorBoard, MLflow (jaxcnn.train.loggers)

    @property
    def writes(self) -> bool:
        """Whether this process writes checkpoints and metrics (process 0 of a run with an output folder)."""
        return self.out is not None and _distributed.is_primary()


def _restore(trainer: Trainer, run: _Run, carry: step.TrainState
             ) -> tuple[int, list[EpochRecord], step.TrainState]:
    """(first epoch to train, history so far, state): from the newest valid checkpoint when resuming."""
    out, cfg = run.out, trainer.cfg
    if out is not None and not run.resume and any(out.glob("ckpt-*.json")):
        raise checkpoint.CheckpointError(
            f"{out} already holds checkpoints of another run; pass `resume=True` to continue it "
            "or choose another output folder"
        )
    ck, skipped = (None, []) if not (run.resume and out is not None) else checkpoint.find_latest(out)
    for path, why in skipped:  # always said: a silently skipped checkpoint is a silently lost epoch
        print(f"skipped checkpoint {path.name}: {why}", file=sys.stderr)
    if run.resume and ck is None and skipped:
        raise checkpoint.CheckpointError(
            f"`resume=True`: none of the {len(skipped)} checkpoint(s) in {out} is valid (newest: {skipped[0][1]}); "
            "restore a copy, or delete the ckpt-* files to start over")
    # every process must restore the same checkpoint: process 0 wrote it, all read it from the shared folder
    _distributed.agree(-1 if ck is None else int(ck.stem.split("-")[1]), f"the checkpoint to resume from in {out}")
    if ck is None:
        return 0, [], carry
    ck_meta = checkpoint.read_meta(ck)
    legacy = ck_meta.get("config") if isinstance(ck_meta.get("config"), dict) else {}
    _check_same_run(ck, ck_meta.get("identity"), run.identity, legacy)
    start, history = _resume_point(ck, ck_meta, cfg)
    if (why := cfg.resume_problem(legacy.get("epochs"))) is not None:  # another cosine schedule (issue 26)
        raise checkpoint.CheckpointError(f"`resume=True`: {ck} {why}")
    tree, _ = checkpoint.load(ck, _saved(carry))
    # the step count is not saved (checkpoints keep the three trees they always had): it is the epochs' steps
    done = np.full(np.shape(carry.step), start * trainer.steps_per_epoch, np.int32)
    carry = trainer.put(step.TrainState(tree["params"], tree["state"], tree["opt_state"], done, tree.get("ema")))
    trainer.restore_input(ck_meta.get("input"), start, ck)  # a streamed run's input position (none in memory)
    if not run.quiet or skipped:
        print(f"resumed from {ck} after epoch {start} of {cfg.epochs}", file=sys.stderr)
    return start, history, carry


def _compiled(trainer: Trainer, run: _Run, carry: step.TrainState, x_dev: Any, y_dev: Any, epochs: int
              ) -> tuple[Trainer, float]:
    """The trainer with its compile options chosen (for ``epochs`` epochs to go) and every chunk compiled,
    and the seconds that took."""
    t0 = time.perf_counter()
    cfg, lowered, calls = trainer.cfg, None, trainer.probe_calls(epochs)
    # a program kept by an earlier run is loaded without tracing it (program_cache); else traced and kept
    exported = kept.chunk(trainer, carry, x_dev, y_dev) if cfg.loop == "device" else None
    if cfg.loop == "device" and trainer.tunes_options():
        # the chunk program's identity finds a choice made before (compile_options): its cache key when it
        # was kept, else its lowered text (it has to be lowered anyway)
        if exported is not None:
            key = compile_options.program_key(f"kept program {exported.key}")
        else:
            lowered = trainer.lower_chunk(carry, x_dev, y_dev)
            key = compile_options.program_key(lowered.as_text())
        if (hit := compile_options.cached_choice(key, calls=calls)) is not None:
            trainer = trainer.with_choice(hit)
        else:
            trainer = trainer.with_compile_options(carry, epochs)
            compile_options.remember(trainer.choice, key)
    else:
        trainer = trainer.with_compile_options(carry, epochs)
    choice = trainer.choice
    if not run.quiet and cfg.compile_options == "auto" and choice.seconds:
        how = "cached" if choice.cached else "measured"
        if choice.tune_above_calls:  # what the reference's compile and step time said about this run's length
            print(f"compile options: {choice.name} (not tuned: {calls} one-seed steps at "
                  f"{1e3 * choice.seconds[choice.name]:.1f} ms could not repay tuning, which pays from "
                  f"{choice.tune_above_calls} on; {how})", file=sys.stderr)
        else:
            print(f"compile options: {choice.name} ({how}: "
                  + ", ".join(f"{k} {1e3 * v:.1f} ms" for k, v in choice.seconds.items())
                  + "".join(f"; {k} refused: {v}" for k, v in choice.rejected.items()) + ")", file=sys.stderr)
    seconds = time.perf_counter() - t0
    if cfg.loop == "device":
        seconds += trainer.compile(carry, x_dev, y_dev, lowered, exported)
    return trainer, seconds


def _epoch_record(trainer: Trainer, epoch: int, out: EpochOut, seconds: float, run: _Run) -> EpochRecord:
    """The epoch's record (test set evaluated), or TrainingError at the first non-finite loss."""
    cfg = trainer.cfg
    bad = ~np.isfinite(out.losses)
    if bad.any():
        s, i = np.argwhere(bad)[0]
        last = checkpoint.latest(run.out) if run.out is not None else None
        raise TrainingError(
            f"loss became {out.losses[s, i]} at step {epoch * trainer.steps_per_epoch + i} (epoch {epoch}, "
            f"step {i} of the epoch, seed {trainer.seeds[s]}); "
            + (f"the last good checkpoint is {last}" if last else "no checkpoint was written")
            + ". Lower the learning rate or check the data for NaN/Inf"
        )
    ev = trainer.evaluate(out.carry)
    return EpochRecord(
        epoch=epoch, step=(epoch + 1) * trainer.steps_per_epoch, train_loss=out.losses.mean(axis=1).tolist(),
        train_accuracy=(out.correct.sum(axis=1) / (trainer.steps_per_epoch * cfg.batch)).tolist(),
        test_loss=ev["loss"].tolist(), test_accuracy=ev["accuracy"].tolist(), test_top5=ev["top5"].tolist(),
        seconds=seconds, images_per_second=cfg.num_seeds * trainer.steps_per_epoch * cfg.batch / seconds,
        metrics={k: v.mean(axis=1).tolist() for k, v in out.metrics.items()},
        ema={f"test_{k[4:]}": v.tolist() for k, v in ev.items() if k.startswith("ema_")},
    )


def _write_epoch(run: _Run, carry: step.TrainState, history: list[EpochRecord], base: dict[str, Any]) -> None:
    """Checkpoint and metrics.jsonl after an epoch (process 0), then wait until every process is there."""
    if run.out is None:
        return
    rec = history[-1]
    if run.writes:
        checkpoint.save(run.out, f"ckpt-{rec.epoch + 1:06d}", _saved(carry),
                        {**base, "epoch": rec.epoch, "step": rec.step, "history": [h.to_json() for h in history]},
                        format=run.checkpoint_format)
        checkpoint.prune(run.out, keep=2)
        files.atomic_write_text(run.out / "metrics.jsonl", "".join(json.dumps(h.to_json()) + "\n" for h in history))
    # no process runs ahead of a checkpoint that is not complete yet
    _distributed.barrier(f"jaxcnn-checkpoint-{rec.epoch + 1}")


def _kept_copy(tree: Any) -> Any:
    """A copy of ``tree`` that outlives the donation of its arrays: on the host where this process holds them
    whole (a device copy per leaf compiled one program per shape: 0.6 s of MobileNet v1 0.25's start)."""
    return jax.tree_util.tree_map(lambda a: np.array(a) if a.is_fully_addressable else jnp.copy(a), tree)


def _fit(trainer: Trainer, run: _Run) -> FitResult:
    """The body of :func:`fit`, with ``run.out`` (if any) already held."""
    cfg, data, model = trainer.cfg, trainer.data, trainer.model
    carry = trainer.init()
    initial = _kept_copy(carry.params) if run.keep_initial else None  # before donation
    start, history, carry = _restore(trainer, run, carry)
    # the device loop keeps the whole training set on every device; each device computes only its part of a batch
    x_dev = trainer.put(data.x_train) if cfg.loop == "device" else None
    y_dev = trainer.put(data.y_train) if cfg.loop == "device" else None
    compile_s = 0.0
    if start < cfg.epochs:
        trainer, compile_s = _compiled(trainer, run, carry, x_dev, y_dev, cfg.epochs - start)
    choice = trainer.choice.record() if trainer.choice is not None else None
    base = {**weights.model_record(model, data, run.meta), "config": asdict(cfg), **run.meta, "identity": run.identity,
            "summary_totals": summary(model, trainer.in_shape).totals.to_dict(), "versions": files.versions(),
            "compile_options": choice}
    t_start = time.perf_counter()
    train_s = sum(h.seconds for h in history)
    named = {"model": base["model"], "options": base["model_spec"]["options"]}  # a Python run's meta may lack them
    with _loggers.Session(run.loggers, {**named, **run.identity, "config.epochs": cfg.epochs}, trainer.seeds,
                          history) as log:
        for epoch in range(start, cfg.epochs):
            t0 = time.perf_counter()
            out = trainer.run_epoch(carry, x_dev, y_dev, epoch)
            seconds = time.perf_counter() - t0
            rec = _epoch_record(trainer, epoch, out, seconds, run)
            carry = out.carry
            train_s += seconds
            history.append(rec)
            _write_epoch(run, carry, history, {**base, **trainer.input_meta()})
            log.epoch(rec)
            if run.on_epoch is not None:
                run.on_epoch(rec)
            if not run.quiet:
                print(_loggers.progress(rec, cfg.epochs, epoch + 1 - start, time.perf_counter() - t_start),
                      file=sys.stderr)
    return FitResult(
        params=carry.params, state=carry.state, history=history, test_accuracy=list(history[-1].test_accuracy),
        train_seconds=train_s, compile_seconds=compile_s, seeds=trainer.seeds, initial_params=initial,
        compile_choice=choice, identity=run.identity, ema=carry.ema,
    )
