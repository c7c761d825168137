"""vlkernels: memory-efficient kernels for vision-language (CLIP-style) pre-training.

Public API::

    from vlkernels import contrastive_loss, ClipLoss
    loss = contrastive_loss(image_features, text_features, logit_scale)

    from vlkernels import soft_target_loss, SoftTargetLoss, DistillClipLoss, progressive_alpha
    loss = soft_target_loss(image_features, text_features, logit_scale, alpha)

    from vlkernels import sigmoid_loss, SigLipLoss
    loss = sigmoid_loss(image_features, text_features, logit_scale, logit_bias)

    import vlkernels; vlkernels.patch_open_clip()   # open_clip / open_clip_train now build these losses

    from vlkernels import fused_augment, sample_augment_params, AugmentParams
    crops = fused_augment(uint8_images, 224)   # [N, 3, 224, 224] normalised random-resized crops

Layers (imports point down): ``_checks`` (argument checks) and ``_dist`` (process-group helpers) ->
``ops`` (kernels, backends, autograd Functions) -> ``_dispatch`` (impl selection) -> ``functional`` ->
``nn``; ``reference`` holds the naive baselines, ``augment`` the fused augmentation, ``train`` the trainer.
"""

from vlkernels.augment import AugmentParams, fused_augment, sample_augment_params
from vlkernels.functional import contrastive_loss, progressive_alpha, sigmoid_loss, soft_target_loss
from vlkernels.integrations import patch_open_clip
from vlkernels.nn import ClipLoss, CoCaLoss, DistillClipLoss, SigLipLoss, SoftTargetLoss

__version__ = "0.1.0"

__all__ = [
    "AugmentParams",
    "ClipLoss",
    "CoCaLoss",
    "DistillClipLoss",
    "SigLipLoss",
    "SoftTargetLoss",
    "contrastive_loss",
    "fused_augment",
    "patch_open_clip",
    "progressive_alpha",
    "sample_augment_params",
    "sigmoid_loss",
    "soft_target_loss",
]
