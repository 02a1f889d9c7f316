"""Safe checkpoints: arrays keyed by tree path (``.npz`` or ``.safetensors``) + JSON metadata, written atomically.

A checkpoint ``NAME`` is two files, ``NAME.npz`` (or ``NAME.safetensors``) and ``NAME.json``; the JSON
holds the sha256 of the array file, so a half-written pair is detected rather than loaded.
Both are written to a temporary file and renamed into place (atomic on POSIX), and
the JSON last, so a reader never sees a new JSON pointing at an old array file.
No pickle anywhere: arrays load with ``allow_pickle=False`` or through the validating
safetensors reader (:mod:`jaxcnn.storage.safetensors`). In a safetensors file the tensor names are the
tree paths joined by "/" (``params/stage1/block1/residual/body/conv1/w``), so other tools can read it.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import zipfile
from pathlib import Path
from typing import Any

import jax
import numpy as np

from jaxcnn.storage import safetensors
from jaxcnn.storage.files import FileProblem, atomic_write_bytes, atomic_write_text, read_regular, versions

FORMATS = ("npz", "safetensors")


class CheckpointError(ValueError):
    """A checkpoint that is missing, corrupt, or does not fit the model."""


def path_name(path: tuple[Any, ...]) -> str:
    """A tree path as "/"-joined keys (``params/stem/conv/w``): the tensor names of safetensors checkpoints."""
    parts = []
    for k in path:
        for attr in ("key", "idx", "name"):  # DictKey / FlattenedIndexKey, SequenceKey, GetAttrKey
            if hasattr(k, attr):
                parts.append(str(getattr(k, attr)))
                break
        else:
            parts.append(str(k))
    return "/".join(parts)


def _flatten(tree: Any, names: str = "npz") -> dict[str, np.ndarray]:
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    out = {}
    for path, leaf in leaves:
        key = jax.tree_util.keystr(path) if names == "npz" else path_name(path)
        if key in out:  # only "/"-names can collide: a dict key containing "/"
            raise CheckpointError(f"two leaves of the tree are both named {key!r}; dict keys must not contain '/' "
                                  "in a safetensors checkpoint (use format='npz')")
        if jax.dtypes.issubdtype(getattr(leaf, "dtype", None), jax.dtypes.prng_key):
            leaf = jax.random.key_data(leaf)  # store raw key bits; typed keys have no numpy dtype
        out[key] = np.asarray(leaf)
    return out


def save(directory: str | Path, name: str, tree: Any, meta: dict[str, Any], *, format: str = "npz") -> Path:
    """Save ``tree`` as ``directory/name.npz`` (or ``.safetensors``) with ``meta`` (+ sha256) in ``name.json``.

    Args:
        directory: an existing folder; both files are written atomically (a reader never sees half of one).
        name: the file stem, e.g. ``ckpt-000003``.
        tree: a pytree of arrays (params, state, optimizer state).
        meta: JSON-able facts stored beside the arrays (epoch, history, run identity, ...).
        format: ``"npz"`` or ``"safetensors"`` (readable by the ``safetensors`` package and other tools).

    Returns:
        The path of the JSON file, which :func:`load` takes.
    """
    if format not in FORMATS:
        raise CheckpointError(f"checkpoint format must be one of {', '.join(FORMATS)}, got {format!r}")
    directory = Path(directory)
    arrays = _flatten(tree, format)
    if format == "safetensors":
        data = safetensors.dumps(arrays, {"format": "jaxcnn checkpoint", "metadata": f"{name}.json"})
    else:
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        data = buf.getvalue()
    atomic_write_bytes(directory / f"{name}.{format}", data)
    record = dict(meta)
    record["array_file"] = f"{name}.{format}"
    record["sha256"] = hashlib.sha256(data).hexdigest()
    record["arrays"] = {k: [list(v.shape), str(v.dtype)] for k, v in arrays.items()}
    record.setdefault("versions", versions())  # the caller's record wins; never a narrower one
    atomic_write_text(directory / f"{name}.json", json.dumps(record, indent=1, sort_keys=True))
    return directory / f"{name}.json"


def _read(path: Path, what: str) -> bytes:
    try:
        return read_regular(path, what)
    except FileProblem as e:
        raise CheckpointError(f"{e}; delete it or restore a copy") from None


_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def read_meta(json_path: str | Path) -> dict[str, Any]:
    """The metadata of a checkpoint (a JSON object naming its array file and sha256), or CheckpointError."""
    json_path = Path(json_path)
    if not json_path.exists() and not json_path.is_symlink():
        raise CheckpointError(f"checkpoint {json_path} does not exist")
    raw = _read(json_path, "checkpoint metadata")
    try:
        meta = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError) as e:  # ValueError: bad UTF-8 or JSON, or a 5000-digit number
        raise CheckpointError(
            f"checkpoint metadata {json_path} is corrupt ({type(e).__name__}: {str(e)[:80]}); "
            "delete it or restore a copy"
        ) from None
    problem = None
    if not isinstance(meta, dict):
        problem = f"it holds a JSON {type(meta).__name__}, not an object"
    elif not isinstance(meta.get("array_file"), str) or Path(meta["array_file"]).name != meta["array_file"] \
            or meta["array_file"].startswith("."):
        problem = f"'array_file' is {str(meta.get('array_file'))[:40]!r}, not a file name beside it"
    elif not isinstance(meta.get("sha256"), str) or not _SHA256.match(meta["sha256"]):
        problem = "'sha256' is missing or not 64 hex digits"
    elif not isinstance(meta.get("arrays", {}), dict):
        problem = "'arrays' is not an object"
    if problem:
        raise CheckpointError(f"checkpoint metadata {json_path} is invalid: {problem}; delete it or restore a copy")
    return meta


def verify(json_path: str | Path) -> dict[str, Any]:
    """The metadata of a checkpoint whose array file exists and matches its sha256, or CheckpointError why not."""
    json_path = Path(json_path)
    meta = read_meta(json_path)
    npz = json_path.with_name(meta["array_file"])
    if not npz.exists():
        raise CheckpointError(f"checkpoint arrays {npz} are missing (metadata {json_path} points to them)")
    if hashlib.sha256(_read(npz, "checkpoint arrays")).hexdigest() != meta["sha256"]:
        raise CheckpointError(f"checkpoint arrays {npz} do not match the sha256 in {json_path}: the file is corrupt")
    return meta


def load(json_path: str | Path, template: Any, *, allow_extra: bool = False) -> tuple[Any, dict[str, Any]]:
    """Load a checkpoint into the structure of ``template``, validating checksum, keys, shapes, dtypes.

    Args:
        json_path: the checkpoint's JSON file (as :func:`save` returns it).
        template: a pytree of the expected structure, shapes and dtypes (e.g. a fresh TrainState's trees).
        allow_extra: ignore arrays the template does not name (load ``{"params", "state"}`` of a checkpoint that
            also holds ``opt_state``); :func:`jaxcnn.storage.weights.load_model` needs no template at all.

    Returns:
        ``(tree, meta)``; :class:`CheckpointError` names the file and the first thing that does not fit.
    """
    json_path = Path(json_path)
    meta = read_meta(json_path)
    npz = json_path.with_name(meta["array_file"])
    if not npz.exists():
        raise CheckpointError(f"checkpoint arrays {npz} are missing (metadata {json_path} points to them)")
    data = _read(npz, "checkpoint arrays")
    if hashlib.sha256(data).hexdigest() != meta["sha256"]:
        raise CheckpointError(f"checkpoint arrays {npz} do not match the sha256 in {json_path}: the file is corrupt")
    as_safetensors = npz.suffix == ".safetensors"
    try:
        if as_safetensors:
            arrays = safetensors.loads(data, f"checkpoint arrays {npz}")[0]
        else:
            with np.load(io.BytesIO(data), allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        raise CheckpointError(f"checkpoint arrays {npz} cannot be read safely ({e})") from None
    leaves, treedef = jax.tree_util.tree_flatten_with_path(template)
    name = path_name if as_safetensors else jax.tree_util.keystr
    expected = {name(p): leaf for p, leaf in leaves}
    missing, extra = sorted(set(expected) - set(arrays)), sorted(set(arrays) - set(expected))
    if missing or (extra and not allow_extra):
        raise CheckpointError(f"checkpoint {json_path} does not fit the template: missing {missing[:5]}, "
                              f"unexpected {extra[:5]}; {_key_hint(missing, extra)}")
    out = []
    for key, leaf in expected.items():
        arr = arrays[key]
        is_key = jax.dtypes.issubdtype(getattr(leaf, "dtype", None), jax.dtypes.prng_key)
        want = jax.random.key_data(leaf) if is_key else leaf
        if tuple(arr.shape) != tuple(np.shape(want)) or arr.dtype != np.asarray(want).dtype:
            raise CheckpointError(
                f"checkpoint {json_path}: {key} has shape {arr.shape} {arr.dtype}, "
                f"the template needs {np.shape(want)} {np.asarray(want).dtype}{_shape_hint(arr.shape, np.shape(want))}"
            )
        out.append(jax.random.wrap_key_data(arr) if is_key else arr)
    return jax.tree_util.tree_unflatten(treedef, out), meta


def _top(key: str) -> str:
    """The first tree key of an array name: ``['opt_state'][0]...`` (npz) or ``opt_state/0/...`` (safetensors)."""
    return key[2:key.index("']")] if key.startswith("['") and "']" in key else key.split("/", 1)[0]


def _key_hint(missing: list[str], extra: list[str]) -> str:
    """The likely cause of a key mismatch: a tree the template lacks or adds, else another model."""
    only_file = sorted({_top(k) for k in extra} - {_top(k) for k in missing})
    only_template = sorted({_top(k) for k in missing} - {_top(k) for k in extra})
    if extra and not missing:
        return (f"the file also holds {', '.join(only_file) or 'arrays'} that the template lacks: add them to the "
                "template, pass allow_extra=True, or load the model and weights alone with "
                "jaxcnn.storage.weights.load_model(DIR)")
    if missing and not extra:
        return (f"the template holds {', '.join(only_template) or 'arrays'} that the file lacks: it was saved "
                "with fewer trees (another program or optimizer); build the template without them")
    if any(_top(k) == "opt_state" for k in missing + extra) and not any(
            _top(k) in ("params", "state") for k in missing + extra):
        return ("only the optimizer state differs: the run used another optimizer or recipe (see the 'config' in "
                "its JSON); jaxcnn.storage.weights.load_model(DIR) loads the weights without it")
    return "the parameters differ: it was saved for another model, width or builder options (see its JSON's 'model')"


def _shape_hint(have: tuple[int, ...], want: tuple[int, ...]) -> str:
    """Why a shape may differ: the leading seed axis of fit's checkpoints, else another width."""
    if tuple(have[1:]) == tuple(want):
        return (f"; the file holds {have[0]} seed(s) on a leading axis (fit's checkpoints do): stack the template "
                "per seed, or use jaxcnn.storage.weights.load_model(DIR)")
    if tuple(want[1:]) == tuple(have):
        return "; the template has a leading (seed) axis that the file lacks: drop it"
    return " (another width, input size or number of classes?)"


_STEP = re.compile(r"^ckpt-(\d+)\.json$")


def _numbered(directory: Path) -> list[Path]:
    """Every ``ckpt-N.json`` in ``directory``, newest (highest N) first."""
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := _STEP.match(p.name))]
    return [p for _, p in sorted(found, reverse=True)]


def find_latest(directory: str | Path) -> tuple[Path | None, list[tuple[Path, str]]]:
    """The newest verified checkpoint in ``directory`` (or None) and every newer one skipped, with the reason."""
    skipped: list[tuple[Path, str]] = []
    for path in _numbered(Path(directory)):
        try:
            verify(path)
        except CheckpointError as e:
            skipped.append((path, str(e)))
            continue
        return path, skipped
    return None, skipped


def latest(directory: str | Path) -> Path | None:
    """The newest complete checkpoint ``ckpt-N.json`` in ``directory`` (checksum verified), or None."""
    return find_latest(directory)[0]


def prune(directory: str | Path, keep: int = 2) -> None:
    """Delete the ``ckpt-N`` pairs older than the ``keep`` newest *verified* ones.

    A corrupt checkpoint never counts towards ``keep``, so a good one is never deleted in its favour; corrupt
    ones newer than the kept ones are left for the user (the next epochs of a resumed run overwrite them).
    """
    kept = 0
    for path in _numbered(Path(directory)):
        if kept >= keep:
            for fmt in FORMATS:
                path.with_suffix(f".{fmt}").unlink(missing_ok=True)
            path.unlink(missing_ok=True)
            continue
        try:
            verify(path)
        except CheckpointError:
            continue
        kept += 1
