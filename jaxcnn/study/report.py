"""What a study writes next to its results: table.md, comparisons.md and every figure.

Shared by ``jaxcnn study`` and the book's study scripts (experiments/), so every study reports
the same way: a table with a "converged?" column, Welch intervals for the named comparisons,
accuracy against parameters, multiply-adds and measured training time per image (error bars,
Pareto frontier, hollow markers for runs still improving), training curves, and, when two
numeric axes vary, a heatmap of mean accuracy over the grid per family, and for a sampled study
the empirical distribution of errors (EDF) per family.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from jaxcnn.storage.files import atomic_write_text
from jaxcnn.study import plot
from jaxcnn.study import stats as study_stats
from jaxcnn.study.record import StudyError, StudyRecord
from jaxcnn.study.runner import load_first_layers, results_lock
from jaxcnn.study.stats import comparisons_markdown, convergence

__all__ = ["Pairs", "converged_cell", "figures", "table", "write_report"]

# records -> the comparisons the findings rest on, as (question, variant a, variant b): b - a is reported
Pairs = Callable[[list[StudyRecord]], list[tuple[str, str, str]]]


def converged_cell(r: StudyRecord) -> str:
    """'yes', 'still improving' or '-' (one epoch), with the last-fifth accuracy gain and loss fall."""
    c = convergence(r.test_accuracy_per_epoch, r.train_loss_per_epoch)
    if c["converged"] is None:
        return "- (1 epoch)"
    loss = f", loss -{100 * c['loss_fall']:.0f} %" if c["loss_fall"] is not None else ""
    trend = f"{100 * c['acc_gain']:+.2f} pt{loss} in last {c['window']} ep"
    return f"yes ({trend})" if c["converged"] else f"**still improving** ({trend})"


def table(records: Sequence[StudyRecord]) -> str:
    """Markdown table of a study's records, with each member's input, epochs and convergence."""
    lines = ["| family | variant | channels / alpha | input | epochs | learnable params | MACs "
             "| test accuracy % (mean +- std) | per seed | converged? | train s |",
             "|---|---|---|---|---:|---:|---:|---:|---|---|---:|"]
    for r in records:
        seeds = " ".join(f"{100 * a:.1f}" for a in r.accuracies)
        shape = "x".join(map(str, r.input_shape[:2]))
        described = ", ".join([r.label] * bool(r.label) + [f"{k}={v}" for k, v in (r.options or {}).items()])
        lines.append(f"| {r.family} | {r.variant} | {described} | {shape} "
                     f"| {len(r.test_accuracy_per_epoch)} | {r.learnable_params:,} | {r.macs:,} "
                     f"| {100 * r.mean_accuracy:.2f} +- {100 * r.std_accuracy:.2f} | {seeds} "
                     f"| {converged_cell(r)} | {r.train_seconds:.0f} |")
    return "\n".join(lines)


def _redundancy(out: Path, layers: dict[str, dict[str, Any]]) -> list[Path]:
    """The first-layer filter redundancy figure and table (the channel-complement study's evidence)."""
    rows = []
    for v, k in layers.items():
        trained, init = study_stats.redundancy(k["trained"]), study_stats.redundancy(k["init"])
        rows.append({"variant": v, **trained, "duplicate_init": init["duplicate"], "negated_init": init["negated"]})
    paths = plot.redundancy_plot(rows, out / "redundancy")
    lines = ["| variant | near-negated trained | at init | near-duplicate trained | at init |",
             "|---|---:|---:|---:|---:|"]
    lines += [f"| {r['variant']} | {100 * r['negated']:.0f}% | {100 * r['negated_init']:.0f}% "
              f"| {100 * r['duplicate']:.0f}% | {100 * r['duplicate_init']:.0f}% |" for r in rows]
    atomic_write_text(out / "redundancy.md", "\n".join(lines) + "\n")
    return paths + [out / "redundancy.md"]


def figures(out: Path, records: list[StudyRecord], *, filters: bool = False, redundancy: bool = False,
            grid: tuple[str, str] | None = None, axis_value: Callable[[StudyRecord, str], Any] | None = None,
            edf: bool = False) -> list[Path]:
    """Draw every figure of a study next to its results.

    ``grid=(x, y)`` adds a heatmap per family; ``edf`` the error distribution per family (sampled studies).
    """
    if not records:
        raise StudyError(f"{out / 'results.jsonl'} holds no results to plot; run the study first")
    paths = plot.accuracy_vs_cost(records, out / "accuracy_vs_params", cost="learnable_params")
    paths += plot.accuracy_vs_cost(records, out / "accuracy_vs_macs", cost="macs")
    paths += plot.accuracy_vs_cost(records, out / "accuracy_vs_time", cost="seconds_per_image")
    paths += plot.training_curves(records, out / "curves")
    if grid is not None and axis_value is not None:
        for family in sorted({r.family for r in records}):
            rows = [r for r in records if r.family == family]
            stem = out / ("heatmap" if len({r.family for r in records}) == 1 else f"heatmap_{family}")
            paths += plot.heatmap(rows, stem, x=grid[0], y=grid[1], value=axis_value)
    if edf:
        paths += plot.error_edf(records, out / "error_edf")
    if filters or redundancy:
        layers = load_first_layers(out, records)
        if filters and layers:
            paths += plot.filter_grid({v: k["trained"] for v, k in layers.items()}, out / "filters")
        if redundancy and layers:
            paths += _redundancy(out, layers)
    return paths


def write_report(out: Path, records: list[StudyRecord], *, pairs: Pairs | None = None, **figure_options: Any,
                 ) -> tuple[str, str | None, list[Path]]:
    """Write table.md, comparisons.md (when ``pairs`` names any) and the figures under the results lock.

    Returns (table, comparisons or None, paths written). Shards finishing together take turns.
    """
    with results_lock(out):
        text = table(records)
        atomic_write_text(out / "table.md", text + "\n")
        compared = comparisons_markdown(records, pairs(records)) if pairs and records else None
        paths = [out / "table.md"]
        if compared is not None:
            atomic_write_text(out / "comparisons.md", compared + "\n")
            paths.append(out / "comparisons.md")
        paths += figures(out, records, **figure_options)
    return text, compared, paths
