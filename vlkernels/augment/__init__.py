"""Fused CLIP image augmentation: crop + resize + flip + colour jitter + grayscale + normalise.

    from vlkernels.augment import fused_augment, sample_augment_params, AugmentParams
    out = fused_augment(images, 224)                     # uint8 NHWC / NCHW / list -> float32 NCHW

Backends: the compiled C++ CPU op and CUDA op (``torch.ops.vlkernels.fused_augment``) and a
pure-PyTorch reference (``impl="torch"``) with torchvision's semantics.
"""

from vlkernels.augment.api import CLIP_MEAN, CLIP_STD, fused_augment
from vlkernels.augment.params import AugmentParams, sample_augment_params
from vlkernels.augment.reference import reference_augment

__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "AugmentParams",
    "fused_augment",
    "reference_augment",
    "sample_augment_params",
]
