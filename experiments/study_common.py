"""Shared command-line plumbing of the study scripts (width, depth, channel complement).

Not a study itself: each ``*_study.py`` script defines its members and calls these.

Where results go: by default a run folder under the current directory, ``runs/<study>/``
(git ignores ``runs/``), so the main command trains on a fresh clone and never touches the
committed reference results. ``--reference`` writes ``results/<study>/`` of this repository
instead: the folder README's tables and figures are generated from, rewritten only on purpose.
``--out DIR`` picks any other folder. Every folder is resumable.

On a cluster: ``--shard I/N`` (or, inside a SLURM array job, the array variables) runs
the I-th of N fixed subsets of the members (jaxcnn.study.shard); every shard writes into the same
folder, each member its own record, and the table and figures are redrawn from whatever
members have finished (``--plot-only`` after the last shard: the same table as one process
running them all). ``--devices N`` trains N members at once, one per local device; without
it each member's batch is sharded over all local devices.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from jaxcnn import data as jdata
from jaxcnn.cli import as_flags, positive
from jaxcnn.cli.args import add_compile_cache_flag
from jaxcnn.core import LayerError
from jaxcnn.storage.checkpoint import CheckpointError
from jaxcnn.study import Member, Task, finished_results, run_study
from jaxcnn.study.record import StudyError
from jaxcnn.study.report import Pairs, write_report
from jaxcnn.study.shard import ShardError, resolve
from jaxcnn.train import TrainConfig, TrainingError
from jaxcnn.train.prepare import augmentation, prepare

ROOT = Path(__file__).resolve().parent.parent  # the repository: results/<study> is the committed reference


def add_common_args(parser: argparse.ArgumentParser, *, study: str, num_seeds: int | None = 3) -> None:
    """The options every study takes; ``num_seeds=None`` leaves --num-seeds unset for the script to default."""
    parser.add_argument("--data", default="mnist5k",
                        help="mnist5k (bundled), digits (bundled), cifar10:PATH, mnist:PATH, folder:PATH, list:FILE, "
                             "npz:FILE, synthetic:N")
    parser.add_argument("--input-size", type=positive(int), default=None,
                        help="resize images to N x N (default: as stored)")
    parser.add_argument("--num-seeds", type=positive(int), default=num_seeds,
                        help="seeds per model, trained together in one compiled program"
                             + (f" (default {num_seeds})" if num_seeds else ""))
    parser.add_argument("--batch", type=positive(int), default=125,
                        help="batch size (125: MNIST 5k's 4,000 training images make 32 full batches)")
    parser.add_argument("--lr", type=positive(float), default=0.05)
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--out", default=None, help=f"results folder, resumable (default runs/{study} under the current "
                       f"directory, git-ignored; runs/{study}_quick with --quick, so a smoke test never mixes into "
                       "real results)")
    where.add_argument("--reference", action="store_true",
                       help=f"write the committed reference results, {ROOT / 'results' / study} (README's tables "
                            "and figures come from there); not with --quick")
    parser.set_defaults(study=study)
    parser.add_argument("--only", default=None, help="comma-separated variants to run (default: all)")
    parser.add_argument("--plot-only", action="store_true", help="only redraw the figures from the results file")
    parser.add_argument("--quick", action="store_true", help="smoke test: 600 images, 1 epoch, 1 seed")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    add_compile_cache_flag(parser)
    parser.add_argument("--shard", default=None, metavar="I/N",
                        help="run shard I of N (I from 1) of the members, round robin, into the same folder; inside a "
                             "SLURM array job the shard comes from SLURM_ARRAY_TASK_ID/COUNT when this is not given")
    parser.add_argument("--devices", type=positive(int), default=None, metavar="N",
                        help="train N members at once, one per local device (default: one member at a time, its batch "
                             "sharded over all local devices: results do not depend on the device count)")


def out_dir(args: argparse.Namespace) -> Path:
    """--out; the reference folder with --reference; else runs/<study> (runs/<study>_quick for --quick)."""
    if args.reference:
        if args.quick:
            fail("--reference writes the committed results README quotes; a --quick smoke test cannot go there "
                 "(drop --quick, or use --out DIR)")
        return ROOT / "results" / args.study
    if args.out:
        return Path(args.out)
    return Path("runs") / (args.study + ("_quick" if args.quick else ""))


def fail(message: str) -> None:
    """Print one error line and exit with status 2 (nothing computed so far is lost)."""
    print(f"error: {as_flags(message)}", file=sys.stderr)
    raise SystemExit(2)


def load_task(args: argparse.Namespace) -> tuple[Task, TrainConfig]:
    """The training data and the base recipe from the common options."""
    try:
        prepared = prepare(args.data, size=args.input_size, subset=(500, 100) if args.quick else None)
    except (jdata.DataError, OSError) as e:
        fail(str(e))
    if args.quick:
        args.num_seeds = 1
    data = prepared.data
    # TrainConfig's own optimizer, momentum, weight decay and schedule; the studies set batch, lr and seeds
    base = TrainConfig(batch=min(args.batch, len(data.y_train)), lr=args.lr, num_seeds=args.num_seeds,
                       **augmentation(args.data, data.x_train.shape[1]))
    return Task(prepared.name, data), base


def parse_only(args: argparse.Namespace, members: list[Member]) -> list[Member]:
    """Restrict ``members`` to ``--only`` (unknown names are an error listing the valid ones)."""
    if not args.only:
        return members
    wanted = [w.strip() for w in args.only.split(",") if w.strip()]
    known = {m.variant for m in members}
    unknown = [w for w in wanted if w not in known]
    if unknown:
        fail(f"unknown variant(s) {', '.join(unknown)} for --only; choose from {', '.join(sorted(known))}")
    return [m for m in members if m.variant in wanted]


def finish(args: argparse.Namespace, members: list[Member], task: Task | None, out: Path,
           figures_extra: Sequence[str] = (), pairs: Pairs | None = None) -> int:
    """Run (unless --plot-only), then write table.md, comparisons.md and the figures; errors: one line, exit 2.

    ``pairs(records)`` names the comparisons (question, variant a, variant b) the study's findings
    rest on; each gets b - a with a 95 % Welch interval over seeds (jaxcnn.study.stats).
    ``figures_extra`` may hold "filters" and "redundancy" (the first-layer filter figures).
    """
    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    try:
        if args.plot_only:
            records = finished_results(out, members)  # also picks up members whose shard died before merging
        else:
            shard = resolve(args.shard)
            records = run_study(members, task, out, quiet=args.quiet, command=command, shard=shard,
                                devices=args.devices, compile_cache=not args.no_compile_cache)
            if not records and shard is not None:  # more shards than members: this one had nothing to do
                print(f"shard {shard}: no member finished yet in {out}; nothing to draw", file=sys.stderr)
                return 0
        text, compared, paths = write_report(out, records, pairs=pairs, filters="filters" in figures_extra,
                                             redundancy="redundancy" in figures_extra)
    except (StudyError, LayerError, jdata.DataError, CheckpointError, TrainingError, ShardError, ValueError) as e:
        fail(str(e))
    print(text)
    if compared is not None:
        print("\n" + compared)
    print("\nwrote " + ", ".join(str(p) for p in paths) + f", {out / 'results.jsonl'}, {out / 'results.csv'}")
    return 0


def epochs_study_main(argv: Sequence[str] | None, doc: str, study: str,
                      members: Callable[[argparse.Namespace, TrainConfig], list[Member]], pairs: Pairs,
                      figures_extra: Sequence[str] = ()) -> int:
    """``main`` of a study whose only own option is ``--epochs`` (default 10; 1 with --quick)."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    add_common_args(parser, study=study)
    parser.add_argument("--epochs", type=positive(int), default=10)
    args = parser.parse_args(argv)
    if args.quick:
        args.epochs = 1
    out = out_dir(args)
    task, base = (None, TrainConfig()) if args.plot_only else load_task(args)
    return finish(args, parse_only(args, members(args, base)), task, out, figures_extra=figures_extra, pairs=pairs)
