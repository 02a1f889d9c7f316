"""Studies: train a set of members (model x width x options), K seeds each, and report them.

Public import paths:

* ``jaxcnn.study`` — :func:`run_study`, :class:`Member`, :class:`Task`, :func:`merge_results`,
  :class:`StudyRecord`, :class:`StudyError` (the runner and its record);
* ``jaxcnn.study.record`` — the one typed schema of ``record.json`` / ``results.jsonl`` / ``results.csv``;
* ``jaxcnn.study.stats`` — Welch intervals, convergence, Pareto fronts, filter redundancy;
* ``jaxcnn.study.plot`` — figures (matplotlib ``Figure`` objects, no pyplot);
* ``jaxcnn.study.plan`` — an ablation as data: models x axes -> checked members (``jaxcnn study``);
* ``jaxcnn.study.report`` — table.md, comparisons.md and the figures every study writes;
* ``jaxcnn.study.shard`` — ``--shard I/N`` and SLURM array selection of members;
* ``jaxcnn.study.compare`` — finished studies side by side (``jaxcnn compare``).
"""

import importlib
from typing import TYPE_CHECKING, Any

# Names load their module on first use (PEP 562): `jaxcnn.study.plan` and `.record` (what the CLI needs to
# parse a study) cost no training engine; `from jaxcnn.study import run_study` loads it.
_WHERE = {
    "CSV_FIELDS": "record", "REQUIRED": "record", "StudyError": "record", "StudyRecord": "record",
    "read_results": "record", "Member": "member", "Task": "member", "load_first_layers": "runner",
    "merge_results": "runner", "results_lock": "runner", "run_member": "runner", "run_study": "runner",
    "finished_results": "runner", "member_key": "runner", "run_folder": "runner",
}

if TYPE_CHECKING:
    from jaxcnn.study.member import Member, Task
    from jaxcnn.study.record import CSV_FIELDS, REQUIRED, StudyError, StudyRecord, read_results
    from jaxcnn.study.runner import (
        finished_results,
        load_first_layers,
        member_key,
        merge_results,
        results_lock,
        run_folder,
        run_member,
        run_study,
    )


def __getattr__(name: str) -> Any:
    """Load the submodule that defines ``name``."""
    if name in _WHERE:
        return getattr(importlib.import_module(f"jaxcnn.study.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'jaxcnn.study' has no attribute {name!r}")


__all__ = [
    "CSV_FIELDS", "REQUIRED", "Member", "StudyError", "StudyRecord", "Task", "finished_results", "load_first_layers",
    "member_key", "merge_results", "read_results", "run_folder", "results_lock", "run_member", "run_study",
]
