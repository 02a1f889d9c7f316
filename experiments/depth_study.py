"""Depth study (book chapter 4): allconv5 ... allconv8_3, plus SPEC A's "fewer layers, more parameters" pair.

Command: python experiments/depth_study.py               # -> runs/depth_study/ (git-ignored), resumable
         python experiments/depth_study.py --reference   # -> results/depth_study/ (committed reference)
Runtime: about 25 minutes on the 2-core CPU machine (allconv8_1 keeps 28x28 maps for two
         layers and costs ~15x allconv6 per image); add --num-seeds 1 to cut it to a third.
Output: {results.jsonl, results.csv, accuracy_vs_params.*, accuracy_vs_macs.*, curves.*, table.md}
        (table.md's "converged?" column: was each member still improving over its last fifth of epochs?)

Members: the allconv depth family exactly as the book's prototxts define it (kernel/stride/
channels per layer in jaxcnn/models/allconv.py), each with BatchNorm before the ReLU, and
SPEC A's pair spec_a_4conv / spec_a_3conv with biases and a 512-unit hidden layer: at 28x28
input that width makes the 3-conv network the one with MORE parameters (its first FC layer
sees a 3x3x128 map instead of 1x1x256), the seeds/000 paradox at a size that fits MNIST.
Recipe: as in width_study.py (SGD momentum 0.9, lr 0.05 cosine, wd 5e-4, batch 125, crop 2),
10 epochs, 3 seeds trained together. Resumable; --quick is the CI smoke test.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace

from study_common import epochs_study_main

from jaxcnn.models.allconv import DEPTH_FAMILY
from jaxcnn.study import Member
from jaxcnn.study.record import StudyRecord
from jaxcnn.train import TrainConfig


def members(args: argparse.Namespace, base: TrainConfig) -> list[Member]:
    recipe = replace(base, epochs=args.epochs)
    out = [
        Member("allconv depth", name, " ".join(f"{k}x{k}/{s}:{c}" for k, s, c in convs), {"bn": True}, recipe)
        for name, convs in DEPTH_FAMILY.items()
    ]
    out += [
        Member("SPEC A pair", "spec_a_4conv", "4 conv-pool + FC512", {"bias": True, "hidden": 512}, recipe),
        Member("SPEC A pair", "spec_a_3conv", "3 conv-pool + FC512", {"bias": True, "hidden": 512}, recipe),
    ]
    return out


def pairs(records: list[StudyRecord]) -> list[tuple[str, str, str]]:
    """SPEC A's pair: does the 3-conv network with more parameters beat the 4-conv one?"""
    return [("fewer layers, more parameters (SPEC A)", "spec_a_4conv", "spec_a_3conv")]


def main(argv: list[str] | None = None) -> int:
    """Run the study (see the module docstring and ``--help``)."""
    return epochs_study_main(argv, __doc__, "depth_study", members, pairs)


if __name__ == "__main__":
    sys.exit(main())
