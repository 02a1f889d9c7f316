"""Channel complement (seeds/004 section 4.1): half the first-layer filters + CReLU vs allconv6.

Command: python experiments/channel_complement.py               # -> runs/channel_complement/ (git-ignored)
         python experiments/channel_complement.py --reference   # -> results/channel_complement/ (committed)
Runtime: about 4 minutes on the 2-core CPU machine.
Output: {results.jsonl, results.csv, table.md, comparisons.md, accuracy_vs_*.*, curves.*, filters.*,
        redundancy.*}

allconv6 (BatchNorm) against allconv6_crelu: conv1 and conv2 have 32 filters each followed
by CReLU (concatenate x and -x, then ReLU), so the next layer still sees 64 channels. The
question is whether learned first layers are redundant enough that the negated copies are
free: compare parameters, MACs, accuracy and training time, and the fraction of trained
allconv6 first-layer filters that have a near-negated partner (redundancy figure).
Recipe as in width_study.py, 10 epochs, 3 seeds trained together. Resumable; --quick for CI.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace

from study_common import epochs_study_main

from jaxcnn.study import Member
from jaxcnn.study.record import StudyRecord
from jaxcnn.train import TrainConfig


def members(args: argparse.Namespace, base: TrainConfig) -> list[Member]:
    recipe = replace(base, epochs=args.epochs)
    return [
        Member("allconv6", "allconv6_bn", "64,64,128,128,256", {}, recipe),
        Member("channel complement", "allconv6_crelu_bn", "32+CReLU,32+CReLU,128,128,256", {}, recipe),
    ]


def pairs(records: list[StudyRecord]) -> list[tuple[str, str, str]]:
    """Does halving conv1-2 and adding CReLU cost accuracy?"""
    return [("half first-layer filters + CReLU vs allconv6", "allconv6_bn", "allconv6_crelu_bn")]


def main(argv: list[str] | None = None) -> int:
    """Run the study (see the module docstring and ``--help``)."""
    return epochs_study_main(argv, __doc__, "channel_complement", members, pairs,
                             figures_extra=("filters", "redundancy"))


if __name__ == "__main__":
    sys.exit(main())
