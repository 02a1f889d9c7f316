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
from jaxcnn.storage import checkpoint, files
from jaxcnn.summary import summary
from jaxcnn.train import distributed as _distributed  # fit's ``distributed`` argument would shadow the module name
from jaxcnn.train import step
from jaxcnn.train.config import TrainConfig, TrainingError
from jaxcnn.train.inputs import TrainData
from jaxcnn.train.trainer import Trainer


@dataclass
class FitResult:
    """Per-seed outcome of :func:`fit` (arrays have a leading seed axis)."""

    params: Any
    state: Any
    history: list[dict[str, Any]]
    test_accuracy: list[float]
    train_seconds: float
    compile_seconds: float
    seeds: list[int] = field(default_factory=list)  # the seed values trained (TrainConfig.seeds is their count)
    initial_params: Any = None  # with fit(keep_initial=True): parameters before training, per seed
    compile_choice: dict[str, Any] | None = None  # the XLA options used and the measurements behind them
    identity: dict[str, Any] = field(default_factory=dict)  # what defines the run (see run_identity)

    @property
    def mean_accuracy(self) -> float:
        """Mean final test accuracy over seeds."""
        return float(np.mean(self.test_accuracy))

    @property
    def std_accuracy(self) -> float:
        """Standard deviation (ddof=0) of the final test accuracy over seeds."""
        return float(np.std(self.test_accuracy))


def _progress(epoch: int, epochs: int, rec: dict[str, Any], elapsed: float) -> str:
    done = epoch + 1
    bar = "=" * int(20 * done / epochs)
    eta = elapsed / done * (epochs - done)
    return (
        f"epoch {done:>3}/{epochs} [{bar:<20}] loss {np.mean(rec['train_loss']):.4f} "
        f"train {100 * np.mean(rec['train_accuracy']):5.1f}% test {100 * np.mean(rec['test_accuracy']):5.1f}% "
        f"{rec['images_per_second']:,.0f} img/s ETA {int(eta) // 60}:{int(eta) % 60:02d}"
    )


# options that may change when a run is resumed: more epochs extend it, the rest would change its meaning
_RESUMABLE_CHANGES = {"epochs", "seed_batching", "compile_options"}  # the last two change how, not what


def _json(v: Any) -> Any:
    """``v`` as it reads back from JSON (tuples become lists), so saved and current values compare equal."""
    return json.loads(json.dumps(v, default=str))


def run_identity(model: Layer, data: TrainData, cfg: TrainConfig, meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """Every field that defines a run, as recorded in its checkpoints and compared on resume.

    The model's full definition (options and width included) and the exact data (train/test split, input
    size, normalisation) enter as sha256 hashes; the recipe as ``config.*``; the caller's ``meta`` (the
    command line's model name, --option values, data spec, --test-fraction, --input-size) as given.
    """
    h = hashlib.sha256()
    for name in ("x_train", "y_train", "x_test", "y_test", "mean", "std"):
        a = np.ascontiguousarray(np.asarray(getattr(data, name)))
        h.update(f"{name}:{a.dtype.str}:{a.shape};".encode())
        h.update(a.data)
    config = {f"config.{k}": v for k, v in asdict(cfg).items() if k not in _RESUMABLE_CHANGES}
    return _json({
        **(meta or {}), **config,
        "model_sha256": hashlib.sha256(repr(model).encode()).hexdigest(),
        "input_shape": list(np.shape(data.x_train)[1:]), "num_classes": int(data.num_classes),
        "data_sha256": h.hexdigest(), "train_examples": len(data.x_train), "test_examples": len(data.x_test),
    })


def _check_same_run(ck: Path, saved: Any, now: dict[str, Any], legacy_config: Any = None) -> None:
    """CheckpointError naming every field of the run that differs from the one ``ck`` was written by."""
    if saved is None:  # written before identities were recorded: only its recipe can be compared
        print(f"note: {ck} predates run identities; only its training options are checked", file=sys.stderr)
        saved = dict(now)
        saved.update({f"config.{k}": v for k, v in _json(legacy_config).items() if f"config.{k}" in now})
    if not isinstance(saved, dict):
        raise checkpoint.CheckpointError(f"{ck} has no valid record of the run that wrote it ('identity'); "
                                         "resume cannot check it is the same run: use another folder")
    differ = [k for k in sorted(set(saved) | set(now)) if saved.get(k) != now.get(k)]
    if saved.get("data_sha256") == now["data_sha256"] and "data" in differ:
        differ.remove("data")  # the same data found at another path (a moved folder) is the same run
    if differ:
        detail = "; ".join(f"{k}: {str(saved.get(k))[:60]} -> {str(now.get(k))[:60]}" for k in differ)
        raise checkpoint.CheckpointError(
            f"`resume=True`: {ck} was written by a different run ({detail}); resume with the same model, options, "
            "data and recipe, or use another output folder")


def _resume_point(ck: Path, meta: dict[str, Any], cfg: TrainConfig) -> tuple[int, list[dict[str, Any]]]:
    """(next epoch, history) from a checkpoint's metadata, with one-line errors for edited or foreign files."""
    epoch, history = meta.get("epoch"), meta.get("history")
    bad = None
    if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 0:
        bad = f"'epoch' is {str(epoch)[:30]}, not an epoch number"
    elif not isinstance(history, list) or len(history) != epoch + 1:
        bad = f"'history' is not a list of {epoch + 1} epoch records"
    elif not all(isinstance(h, dict) and isinstance(h.get("seconds"), (int, float))
                 and isinstance(h.get("test_accuracy"), list) and len(h["test_accuracy"]) == cfg.seeds
                 for h in history):
        bad = f"an entry of 'history' is not an epoch record of {cfg.seeds} seed(s)"
    if bad:
        raise checkpoint.CheckpointError(f"checkpoint {ck} is invalid: {bad}; delete it or restore a copy")
    if epoch + 1 > cfg.epochs:
        raise checkpoint.CheckpointError(
            f"`resume=True`: {ck} has already trained {epoch + 1} epochs, more than `epochs={cfg.epochs}`; pass "
            f"`epochs={epoch + 1}` or more (or use another output folder for a shorter run)")
    return epoch + 1, history


def _saved(carry: step.TrainState) -> dict[str, Any]:
    """The trees a checkpoint holds."""
    return {"params": carry.params, "state": carry.state, "opt_state": carry.opt_state}


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
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    keep_initial: bool = False,
    optimizer: step.OptimizerLike | None = None,
    loss: step.LossFn | None = None,
    metrics: dict[str, step.LossFn] | None = None,
    checkpoint_format: str = "npz",
    distributed: bool | _distributed.Cluster = False,
    devices: Sequence[jax.Device] | None = None,
) -> FitResult:
    """Train ``cfg.seeds`` seeds of ``model`` on ``data``; checkpoint to ``out_dir`` every epoch.

    ``optimizer`` is any ``optax.GradientTransformation`` or a function of the steps per epoch returning one
    (then ``cfg``'s optimizer, lr, momentum, weight_decay, schedule and warm-up are unused; use
    :func:`jaxcnn.train.step.decay_mask` for weight decay); ``loss`` is ``(logits, labels, batch) -> scalar`` in
    place of cross-entropy with ``cfg.label_smoothing``; each of ``metrics`` (same signature) is averaged
    per epoch into the history as ``train_<name>``. The test loss stays cross-entropy. See
    :mod:`jaxcnn.train.step`. ``checkpoint_format`` is "npz" or "safetensors" (:func:`jaxcnn.storage.checkpoint.save`).

    With ``resume=True`` the newest valid checkpoint in ``out_dir`` is loaded and the
    run continues exactly where it stopped (same keys, same data order); it must have been written by the
    same run (:func:`run_identity`), and checkpoints skipped as corrupt are reported. ``out_dir`` is held
    exclusively (:func:`jaxcnn.storage.outdir.exclusive`) for the whole call. ``keep_initial``
    returns the parameters at initialisation too (``FitResult.initial_params``).

    ``distributed=True`` (or a :class:`jaxcnn.train.distributed.Cluster`) first joins a multi-process run
    (:func:`jaxcnn.train.distributed.initialize`; call it before any JAX computation): every process calls
    ``fit`` with the same arguments and data, ``cfg.batch`` is the global batch, split over all
    processes' devices, and only process 0 writes to ``out_dir`` (which every process must see).
    ``devices`` restricts the run to these local devices (default: all of them, of every process).
    """
    if checkpoint_format not in checkpoint.FORMATS:
        raise ValueError(f"checkpoint_format must be one of {', '.join(checkpoint.FORMATS)}, got {checkpoint_format!r}")
    if distributed:
        _distributed.initialize(distributed if isinstance(distributed, _distributed.Cluster) else None)
    trainer = Trainer(model, cfg, data, devices, optimizer=optimizer, loss=loss, metrics=metrics)
    trainer.checkpoint_format = checkpoint_format
    custom = {f"custom.{k}": _describe(v) for k, v in (("optimizer", optimizer), ("loss", loss)) if v is not None}
    if metrics:
        custom["custom.metrics"] = sorted(metrics)
    meta = {**(meta or {}), **custom} if custom else meta  # a resumed run must bring the same custom parts
    if out_dir is None:
        return _fit(trainer, model, data, cfg, None, resume, quiet, meta, on_epoch, keep_initial)
    with _distributed.exclusive(out_dir, files=("metrics.jsonl",)) as lock:
        if lock.previous and not quiet:
            print(f"note: the last run in {out_dir} ({lock.previous}) did not finish cleanly"
                  + (f"; removed its unfinished writes {', '.join(lock.cleaned)}" if lock.cleaned else ""),
                  file=sys.stderr)
        return _fit(trainer, model, data, cfg, Path(out_dir), resume, quiet, meta, on_epoch, keep_initial)


def _fit(trainer: Trainer, model: Layer, data: TrainData, cfg: TrainConfig, out: Path | None, resume: bool,
         quiet: bool, meta: dict[str, Any] | None, on_epoch: Callable[[dict[str, Any]], None] | None,
         keep_initial: bool) -> FitResult:
    """The body of :func:`fit`, with ``out`` (if any) already held."""
    identity = run_identity(model, data, cfg, meta)
    primary = _distributed.is_primary()
    quiet = quiet or not primary  # one progress report, not one per process
    if out is not None and not resume and any(out.glob("ckpt-*.json")):
        raise checkpoint.CheckpointError(
            f"{out} already holds checkpoints of another run; pass `resume=True` to continue it "
            "or choose another output folder"
        )
    carry = trainer.init()
    initial = jax.tree_util.tree_map(jnp.copy, carry.params) if keep_initial else None  # before donation
    start, history = 0, []
    ck, skipped = (None, []) if not (resume and out is not None) else checkpoint.find_latest(out)
    for path, why in skipped:  # always said: a silently skipped checkpoint is a silently lost epoch
        print(f"skipped checkpoint {path.name}: {why}", file=sys.stderr)
    if resume and ck is None and skipped:
        raise checkpoint.CheckpointError(
            f"`resume=True`: none of the {len(skipped)} checkpoint(s) in {out} is valid (newest: {skipped[0][1]}); "
            "restore a copy, or delete the ckpt-* files to start over")
    # every process must restore the same checkpoint: process 0 wrote it, all read it from the shared folder
    _distributed.agree(-1 if ck is None else int(ck.stem.split("-")[1]), f"the checkpoint to resume from in {out}")
    if ck is not None:
        ck_meta = checkpoint.read_meta(ck)
        legacy = ck_meta.get("config") if isinstance(ck_meta.get("config"), dict) else {}
        _check_same_run(ck, ck_meta.get("identity"), identity, legacy)
        start, history = _resume_point(ck, ck_meta, cfg)
        if (why := cfg.resume_problem(legacy.get("epochs"))) is not None:  # issue 26: another cosine schedule
            raise checkpoint.CheckpointError(f"`resume=True`: {ck} {why}")
        tree, _ = checkpoint.load(ck, _saved(carry))
        # the step count is not saved (checkpoints keep the three trees they always had): it is the epochs' steps
        done = np.full(np.shape(carry.step), start * trainer.steps, np.int32)
        carry = trainer.put(step.TrainState(tree["params"], tree["state"], tree["opt_state"], done))
        if not quiet or skipped:
            print(f"resumed from {ck} after epoch {start} of {cfg.epochs}", file=sys.stderr)
    # epoch mode keeps the whole training set on every device; each device computes only its part of a batch
    x_dev = trainer.put(data.x_train) if cfg.mode == "epoch" else None
    y_dev = trainer.put(data.y_train) if cfg.mode == "epoch" else None
    compile_s = 0.0
    if start < cfg.epochs:
        t0 = time.perf_counter()
        choice = trainer.choose_options(carry)
        compile_s = time.perf_counter() - t0
        if not quiet and cfg.compile_options == "auto" and choice.seconds:
            print(f"compile options: {choice.name} ({'cached' if choice.cached else 'measured'}: "
                  + ", ".join(f"{k} {1e3 * v:.1f} ms" for k, v in choice.seconds.items())
                  + "".join(f"; {k} refused: {v}" for k, v in choice.rejected.items()) + ")", file=sys.stderr)
        if cfg.mode == "epoch":
            compile_s += trainer.compile(carry, x_dev, y_dev)

    base = {
        "model": (meta or {}).get("model"), "config": asdict(cfg), **(meta or {}), "identity": identity,
        "summary_totals": summary(model, trainer.in_shape).totals,
        "versions": files.versions(),
        "compile_options": trainer.choice.record() if trainer.choice is not None else None,
    }
    t_start = time.perf_counter()
    train_s = sum(h["seconds"] for h in history)
    for epoch in range(start, cfg.epochs):
        t0 = time.perf_counter()
        carry, losses, correct = trainer.run_epoch(carry, x_dev, y_dev, epoch)
        losses = np.asarray(losses)
        seconds = time.perf_counter() - t0
        bad = ~np.isfinite(losses)
        if bad.any():
            s, i = np.argwhere(bad)[0]
            last = checkpoint.latest(out) if out is not None else None
            raise TrainingError(
                f"loss became {losses[s, i]} at step {epoch * trainer.steps + i} (epoch {epoch}, step {i} of the "
                f"epoch, seed {trainer.seeds[s]}); "
                + (f"the last good checkpoint is {last}" if last else "no checkpoint was written")
                + ". Lower the learning rate or check the data for NaN/Inf"
            )
        train_s += seconds
        ev = trainer.evaluate(carry)
        rec = {
            "epoch": epoch,
            "step": (epoch + 1) * trainer.steps,
            "train_loss": losses.mean(axis=1).tolist(),
            "train_accuracy": (np.asarray(correct).sum(axis=1) / (trainer.steps * cfg.batch)).tolist(),
            "test_loss": ev["loss"].tolist(),
            "test_accuracy": ev["accuracy"].tolist(),
            "test_top5": ev["top5"].tolist(),
            **{f"train_{k}": v.mean(axis=1).tolist() for k, v in trainer.epoch_metrics.items()},
            "seconds": seconds,
            "images_per_second": cfg.seeds * trainer.steps * cfg.batch / seconds,
        }
        history.append(rec)
        if out is not None and primary:
            checkpoint.save(out, f"ckpt-{epoch + 1:06d}", _saved(carry),
                            {**base, "epoch": epoch, "step": rec["step"], "history": history},
                            format=trainer.checkpoint_format)
            checkpoint.prune(out, keep=2)
            lines = "".join(json.dumps(h) + "\n" for h in history)
            files.atomic_write_text(out / "metrics.jsonl", lines)
        if out is not None:  # no process runs ahead of a checkpoint that is not complete yet
            _distributed.barrier(f"jaxcnn-checkpoint-{epoch + 1}")
        if on_epoch is not None:
            on_epoch(rec)
        if not quiet:
            print(_progress(epoch, cfg.epochs, rec, time.perf_counter() - t_start), file=sys.stderr)
    return FitResult(
        params=carry.params, state=carry.state, history=history, test_accuracy=list(history[-1]["test_accuracy"]),
        train_seconds=train_s, compile_seconds=compile_s, seeds=trainer.seeds, initial_params=initial,
        compile_choice=trainer.choice.record() if trainer.choice is not None else None,
        identity=identity,
    )
