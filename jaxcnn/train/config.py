"""What defines a training run besides the model and the data: :class:`TrainConfig`."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from jaxcnn.lowering import compile_options
from jaxcnn.summary import OPTIMIZER_SLOTS

# The vocabulary of a TrainConfig, read by its check, the optax factory (train/optimizers.py) and the CLI.
OPTIMIZERS: tuple[str, ...] = tuple(OPTIMIZER_SLOTS)
SCHEDULES = ("constant", "cosine", "multistep")
LOOPS = ("device", "host")

SEED_BATCHING = ("auto", "vmap", "unroll")
PRECISIONS = ("float32", "bf16")


def _real(v: object) -> bool:
    """A finite real number (int or float, not bool or text)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. the loss became NaN/Inf); the message names the step."""


def _field(default: Any, help: str, **meta: Any) -> Any:
    """A TrainConfig field whose ``help`` is its documentation, in ``help(TrainConfig)`` and as CLI flag help."""
    return field(default=default, metadata={"help": help, **meta})


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run besides the model and the data.

    Each field's documentation is in ``TrainConfig.__dataclass_fields__[name].metadata["help"]`` and
    in :func:`describe`; the command-line flags of ``jaxcnn train`` and ``jaxcnn study`` are generated
    from these fields (``--weight-decay`` for ``weight_decay``), with these defaults.
    """

    epochs: int = _field(10, "passes over the training set", positive=True)
    batch: int = _field(128, "examples per optimizer step (split over all devices, and into `accumulate` "
                                  "micro-batches)", positive=True)
    optimizer: str = _field("momentum", "optimizer", choices=OPTIMIZERS)
    lr: float = _field(0.05, "peak learning rate", positive=True)
    momentum: float = _field(0.9, "momentum of momentum/nesterov, beta1 of adam/adamw")
    weight_decay: float = _field(5e-4, "L2 / decoupled weight decay, on conv/dense weights only (never BN or biases)")
    schedule: str = _field("cosine", "learning-rate schedule after warm-up", choices=SCHEDULES)
    milestones: tuple[int, ...] = _field((), "'multistep' schedule: multiply the learning rate by milestone_factor "
                                             "at each of these epochs (comma-separated; PyTorch's MultiStepLR)")
    milestone_factor: float = _field(0.1, "'multistep' schedule: the factor at each milestone (e.g. 0.2 at "
                                          "60,120,160 of 200 for Wide ResNets; MultiStepLR's gamma)", positive=True)
    warmup_epochs: float = _field(0.0, "linear warm-up from 0 to lr over this many epochs")
    label_smoothing: float = _field(0.0, "label smoothing of the cross-entropy, in [0, 1)")
    # the command line sets these two from the data (jaxcnn.train.prepare.augmentation): ``cli_default`` says how,
    # in --help, help(TrainConfig) and README alike
    crop_pad: int = _field(0, "random crop after padding by this many pixels (0 = off)",
                           cli_default="4 at 32 px and above, 2 at 16-31 px, 1 below")
    flip: bool = _field(False, "random horizontal flips", cli_default="on, except for digits")
    seed: int = _field(0, "first seed")
    num_seeds: int = _field(1, "K seeds trained together in one program: seed, seed+1, ..., seed+K-1 (the list of "
                               "seed values is what results call `seeds`)", positive=True)
    eval_batch: int = _field(500, "examples per evaluation batch", positive=True)
    loop: str = _field("device", "device: the training set on the device, compiled chunks of steps; host: one "
                                 "jitted step per batch, batches gathered on the host (streaming)", choices=LOOPS)
    chunk: int = _field(0, "steps per compiled chunk of the device loop; 0 = auto (CPU: 1, or 4 unrolled for one "
                           "seed over 1,000+ steps; else the epoch)")
    # How K seeds share one compiled program: "vmap" batches them (one wide program: best on GPU/TPU),
    # "unroll" writes K copies of the step side by side (on CPU 1.3-2.4x faster: a vmapped
    # convolution becomes a grouped one, XLA:CPU's slowest kind); "auto" picks by backend.
    seed_batching: str = _field("auto", "how K seeds share one program: vmap, unroll, or auto (by backend)",
                                choices=SEED_BATCHING)
    compile_options: str = _field(
        "auto", "XLA options of the training programs: auto = the fastest candidate that keeps float32 accuracy, "
                "measured once per model and machine (cached; jaxcnn.lowering.compile_options), or a candidate name",
        choices=compile_options.CHOICES)
    # added by issue 27 (at the end, so positional construction keeps its meaning); at their defaults
    # these change nothing, so records written before them read as runs at the defaults
    ema: float = _field(0.0, "decay of an exponential moving average of the weights and BN statistics, updated "
                             "after every step (decay min(ema, (1+n)/(10+n)) at step n), evaluated and checkpointed "
                             "beside the raw ones (0 = off; e.g. 0.999)")
    accumulate: int = _field(1, "micro-batches per optimizer step: each batch is split into this many equal parts "
                                "whose mean gradient makes one update (batch stays the examples per update, so lr and "
                                "schedule keep their meaning; batch must be a multiple)", positive=True)
    precision: str = _field("float32", "compute dtype: float32, or bf16 (bfloat16 convolution/dense/BN arithmetic; "
                                       "float32 master weights, BN statistics and loss)", choices=PRECISIONS)
    label_noise: float = _field(0.0, "fraction of training labels replaced by a random incorrect class, drawn once "
                                     "per example from label_noise_seed (fixed across epochs and seeds; test labels "
                                     "stay clean), in [0, 1)")
    label_noise_seed: int = _field(0, "seed of the label_noise draw, independent of the training seeds")

    def resume_problem(self, trained_epochs: object) -> str | None:
        """Why a checkpoint of a run with ``trained_epochs`` epochs cannot continue under this config, or None."""
        if not isinstance(trained_epochs, int) or trained_epochs == self.epochs or self.schedule != "cosine":
            return None  # constant and multistep schedules give every epoch the same rate whatever the epoch count
        return (f"was written by a run of `epochs={trained_epochs}` under the cosine schedule, whose learning rate "
                f"at every step depends on the epoch count, so `epochs={self.epochs}` would continue another "
                f"schedule; resume with `epochs={trained_epochs}`, or train `epochs={self.epochs}` from scratch in "
                "another output folder (only constant and multistep schedules can be extended)")

    def check(self) -> TrainConfig:
        """Return self or raise ValueError naming the bad option."""
        checks = [
            (_int(self.epochs) and self.epochs >= 1, "epochs must be a positive int"),
            (_int(self.batch) and self.batch >= 1, "batch must be a positive int"),
            (self.optimizer in OPTIMIZERS, f"optimizer must be one of {', '.join(OPTIMIZERS)}"),
            (self.schedule in SCHEDULES, f"schedule must be one of {', '.join(SCHEDULES)}"),
            (_real(self.lr) and self.lr > 0, f"lr must be a positive number, got {self.lr!r}"[:80]),
            (_real(self.momentum), f"momentum must be a number, got {self.momentum!r}"[:80]),
            (_real(self.weight_decay) and self.weight_decay >= 0,
             f"weight_decay must be a number >= 0, got {self.weight_decay!r}"[:80]),
            (_real(self.warmup_epochs) and self.warmup_epochs >= 0,
             f"warmup_epochs must be a number >= 0, got {self.warmup_epochs!r}"[:80]),
            (_real(self.label_smoothing) and 0 <= self.label_smoothing < 1, "label_smoothing must be in [0, 1)"),
            (_int(self.crop_pad) and self.crop_pad >= 0, "crop_pad must be an int >= 0"),
            (_real(self.milestone_factor) and self.milestone_factor > 0, "milestone_factor must be a positive number"),
            (isinstance(self.milestones, tuple) and all(_int(e) and e >= 1 for e in self.milestones),
             "milestones must be positive ints, as a tuple"),
            (isinstance(self.num_seeds, int) and self.num_seeds >= 1, "num_seeds must be a positive int"),
            (isinstance(self.seed, int) and isinstance(self.num_seeds, int)
             and 0 <= self.seed <= 2**32 - self.num_seeds,
             f"seed must be an int in [0, 2**32 - K] with K = {self.num_seeds} seeds (each of seed .. seed+K-1 "
             f"is a random key), got {str(self.seed)[:30]}"),
            (_int(self.eval_batch) and self.eval_batch >= 1, "eval_batch must be a positive int"),
            (self.loop in LOOPS, f"loop must be one of {', '.join(LOOPS)}"),
            (isinstance(self.chunk, int) and self.chunk >= 0, "chunk must be an int >= 0"),
            (self.seed_batching in SEED_BATCHING, f"seed_batching must be one of {', '.join(SEED_BATCHING)}"),
            (self.compile_options in compile_options.CHOICES,
             f"compile_options must be one of {', '.join(compile_options.CHOICES)}"),
            (_real(self.ema) and 0 <= self.ema < 1, f"ema must be a decay in [0, 1) (0 = off), got {self.ema!r}"[:80]),
            (_int(self.accumulate) and self.accumulate >= 1, "accumulate must be a positive int"),
            (not _int(self.accumulate) or not _int(self.batch) or self.batch % self.accumulate == 0,
             f"batch={self.batch} must be a multiple of accumulate={self.accumulate} (batch is the examples per "
             f"update, split into accumulate micro-batches)"),
            (self.precision in PRECISIONS, f"precision must be one of {', '.join(PRECISIONS)}"),
            (_real(self.label_noise) and 0 <= self.label_noise < 1,
             f"label_noise must be a fraction in [0, 1), got {self.label_noise!r}"[:80]),
            (_int(self.label_noise_seed) and 0 <= self.label_noise_seed < 2**63,
             "label_noise_seed must be an int >= 0"),
        ]
        for ok, msg in checks:
            if not ok:  # the field in backticks, so the CLI prints the flag that sets it (cli.args.as_flags)
                name, _, rest = msg.partition(" ")
                raise ValueError(f"TrainConfig: `{name}` {rest}" if name in _FIELDS else f"TrainConfig: {msg}")
        return self


# Fields and values renamed since records were first written (issue 23: "seeds" was a count here and a list
# everywhere else; "mode" and the "step" schedule gave "step" two more meanings). Old records still resume.
RENAMED_FIELDS = {"seeds": "num_seeds", "mode": "loop", "step_epochs": "milestones", "step_factor": "milestone_factor"}
RENAMED_VALUES = {("loop", "epoch"): "device", ("loop", "step"): "host", ("schedule", "step"): "multistep"}


def fill_new_fields(recorded: Mapping[str, Any], now: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``recorded`` (a recipe as a checkpoint or study record wrote it) under today's field names and values,
    with each TrainConfig field it lacks but ``now`` has at its default: a field added since then meant its default.

    ``prefix`` is prepended to field names (the run identity keys them ``config.NAME``). The one rule of both
    "same run?" checks (resume, study rerun) and of reading a checkpoint's seeds.
    """
    current = {}
    for key, value in recorded.items():
        name = key[len(prefix):] if key.startswith(prefix) else None
        if name in RENAMED_FIELDS:
            name = RENAMED_FIELDS[name]
            key = prefix + name
        if name is not None and isinstance(value, str):
            value = RENAMED_VALUES.get((name, value), value)
        current[key] = value
    defaults = {f"{prefix}{f.name}": f.default for f in fields(TrainConfig)}
    return {**{k: v for k, v in defaults.items() if k in now and k not in current}, **current}


def describe() -> str:
    """Every TrainConfig field with its default and documentation, one per line."""
    return "\n".join(f"{f.name} = {f.default!r}: {f.metadata['help']}" + (
        f" [`jaxcnn train`/`study` default: {f.metadata['cli_default']}]" if "cli_default" in f.metadata else "")
        for f in fields(TrainConfig))


_FIELDS = frozenset(f.name for f in fields(TrainConfig))

# help(TrainConfig) shows the class docstring, not field metadata: append the fields, generated from the
# one definition above (so the docs cannot drift from the dataclass)
TrainConfig.__doc__ = (TrainConfig.__doc__ or "") + "\n    Fields (name = default: meaning):\n\n" + "".join(
    f"    * {line}\n" for line in describe().splitlines())
