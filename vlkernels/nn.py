"""Thin nn.Modules with open_clip-compatible signatures."""

from __future__ import annotations

import numbers

import torch
from torch import nn

from vlkernels.functional import contrastive_loss


def _check_logit_bias(logit_bias) -> None:
    # A scalar bias adds the same constant to every logit, which cancels in softmax cross-entropy.
    if logit_bias is None:
        return
    if isinstance(logit_bias, torch.Tensor):
        if logit_bias.numel() != 1:
            raise ValueError(f"logit_bias must be a scalar, got shape {tuple(logit_bias.shape)}")
    elif isinstance(logit_bias, bool) or not isinstance(logit_bias, numbers.Real):
        raise TypeError(f"logit_bias must be a float or a scalar tensor, got {type(logit_bias).__name__}")


class ClipLoss(nn.Module):
    """Drop-in for ``open_clip.loss.ClipLoss`` on the memory-efficient kernels.

    ``forward(image_features, text_features, logit_scale, logit_bias=None, output_dict=False)`` returns the
    loss, or ``{"contrastive_loss": loss}`` with ``output_dict=True``. ``logit_scale`` is already
    exponentiated. ``cache_labels`` is accepted for compatibility (no labels are materialised).

    With ``world_size > 1`` each rank passes its local [b, D] features and gets open_clip's per-rank loss
    and gradients for its ``local_loss`` / ``gather_with_grad`` combination (see ``vlkernels.distributed``):
    ``local_loss=False`` returns the full-batch loss, ``local_loss=True`` the rank's b rows and b columns
    over all B candidates; ``gather_with_grad=False`` treats the other ranks' features as constants.
    ``rank`` and ``world_size`` must match the process group (``group``, default the global one).
    """

    def __init__(
        self,
        local_loss: bool = False,
        gather_with_grad: bool = False,
        cache_labels: bool = False,
        rank: int = 0,
        world_size: int = 1,
        use_horovod: bool = False,
        *,
        label_smoothing: float = 0.0,
        impl: str = "auto",
        group=None,
    ):
        super().__init__()
        if use_horovod:
            raise NotImplementedError("use_horovod=True is not supported; use torch.distributed")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need world_size >= 1 and 0 <= rank < world_size, got {rank=}, {world_size=}")
        self.group = group
        self.local_loss = local_loss
        self.gather_with_grad = gather_with_grad
        self.cache_labels = cache_labels
        self.rank = rank
        self.world_size = world_size
        self.label_smoothing = label_smoothing
        self.impl = impl

    def forward(self, image_features, text_features, logit_scale, logit_bias=None, output_dict: bool = False):
        _check_logit_bias(logit_bias)
        if self.world_size > 1:
            loss = self._distributed_loss(image_features, text_features, logit_scale)
            return {"contrastive_loss": loss} if output_dict else loss
        loss = contrastive_loss(
            image_features,
            text_features,
            logit_scale,
            label_smoothing=self.label_smoothing,
            impl=self.impl,
        )
        return {"contrastive_loss": loss} if output_dict else loss

    def _distributed_loss(self, image_features, text_features, logit_scale):
        from vlkernels import _checks, distributed
        from vlkernels.functional import resolve_impl

        distributed.check_world(self.group, self.rank, self.world_size, type(self).__name__)
        _checks.check_features(image_features, text_features)
        return distributed.contrastive_loss(
            image_features,
            text_features,
            _checks.scale_tensor(logit_scale, image_features),
            eps=_checks.check_label_smoothing(self.label_smoothing),
            factor=1.0,
            impl=resolve_impl(self.impl, image_features.device),
            group=self.group,
            local_loss=self.local_loss,
            gather_with_grad=self.gather_with_grad,
        )
