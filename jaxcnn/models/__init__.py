"""Model registry: ``get("name/width", num_classes=..., **options)``.

A name may carry a width suffix (``mobilenet_v1/0.5``, ``allconv6/2``), which is the
same as passing ``width=``. Every builder takes ``num_classes`` and ``width``.

Your own models register the same way as the bundled families: decorate the builder with
``@jaxcnn.models.register_model(input_shape=..., num_classes=...)`` (see
:func:`~jaxcnn.models.registry.register_model`) and, from the command line, load the file or
module that defines it with :func:`load_models_from` (``--models-from PATH.py|module``).
"""

from __future__ import annotations

import ast
import difflib
import inspect
import math
import operator
from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np

from jaxcnn.core import Layer
from jaxcnn.models.allconv import (
    ALLCONV6_CHANNELS,
    DEPTH_FAMILY,
    allconv,
    allconv6_crelu,
    allconv6_variant,
    allconv_depth,
)
from jaxcnn.models.densenet import densenet, densenet121
from jaxcnn.models.examples import mnist_net, spec_a, spec_a_3conv, spec_a_4conv
from jaxcnn.models.inception import googlenet, inception_small
from jaxcnn.models.mobilenet import mobilenet_v1
from jaxcnn.models.registry import REGISTRY, Entry, load_models_from, register, register_model
from jaxcnn.models.resnet import resnet, resnet50, resnext50_32x4d
from jaxcnn.models.vgg import vgg16
from jaxcnn.transforms import check_width

for _n, _c in ALLCONV6_CHANNELS.items():
    register(Entry(_n, partial(allconv6_variant, _n), (224, 224, 3), 20,
                   f"allconv6 width variant, channels {list(_c)}, 3x3 stride-2 convs + ReLU, GAP, FC"))
    register(Entry(f"{_n}_bn", partial(allconv6_variant, _n, bn=True), (224, 224, 3), 20,
                   f"{_n} with BatchNorm before every ReLU"))
for _n, _convs in DEPTH_FAMILY.items():
    if _n != "allconv6":
        register(Entry(_n, partial(allconv_depth, _n), (224, 224, 3), 20,
                       "allconv depth variant: " + ", ".join(f"{k}x{k}/{s} {c}" for k, s, c in _convs)))
register(Entry("allconv6_crelu", allconv6_crelu, (224, 224, 3), 20,
               "allconv6 with half the filters + CReLU in conv1-2 (channel complement)"))
register(Entry("allconv6_crelu_bn", partial(allconv6_crelu, bn=True), (224, 224, 3), 20,
               "allconv6_crelu with BatchNorm"))
register(Entry("mobilenet_v1", mobilenet_v1, (224, 224, 3), 1000,
               "MobileNet v1 (alpha = width), SAME padding, BN+ReLU after every conv", {"stem_stride": 1}))
register(Entry("vgg16", vgg16, (224, 224, 3), 1000, "VGG-16 (configuration D), FC 4096-4096"))
register(Entry("vgg16_bn", partial(vgg16, bn=True), (224, 224, 3), 1000, "VGG-16 with BatchNorm"))
register(Entry("resnet50", resnet50, (224, 224, 3), 1000, "ResNet-50 v1.5 (bottleneck, stride on 3x3)",
               {"small_input": True}))
register(Entry("resnext50_32x4d", resnext50_32x4d, (224, 224, 3), 1000,
               "ResNeXt-50 32x4d (grouped 3x3, cardinality 32)", {"small_input": True}))
register(Entry("densenet121", densenet121, (224, 224, 3), 1000, "DenseNet-121 (growth 32, BN-ReLU-conv)",
               {"small_input": True}))
register(Entry("googlenet", googlenet, (224, 224, 3), 1000, "Inception v1 / GoogLeNet (paper's Table 1, no aux)"))
register(Entry("inception_small", inception_small, (32, 32, 3), 10, "small Inception net for 32x32"))
register(Entry("spec_a_4conv", spec_a_4conv, (224, 224, 3), 2, "SPEC A model 1: 4 conv-pool, flatten, FC128, FC2"))
register(Entry("spec_a_3conv", spec_a_3conv, (224, 224, 3), 2, "SPEC A model 2: 3 conv-pool (more parameters)"))
register(Entry("mnist_net", mnist_net, (28, 28, 1), 10, "SPEC B: 5x5-32, pool, 3x3-32, pool, 256, 10 (VALID)"))

# the scaling families register themselves beside their builders (@register_model), after the models above
from jaxcnn.models import cifar_resnets, efficientnet  # noqa: E402, F401


def parse_name(name: str) -> tuple[str, float | None]:
    """Split ``"name/width"`` into the registry name and the width (None if absent)."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"model name must be a non-empty string, got {name!r}")
    base, _, suffix = name.partition("/")
    if base not in REGISTRY:
        close = difflib.get_close_matches(base, REGISTRY, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"unknown model {base!r}.{hint} Run 'jaxcnn models' for the list")
    width = check_width(suffix, f"width suffix of {name!r}", text=True) if suffix else None
    return base, width


def entry(name: str) -> Entry:
    """The registry entry for ``name`` (a width suffix is allowed and ignored)."""
    return REGISTRY[parse_name(name)[0]]


def get(name: str, *, num_classes: int | None = None, width: float | None = None, **options: Any) -> Layer:
    """Build a registered model; ``name`` may end in ``/width``.

    Args:
        name: a registry name (``jaxcnn models``; a user's after ``load_models_from``), optionally ``/width``.
        num_classes: classifier outputs (default: the entry's).
        width: the width multiplier (the same as the suffix; giving both, different, is an error).
        **options: the builder's keyword options (``builder_options(name)`` lists them), e.g. ``depth=56``.

    Returns:
        The model; a bad name, width or option is a one-line ValueError naming it.
    """
    base, suffix_width = parse_name(name)
    if suffix_width is not None and width is not None and suffix_width != width:
        raise ValueError(f"width given twice for {name!r}: suffix {suffix_width} and width={width}")
    w = check_width(width if width is not None else (suffix_width or 1.0))
    e = REGISTRY[base]
    k = e.num_classes if num_classes is None else num_classes
    try:
        k = operator.index(k)  # ints and NumPy integers; not bools, floats or strings
    except TypeError:
        k = None
    if k is None or isinstance(num_classes, (bool, np.bool_)) or k < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    params = builder_parameters(base)
    unknown = sorted(set(options) - set(params))
    if unknown:
        raise ValueError(f"{base} has no option {', '.join(unknown)}; its options are {', '.join(params)}")
    for key, value in options.items():  # the API gets no parsing: bn="yes" must not build a BatchNorm model
        kind = _kind(params[key])
        if not _fits(value, kind):
            raise ValueError(f"{base}'s option {key} must be {_want(kind, params[key])} ({kind}), "
                             f"got {type(value).__name__} {str(value)[:40]!r}")
    model = e.build(num_classes=k, width=w, **options)
    try:  # what built it, so fit records a name that rebuilds it (jaxcnn.storage.weights.load_model)
        object.__setattr__(model, "_jaxcnn_built_as", {"name": base, "width": w, "options": dict(options),
                                                       "num_classes": int(k)})
    except (AttributeError, TypeError):  # a layer with __slots__: it stays unnamed, as a hand-built model is
        pass
    return model


def built_as(model: Layer) -> dict[str, Any] | None:
    """The registry name, width, options and classes :func:`get` built ``model`` from (None: built otherwise)."""
    found = getattr(model, "_jaxcnn_built_as", None)
    return dict(found) if isinstance(found, dict) else None


def _kind(p: inspect.Parameter) -> str:
    return p.annotation if isinstance(p.annotation, str) else getattr(p.annotation, "__name__", str(p.annotation))


def _want(kind: str, p: inspect.Parameter) -> str:
    return " or ".join(_EXAMPLES.get(k.strip(), "a tuple like " + repr(p.default)[:40]) for k in kind.split("|"))


def _tuples(v: Any) -> Any:
    return tuple(_tuples(i) for i in v) if isinstance(v, (list, tuple)) else v


def _fits(value: Any, kind: str) -> bool:
    """Whether a Python value is one of the annotation ``kind``'s types (kinds it does not know: yes)."""
    for k in (k.strip() for k in kind.split("|")):
        if k == "None" and value is None:
            return True
        if k == "bool" and isinstance(value, (bool, np.bool_)):
            return True
        if k in ("int", "float") and not isinstance(value, (bool, np.bool_)):
            try:
                operator.index(value)
                return True
            except TypeError:
                pass
        if k == "float" and isinstance(value, (float, np.floating)) and math.isfinite(value):
            return True
        if k == "str" and isinstance(value, str):
            return True
        if k.startswith("tuple[") and _is_int_tuples(_tuples(value), k.count("tuple[")):
            return True
        if k not in ("None", "bool", "int", "float", "str") and not k.startswith("tuple["):
            return True
    return False


# builders that pass **kw on: (the function receiving it, the arguments the builder sets itself)
_FORWARDS: dict[Callable[..., Any], tuple[Callable[..., Any], frozenset[str]]] = {
    allconv6_variant: (allconv, frozenset({"convs"})),
    allconv_depth: (allconv, frozenset({"convs"})),
    allconv6_crelu: (allconv, frozenset({"convs", "crelu_layers"})),
    densenet121: (densenet, frozenset({"blocks"})),
    spec_a_4conv: (spec_a, frozenset({"channels"})),
    spec_a_3conv: (spec_a, frozenset({"channels"})),
    resnet50: (resnet, frozenset({"depths"})),
    resnext50_32x4d: (resnet, frozenset({"depths", "groups", "width_per_group"})),
}


def builder_parameters(name: str) -> dict[str, inspect.Parameter]:
    """The keyword parameters (with their annotations) the builder of ``name`` accepts besides num_classes/width."""
    build = REGISTRY[parse_name(name)[0]].build
    skip = {"num_classes", "width", "name"}
    if isinstance(build, partial):
        skip |= set(build.keywords)
        build = build.func
    found: dict[str, inspect.Parameter] = {}
    fn: Callable[..., Any] | None = build
    while fn is not None:
        for p in inspect.signature(fn).parameters.values():
            if p.kind is p.VAR_KEYWORD or p.name in skip or p.name in found:
                continue
            if p.kind is p.KEYWORD_ONLY or p.default is not p.empty:
                found[p.name] = p
        nxt = _FORWARDS.get(fn)
        fn, skip = (nxt[0], skip | nxt[1]) if nxt else (None, skip)
    return found


def builder_options(name: str) -> list[str]:
    """Keyword options the builder of ``name`` accepts besides num_classes and width."""
    return list(builder_parameters(name))


def _parse_typed(text: str, kind: str) -> Any:
    """``text`` as a value of the annotation ``kind`` (as written in the builder); ValueError if it is not one."""
    kinds = [k.strip() for k in kind.split("|")]
    if "None" in kinds and text.lower() == "none":
        return None
    for k in kinds:
        if k == "bool":
            if text.lower() in ("true", "false"):
                return text.lower() == "true"
        elif k == "int":
            try:
                return int(text)
            except ValueError:
                pass
        elif k == "float":
            try:
                v = float(text)
            except ValueError:
                continue
            if math.isfinite(v):
                return v
        elif k.startswith("tuple[") and len(text) <= 2000:
            try:
                v = ast.literal_eval(text)
            except (ValueError, SyntaxError, MemoryError, RecursionError):
                continue
            if _is_int_tuples(v, k.count("tuple[")):
                return v
    for k in kinds:
        if k == "str":
            return text
    raise ValueError(kind)


def _is_int_tuples(v: Any, depth: int) -> bool:
    """True for a tuple of ints (depth 1) or a tuple of tuples of ints (depth 2)."""
    if not isinstance(v, tuple):
        return False
    if depth <= 1:
        return all(isinstance(i, int) and not isinstance(i, bool) for i in v)
    return all(_is_int_tuples(i, depth - 1) for i in v)


_EXAMPLES = {"bool": "true or false", "int": "an integer", "float": "a number", "str": "text",
             "None": "none"}


def parse_option(name: str, key: str, text: str) -> Any:
    """A ``--option KEY=TEXT`` value converted by the type of the builder's parameter, or ValueError saying which."""
    params = builder_parameters(name)
    base = parse_name(name)[0]
    if key not in params:
        raise ValueError(f"{base} has no option {key}; its options are {', '.join(params)}")
    kind = _kind(params[key])
    try:
        return _parse_typed(text, kind)
    except ValueError:
        raise ValueError(f"--option {key}={text[:40]}: {base}'s {key} must be {_want(kind, params[key])} "
                         f"({kind})") from None


def names() -> list[str]:
    """All registered model names."""
    return list(REGISTRY)


__all__ = ["Entry", "REGISTRY", "builder_options", "builder_parameters", "built_as", "entry", "get", "load_models_from",
           "names", "parse_name", "parse_option", "register", "register_model"]
