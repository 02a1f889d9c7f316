"""Training programs kept as exported StableHLO under a key that needs no tracing.

JAX's persistent compilation cache (:mod:`jaxcnn.lowering.compile_cache`) keys an executable on the
lowered program, so a repeated run still traced and lowered its training chunk just to find that key:
about 1 s of the 3.5 s before ``jaxcnn train allconv6_1_bn``'s first epoch on a warm cache (2-core Zen 3).
Here the chunk is saved once as a :mod:`jax.export` artefact (a flatbuffer holding StableHLO bytecode,
no pickle), filed under a key made from everything the program is a function of: jaxcnn's own source
and native library, the jax/jaxlib/optax/numpy versions, the ``JAX_*``/``XLA_*``/``JAXCNN_*``
environment and ``jax.config``, the devices, and the run's model, config, data statistics and argument
shapes (:func:`fingerprint` refuses whatever it cannot describe exactly: a layer class, loss or
optimizer from outside jaxcnn, an object without a stable description). A repeated run loads it and
compiles a one-call wrapper around it, which hits JAX's cache; XLA inlines the call, so the wrapper and
the program it wraps compile to the same executable (same bits out, tested).

The folder is ``cache_root()/programs``; it is used only while the persistent compilation cache is on, and
``JAXCNN_KEEP_PROGRAMS=0`` turns it off alone (every program is then traced, as before).
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import hashlib
import importlib.util
import json
import os
import sys
import types
from pathlib import Path
from typing import Any

import jax
import numpy as np

from jaxcnn.lowering import compile_cache, native

__all__ = ["Unkeyable", "fingerprint", "enabled", "key_of", "ExportedProgram", "load", "export"]

CACHE_VERSION = 1
# modules whose functions and classes are described by name: their code is in the key (jaxcnn's source
# is hashed; the others are pinned by their versions)
_NAMED = ("jaxcnn.", "jax.", "jaxlib.", "optax.", "numpy.")
_ENV_PREFIXES = ("JAX_", "XLA_", "JAXCNN_", "TF_", "LIBTPU_")


class Unkeyable(TypeError):
    """Raised by :func:`fingerprint` for an object whose behaviour its description would not pin down."""


def _named(obj: Any) -> str | None:
    mod, qual = getattr(obj, "__module__", None) or "", getattr(obj, "__qualname__", "")
    if "<locals>" in qual or "<lambda>" in qual or not qual or not (mod + ".").startswith(_NAMED):
        return None
    return f"{mod}.{qual}"


def fingerprint(obj: Any) -> Any:
    """A JSON-able description of ``obj`` that two objects share only if they trace to the same program.

    Plain data, tuples, lists, dicts with string keys, NumPy arrays (by content), dtypes, enums, frozen
    dataclasses whose class is jaxcnn's, and named module-level functions and classes of jaxcnn, jax,
    optax and NumPy; ``functools.partial`` of these. Anything else raises :class:`Unkeyable`.
    """
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    if isinstance(obj, float):
        return ["float", repr(obj)]  # repr round-trips exactly; NaN/inf stay distinct
    if isinstance(obj, (tuple, list)):
        return [type(obj).__name__, [fingerprint(v) for v in obj]]
    if isinstance(obj, dict):
        if not all(isinstance(k, str) for k in obj):
            raise Unkeyable(f"a dict with non-string keys ({type(obj).__name__})")
        return ["dict", [[k, fingerprint(obj[k])] for k in sorted(obj)]]
    if isinstance(obj, enum.Enum):
        return ["enum", _named(type(obj)) or _unkeyable(type(obj)), obj.name]
    if isinstance(obj, (np.ndarray, np.generic)):
        a = np.ascontiguousarray(obj)
        return ["array", str(a.dtype), list(a.shape), hashlib.sha256(a.tobytes()).hexdigest()]
    if isinstance(obj, np.dtype):
        return ["dtype", str(obj)]
    if isinstance(obj, functools.partial):
        return ["partial", fingerprint(obj.func), fingerprint(obj.args), fingerprint(obj.keywords)]
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        name = _named(type(obj)) or _unkeyable(type(obj))
        return ["dataclass", name, [[f.name, fingerprint(getattr(obj, f.name))] for f in dataclasses.fields(obj)]]
    if isinstance(obj, types.MethodType):  # a bound method is also its object's state
        return ["method", fingerprint(obj.__self__), obj.__func__.__name__]
    bound = getattr(obj, "__self__", None)
    if isinstance(obj, types.BuiltinFunctionType) and bound is not None and not isinstance(bound, types.ModuleType):
        return _unkeyable(obj)  # a C method of some object (``rng.normal``): the object is not described
    if isinstance(obj, (types.FunctionType, types.BuiltinFunctionType, type)) or callable(obj) and hasattr(
            obj, "__qualname__"):
        return ["named", _named(obj) or _unkeyable(obj)]
    return _unkeyable(obj)


def _unkeyable(obj: Any) -> Any:
    raise Unkeyable(f"{obj!r:.80} ({type(obj).__module__}.{type(obj).__qualname__}) has no exact description")


@functools.lru_cache(maxsize=1)
def _source_digest() -> str:
    """sha256 of jaxcnn's Python source and its native library: any edit is another program."""
    root = Path(__file__).resolve().parent.parent
    h = hashlib.sha256()
    for p in sorted(root.rglob("*.py")) + sorted(root.glob("_native*")):
        h.update(str(p.relative_to(root)).encode() + b"\0")
        h.update(p.read_bytes())
    return h.hexdigest()


def _environment() -> dict[str, Any]:
    """What outside the run's own arguments a traced program depends on (computed at every key: cheap)."""
    from jaxcnn.storage import files

    devices = jax.devices()
    return {
        "cache_version": CACHE_VERSION,
        "jaxcnn_source": _source_digest(),
        "versions": files.versions(),
        "environment": {k: v for k, v in sorted(os.environ.items()) if k.startswith(_ENV_PREFIXES)},
        "jax_config": {k: repr(v) for k, v in sorted(jax.config.values.items())},
        "native": [native.enabled(), native.available() and native.isa()],
        "devices": [jax.default_backend(), jax.process_count(), [(d.platform, d.device_kind, d.id) for d in devices]],
    }


def enabled() -> bool:
    """Whether programs are kept: while JAX's persistent compilation cache is on (else nothing is gained),
    ``flatbuffers`` (jax.export's serialisation) is installed, and ``JAXCNN_KEEP_PROGRAMS`` is not 0."""
    if os.environ.get("JAXCNN_KEEP_PROGRAMS", "1").strip().lower() in compile_cache._OFF:
        return False
    return compile_cache.enabled_dir() is not None and importlib.util.find_spec("flatbuffers") is not None


def _folder() -> Path:
    return compile_cache.cache_root() / "programs"


def _signature(args: Any) -> list[Any]:
    leaves, tree = jax.tree_util.tree_flatten(args)
    return [str(tree), [(str(v.dtype), list(v.shape), bool(getattr(v, "weak_type", False)),
                         str(getattr(v, "sharding", ""))) for v in leaves]]


def key_of(identity: Any, args: Any) -> str:
    """The key of the program ``identity`` (a :func:`fingerprint`) applied to arguments shaped like ``args``."""
    text = json.dumps([_environment(), identity, _signature(args)], sort_keys=True, default=_unkeyable)
    return hashlib.sha256(text.encode()).hexdigest()[:40]


_REGISTERED: set[type] = set()


def _namedtuples(tree: Any, found: set[type]) -> set[type]:
    """The named-tuple node types of a PyTreeDef (optax's states, TrainState), which jax.export must be told of."""
    data = tree.node_data()
    if data is not None and issubclass(data[0], tuple) and hasattr(data[0], "_fields"):
        found.add(data[0])
    for child in tree.children():
        _namedtuples(child, found)
    return found


def _register(types_: Any) -> None:
    from jax import export as jax_export

    for t in types_:
        if t in _REGISTERED:
            continue
        try:
            jax_export.register_namedtuple_serialization(t, serialized_name=_named(t) or _unkeyable(t))
        except ValueError:  # registered already (by this module earlier, or by its own library)
            pass
        _REGISTERED.add(t)


def _resolve(name: Any) -> type:
    """The named-tuple class a record names; only of jaxcnn, jax or optax (a record must not import others)."""
    import importlib

    if not isinstance(name, str) or not (name + ".").startswith(_NAMED):
        raise ValueError(f"names {str(name)[:80]!r}, not a class of jaxcnn, jax or optax")
    parts = name.split(".")
    for i in range(len(parts) - 1, 0, -1):  # the longest importable module prefix, then attributes
        try:
            obj: Any = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for attr in parts[i:]:
            obj = getattr(obj, attr)
        if isinstance(obj, type) and issubclass(obj, tuple) and hasattr(obj, "_fields"):
            return obj
        break
    raise ValueError(f"names {name[:80]!r}, which is no named tuple here")


@dataclasses.dataclass
class ExportedProgram:
    """An exported jitted function (:class:`jax.export.Exported`: its pytrees, shapes and StableHLO) and its key."""

    key: str
    exported: Any  # jax.export.Exported

    def compile(self, donate_argnums: tuple[int, ...] = (), compiler_options: dict[str, str] | None = None) -> Any:
        """The program compiled for the shapes it was exported at (a ``jax.stages.Compiled``: called like the
        function, on arrays of those shapes)."""
        native.available()  # its FFI targets registered before XLA looks them up
        avals = [jax.ShapeDtypeStruct(a.shape, a.dtype, weak_type=a.weak_type) for a in self.exported.in_avals]
        args, kwargs = jax.tree_util.tree_unflatten(self.exported.in_tree, avals)
        return jax.jit(self.exported.call, donate_argnums=donate_argnums,
                       compiler_options=compiler_options or None).lower(*args, **kwargs).compile()


def load(key: str) -> ExportedProgram | None:
    """The program saved under ``key``, or None (a damaged entry is reported, then ignored and replaced)."""
    from jax import export as jax_export

    from jaxcnn.storage import files

    path = _folder() / f"{key}.jaxexport"
    meta_path = path.with_suffix(".json")
    if not meta_path.exists() or not path.exists():
        return None
    try:
        meta = json.loads(files.read_regular(meta_path, "saved program record"))
        if not isinstance(meta, dict) or meta.get("key") != key or not isinstance(meta.get("namedtuples"), list):
            raise ValueError("its record does not name this key and its named tuples")
        _register([_resolve(n) for n in meta["namedtuples"]])
        exported = jax_export.deserialize(bytearray(files.read_regular(path, "saved program")))
    except Exception as e:  # noqa: BLE001 - any unreadable entry only costs tracing the program again
        print(f"warning: ignoring saved program {path} ({type(e).__name__}: {str(e)[:160]}); tracing it again",
              file=sys.stderr)
        return None
    return ExportedProgram(key, exported)


def export(key: str, fn: Any, args: Any) -> ExportedProgram:
    """Export the jitted ``fn`` at ``args`` and save it under ``key`` (an unwritable folder only costs the saving).

    Raises what :func:`jax.export.export` raises (e.g. a pytree node of another kind than a named tuple).
    """
    from jax import export as jax_export

    from jaxcnn.storage import files

    checks = [jax_export.DisabledSafetyCheck.custom_call(t) for t in native.target_names()]
    exported = jax_export.export(fn, disabled_checks=checks)(*args)
    types_ = _namedtuples(exported.out_tree, _namedtuples(exported.in_tree, set()))
    _register(types_)
    data = bytes(exported.serialize())
    record = {"key": key, "namedtuples": sorted(_named(t) for t in types_)}
    try:
        files.atomic_write_bytes(_folder() / f"{key}.jaxexport", data)
        files.atomic_write_text(_folder() / f"{key}.json", json.dumps(record, indent=1))
    except OSError:
        pass  # the next run traces again
    return ExportedProgram(key, exported)
