"""Experiment logging beside ``metrics.jsonl``: TensorBoard event files and MLflow runs (optional extras).

``fit(..., loggers=["tensorboard", "mlflow"])`` (``--log tensorboard,mlflow``) or logger objects.
Each logger gets the run's parameters once (its identity: model, options, recipe, data, seed list,
code version), then every epoch's metrics per seed and their mean, and finally whether the run
finished. Both libraries are imported only when a logger is made, so a run without logging never
loads them; a missing one is a one-line :class:`LoggingError` naming ``pip install 'jaxcnn[logging]'``.

* TensorBoard (``tensorboardX``'s writer, no TensorFlow): one event folder per seed
  (``seed_<s>/``) and one for the mean (``mean/``), the same tags in each (``test_accuracy``,
  ``train_loss``, ...; x = epochs done), so TensorBoard overlays the seeds; the parameters as a
  text table in ``mean/``.
* MLflow (``mlflow-skinny``'s client; nothing global is set): one run per :func:`fit`, metrics
  ``NAME`` (the mean) and ``seed_<s>/NAME`` (not ``NAME/seed_<s>``: in the file store a metric cannot be
  both a file and a folder), step = epochs done. The tracking URI is the one given,
  else ``MLFLOW_TRACKING_URI``, else a local file store in the run folder (``OUT/mlruns``, which
  ``mlflow ui --backend-store-uri OUT/mlruns`` shows). A resumed run continues its MLflow run
  (``mlflow_run.json`` in the run folder). Studies group their members under one parent run.
"""

from __future__ import annotations

import importlib
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from jaxcnn.storage import files, locks

# an epoch's record is jaxcnn.train.loop.EpochRecord; named only in words here, since loop imports this module
EpochRecord = Any

__all__ = ["KINDS", "LogSpec", "Logger", "LoggingError", "MLflowLogger", "Session", "TensorBoardLogger", "for_run",
           "parse_kinds", "progress", "require", "resolve", "run_params"]

KINDS = ("tensorboard", "mlflow")
_PACKAGES = {"tensorboard": "tensorboardX", "mlflow": "mlflow"}
RUN_STATE = "mlflow_run.json"  # in a run folder: the MLflow run a resumed run continues


class LoggingError(ValueError):
    """A logger that cannot be made (unknown kind, missing package, no folder for it): one line."""


def require(kind: str) -> Any:
    """The module a logger kind needs, or LoggingError naming the extra to install."""
    try:
        return importlib.import_module(_PACKAGES[kind])
    except ImportError:
        raise LoggingError(f"--log {kind} needs the {_PACKAGES[kind]} package: pip install 'jaxcnn[logging]'"
                           ) from None


def parse_kinds(text: str | Sequence[str] | None) -> tuple[str, ...]:
    """``"tensorboard,mlflow"`` (or a list of names) as checked kinds, each once, in the order given."""
    if not text:
        return ()
    names = [n.strip().lower() for n in (text.split(",") if isinstance(text, str) else text) if n.strip()]
    bad = [n for n in names if n not in KINDS]
    if bad:
        raise LoggingError(f"--log takes {', '.join(KINDS)} (comma-separated), got {bad[0]!r}")
    return tuple(dict.fromkeys(names))


def _flat(prefix: str, value: Any, out: dict[str, str]) -> None:
    if isinstance(value, dict) and value:
        for k, v in value.items():
            _flat(f"{prefix}.{k}" if prefix else str(k), v, out)
    else:
        text = value if isinstance(value, str) else json.dumps(files.json_form(value))
        out[prefix] = text[:6000]  # MLflow's limit on a parameter value


def run_params(identity: dict[str, Any], seeds: Sequence[int]) -> dict[str, str]:
    """A run's parameters as flat ``name -> text`` (nested options as ``options.depth``), seeds and code included."""
    out: dict[str, str] = {}
    _flat("", {**identity, "seeds": ",".join(map(str, seeds)), "code": files.code_version()}, out)
    return out


def _metrics(rec: EpochRecord, seeds: Sequence[int]) -> dict[str, tuple[float, list[float]]]:
    """name -> (mean over seeds, per seed) of one epoch."""
    per_seed = {"train_loss": rec.train_loss, "train_accuracy": rec.train_accuracy, "test_loss": rec.test_loss,
                "test_accuracy": rec.test_accuracy, "test_top5": rec.test_top5,
                **{f"train_{k}": v for k, v in rec.metrics.items()}}
    out = {k: (float(np.mean(v)), [float(a) for a in v]) for k, v in per_seed.items()}
    out["images_per_second"] = (float(rec.images_per_second), [])
    out["epoch_seconds"] = (float(rec.seconds), [])
    return out


class Logger:
    """What a run reports to a logger; the default of each method does nothing."""

    def start(self, params: dict[str, str], seeds: list[int], history: list[EpochRecord]) -> None:
        """The run begins (or resumes after the epochs in ``history``)."""

    def epoch(self, rec: EpochRecord) -> None:
        """One epoch finished (its checkpoint is written)."""

    def finish(self, ok: bool) -> None:
        """The run ended: completed (``ok``) or stopped by an error."""


def _event_writer(logdir: Path, **kwargs: Any) -> Any:
    """A tensorboardX SummaryWriter whose event file is new, even when another was opened this second.

    tensorboardX names the file by the whole second and the host alone and opens it with "wb", so a
    run resumed (or a study report rewritten) within the same second truncated the earlier file and
    lost its epochs. The nanosecond suffix makes the name unique and keeps files in creation order,
    the order TensorBoard reads them in.
    """
    suffix = f".{time.time_ns()}.{os.getpid()}"
    return require("tensorboard").SummaryWriter(str(logdir), filename_suffix=suffix, **kwargs)


class TensorBoardLogger(Logger):
    """Event files under ``logdir``: ``seed_<s>/`` per seed and ``mean/``, the same scalar tags in each."""

    def __init__(self, logdir: str | Path):
        self.logdir = Path(logdir)
        require("tensorboard")  # fail here, naming the extra, not at the first epoch
        self._writers: dict[str, Any] = {}
        self._seeds: list[int] = []

    def start(self, params: dict[str, str], seeds: list[int], history: list[EpochRecord]) -> None:
        """Open one writer per seed and one for the mean; write the parameters (and, if new, the history)."""
        logged = any(self.logdir.rglob("events.out.tfevents.*"))  # a resumed run has logged its epochs
        self._seeds = list(seeds)
        for name in ["mean", *(f"seed_{s}" for s in seeds)]:
            self._writers[name] = _event_writer(self.logdir / name, flush_secs=30)
        if not logged or not history:
            table = "| parameter | value |\n|---|---|\n" + "\n".join(
                f"| {k} | {v.replace('|', '/')} |" for k, v in sorted(params.items()))
            self._writers["mean"].add_text("parameters", table, 0)
        if not logged:  # logging turned on when resuming: the epochs so far first
            for rec in history:
                self.epoch(rec)

    def epoch(self, rec: EpochRecord) -> None:
        """Each metric's mean into ``mean/`` and each seed's value into ``seed_<s>/``, at step = epochs done."""
        step = rec.epoch + 1
        for name, (mean, values) in _metrics(rec, self._seeds).items():
            self._writers["mean"].add_scalar(name, mean, step)
            for s, v in zip(self._seeds, values, strict=False):
                self._writers[f"seed_{s}"].add_scalar(name, v, step)
        for w in self._writers.values():
            w.flush()

    def finish(self, ok: bool) -> None:
        """Close every writer."""
        for w in self._writers.values():
            w.close()
        self._writers.clear()


def _mlflow_uri(uri: str | None, default_dir: Path | None) -> str:
    """The tracking URI: given, else ``MLFLOW_TRACKING_URI``, else a file store in ``default_dir``."""
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        if default_dir is None:
            raise LoggingError("MLflow logging without an output folder needs a tracking URI: pass "
                               "MLflowLogger(tracking_uri=...) or set MLFLOW_TRACKING_URI")
        uri = (Path(default_dir).resolve() / "mlruns").as_uri()
    if uri.startswith("file:") or "://" not in uri:
        # MLflow 3 keeps its file store only on request; it is the one store that needs no server or database
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # no network at run time unless asked for
    return uri


class MLflowLogger(Logger):
    """One MLflow run: parameters, metrics per epoch (mean as ``NAME``, seeds as ``seed_<s>/NAME``), status.

    ``state_dir`` (the run folder) keeps the run id, so a resumed :func:`fit` continues the same
    MLflow run; ``parent_run_id`` nests it under a study's run. Without a ``tracking_uri`` (or
    ``MLFLOW_TRACKING_URI``) the store is ``store_dir/mlruns`` (default: ``state_dir``).
    """

    def __init__(self, tracking_uri: str | None = None, *, experiment: str = "jaxcnn", run_name: str | None = None,
                 state_dir: str | Path | None = None, store_dir: str | Path | None = None,
                 parent_run_id: str | None = None, tags: dict[str, str] | None = None):
        mlflow = require("mlflow")
        self.tracking_uri = _mlflow_uri(tracking_uri, store_dir if store_dir is not None else state_dir)
        self.client = mlflow.MlflowClient(tracking_uri=self.tracking_uri)
        self.experiment, self.run_name, self.parent_run_id = experiment, run_name, parent_run_id
        self.state_dir = Path(state_dir) if state_dir is not None else None
        self.tags = dict(tags or {})
        self.run_id: str | None = None
        self._seeds: list[int] = []

    def experiment_id(self) -> str:
        """The id of the experiment named :attr:`experiment`, created if missing."""
        found = self.client.get_experiment_by_name(self.experiment)
        return found.experiment_id if found is not None else self.client.create_experiment(self.experiment)

    def _previous(self) -> str | None:
        """The run id a previous (interrupted) call left in the run folder, if it is in this tracking store."""
        path = self.state_dir / RUN_STATE if self.state_dir is not None else None
        if path is None or not path.exists():
            return None
        try:
            saved = json.loads(files.read_regular(path, "MLflow run record"))
            if saved.get("tracking_uri") == self.tracking_uri:
                self.client.get_run(saved["run_id"])  # raises when the store no longer has it
                return str(saved["run_id"])
        except Exception:  # an unreadable record or a run deleted in MLflow: start a new run
            pass
        return None

    def start(self, params: dict[str, str], seeds: list[int], history: list[EpochRecord]) -> None:
        """Continue the run a previous call left (resume), else create one and log the parameters and history."""
        from mlflow.entities import Param

        self._seeds = list(seeds)
        self.run_id = self._previous() if history else None  # a new run in a reused folder gets a new MLflow run
        if self.run_id is not None:
            self.client.update_run(self.run_id, status="RUNNING")
            return
        tags = {**self.tags, **({"mlflow.parentRunId": self.parent_run_id} if self.parent_run_id else {})}
        run = self.client.create_run(self.experiment_id(), run_name=self.run_name, tags=tags)
        self.run_id = run.info.run_id
        items = [Param(k, v) for k, v in sorted(params.items())]
        for i in range(0, len(items), 100):  # MLflow takes at most 100 parameters per call
            self.client.log_batch(self.run_id, params=items[i:i + 100])
        if self.state_dir is not None:
            files.atomic_write_text(self.state_dir / RUN_STATE, json.dumps(
                {"tracking_uri": self.tracking_uri, "run_id": self.run_id}))
        for rec in history:
            self.epoch(rec)

    def epoch(self, rec: EpochRecord) -> None:
        """The epoch's metrics at step = epochs done."""
        from mlflow.entities import Metric

        now, step = int(time.time() * 1000), rec.epoch + 1
        items = []
        for name, (mean, values) in _metrics(rec, self._seeds).items():
            items.append(Metric(name, mean, now, step))
            items += [Metric(f"seed_{s}/{name}", v, now, step) for s, v in zip(self._seeds, values, strict=False)]
        self.client.log_batch(self.run_id, metrics=items)

    def log_artifacts(self, paths: Sequence[Path], artifact_path: str | None = None) -> None:
        """Copy these files into the run's artifacts."""
        for p in paths:
            self.client.log_artifact(self.run_id, str(p), artifact_path)

    def finish(self, ok: bool) -> None:
        """Mark the run FINISHED, or FAILED when an error stopped it."""
        if self.run_id is not None:
            self.client.set_terminated(self.run_id, "FINISHED" if ok else "FAILED")


def for_run(kinds: Sequence[str] | str, out_dir: str | Path | None, *, mlflow_uri: str | None = None,
            experiment: str | None = None) -> list[Logger]:
    """The loggers ``--log`` names for one run in ``out_dir`` (TensorBoard into ``out_dir/tensorboard``)."""
    out: list[Logger] = []
    for kind in parse_kinds(kinds):
        if kind == "tensorboard":
            if out_dir is None:
                raise LoggingError("loggers=['tensorboard'] writes into the run folder: pass out_dir, or "
                                   "TensorBoardLogger(DIR)")
            out.append(TensorBoardLogger(Path(out_dir) / "tensorboard"))
        else:
            out.append(MLflowLogger(mlflow_uri, experiment=experiment or "jaxcnn", state_dir=out_dir,
                                    run_name=Path(out_dir).resolve().name if out_dir is not None else None))
    return out


def resolve(loggers: Sequence[Logger | str] | str | None, out_dir: str | Path | None) -> list[Logger]:
    """Logger objects of ``fit(loggers=...)``: objects as given, names made by :func:`for_run` for ``out_dir``."""
    if not loggers:
        return []
    out: list[Logger] = []
    for item in [loggers] if isinstance(loggers, str) else loggers:
        out += [item] if isinstance(item, Logger) else for_run(item, out_dir)
    return out


class LogSpec:
    """What ``--log`` asks of a study: a logger set per member, all under the study's parent MLflow run."""

    def __init__(self, kinds: Sequence[str], *, mlflow_uri: str | None = None, experiment: str | None = None):
        self.kinds = parse_kinds(list(kinds))
        self.mlflow_uri, self.experiment = mlflow_uri, experiment
        for kind in self.kinds:  # a missing package is found before any member trains
            require(kind)

    def _study_logger(self, out: Path, state_dir: Path | None = None, **kw: Any) -> MLflowLogger:
        """A logger into the study's experiment (and store, by default), its run id kept in ``state_dir``."""
        return MLflowLogger(self.mlflow_uri, experiment=self.experiment or Path(out).resolve().name,
                            state_dir=state_dir or out, store_dir=out, **kw)

    def parent_run(self, out: str | Path) -> str:
        """The study's MLflow run id (created once, whichever shard or thread comes first)."""
        out = Path(out)
        with locks.held(out / ".mlflow.lock", blocking=True):
            study = self._study_logger(out, run_name=f"{Path(out).resolve().name} (study)",
                                       tags={"jaxcnn.study": str(Path(out).resolve())})
            run_id = study._previous()  # the run an earlier call, shard or thread made
            if run_id is None:
                study.start({"study": str(Path(out).resolve())}, [], [])
                return str(study.run_id)
            study.client.update_run(run_id, status="RUNNING")  # more members train under it now
            return run_id

    def member(self, out: str | Path, variant: str, run_dir: str | Path) -> list[Logger]:
        """The loggers of one member: TensorBoard under ``OUT/tensorboard/<run folder>``, MLflow as a child run."""
        loggers: list[Logger] = []
        if "tensorboard" in self.kinds:
            loggers.append(TensorBoardLogger(Path(out) / "tensorboard" / Path(run_dir).name))
        if "mlflow" in self.kinds:
            parent = self.parent_run(out)
            loggers.append(self._study_logger(out, Path(run_dir), run_name=variant, parent_run_id=parent, tags={
                "jaxcnn.study": str(Path(out).resolve()), "jaxcnn.variant": variant}))
        return loggers

    def report(self, out: str | Path, paths: Sequence[Path]) -> None:
        """The study's tables and figures as artifacts of its parent MLflow run (TensorBoard: the table as text)."""
        out = Path(out)
        if "mlflow" in self.kinds:
            study = self._study_logger(out)
            study.run_id = self.parent_run(out)
            study.log_artifacts([p for p in paths if p.is_file()], "report")
            study.finish(True)
        if "tensorboard" in self.kinds and (out / "table.md").is_file():
            writer = _event_writer(out / "tensorboard" / "study")
            writer.add_text("table", (out / "table.md").read_text(), 0)
            writer.close()


class Session:
    """The loggers of one :func:`fit` call: started with the run, told each epoch, finished with its outcome."""

    def __init__(self, loggers: Sequence[Logger], identity: dict[str, Any], seeds: list[int],
                 history: list[EpochRecord]):
        self.loggers, self.identity, self.seeds, self.history = list(loggers), identity, seeds, list(history)

    def __enter__(self) -> Session:
        if self.loggers:
            params = run_params(self.identity, self.seeds)
            for lg in self.loggers:
                lg.start(params, self.seeds, self.history)
        return self

    def epoch(self, rec: EpochRecord) -> None:
        """Tell every logger about a finished epoch."""
        for lg in self.loggers:
            lg.epoch(rec)

    def __exit__(self, kind: Any, error: Any, tb: Any) -> None:
        for lg in self.loggers:
            lg.finish(kind is None)


def progress(rec: EpochRecord, epochs: int, done_in_run: int, elapsed: float) -> str:
    """The progress line of an epoch: bar, loss, train and test accuracy, speed, time left."""
    done = rec.epoch + 1
    bar = "=" * int(20 * done / epochs)
    eta = elapsed / done_in_run * (epochs - done)
    return (
        f"epoch {done:>3}/{epochs} [{bar:<20}] loss {np.mean(rec.train_loss):.4f} "
        f"train {100 * np.mean(rec.train_accuracy):5.1f}% test {100 * np.mean(rec.test_accuracy):5.1f}% "
        f"{rec.images_per_second:,.0f} img/s ETA {int(eta) // 60}:{int(eta) % 60:02d}"
    )
