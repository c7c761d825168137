"""Functional entry points: argument checks and implementation selection.

``impl`` is one of:

- ``"auto"``: the fastest available: Triton on CUDA (when triton imports), else the chunked torch path;
- ``"triton"``: the Triton kernels (CUDA, or CPU under ``TRITON_INTERPRET=1`` for tests);
- ``"torch"``: chunked PyTorch, O(B * chunk) memory, any device;
- ``"naive"``: materialises the B x B logits (open_clip's computation; the parity baseline).

An explicit ``impl`` that cannot run raises a RuntimeError that says why; there is no silent fallback.
"""

from __future__ import annotations

import torch

from vlkernels import _checks
from vlkernels._triton import unavailable_reason


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


def _backend(impl: str):
    if impl == "triton":
        from vlkernels.ops.contrastive_triton import TritonBackend

        return TritonBackend()
    from vlkernels.ops.contrastive_torch import TorchBackend

    return TorchBackend()


def contrastive_loss(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    logit_scale: torch.Tensor | float,
    *,
    label_smoothing: float = 0.0,
    reduction: str = "mean",
    impl: str = "auto",
    group=None,
    gather: bool = False,
) -> torch.Tensor:
    """Symmetric InfoNCE (CLIP) loss without materialising the B x B logits.

    Args:
        image_features, text_features: [B, D], same dtype (float32, bfloat16 or float16) and device;
            L2-normalised by the caller, as in open_clip. Any strides.
        logit_scale: already exponentiated scale (open_clip passes ``logit_scale.exp()``): a float or a
            0-d tensor; when it requires grad it receives its gradient.
        label_smoothing: in [0, 1], torch's ``cross_entropy`` semantics.
        reduction: "mean" (the average of the two directions) or "sum" (their sum, i.e. 2x the mean).
        impl: "auto" | "triton" | "torch" | "naive" (see the module docstring).
        gather: the batch is split across the processes of ``group`` (an initialised torch.distributed
            process group; None: the default one), each passing its local [b, D] pairs (the same b, D
            and dtype everywhere). Every rank returns the loss of the whole batch (B = world * b), and
            the gradients are those of open_clip's ``gather_with_grad=True``: rank r's features get
            world * dL/df_r (so that DDP's gradient average is the single-process full-batch gradient)
            and ``logit_scale`` gets dL/ds. Block-row scheme (``vlkernels.distributed``): only the texts
            are all-gathered, 8 b B D FLOPs per rank, no b x B tensor. ``impl="naive"`` gathers both
            modalities with autograd and materialises the B x B logits, as open_clip does.

    Returns:
        0-d float32 tensor. Naive equivalent: ``S = logit_scale * I.float() @ T.float().T;
        0.5 * (F.cross_entropy(S, arange(B)) + F.cross_entropy(S.T, arange(B)))``.
        Non-finite inputs give a non-finite loss (never a finite wrong value).
    """
    _checks.check_features(image_features, text_features)
    eps = _checks.check_label_smoothing(label_smoothing)
    factor = _checks.reduction_factor(reduction)
    scale = _checks.scale_tensor(logit_scale, image_features)
    impl = resolve_impl(impl, image_features.device)
    if gather:
        from vlkernels import distributed

        return distributed.contrastive_loss(
            image_features, text_features, scale, eps=eps, factor=factor, impl=impl, group=group
        )
    if group is not None:
        raise ValueError("group is used only with gather=True (pass gather=True to split the batch)")
    if impl == "naive":
        from vlkernels.reference import contrastive_loss_naive

        return contrastive_loss_naive(image_features, text_features, scale, eps, reduction)
    from vlkernels.ops.contrastive import ContrastiveLossFunction

    return ContrastiveLossFunction.apply(image_features, text_features, scale, eps, factor, _backend(impl))
