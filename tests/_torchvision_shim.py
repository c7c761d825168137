"""Test-only: lets the CUDA build of torchvision import next to the CPU torch wheel (never in the package).

torchvision 0.28.0's wheel is built for CUDA; with torch 2.13.0+cpu its compiled ops do not load, and
``import torchvision`` then dies registering fake kernels for ``torchvision::nms`` / ``qnms`` ("operator
torchvision::nms does not exist"). Defining the two schemas first makes it import; they are never called
(open_clip's transforms use no compiled torchvision op).
"""

from __future__ import annotations

import importlib.metadata
import re
import sys

import torch

_SCHEMAS = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}
_LIBRARY = None


def install() -> None:
    """Define the missing schemas once, before the first ``import torchvision`` (a no-op when torchvision
    is already imported or its own ops loaded)."""
    global _LIBRARY
    if _LIBRARY is not None or "torchvision" in sys.modules or not _needed():
        return
    _LIBRARY = torch.library.Library("torchvision", "FRAGMENT")
    for schema in _SCHEMAS.values():
        _LIBRARY.define(schema)


def _needed() -> bool:
    """Whether torchvision's compiled ops cannot load: a CPU torch with a torchvision wheel not built for
    CPU (no ``+cpu`` tag), or a torchvision built for another torch release (its wheel pins one: 0.28.0
    next to the GPU machines' torch 2.11 in benchmarks/gpu_versions_check.sh). A matching torchvision
    registers the schemas itself, and defining them first would clash."""
    try:
        version = importlib.metadata.version("torchvision")
        requires = importlib.metadata.requires("torchvision") or []
    except importlib.metadata.PackageNotFoundError:
        return False
    if torch.version.cuda is None and "+cpu" not in version:
        return True
    release = torch.__version__.split("+")[0]
    pins = [m.group(1) for r in requires if (m := re.match(r"torch\s*\(?==([^\s),;]+)", r))]
    return any(pin.split("+")[0] != release for pin in pins)


install()
