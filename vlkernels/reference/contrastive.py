"""Naive CLIP loss, as open_clip computes it: the full B x B logits in fp32 (or float64)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def contrastive_loss_naive(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    logit_scale: torch.Tensor | float,
    label_smoothing: float = 0.0,
    reduction: str = "mean",
) -> torch.Tensor:
    """``0.5 * (CE(S, arange(B)) + CE(S.T, arange(B)))`` with ``S = logit_scale * I @ T.T`` in fp32
    (float64 for float64 inputs: the tests' exact reference).

    ``reduction="sum"`` returns the sum of the two directional means (2x the mean).
    """
    dtype = torch.promote_types(image_features.dtype, torch.float32)
    logits = logit_scale * (image_features.to(dtype) @ text_features.to(dtype).T)
    labels = torch.arange(logits.shape[0], device=logits.device)
    loss_i = F.cross_entropy(logits, labels, label_smoothing=label_smoothing)
    loss_t = F.cross_entropy(logits.T, labels, label_smoothing=label_smoothing)
    total = loss_i + loss_t
    return total if reduction == "sum" else 0.5 * total
