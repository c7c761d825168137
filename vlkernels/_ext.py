"""Guarded load of the compiled extension ``vlkernels._C`` (C++ CPU ops, CUDA ops where built)."""

from __future__ import annotations

import functools

INSTALL_HINT = (
    "build it with `pip install --no-build-isolation -e .` from the repository root "
    "(and without VLKERNELS_SKIP_BUILD=1)"
)


@functools.cache
def load_error() -> str | None:
    """None when the extension is loaded, else the reason it is not."""
    import torch  # noqa: F401  (loads libc10/libtorch, which _C links against)

    try:
        from vlkernels import _C  # noqa: F401
    except ImportError as exc:
        return f"vlkernels._C is not available ({exc}); {INSTALL_HINT}"
    return None


def available() -> bool:
    return load_error() is None


def require(what: str) -> None:
    """Raise a clear error when ``what`` needs the compiled extension and it is missing."""
    err = load_error()
    if err is not None:
        raise RuntimeError(f"{what} needs the compiled extension: {err}")


def build_info() -> str:
    """'cpu' or 'cpu+cuda': which backends the compiled extension was built with."""
    require("vlkernels._ext.build_info")
    import torch

    return torch.ops.vlkernels.build_info()
