"""vlkernels: memory-efficient kernels for vision-language (CLIP-style) pre-training.

Public API::

    from vlkernels import contrastive_loss, ClipLoss
    loss = contrastive_loss(image_features, text_features, logit_scale)

    from vlkernels import soft_target_loss, SoftTargetLoss, DistillClipLoss, progressive_alpha
    loss = soft_target_loss(image_features, text_features, logit_scale, alpha)
"""

from vlkernels.distill import DistillClipLoss, SoftTargetLoss, progressive_alpha, soft_target_loss
from vlkernels.functional import contrastive_loss
from vlkernels.nn import ClipLoss

__version__ = "0.1.0"

__all__ = [
    "ClipLoss",
    "DistillClipLoss",
    "SoftTargetLoss",
    "contrastive_loss",
    "progressive_alpha",
    "soft_target_loss",
]
