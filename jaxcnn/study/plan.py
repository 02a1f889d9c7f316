"""An ablation as data: models x axes -> study members, each checked before anything trains.

A plan names models (registry names, a user's included) and axes: ``width``, ``input_size`` or
any builder option (``depth``, ``k``, ``dropout``, ...). Its members are the product of the axes
for every model. Each member's ``variant`` spells its whole identity
(``resnet_cifar/0.5,depth=8``), so its run folder, its record and its row are its own.
The recipe is one :class:`~jaxcnn.train.config.TrainConfig` with optional per-model overrides,
so a study of families that need different recipes (allconv6 vs MobileNet) is one plan.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from jaxcnn import models
from jaxcnn.core import LayerError
from jaxcnn.study.member import Member
from jaxcnn.study.record import StudyRecord
from jaxcnn.summary import summary
from jaxcnn.train.config import TrainConfig

__all__ = ["Axis", "Plan", "PlanError", "axis_value", "check_members", "in_window", "member_input_shape",
           "neighbour_pairs", "numeric_axes", "parse_axis"]

SPECIAL = ("width", "input_size")  # axes that are not builder options


class PlanError(ValueError):
    """A plan that cannot run: the message names the model, member or axis and the rule."""


@dataclass(frozen=True)
class Axis:
    """One varied key and its values as text (``--vary depth=8,14,20``), typed per model by its builder.

    For sampling (:meth:`Plan.sample`) an axis may instead be a range: ``lo:hi`` (integers, uniform,
    both ends included) or ``log:lo:hi`` (log-uniform numbers, kept to 3 significant digits).
    """

    key: str
    texts: tuple[str, ...] = ()
    low: float | None = None
    high: float | None = None
    log: bool = False

    @property
    def is_range(self) -> bool:
        """Whether this axis is a range to sample from rather than a list."""
        return self.low is not None


def parse_axis(text: str) -> Axis:
    """``KEY=V1,V2,...`` as an :class:`Axis` (PlanError naming the text if it is not one)."""
    key, sep, values = text.partition("=")
    key = key.strip()
    if sep and key.isidentifier() and ":" in values and "," not in values:
        return _parse_range(key, values.strip())
    texts = tuple(v.strip() for v in values.split(",") if v.strip())
    if not sep or not key.isidentifier() or not texts:
        raise PlanError(f"`vary` takes KEY=V1,V2,... (e.g. depth=8,14,20 or width=0.5,1), got {text!r}")
    if len(set(texts)) != len(texts):
        raise PlanError(f"`vary` {key}: a value is listed twice in {values!r}")
    return Axis(key, texts)


def _parse_range(key: str, text: str) -> Axis:
    """``lo:hi`` (integers) or ``log:lo:hi`` (log-uniform) as a range :class:`Axis`."""
    parts = text.split(":")
    log = parts[0] == "log"
    try:
        if log and len(parts) == 3:
            lo, hi = float(parts[1]), float(parts[2])
            ok = 0 < lo <= hi and math.isfinite(hi)
        elif not log and len(parts) == 2:
            lo, hi = int(parts[0]), int(parts[1])
            ok = lo <= hi
        else:
            ok = False
    except ValueError:
        ok = False
    if not ok:
        raise PlanError(f"`vary` {key}={text}: a range is LO:HI (integers, LO <= HI) or log:LO:HI (0 < LO <= HI)")
    return Axis(key, (), lo, hi, log)


def _number(text: str, key: str, kind: type) -> Any:
    try:
        v = kind(text)
    except ValueError:
        raise PlanError(f"`vary` {key}={text}: expected a positive {kind.__name__}") from None
    if not (v > 0 and math.isfinite(v)):
        raise PlanError(f"`vary` {key}={text}: expected a positive {kind.__name__}")
    return v


def _fmt(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


@dataclass(frozen=True)
class Plan:
    """Models, axes, fixed options and recipe of one study; :meth:`members` expands it."""

    models: tuple[str, ...]
    axes: tuple[Axis, ...] = ()
    options: dict[str, dict[str, Any]] = field(default_factory=dict)  # model -> fixed builder options
    recipe: TrainConfig = field(default_factory=TrainConfig)
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)  # model -> TrainConfig fields for it
    pad_to: dict[str, int] = field(default_factory=dict)  # model -> zero-pad smaller inputs to this size

    def __post_init__(self) -> None:
        if not self.models:
            raise PlanError("a study needs at least one model")
        keys = [a.key for a in self.axes]
        if len(set(keys)) != len(keys):
            raise PlanError(f"`vary` names {sorted(k for k in keys if keys.count(k) > 1)[0]} twice; give one list")
        for name in self.models:
            models.parse_name(name)  # unknown models fail here, with the registry's suggestion
            if "width" in keys and "/" in name:
                raise PlanError(f"{name}: width is varied, so name the model without a /width suffix")
        known = {f.name for f in dataclasses.fields(TrainConfig)}
        for name, over in self.overrides.items():
            bad = sorted(set(over) - known)
            if bad:
                raise PlanError(f"recipe override for {name}: {', '.join(bad)} is not a TrainConfig field")

    @property
    def varied(self) -> tuple[str, ...]:
        """The varied keys, in the order given."""
        return tuple(a.key for a in self.axes)

    def _values(self, model: str, axis: Axis) -> list[Any]:
        """The axis's values typed for ``model`` (its builder's annotation for an option)."""
        if axis.is_range:
            raise PlanError(f"`vary` {axis.key} is a range ({axis.low}:{axis.high}); ranges need `sample=N` "
                            "(the grid of a range is not defined)")
        if axis.key == "width":
            return [_number(t, "width", float) for t in axis.texts]
        if axis.key == "input_size":
            return [_number(t, "input_size", int) for t in axis.texts]
        try:
            return [models.parse_option(model, axis.key, t) for t in axis.texts]
        except ValueError as e:
            raise PlanError(str(e)) from None

    def _member(self, name: str, chosen: dict[str, Any]) -> Member:
        """The member of model ``name`` at the axis values ``chosen``."""
        base = models.parse_name(name)[0]
        recipe = dataclasses.replace(self.recipe, **self.overrides.get(base, {}))
        build = name if "width" not in chosen else f"{name}/{_fmt(chosen['width'])}"
        opts = {**self.options.get(base, {}), **{k: v for k, v in chosen.items() if k not in SPECIAL}}
        tail = "".join(f",{k}={_fmt(v)}" for k, v in chosen.items() if k != "width")
        # the table shows the options beside the label, so the label holds only what options do not
        label = ", ".join(f"{k}={_fmt(v)}" for k, v in chosen.items() if k in SPECIAL)
        return Member(family=base, variant=build + tail, label=label, options=opts, recipe=recipe,
                      pad_to=self.pad_to.get(base), model=build if tail else "", input_size=chosen.get("input_size"))

    def members(self) -> list[Member]:
        """Every member: for each model, the product of the axes (first axis outermost)."""
        out: list[Member] = []
        for name in self.models:
            grids = [self._values(name, a) for a in self.axes]
            out += [self._member(name, dict(zip(self.varied, combo, strict=True)))
                    for combo in itertools.product(*grids)]
        return _unique(out)

    def sample(self, n: int, *, seed: int = 0, accept: Callable[[Member], bool] | None = None,
               max_draws: int | None = None) -> list[Member]:
        """``n`` distinct members drawn at random (models in turn; each axis uniformly from its list or range).

        Deterministic from ``seed``. ``accept(member)`` may refuse a draw (a parameter or MAC window):
        refused draws never train. PlanError when ``max_draws`` (default 200 n) draws give fewer than n.
        """
        rng = random.Random(seed)
        out: dict[str, Member] = {}
        limit = max_draws or 200 * n
        for draw in range(limit):
            if len(out) == n:
                break
            name = self.models[draw % len(self.models)]
            chosen = {a.key: self._draw(name, a, rng) for a in self.axes}
            m = self._member(name, chosen)
            if m.variant not in out and (accept is None or accept(m)):
                out[m.variant] = m
        if len(out) < n:
            raise PlanError(f"`sample={n}`: only {len(out)} distinct members were accepted in {limit} draws; "
                            "widen the axes or the parameter/MAC window")
        return list(out.values())

    def _draw(self, model: str, axis: Axis, rng: random.Random) -> Any:
        """One random value of ``axis`` for ``model``."""
        if not axis.is_range:
            return rng.choice(self._values(model, axis))
        if axis.log:
            v = math.exp(rng.uniform(math.log(axis.low), math.log(axis.high)))
            v = float(f"{v:.3g}")
        else:
            v = rng.randint(int(axis.low), int(axis.high))
        if axis.key in SPECIAL:
            return _number(str(v), axis.key, int if axis.key == "input_size" else float)
        try:
            return models.parse_option(model, axis.key, str(v))
        except ValueError as e:
            raise PlanError(str(e)) from None


def _unique(out: list[Member]) -> list[Member]:
    """``out``, or PlanError naming a member that appears twice."""
    seen: set[str] = set()
    for m in out:
        if m.variant in seen:
            raise PlanError(f"member {m.variant} appears twice (a model is listed twice?)")
        seen.add(m.variant)
    return out


def member_input_shape(m: Member, in_shape: Sequence[int]) -> tuple[int, int, int]:
    """The per-example input member ``m`` trains on: the data's, resized to its ``input_size``, padded to ``pad_to``."""
    h, w = (m.input_size, m.input_size) if m.input_size else (in_shape[0], in_shape[1])
    if m.pad_to:
        h, w = max(h, m.pad_to), max(w, m.pad_to)
    return h, w, in_shape[2]


def in_window(m: Member, num_classes: int, in_shape: Sequence[int], *, params: tuple[float, float] | None = None,
              macs: tuple[float, float] | None = None) -> bool:
    """Whether member ``m`` (built for ``num_classes`` at its input) has parameters and MACs inside the windows."""
    if params is None and macs is None:
        return True
    try:
        totals = summary(models.get(m.build_name, num_classes=num_classes, **m.options),
                         member_input_shape(m, in_shape)).totals
    except (ValueError, LayerError, TypeError):
        return True  # an invalid member is not the window's to judge: check_members names it
    return all(lo <= getattr(totals, key) <= hi for key, window in (("learnable_params", params), ("macs", macs))
               if window is not None for lo, hi in [window])


def check_members(members: Sequence[Member], num_classes: int, in_shape: Sequence[int]) -> list[str]:
    """One line per member that cannot be built or does not fit its input (empty: every member is valid).

    Builds each member's model and runs its shape ``spec`` on the member's input (resized and
    padded as it will be), so nothing invalid is found after another member has trained.
    """
    problems = []
    for m in members:
        try:
            model = models.get(m.build_name, num_classes=num_classes, **m.options)
            summary(model, member_input_shape(m, in_shape))
        except (ValueError, LayerError, TypeError) as e:
            text = str(e).splitlines()[0] if str(e) else type(e).__name__
            problems.append(f"{m.variant}: {text}")
    return problems


def axis_value(record: StudyRecord, key: str) -> Any:
    """A record's value on a study axis: width from its /width suffix, input_size from its input, else its option."""
    if key == "width":
        name = (record.model or record.variant).split(",")[0]
        _, sep, suffix = name.partition("/")
        return float(suffix) if sep else 1.0
    if key == "input_size":
        return record.input_shape[0]
    return (record.options or {}).get(key)


def numeric_axes(plan_axes: Sequence[str], records: Sequence[StudyRecord]) -> list[str]:
    """The varied keys whose values are numbers in every record (the heatmap's candidates)."""
    out = []
    for key in plan_axes:
        values = [axis_value(r, key) for r in records]
        if values and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            out.append(key)
    return out


def neighbour_pairs(axes: Sequence[str], records: Sequence[StudyRecord]) -> list[tuple[str, str, str]]:
    """Comparisons one step along each axis, the other axes held: (question, smaller, next larger).

    For a width x depth grid: width 0.5 -> 1 at each depth, depth 8 -> 14 -> 20 at each width.
    """
    out = []
    for key in axes:
        groups: dict[tuple, list[StudyRecord]] = {}
        for r in records:
            rest = (r.family, *(repr(axis_value(r, k)) for k in axes if k != key))
            groups.setdefault(rest, []).append(r)
        for rows in groups.values():
            try:
                rows = sorted(rows, key=lambda r: axis_value(r, key))
            except TypeError:  # values that do not order (e.g. strings and None): keep the given order
                pass
            for a, b in itertools.pairwise(rows):
                held = ", ".join(f"{k}={_fmt(axis_value(a, k))}" for k in axes if k != key)
                out.append((f"{a.family} {key} {_fmt(axis_value(a, key))} -> {_fmt(axis_value(b, key))}"
                            + (f" at {held}" if held else ""), a.variant, b.variant))
    return out
