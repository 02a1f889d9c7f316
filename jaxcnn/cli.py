"""Command line: ``jaxcnn models``, ``jaxcnn summary MODEL ...``, ``jaxcnn train ...``, ``jaxcnn bench ...``.

Errors in what the user typed (unknown model, bad width, an input too small for the
network) print one line naming the option or layer and exit with status 2.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from jaxcnn import models
from jaxcnn.core import LayerError
from jaxcnn.lowering.compile_options import CHOICES as COMPILE_CHOICES
from jaxcnn.lowering.conv import IMPLS
from jaxcnn.summary import summary
from jaxcnn.train.config import OPTIMIZERS, SCHEDULES
from jaxcnn.train.distributed import add_arguments as add_distributed_arguments


class UsageError(Exception):
    """A user-input problem: printed as one line, exit status 2."""


# Library errors name the Python arguments to change, in backticks (`epochs=7`, `resume=True`); the
# command-line tools print the flag that sets each one instead.
FLAGS = {
    "spec": "--data", "size": "--input-size", "test_fraction": "--test-fraction", "epochs": "--epochs",
    "batch": "--batch", "resume": "--resume", "out_dir": "--out", "devices": "--devices", "shard": "--shard",
}


def as_flags(message: str) -> str:
    """``message`` with each backticked argument of :data:`FLAGS` (`name` or `name=value`) written as its flag."""

    def flag(m: re.Match) -> str:
        name, value = m.group(1), m.group(2)
        if name not in FLAGS:
            return m.group(0)
        return FLAGS[name] if value in (None, "True") else f"{FLAGS[name]} {value}"

    return re.sub(r"`(\w+)(?:=([^`]*))?`", flag, message)


def positive(kind: type = int, what: str = "number"):
    """An argparse ``type`` accepting only finite values > 0 of ``kind`` (int or float); the study scripts share it."""
    noun = "a positive integer" if kind is int else f"a positive {what}"

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {noun}, got {text!r}") from None
        if not value > 0 or value == float("inf"):
            raise argparse.ArgumentTypeError(f"expected {noun}, got {text!r}")
        return value

    return parse


_positive_int = positive(int)
_width = positive(float, "width")


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage block), still exit status 2."""

    def error(self, message: str):  # type: ignore[override]
        """Print ``prog: error: message`` and exit 2."""
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser of every subcommand."""
    parser = _Parser(prog="jaxcnn", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    sub.add_parser("models", help="list registered models")

    s = sub.add_parser("summary", help="exact per-layer accounting of a model (no arrays allocated)")
    s.add_argument("model", help="registry name with optional /width suffix, e.g. mobilenet_v1/0.5")
    s.add_argument("--width", type=_width, default=None, help="width multiplier (same as the /width suffix)")
    s.add_argument("--input-size", type=_positive_int, default=None, help="input height and width (square)")
    s.add_argument("--in-channels", type=_positive_int, default=None, help="input channels")
    s.add_argument("--num-classes", type=_positive_int, default=None, help="classifier outputs")
    s.add_argument("--batch", type=_positive_int, default=1, help="batch size for the memory estimates")
    s.add_argument("--optimizer", choices=list(OPTIMIZERS), default="sgd",
                   help="optimizer whose slots count in the training-memory estimate")
    s.add_argument("--leaves-only", action="store_true", help="one row per leaf layer, no containers")
    s.add_argument("--json", action="store_true", help="print JSON (rows and totals) instead of a table")
    t = sub.add_parser("train", help="train a model (K seeds in one program), checkpointing every epoch")
    t.add_argument("model", help="registry name with optional /width suffix")
    t.add_argument("--data", default="mnist5k", help="mnist5k | digits | cifar10:PATH | cifar100:PATH | mnist:PATH | "
                   "fashion:PATH | folder:PATH | list:FILE | npz:FILE | synthetic:N")
    t.add_argument("--input-size", type=_positive_int, default=None, help="resize images to N x N")
    t.add_argument("--test-fraction", type=float, default=0.2,
                   help="stratified test share when the data has no official test split")
    t.add_argument("--epochs", type=_positive_int, default=10)
    t.add_argument("--batch", type=_positive_int, default=128)
    t.add_argument("--lr", type=float, default=0.05)
    t.add_argument("--optimizer", choices=list(OPTIMIZERS), default="momentum")
    t.add_argument("--schedule", choices=list(SCHEDULES), default="cosine")
    t.add_argument("--weight-decay", type=float, default=5e-4)
    t.add_argument("--label-smoothing", type=float, default=0.0)
    t.add_argument("--crop-pad", type=int, default=None,
                   help="random-crop padding (default 4 at 32 px and above, 2 at 16-31, 1 below)")
    t.add_argument("--flip", action=argparse.BooleanOptionalAction, default=None,
                   help="random horizontal flips (default: on except for digits)")
    t.add_argument("--seeds", type=_positive_int, default=1, help="seeds trained together in one compiled program")
    t.add_argument("--seed", type=int, default=0, help="first seed")
    t.add_argument("--mode", choices=["epoch", "step"], default="epoch",
                   help="epoch: data on device, compiled chunks; step: streaming host batches")
    t.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="builder option, e.g. stem_stride=1 or bn=true (repeatable)")
    t.add_argument("--compile-options", choices=list(COMPILE_CHOICES), default="auto",
                   help="XLA options of the training programs: auto = fastest candidate that keeps float32 "
                   "accuracy, measured once per model and machine (cached); or a candidate name")
    t.add_argument("--out", type=Path, required=True, help="output folder (checkpoints, metrics.jsonl, result.json)")
    t.add_argument("--resume", action="store_true", help="continue from the newest valid checkpoint in --out")
    t.add_argument("--checkpoint-format", choices=["npz", "safetensors"], default="npz",
                   help="array file of each checkpoint (safetensors: readable by other tools; resume reads either)")
    t.add_argument("--quiet", action="store_true", help="no progress lines")
    add_distributed_arguments(t)

    b = sub.add_parser("bench", help="time train steps and inference against the device's measured peak")
    b.add_argument("models", nargs="*", default=["allconv6", "mobilenet_v1/0.25"],
                   help="registry names with optional /width (default: allconv6 mobilenet_v1/0.25)")
    b.add_argument("--input-size", type=_positive_int, default=32)
    b.add_argument("--batch", type=_positive_int, nargs="+", default=[128])
    b.add_argument("--dtype", nargs="+", choices=["float32", "bfloat16"], default=["float32"])
    b.add_argument("--mode", nargs="+", choices=["train", "infer"], default=["train", "infer"])
    b.add_argument("--conv-impl", choices=list(IMPLS), default="auto")
    b.add_argument("--compile-options", choices=list(COMPILE_CHOICES), default="auto",
                   help="XLA options per program: auto = tuned (fastest accurate candidate), or a candidate name")
    b.add_argument("--quick", action="store_true", help="few short repetitions (checks the report, not the speed)")
    b.add_argument("--json", type=Path, default=None, help="also write the JSON report to this file")
    return parser


def cmd_bench(args: argparse.Namespace) -> int:
    """Run the benchmark and print the markdown table."""
    from jaxcnn import bench
    from jaxcnn.storage.outdir import OutputFolderError, check_writable_file

    if args.json is not None:  # found before the benchmark runs, not after
        try:
            check_writable_file(args.json, "--json file")
        except OutputFolderError as err:
            raise UsageError(str(err)) from None
    specs = []
    for name in args.models:
        try:
            models.parse_name(name)
        except ValueError as err:
            raise UsageError(str(err)) from None
        for batch in args.batch:
            specs.append({"name": name, "input_size": args.input_size, "batch": batch, "conv_impl": args.conv_impl,
                          "compile_options": args.compile_options})
    try:
        report = bench.run(specs, quick=args.quick, dtypes=tuple(args.dtype), modes=tuple(args.mode))
    except ValueError as err:  # LayerError included
        raise UsageError(str(err)) from None
    print(bench.markdown(report))
    if args.json is not None:
        from jaxcnn.storage.files import atomic_write_text

        atomic_write_text(args.json, bench.to_json(report))
    return 0


def _options(model: str, pairs: list[str]) -> dict:
    """``--option KEY=VALUE`` pairs, each value parsed by the type of the model builder's parameter."""
    out: dict = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"--option expects KEY=VALUE, got {pair!r}")
        if key in ("num_classes", "width"):
            raise UsageError(f"--option {key}=... is not an option: the classes come from the data, the width from "
                             "the MODEL/width suffix")
        try:
            out[key] = models.parse_option(model, key, value)
        except ValueError as err:
            raise UsageError(str(err)) from None
    return out


def cmd_train(args: argparse.Namespace) -> int:
    """Train, print per-seed and mean test accuracy, write result.json into --out."""
    from jaxcnn.storage.checkpoint import CheckpointError
    from jaxcnn.train import TrainingError, distributed

    try:
        cluster = distributed.cluster_from_args(args)
        if cluster is not None:  # before anything touches JAX: the runtime must start first
            distributed.initialize(cluster)
        options = _options(args.model, args.option)
        models.get(args.model, **options)  # a bad name or option fails before the data is read
        # the folder is held (and checked writable) before any work, for the whole run, result.json included
        with distributed.exclusive(args.out, files=("result.json", "metrics.jsonl")):
            return _train(args, options)
    except (ValueError, OSError, CheckpointError, TrainingError) as err:  # DataError, LayerError, bad options
        raise UsageError(str(err)) from None
    except MemoryError:
        raise UsageError(f"out of memory for --data {args.data}"
                         + (f" at --input-size {args.input_size}" if args.input_size else "")
                         + f", model {args.model}, --batch {args.batch}; use a smaller size, batch or data set"
                         ) from None


def _train(args: argparse.Namespace, options: dict) -> int:
    """The train command with its output folder held."""
    import json

    import numpy as np

    from jaxcnn.storage.files import atomic_write_text
    from jaxcnn.train import TrainConfig, distributed, fit
    from jaxcnn.train.prepare import augmentation, prepare

    prepared = prepare(args.data, size=args.input_size, test_fraction=args.test_fraction)
    data = prepared.data
    if prepared.train_classes < 2:
        print(f"jaxcnn train: warning: the training data ({args.data}) holds only one class, so every "
              "prediction is that class and accuracy is trivially 100%", file=sys.stderr)
    model = models.get(args.model, num_classes=data.num_classes, **options)
    aug = augmentation(args.data, data.x_train.shape[1])
    cfg = TrainConfig(
        epochs=args.epochs, batch=args.batch, optimizer=args.optimizer, lr=args.lr,
        weight_decay=args.weight_decay, schedule=args.schedule, label_smoothing=args.label_smoothing,
        crop_pad=args.crop_pad if args.crop_pad is not None else aug["crop_pad"],
        flip=args.flip if args.flip is not None else aug["flip"], seed=args.seed, seeds=args.seeds,
        mode=args.mode, compile_options=args.compile_options,
    ).check()
    meta = {"model": args.model, "options": options, "data": args.data, "input_size": args.input_size,
            "test_fraction": None if prepared.official_test else args.test_fraction}
    result = fit(model, data, cfg, out_dir=args.out, resume=args.resume, quiet=args.quiet, meta=meta,
                 checkpoint_format=args.checkpoint_format)
    if not distributed.is_primary():  # process 0 reports and writes result.json; the others are done
        return 0
    accs = ", ".join(f"{100 * a:.2f}%" for a in result.test_accuracy)
    print(f"{args.model} on {args.data}: test accuracy {100 * result.mean_accuracy:.2f} +- "
          f"{100 * result.std_accuracy:.2f}% over {len(result.seeds)} seed(s) [{accs}]; "
          f"train {result.train_seconds:.1f} s, compile {result.compile_seconds:.1f} s")
    record = {"model": args.model, "options": options, "data": args.data, "seeds": result.seeds,
              "test_accuracy": result.test_accuracy, "mean": result.mean_accuracy, "std": result.std_accuracy,
              "train_seconds": result.train_seconds, "compile_seconds": result.compile_seconds,
              "config": cfg.__dict__, "final_train_loss": float(np.mean(result.history[-1]["train_loss"])),
              "identity": result.identity}
    atomic_write_text(args.out / "result.json", json.dumps(record, indent=1))
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    """Print every registered model with its default input and description."""
    for name, e in models.REGISTRY.items():
        shape = "x".join(map(str, e.input_shape))
        print(f"{name:22s} {shape:>11s} {e.num_classes:>5d} classes  {e.description}")
    return 0


def cmd_summary(args: argparse.Namespace) -> int:
    """Print the summary table (or JSON) of one model."""
    try:
        e = models.entry(args.model)
        model = models.get(args.model, num_classes=args.num_classes, width=args.width)
    except ValueError as err:
        raise UsageError(str(err)) from None
    h, w, c = e.input_shape
    if args.input_size is not None:
        h = w = args.input_size
    if args.in_channels is not None:
        c = args.in_channels
    try:
        s = summary(model, (h, w, c), batch=args.batch, optimizer=args.optimizer, name=args.model)
    except LayerError as err:
        raise UsageError(f"{args.model} at input {h}x{w}x{c}: {err}") from None
    print(s.to_json() if args.json else s.table(leaves_only=args.leaves_only))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``jaxcnn`` console script."""
    args = build_parser().parse_args(argv)
    handlers = {"models": cmd_models, "summary": cmd_summary, "bench": cmd_bench, "train": cmd_train}
    try:
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
