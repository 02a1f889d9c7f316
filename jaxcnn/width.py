"""Width multiplier as a transformation of any model.

Every *free* channel count (``Conv.features``, ``Dense.features``) is multiplied by
``m``; layers marked ``fixed=True`` (classifier heads) keep theirs; depthwise
convolutions, BatchNorm, pooling and activations follow their input, so they need
no rule of their own.

Rounding: by default ``round(c * m)`` to the nearest integer (halves up), at least 1,
which reproduces the MobileNet paper's counts for alpha in {1, 0.75, 0.5, 0.25}.
With ``divisor=8`` the TF-slim rule is used instead: round to the nearest multiple
of 8, never below 8, and never more than 10% below ``c * m``. Grouped convolutions
are rounded to a multiple of their group count so the cardinality is kept.
"""

from __future__ import annotations

import dataclasses
import math

from jaxcnn.core import Layer, map_layers
from jaxcnn.layers import Conv, Dense


def round_channels(c: int, m: float, *, divisor: int | None = None, groups: int = 1) -> int:
    """Scaled channel count of ``c`` under multiplier ``m`` (see the module docstring)."""
    v = c * m
    if divisor:
        out = max(divisor, int(v + divisor / 2) // divisor * divisor)
        if out < 0.9 * v:
            out += divisor
    else:
        out = max(1, math.floor(v + 0.5))
    if groups > 1:
        out = max(groups, math.floor(out / groups + 0.5) * groups)
    return out


def check_width(m: object, where: str = "width") -> float:
    """Return ``m`` as a float or raise ValueError naming ``where``."""
    try:
        value = float(m)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"{where} must be a positive number, got {m!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{where} must be a positive number, got {m!r}")
    return value


def scale_width(model: Layer, m: float, *, divisor: int | None = None) -> Layer:
    """A copy of ``model`` with every free channel count multiplied by ``m``."""
    m = check_width(m)
    if divisor is not None and (not isinstance(divisor, int) or divisor < 1):
        raise ValueError(f"divisor must be a positive int or None, got {divisor!r}")
    if m == 1.0:
        return model

    def scale(layer: Layer) -> Layer:
        if isinstance(layer, Conv) and not layer.fixed:
            return dataclasses.replace(
                layer, features=round_channels(layer.features, m, divisor=divisor, groups=layer.groups)
            )
        if isinstance(layer, Dense) and not layer.fixed:
            return dataclasses.replace(layer, features=round_channels(layer.features, m, divisor=divisor))
        return layer

    return map_layers(scale, model)
