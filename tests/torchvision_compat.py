"""Import torchvision's models on a CPU-only torch whose torchvision C++ extension does not load.

PyPI's torchvision 0.28.0 wheel ships a ``_C`` extension built against the CUDA torch of its release;
with the CPU torch 2.13.0 wheel that extension does not load, and ``import torchvision`` then stops at
the fake (meta) kernels it registers unconditionally for ``torchvision::nms`` and ``torchvision::qnms``
("operator torchvision::nms does not exist"). Declaring those two operator schemas first lets the
import finish. The models the tests use (VGG, ResNet, ResNeXt, DenseNet) are plain torch modules and
never call a torchvision operator; calling nms itself would still fail, loudly: no kernel is behind it.
"""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path
from types import ModuleType

# the schemas as torchvision declares them (nms; qnms is its quantized twin)
_SCHEMAS = {
    "nms": "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}
_library = None  # kept alive: torch drops a Library's definitions when the object is collected


def _extension_loads(torch: ModuleType) -> bool:
    """Whether torchvision's own C++ operators load (then nothing needs declaring)."""
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("torchvision is not installed; pip install -e '.[torch]'")
    libs = sorted(Path(spec.submodule_search_locations[0]).glob("_C.*"))
    try:
        return bool(libs) and torch.ops.load_library(str(libs[0])) is None
    except OSError:
        return False


def import_torchvision() -> ModuleType:
    """``torchvision``, declaring its missing operator schemas first when its extension does not load."""
    global _library
    import torch

    if _library is None and not _extension_loads(torch):
        _library = torch.library.Library("torchvision", "FRAGMENT")
        for name, schema in _SCHEMAS.items():
            _library.define(name + schema)
    return importlib.import_module("torchvision")
