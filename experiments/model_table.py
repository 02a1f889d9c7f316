"""Print the README's model table: every registered model with its exact counts.

Command: python experiments/model_table.py            (about 1 s, no arrays allocated)
         python experiments/model_table.py --check README.md   (exit 1 if README's table differs)
Every figure comes from jaxcnn.summary at the model's default input and classes.
"""

import argparse
import sys
from pathlib import Path

from jaxcnn import models
from jaxcnn.summary import summary

BEGIN, END = "<!-- model-table:begin -->", "<!-- model-table:end -->"


def table() -> str:
    rows = [
        "| model | input | classes | learnable params | BN state | MACs | receptive field |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for name in models.names():
        e = models.entry(name)
        t = summary(models.get(name), e.input_shape).totals
        shape = "x".join(map(str, e.input_shape))
        rf = t["receptive_field"][0]
        rows.append(
            f"| `{name}` | {shape} | {e.num_classes} | {t['learnable_params']:,} | {t['state_params']:,} "
            f"| {t['macs']:,} | {rf} |"
        )
    return "\n".join(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", type=Path, help="compare with the table between the markers in this file")
    parser.add_argument("--write", type=Path, help="replace the table between the markers in this file")
    args = parser.parse_args()
    text = table()
    target = args.check or args.write
    if target is None:
        print(text)
        return 0
    doc = target.read_text()
    if BEGIN not in doc or END not in doc:
        print(f"{target}: markers {BEGIN} / {END} not found", file=sys.stderr)
        return 2
    head, rest = doc.split(BEGIN, 1)
    current, tail = rest.split(END, 1)
    if args.check:
        if current.strip() != text.strip():
            print(f"{target}: the model table is stale; run python experiments/model_table.py --write {target}",
                  file=sys.stderr)
            return 1
        return 0
    target.write_text(f"{head}{BEGIN}\n{text}\n{END}{tail}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
