"""Pure-PyTorch reference of the fused augmentation: torchvision's transforms, one sample at a time.

Per sample: crop + resize (``F.interpolate(mode="bilinear" or "bicubic", antialias=True)``, as
torchvision's ``resized_crop(..., antialias=True)`` on a float image; bicubic then clamped to [0, 1],
which torchvision does for uint8 images only),
horizontal flip, colour jitter in the sample's op order (torchvision's ``adjust_*`` formulas on float
images, clamped to [0, 1] after each op), grayscale (0.2989, 0.587, 0.114), Gaussian blur
(torchvision's ``gaussian_blur`` on a float image: reflect padding, ``conv2d`` with the outer product
of the 1-d kernels; kernel size from sigma, see ``blur_radius``), solarize (threshold 128/255),
normalise. All in fp32; one conversion to ``out_dtype`` at the end; uint8: no normalisation, x * 255
rounded half to even, clamped. (The flip is applied right after the resize: every later op commutes
with it, the blur too, its kernel and padding being symmetric.)
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from vlkernels.augment.params import BRIGHTNESS, CONTRAST, HUE, SATURATION, AugmentParams


def rgb_to_gray(x: torch.Tensor) -> torch.Tensor:
    """[3, H, W] -> [H, W], torchvision's rgb_to_grayscale on a float image."""
    return 0.2989 * x[0] + 0.587 * x[1] + 0.114 * x[2]


def _blend(a: torch.Tensor, b, ratio: float) -> torch.Tensor:
    return (ratio * a + (1.0 - ratio) * b).clamp(0.0, 1.0)


def rgb_to_hsv(x: torch.Tensor) -> torch.Tensor:
    """torchvision's _rgb2hsv ([3, H, W] float in [0, 1] -> h in [0, 1), s, v)."""
    r, g, b = x.unbind(0)
    maxc = x.max(dim=0).values
    minc = x.min(dim=0).values
    eqc = maxc == minc
    cr = maxc - minc
    ones = torch.ones_like(maxc)
    s = cr / torch.where(eqc, ones, maxc)
    div = torch.where(eqc, ones, cr)
    rc, gc, bc = (maxc - r) / div, (maxc - g) / div, (maxc - b) / div
    hr = (maxc == r) * (bc - gc)
    hg = ((maxc == g) & (maxc != r)) * (2.0 + rc - bc)
    hb = ((maxc != g) & (maxc != r)) * (4.0 + gc - rc)
    h = torch.fmod((hr + hg + hb) / 6.0 + 1.0, 1.0)
    return torch.stack((h, s, maxc))


def hsv_to_rgb(x: torch.Tensor) -> torch.Tensor:
    """torchvision's _hsv2rgb (sector selection written as a gather instead of a one-hot einsum)."""
    h, s, v = x.unbind(0)
    i = torch.floor(h * 6.0)
    f = h * 6.0 - i
    i = i.to(torch.int64) % 6
    p = (v * (1.0 - s)).clamp(0.0, 1.0)
    q = (v * (1.0 - s * f)).clamp(0.0, 1.0)
    t = (v * (1.0 - s * (1.0 - f))).clamp(0.0, 1.0)
    table = torch.stack(
        [
            torch.stack((v, q, p, p, t, v)),
            torch.stack((t, v, v, q, p, p)),
            torch.stack((p, p, t, v, v, q)),
        ]
    )  # [3 channels, 6 sectors, H, W]
    return table.gather(1, i[None, None].expand(3, 1, *i.shape))[:, 0]


def adjust_hue(x: torch.Tensor, hue: float) -> torch.Tensor:
    hsv = rgb_to_hsv(x)
    h = torch.remainder(hsv[0] + hue, 1.0)
    return hsv_to_rgb(torch.stack((h, hsv[1], hsv[2]))).clamp(0.0, 1.0)


SOLARIZE_THRESHOLD = 128 / 255


def solarize(x: torch.Tensor, threshold: float = SOLARIZE_THRESHOLD) -> torch.Tensor:
    """torchvision v2 F.solarize on a float image (bound 1): x >= threshold -> 1 - x."""
    return torch.where(x >= threshold, 1.0 - x, x)


def blur_radius(sigma: float, n: int) -> int:
    """Half-width of the blur kernel along an axis of n pixels: ceil(3 sigma) (kernel size
    2 * ceil(3 sigma) + 1), clipped to n - 1 (reflect padding needs pad < n)."""
    return min(math.ceil(3.0 * sigma), n - 1)


def gaussian_kernel1d(sigma: float, radius: int) -> torch.Tensor:
    """torchvision's _get_gaussian_kernel1d in float32: x = linspace(-(k-1)/2, (k-1)/2, k),
    exp(-0.5 (x / sigma)^2), normalised to sum 1."""
    x = torch.linspace(-radius, radius, 2 * radius + 1, dtype=torch.float32)
    w = torch.exp(-0.5 * (x / sigma).pow(2))
    return w / w.sum()


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """torchvision v2 F.gaussian_blur(x, [kx, ky], [sigma, sigma]) on a float [3, H, W] image, with
    kx = 2 * blur_radius(sigma, W) + 1, ky = 2 * blur_radius(sigma, H) + 1: reflect padding, then a
    depthwise conv2d with the 2-d kernel (outer product of the 1-d ones). sigma 0: unchanged."""
    if sigma == 0.0:
        return x
    h, w = x.shape[-2:]
    rx, ry = blur_radius(sigma, w), blur_radius(sigma, h)
    kx, ky = gaussian_kernel1d(sigma, rx).to(x.device), gaussian_kernel1d(sigma, ry).to(x.device)
    kernel = torch.mm(ky[:, None], kx[None, :]).expand(3, 1, 2 * ry + 1, 2 * rx + 1)
    padded = F.pad(x[None], [rx, rx, ry, ry], mode="reflect")
    return F.conv2d(padded, kernel, groups=3)[0]


def color_op(x: torch.Tensor, op: int, factor: float) -> torch.Tensor:
    """One ColorJitter op on a float [3, H, W] image; identity factors are skipped."""
    if op == BRIGHTNESS:
        return x if factor == 1.0 else _blend(x, 0.0, factor)
    if op == CONTRAST:
        return x if factor == 1.0 else _blend(x, rgb_to_gray(x).mean(), factor)
    if op == SATURATION:
        return x if factor == 1.0 else _blend(x, rgb_to_gray(x)[None], factor)
    if op == HUE:
        return x if factor == 0.0 else adjust_hue(x, factor)
    raise ValueError(f"unknown colour op {op}")


def augment_one(
    img_chw: torch.Tensor,
    size: tuple[int, int],
    box: Sequence[int],
    flip: bool,
    factors: Sequence[float] | None,
    order: Sequence[int],
    gray: bool,
    mean: torch.Tensor,
    std: torch.Tensor,
    solar: bool = False,
    quantise: bool = False,
    interpolation: str = "bilinear",
    sigma: float = 0.0,
) -> torch.Tensor:
    """One sample, uint8 [3, H, W] -> float32 [3, h, w] (normalised; quantise: 0..255 integers)."""
    top, left, h, w = box
    x = img_chw[:, top : top + h, left : left + w].float() / 255.0
    # A channels-last copy with standard strides: torch's antialiased CPU kernel on a contiguous NCHW
    # tensor (or a 1-image channels-last view whose batch stride is not H * W * C) returns wrong values
    # when the output width is 1 and the height changes (every row the first one's; seen on torch
    # 2.13); its channels-last path agrees with the filters written out (tests/test_augment_bicubic.py).
    x = torch.empty((1, *x.shape), dtype=x.dtype, device=x.device, memory_format=torch.channels_last).copy_(x)
    x = F.interpolate(x, size=size, mode=interpolation, align_corners=False, antialias=True)[0]
    if interpolation == "bicubic":
        # Bicubic overshoots (negative lobes). torchvision v2 clamps to [0, 255] only when resizing a
        # uint8 image (not a float one); clamped here so that the colour ops see [0, 1], as in a uint8
        # pipeline (without its rounding).
        x = x.clamp(0.0, 1.0)
    if flip:
        x = x.flip(-1)
    if factors is not None:
        for op in order:
            x = color_op(x, op, factors[op])
    if gray:
        x = rgb_to_gray(x)[None].expand(3, -1, -1)
    x = gaussian_blur(x, sigma)
    if solar:
        x = solarize(x)
    if quantise:
        return (x * 255.0).round().clamp(0.0, 255.0)
    return (x - mean[:, None, None]) / std[:, None, None]


def reference_augment(
    images_chw: Sequence[torch.Tensor],
    size: tuple[int, int],
    params: AugmentParams,
    mean: Sequence[float],
    std: Sequence[float],
    out_dtype: torch.dtype = torch.float32,
    interpolation: str = "bilinear",
) -> torch.Tensor:
    """The chain of torchvision-style transforms per sample; images are uint8 [3, H_i, W_i] views.
    interpolation: "bilinear" or "bicubic" (antialiased either way). With ``params.source``, output m
    is computed from ``images_chw[source[m]]`` (M outputs from N images)."""
    dev = images_chw[0].device
    mean_t = torch.tensor(mean, dtype=torch.float32, device=dev)
    std_t = torch.tensor(std, dtype=torch.float32, device=dev)
    # One host transfer of the (small) parameter tensors: the reference branches on them in Python.
    boxes = params.boxes.tolist()
    flips = params.flip.tolist()
    jitter = params.jitter.tolist()
    factors = torch.stack([params.brightness, params.contrast, params.saturation, params.hue], 1).tolist()
    orders = params.order.tolist()
    grays = params.grayscale.tolist()
    solars = params.solarize.tolist()
    sigmas = params.blur_sigma.float().tolist()
    source = range(len(images_chw)) if params.source is None else params.source.tolist()
    out = [
        augment_one(
            img,
            size,
            boxes[i],
            flips[i],
            factors[i] if jitter[i] else None,
            orders[i],
            grays[i],
            mean_t,
            std_t,
            solars[i],
            out_dtype == torch.uint8,
            interpolation,
            sigmas[i],
        )
        for i, img in enumerate(images_chw[s] for s in source)
    ]
    return torch.stack(out).to(out_dtype)
