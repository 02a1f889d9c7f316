"""FC-to-conv conversion (SPEC F): a ``Flatten -> Dense -> ...`` head becomes convolutions.

The first dense layer after a Flatten of an ``(H, W, C)`` map becomes an ``H x W``
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

from dataclasses import dataclass, field

from jaxcnn.combinators import Sequential
from jaxcnn.core import Layer, Params, Shape, ShapeError, check_shape
from jaxcnn.layers import Conv, Dense, Flatten, Identity


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
