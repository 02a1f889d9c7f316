"""The record of one finished study member: one schema for ``record.json``, ``results.jsonl`` and ``results.csv``.

:class:`StudyRecord` declares every field with its type. Fields without a default are required (a file
missing one is not a study record); the others were added over time and default to "not recorded".
``CSV_FIELDS`` are the columns of ``results.csv``. Readers (tables, figures, statistics) use attributes,
so a renamed or retyped field is a change in one place that a type checker follows.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jaxcnn.storage import files
from jaxcnn.train.config import fill_new_fields


class StudyError(ValueError):
    """Bad study input (unknown variant, unreadable results): one line for the user."""


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _numbers(v: Any) -> bool:
    return isinstance(v, list) and all(_number(a) for a in v)


def _per_epoch(v: Any) -> bool:
    return isinstance(v, list) and all(_numbers(e) or _number(e) for e in v)


# field name -> check of its JSON value (required fields are checked always, optional ones when present)
_CHECKS = {
    "family": lambda v: isinstance(v, str), "variant": lambda v: isinstance(v, str) and v != "",
    "label": lambda v: isinstance(v, str), "learnable_params": lambda v: isinstance(v, int) and v >= 0,
    "macs": lambda v: isinstance(v, int) and v >= 0,
    "input_shape": lambda v: isinstance(v, list) and all(isinstance(d, int) and d > 0 for d in v) and v != [],
    "accuracies": lambda v: _numbers(v) and v != [], "mean_accuracy": _number, "std_accuracy": _number,
    "test_accuracy_per_epoch": _per_epoch, "train_seconds": _number,
    "options": lambda v: isinstance(v, dict), "state_params": lambda v: isinstance(v, int) and v >= 0,
    "dataset": lambda v: isinstance(v, str), "seeds": lambda v: isinstance(v, list),
    "train_loss_per_epoch": _per_epoch, "compile_seconds": _number, "wall_seconds": _number,
    "epochs": lambda v: isinstance(v, int), "recipe": lambda v: isinstance(v, dict),
    "model": lambda v: isinstance(v, str), "train_examples": lambda v: isinstance(v, int) and v >= 0,
    "code": lambda v: isinstance(v, dict),
}


@dataclass(frozen=True)
class StudyRecord:
    """One finished member: what was trained, what it costs, how it did, and what produced it."""

    family: str  # e.g. "allconv6", "mobilenet_v1"
    variant: str  # registry name with /width, unique in a study
    label: str  # e.g. "16,16,32,32,64" or "alpha=0.5"
    learnable_params: int
    macs: int  # forward multiply-adds of one example
    input_shape: list[int]  # per example, after any padding
    accuracies: list[float]  # final test accuracy per seed
    mean_accuracy: float
    std_accuracy: float  # over seeds, ddof=0
    test_accuracy_per_epoch: list[list[float]]  # [epoch][seed]
    train_seconds: float
    options: dict[str, Any] = field(default_factory=dict)  # builder options, e.g. {"stem_stride": 1}
    state_params: int | None = None  # BatchNorm running statistics
    dataset: str = ""  # e.g. "mnist5k (4000 train / 1000 test, 28x28x1)"
    seeds: list[int] = field(default_factory=list)
    train_loss_per_epoch: list[list[float]] = field(default_factory=list)
    convergence: dict[str, Any] | None = None  # jaxcnn.study.stats.convergence of the curves
    compile_seconds: float | None = None
    wall_seconds: float | None = None  # the member's whole run, compile and evaluation included
    epochs: int | None = None
    pad_to: int | None = None
    recipe: dict[str, Any] = field(default_factory=dict)  # the TrainConfig, as a dict
    device: str = ""
    jax: str = ""
    python: str = ""
    versions: dict[str, str] = field(default_factory=dict)
    command: str = ""  # the command line that produced it
    model: str = ""  # the registry name (with /width) that was built, when it differs from ``variant``
    train_examples: int | None = None  # training-set size, for the time per image
    code: dict[str, Any] = field(default_factory=dict)  # the code that ran: git commit + dirty, or the version
    extra: dict[str, Any] = field(default_factory=dict)  # keys this version does not know, kept as they were

    @classmethod
    def from_json(cls, value: Any, where: str) -> StudyRecord:
        """The record in a decoded JSON value, or StudyError naming ``where`` and the first bad field."""
        if not isinstance(value, dict):
            raise StudyError(f"{where}: not a study record (a JSON object is expected, got {type(value).__name__})")
        missing = [k for k in REQUIRED if k not in value]
        if missing:
            raise StudyError(f"{where}: not a study record (missing {', '.join(missing)})")
        for name, ok in _CHECKS.items():  # null stands for "not recorded" only where the default is None
            if name in value and (name not in _NULLABLE or value[name] is not None) and not ok(value[name]):
                raise StudyError(f"{where}: field {name!r} of a study record cannot be {str(value[name])[:60]}")
        if isinstance(value.get("recipe"), dict):  # under today's TrainConfig names (renamed fields, values)
            value = {**value, "recipe": fill_new_fields(value["recipe"], {})}
        known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        return cls(**{k: v for k, v in value.items() if k in known},
                   extra={k: v for k, v in value.items() if k not in known})

    @property
    def seconds_per_image(self) -> float | None:
        """Measured training seconds per image and seed (None when the record lacks the counts)."""
        if not self.train_examples or not self.epochs or not self.accuracies:
            return None
        return self.train_seconds / (self.train_examples * self.epochs * len(self.accuracies))

    def to_json(self) -> dict[str, Any]:
        """The record as one JSON object (the ``extra`` keys back at the top level)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        return {**out, **self.extra}


REQUIRED = tuple(f.name for f in dataclasses.fields(StudyRecord) if f.default is dataclasses.MISSING
                 and f.default_factory is dataclasses.MISSING)
_NULLABLE = frozenset(f.name for f in dataclasses.fields(StudyRecord) if f.default is None)
CSV_FIELDS = (
    "family", "variant", "label", "learnable_params", "state_params", "macs", "input_shape", "dataset",
    "accuracies", "mean_accuracy", "std_accuracy", "train_seconds", "compile_seconds", "epochs", "seeds", "device",
    "jax", "command",
)


def read_results(path: Path) -> list[StudyRecord]:
    """Records of a results.jsonl file (none if it does not exist), or StudyError naming the file and line."""
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        return []
    try:
        text = files.read_regular(path, "study results file").decode("utf-8")
    except files.FileProblem as e:
        raise StudyError(f"{e}; move it away (the members' record.json files rebuild it)") from None
    except UnicodeDecodeError as e:
        raise StudyError(f"{path}: not UTF-8 text (byte {e.start}); move it away (the members' record.json "
                         "files rebuild it)") from None
    records = []
    for i, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except (ValueError, RecursionError) as e:  # ValueError: also a 5000-digit number
            raise StudyError(f"{path}:{i}: not valid JSON ({getattr(e, 'msg', type(e).__name__)}); "
                             "fix or delete that line") from None
        records.append(StudyRecord.from_json(value, f"{path}:{i}"))
    return records


def read_record(path: Path) -> StudyRecord:
    """One member's ``record.json``, or StudyError naming the file."""
    try:
        value = json.loads(files.read_regular(path, "study record").decode("utf-8"))
    except files.FileProblem as e:
        raise StudyError(f"{e}; delete it to retrain that member") from None
    except (OSError, ValueError, RecursionError) as e:
        raise StudyError(f"{path}: not a readable study record ({type(e).__name__}: {str(e)[:80]}); "
                         "delete it to retrain that member") from None
    try:
        return StudyRecord.from_json(value, str(path))
    except StudyError as e:
        raise StudyError(f"{e}; delete it to retrain that member") from None


def write_record(path: Path, record: StudyRecord) -> None:
    """Write one member's ``record.json`` atomically."""
    files.atomic_write_text(path, json.dumps(record.to_json()))


def write_results(out: Path, records: list[StudyRecord]) -> None:
    """Rewrite results.jsonl and results.csv atomically from ``records``."""
    files.atomic_write_text(out / "results.jsonl", "".join(json.dumps(r.to_json()) + "\n" for r in records))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_FIELDS, extrasaction="ignore")
    w.writeheader()
    for r in records:
        w.writerow({**r.to_json(), "accuracies": " ".join(f"{a:.4f}" for a in r.accuracies),
                    "input_shape": "x".join(map(str, r.input_shape))})
    files.atomic_write_text(out / "results.csv", buf.getvalue())
