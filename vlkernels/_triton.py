"""Guarded Triton import: the package imports and works (impl="torch") on machines without Triton."""

from __future__ import annotations

import os

import torch

try:
    import triton  # noqa: F401
    import triton.language as tl  # noqa: F401

    HAS_TRITON = True
    _IMPORT_ERROR = ""
except Exception as exc:  # pragma: no cover - depends on the machine
    HAS_TRITON = False
    _IMPORT_ERROR = f"{type(exc).__name__}: {exc}"


def interpret_mode() -> bool:
    """True when Triton kernels run in Triton's CPU interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def unavailable_reason(device: torch.device) -> str | None:
    """Why the Triton kernels cannot run on ``device``, or None when they can."""
    if not HAS_TRITON:
        return (
            f"triton cannot be imported ({_IMPORT_ERROR}); install it with `pip install triton` (Linux only)"
        )
    if device.type == "cuda":
        return None
    if device.type == "cpu":
        if interpret_mode():
            return None
        return (
            "the Triton kernels need a CUDA device; on CPU they run only in Triton's interpreter "
            "(set TRITON_INTERPRET=1 before importing triton; slow, meant for tests); "
            "use impl='torch' instead"
        )
    return f"the Triton kernels do not support device type {device.type!r}; use impl='torch'"
