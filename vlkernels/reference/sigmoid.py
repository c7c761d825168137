"""Naive sigmoid (SigLIP) loss, as open_clip computes it: the full B x B (or b x B) logits in fp32."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vlkernels import _dist
from vlkernels.reference.distributed import open_clip_gather


def sigmoid_loss_naive(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    logit_scale: torch.Tensor | float,
    logit_bias: torch.Tensor | float,
    *,
    label_offset: int = 0,
) -> torch.Tensor:
    """``-F.logsigmoid(labels * (logit_scale * I @ T.T + logit_bias)).sum() / M`` for I [M, D], T [N, D],
    in fp32 (float64 for float64 inputs: the tests' exact reference). ``labels`` is +1 at (i, i +
    label_offset) and -1 elsewhere (open_clip's ``2 * eye(B) - 1`` when the offset is 0)."""
    dtype = torch.promote_types(image_features.dtype, torch.float32)
    logits = logit_scale * (image_features.to(dtype) @ text_features.to(dtype).T) + logit_bias
    rows = torch.arange(logits.shape[0], device=logits.device)
    labels = -torch.ones_like(logits)
    labels[rows, rows + label_offset] = 1.0
    return -F.logsigmoid(labels * logits).sum() / logits.shape[0]


def sigmoid_loss_open_clip(image, text, scale, bias, *, per_rank: bool, group=None):
    """open_clip's SigLipLoss over the ranks with the texts all-gathered with autograd (the values and
    gradients of every one of its ``dist_impl`` exchanges): ``per_rank``: rank r's b images against all B
    texts, divided by b; else the full-batch loss on every rank (all modalities gathered)."""
    _, rank = _dist.world(group)
    all_image, all_text = open_clip_gather(image, text, local_loss=True, gather_with_grad=True, group=group)
    if per_rank:
        return sigmoid_loss_naive(image, all_text, scale, bias, label_offset=rank * image.shape[0])
    return sigmoid_loss_naive(all_image, all_text, scale, bias)
