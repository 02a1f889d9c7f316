"""Studies: train a set of members (model x width x options), K seeds each, and report them.

Public import paths:

* ``jaxcnn.study`` — :func:`run_study`, :class:`Member`, :class:`Task`, :func:`merge_results`,
  :class:`StudyRecord`, :class:`StudyError` (the runner and its record);
* ``jaxcnn.study.record`` — the one typed schema of ``record.json`` / ``results.jsonl`` / ``results.csv``;
* ``jaxcnn.study.stats`` — Welch intervals, convergence, Pareto fronts, filter redundancy;
* ``jaxcnn.study.plot`` — figures (matplotlib ``Figure`` objects, no pyplot);
* ``jaxcnn.study.shard`` — ``--shard I/N`` and SLURM array selection of members.
"""

from jaxcnn.study.record import CSV_FIELDS, REQUIRED, StudyError, StudyRecord, read_results
from jaxcnn.study.runner import (
    Member,
    Task,
    finished_results,
    load_first_layers,
    member_key,
    merge_results,
    results_lock,
    run_folder,
    run_member,
    run_study,
)

__all__ = [
    "CSV_FIELDS", "REQUIRED", "Member", "StudyError", "StudyRecord", "Task", "finished_results", "load_first_layers",
    "member_key", "merge_results", "read_results", "run_folder", "results_lock", "run_member", "run_study",
]
