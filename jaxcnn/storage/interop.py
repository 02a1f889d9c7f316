"""PyTorch weights in and out: torchvision's VGG-16 (BN), ResNet-50, ResNeXt-50 32x4d, DenseNet-121.

:func:`from_torch` loads a PyTorch ``state_dict`` into the matching jaxcnn model; it works for any
model whose array-owning layers (by their ``torch_arrays`` trait: Conv, DepthwiseConv, Dense, BatchNorm,
or a layer of one's own) come in the same order as the
torch modules in the ``state_dict`` (registration order, which for these models and for an
``nn.Sequential`` is execution order). Layouts are converted: conv kernels OIHW -> HWIO, dense
``(out, in)`` -> ``(in, out)``, and a dense layer after ``Flatten`` of an ``(H, W, C)`` map has its
rows reordered from torch's C, H, W flattening to jaxcnn's H, W, C. The first torch key or shape that
does not fit is named in the error. :func:`to_torch` is the inverse, with torchvision's key names for
the five models (``arch=``) or ``nn.Sequential`` index names (``"0.weight"``, ``"3.1.bias"``).

Files: ``.safetensors`` is read and written without torch (:mod:`jaxcnn.storage.safetensors`); ``.pth`` (and
``.pt``/``.bin``) is read only with ``torch.load(weights_only=True)``, which refuses pickled code.
"""

from __future__ import annotations

import io
import re
from collections import OrderedDict
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from jaxcnn.core import Layer, Node, Shape, walk
from jaxcnn.storage import safetensors
from jaxcnn.storage.files import FileProblem, read_regular

__all__ = ["ARCHS", "InteropError", "from_torch", "load_torchvision", "read_state_dict", "save_state_dict",
           "to_torch"]


class InteropError(ValueError):
    """A state_dict or weights file that does not fit the model (the message names the key) or cannot be read."""


# -- torch names of the zoo models ---------------------------------------------------------


def _resnet_name(keys: tuple[str, ...], _: Node, __: Layer) -> str:
    if keys[0] == "stem":
        return {"conv": "conv1", "bn": "bn1"}[keys[1]]
    if keys[0] == "fc":
        return "fc"
    stage, block = int(keys[0][len("stage"):]), int(keys[1][len("block"):])
    prefix = f"layer{stage}.{block - 1}"
    if keys[3] == "shortcut":
        return f"{prefix}.downsample.{ {'conv': 0, 'bn': 1}[keys[4]] }"
    return f"{prefix}.{keys[4]}"


def _densenet_name(keys: tuple[str, ...], _: Node, __: Layer) -> str:
    norm = {"bn": "norm", "bn1": "norm1", "bn2": "norm2"}
    if keys[0] == "stem":
        return {"conv": "features.conv0", "bn": "features.norm0"}[keys[1]]
    if keys == ("bn",):
        return "features.norm5"
    if keys == ("fc",):
        return "classifier"
    if keys[0].startswith("transition"):
        return f"features.{keys[0]}.{norm.get(keys[1], keys[1])}"
    block, layer = int(keys[0][len("block"):]), int(keys[1][len("layer"):])
    return f"features.denseblock{block}.denselayer{layer}.{norm.get(keys[3], keys[3])}"


def _vgg_name(keys: tuple[str, ...], _: Node, model: Layer) -> str:
    top = [k for _, k, _ in model.children()]
    i, flat = top.index(keys[0]), top.index("flatten")
    return f"features.{i}" if i < flat else f"classifier.{i - flat - 1}"


def _sequential_name(_: tuple[str, ...], node: Node, __: Layer) -> str:
    # nn.Sequential names a module by its index in each enclosing Sequential: layers[3].layers[1] -> "3.1"
    return ".".join(re.findall(r"\[(\d+)\]", node.path))


NAMERS: dict[str, Callable[[tuple[str, ...], Node, Layer], str]] = {
    "vgg16": _vgg_name, "vgg16_bn": _vgg_name, "resnet50": _resnet_name, "resnext50_32x4d": _resnet_name,
    "densenet121": _densenet_name, "sequential": _sequential_name,
}
ARCHS = ("vgg16", "vgg16_bn", "resnet50", "resnext50_32x4d", "densenet121")


# -- layout conversion -------------------------------------------------------------------


def _flattens(node: Node) -> bool:
    """Whether the layer turns an (H, W, C) map into a vector of the same values (a Flatten, by its spec)."""
    return (len(node.in_shape) == 3 and len(node.spec.out_shape) == 1 and not node.layer.has_arrays()
            and node.spec.out_shape[0] == int(np.prod(node.in_shape)))


def _layout(layer: Layer, tname: str) -> str:
    return layer.torch_arrays()[tname][2]


def _owners(model: Layer, in_shape: Shape) -> list[tuple[Node, Shape | None]]:
    """Array-owning leaves in execution order, each with the (H, W, C) a preceding Flatten flattened (or None)."""
    out, flat = [], None
    for node in walk(model, in_shape, leaves_only=True):
        if node.layer.has_arrays():
            dense = any(layout == "dense" for _, _, layout in node.layer.torch_arrays().values())
            out.append((node, flat if dense else None))
        if _flattens(node):
            flat = node.in_shape
        elif node.layer.has_arrays() or node.spec.out_shape != node.in_shape:
            flat = None  # a Dropout or activation between Flatten and Dense keeps the flattening order
    return out


def _torch_params(layer: Layer) -> dict[str, tuple[str, str]]:
    """torch param name -> (jaxcnn tree ("params"/"state"), jaxcnn name) for one layer (its ``torch_arrays``)."""
    arrays = layer.torch_arrays()
    if not arrays:
        raise InteropError(f"{type(layer).__name__} has arrays but declares no torch counterpart (its "
                           "`torch_arrays` trait is empty), so it cannot be converted")
    return {t: (tree, name) for t, (tree, name, _) in arrays.items()}


def _to_jax(layer: Layer, name: str, a: np.ndarray, flat: Shape | None) -> tuple[np.ndarray, Shape]:
    """A (strided) view of ``a`` in jaxcnn's axis order and the shape it takes once copied."""
    layout = _layout(layer, name)
    if layout == "conv":
        view = a.transpose(2, 3, 1, 0)  # (O, I/groups, kh, kw) -> (kh, kw, I/groups, O)
        return view, view.shape
    if layout == "dense":
        if flat is not None:
            h, w, c = flat  # torch flattened C, H, W; jaxcnn flattens H, W, C
            return a.reshape(a.shape[0], c, h, w).transpose(2, 3, 1, 0), (h * w * c, a.shape[0])
        return a.T, a.T.shape
    return a, a.shape


def _to_torch(layer: Layer, name: str, a: np.ndarray, flat: Shape | None) -> tuple[np.ndarray, Shape]:
    """A (strided) view of ``a`` in torch's axis order and the shape it takes once copied."""
    layout = _layout(layer, name)
    if layout == "conv":
        view = a.transpose(3, 2, 0, 1)
        return view, view.shape
    if layout == "dense":
        if flat is not None:
            h, w, c = flat
            return a.reshape(h, w, c, a.shape[1]).transpose(3, 2, 0, 1), (a.shape[1], c * h * w)
        return a.T, a.T.shape
    return a, a.shape


def _torch_copy(layer: Layer, name: str, a: np.ndarray, flat: Shape | None) -> np.ndarray:
    view, shape = _to_torch(layer, name, a, flat)
    return _copy(view, view.dtype, 0).reshape(shape)


def _copy(view: np.ndarray, dtype: Any, axis: int) -> np.ndarray:
    """A C-ordered copy of a transposed ``view``, made in slabs along ``axis`` (the source's leading axis).

    One strided copy of a large transposed matrix thrashes the cache (VGG-16's first dense layer: 2.2 s);
    slabs of 256 source rows take 0.6 s.
    """
    out = np.empty(view.shape, dtype)
    if view.size < 1 << 20:
        out[...] = view
        return out
    for i in range(0, view.shape[axis], 256):
        index = (slice(None),) * (axis % view.ndim) + (slice(i, i + 256),)
        out[index] = view[index]
    return out


def _torch_shape(layer: Layer, name: str, jax_shape: Shape, flat: Shape | None) -> Shape:
    return _to_torch(layer, name, np.empty(jax_shape, np.uint8), flat)[1]


def _get(tree: Any, keys: tuple[str, ...]) -> Any:
    for k in keys:
        tree = tree[k]
    return tree


def _put(tree: dict, keys: tuple[str, ...], value: Any) -> None:
    for k in keys[:-1]:
        tree = tree.setdefault(k, {})
    tree[keys[-1]] = value


# -- import ------------------------------------------------------------------------------


def _numpy(name: str, t: Any) -> np.ndarray:
    try:
        if hasattr(t, "detach"):  # a torch tensor: bfloat16 has no NumPy view, so go through float32
            layout = str(getattr(t, "layout", "torch.strided"))
            if getattr(t, "is_meta", False) or layout != "torch.strided":
                raise InteropError(f"state_dict entry {name!r} is a {'meta' if t.is_meta else layout} tensor "
                                   "with no values; load real (dense) weights")
            t = t.detach().cpu()
            if t.is_floating_point() and str(t.dtype) not in ("torch.float32", "torch.float64", "torch.float16"):
                t = t.float()
            return t.numpy()
        return np.asarray(t)
    except (TypeError, ValueError, RuntimeError, NotImplementedError) as e:
        raise InteropError(f"state_dict entry {name!r} is a {type(t).__name__}, not a tensor of numbers "
                           f"({type(e).__name__}: {str(e)[:100]})") from None


def _floating(name: str, a: np.ndarray) -> np.ndarray:
    """``a`` if its values are real floating point; else InteropError naming the key and its dtype."""
    if not np.issubdtype(a.dtype, np.floating):
        raise InteropError(f"torch key {name!r} holds {a.dtype} values, but every jaxcnn parameter and statistic is "
                           "floating point; convert that entry with .float() or check the state_dict")
    return a


def _modules(state_dict: Mapping[str, Any]) -> list[tuple[str, dict[str, str]]]:
    """(module prefix, {param name: full key}) in the order the state_dict lists them."""
    groups: OrderedDict[str, dict[str, str]] = OrderedDict()
    for key in state_dict:
        if not isinstance(key, str):
            raise InteropError(f"state_dict key {key!r} is not a string")
        prefix, _, name = key.rpartition(".")
        groups.setdefault(prefix, {})[name] = key
    return list(groups.items())


def from_torch(model: Layer, state_dict: Mapping[str, Any], in_shape: Shape = (224, 224, 3)) -> tuple[dict, dict]:
    """``(params, state)`` of ``model`` (per-example ``in_shape``) from a PyTorch ``state_dict``.

    Args:
        model: the jaxcnn model; its array-owning layers (by their ``torch_arrays`` trait) are matched to
            the torch modules in order.
        state_dict: name -> tensor or array, e.g. ``torch_model.state_dict()`` or :func:`read_state_dict`.
        in_shape: one example's shape (it fixes the dense layer after a Flatten).

    Returns:
        ``(params, state)``. Each module's parameter names, shapes (after layout conversion) and count
        must fit, else :class:`InteropError` names the first torch key that does not. Floating arrays
        become float32; ``num_batches_tracked`` is checked present-or-absent only.
    """
    owners = _owners(model, in_shape)
    modules = _modules(state_dict)
    params: dict = {}
    state: dict = {}
    for i, (node, flat) in enumerate(owners):
        where = f"jaxcnn layer {'/'.join(node.key_path) or node.path} ({type(node.layer).__name__})"
        if i >= len(modules):
            last = modules[-1][0] if modules else None
            raise InteropError(f"the state_dict has no module for {where}: it has {len(modules)} modules for "
                               f"{len(owners)} jaxcnn layers with weights (last: {last!r}); is it another model?")
        prefix, keys = modules[i]
        wanted = _torch_params(node.layer)
        names = set(keys) - {"num_batches_tracked"}
        if names != set(wanted):
            first = sorted(names - set(wanted)) or sorted(set(wanted) - names)
            raise InteropError(
                f"torch module {prefix!r} has {sorted(names)}, but it falls on {where}, which needs "
                f"{sorted(wanted)} (first mismatch: {first[0]!r}); the layer orders differ")
        layer_params, layer_state = {}, {}
        shapes = {**node.layer.param_shapes(node.in_shape), **node.layer.state_shapes(node.in_shape)}
        for tname, (tree, jname) in wanted.items():
            a = _floating(keys[tname], _numpy(keys[tname], state_dict[keys[tname]]))
            need = _torch_shape(node.layer, tname, shapes[jname], flat)
            if tuple(a.shape) != tuple(need):
                raise InteropError(f"torch key {keys[tname]!r} has shape {tuple(a.shape)}, but {where} needs "
                                   f"{tuple(need)} in torch layout (jaxcnn {jname} {tuple(shapes[jname])})")
            view, shape = _to_jax(node.layer, tname, a, flat)
            # one copy (a strided one): the source may be a read-only view of a whole file's bytes (safetensors)
            a = _copy(view, np.float32, -1).reshape(shape)
            (layer_params if tree == "params" else layer_state)[jname] = a
        if node.key_path:  # containers keep exactly their array-owning children, so these trees are init's
            _put(params, node.key_path, layer_params)
            _put(state, node.key_path, layer_state)
        else:  # the model is a single layer
            params, state = layer_params, layer_state
    if len(modules) > len(owners):
        prefix, keys = modules[len(owners)]
        raise InteropError(f"unexpected torch key {next(iter(keys.values()))!r}: the model has only {len(owners)} "
                           "layers with weights; is the state_dict for a larger model?")
    return params, state


# -- export ------------------------------------------------------------------------------


def to_torch(model: Layer, params: Any, state: Any, in_shape: Shape = (224, 224, 3), *,
             arch: str = "sequential") -> OrderedDict[str, np.ndarray]:
    """A PyTorch ``state_dict`` (name -> NumPy array, float32) of ``model``'s ``params`` and ``state``.

    Args:
        model: the jaxcnn model.
        params: its parameters (one seed: no seed axis).
        state: its state (BatchNorm statistics).
        in_shape: one example's shape.
        arch: the key names: one of :data:`ARCHS` (torchvision's) or ``"sequential"`` (those of an
            ``nn.Sequential`` mirroring the model).

    Returns:
        The state dict; BatchNorm gets ``num_batches_tracked = 0``. Use ``{k: torch.from_numpy(v) ...}``
        for ``load_state_dict``, or :func:`save_state_dict`.
    """
    if arch not in NAMERS:
        raise InteropError(f"arch must be one of {', '.join(NAMERS)}, got {arch!r}")
    namer = NAMERS[arch]
    out: OrderedDict[str, np.ndarray] = OrderedDict()
    for node, flat in _owners(model, in_shape):
        try:
            prefix = namer(node.key_path, node, model)
        except (KeyError, ValueError, IndexError):
            raise InteropError(f"jaxcnn layer {'/'.join(node.key_path)} has no {arch} name; is the model "
                               f"models.get({arch!r})? (arch='sequential' names any model)") from None
        for tname, (tree, jname) in _torch_params(node.layer).items():
            a = np.asarray(_get(params if tree == "params" else state, node.key_path)[jname])
            out[f"{prefix}.{tname}" if prefix else tname] = _torch_copy(node.layer, tname, a, flat)
            if tname == "running_var":
                out[f"{prefix}.num_batches_tracked"] = np.zeros((), np.int64)
    return out


# -- files -------------------------------------------------------------------------------


def read_state_dict(path: str | Path) -> dict[str, Any]:
    """A ``state_dict`` from ``.safetensors`` (read without torch) or ``.pth``/``.pt``/``.bin``.

    A pickle-based file is read only with ``torch.load(weights_only=True)``: tensors and plain
    containers, never code; a file that needs more is refused with :class:`InteropError`.
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        try:
            return safetensors.load(path)[0]
        except safetensors.SafetensorsError as e:
            raise InteropError(str(e)) from None
    try:
        data = read_regular(path, "weights file")
    except FileProblem as e:
        raise InteropError(str(e)) from None
    try:
        import torch
    except ImportError:
        raise InteropError(f"reading {path} needs torch (pip install -e '.[torch]'); or convert it to "
                           ".safetensors, which is read without torch") from None
    import pickle

    try:
        sd = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise InteropError(f"refused {path}: it is not plain weights (torch.load with weights_only=True: "
                           f"{str(e).splitlines()[0][:200]}); only load files you trust, and prefer .safetensors"
                           ) from None
    except (RuntimeError, EOFError, ValueError, OSError, AttributeError, TypeError, LookupError) as e:  # damaged zip
        raise InteropError(f"cannot read {path} as a PyTorch weights file ({type(e).__name__}: {str(e)[:200]})"
                           ) from None
    if isinstance(sd, Mapping) and "state_dict" in sd and isinstance(sd["state_dict"], Mapping):
        sd = sd["state_dict"]  # a training checkpoint wrapping the weights
    if not isinstance(sd, Mapping) or not all(isinstance(k, str) for k in sd):
        raise InteropError(f"{path} holds a {type(sd).__name__}, not a state_dict (names -> tensors)")
    return dict(sd)


def save_state_dict(path: str | Path, state_dict: Mapping[str, Any]) -> Path:
    """Write ``state_dict`` as ``.safetensors`` (no torch needed) or ``.pth`` (``torch.save`` of tensors)."""
    path = Path(path)
    arrays = {k: _numpy(k, v) for k, v in state_dict.items()}
    if path.suffix == ".safetensors":
        return safetensors.save(path, arrays, {"format": "pt"})
    import torch

    from jaxcnn.storage.files import atomic_write_bytes

    buf = io.BytesIO()
    torch.save(OrderedDict((k, torch.from_numpy(np.array(v))) for k, v in arrays.items()), buf)
    atomic_write_bytes(path, buf.getvalue())
    return path


def load_torchvision(arch: str, weights: str | Path | Mapping[str, Any], *, in_shape: Shape = (224, 224, 3),
                     num_classes: int | None = None) -> tuple[Layer, dict, dict]:
    """``(model, params, state)``: the zoo model ``arch`` with torchvision weights (a file or a state_dict).

    ``num_classes`` defaults to the classifier's output size in the weights.
    """
    from jaxcnn import models

    if arch not in ARCHS:
        raise InteropError(f"arch must be one of {', '.join(ARCHS)}, got {arch!r}")
    sd = read_state_dict(weights) if isinstance(weights, (str, Path)) else weights
    if num_classes is None:
        last = [k for k in sd if isinstance(k, str) and k.endswith(".weight")]
        if not last:
            raise InteropError(f"the {arch} weights have no '.weight' entries")
        shape = np.shape(_numpy(last[-1], sd[last[-1]]))
        if len(shape) < 1 or shape[0] < 1:
            raise InteropError(f"the classifier weight {last[-1]!r} has shape {tuple(shape)}, not (classes, "
                               f"features); are these {arch} weights?")
        num_classes = int(shape[0])
    model = models.get(arch, num_classes=num_classes)
    params, state = from_torch(model, sd, in_shape)
    return model, params, state
