"""Data spec strings as the command line takes them (mnist5k, cifar10:PATH, folder:PATH, ...)."""

from __future__ import annotations

from pathlib import Path

from jaxcnn.data.bundled import load_digits, load_mnist5k, synthetic
from jaxcnn.data.cifar import load_cifar
from jaxcnn.data.dataset import DataError, Dataset, Splits, check_splits
from jaxcnn.data.idx import load_idx
from jaxcnn.data.images import check_size, load_folder, load_list, resize, to_grey, to_rgb
from jaxcnn.data.npz import load_npz

# Spec strings


SPEC_HELP = ("mnist5k (bundled), digits (bundled), synthetic[:N], cifar10:PATH, cifar100:PATH, mnist:PATH, "
             "fashion:PATH, folder:PATH, list:FILE[:ROOT], npz:FILE")


def source(spec: str) -> str:
    """The source name of a data spec as ``load`` reads it: ``MNIST5k`` -> ``mnist5k``, ``cifar10:/d`` -> cifar10."""
    return str(spec).partition(":")[0].strip().lower()


def list_arg(arg: str) -> tuple[str, str | None]:
    """``(FILE, ROOT or None)`` of the argument of ``list:FILE[:ROOT]`` (a FILE that itself has ':' still works)."""
    if not Path(arg).exists() and ":" in arg:
        file, root = arg.rsplit(":", 1)
        return file, root
    return arg, None


def load(spec: str, *, size: int | None = None, grey: bool | None = None) -> Splits:
    """Load a data spec (see ``SPEC_HELP``): ``{"train": ...}`` plus ``"test"`` where the source has one.

    ``size`` resizes every image to size x size (image files default to 32); ``grey`` True/False converts
    to 1/3 channels (image files default to RGB; other sources keep what they store when None).
    """
    kind, (_, has_arg, arg) = source(spec), str(spec).partition(":")
    if size is not None:
        size = check_size(size, 0)
    needs_path = {"cifar10", "cifar100", "mnist", "fashion", "folder", "list", "npz"}
    if kind in needs_path and not arg:
        raise DataError(f"`spec={kind}` needs a path: {kind}:PATH (data specs: {SPEC_HELP})")
    if kind in ("mnist5k", "digits") and has_arg:
        raise DataError(f"`spec={kind}` takes no path ({kind} is bundled); use just '{kind}'")
    if kind == "mnist5k":
        splits = {"train": load_mnist5k()}
    elif kind == "digits":
        splits = {"train": load_digits()}
    elif kind == "synthetic":
        try:
            n = int(arg) if arg else 1000
        except ValueError:
            raise DataError(f"`spec={spec}`: N must be an integer number of images, e.g. synthetic:2000") from None
        side = size or 32
        return {"train": synthetic(n, (side, side, 1 if grey else 3))}
    elif kind in ("cifar10", "cifar100"):
        splits = load_cifar(arg, kind)
    elif kind in ("mnist", "fashion"):
        splits = load_idx(arg, kind)
    elif kind == "folder":
        return {"train": load_folder(arg, size=size or 32, grey=bool(grey))}
    elif kind == "list":
        return {"train": load_list(*list_arg(arg), size=size or 32, grey=bool(grey))}
    elif kind == "npz":
        splits = load_npz(arg)
    else:
        raise DataError(f"unknown data source {kind!r} in `spec={spec}`; use one of: {SPEC_HELP}")
    for key, ds in list(splits.items()):
        x = ds.x
        if grey is True:
            x = to_grey(x)
        elif grey is False:
            x = to_rgb(x)
        if size is not None:
            x = resize(x, size)
        if x is not ds.x:
            splits[key] = Dataset(x, ds.y, ds.num_classes, ds.name, ds.class_names)
    check_splits(splits["train"], splits.get("test"))
    return splits


# ---------------------------------------------------------------------------------------------------------------
