"""``jaxcnn compare DIR_A DIR_B ...``: finished studies in one table and figure (:mod:`jaxcnn.study.compare`)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from jaxcnn.cli.args import UsageError, add_models_from

__all__ = ["add_compare_parser", "cmd_compare"]


def add_compare_parser(sub: Any) -> None:
    """The ``compare`` subcommand."""
    c = sub.add_parser("compare", help="finished studies side by side: one table, one figure, Welch intervals "
                                       "of the members they share")
    c.add_argument("studies", nargs="+", type=Path, help="study folders (jaxcnn study --out); the first is the "
                                                        "baseline the others are compared with")
    c.add_argument("--out", type=Path, required=True, help="folder for compare.md, compare.json and the figure")
    add_models_from(c)


def cmd_compare(args: argparse.Namespace) -> int:
    """Print the joined table and the comparisons; write them and the figure into --out."""
    from jaxcnn.study.compare import write_comparison
    from jaxcnn.study.record import StudyError

    try:
        text, paths = write_comparison(args.studies, args.out)
    except (StudyError, OSError) as err:
        raise UsageError(str(err)) from None
    print(text)
    print("\nwrote " + ", ".join(str(p) for p in paths))
    return 0
