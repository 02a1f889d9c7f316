"""``jaxcnn study``: any ablation in one command (models x width x depth x resolution x options, K seeds each).

    jaxcnn study resnet_cifar --vary depth=8,14,20 --vary width=0.5,1 --data mnist5k --input-size 32 \\
        --epochs 2 --num-seeds 2 --out runs/resnet_grid

The recipe flags are ``jaxcnn train``'s (generated from TrainConfig). A study whose models need
different recipes, options or padding is a study file (``--file STUDY.toml``)::

    models = ["allconv6_bn", "mobilenet_v1"]
    data = "mnist5k"
    [vary]
    width = [0.25, 0.5]
    [recipe]                 # TrainConfig fields for every model
    epochs = 10
    batch = 125
    [model.mobilenet_v1]     # this model only
    options = {stem_stride = 1}
    pad_to = 32
    recipe = {epochs = 15}

Precedence, lowest first: TrainConfig's defaults (with the data's crop/flip defaults), the file's
[recipe], its [model.NAME] recipe, then the flags on the command line, which apply to every model
(so ``--epochs 1`` makes a quick run of any study file). ``--vary`` replaces the file's list for
that key. The same runner as the book's studies: ``--only``, ``--shard I/N`` (and SLURM arrays),
``--devices``, ``--plot-only``, skipping finished members and resuming an unfinished one.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tomllib
from dataclasses import replace
from pathlib import Path
from typing import Any

from jaxcnn.cli.args import (
    UsageError,
    add_compile_cache_flag,
    add_data_flags,
    add_log_flags,
    add_models_from,
    add_recipe_flags,
    data_options,
    parse_options,
    positive,
    recipe_overrides,
)
from jaxcnn.core import LayerError
from jaxcnn.storage.checkpoint import CheckpointError
from jaxcnn.storage.files import FileProblem, read_regular
from jaxcnn.study.plan import (
    Axis,
    Plan,
    PlanError,
    axis_value,
    check_members,
    in_window,
    member_input_shape,
    neighbour_pairs,
    numeric_axes,
    parse_axis,
)
from jaxcnn.study.record import StudyError
from jaxcnn.study.shard import ShardError, resolve

__all__ = ["add_study_parser", "cmd_study", "read_study_file"]

_FILE_KEYS = {"models", "data", "input_size", "test_fraction", "vary", "recipe", "options", "model"}


def add_study_parser(sub: Any) -> argparse.ArgumentParser:
    """The ``study`` subcommand's parser."""
    p = sub.add_parser("study", help="train every member of an ablation (models x --vary axes), K seeds each",
                       description=__doc__.splitlines()[0])
    p.add_argument("models", nargs="*", help="registry names (a user's too, with --models-from)")
    p.add_argument("--vary", action="append", default=[], metavar="KEY=V1,V2,...",
                   help="an axis: width, input_size or any builder option (depth, k, dropout, ...); repeatable, the "
                        "members are the product of the axes")
    p.add_argument("--file", type=Path, default=None, metavar="STUDY.toml",
                   help="a study file: models, axes, recipe and per-model overrides (see `jaxcnn study --help`)")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="builder option for every model (repeatable)")
    p.add_argument("--pad-to", type=positive(int), default=None, metavar="N",
                   help="zero-pad smaller inputs to N x N for every model (as LeNet-5 fed MNIST)")
    p.add_argument("--sample", type=positive(int), default=None, metavar="N",
                   help="draw N distinct members at random instead of the grid: each axis from its list, an "
                        "integer range LO:HI or a log-uniform range log:LO:HI (deterministic from --sample-seed)")
    p.add_argument("--sample-seed", type=int, default=0, help="seed of the --sample draws (default 0)")
    p.add_argument("--params-range", type=_window, default=None, metavar="LO:HI",
                   help="with --sample: keep only members with LO <= learnable parameters <= HI (others never train)")
    p.add_argument("--macs-range", type=_window, default=None, metavar="LO:HI",
                   help="with --sample: keep only members with LO <= multiply-adds per image <= HI")
    p.add_argument("--out", type=Path, required=True, help="results folder (resumable)")
    p.add_argument("--only", action="append", default=[], metavar="VARIANT",
                   help="run only this member (repeatable; variants hold commas, e.g. resnet_cifar/0.5,depth=8)")
    p.add_argument("--shard", default=None, metavar="I/N",
                   help="run shard I of N (I from 1) of the members into the same folder; inside a SLURM array "
                        "job the shard comes from SLURM_ARRAY_TASK_ID/COUNT when this is not given")
    p.add_argument("--devices", type=positive(int), default=None, metavar="N",
                   help="train N members at once, one per local device (default: one at a time on all devices)")
    p.add_argument("--plot-only", action="store_true", help="only redraw the table and figures from --out")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    add_log_flags(p)
    add_data_flags(p, default=None)
    add_recipe_flags(p)
    add_models_from(p)
    add_compile_cache_flag(p)
    return p


def _window(text: str) -> tuple[float, float]:
    """``LO:HI`` (numbers, 1e6 or 2.5e5 style allowed) as a closed window."""
    lo, sep, hi = text.partition(":")
    try:
        window = (float(lo), float(hi))
    except ValueError:
        window = None
    if not sep or window is None or not 0 <= window[0] <= window[1]:
        raise argparse.ArgumentTypeError(f"expected LO:HI with 0 <= LO <= HI, got {text!r}")
    return window


def read_study_file(path: Path) -> dict[str, Any]:
    """The decoded study file, or UsageError naming the file and the problem."""
    try:
        text = read_regular(path, "study file").decode("utf-8")
        doc = tomllib.loads(text)
    except (FileProblem, OSError) as e:
        raise UsageError(f"study file {path}: {e}") from None
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise UsageError(f"study file {path}: not TOML ({e})") from None
    unknown = sorted(set(doc) - _FILE_KEYS)
    if unknown:
        raise UsageError(f"study file {path}: unknown key {unknown[0]!r}; the keys are {', '.join(sorted(_FILE_KEYS))}")
    for key, kind in (("models", list), ("vary", dict), ("recipe", dict), ("options", dict), ("model", dict)):
        if key in doc and not isinstance(doc[key], kind):
            raise UsageError(f"study file {path}: {key} must be a {'list' if kind is list else 'table'}")
    return doc


def _file_axes(doc: dict[str, Any]) -> list[Axis]:
    out = []
    for key, values in doc.get("vary", {}).items():
        if not isinstance(values, list) or not values:
            raise UsageError(f"study file: vary.{key} must be a non-empty list")
        out.append(Axis(key, tuple(str(v).lower() if isinstance(v, bool) else str(v) for v in values)))
    return out


def _plan(args: argparse.Namespace, doc: dict[str, Any], base: Any) -> Plan:
    """The plan the command line and the study file describe (flags win)."""
    names = tuple(args.models) or tuple(doc.get("models", ()))
    axes = {a.key: a for a in _file_axes(doc)}
    for text in args.vary:
        a = parse_axis(text)
        axes[a.key] = a
    per_model = doc.get("model", {})
    options: dict[str, dict[str, Any]] = {}
    overrides: dict[str, dict[str, Any]] = {}
    pad_to: dict[str, int] = {}
    flags = recipe_overrides(args)
    for name in names:
        base_name = name.partition("/")[0]
        section = per_model.get(base_name, {})
        opts = dict(doc.get("options", {}))
        opts.update(section.get("options", {}))
        opts.update(parse_options(name, args.option))
        options[base_name] = opts
        over = {**section.get("recipe", {}), **flags}
        overrides[base_name] = {k: tuple(v) if isinstance(v, list) else v for k, v in over.items()}
        if args.pad_to or section.get("pad_to"):
            pad_to[base_name] = args.pad_to or section["pad_to"]
    return Plan(models=names, axes=tuple(axes.values()), options=options, recipe=base, overrides=overrides,
                pad_to=pad_to)


def cmd_study(args: argparse.Namespace) -> int:
    """Check every member, train those not finished, then write the table, comparisons and figures."""
    from jaxcnn import data as jdata
    from jaxcnn.study import finished_results, run_study
    from jaxcnn.study.report import write_report
    from jaxcnn.train import TrainConfig, TrainingError
    from jaxcnn.train.loggers import LogSpec, parse_kinds
    from jaxcnn.train.prepare import augmentation, prepare

    doc = read_study_file(args.file) if args.file else {}
    spec = args.data or doc.get("data") or "mnist5k"
    size = args.input_size or doc.get("input_size")
    test_fraction = doc.get("test_fraction", args.test_fraction)
    command = "jaxcnn " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    try:
        file_recipe = {k: tuple(v) if isinstance(v, list) else v for k, v in doc.get("recipe", {}).items()}
        try:
            recipe = TrainConfig(**file_recipe)
        except TypeError as e:
            raise UsageError(f"study file {args.file}: [recipe] {e}") from None
        plan = _plan(args, doc, recipe)
        if (args.params_range or args.macs_range) and not args.sample:
            raise UsageError("--params-range and --macs-range select sampled members; add --sample N")
        members = plan.members() if not args.sample else None
        if args.only and members is not None:
            wanted = [w.strip() for w in args.only]
            known = {m.variant for m in members}
            unknown = [w for w in wanted if w not in known]
            if unknown:
                raise UsageError(f"unknown variant(s) {', '.join(unknown)} for --only; choose from "
                                 f"{', '.join(m.variant for m in members)}")
            members = [m for m in members if m.variant in wanted]
        out = Path(args.out)
        log = LogSpec(parse_kinds(args.log), mlflow_uri=args.mlflow_uri, experiment=args.mlflow_experiment) \
            if args.log else None  # a missing package is found before anything trains
        if args.plot_only:
            records = finished_results(out, members or ())  # a missing or empty folder is an error, made nowhere
        else:
            prepared = prepare(spec, size=size, test_fraction=test_fraction, **data_options(args))
            task = _task(prepared, spec, test_fraction, data_options(args))
            in_shape = task.in_shape
            if members is None:  # --sample: drawn now, since the windows need the data's classes and shape
                k = task.data.num_classes
                members = plan.sample(args.sample, seed=args.sample_seed, accept=lambda m: in_window(
                    m, k, in_shape, params=args.params_range, macs=args.macs_range))
            bad = check_members(members, task.data.num_classes, in_shape)
            if bad:
                raise UsageError("invalid member(s), nothing trained:\n" + "\n".join(f"  {b}" for b in bad))
            members = [_with_augmentation(m, spec, in_shape, augmentation, flags=recipe_overrides(args),
                                          file_recipe=file_recipe, section=doc.get("model", {}).get(m.family, {}))
                       for m in members]
            shard = resolve(args.shard)
            records = run_study(members, task, out, quiet=args.quiet, command=command, shard=shard,
                                devices=args.devices, log=log,
                                compile_cache=not args.no_compile_cache)
            if not records and shard is not None:
                print(f"shard {shard}: no member finished yet in {out}; nothing to draw", file=sys.stderr)
                return 0
        grid_axes = numeric_axes(plan.varied, records)
        text, compared, paths = write_report(
            out, records, pairs=lambda rs: neighbour_pairs(plan.varied, rs),
            grid=tuple(grid_axes[:2]) if len(grid_axes) >= 2 and not args.sample else None, axis_value=axis_value,
            edf=bool(args.sample))
        if log is not None:
            log.report(out, [*paths, out / "results.jsonl", out / "results.csv"])
    except (PlanError, StudyError, LayerError, jdata.DataError, CheckpointError, TrainingError, ShardError,
            ValueError, OSError) as e:
        raise UsageError(str(e)) from None
    print(text)
    if compared is not None:
        print("\n" + compared)
    print("\nwrote " + ", ".join(str(p) for p in paths) + f", {out / 'results.jsonl'}, {out / 'results.csv'}")
    return 0


def _task(prepared: Any, spec: str, test_fraction: float, streaming: dict[str, Any]) -> Any:
    """The study's Task; members with another ``input_size`` get the data prepared again at that size (cached)."""
    from jaxcnn.study import Task
    from jaxcnn.train.prepare import prepare

    cache: dict[int, Task] = {}

    def resize(n: int) -> Task:
        if n not in cache:
            p = prepare(spec, size=n, test_fraction=test_fraction, **streaming)
            cache[n] = Task(p.name, p.data)
        return cache[n]

    return Task(prepared.name, prepared.data, resize=resize)


def _with_augmentation(m: Any, spec: str, in_shape: tuple[int, ...], augmentation: Any, *, flags: dict[str, Any],
                       file_recipe: dict[str, Any], section: dict[str, Any]) -> Any:
    """``m`` with the data's crop/flip defaults for its input size, where no flag or file set them."""
    given = {**file_recipe, **section.get("recipe", {}), **flags}
    size = member_input_shape(m, in_shape)[0]
    aug = {k: v for k, v in augmentation(spec, size).items() if k not in given}
    return replace(m, recipe=replace(m.recipe, **aug)) if aug else m

