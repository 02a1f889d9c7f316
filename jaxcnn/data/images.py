"""Image files: folders of class sub-folders, "path label" lists, and the resize/colour transforms."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from jaxcnn.data.dataset import (
    IMAGE_EXTENSIONS,
    MAX_CLASSES,
    DataError,
    Dataset,
    read_file,
    require_memory,
    require_path,
)
from jaxcnn.storage.files import FileProblem, check_memory, open_regular

# The largest image decoded (width x height): 8192 x 8192. A larger one is refused before its pixels are decoded
# (a 12000 x 12000 PNG would take about 1 GB while being decoded, only to be resized to 32 x 32).
MAX_IMAGE_PIXELS = 8192 * 8192


def _eight_bit(im, where: str, path: Path):
    """A 16-bit (or 32-bit integer) grey image as 8-bit 'L', each value v scaled to round(v * 255 / 65535)."""
    from PIL import Image

    a = np.asarray(im).astype(np.int64)
    if a.size and (a.min() < 0 or a.max() > 65535):
        raise DataError(f"{where}: image {path} holds integer pixels outside 0..65535 (mode {im.mode}); "
                        "save it as 8- or 16-bit")
    return Image.fromarray(((a + 128) // 257).astype(np.uint8), "L")  # v / 257 = v * 255 / 65535; no ties


def decode_image(p: Path, size: int, grey: bool, where: str) -> np.ndarray:
    """One image file decoded, oriented, converted (RGB or L) and bilinearly resized: (size, size, channels) uint8.

    The one decoder of every image source, in memory or streamed; ``where`` names the source in errors.
    """
    import warnings

    from PIL import Image, ImageOps  # deferred: only image sources need Pillow

    try:
        f = open_regular(p, "image")
    except FileProblem as e:
        raise DataError(f"{where}: {e}") from None
    try:
        with f, warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the size is checked just below
            im = Image.open(f)
            if im.size[0] * im.size[1] > MAX_IMAGE_PIXELS:
                raise DataError(f"{where}: image {p} is {im.size[0]}x{im.size[1]}, more than the "
                                f"{MAX_IMAGE_PIXELS:,} pixels jaxcnn decodes (MAX_IMAGE_PIXELS); shrink it first")
            im = ImageOps.exif_transpose(im)  # cameras store rotation as a tag; apply it so pixels are upright
            if im.mode.startswith("I"):  # 16-bit grey PNGs: convert("L") would clip every value above 255
                im = _eight_bit(im, where, p)
            im = im.convert("L" if grey else "RGB")
            if im.size != (size, size):
                im = im.resize((size, size), Image.Resampling.BILINEAR)
            return np.asarray(im).reshape(size, size, 1 if grey else 3)
    except DataError:
        raise
    except Image.DecompressionBombError:
        raise DataError(f"{where}: image {p} has more than the {MAX_IMAGE_PIXELS:,} pixels jaxcnn decodes "
                        "(MAX_IMAGE_PIXELS); shrink it first") from None
    except Exception as e:  # Pillow raises many types for undecodable files
        raise DataError(f"{where}: cannot decode image {p} ({type(e).__name__}: {e}); "
                        f"remove or replace it") from None


def _read_images(paths: Sequence[Path], size: int, grey: bool, where: Sequence[str]) -> np.ndarray:
    """Every image of ``paths`` decoded (:func:`decode_image`) into one array; ``where[i]`` names it in errors."""
    channels = 1 if grey else 3
    check_memory(len(paths) * size * size * channels, f"{len(paths):,} images of {size}x{size}x{channels}",
                 "pass a smaller `size`, or stream the images (`stream=True`)")
    x = np.empty((len(paths), size, size, channels), np.uint8)
    for i, p in enumerate(paths):
        x[i] = decode_image(p, size, grey, where[i])
    return x


def check_size(size: int | None, default: int) -> int:
    """A positive image size (``default`` when None)."""
    size = default if size is None else size
    if not isinstance(size, (int, np.integer)) or isinstance(size, bool) or size < 1:
        raise DataError(f"image size (`size`) must be a positive integer, got {size!r}")
    return int(size)


def folder_files(path: str | os.PathLike) -> tuple[list[Path], np.ndarray, tuple[str, ...]]:
    """The image files of ``path/<class>/*.png|jpg|jpeg|bmp`` with their int32 labels and the sorted class names."""
    root = require_path(Path(path), "folder of class sub-folders", "folder:PATH")
    if not root.is_dir():
        raise DataError(f"{root} is not a folder; pass `spec=folder:PATH` with a folder of class sub-folders")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise DataError(f"{root} has no class sub-folders; expected {root}/<class>/<image>{IMAGE_EXTENSIONS[0]}")
    paths: list[Path] = []
    found: list[int] = []
    for k, c in enumerate(classes):
        files = sorted(f for f in (root / c).iterdir()
                       if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS and not f.name.startswith("."))
        if not files:
            raise DataError(f"class folder {root / c} has no images ({', '.join(IMAGE_EXTENSIONS)}); "
                            f"add some or remove the folder")
        paths += files
        found += [k] * len(files)
    return paths, np.asarray(found, np.int32), tuple(classes)


def load_folder(path: str | os.PathLike, size: int = 32, grey: bool = False) -> Dataset:
    """Images in ``path/<class>/*.png|jpg|jpeg|bmp``, classes sorted by folder name, resized to size x size."""
    size = check_size(size, 32)
    paths, y, classes = folder_files(path)
    root = Path(path)
    x = _read_images(paths, size, grey, [str(root)] * len(paths))
    return Dataset(x, y, len(classes), f"folder:{root}", classes)


def list_files(file: str | os.PathLike, root: str | os.PathLike | None = None
               ) -> tuple[list[Path], np.ndarray, list[str]]:
    """The images named in a ``path label`` list file (relative to ``root`` or the list's folder), with their
    int32 labels and each one's ``FILE:LINE`` for errors; '#' comments ok."""
    file = require_path(Path(file), "image list file (one 'path label' per line)", "list:FILE[:ROOT]")
    if not file.is_file():
        raise DataError(f"{file} is not a file; pass `spec=list:FILE[:ROOT]` with a 'path label' list file")
    base = require_path(Path(root), "root folder the listed paths are relative to", "list:FILE:ROOT") if root \
        else file.parent
    paths: list[Path] = []
    found: list[int] = []
    where: list[str] = []
    text = read_file(file, "image list file").decode("utf-8", "replace")
    for n, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.rsplit(None, 1)  # the label is the last field; the path may contain spaces
        try:
            label = int(parts[1]) if len(parts) == 2 else None
        except ValueError:
            label = None
        if label is None:
            raise DataError(f"{file}:{n}: cannot parse {line!r}; expected 'path label' with an integer label")
        if label < 0:
            raise DataError(f"{file}:{n}: label {str(label)[:40]} is negative; labels must be 0, 1, 2, ...")
        if label >= MAX_CLASSES:
            raise DataError(f"{file}:{n}: label {str(label)[:40]} is out of range; labels must be below "
                            f"{MAX_CLASSES:,} (the most classes jaxcnn takes)")
        p = Path(parts[0])
        paths.append(p if p.is_absolute() else base / p)
        found.append(label)
        where.append(f"{file}:{n}")
    if not paths:
        raise DataError(f"{file} lists no images; expected lines of 'path label'")
    return paths, np.asarray(found, np.int32), where  # each label checked in [0, MAX_CLASSES) above


def load_list(file: str | os.PathLike, root: str | os.PathLike | None = None, size: int = 32,
              grey: bool = False) -> Dataset:
    """Images named in a ``path label`` list file (relative to ``root`` or the list's folder); '#' comments ok."""
    size = check_size(size, 32)
    paths, y, where = list_files(file, root)
    x = _read_images(paths, size, grey, where)
    return Dataset(x, y, int(y.max()) + 1, f"list:{Path(file)}")


# Image transforms


def to_grey(x: np.ndarray) -> np.ndarray:
    """NHWC RGB -> one channel with ITU-R 601 luma (Pillow's 'L' weights); one channel is returned as is."""
    if x.shape[-1] == 1:
        return x
    if x.shape[-1] != 3:
        raise DataError(f"cannot convert {x.shape[-1]}-channel images to grey; expected 1 or 3 channels")
    if x.dtype == np.uint8:
        # Pillow's integer formula, so grey=True gives the same pixels for arrays as for decoded image files.
        r, g, b = (x[..., i].astype(np.uint32) for i in range(3))
        return ((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16).astype(np.uint8)[..., None]
    return (x @ np.array([0.299, 0.587, 0.114], np.float32))[..., None].astype(np.float32)


def to_rgb(x: np.ndarray) -> np.ndarray:
    """NHWC grey -> three identical channels; three channels are returned as is."""
    if x.shape[-1] == 3:
        return x
    if x.shape[-1] != 1:
        raise DataError(f"cannot convert {x.shape[-1]}-channel images to RGB; expected 1 or 3 channels")
    return np.repeat(x, 3, axis=-1)


def resize(x: np.ndarray, size: int) -> np.ndarray:
    """NHWC images resized to size x size with Pillow's bilinear filter (same as the image-file loaders)."""
    from PIL import Image

    size = check_size(size, size)
    n, h, w, c = x.shape
    if (h, w) == (size, size):
        return x
    require_memory(n * size * size * c * x.dtype.itemsize, f"resizing {n:,} images to {size}x{size}x{c}",
            "pass a smaller `size`")
    out = np.empty((n, size, size, c), x.dtype)
    bilinear = Image.Resampling.BILINEAR
    for i in range(n):
        if x.dtype == np.uint8 and c in (1, 3):
            img = Image.fromarray(x[i, :, :, 0] if c == 1 else x[i])
            out[i] = np.asarray(img.resize((size, size), bilinear)).reshape(size, size, c)
        else:
            # Pillow resizes multi-channel data only as 8-bit L/RGB; other data goes one float channel at a time.
            for j in range(c):
                img = Image.fromarray(x[i, :, :, j].astype(np.float32), mode="F")
                v = np.asarray(img.resize((size, size), bilinear))
                out[i, :, :, j] = np.clip(np.round(v), 0, 255) if x.dtype == np.uint8 else v
    return out


# ---------------------------------------------------------------------------------------------------------------
