"""Naive PyTorch implementations: the parity baseline for tests and benchmarks (they materialise B x B)."""

from vlkernels.reference.contrastive import contrastive_loss_naive
from vlkernels.reference.distributed import (
    contrastive_loss_open_clip,
    distill_clip_open_clip,
    open_clip_gather,
    open_clip_logits,
    soft_target_loss_gathered,
)
from vlkernels.reference.sigmoid import sigmoid_loss_naive, sigmoid_loss_open_clip
from vlkernels.reference.soft_target import distill_clip_loss_naive, soft_target_loss_naive

__all__ = [
    "contrastive_loss_naive",
    "contrastive_loss_open_clip",
    "distill_clip_loss_naive",
    "distill_clip_open_clip",
    "open_clip_gather",
    "open_clip_logits",
    "sigmoid_loss_naive",
    "sigmoid_loss_open_clip",
    "soft_target_loss_gathered",
    "soft_target_loss_naive",
]
