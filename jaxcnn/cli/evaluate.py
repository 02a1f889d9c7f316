"""``jaxcnn eval DIR --data SPEC`` and ``jaxcnn predict DIR IMAGE...``: a trained run's weights on new images.

Both rebuild the model from the run folder alone (:func:`jaxcnn.storage.weights.load_model`), feed
images as training did (the recorded size, colour and normalisation), and score every seed.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from jaxcnn.cli.args import UsageError, add_compile_cache_flag, add_models_from, positive

__all__ = ["add_eval_parsers", "cmd_eval", "cmd_predict"]


def add_eval_parsers(sub: Any) -> None:
    """The ``eval`` and ``predict`` subcommands."""
    e = sub.add_parser("eval", help="accuracy per seed and mean, top-k and a confusion matrix of a trained run")
    e.add_argument("run", type=Path, help="run folder (jaxcnn train --out, a study's runs/<member>) or a ckpt-N.json")
    e.add_argument("--data", required=True, help="data spec, as for jaxcnn train (its test split is scored)")
    e.add_argument("--split", choices=["test", "train", "all"], default="test",
                   help="which part of --data to score (default test: the official test split, else the "
                        "stratified part --test-fraction holds out, as in training)")
    e.add_argument("--test-fraction", type=float, default=None,
                   help="held-out share for data without a test split (default: the run's, else 0.2)")
    e.add_argument("--top-k", type=positive(int), default=5, help="also report top-k accuracy (default 5)")
    e.add_argument("--out", type=Path, default=None,
                   help="folder for confusion.png/.svg and eval.json (default RUN/eval)")
    e.add_argument("--batch", type=positive(int), default=500, help="images per forward pass (default 500)")
    add_models_from(e)
    add_compile_cache_flag(e)

    p = sub.add_parser("predict", help="top-k classes of image files under a trained run's weights")
    p.add_argument("run", type=Path, help="run folder or ckpt-N.json")
    p.add_argument("images", nargs="+", type=Path, help="image files (PNG, JPEG, BMP)")
    p.add_argument("--top-k", type=positive(int), default=3, help="classes per image (default 3)")
    p.add_argument("--per-seed", action="store_true", help="one line per seed instead of the mean of the seeds")
    p.add_argument("--json", action="store_true", help="print JSON instead of lines")
    add_models_from(p)
    add_compile_cache_flag(p)


def _load(path: Path) -> Any:
    from jaxcnn.storage.checkpoint import CheckpointError
    from jaxcnn.storage.weights import load_model

    try:
        return load_model(path)
    except CheckpointError as err:
        raise UsageError(str(err)) from None


def _pad_to(loaded: Any) -> int | None:
    """The ``pad_to`` of a study member's run (its record.json beside the checkpoints), else None."""
    record = Path(loaded.path).parent / "record.json"
    try:
        value = json.loads(record.read_text()).get("pad_to") if record.is_file() else None
    except (OSError, ValueError):
        return None
    return value if isinstance(value, int) else None


def _fit_to_model(x: np.ndarray, loaded: Any, spec: str, pad: bool) -> np.ndarray:
    """Images of ``spec`` in the model's input shape: colour converted, zero-padded if the run padded (pad_to)."""
    from jaxcnn.data.images import to_grey, to_rgb

    h, w, c = loaded.input_shape
    if x.shape[3] != c:
        x = to_grey(x) if c == 1 else to_rgb(x)
    if pad and x.shape[1] <= h and x.shape[2] <= w and x.shape[1:3] != (h, w):  # centred, as Task.padded does
        ph, pw = h - x.shape[1], w - x.shape[2]
        x = np.pad(x, ((0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0)))
        print(f"note: {spec}'s images zero-padded to {h}x{w}, as the run was trained", file=sys.stderr)
    if tuple(x.shape[1:]) != (h, w, c):
        raise UsageError(f"--data {spec} gives {x.shape[1]}x{x.shape[2]}x{x.shape[3]} images, the model was trained "
                         f"on {h}x{w}x{c}; pass --input-size {h} if the source can be resized")
    if (loaded.scale == 255.0) != (x.dtype == np.uint8):
        raise UsageError(f"--data {spec} holds {x.dtype} pixels, the run was trained on "
                         f"{'uint8 (0-255)' if loaded.scale == 255.0 else 'float'} ones; use data of the same kind")
    return x


def cmd_eval(args: argparse.Namespace) -> int:
    """Score every seed of a run on a data set; print the table, write eval.json and the confusion matrix."""
    from jaxcnn import data as jdata
    from jaxcnn.storage.files import atomic_write_text
    from jaxcnn.study import plot
    from jaxcnn.train.evaluation import scores
    from jaxcnn.train.prepare import prepare

    loaded = _load(args.run)
    meta = loaded.meta
    fraction = args.test_fraction if args.test_fraction is not None else (meta.get("test_fraction") or 0.2)
    size, pad = meta.get("input_size") or None, _pad_to(loaded) is not None
    try:
        prepared = prepare(args.data, size=size, test_fraction=fraction)
        side = prepared.data.x_test.shape[1]
        if side > loaded.input_shape[0] or (side < loaded.input_shape[0] and not pad):  # a resolution axis
            prepared = prepare(args.data, size=loaded.input_shape[0], test_fraction=fraction)
    except (jdata.DataError, ValueError, OSError) as err:
        raise UsageError(str(err)) from None
    d = prepared.data
    x, y = {"test": (d.x_test, d.y_test), "train": (d.x_train, d.y_train),
            "all": (np.concatenate([d.x_train, d.x_test]), np.concatenate([d.y_train, d.y_test]))}[args.split]
    if d.num_classes > loaded.num_classes:
        raise UsageError(f"--data {args.data} has {d.num_classes} classes, the model {loaded.num_classes}")
    x = _fit_to_model(x, loaded, args.data, pad)
    result = scores(loaded.logits(x, batch_size=args.batch), y, loaded.seeds, args.top_k)
    k = result.k
    print(f"{meta.get('model') or 'model'} from {loaded.path} on {args.data} ({args.split}, {result.examples} "
          f"images)\n| seed | accuracy % | top-{k} % |\n|---:|---:|---:|")
    for s, a, t in zip(result.seeds, result.accuracy, result.top_k, strict=True):
        print(f"| {s} | {100 * a:.2f} | {100 * t:.2f} |")
    print(f"| mean | {100 * result.mean_accuracy:.2f} +- {100 * float(np.std(result.accuracy)):.2f} "
          f"| {100 * result.mean_top_k:.2f} |")
    if len(result.seeds) > 1:
        print(f"ensemble of the {len(result.seeds)} seeds (mean probabilities): {100 * result.ensemble_accuracy:.2f}%")
    out = args.out if args.out is not None else Path(loaded.path).parent / "eval"
    names = [loaded.class_name(i) for i in range(loaded.num_classes)]
    try:
        out.mkdir(parents=True, exist_ok=True)
        paths = plot.confusion_matrix(result.confusion.mean(0), names, out / "confusion", title=(
            f"{meta.get('model') or 'model'} on {args.data} ({args.split}), mean over {len(result.seeds)} seed(s): "
            f"{100 * result.mean_accuracy:.1f}%"))
        atomic_write_text(out / "eval.json", json.dumps({"run": str(loaded.path), "data": args.data,
                                                         "split": args.split, "classes": names,
                                                         **result.to_json()}, indent=1))
    except OSError as err:
        raise UsageError(f"cannot write into --out {out} ({err.strerror or err}); choose another --out") from None
    print("wrote " + ", ".join(str(p) for p in [*paths, out / "eval.json"]))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    """Print the top-k classes of each image (mean of the seeds' probabilities, or per seed)."""
    from jaxcnn.data import DataError
    from jaxcnn.data.images import _read_images  # the one decoder of image files (EXIF turn, 16-bit grey, resize)
    from jaxcnn.train.evaluation import softmax, top_k

    loaded = _load(args.run)
    h, w, c = loaded.input_shape
    if h != w:
        raise UsageError(f"the model takes {h}x{w} images; predict resizes to squares only")
    try:
        x = _read_images(args.images, h, c == 1, [str(p) for p in args.images])
    except DataError as err:
        raise UsageError(str(err)) from None
    if loaded.scale != 255.0:
        x = x.astype(np.float32) / 255.0  # a model trained on float images in [0, 1]
    probs = softmax(loaded.logits(x))  # (K, N, classes)
    rows = []
    for i, path in enumerate(args.images):
        groups = [(f"seed {s}", probs[j, i]) for j, s in enumerate(loaded.seeds)] if args.per_seed else [
            (f"mean of {len(loaded.seeds)} seed(s)", probs[:, i].mean(0))]
        for label, p in groups:
            best = top_k(p, args.top_k)
            rows.append({"image": str(path), "seeds": label,
                         "top": [{"class": loaded.class_name(int(k)), "index": int(k), "probability": float(p[k])}
                                 for k in best]})
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    for r in rows:
        print(f"{r['image']} ({r['seeds']}): " + ", ".join(f"{t['class']} {t['probability']:.3f}" for t in r["top"]))
    return 0
