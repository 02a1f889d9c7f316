"""Plots of study results (matplotlib, PNG and SVG): accuracy vs cost, curves, filters.

matplotlib is an optional dependency (``pip install 'jaxcnn[experiments]'``); it is
imported inside each function so the library itself never needs it, and each figure is a
Figure of its own (no pyplot), so plotting never switches the backend of the user's session.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from jaxcnn.storage.files import atomic_write_text
from jaxcnn.study.record import StudyRecord
from jaxcnn.study.stats import convergence, pareto_front


def still_improving(r: StudyRecord) -> bool:
    """True when the record's run was still improving at its end (``jaxcnn.study.stats.convergence``)."""
    return convergence(r.test_accuracy_per_epoch, r.train_loss_per_epoch)["converged"] is False


def _figure(**kw: Any):
    """A matplotlib Figure of its own (no pyplot): plotting never switches the user's backend or leaks figures."""
    try:
        from matplotlib.figure import Figure
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise RuntimeError("plotting needs matplotlib: pip install 'jaxcnn[experiments]'") from e
    return Figure(**kw)


def _save(fig, stem: Path) -> list[Path]:
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = []
    for ext in ("png", "svg"):
        tmp = stem.with_name(f".{stem.name}.tmp.{ext}")
        fig.savefig(tmp, dpi=120, bbox_inches="tight", format=ext)
        final = stem.with_suffix(f".{ext}")
        tmp.replace(final)  # atomic: a reader never sees half a picture
        paths.append(final)
    return paths


def short_label(r: StudyRecord) -> str:
    """``allconv6_3_bn`` -> ``_3``, ``mobilenet_v1/0.5`` -> ``0.5``, the family's own base -> ``base``."""
    v = r.variant.removesuffix("_bn")
    rest = v[len(r.family):] if v.startswith(r.family) else v
    return rest.lstrip("/") or "base"


COSTS = {"learnable_params": "learnable parameters", "macs": "multiply-adds per image",
         "seconds_per_image": "measured training seconds per image and seed"}


def _cost(cost: str):
    """The x value of a record for ``cost``: a record field, or ``seconds_per_image`` (measured, per seed)."""
    if cost == "seconds_per_image":
        return lambda r: r.seconds_per_image
    return lambda r: getattr(r, cost)


def accuracy_vs_cost(results: Sequence[StudyRecord], stem: Path, *, cost: str = "learnable_params",
                     title: str = "") -> list[Path]:
    """Test accuracy (mean +- std over seeds) against ``cost`` (log x), one series per family.

    Members still improving at the end of their run are drawn hollow and labelled with a ``*``:
    their accuracy is a lower bound on what more epochs would give. ``cost`` is a record field
    (``learnable_params``, ``macs``) or ``seconds_per_image``; records without a value for it are left out.
    """
    results = [r for r in results if _cost(cost)(r) is not None]
    if not results:
        return []
    fig = _figure(figsize=(8, 5.5))
    ax = fig.subplots()
    families = sorted({r.family for r in results})
    markers = "osD^v<>"
    value = _cost(cost)
    for k, fam in enumerate(families):
        rows = [r for r in results if r.family == fam]
        xs = [value(r) for r in rows]
        ys = [100 * r.mean_accuracy for r in rows]
        es = [100 * r.std_accuracy for r in rows]
        colour, marker = f"C{k % 10}", markers[k % len(markers)]
        # bars alone, then the markers on top: filled where the run converged, hollow where it was still improving
        ax.errorbar(xs, ys, yerr=es, fmt="none", capsize=3, ecolor=colour, zorder=2)
        done = [i for i, r in enumerate(rows) if not still_improving(r)]
        if done:
            ax.plot([xs[i] for i in done], [ys[i] for i in done], marker, color=colour, linestyle="none", label=fam,
                    zorder=3)
        named = bool(done)  # the family is in the legend once
        for i, (r, x, y) in enumerate(zip(rows, xs, ys, strict=True)):
            if still_improving(r):
                ax.plot([x], [y], marker, ms=8, mfc="white", mec=colour, mew=1.5, linestyle="none", zorder=4,
                        label=None if named else fam)
                named = True
            # alternate above/below so neighbouring labels of a dense family do not overprint
            ax.annotate(short_label(r) + ("*" if still_improving(r) else ""), (x, y), textcoords="offset points",
                        xytext=(4, 6 if i % 2 == 0 else -11), fontsize=7)
    if any(still_improving(r) for r in results):
        ax.plot([], [], "o", mfc="white", mec="k", label="* still improving at the end (lower bound)")
    pts = [(value(r), r.mean_accuracy) for r in results]
    front = pareto_front(pts)
    ax.plot([pts[i][0] for i in front], [100 * pts[i][1] for i in front], "k--", lw=1, alpha=0.6,
            label="Pareto frontier")
    ax.set_xscale("log")
    xlabel = COSTS.get(cost, cost)
    if cost == "seconds_per_image" and results[0].device:  # a time is a fact of the device it was measured on
        xlabel += f" on {results[0].device}"
    ax.set_xlabel(xlabel + " (log scale)")
    ax.set_ylabel("test accuracy (%)")
    n_seeds = min(len(r.accuracies) for r in results)
    dataset = results[0].dataset
    ax.set_title(title or f"test accuracy vs {xlabel}, {dataset}\nmean and std over {n_seeds} seeds")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    paths = _save(fig, stem)
    # what was drawn, for readers and tests that cannot count markers in a PNG
    drawn = [{"variant": r.variant, "family": r.family, "x": value(r), "y": r.mean_accuracy,
              "err": r.std_accuracy, "seeds": len(r.accuracies), "still_improving": still_improving(r)}
             for r in results]
    side = Path(stem).with_suffix(".points.json")
    atomic_write_text(side, json.dumps({"cost": cost, "points": drawn,
                                        "pareto": [results[i].variant for i in front]}, indent=1))
    return paths + [side]


def training_curves(results: Sequence[StudyRecord], stem: Path) -> list[Path]:
    """Mean test accuracy per epoch for every entry; dashed (and ``*`` in the legend) if still improving."""
    fig = _figure(figsize=(8, 5.5))
    ax = fig.subplots()
    for r in results:
        curve = [100 * float(np.mean(h)) for h in r.test_accuracy_per_epoch]
        improving = still_improving(r)
        ax.plot(range(1, len(curve) + 1), curve, label=r.variant + (" *" if improving else ""), lw=1,
                linestyle="--" if improving else "-")
    ax.set_xlabel("epoch")
    ax.set_ylabel("test accuracy (%), mean over seeds")
    if any(still_improving(r) for r in results):
        ax.set_title("dashed, *: still improving over the last fifth of its epochs")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    paths = _save(fig, stem)
    return paths


def filter_grid(kernels: dict[str, np.ndarray], stem: Path, *, max_filters: int = 64) -> list[Path]:
    """First-layer filters of each model, one row per model (each filter scaled to its own range)."""
    names = list(kernels)
    cols = min(max_filters, max(k.shape[-1] for k in kernels.values()))
    fig = _figure(figsize=(cols * 0.35, len(names) * 0.45 + 0.3))
    axes = fig.subplots(len(names), cols, squeeze=False)
    for r, name in enumerate(names):
        w = np.asarray(kernels[name])  # (kh, kw, cin, cout)
        for c in range(cols):
            ax = axes[r][c]
            ax.axis("off")
            if c >= w.shape[-1]:
                continue
            f = w[..., c]
            f = f[..., 0] if f.shape[-1] == 1 else f[..., :3]
            f = (f - f.min()) / (f.max() - f.min() + 1e-12)
            ax.imshow(f, cmap="gray" if f.ndim == 2 else None, interpolation="nearest")
        axes[r][0].set_title(name, fontsize=6, loc="left")
    paths = _save(fig, stem)
    return paths


def redundancy_plot(rows: Sequence[dict[str, Any]], stem: Path) -> list[Path]:
    """Bars per model: near-negated and near-duplicate first-layer filter fractions, trained vs at init."""
    fig = _figure(figsize=(9, 4.5))
    ax = fig.subplots()
    x = np.arange(len(rows))
    wdt = 0.2
    for k, (key, label) in enumerate([("negated", "near-negated (trained)"), ("negated_init", "near-negated (init)"),
                                      ("duplicate", "near-duplicate (trained)"),
                                      ("duplicate_init", "near-duplicate (init)")]):
        ax.bar(x + (k - 1.5) * wdt, [100 * r[key] for r in rows], wdt, label=label)
    ax.set_xticks(x, [r["variant"] for r in rows], rotation=30, fontsize=7)
    ax.set_ylabel("% of first-layer filters")
    ax.set_title("first-layer filters with a partner of |cosine| > 0.9")
    ax.legend(fontsize=7)
    paths = _save(fig, stem)
    return paths


def benchmark_speeds(report: dict[str, Any], stem: Path) -> list[Path]:
    """Bars of images/s per benchmark row (log scale), each labelled with its percent of the measured peak."""
    from jaxcnn.bench.rows import BenchRow  # here: importing jaxcnn.bench loads the benchmark harness

    # the rows of a live report are BenchRows; those of a report read back from its JSON are dicts
    rows = [r if isinstance(r, BenchRow) else BenchRow.from_dict(r) for r in report["rows"]]
    labels = [f"{r.model} {r.input.split('x')[0]}px b{r.batch} {r.dtype[:4]} {r.measure}" for r in rows]
    fig = _figure(figsize=(9, 0.3 * len(rows) + 1.5))
    ax = fig.subplots()
    ax.barh(range(len(rows)), [r.images_per_s for r in rows])
    ax.set_yticks(range(len(rows)), labels, fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel("images/s (log)")
    for i, r in enumerate(rows):
        if r.percent_of_peak is not None:
            ax.annotate(f"{r.percent_of_peak:.0f}% of peak", (r.images_per_s, i), xytext=(3, -3),
                        textcoords="offset points", fontsize=6)
    ax.invert_yaxis()
    ax.set_title(f"{report['device']['backend']} {report['device'].get('cpu', report['device']['device_kind'])}")
    return _save(fig, stem)


def heatmap(results: Sequence[StudyRecord], stem: Path, *, x: str, y: str,
            value: Callable[[StudyRecord, str], Any]) -> list[Path]:
    """Mean test accuracy over a grid of two numeric axes (the WRN paper's depth x width table as a figure).

    ``value(record, axis)`` gives a record's value on an axis; each cell shows mean +- std over seeds
    (blank where no member finished). One figure per family when several families vary the same axes.
    """
    xs = sorted({value(r, x) for r in results})
    ys = sorted({value(r, y) for r in results})
    cells = {(value(r, x), value(r, y)): r for r in results}
    grid = np.full((len(ys), len(xs)), np.nan)
    for (vx, vy), r in cells.items():
        grid[ys.index(vy), xs.index(vx)] = 100 * r.mean_accuracy
    fig = _figure(figsize=(1.4 * len(xs) + 2.5, 0.9 * len(ys) + 1.8))
    ax = fig.subplots()
    image = ax.imshow(grid, cmap="viridis", aspect="auto", origin="lower")
    fig.colorbar(image, ax=ax, label="test accuracy (%), mean over seeds")
    ax.set_xticks(range(len(xs)), [f"{v:g}" if isinstance(v, float) else str(v) for v in xs])
    ax.set_yticks(range(len(ys)), [f"{v:g}" if isinstance(v, float) else str(v) for v in ys])
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    finite = grid[np.isfinite(grid)]
    middle = float(finite.mean()) if finite.size else 0.0
    for (vx, vy), r in cells.items():
        i, j = ys.index(vy), xs.index(vx)
        ax.text(j, i, f"{100 * r.mean_accuracy:.1f}\n+-{100 * r.std_accuracy:.1f}", ha="center", va="center",
                fontsize=8, color="black" if grid[i, j] > middle else "white")
    n_seeds = min(len(r.accuracies) for r in results)
    ax.set_title(f"{results[0].family}: test accuracy over {y} x {x}, {n_seeds} seeds (mean +- std)")
    paths = _save(fig, stem)
    side = Path(stem).with_suffix(".cells.json")
    atomic_write_text(side, json.dumps({"x": x, "y": y, "x_values": xs, "y_values": ys, "cells": [
        {"variant": r.variant, x: vx, y: vy, "mean": r.mean_accuracy, "std": r.std_accuracy}
        for (vx, vy), r in sorted(cells.items())]}, indent=1))
    return paths + [side]


def error_edf(results: Sequence[StudyRecord], stem: Path) -> list[Path]:
    """Empirical distribution of test error per family (the design-space view of a sampled study).

    For each family, the fraction of its members with error at most e, against e (mean over seeds):
    a curve further left is a family whose members are better whatever was drawn.
    """
    fig = _figure(figsize=(7, 5))
    ax = fig.subplots()
    for fam in sorted({r.family for r in results}):
        errors = np.sort([100 * (1 - r.mean_accuracy) for r in results if r.family == fam])
        ax.step(errors, np.arange(1, len(errors) + 1) / len(errors), where="post", label=f"{fam} (n={len(errors)})")
    ax.set_xlabel("test error (%), mean over seeds")
    ax.set_ylabel("fraction of members with error <= e")
    ax.set_ylim(0, 1.02)
    ax.grid(True, alpha=0.3)
    ax.legend()
    ax.set_title("error EDF of the sampled members")
    return _save(fig, stem)


def confusion_matrix(counts: np.ndarray, class_names: Sequence[str], stem: Path, *, title: str = "") -> list[Path]:
    """A confusion matrix (rows: true class, columns: predicted), each row as shares of that class's examples.

    ``counts`` may be fractional (a mean over seeds); cells show the row share in percent.
    """
    counts = np.asarray(counts, np.float64)
    rows = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1e-12)
    n = len(class_names)
    side = min(0.45 * n + 2.5, 16)
    fig = _figure(figsize=(side + 1.2, side))
    ax = fig.subplots()
    image = ax.imshow(100 * rows, cmap="Blues", vmin=0, vmax=100)
    fig.colorbar(image, ax=ax, label="share of the true class (%)")
    ax.set_xticks(range(n), list(class_names), rotation=90 if n > 6 else 0, fontsize=7 if n > 12 else 9)
    ax.set_yticks(range(n), list(class_names), fontsize=7 if n > 12 else 9)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    if n <= 20:  # beyond that the numbers overprint; the colours still read
        for i in range(n):
            for j in range(n):
                if counts[i, j]:
                    ax.text(j, i, f"{100 * rows[i, j]:.0f}", ha="center", va="center", fontsize=7,
                            color="white" if rows[i, j] > 0.5 else "black")
    ax.set_title(title or "confusion matrix")
    return _save(fig, stem)
