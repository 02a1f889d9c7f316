"""Finished studies side by side (``jaxcnn compare A B ...``): one table, one figure, interval comparisons.

Each study is read as it is on disk (``results.jsonl``, and any member's ``runs/*/record.json``
not merged into it yet); nothing is written into the studies. Members *match* when two studies
hold the same variant (``resnet_cifar/0.5,depth=8``): the second study's accuracies against the
first's give a Welch interval and an exact permutation p (:func:`jaxcnn.study.stats.compare`), and
the table says what else differs between the two runs (builder options such as ``bn``, recipe
fields, data, epochs), since that is usually what the comparison is about.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jaxcnn.storage.files import atomic_write_text, differing
from jaxcnn.study import plot
from jaxcnn.study.record import StudyError, StudyRecord, read_record, read_results
from jaxcnn.study.stats import compare, min_permutation_p

__all__ = ["Study", "compare_figure", "comparisons", "joined_table", "load_study", "write_comparison"]


@dataclass(frozen=True)
class Study:
    """A finished study: a short name, its folder and its records."""

    name: str
    path: Path
    records: list[StudyRecord]


def load_study(path: str | Path, name: str | None = None) -> Study:
    """The records of a study folder, read only; StudyError when it holds none."""
    path = Path(path)
    if not path.is_dir():
        raise StudyError(f"study folder {path} does not exist (or is not a folder); pass folders written by "
                         "jaxcnn study --out")
    records = read_results(path / "results.jsonl")
    seen = {(r.variant, json.dumps(r.options, sort_keys=True, default=str)) for r in records}
    for rec_path in sorted(path.glob("runs/*/record.json")):  # finished but not merged yet (a running shard)
        rec = read_record(rec_path)
        if (rec.variant, json.dumps(rec.options, sort_keys=True, default=str)) not in seen:
            records.append(rec)
    if not records:
        raise StudyError(f"{path} holds no finished member (no results.jsonl line, no runs/*/record.json); "
                         "run the study first")
    return Study(name or path.resolve().name, path, records)


def _named(paths: Sequence[str | Path]) -> list[Study]:
    """Studies with distinct names: the folder's, with its parent's in front where two folders share one."""
    if len(paths) < 2:
        raise StudyError("compare needs at least two study folders")
    names = [Path(p).resolve().name for p in paths]
    out = []
    for p, n in zip(paths, names, strict=True):
        if names.count(n) > 1:
            n = f"{Path(p).resolve().parent.name}/{n}"
        out.append(load_study(p, n))
    if len({s.name for s in out}) < len(out):
        raise StudyError(f"two of the folders are the same study ({', '.join(map(str, paths))}); pass each once")
    return out


def joined_table(studies: Sequence[Study]) -> str:
    """One markdown table of every member of every study."""
    lines = ["| study | variant | options | input | epochs | learnable params | MACs | test accuracy % (mean +- std) "
             "| seeds |", "|---|---|---|---|---:|---:|---:|---:|---:|"]
    for s in studies:
        for r in s.records:
            options = ", ".join(f"{k}={v}" for k, v in (r.options or {}).items()) or "-"
            lines.append(f"| {s.name} | {r.variant} | {options} | {'x'.join(map(str, r.input_shape[:2]))} "
                         f"| {len(r.test_accuracy_per_epoch)} | {r.learnable_params:,} | {r.macs:,} "
                         f"| {100 * r.mean_accuracy:.2f} +- {100 * r.std_accuracy:.2f} | {len(r.accuracies)} |")
    return "\n".join(lines)


def _what_differs(a: StudyRecord, b: StudyRecord) -> list[str]:
    """The run settings of two records of one variant that differ: options, recipe fields, data, epochs."""
    out = [f"{k}: {a.options.get(k)} -> {b.options.get(k)}" for k in differing(a.options or {}, b.options or {})]
    out += [f"{k}: {a.recipe.get(k)} -> {b.recipe.get(k)}" for k in differing(a.recipe or {}, b.recipe or {})
            if a.recipe and b.recipe]
    for field in ("dataset", "epochs", "input_shape"):
        if getattr(a, field) != getattr(b, field):
            out.append(f"{field}: {getattr(a, field)} -> {getattr(b, field)}")
    return out


def comparisons(studies: Sequence[Study]) -> list[dict[str, Any]]:
    """Every variant held by the first study and another: b (the other) against a (the first), with what differs."""
    base, rows = studies[0], []
    for other in studies[1:]:
        mine = {r.variant: r for r in other.records}
        for a in base.records:
            b = mine.get(a.variant)
            if b is None:
                continue
            row: dict[str, Any] = {"variant": a.variant, "a": base.name, "b": other.name, "mean_a": a.mean_accuracy,
                                   "mean_b": b.mean_accuracy, "differs": _what_differs(a, b)}
            if len(a.accuracies) >= 2 and len(b.accuracies) >= 2:
                c = compare(a, b)
                row.update({k: c[k] for k in ("diff", "low", "high", "df", "permutation_p", "exceeds_seed_noise",
                                              "n_a", "n_b")})
            else:
                row.update({"diff": b.mean_accuracy - a.mean_accuracy, "n_a": len(a.accuracies),
                            "n_b": len(b.accuracies)})
            rows.append(row)
    return rows


def comparisons_markdown(rows: Sequence[dict[str, Any]]) -> str:
    """The comparisons as a markdown table, with how to read it."""
    if not rows:
        return "No variant is in the first study and another, so there is nothing to compare member by member."
    lines = ["| variant | a | b | what differs | a % | b % | b - a (points) | 95 % interval | exceeds seed noise? "
             "| permutation p |", "|---|---|---|---|---:|---:|---:|---|---|---:|"]
    for r in rows:
        differs = "; ".join(r["differs"]) or "nothing recorded"
        if "low" in r:
            interval = f"[{100 * r['low']:+.2f}, {100 * r['high']:+.2f}]"
            verdict, p = ("**yes**" if r["exceeds_seed_noise"] else "no"), f"{r['permutation_p']:.2f}"
        else:
            interval, verdict, p = "- (fewer than 2 seeds)", "-", "-"
        lines.append(f"| {r['variant']} | {r['a']} | {r['b']} | {differs} | {100 * r['mean_a']:.2f} "
                     f"| {100 * r['mean_b']:.2f} | {100 * r['diff']:+.2f} | {interval} | {verdict} | {p} |")
    with_seeds = [r for r in rows if "low" in r]
    if with_seeds:
        n = min(min(r["n_a"], r["n_b"]) for r in with_seeds)
        lines += ["", "b - a: difference of the mean final test accuracies; the interval is Welch's t interval "
                  "(unequal variances), and a difference exceeds seed noise when it excludes 0. With "
                  f"{n} seeds an exact permutation test cannot give p below {min_permutation_p(n, n):.3f}."]
    return "\n".join(lines)


def compare_figure(studies: Sequence[Study], stem: Path) -> list[Path]:
    """Accuracy (mean +- std) against parameters and against MACs, two panels, a marker and colour per study."""
    fig = plot._figure(figsize=(13, 5.5))
    axes = fig.subplots(1, 2, sharey=True)
    markers = "osD^v<>P*X"
    drawn = []
    for panel, (cost, label) in zip(axes, (("learnable_params", "learnable parameters"),
                                           ("macs", "multiply-adds per image")), strict=True):
        for k, s in enumerate(studies):
            xs = [getattr(r, cost) for r in s.records]
            ys = [100 * r.mean_accuracy for r in s.records]
            es = [100 * r.std_accuracy for r in s.records]
            panel.errorbar(xs, ys, yerr=es, fmt=markers[k % len(markers)], color=f"C{k % 10}", capsize=3,
                           label=s.name, linestyle="none")
            for r, x, y in zip(s.records, xs, ys, strict=True):
                panel.annotate(plot.short_label(r), (x, y), textcoords="offset points", xytext=(4, 5), fontsize=7)
                if cost == "learnable_params":
                    drawn.append({"study": s.name, "variant": r.variant, "params": r.learnable_params, "macs": r.macs,
                                  "y": r.mean_accuracy, "err": r.std_accuracy, "marker": markers[k % len(markers)]})
        panel.set_xscale("log")
        panel.set_xlabel(f"{label} (log scale)")
        panel.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("test accuracy (%), mean +- std over seeds")
    axes[0].legend()
    fig.suptitle("studies side by side: " + " vs ".join(s.name for s in studies))
    paths = plot._save(fig, stem)
    side = Path(stem).with_suffix(".points.json")
    atomic_write_text(side, json.dumps({"studies": [s.name for s in studies], "points": drawn}, indent=1))
    return paths + [side]


def write_comparison(paths: Sequence[str | Path], out: str | Path) -> tuple[str, list[Path]]:
    """Join the studies at ``paths`` into ``out``: compare.md (table + comparisons), compare.json, the figure.

    Returns (the markdown, the files written).
    """
    studies = _named(paths)
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise StudyError(f"cannot create --out {out} ({e.strerror or e}); choose another --out") from None
    rows = comparisons(studies)
    text = ("## Studies\n\n" + "\n".join(f"- {s.name}: {s.path} ({len(s.records)} members)" for s in studies)
            + "\n\n## Members\n\n" + joined_table(studies)
            + f"\n\n## Matching members, against {studies[0].name}\n\n" + comparisons_markdown(rows))
    atomic_write_text(out / "compare.md", text + "\n")
    atomic_write_text(out / "compare.json", json.dumps({"studies": {s.name: str(s.path) for s in studies},
                                                        "comparisons": rows}, indent=1))
    figure = compare_figure(studies, out / "compare")
    return text, [out / "compare.md", out / "compare.json", *figure]
