"""Safe checkpoints: ``.npz`` arrays keyed by tree path + JSON metadata, written atomically.

A checkpoint ``NAME`` is two files, ``NAME.npz`` and ``NAME.json``; the JSON holds the
sha256 of the array file, so a half-written pair is detected rather than loaded.
Both are written to a temporary file and renamed into place (atomic on POSIX), and
the JSON last, so a reader never sees a new JSON pointing at an old array file.
No pickle anywhere: arrays load with ``allow_pickle=False``.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import jax
import numpy as np


class CheckpointError(ValueError):
    """A checkpoint that is missing, corrupt, or does not fit the model."""


def versions() -> dict[str, str]:
    """Python and library versions, recorded with every checkpoint and result."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in ("jaxcnn", "jax", "jaxlib", "optax", "numpy"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


def _flatten(tree: Any) -> dict[str, np.ndarray]:
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    out = {}
    for path, leaf in leaves:
        key = jax.tree_util.keystr(path)
        if jax.dtypes.issubdtype(getattr(leaf, "dtype", None), jax.dtypes.prng_key):
            leaf = jax.random.key_data(leaf)  # store raw key bits; typed keys have no numpy dtype
        out[key] = np.asarray(leaf)
    return out


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same folder and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; results are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """Text version of :func:`atomic_write_bytes` (UTF-8)."""
    atomic_write_bytes(path, text.encode("utf-8"))


def save(directory: str | Path, name: str, tree: Any, meta: dict[str, Any]) -> Path:
    """Save ``tree`` as ``directory/name.npz`` with ``meta`` (+ sha256) in ``name.json``."""
    directory = Path(directory)
    arrays = _flatten(tree)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    data = buf.getvalue()
    atomic_write_bytes(directory / f"{name}.npz", data)
    record = dict(meta)
    record["array_file"] = f"{name}.npz"
    record["sha256"] = hashlib.sha256(data).hexdigest()
    record["arrays"] = {k: [list(v.shape), str(v.dtype)] for k, v in arrays.items()}
    record.setdefault("versions", versions())  # the caller's record wins; never a narrower one
    atomic_write_text(directory / f"{name}.json", json.dumps(record, indent=1, sort_keys=True))
    return directory / f"{name}.json"


def read_meta(json_path: str | Path) -> dict[str, Any]:
    """The metadata of a checkpoint, or CheckpointError."""
    json_path = Path(json_path)
    try:
        return json.loads(json_path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {json_path} does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(
            f"checkpoint metadata {json_path} is corrupt ({e}); delete it or restore a copy"
        ) from None


def load(json_path: str | Path, template: Any) -> tuple[Any, dict[str, Any]]:
    """Load a checkpoint into the structure of ``template``, validating checksum, keys, shapes, dtypes."""
    json_path = Path(json_path)
    meta = read_meta(json_path)
    npz = json_path.with_name(meta.get("array_file", json_path.stem + ".npz"))
    try:
        data = npz.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint arrays {npz} are missing (metadata {json_path} points to them)") from None
    if hashlib.sha256(data).hexdigest() != meta.get("sha256"):
        raise CheckpointError(f"checkpoint arrays {npz} do not match the sha256 in {json_path}: the file is corrupt")
    try:
        arrays = dict(np.load(io.BytesIO(data), allow_pickle=False))
    except ValueError as e:
        raise CheckpointError(f"checkpoint arrays {npz} cannot be read safely ({e})") from None
    leaves, treedef = jax.tree_util.tree_flatten_with_path(template)
    expected = {jax.tree_util.keystr(p): leaf for p, leaf in leaves}
    if set(arrays) != set(expected):
        missing = sorted(set(expected) - set(arrays))[:5]
        extra = sorted(set(arrays) - set(expected))[:5]
        raise CheckpointError(
            f"checkpoint {json_path} does not fit this model: missing {missing}, unexpected {extra}"
            " (was it saved for another model or width?)"
        )
    out = []
    for key, leaf in expected.items():
        arr = arrays[key]
        is_key = jax.dtypes.issubdtype(getattr(leaf, "dtype", None), jax.dtypes.prng_key)
        want = jax.random.key_data(leaf) if is_key else leaf
        if tuple(arr.shape) != tuple(np.shape(want)) or arr.dtype != np.asarray(want).dtype:
            raise CheckpointError(
                f"checkpoint {json_path}: {key} has shape {arr.shape} {arr.dtype}, "
                f"the model needs {np.shape(want)} {np.asarray(want).dtype}"
            )
        out.append(jax.random.wrap_key_data(arr) if is_key else arr)
    return jax.tree_util.tree_unflatten(treedef, out), meta


_STEP = re.compile(r"^ckpt-(\d+)\.json$")


def latest(directory: str | Path) -> Path | None:
    """The newest complete checkpoint ``ckpt-N.json`` in ``directory`` (checksum verified), or None."""
    directory = Path(directory)
    if not directory.is_dir():
        return None
    found = sorted(
        ((int(m.group(1)), p) for p in directory.iterdir() if (m := _STEP.match(p.name))), reverse=True
    )
    for _, path in found:
        try:
            meta = read_meta(path)
            data = path.with_name(meta["array_file"]).read_bytes()
        except (CheckpointError, KeyError, FileNotFoundError):
            continue
        if hashlib.sha256(data).hexdigest() == meta.get("sha256"):
            return path
    return None


def prune(directory: str | Path, keep: int = 2) -> None:
    """Delete all but the ``keep`` newest ``ckpt-N`` pairs."""
    directory = Path(directory)
    found = sorted(((int(m.group(1)), p) for p in directory.iterdir() if (m := _STEP.match(p.name))), reverse=True)
    for _, path in found[keep:]:
        path.with_suffix(".npz").unlink(missing_ok=True)
        path.unlink(missing_ok=True)
