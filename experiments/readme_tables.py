"""Write (or check) the generated sections of README.md from the library and committed results.

Command: python experiments/readme_tables.py --write README.md    (about 2 s)
         python experiments/readme_tables.py --check README.md    (exit 1 if a section is stale)
Sections sit between <!-- NAME:begin --> and <!-- NAME:end --> markers:
  model-table    every registered model, counts from jaxcnn.summary (no arrays allocated)
  train-config   every TrainConfig field with its default and help (jaxcnn.train.config)
  width-study    results/width_study/table.md   (python experiments/width_study.py --reference)
  width-comparisons results/width_study/comparisons.md (the same run: differences with 95 % intervals)
  mnist-training results/mnist5k_*/result.json  (jaxcnn train ..., commands in README)
  train-speed    results/train_speed.json       (python experiments/train_speed.py --json ...)
  train-options  results/train_options.json     (python experiments/train_options.py --json ...)
  benchmark      results/benchmark/report.md    (python experiments/benchmark.py)
  peers          results/peers.md               (python experiments/compare_peers.py --markdown ...)
A results section whose file is absent is left as it is, so nothing is typed by hand.
"""

import argparse
import json
import sys
from pathlib import Path

from jaxcnn import models
from jaxcnn.storage import files
from jaxcnn.storage.files import atomic_write_text
from jaxcnn.study.record import read_results
from jaxcnn.summary import summary

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "results"


def model_table() -> str:
    rows = [
        "| model | input | classes | learnable params | BN state | MACs | receptive field |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for name in models.names():
        e = models.entry(name)
        t = summary(models.get(name), e.input_shape).totals
        shape = "x".join(map(str, e.input_shape))
        rows.append(
            f"| `{name}` | {shape} | {e.num_classes} | {t.learnable_params:,} | {t.state_params:,} "
            f"| {t.macs:,} | {t.receptive_field[0]} |"
        )
    return "\n".join(rows)


def train_config_table() -> str:
    from dataclasses import fields

    from jaxcnn.train.config import TrainConfig

    rows = ["| field | default | meaning |", "|---|---|---|"]
    for f in fields(TrainConfig):
        meaning = f.metadata["help"]
        if "cli_default" in f.metadata:
            meaning += f"; `jaxcnn train`/`study` default: {f.metadata['cli_default']}"
        rows.append(f"| `{f.name}` | `{f.default!r}` | {meaning.replace('|', '/')} |")
    return "\n".join(rows)


def _text(path: Path) -> str:
    """A committed result file's text, through the package's regular-file policy (a FIFO is refused, not waited on)."""
    return files.read_regular(path, "results file").decode("utf-8")


def width_study() -> str | None:
    path = RESULTS / "width_study" / "table.md"
    if not path.exists():
        return None
    records = read_results(RESULTS / "width_study" / "results.jsonl")
    wall = sum(r.wall_seconds or 0.0 for r in records)
    return (_text(path).strip() + f"\n\nSum of per-model wall times: {wall / 60:.1f} min "
            f"({records[0].device}, jax {records[0].jax}).")


def mnist_training() -> str | None:
    found = sorted(RESULTS.glob("mnist5k_*/result.json"))
    if not found:
        return None
    rows = ["| model | options | epochs | seeds | test accuracy % (mean +- std) | per seed | train s |",
            "|---|---|---:|---:|---:|---|---:|"]
    for path in found:
        r = json.loads(_text(path))
        opts = ", ".join(f"{k}={v}" for k, v in r["options"].items()) or "-"
        seeds = " ".join(f"{100 * a:.1f}" for a in r["test_accuracy"])
        rows.append(f"| `{r['model']}` | {opts} | {r['config']['epochs']} | {len(r['seeds'])} "
                    f"| {100 * r['mean']:.2f} +- {100 * r['std']:.2f} | {seeds} | {r['train_seconds']:.0f} |")
    return "\n".join(rows)


def train_speed() -> str | None:
    path = RESULTS / "train_speed.json"
    if not path.exists():
        return None
    r = json.loads(_text(path))
    m = r["median"]
    return "\n".join([
        "| path | images/s (median) | ratio to raw JAX |",
        "|---|---:|---:|",
        f"| compiled chunks, data on the device (`loop=\"device\"`) | {m['device']:,.0f} "
        f"| {m['device'] / m['raw']:.2f} |",
        f"| one step per host batch (`loop=\"host\"`) | {m['host']:,.0f} | {m['host'] / m['raw']:.2f} |",
        f"| hand-written raw-JAX step | {m['raw']:,.0f} | 1.00 |",
        "",
        f"K = 4 seeds in one program, 2 epochs on 2,048 MNIST images, wall time with compilation: "
        f"{r['vmap_seconds']:.1f} s under vmap, {r['unroll_seconds']:.1f} s unrolled (the CPU default), "
        f"{r['separate_seconds']:.1f} s as 4 separate runs; largest per-seed difference from the separate runs: "
        f"test accuracy {r['max_accuracy_difference']:.4f}, final train loss {r['max_loss_difference']:.1e}, "
        f"parameters {r['max_param_difference']:.1e} (relative).",
    ])


def text_file(rel: str) -> str | None:
    path = RESULTS / rel
    return _text(path).strip() if path.exists() else None


SECTIONS = {
    "model-table": model_table,
    "train-config": train_config_table,
    "width-study": width_study,
    "width-comparisons": lambda: text_file("width_study/comparisons.md"),
    "mnist-training": mnist_training,
    "train-speed": train_speed,
    "train-options": lambda: json.loads(_text(RESULTS / "train_options.json"))["table"]
    if (RESULTS / "train_options.json").exists() else None,
    "benchmark": lambda: text_file("benchmark/report.md"),
    "peers": lambda: text_file("peers.md"),
}


def replace_section(doc: str, name: str, body: str) -> str | None:
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    if begin not in doc or end not in doc:
        return None
    head, rest = doc.split(begin, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{begin}\n{body}\n{end}{tail}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--check", type=Path, help="exit 1 if a generated section of this file is stale")
    group.add_argument("--write", type=Path, help="rewrite the generated sections of this file")
    args = parser.parse_args()
    target = args.check or args.write
    if target is None:
        print(model_table())
        return 0
    doc = _text(target)
    new = doc
    for name, make in SECTIONS.items():
        body = make()
        if body is None:
            continue
        replaced = replace_section(new, name, body)
        if replaced is None:
            print(f"{target}: markers for section {name!r} not found", file=sys.stderr)
            return 2
        new = replaced
    if args.check:
        if new != doc:
            print(f"{target}: generated sections are stale; run python experiments/readme_tables.py --write {target}",
                  file=sys.stderr)
            return 1
        return 0
    atomic_write_text(target, new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
