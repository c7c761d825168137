"""Fused CLIP image augmentation: crop + resize + flip + colour jitter + grayscale + normalise.

    from vlkernels.augment import fused_augment, sample_augment_params, AugmentParams, PackedImages
    out = fused_augment(images, 224)                     # uint8 NHWC / NCHW / list -> float32 NCHW
    out = fused_augment(PackedImages.from_list(images), 224)          # packed once, read in place
    out = fused_augment(images, 224, views=[dict(scale=(0.4, 1.0)), dict(scale=(0.05, 0.4))])
    # -> [2 N, 3, 224, 224], view-major: out.view(2, N, 3, 224, 224)[k] is view group k

Several views per image: ``AugmentParams.source`` (int64 [M]) makes output m read image source[m]
(no copy of the image per view); ``views=`` builds it, one dict of sampling settings per view group.
Zero-copy batches: ``PackedImages`` (flat uint8 buffer + offsets + sizes, the op's own layout) is
read in place; ``PackedImages.from_list`` packs once (e.g. in a DataLoader collate function, see
examples/augment_dataloader.py). A list of separate tensors is read in place as well (the op takes the
tensors themselves; on CUDA through a device table of their addresses).
CPU threads: images are handed out largest first to the threads (dynamic), each thread keeps its
scratch buffers across images and calls (no allocation, page faults or unmapping per image).

Backends: the compiled C++ CPU op and CUDA op (``torch.ops.vlkernels.fused_augment``) and a
pure-PyTorch reference (``impl="torch"``) with torchvision's semantics.

Order per sample: crop + resize -> flip -> colour jitter -> grayscale -> Gaussian blur -> solarize ->
normalise (or uint8). The flip is applied right after the resize; every later op commutes with it.

Semantics: torchvision v2's float chain, not its uint8 chain. Every op computes what
``torchvision.transforms.v2.functional`` computes on a float image (``to_dtype(uint8, float32,
scale=True)`` first), in float32, with one conversion at the end; tests/test_augment_torchvision.py
checks each op alone and the whole chain against the real torchvision on photographs and generated
images to within 2^-17 (0.002 / 255) on the [0, 1] scale (measured: at most 0.0006 / 255). Run on
uint8 tensors, torchvision rounds the resize and truncates after every colour op (``_blend`` casts
with ``.to(uint8)``; the contrast mean is floored), so its uint8 chain comes out darker: on the
strong-view recipe (bicubic, jitter 0.4 / 0.4 / 0.4 / 0.1 with p 0.8, grayscale 0.2, blur p 0.5, flip;
64 views of four photographs) it differs from the float chain by up to 9.0 / 255 per value (either
sign), -1.22 / 255 on average (-1.49 / 255 over the jittered samples). Results trained with
torchvision's uint8 pipeline are therefore reproduced up to that shift, not bit for bit.

Resampling (``interpolation=``): "bilinear" (default) or "bicubic", both antialiased when downscaling,
exactly as ``F.interpolate(mode=..., antialias=True, align_corners=False)`` (what torchvision v2's
``resized_crop(..., antialias=True)`` runs on float images): separable filters whose support is scaled
by the downscale factor, taps cut at the crop's borders and renormalised. Bicubic uses the cubic
convolution kernel with a = -0.5 (torch's antialias path, also when upscaling; plain bicubic without
antialias uses a = -0.75) and is clamped to [0, 1] before the colour ops. torchvision v2 clamps the
bicubic result only when resizing a uint8 image (to [0, 255], then rounds); on a float image it leaves
the overshoot, so ``"bicubic"`` here equals torchvision on float images followed by ``clamp(0, 1)``.
(Unclamped, the overshoot below 0 next to a pixel whose largest channel is 0 makes torchvision's
``adjust_hue`` divide by 0: NaN, spread over the whole image by a later contrast op; 5 of 64 strong-view
samples of photographs.)

Gaussian blur (``blur_p=``, ``blur_sigma=(lo, hi)``; per-sample ``AugmentParams.blur_sigma``, 0 = off):
torchvision v2 ``gaussian_blur`` on a float image, i.e. a separable Gaussian with weights
exp(-0.5 (x / sigma)^2) at x = -(k-1)/2 .. (k-1)/2 normalised to sum 1, reflect padding. torchvision's
``GaussianBlur`` takes an explicit kernel_size (the SimCLR / improved-baselines recipes use ~10% of the
image, 23 at 224); here it follows from sigma: k = 2 * ceil(3 * sigma) + 1 (covers +-3 sigma, so the
cut-off tails weigh < 0.3%), clipped per axis to 2 * n - 1 for an output axis of n pixels (reflect
padding needs pad < n). With sigma = 2 that is k = 13 rather than 23: the weights beyond 3 sigma
that a larger kernel adds are below exp(-4.5) of the centre. Computed on the output-size image, after
grayscale, before solarize. CPU: the colour-processed image is kept in a per-image scratch and
blurred separably; CUDA: through a global-memory workspace (two float images per image, allocated
only when some sample may be blurred).
"""

from vlkernels.augment.api import CLIP_MEAN, CLIP_STD, fused_augment
from vlkernels.augment.packed import PackedImages
from vlkernels.augment.params import AugmentParams, sample_augment_params
from vlkernels.augment.reference import reference_augment

__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "AugmentParams",
    "PackedImages",
    "fused_augment",
    "reference_augment",
    "sample_augment_params",
]
