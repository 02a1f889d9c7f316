"""The ``models``, ``summary``, ``bench`` and ``train`` commands (``study`` is in :mod:`jaxcnn.cli.study`)."""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict

from jaxcnn import models
from jaxcnn.cli.args import UsageError, cluster_from_args, data_options, parse_options, recipe_from_args
from jaxcnn.core import LayerError
from jaxcnn.summary import summary


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
        report = bench.run(specs, quick=args.quick, dtypes=tuple(args.dtype), measures=tuple(args.measure),
                           max_other_load=args.max_other_load)
    except ValueError as err:  # LayerError included
        raise UsageError(str(err)) from None
    print(bench.markdown(report))
    if args.json is not None:
        from jaxcnn.storage.files import atomic_write_text

        atomic_write_text(args.json, bench.to_json(report))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    """Train, print per-seed and mean test accuracy, write result.json into --out."""
    from jaxcnn.storage.checkpoint import CheckpointError
    from jaxcnn.train import TrainingError, distributed, loggers

    try:
        cluster = cluster_from_args(args)
        if cluster is not None:  # before anything touches JAX: the runtime must start first
            distributed.initialize(cluster)
        options = parse_options(args.model, args.option)
        models.get(args.model, **options)  # a bad name or option fails before the data is read
        for kind in loggers.parse_kinds(args.log):  # so does a logging package that is not installed
            loggers.require(kind)
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
    from jaxcnn.train.loggers import for_run
    from jaxcnn.train.prepare import augmentation, prepare

    prepared = prepare(args.data, size=args.input_size, test_fraction=args.test_fraction, **data_options(args))
    data = prepared.data
    if prepared.train_classes < 2:
        print(f"jaxcnn train: warning: the training data ({args.data}) holds only one class, so every "
              "prediction is that class and accuracy is trivially 100%", file=sys.stderr)
    model = models.get(args.model, num_classes=data.num_classes, **options)
    cfg = recipe_from_args(args, TrainConfig(**augmentation(args.data, data.x_train.shape[1])))  # fit checks it
    meta = {"model": args.model, "options": options, "data": args.data, "input_size": args.input_size,
            "test_fraction": None if prepared.official_test else args.test_fraction}
    logs = for_run(args.log, args.out, mlflow_uri=args.mlflow_uri, experiment=args.mlflow_experiment) \
        if distributed.is_primary() else []
    result = fit(model, data, cfg, out_dir=args.out, resume=args.resume, quiet=args.quiet, meta=meta,
                 checkpoint_format=args.checkpoint_format, loggers=logs)
    if not distributed.is_primary():  # process 0 reports and writes result.json; the others are done
        return 0
    accs = ", ".join(f"{100 * a:.2f}%" for a in result.test_accuracy)
    print(f"{args.model} on {args.data}: test accuracy {100 * result.mean_accuracy:.2f} +- "
          f"{100 * result.std_accuracy:.2f}% over {len(result.seeds)} seed(s) [{accs}]; "
          f"train {result.train_seconds:.1f} s, compile {result.compile_seconds:.1f} s")
    ema = result.history[-1].ema.get("test_accuracy")  # --ema: the average's accuracy beside the raw weights'
    if ema:
        print(f"EMA of the weights (--ema {cfg.ema}): test accuracy {100 * np.mean(ema):.2f}% "
              f"[{', '.join(f'{100 * a:.2f}%' for a in ema)}]")
    if "label_noise_flipped" in result.identity:
        print(f"label noise: {result.identity['label_noise_flipped']} of {len(data.y_train)} training labels "
              f"flipped to a wrong class (--label-noise-seed {cfg.label_noise_seed})")
    record = {"model": args.model, "options": options, "data": args.data, "seeds": result.seeds,
              "test_accuracy": result.test_accuracy, "mean": result.mean_accuracy, "std": result.std_accuracy,
              "train_seconds": result.train_seconds, "compile_seconds": result.compile_seconds,
              "config": asdict(cfg), "final_train_loss": float(np.mean(result.history[-1].train_loss)),
              "identity": result.identity, "ema_test_accuracy": ema}
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
        options = parse_options(args.model, args.option)
        model = models.get(args.model, num_classes=args.num_classes, width=args.width, **options)
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


