"""Implementation selection: ``impl`` -> the concrete implementation and its backend objects.

``impl`` is one of:

- ``"auto"``: the fastest available: Triton on CUDA (when triton imports), else the chunked torch path;
- ``"triton"``: the Triton kernels (CUDA, or CPU under ``TRITON_INTERPRET=1`` for tests);
- ``"torch"``: chunked PyTorch, O(B * chunk) memory, any device;
- ``"naive"``: materialises the B x B logits (open_clip's computation; the parity baseline).

An explicit ``impl`` that cannot run raises a RuntimeError that says why; there is no silent fallback.
The Triton modules are imported only when chosen (the package works where triton does not import).
"""

from __future__ import annotations

import torch

from vlkernels import _checks
from vlkernels._triton import unavailable_reason
from vlkernels.ops.contrastive import ContrastiveBackend
from vlkernels.ops.contrastive_torch import TorchBackend
from vlkernels.ops.soft_target import SoftTargetBackend
from vlkernels.ops.soft_target_torch import TorchSoftTargetBackend


def resolve_impl(impl: str, device: torch.device) -> str:
    """The concrete implementation ("triton" | "torch" | "naive") that ``impl`` selects on ``device``."""
    _checks.check_impl(impl)
    if impl == "auto":
        return "triton" if device.type == "cuda" and unavailable_reason(device) is None else "torch"
    if impl == "triton":
        reason = unavailable_reason(device)
        if reason is not None:
            raise RuntimeError(f"impl='triton' cannot run: {reason}")
    return impl


def contrastive_backend(impl: str) -> ContrastiveBackend:
    """The contrastive backend of a resolved ``impl`` ("triton" | "torch")."""
    if impl == "triton":
        from vlkernels.ops.contrastive_triton import TritonBackend

        return TritonBackend()
    return TorchBackend()


def soft_target_backend(impl: str) -> SoftTargetBackend:
    """The soft-target backend of a resolved ``impl`` ("triton" | "torch")."""
    if impl == "triton":
        from vlkernels.ops.soft_target_triton import TritonSoftTargetBackend

        return TritonSoftTargetBackend()
    return TorchSoftTargetBackend()


def sigmoid_backend(impl: str):
    """The sigmoid (SigLIP) backend of a resolved ``impl`` ("triton" | "torch")."""
    if impl == "triton":
        from vlkernels.ops.sigmoid_triton import TritonSigmoidBackend

        return TritonSigmoidBackend()
    from vlkernels.ops.sigmoid_torch import TorchSigmoidBackend

    return TorchSigmoidBackend()
