"""The model registry itself: :class:`Entry`, :func:`register`, the ``@register_model`` decorator and
:func:`load_models_from` (models defined in a user's file or module).

Kept apart from :mod:`jaxcnn.models` so a builder's module can register itself beside its definition
(``from jaxcnn.models.registry import register_model``) without importing the whole zoo.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jaxcnn.core import Layer, Shape


@dataclass(frozen=True)
class Entry:
    """A registered model: its builder, default input and classes, and a one-line description."""

    name: str
    build: Callable[..., Layer]
    input_shape: Shape
    num_classes: int
    description: str
    small: dict[str, Any] = field(default_factory=dict)  # options for 32x32 inputs


REGISTRY: dict[str, Entry] = {}


def register(entry: Entry) -> Entry:
    """Add ``entry`` to the registry (names are unique)."""
    if entry.name in REGISTRY:
        raise ValueError(f"model {entry.name!r} is already registered")
    REGISTRY[entry.name] = entry
    return entry


def _first_line(doc: str | None) -> str:
    lines = inspect.cleandoc(doc).splitlines() if doc else []
    return lines[0].strip() if lines else ""


def register_model(
    build: Callable[..., Layer] | None = None,
    *,
    input_shape: Shape,
    num_classes: int,
    name: str | None = None,
    description: str | None = None,
    small: dict[str, Any] | None = None,
) -> Any:
    """Register a model builder where it is defined (timm's idea)::

        @jaxcnn.models.register_model(input_shape=(32, 32, 3), num_classes=10)
        def mynet(num_classes: int, width: float = 1.0, depth: int = 3) -> Layer:
            \"\"\"My net: depth conv-BN-ReLU blocks, GAP, dense.\"\"\"

    The builder is called as ``build(num_classes=..., width=..., **options)``; its keyword parameters
    besides those two are the model's ``--option``s, parsed by their annotations. ``name`` defaults to
    the function's name, ``description`` to its docstring's first line; ``small`` are the options to use
    for 32x32 inputs (``Entry.small``). Returns the builder unchanged; a name already taken raises
    ValueError. ``register_model(fn, input_shape=..., num_classes=..., name=...)`` registers without
    the decorator syntax (for ``functools.partial`` variants).
    """
    if not (isinstance(num_classes, int) and not isinstance(num_classes, bool) and num_classes >= 1):
        raise ValueError(f"register_model: num_classes must be a positive int, got {num_classes!r}")
    try:
        shape = tuple(int(d) for d in input_shape)
    except (TypeError, ValueError):
        shape = ()
    if not shape or any(d < 1 for d in shape):
        raise ValueError(f"register_model: input_shape must be a tuple of positive ints, got {input_shape!r}")

    def decorate(fn: Callable[..., Layer]) -> Callable[..., Layer]:
        if not callable(fn):
            raise TypeError(f"register_model decorates a builder function, got {fn!r}")
        model_name = name if name is not None else getattr(fn, "__name__", None)
        if not isinstance(model_name, str) or not model_name or "/" in model_name:
            raise ValueError(f"register_model: give a model name without '/' (got {model_name!r}); pass name=")
        text = description if description is not None else _first_line(getattr(fn, "__doc__", None))
        register(Entry(model_name, fn, shape, num_classes, text or model_name, dict(small or {})))
        return fn

    return decorate if build is None else decorate(build)


_LOADED: dict[str, list[str]] = {}  # resolved file path or module name -> the names it registered


def load_models_from(spec: str) -> list[str]:
    """Import a user's models so their ``@register_model`` decorators run; return the names they added.

    ``spec`` is a path to a Python file (``models/mine.py``; imported from its path by importlib,
    nothing added to ``sys.path``) or a dotted module name (``mypkg.models``, imported normally).
    Loading the same file or module again is a no-op. If the import fails, or registers a name that is
    already taken, nothing it registered stays and a one-line ValueError names ``spec`` and the problem.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"--models-from takes a Python file or a module name, got {spec!r}")
    path = Path(spec).expanduser()
    is_file = spec.endswith(".py") or "/" in spec or "\\" in spec
    key = str(path.resolve()) if is_file else spec
    if key in _LOADED:
        return list(_LOADED[key])
    if is_file and not path.is_file():
        raise ValueError(f"cannot load models from {spec}: no such file")
    before = dict(REGISTRY)
    module_name = None
    try:
        if is_file:
            digest = hashlib.sha1(key.encode()).hexdigest()[:10]
            module_name = f"jaxcnn_user_models_{path.stem.replace('-', '_')}_{digest}"
            module_spec = importlib.util.spec_from_file_location(module_name, path)
            if module_spec is None or module_spec.loader is None:
                raise ImportError("not an importable Python file")
            module = importlib.util.module_from_spec(module_spec)
            sys.modules[module_name] = module  # dataclasses and pickling look modules up here
            module_spec.loader.exec_module(module)
        else:
            importlib.import_module(spec)
    except BaseException as e:  # a user file may raise anything, even SystemExit
        REGISTRY.clear()
        REGISTRY.update(before)
        if module_name is not None:
            sys.modules.pop(module_name, None)
        if isinstance(e, KeyboardInterrupt):
            raise
        text = str(e).strip().splitlines()
        problem = f"{type(e).__name__}: {text[0]}" if text else type(e).__name__
        where = _where(e, path if is_file else None)
        raise ValueError(f"cannot load models from {spec}{where}: {problem}") from None
    added = [n for n in REGISTRY if n not in before]
    _LOADED[key] = added
    return list(added)


def _where(error: BaseException, path: Path | None) -> str:
    """`` (line N)`` for the deepest traceback frame (or syntax error) in the user's file, else ''."""
    if path is None:
        return ""
    if isinstance(error, SyntaxError) and error.lineno:
        return f" (line {error.lineno})"
    resolved = str(path.resolve())
    line = None
    tb = error.__traceback__
    while tb is not None:
        if str(Path(tb.tb_frame.f_code.co_filename).resolve()) == resolved:
            line = tb.tb_lineno
        tb = tb.tb_next
    return f" (line {line})" if line else ""
