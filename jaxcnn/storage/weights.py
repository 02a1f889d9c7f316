"""Trained weights back as a model: :func:`load_model` needs only the run folder (no optimizer, no template).

Every checkpoint :func:`jaxcnn.train.fit` writes records, under ``model_spec``, what rebuilds the
network (registry name with width, builder options, classes) and how it was fed (input shape, pixel
type, the training split's per-channel mean and std, class names when the data had them). The name
comes from the command line or the study (``meta["model"]``), else from :func:`jaxcnn.models.get`,
which marks the models it builds; a model put together by hand has no name, and ``load_model`` then
takes it as ``model=``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import numpy as np

from jaxcnn.core import Layer
from jaxcnn.storage import checkpoint
from jaxcnn.storage.checkpoint import CheckpointError
from jaxcnn.train.config import fill_new_fields

__all__ = ["LoadedModel", "load_model", "model_record", "resolve_checkpoint"]


def model_record(model: Layer, data: Any, meta: dict[str, Any]) -> dict[str, Any]:
    """``{"model": name, "model_spec": {...}}`` for a checkpoint: what :func:`load_model` rebuilds the run from."""
    from jaxcnn import models

    built = models.built_as(model)
    if isinstance(meta.get("model"), str):  # the CLI's / study's name, its options beside it
        name, options = meta["model"], dict(meta.get("options") or {})
    elif built is not None:
        name = built["name"] + (f"/{built['width']:g}" if built["width"] != 1 else "")
        options = built["options"]
    else:
        name, options = None, {}
    x = data.x_train
    spec = {"model": name, "options": options, "num_classes": int(data.num_classes),
            "input_shape": [int(d) for d in np.shape(x)[1:]], "input_dtype": str(np.asarray(x[:0]).dtype),
            "mean": np.asarray(data.mean, np.float64).reshape(-1).tolist(),
            "std": np.asarray(data.std, np.float64).reshape(-1).tolist(),
            "class_names": list(names) if (names := getattr(data, "class_names", None)) else None}
    return {"model": name, "model_spec": spec}


def resolve_checkpoint(path: str | Path) -> Path:
    """The checkpoint JSON ``path`` names: itself, or the newest complete ``ckpt-N.json`` of a run folder."""
    path = Path(path)
    if path.is_dir():
        found, skipped = checkpoint.find_latest(path)
        if found is None:
            why = f" (newest: {skipped[0][1]})" if skipped else ""
            raise CheckpointError(f"{path} holds no complete checkpoint (ckpt-N.json){why}; pass a run folder "
                                  "written by `jaxcnn train` or fit(out_dir=...)")
        return found
    if path.suffix in (".npz", ".safetensors"):
        path = path.with_suffix(".json")
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist; pass a run folder or its ckpt-N.json")
    return path


@dataclass(frozen=True)
class LoadedModel:
    """A trained run's network, its weights per seed (leading axis) and how to feed it images."""

    model: Layer
    params: Any  # every array with a leading seed axis, as fit returns them
    state: Any
    seeds: list[int]
    input_shape: tuple[int, ...]
    mean: np.ndarray  # per channel, in the units of the training images (0..1 of 255 for uint8 images)
    std: np.ndarray
    scale: float  # 255 when the model was trained on uint8 images (their 0-255 values are divided by it)
    class_names: tuple[str, ...] | None
    meta: dict[str, Any]  # the checkpoint's JSON
    path: Path

    @property
    def num_classes(self) -> int:
        """Classifier outputs."""
        return int(self.meta["model_spec"]["num_classes"])

    def class_name(self, k: int) -> str:
        """The name of class ``k`` (its index when the data had no names)."""
        return self.class_names[k] if self.class_names else str(k)

    def seed(self, i: int) -> tuple[Any, Any]:
        """``(params, state)`` of the ``i``-th seed (an index into :attr:`seeds`)."""
        pick = lambda v: v[i]  # noqa: E731
        return jax.tree_util.tree_map(pick, self.params), jax.tree_util.tree_map(pick, self.state)

    def normalise(self, x: np.ndarray) -> np.ndarray:
        """Images as the model saw them in training: ``(x - mean) / std`` per channel, float32."""
        x = np.asarray(x)
        if tuple(x.shape[1:]) != tuple(self.input_shape):
            raise ValueError(f"images of shape {tuple(x.shape[1:])} do not fit {self.meta.get('model')}, trained on "
                             f"{'x'.join(map(str, self.input_shape))}; resize them (--input-size) first")
        mean = np.float32(self.scale) * self.mean.astype(np.float32)
        std = np.float32(self.scale) * self.std.astype(np.float32)
        return (x.astype(np.float32) - mean) / std

    def logits(self, x: np.ndarray, *, batch_size: int = 500) -> np.ndarray:
        """``(seeds, N, classes)`` logits of raw images ``x`` (normalised here), in eval mode."""
        x = self.normalise(x)
        from jaxcnn.train.step import pad_batches

        xp, _, mask = pad_batches(x, np.zeros(len(x), np.int32), batch_size)
        forward = jax.jit(lambda p, s, xb: self.model.apply(p, s, xb)[0])  # one program, called per seed
        out = []
        for i in range(len(self.seeds)):
            p, s = self.seed(i)
            out.append(np.concatenate([np.asarray(forward(p, s, xb), np.float32) for xb in xp])[: len(x)])
        return np.stack(out)


def _spec(meta: dict[str, Any]) -> dict[str, Any]:
    """The checkpoint's ``model_spec``, or one pieced together from what older checkpoints recorded."""
    spec = meta.get("model_spec")
    if isinstance(spec, dict):
        return spec
    identity = meta.get("identity") if isinstance(meta.get("identity"), dict) else {}
    return {"model": meta.get("model"), "options": meta.get("options") or {},
            "num_classes": identity.get("num_classes"), "input_shape": identity.get("input_shape"),
            "input_dtype": None, "mean": None, "std": None, "class_names": None}


def load_model(path: str | Path, *, model: Layer | None = None) -> LoadedModel:
    """The model, params and state per seed of a run folder (its newest checkpoint) or a ``ckpt-N.json``.

    Args:
        path: a run folder of ``jaxcnn train`` / ``fit(out_dir=...)`` / a study member, or one checkpoint.
        model: the network, when the checkpoint names none (a model built by hand); else it is rebuilt
            from the recorded registry name, width and options (``--models-from`` models must be loaded).

    Returns:
        :class:`LoadedModel`; a checkpoint that cannot be rebuilt is a one-line CheckpointError saying why.
    """
    from jaxcnn import models

    ck = resolve_checkpoint(path)
    meta = checkpoint.verify(ck)
    spec = _spec(meta)
    k = spec.get("num_classes")
    shape = spec.get("input_shape")
    if not isinstance(k, int) or not isinstance(shape, list) or not shape:
        raise CheckpointError(f"{ck} records no number of classes or input shape (model_spec); it was not written "
                              "by fit, so it cannot be loaded without a template (checkpoint.load)")
    if model is None:
        name = spec.get("model")
        if not isinstance(name, str):
            raise CheckpointError(f"{ck} names no registry model (it was trained on a model built by hand): pass "
                                  "that model, load_model(DIR, model=...)")
        try:
            model = models.get(name, num_classes=k, **(spec.get("options") or {}))
        except (ValueError, KeyError, TypeError) as e:
            raise CheckpointError(f"{ck} was trained on {name} {spec.get('options') or ''}, which cannot be built "
                                  f"here ({e}); load its models first (--models-from) or pass model=") from None
    if spec.get("mean") is None or spec.get("std") is None:
        raise CheckpointError(f"{ck} predates recorded input normalisation (model_spec); its weights load with "
                              "checkpoint.load, but images cannot be fed as in training")
    seeds = _seeds(meta, ck)
    key = jax.random.key(0)
    shapes = jax.eval_shape(lambda: model.init(key, tuple(shape)))
    template = jax.tree_util.tree_map(lambda s: np.zeros((len(seeds), *s.shape), s.dtype),
                                      {"params": shapes[0], "state": shapes[1]})
    tree, meta = checkpoint.load(ck, template, allow_extra=True)  # the optimizer state stays on disk
    names = spec.get("class_names")
    return LoadedModel(model=model, params=tree["params"], state=tree["state"], seeds=seeds,
                       input_shape=tuple(shape), mean=np.asarray(spec["mean"]), std=np.asarray(spec["std"]),
                       scale=255.0 if spec.get("input_dtype") == "uint8" else 1.0,
                       class_names=tuple(names) if names else None, meta=meta, path=ck)


def _seeds(meta: dict[str, Any], ck: Path) -> list[int]:
    """The seed values a checkpoint holds, from its recipe (``seed``, ``num_seeds``)."""
    config = fill_new_fields(meta["config"], {}) if isinstance(meta.get("config"), dict) else {}
    n, first = config.get("num_seeds"), config.get("seed", 0)
    if not isinstance(n, int) or n < 1 or not isinstance(first, int):
        raise CheckpointError(f"{ck} records no seed count (config.num_seeds); it was not written by fit")
    return [first + i for i in range(n)]
