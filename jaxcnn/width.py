"""Width multiplier as a transformation of any model.

Every *free* channel count (``Conv.features``, ``Dense.features``) is multiplied by
``m``; layers marked ``keep_width=True`` (classifier heads) keep theirs; depthwise
convolutions, BatchNorm, pooling and activations follow their input, so they need
no rule of their own.

Rounding: by default ``round(c * m)`` to the nearest integer (halves up), at least 1,
which reproduces the MobileNet paper's counts for alpha in {1, 0.75, 0.5, 0.25}.
With ``divisor=8`` the TF-slim rule is used instead: round to the nearest multiple
of 8, never below 8, and never more than 10% below ``c * m``.

Grouped convolutions keep their cardinality: their channel counts are rounded (once,
from ``c * m``) to the nearest multiple of the group count. So that a grouped
convolution's *input* agrees with it, the same rule applies to every channel count in
the model that the group count divides: in ResNeXt the 1x1 convolution feeding the
32-group 3x3 has 128 channels, and both become ``32 * round(128 m / 32)``.
"""

from __future__ import annotations

import dataclasses
import math

from jaxcnn.core import Layer, map_layers


def round_channels(c: int, m: float, *, divisor: int | None = None, groups: int = 1) -> int:
    """Scaled channel count of ``c`` under multiplier ``m`` (see the module docstring)."""
    v = c * m
    step = math.lcm(divisor or 1, groups)
    if divisor:
        out = max(step, int(v + step / 2) // step * step)
        if out < 0.9 * v:
            out += step
        return out
    return max(step, math.floor(v / step + 0.5) * step)


def check_width(m: object, where: str = "width") -> float:
    """Return ``m`` as a float or raise ValueError naming ``where``."""
    try:
        value = float(m)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"{where} must be a positive number, got {m!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{where} must be a positive number, got {m!r}")
    return value


def _all_layers(model: Layer) -> list[Layer]:
    found: list[Layer] = []
    map_layers(lambda layer: found.append(layer) or layer, model)
    return found


def scale_width(model: Layer, m: float, *, divisor: int | None = None) -> Layer:
    """A copy of ``model`` with every free channel count multiplied by ``m``."""
    if not isinstance(model, Layer):
        raise TypeError(f"scale_width takes a model (a Layer), got {type(model).__name__} {str(model)[:40]!r}")
    m = check_width(m)
    if divisor is not None and (not isinstance(divisor, int) or divisor < 1):
        raise ValueError(f"divisor must be a positive int or None, got {divisor!r}")
    if m == 1.0:
        return model

    group_counts = {g for layer in _all_layers(model) for g in layer.width_fields().values() if g > 1}

    def step(c: int) -> int:
        return max((g for g in group_counts if c % g == 0), default=1)

    def scale(layer: Layer) -> Layer:
        fields = layer.width_fields()
        if not fields:
            return layer
        new = {}
        for name in fields:
            c = getattr(layer, name)
            new[name] = round_channels(c, m, divisor=divisor, groups=step(c))
        return dataclasses.replace(layer, **new)

    return map_layers(scale, model)
