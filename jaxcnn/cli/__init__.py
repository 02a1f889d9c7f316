"""Command line: ``jaxcnn models | summary | train | bench | study | eval | predict | compare``.

Errors in what the user typed (unknown model, bad width, an input too small for the
network) print one line naming the option or layer and exit with status 2.
``--models-from PATH.py|MODULE`` on every command registers a user's own models first.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from jaxcnn import models
from jaxcnn.cli.args import (
    FLAGS,
    Parser,
    UsageError,
    add_compile_cache_flag,
    add_data_flags,
    add_distributed_flags,
    add_log_flags,
    add_models_from,
    add_recipe_flags,
    as_flags,
    comma_choices,
    comma_list,
    positive,
)
from jaxcnn.cli.commands import cmd_bench, cmd_models, cmd_summary, cmd_train
from jaxcnn.cli.compare import add_compare_parser, cmd_compare
from jaxcnn.cli.evaluate import add_eval_parsers, cmd_eval, cmd_predict
from jaxcnn.cli.study import add_study_parser, cmd_study
from jaxcnn.lowering import compile_cache
from jaxcnn.lowering.compile_options import CHOICES as COMPILE_CHOICES
from jaxcnn.lowering.conv import IMPLS
from jaxcnn.summary import OPTIMIZER_SLOTS

_MEASURES = ("train", "infer")  # jaxcnn.bench.rows.MEASURES, restated: importing jaxcnn.bench loads the engine

__all__ = ["FLAGS", "UsageError", "as_flags", "build_parser", "main", "positive"]

_positive_int = positive(int)
_width = positive(float, "width")


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser of every subcommand."""
    parser = Parser(prog="jaxcnn", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    add_models_from(sub.add_parser("models", help="list registered models"))

    s = sub.add_parser("summary", help="exact per-layer accounting of a model (no arrays allocated)")
    s.add_argument("model", help="registry name with optional /width suffix, e.g. mobilenet_v1/0.5")
    s.add_argument("--width", type=_width, default=None, help="width multiplier (same as the /width suffix)")
    s.add_argument("--input-size", type=_positive_int, default=None, help="input height and width (square)")
    s.add_argument("--in-channels", type=_positive_int, default=None, help="input channels")
    s.add_argument("--num-classes", type=_positive_int, default=None, help="classifier outputs")
    s.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="builder option, e.g. depth=56 or stem_stride=1 (repeatable)")
    s.add_argument("--batch", type=_positive_int, default=1, help="batch size for the memory estimates")
    s.add_argument("--optimizer", choices=list(OPTIMIZER_SLOTS), default="sgd",
                   help="optimizer whose slots count in the training-memory estimate")
    s.add_argument("--leaves-only", action="store_true", help="one row per leaf layer, no containers")
    s.add_argument("--json", action="store_true", help="print JSON (rows and totals) instead of a table")
    add_models_from(s)

    t = sub.add_parser("train", help="train a model (K seeds in one program), checkpointing every epoch")
    t.add_argument("model", help="registry name with optional /width suffix")
    add_data_flags(t)
    t.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="builder option, e.g. stem_stride=1 or bn=true (repeatable)")
    t.add_argument("--out", type=Path, required=True, help="output folder (checkpoints, metrics.jsonl, result.json)")
    t.add_argument("--resume", action="store_true", help="continue from the newest valid checkpoint in --out")
    t.add_argument("--checkpoint-format", choices=["npz", "safetensors"], default="npz",
                   help="array file of each checkpoint (safetensors: readable by other tools; resume reads either)")
    t.add_argument("--quiet", action="store_true", help="no progress lines")
    add_log_flags(t)
    add_models_from(t)
    add_compile_cache_flag(t)
    add_recipe_flags(t)
    add_distributed_flags(t)

    b = sub.add_parser("bench", help="time train steps and inference against the device's measured peak")
    b.add_argument("models", nargs="*", default=["allconv6", "mobilenet_v1/0.25"],
                   help="registry names with optional /width (default: allconv6 mobilenet_v1/0.25)")
    b.add_argument("--input-size", type=_positive_int, default=32)
    b.add_argument("--batch", type=comma_list(_positive_int, "batch sizes"), default=(128,),
                   help="comma-separated batch sizes (default 128)")
    b.add_argument("--dtype", type=comma_choices(("float32", "bfloat16"), "--dtype"), default=("float32",),
                   help="comma-separated: float32, bfloat16 (default float32)")
    b.add_argument("--measure", type=comma_choices(_MEASURES, "--measure"), default=_MEASURES,
                   help="comma-separated: train (the engine's train step), infer (default both)")
    b.add_argument("--max-other-load", type=float, default=0.25, metavar="CORES",
                   help="redo a repetition during which other processes used more than this many cores, and "
                        "warn when one stays disturbed (default 0.25)")
    b.add_argument("--conv-impl", choices=list(IMPLS), default="auto")
    b.add_argument("--compile-options", choices=list(COMPILE_CHOICES), default="auto",
                   help="XLA options per program: auto = tuned (fastest accurate candidate), or a candidate name")
    b.add_argument("--quick", action="store_true", help="few short repetitions (checks the report, not the speed)")
    b.add_argument("--json", type=Path, default=None, help="also write the JSON report to this file")
    add_models_from(b)
    add_compile_cache_flag(b)

    add_study_parser(sub)
    add_eval_parsers(sub)
    add_compare_parser(sub)
    return parser


def _load_user_models(specs: Sequence[str]) -> None:
    """Import each ``--models-from`` file or module (its decorators register the models)."""
    for spec in specs:
        try:
            models.load_models_from(spec)
        except ValueError as err:
            raise UsageError(str(err)) from None


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``jaxcnn`` console script."""
    args = build_parser().parse_args(argv)
    handlers = {"models": cmd_models, "summary": cmd_summary, "bench": cmd_bench, "train": cmd_train,
                "study": cmd_study, "eval": cmd_eval, "predict": cmd_predict, "compare": cmd_compare}
    if hasattr(args, "no_compile_cache"):  # the commands that compile: before their first program
        compile_cache.enable(not args.no_compile_cache)
    try:
        _load_user_models(args.models_from)
        return handlers[args.command](args)
    except UsageError as err:
        print(f"jaxcnn {args.command}: error: {as_flags(str(err))}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # e.g. piped into head
        return 0
    except (MemoryError, OverflowError) as err:  # a size no check caught: still one line, not a traceback
        print(f"jaxcnn {args.command}: error: {type(err).__name__}: {str(err)[:200] or 'out of memory'}; "
              "use smaller sizes", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
