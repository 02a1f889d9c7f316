"""The training options of TrainConfig (EMA, gradient accumulation, bf16, label noise) on bundled MNIST 5k.

Command: python experiments/train_options.py --epochs 6 --num-seeds 2 --json results/train_options.json
Runtime: about 10 minutes on the 2-core CPU machine (each variant compiles its own programs).
What it runs: allconv6_bn on mnist5k (4,000 train / 1,000 test), the CLI's recipe (TrainConfig's
defaults with the data's 2-pixel crops), once per variant, K seeds in one program; it reports the
final test accuracy of the raw weights (and of the EMA, where kept), the training and compile
seconds. The variants are whole runs one after another, not interleaved, so their times are
disturbed by whatever else runs on the machine.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, replace

import numpy as np

from jaxcnn import models
from jaxcnn.storage.files import atomic_write_text
from jaxcnn.train import TrainConfig, fit
from jaxcnn.train.prepare import augmentation, prepare

VARIANTS = {
    "float32 (baseline)": {},
    "--ema 0.99": {"ema": 0.99},
    "--accumulate 4": {"accumulate": 4},
    "--precision bf16": {"precision": "bf16"},
    "--label-noise 0.2": {"label_noise": 0.2},
}


def main() -> None:
    """Run every variant and print the markdown table (and write --json)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--num-seeds", type=int, default=2)
    parser.add_argument("--model", default="allconv6_bn")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    prepared = prepare("mnist5k")
    data = prepared.data
    base = TrainConfig(epochs=args.epochs, num_seeds=args.num_seeds, **augmentation("mnist5k", data.x_train.shape[1]))
    rows = []
    for name, change in VARIANTS.items():
        cfg = replace(base, **change)
        res = fit(models.get(args.model, num_classes=data.num_classes), data, cfg, quiet=True)
        ema = res.history[-1].ema.get("test_accuracy")
        rows.append({"variant": name, "config": asdict(cfg), "test_accuracy": res.test_accuracy,
                     "ema_test_accuracy": ema, "train_seconds": res.train_seconds,
                     "compile_seconds": res.compile_seconds,
                     "label_noise_flipped": res.identity.get("label_noise_flipped")})
        print(f"done: {name}", flush=True)
    lines = [f"| {args.model}, {args.epochs} epochs, {args.num_seeds} seeds | test accuracy % (mean) | EMA % | "
             "train s | compile s |", "|---|---:|---:|---:|---:|"]
    for r in rows:
        ema = f"{100 * np.mean(r['ema_test_accuracy']):.2f}" if r["ema_test_accuracy"] else "-"
        lines.append(f"| `{r['variant']}` | {100 * np.mean(r['test_accuracy']):.2f} | {ema} | "
                     f"{r['train_seconds']:.0f} | {r['compile_seconds']:.0f} |")
    print("\n".join(lines))
    if args.json:
        atomic_write_text(args.json, json.dumps({"rows": rows, "table": "\n".join(lines)}, indent=1))


if __name__ == "__main__":
    main()
