"""``patch_open_clip``: open_clip and open_clip_train build vlkernels' losses instead of their own.

open_clip's ``create_loss`` looks the loss classes up in ``open_clip.factory``'s globals, so rebinding
``open_clip.loss.ClipLoss`` alone changes nothing: the classes are rebound in ``open_clip.factory``,
``open_clip.loss`` and the ``open_clip`` package namespace, wherever the name exists (no attribute is
added). Each swapped class is a subclass of vlkernels' class with ``impl`` bound, so ``isinstance``
checks against the (patched) open_clip names and against vlkernels' classes both hold.
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
import sys
import warnings

import torch

from vlkernels import _checks

INSTALL_HINT = "pip install vlkernels[open_clip]"
# The open_clip versions whose layout this patch was written and tested against.
KNOWN_MAJOR_VERSIONS = (3,)
# patch_open_clip's keyword -> the class name in open_clip (and in vlkernels.nn).
LOSSES = {"clip": "ClipLoss", "distill": "DistillClipLoss", "siglip": "SigLipLoss", "coca": "CoCaLoss"}
# Where open_clip binds the loss classes: the factory's globals (create_loss), the loss module, the package.
MODULES = ("open_clip.factory", "open_clip.loss", "open_clip")


class OpenClipPatch:
    """The handle ``patch_open_clip`` returns: ``undo()`` restores every attribute it changed (the very
    same objects); also a context manager (``with patch_open_clip(): ...`` undoes on exit).

    ``classes``: open_clip class name -> the class open_clip now builds. ``changed``: the
    ``(module name, attribute)`` pairs that were rebound.
    """

    def __init__(self, changes: list[tuple[object, str, object]], classes: dict[str, type]):
        self._changes = changes
        self.classes = dict(classes)
        self.changed = [(module.__name__, name) for module, name, _ in changes]

    @property
    def active(self) -> bool:
        return bool(self._changes)

    def undo(self) -> None:
        """Restore open_clip's attributes (a second call does nothing)."""
        while self._changes:
            module, name, original = self._changes.pop()
            setattr(module, name, original)

    def __enter__(self) -> OpenClipPatch:
        return self

    def __exit__(self, *exc) -> None:
        self.undo()

    def __repr__(self) -> str:
        state = "active" if self.active else "undone"
        return f"OpenClipPatch({state}, classes={sorted(self.classes)})"


def _import_open_clip():
    try:
        return importlib.import_module("open_clip")
    except ModuleNotFoundError as err:
        if err.name not in ("open_clip", None):
            raise
        raise ImportError(
            f"patch_open_clip needs open_clip (the open_clip_torch package): {INSTALL_HINT}"
        ) from err
    except Exception as err:  # open_clip is there but its import fails (often in torchvision)
        hint = ""
        if "torchvision" in str(err):
            hint = (
                f" (torchvision {_version('torchvision')} beside torch {torch.__version__}: a torchvision "
                "built for another torch release, or for CUDA beside a CPU torch, fails like this; install "
                "the torchvision build made for this torch: for a CPU torch, from "
                "https://download.pytorch.org/whl/cpu)"
            )
        raise ImportError(
            f"patch_open_clip could not import open_clip: {type(err).__name__}: {err}{hint}"
        ) from err


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _open_clip_version() -> str | None:
    return _version("open_clip_torch") or getattr(sys.modules.get("open_clip"), "__version__", None)


def _bound(base: type, impl: str) -> type:
    """A subclass of vlkernels' ``base`` whose constructor defaults ``impl`` to the patch's."""

    @functools.wraps(base.__init__)
    def __init__(self, *args, **kwargs):
        kwargs.setdefault("impl", impl)
        base.__init__(self, *args, **kwargs)

    doc = f"vlkernels.{base.__name__} (impl={impl!r} by default), installed by vlkernels.patch_open_clip."
    return type(
        base.__name__,
        (base,),
        {"__init__": __init__, "__doc__": doc, "__module__": __name__, "patched_impl": impl},
    )


def _vlkernels_classes(selected: list[str]) -> dict[str, type]:
    from vlkernels import nn as vl_nn

    found = {}
    for name in selected:
        cls = getattr(vl_nn, name, None)
        if cls is None:
            warnings.warn(
                f"vlkernels.nn has no {name} in this version: open_clip keeps its own", stacklevel=3
            )
        else:
            found[name] = cls
    return found


def patch_open_clip(
    clip: bool = True,
    distill: bool = True,
    siglip: bool = True,
    coca: bool = True,
    impl: str = "auto",
) -> OpenClipPatch:
    """Make open_clip (``create_loss``, hence ``open_clip_train``) build vlkernels' losses.

    Args:
        clip, distill, siglip, coca: which of open_clip's ``ClipLoss``, ``DistillClipLoss``,
            ``SigLipLoss`` and ``CoCaLoss`` to swap.
        impl: the ``impl`` the swapped classes default to ("auto" | "triton" | "torch" | "naive").

    Returns:
        An ``OpenClipPatch``: ``undo()`` (or leaving a ``with`` block) restores open_clip exactly.

    Raises ImportError (naming ``pip install vlkernels[open_clip]``) when open_clip is not installed.
    An open_clip version or layout this was not written for (e.g. no ``create_loss``) gets a
    UserWarning, and what can be patched is patched.
    """
    _checks.check_impl(impl)
    _import_open_clip()
    version = _open_clip_version()
    major = version.split(".")[0] if version else ""
    if not (major.isdigit() and int(major) in KNOWN_MAJOR_VERSIONS):
        warnings.warn(
            f"vlkernels.patch_open_clip was written for open_clip_torch 3.x, found {version!r}: "
            "patching what it can",
            stacklevel=2,
        )
    selected = [name for key, name in LOSSES.items() if {"clip": clip, "distill": distill,
                "siglip": siglip, "coca": coca}[key]]  # fmt: skip
    classes = {name: _bound(cls, impl) for name, cls in _vlkernels_classes(selected).items()}

    modules = []
    for module_name in MODULES:
        try:
            modules.append(importlib.import_module(module_name))
        except ImportError:
            warnings.warn(f"{module_name} does not import: not patched", stacklevel=2)
    factory = sys.modules.get("open_clip.factory")
    if factory is None or not callable(getattr(factory, "create_loss", None)):
        warnings.warn(
            "open_clip.factory.create_loss not found (an open_clip layout vlkernels does not know): "
            "open_clip_train may still build open_clip's own losses",
            stacklevel=2,
        )
    loss_module = sys.modules.get("open_clip.loss")
    missing = [name for name in classes if loss_module is None or not hasattr(loss_module, name)]
    if missing:
        warnings.warn(
            f"open_clip.loss has no {', '.join(missing)} (an open_clip layout vlkernels does not know)",
            stacklevel=2,
        )

    changes = []
    for module in modules:
        for name, cls in classes.items():
            if name in vars(module):
                changes.append((module, name, vars(module)[name]))
                setattr(module, name, cls)
    return OpenClipPatch(changes, classes)
