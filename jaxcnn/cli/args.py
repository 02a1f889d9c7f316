"""Argument definitions shared by every command and the study scripts, each defined once.

The recipe flags (``--epochs``, ``--weight-decay``, ...) are generated from the fields of
:class:`~jaxcnn.train.config.TrainConfig`, with its defaults and its documentation, so the
CLI, the studies and Python cannot disagree. Library errors name Python arguments in
backticks (`epochs=7`); :func:`as_flags` prints the flag that sets each one instead.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import typing
from collections.abc import Sequence
from typing import Any

from jaxcnn import models
from jaxcnn.train.cluster import Cluster, DistributedError, split_address
from jaxcnn.train.config import TrainConfig

__all__ = [
    "FLAGS", "Parser", "UsageError", "add_data_flags", "add_distributed_flags", "add_log_flags", "add_models_from",
    "add_recipe_flags", "as_flags", "cluster_from_args", "comma_list", "data_options", "parse_options", "positive",
    "recipe_from_args", "recipe_overrides",
]


class UsageError(Exception):
    """A user-input problem: printed as one line, exit status 2."""


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


# Python argument name -> the flag that sets it: every TrainConfig field, and the arguments of prepare/fit/studies
FLAGS: dict[str, str] = {f.name: _flag(f.name) for f in dataclasses.fields(TrainConfig)}
FLAGS.update({"spec": "--data", "size": "--input-size", "test_fraction": "--test-fraction", "resume": "--resume",
              "out_dir": "--out", "devices": "--devices", "shard": "--shard", "coordinator": "--coordinator",
              "num_processes": "--num-processes", "process_id": "--process-id", "options": "--option",
              "stream": "--stream", "memory_budget": "--memory-budget", "workers": "--workers"})


def as_flags(message: str) -> str:
    """``message`` with each backticked argument of :data:`FLAGS` (`name` or `name=value`) written as its flag."""

    def flag(m: re.Match) -> str:
        name, value = m.group(1), m.group(2)
        if name not in FLAGS:
            return m.group(0)
        return FLAGS[name] if value in (None, "True") else f"{FLAGS[name]} {value}"

    return re.sub(r"`(\w+)(?:=([^`]*))?`", flag, message)


def positive(kind: type = int, what: str = "number"):
    """An argparse ``type`` accepting only finite values > 0 of ``kind`` (int or float)."""
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


def comma_list(kind: type, what: str = "values"):
    """An argparse ``type`` for ``a,b,c``: a tuple of ``kind`` (the one spelling of list arguments)."""

    def parse(text: str) -> tuple:
        try:
            return tuple(kind(v.strip()) for v in text.split(",") if v.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated {what}, got {text!r}") from None

    return parse


def comma_choices(choices: Sequence[str], what: str):
    """An argparse ``type`` for ``a,b`` where each item must be one of ``choices``."""

    split = comma_list(str, what)

    def parse(text: str) -> tuple[str, ...]:
        items = split(text)
        bad = [v for v in items if v not in choices]
        if bad or not items:
            raise argparse.ArgumentTypeError(f"{what} must be comma-separated values of {', '.join(choices)}; "
                                             f"got {text!r}")
        return items

    return parse


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage block), still exit status 2."""

    def error(self, message: str):  # type: ignore[override]
        """Print ``prog: error: message`` and exit 2."""
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def add_recipe_flags(parser: argparse.ArgumentParser, *, defaults: TrainConfig | None = None) -> None:
    """One flag per TrainConfig field (default None: "not given", so a study file or preset may set it).

    ``defaults`` is the recipe the help text quotes (TrainConfig's own unless a preset says otherwise).
    """
    base = defaults or TrainConfig()
    hints = typing.get_type_hints(TrainConfig)
    g = parser.add_argument_group("recipe (TrainConfig; `help(jaxcnn.train.TrainConfig)`)")
    for f in dataclasses.fields(TrainConfig):
        meta, kind = f.metadata, hints[f.name]
        shown = (f"default from the data: {meta['cli_default']}; TrainConfig() has {f.default!r}"
                 if "cli_default" in meta else f"default {getattr(base, f.name)!r}")
        kw: dict[str, Any] = {"default": None, "help": f"{meta['help']} ({shown})", "dest": f.name}
        if kind is bool:
            kw["action"] = argparse.BooleanOptionalAction
        elif "choices" in meta:
            kw["choices"] = list(meta["choices"])
        elif typing.get_origin(kind) is tuple:
            kw["type"], kw["metavar"] = comma_list(int, "integers"), "A,B,..."
        elif meta.get("positive"):
            kw["type"] = positive(kind)
        else:
            kw["type"] = kind
        g.add_argument(_flag(f.name), **kw)


def recipe_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The TrainConfig fields given on the command line."""
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)
            if getattr(args, f.name, None) is not None}


def recipe_from_args(args: argparse.Namespace, base: TrainConfig) -> TrainConfig:
    """``base`` with every recipe flag the user gave."""
    return dataclasses.replace(base, **recipe_overrides(args))


def add_data_flags(parser: argparse.ArgumentParser, *, default: str | None = "mnist5k") -> None:
    """``--data``, ``--input-size`` and ``--test-fraction`` (what :func:`jaxcnn.train.prepare.prepare` takes)."""
    parser.add_argument("--data", default=default,
                        help="mnist5k (bundled) | digits (bundled) | cifar10:PATH | cifar100:PATH | mnist:PATH | "
                             "fashion:PATH | folder:PATH | list:FILE | npz:FILE | synthetic:N"
                             + (f" (default {default})" if default else ""))
    parser.add_argument("--input-size", type=positive(int), default=None, help="resize images to N x N")
    parser.add_argument("--test-fraction", type=float, default=0.2,
                        help="stratified test share when the data has no official test split (default 0.2)")
    g = parser.add_argument_group("image files larger than memory (folder:, list:; needs jaxcnn[stream])")
    g.add_argument("--stream", action=argparse.BooleanOptionalAction, default=None,
                   help="decode the images from disk as training reads them (Grain) instead of all at once "
                        "(default: stream only when decoded they would exceed --memory-budget)")
    g.add_argument("--memory-budget", default=None, metavar="SIZE",
                   help="decoded size above which image files are streamed, e.g. 6GB (default: a quarter of the "
                        "machine's memory)")
    g.add_argument("--workers", type=int, default=0, metavar="N",
                   help="with streaming: Grain worker processes decoding ahead of training (default 0: decode in "
                        "the training process)")


def data_options(args: argparse.Namespace) -> dict[str, Any]:
    """The streaming arguments of :func:`jaxcnn.train.prepare.prepare` that ``add_data_flags`` defined."""
    return {"stream": args.stream, "memory_budget": args.memory_budget, "workers": args.workers}


def parse_options(model: str, pairs: list[str]) -> dict[str, Any]:
    """``--option KEY=VALUE`` pairs, each value parsed by the type of the model builder's parameter."""
    out: dict[str, Any] = {}
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


def add_models_from(parser: argparse.ArgumentParser) -> None:
    """``--models-from PATH.py|module`` (repeatable): register a user's models before anything else runs."""
    parser.add_argument("--models-from", action="append", default=[], metavar="PATH.py|MODULE", type=str,
                        help="import this Python file or module first, so the models it registers with "
                             "@jaxcnn.models.register_model can be named (repeatable)")


def add_compile_cache_flag(parser: argparse.ArgumentParser) -> None:
    """``--no-compile-cache``: compile every program afresh instead of loading it from the persistent cache."""
    parser.add_argument("--no-compile-cache", action="store_true",
                        help="do not keep or load compiled programs in $JAXCNN_CACHE_DIR/xla (default "
                             "~/.cache/jaxcnn/xla; JAXCNN_COMPILE_CACHE=0 does the same)")


def add_log_flags(parser: argparse.ArgumentParser) -> None:
    """``--log tensorboard,mlflow``, ``--mlflow-uri`` and ``--mlflow-experiment`` (jaxcnn.train.loggers)."""
    g = parser.add_argument_group("experiment logging (pip install 'jaxcnn[logging]')")
    g.add_argument("--log", default="", metavar="tensorboard,mlflow",
                   help="also log parameters and per-epoch metrics (per seed and mean) to TensorBoard event files "
                        "(OUT/tensorboard) and/or MLflow (OUT/mlruns unless --mlflow-uri or MLFLOW_TRACKING_URI)")
    g.add_argument("--mlflow-uri", default=None, metavar="URI",
                   help="MLflow tracking URI (a server http://..., or a store such as file:/path/mlruns)")
    g.add_argument("--mlflow-experiment", default=None, metavar="NAME",
                   help="MLflow experiment (default: jaxcnn for train, the study folder's name for study)")


def add_distributed_flags(parser: argparse.ArgumentParser) -> None:
    """The ``--distributed``, ``--coordinator``, ``--num-processes`` and ``--process-id`` options."""
    g = parser.add_argument_group("multi-process training (JAX's distributed runtime)")
    g.add_argument("--distributed", action="store_true",
                   help="join a multi-process run: jax.distributed.initialize() (auto-detects SLURM, Open MPI, ...); "
                        "the batch is split over every process's devices and only process 0 writes files")
    g.add_argument("--coordinator", default=None, metavar="HOST:PORT",
                   help="with --distributed: process 0's address, when the cluster is not auto-detected")
    g.add_argument("--num-processes", type=int, default=None, metavar="N", help="with --distributed: process count")
    g.add_argument("--process-id", type=int, default=None, metavar="I",
                   help="with --distributed: this process's index, 0 .. N-1 (0 writes the files)")
    g.add_argument("--init-timeout", type=float, default=Cluster.init_timeout, metavar="S",
                   help="with --distributed: give up (exit 2) when not every process has joined after S seconds "
                        f"(default {Cluster.init_timeout:g})")
    g.add_argument("--peer-timeout", type=float, default=Cluster.peer_timeout, metavar="S",
                   help="with --distributed: give up (exit 2, naming the epoch and the last good checkpoint) when "
                        f"a process has sent no heartbeat for S seconds (default {Cluster.peer_timeout:g})")


def cluster_from_args(args: argparse.Namespace) -> Cluster | None:
    """The :class:`Cluster` the options ask for (None without ``--distributed``); bad values name the option."""
    init_timeout = getattr(args, "init_timeout", Cluster.init_timeout)
    peer_timeout = getattr(args, "peer_timeout", Cluster.peer_timeout)
    explicit = [name for name, v in (("--coordinator", args.coordinator), ("--num-processes", args.num_processes),
                                     ("--process-id", args.process_id)) if v is not None]
    explicit += [name for name, v, d in (("--init-timeout", init_timeout, Cluster.init_timeout),
                                         ("--peer-timeout", peer_timeout, Cluster.peer_timeout)) if v != d]
    if not args.distributed:
        if explicit:
            raise DistributedError(f"{', '.join(explicit)} only apply to a multi-process run; add --distributed")
        return None
    if args.coordinator is not None:
        split_address(args.coordinator)
    if args.num_processes is not None and args.num_processes < 1:
        raise DistributedError(f"--num-processes must be >= 1, got {args.num_processes}")
    if args.process_id is not None:
        if args.process_id < 0:
            raise DistributedError(f"--process-id must be >= 0, got {args.process_id}")
        if args.num_processes is not None and args.process_id >= args.num_processes:
            raise DistributedError(f"--process-id must be below --num-processes {args.num_processes} "
                                   f"(ids count from 0), got {args.process_id}")
    for name, v in (("--init-timeout", init_timeout), ("--peer-timeout", peer_timeout)):
        if not 1 <= v <= 86400:  # also refuses nan
            raise DistributedError(f"{name} must be a number of seconds in 1 .. 86400, got {v:g}")
    return Cluster(args.coordinator, args.num_processes, args.process_id, init_timeout, peer_timeout)
