"""Width study (seeds/004): what does width buy, per parameter and per multiply-add?

Command (the README's main command runs exactly this):
    python experiments/width_study.py                 # -> runs/width_study/ (git-ignored), resumable
    python experiments/width_study.py --reference     # -> results/width_study/, README's tables and figures
Output: {results.jsonl, results.csv, table.md, comparisons.md, accuracy_vs_params.{png,svg},
         accuracy_vs_macs.{png,svg}, curves.{png,svg}, filters.{png,svg}, redundancy.{png,svg,md}}

Models: allconv6 and its eight width variants allconv6_1 ... allconv6_8 (SPEC.md's channel
table; BatchNorm before each ReLU, ``--no-bn`` for the plain book version) and MobileNet v1
at alpha 0.25, whose 215,498 parameters all but equal allconv6_8's 215,722: the cleanest
per-parameter comparison, and (by the costs below) the only MobileNet the 15-minute budget
holds at a fair recipe. ``--alphas 0.5,0.25`` adds alpha 0.5 (823k parameters, 1.5x the
baseline's; about 2x alpha 0.25's time), ``--alphas 1.0,0.75,0.5,0.25`` (or ``--full``) the
paper's whole series (all four: about 10x alpha 0.25's time). Data: bundled real MNIST 5,000,
stratified 4,000 train / 1,000 test (``--data`` takes cifar10:PATH, folder:PATH, ... too).

Recipe, one per family, each with that family's standard small-input form:
  both      SGD momentum 0.9, lr 0.05 with cosine decay to 0, weight decay 5e-4 on conv/dense
            kernels only, batch 125 (4,000 / 125 = 32 full steps per epoch, the same for both
            families), random crops after 2-pixel padding (4 for inputs >= 32; flips only for
            non-digit data), 3 seeds per model trained together in one compiled program.
  allconv6  the 28x28 digits as stored (the book's network is built for them), 10 epochs.
  MobileNet v1  the paper's stride-2 stem (then four more stride-2 layers) would leave a 28x28
            digit at 1x1 before its last stride, so it gets the usual small-input adaptation:
            digits zero-padded to 32x32 (as LeNet-5 fed MNIST; every digit pixel and the
            normalisation stay as allconv6 sees them) and stem_stride=1 (the CLI's
            ``--option stem_stride=1``), so its last maps are 2x2; 15 epochs, because it starts
            slower (its first 2-3 epochs are near chance).
How far from a plateau that is: 30-epoch cosine runs (README, Training) reach 98.6 %
(allconv6_bn) and 96.8 % (mobilenet_v1/0.25); the table's "converged?" column and the hollow
markers and dashed curves of the figures show, for every member, whether its own run was still
improving over its last fifth of epochs (jaxcnn.study.stats.convergence). comparisons.md gives,
for each comparison README's findings make, the difference of the means with a 95 % Welch
interval over seeds and whether it exceeds the seed noise (jaxcnn.study.stats.compare).

Budget: the default aims at the 15-minute limit on the 2-core CPU machine (README gives the
measured figure of the reference run). What it costs on a fresh clone with empty caches (2-core Xeon,
family 6 model 167, 2026-12-04; 431 s in all): the nine allconv6 members 5-26 s of training each (10
epochs, 3 seeds) plus 15-20 s each to tune the compile options, compile, initialise and evaluate, 249 s
together; MobileNet v1 0.25 in its 32x32, stem-stride-1 form (4.2x the multiply-adds of the 28x28
stride-2 form) 108 s of training and 58 s of the rest; data, tables and figures 16 s. Alpha 0.5 takes
about twice alpha 0.25's time. So MobileNet dominates the time, and a faster depthwise convolution shortens it directly.
``--epochs-allconv``, ``--epochs-mobilenet``, ``--num-seeds`` and ``--alphas`` change the recipe;
``--full`` is 30 epochs for both families, all four alphas and 5 seeds (an exact permutation
test of 5 against 5 seeds can reach p = 0.008; of 3 against 3 never below 0.10), without a
time limit (hours on that machine).

Interrupted? Rerun the same command: finished models are skipped and the unfinished one
resumes from its last epoch checkpoint. On a cluster: ``--shard I/N`` (or a SLURM job array, which
picks the shard by itself) runs a fixed subset of the members into the same folder, ``--devices N``
one member per local device; README, On a cluster, has the array script. ``--quick`` (1 epoch,
1 seed, 600 images, its own folder) is the smoke test CI runs.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace

from study_common import add_common_args, fail, finish, load_task, out_dir, parse_only

from jaxcnn.models.allconv import ALLCONV6_CHANNELS
from jaxcnn.study import Member
from jaxcnn.study.record import StudyRecord
from jaxcnn.study.stats import best_other, closest
from jaxcnn.train import TrainConfig

ALPHAS = (1.0, 0.75, 0.5, 0.25)
# (epochs allconv6, epochs MobileNet, seeds, alphas): the default fits the 15-minute budget, --full does not
DEFAULT = (10, 15, 3, (0.25,))
FULL = (30, 30, 5, ALPHAS)
MOBILENET_PAD = 32


def members(args: argparse.Namespace, base: TrainConfig) -> list[Member]:
    suffix = "" if args.no_bn else "_bn"
    conv = replace(base, epochs=args.epochs_allconv)
    mob = replace(base, epochs=args.epochs_mobilenet)
    out = [
        Member("allconv6", f"{name}{suffix}", ",".join(map(str, ch)), {}, conv)
        for name, ch in ALLCONV6_CHANNELS.items()
    ]
    out += [Member("mobilenet_v1", f"mobilenet_v1/{a}", f"alpha={a}", {"stem_stride": 1}, mob, pad_to=MOBILENET_PAD)
            for a in args.alphas]
    return out


def pairs(records: list[StudyRecord]) -> list[tuple[str, str, str]]:
    """The comparisons README's findings rest on, as (question, a, b): b - a is reported."""
    names = {r.variant for r in records}
    suffix = "_bn" if "allconv6_bn" in names or "allconv6_1_bn" in names else ""
    base, one = f"allconv6{suffix}", f"allconv6_1{suffix}"
    out = []
    if (best := best_other(records, base)) is not None:
        out.append(("is the baseline best? (best other allconv6 vs baseline)", base, best.variant))
    for k, part in ((2, "conv1-2"), (3, "conv3-4"), (4, "conv5")):
        out.append((f"doubling {part} of _1", one, f"allconv6_{k}{suffix}"))
    out.append(("half width (_5) vs baseline", base, f"allconv6_5{suffix}"))
    out.append(("_7 (conv3-4 of _5 doubled) vs baseline", base, f"allconv6_7{suffix}"))
    mobilenets = sorted((r for r in records if r.family == "mobilenet_v1"), key=lambda r: r.learnable_params)
    for small, big in zip(mobilenets, mobilenets[1:], strict=False):
        out.append(("MobileNet: next larger alpha", small.variant, big.variant))
    for m in mobilenets:
        if (near := closest(records, m, "allconv6")) is not None:
            ratio = m.learnable_params / near.learnable_params
            out.append((f"MobileNet vs allconv6 of similar size ({ratio:.2g}x its params)", near.variant,
                        m.variant))
    return out


def _alphas(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(a) for a in text.split(",") if a.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"--alphas takes comma-separated numbers, got {text!r}") from None
    if not values or any(not a > 0 for a in values):
        raise argparse.ArgumentTypeError(f"--alphas takes positive width multipliers, got {text!r}")
    return values


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(parser, study="width_study", num_seeds=None)
    parser.add_argument("--epochs-allconv", type=int, default=None, help=f"allconv6 epochs (default {DEFAULT[0]})")
    parser.add_argument("--epochs-mobilenet", type=int, default=None,
                        help=f"MobileNet v1 epochs (default {DEFAULT[1]})")
    parser.add_argument("--alphas", type=_alphas, default=None,
                        help="MobileNet v1 width multipliers (default " + ",".join(map(str, DEFAULT[3])) + ")")
    parser.add_argument("--full", action="store_true",
                        help=f"the recipe without the 15-minute limit: {FULL[0]}/{FULL[1]} epochs, {FULL[2]} seeds")
    parser.add_argument("--no-bn", action="store_true", help="train the plain allconv6 variants (no BatchNorm)")
    args = parser.parse_args(argv)
    preset = FULL if args.full else DEFAULT
    for key, value in zip(("epochs_allconv", "epochs_mobilenet", "num_seeds", "alphas"), preset, strict=True):
        if getattr(args, key) is None:
            setattr(args, key, value)
    if min(args.epochs_allconv, args.epochs_mobilenet) < 1:
        fail("--epochs-allconv and --epochs-mobilenet must be positive")
    if args.quick:
        args.epochs_allconv = args.epochs_mobilenet = 1
    out = out_dir(args)
    task, base = (None, TrainConfig()) if args.plot_only else load_task(args)
    chosen = parse_only(args, members(args, base))
    return finish(args, chosen, task, out, figures_extra=("filters", "redundancy"), pairs=pairs)


if __name__ == "__main__":
    sys.exit(main())
