"""Width study (seeds/004): what does width buy, per parameter and per multiply-add?

Command (the README's main command runs exactly this):
    python experiments/width_study.py
Runtime: about 13 minutes on the 2-core CPU machine (README gives the measured figure).
Output: results/width_study/{results.jsonl, results.csv, accuracy_vs_params.{png,svg},
        accuracy_vs_macs.{png,svg}, curves.{png,svg}, filters.{png,svg}, redundancy.{png,svg}, table.md}

Models: allconv6 and its eight width variants allconv6_1 ... allconv6_8 (SPEC.md's channel
table; BatchNorm before each ReLU, ``--no-bn`` for the plain book version) and MobileNet v1
at alpha 1.0, 0.75, 0.5, 0.25 (paper stem, stride 2). Data: bundled real MNIST 5,000,
stratified 4,000 train / 1,000 test (``--data`` takes cifar10:PATH, folder:PATH, ... too).

Recipe, the same for every member of a family: SGD momentum 0.9, lr 0.05 with cosine decay,
weight decay 5e-4 on conv/dense kernels only, batch 125, random crop after 2-pixel padding
(4 for inputs >= 32; flips only for non-digit data), 3 seeds trained together in one program,
6 epochs. The budget (the whole study, 13 models x 3 seeds, within 15 minutes on the 2-core
CPU machine) is what sets the epochs: with 8 epochs it took 16 minutes there. allconv6 has
converged by epoch 6 (in an 8-epoch run its test accuracy moved < 0.3 points after epoch 6),
MobileNet v1 has not quite (it starts slower: its first epoch is near chance, and it gained
1-1.5 points in epochs 7-8), so its points are a lower bound on what it reaches.

Interrupted? Rerun the same command: finished models are skipped and the unfinished one
resumes from its last epoch checkpoint. ``--quick`` (1 epoch, 1 seed, 600 images) is the
smoke test CI runs.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace

from study_common import add_common_args, finish, load_task, out_dir, parse_only

from jaxcnn.models.allconv import ALLCONV6_CHANNELS
from jaxcnn.study import Member
from jaxcnn.train import TrainConfig

ALPHAS = (1.0, 0.75, 0.5, 0.25)


def members(args: argparse.Namespace, base: TrainConfig) -> list[Member]:
    suffix = "" if args.no_bn else "_bn"
    conv = replace(base, epochs=args.epochs_allconv)
    mob = replace(base, epochs=args.epochs_mobilenet)
    out = [
        Member("allconv6", f"{name}{suffix}", ",".join(map(str, ch)), {}, conv)
        for name, ch in ALLCONV6_CHANNELS.items()
    ]
    out += [Member("mobilenet_v1", f"mobilenet_v1/{a}", f"alpha={a}", {}, mob) for a in ALPHAS]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(parser, default_out="results/width_study")
    parser.add_argument("--epochs-allconv", type=int, default=6)
    parser.add_argument("--epochs-mobilenet", type=int, default=6)
    parser.add_argument("--no-bn", action="store_true", help="train the plain allconv6 variants (no BatchNorm)")
    args = parser.parse_args(argv)
    if args.quick:
        args.epochs_allconv = args.epochs_mobilenet = 1
    task, base = (None, TrainConfig()) if args.plot_only else load_task(args)
    chosen = parse_only(args, members(args, base))
    return finish(args, chosen, task, out_dir(args), figures_extra=("filters", "redundancy"))


if __name__ == "__main__":
    sys.exit(main())
