"""Whole-model transformations: width, compute dtype, convolution lowering, FC-to-conv.

Each is a pure function ``Layer -> Layer`` built on :func:`jaxcnn.core.map_layers` that reads the
layers' declared traits (``width_fields``, ``conv_lowering``, ``compute_dtype``), never a list of types.

**Width.** Every *free* channel count (``Conv.features``, ``Dense.features``) is multiplied by
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

**FC to conv** (SPEC F). The first dense layer after a Flatten of an ``(H, W, C)`` map becomes an ``H x W``
VALID convolution whose kernel is the dense weight reshaped to ``(H, W, C, F)``
(Flatten is row-major over H, W, C, so the reshape is exact); every later dense
layer becomes a 1x1 convolution. At the training resolution the converted network
gives the same logits with shape ``(1, 1, K)``; on a larger input it gives a score
map whose every position equals the original network run on the corresponding
window (stride = the network's total stride).

That last equality is exact when the convolutional body has no padding (VALID):
then each score depends on exactly its window. With padded convolutions (VGG's
pad 1) positions near a window's edge see real neighbouring pixels where the
cropped run saw zero padding, so the map equals the sliding-window evaluation only
approximately; the logits at the training resolution are always identical.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import jax.numpy as jnp

from jaxcnn.combinators import Sequential
from jaxcnn.core import Layer, Params, Shape, ShapeError, check_shape, map_layers
from jaxcnn.layers import Conv, Dense, Flatten, Identity
from jaxcnn.lowering.conv import IMPLS


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


MAX_WIDTH = 1024.0  # far beyond any real multiplier; keeps c * m an exact, finite channel count


def check_width(m: object, where: str = "width", *, text: bool = False) -> float:
    """Return ``m`` as a float in (0, MAX_WIDTH] or raise ValueError naming ``where``; text only if ``text``."""
    bad = ValueError(f"{where} must be a positive number up to {MAX_WIDTH:g}, got {type(m).__name__} {str(m)[:40]!r}")
    if isinstance(m, (str, bytes)) and not text or isinstance(m, bool) or type(m).__name__ == "bool_":
        raise bad
    try:
        value = float(m)  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError):
        raise bad from None
    if not math.isfinite(value) or not 0 < value <= MAX_WIDTH:
        raise bad
    return value


def _all_layers(model: Layer) -> list[Layer]:
    found: list[Layer] = []
    map_layers(lambda layer: found.append(layer) or layer, model)
    return found


def scale_width(model: Layer, m: float, *, divisor: int | None = None) -> Layer:
    """A copy of ``model`` with every free channel count multiplied by ``m``.

    Args:
        model: any model; layers declare their free channel counts (``width_fields``), so layers of
            one's own scale too, and ``keep_width=True`` layers (classifier heads) keep theirs.
        m: the width multiplier, a positive number.
        divisor: None rounds ``c * m`` to the nearest integer; 8 uses TF-slim's multiple-of-8 rule.

    Returns:
        The scaled model (grouped convolutions keep their cardinality; see the module docstring).
    """
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


def _takes(layer: Layer, hyperparameter: str) -> bool:
    """Whether ``layer`` is a dataclass with a field ``hyperparameter`` (the opt-in to a transform)."""
    return dataclasses.is_dataclass(layer) and any(f.name == hyperparameter for f in dataclasses.fields(layer))


def mixed_precision(model: Layer, compute_dtype: str | None = "bfloat16") -> Layer:
    """Run every layer with a ``compute_dtype`` hyperparameter (convolutions, dense, BatchNorm) in ``compute_dtype``.

    Parameters stay float32 (master copies, cast on use) and BatchNorm statistics are
    computed and kept in float32; ``None`` restores full precision.
    """
    if compute_dtype is not None:
        compute_dtype = jnp.dtype(compute_dtype).name

    def cast(layer: Layer) -> Layer:
        if _takes(layer, "compute_dtype"):
            return dataclasses.replace(layer, compute_dtype=compute_dtype)
        return layer

    return map_layers(cast, model)


def with_conv_impl(model: Layer, impl: str = "auto", *, depthwise_only: bool = False) -> Layer:
    """Choose the lowering (``jaxcnn.lowering.conv.IMPLS``) of every layer whose ``conv_lowering`` is set.

    With ``depthwise_only`` only grouped and depthwise convolutions change.
    """
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {', '.join(IMPLS)}, got {impl!r}")

    def pick(layer: Layer) -> Layer:
        kind = layer.conv_lowering()
        if kind is not None and (not depthwise_only or kind == "grouped"):
            return dataclasses.replace(layer, impl=impl)
        return layer

    return map_layers(pick, model)


@dataclass
class _Ctx:
    flat_from: Shape | None = None  # (H, W, C) that the pending Flatten flattened
    converted: list[str] = field(default_factory=list)


def fc_to_conv(model: Layer, params: Params, in_shape: Shape) -> tuple[Layer, Params]:
    """Return ``(conv_model, conv_params)`` equivalent to ``model`` at ``in_shape``.

    The model must be a Sequential (possibly nested) whose head is Flatten followed by
    Dense layers and layers that act per element or per channel (activations,
    Dropout, BatchNorm). Parameter keys are kept, so state trees carry over unchanged.
    """
    in_shape = check_shape(model, in_shape)
    model.spec(in_shape)
    ctx = _Ctx()
    new_model, new_params = _convert(model, params, in_shape, ctx, "")
    if not ctx.converted:
        raise ShapeError(
            model, in_shape, "no Flatten -> Dense head to convert",
            "fc_to_conv needs a Sequential with Flatten followed by Dense layers (global pooling heads are already"
            " convolutional up to the pooling)",
        )
    return new_model, new_params


def _convert(layer: Layer, params: Params, shape: Shape, ctx: _Ctx, path: str) -> tuple[Layer, Params]:
    if isinstance(layer, Sequential):
        new_layers, new_params = [], {}
        keys = [k for _, k, _ in layer.children()]
        for (attr, key, child), child_shape in zip(layer.children(), layer.child_shapes(shape), strict=True):
            sub, sub_params = _convert(child, params.get(key, {}), child_shape, ctx, f"{path}.{attr}".lstrip("."))
            new_layers.append(sub)
            if sub.has_arrays():
                new_params[key] = sub_params
        # keep the original keys (default keys contain the kind, which changes here)
        return Sequential(tuple(new_layers), tuple(keys)), new_params
    if ctx.flat_from is None and not isinstance(layer, Flatten):
        return layer, params  # the convolutional body is kept as it is
    if isinstance(layer, Flatten):
        if len(shape) != 3:
            raise ShapeError(layer, shape, "fc_to_conv expects Flatten of an (H, W, C) map", "")
        ctx.flat_from = shape
        return Identity(), {}
    if isinstance(layer, Dense) and ctx.flat_from is not None:
        h, w, c = ctx.flat_from
        ctx.flat_from = (1, 1, layer.features)
        conv = Conv(
            layer.features, (h, w), 1, "VALID", use_bias=layer.use_bias, kernel_init=layer.kernel_init,
            keep_width=layer.keep_width, compute_dtype=layer.compute_dtype,
        )
        new = {"w": params["w"].reshape(h, w, c, layer.features)}
        if layer.use_bias:
            new["b"] = params["b"]
        ctx.converted.append(path)
        return conv, new
    if not layer.pointwise:
        raise ShapeError(
            layer, shape, "fc_to_conv can only convert Dense, activation, Dropout and BatchNorm layers after Flatten",
            "Remove or rewrite this layer in the head",
        )
    return layer, params
