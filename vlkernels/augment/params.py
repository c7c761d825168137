"""Per-sample augmentation parameters and their sampling on the device (torchvision's rules)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields

import torch

# Index of each colour op in AugmentParams.order (torchvision's ColorJitter numbering).
BRIGHTNESS, CONTRAST, SATURATION, HUE = 0, 1, 2, 3


@dataclass
class AugmentParams:
    """Per-sample parameters of the fused augmentation; every field is a tensor with N rows.

    - ``boxes``: int64 [N, 4], crop boxes (top, left, height, width) in input pixels.
    - ``flip``: bool [N], horizontal flip after the resize.
    - ``jitter``: bool [N], whether the colour jitter is applied at all (RandomApply).
    - ``brightness``, ``contrast``, ``saturation``: float32 [N], multiplicative factors (1 = identity).
    - ``hue``: float32 [N], hue shift in turns, in [-0.5, 0.5] (0 = identity).
    - ``order``: int64 [N, 4], each row a permutation of (0 brightness, 1 contrast, 2 saturation, 3 hue).
    - ``grayscale``: bool [N], grayscale (three equal channels) after the jitter.

    A jitter op whose factor is its identity is skipped, as torchvision skips an op whose range is
    the single identity value.
    """

    boxes: torch.Tensor
    flip: torch.Tensor
    jitter: torch.Tensor
    brightness: torch.Tensor
    contrast: torch.Tensor
    saturation: torch.Tensor
    hue: torch.Tensor
    order: torch.Tensor
    grayscale: torch.Tensor

    def __len__(self) -> int:
        return self.boxes.shape[0]

    @property
    def device(self) -> torch.device:
        return self.boxes.device

    def to(self, device: torch.device | str) -> AugmentParams:
        return AugmentParams(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})

    def factors(self) -> torch.Tensor:
        """float32 [N, 4] (brightness, contrast, saturation, hue), set to the identity where jitter is off."""
        f = torch.stack([self.brightness, self.contrast, self.saturation, self.hue], dim=1).float()
        # Built on the device (a tensor from a Python list would be a blocking host-to-device copy).
        ident = torch.cat([torch.ones(3, device=f.device), torch.zeros(1, device=f.device)])
        return torch.where(self.jitter.bool()[:, None], f, ident)

    @classmethod
    def identity(cls, sizes: torch.Tensor | Sequence[Sequence[int]], device=None) -> AugmentParams:
        """Whole-image crop, no flip, no jitter, no grayscale: the output is resize + normalise only."""
        sizes = torch.as_tensor(sizes, dtype=torch.int64, device=device).reshape(-1, 2)
        n, dev = sizes.shape[0], sizes.device
        zeros = torch.zeros(n, dtype=torch.int64, device=dev)
        return cls(
            boxes=torch.stack([zeros, zeros, sizes[:, 0], sizes[:, 1]], dim=1),
            flip=torch.zeros(n, dtype=torch.bool, device=dev),
            jitter=torch.zeros(n, dtype=torch.bool, device=dev),
            brightness=torch.ones(n, device=dev),
            contrast=torch.ones(n, device=dev),
            saturation=torch.ones(n, device=dev),
            hue=torch.zeros(n, device=dev),
            order=torch.arange(4, device=dev).repeat(n, 1),
            grayscale=torch.zeros(n, dtype=torch.bool, device=dev),
        )

    def validate(self, sizes: torch.Tensor) -> None:
        """Check shapes, dtypes and that every crop box lies inside its image (one host sync)."""
        n = sizes.shape[0]
        for f in fields(self):
            t = getattr(self, f.name)
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"AugmentParams.{f.name} must be a tensor, got {type(t).__name__}")
            if t.shape[0] != n:
                raise ValueError(f"AugmentParams.{f.name} has {t.shape[0]} rows for {n} images")
            if t.device != sizes.device:
                raise ValueError(
                    f"AugmentParams.{f.name} is on {t.device} but the images are on {sizes.device}"
                )
        if tuple(self.boxes.shape) != (n, 4) or tuple(self.order.shape) != (n, 4):
            raise ValueError(
                f"AugmentParams.boxes and .order must be [N, 4], got {tuple(self.boxes.shape)}, "
                f"{tuple(self.order.shape)}"
            )
        top, left, h, w = self.boxes.long().unbind(1)
        inside = (top >= 0) & (left >= 0) & (h >= 1) & (w >= 1)
        inside &= (top + h <= sizes[:, 0]) & (left + w <= sizes[:, 1])
        perm = torch.sort(self.order.long(), dim=1).values == torch.arange(4, device=sizes.device)
        hue_ok = self.hue.abs() <= 0.5
        ok = torch.stack([inside.all(), perm.all(), hue_ok.all()]).cpu()
        if not bool(ok[0]):
            bad = int((~inside).nonzero()[0, 0])
            raise ValueError(
                f"crop box {self.boxes[bad].tolist()} (top, left, height, width) of image {bad} lies "
                f"outside the image of size {sizes[bad].tolist()} (or is empty)"
            )
        if not bool(ok[1]):
            raise ValueError("AugmentParams.order rows must be permutations of (0, 1, 2, 3)")
        if not bool(ok[2]):
            raise ValueError("AugmentParams.hue must lie in [-0.5, 0.5] (turns)")


def image_sizes(images_or_sizes, device=None) -> torch.Tensor:
    """int64 [N, 2] (H, W) of a batch tensor [N, H, W, 3] / [N, 3, H, W], a list of [H, W, 3] tensors,
    or given sizes ([N, 2] tensor or a sequence of (h, w) pairs)."""
    x = images_or_sizes
    if isinstance(x, torch.Tensor) and x.dtype == torch.uint8:
        if x.dim() != 4:
            raise ValueError(f"a batch of images must be 4-d, got shape {tuple(x.shape)}")
        h, w = (x.shape[1], x.shape[2]) if x.shape[-1] == 3 else (x.shape[2], x.shape[3])
        dev = x.device if device is None else torch.device(device)
        return torch.tensor([h, w], dtype=torch.int64).to(dev, non_blocking=True).repeat(x.shape[0], 1)
    if isinstance(x, torch.Tensor):
        if x.dim() != 2 or x.shape[1] != 2 or x.is_floating_point():
            raise ValueError(f"sizes must be an integer [N, 2] tensor, got {x.dtype} {tuple(x.shape)}")
        return x.to(torch.int64 if device is None else torch.device(device)).to(torch.int64)
    x = list(x)
    if not x:
        raise ValueError("no images: the list is empty")
    if isinstance(x[0], torch.Tensor):
        dev = x[0].device if device is None else torch.device(device)
        sizes = [tuple(t.shape[:2]) for t in x]
    else:
        dev = torch.device("cpu") if device is None else torch.device(device)
        sizes = [tuple(int(v) for v in s) for s in x]
    return torch.tensor(sizes, dtype=torch.int64).to(dev, non_blocking=True)


def _check_range(name: str, lo: float, hi: float, low_bound: float = 0.0) -> None:
    if not (low_bound <= lo <= hi):
        raise ValueError(f"{name} must satisfy {low_bound} <= min <= max, got ({lo}, {hi})")


def sample_augment_params(
    images_or_sizes,
    *,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    hflip_p: float = 0.5,
    jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1),
    jitter_p: float = 0.8,
    grayscale_p: float = 0.2,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> AugmentParams:
    """Draw AugmentParams for every image in one call on the device (no host sync).

    Crop boxes follow torchvision's ``RandomResizedCrop.get_params`` per sample: up to 10 tries of
    (area fraction ~ U(scale), log aspect ~ U(log ratio)), w = round(sqrt(area * aspect)),
    h = round(sqrt(area / aspect)), the first try that fits is placed uniformly; else the centre crop
    clamped to the ratio range. Jitter factors follow ``ColorJitter``: brightness, contrast, saturation
    ~ U(max(0, 1 - x), 1 + x), hue ~ U(-h, h), op order a uniform permutation.
    """
    _check_range("scale", *scale)
    _check_range("ratio", *ratio, low_bound=1e-12)
    for name, p in (("hflip_p", hflip_p), ("jitter_p", jitter_p), ("grayscale_p", grayscale_p)):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {p}")
    if len(jitter) != 4 or min(jitter) < 0 or jitter[3] > 0.5:
        raise ValueError(f"jitter must be 4 non-negative values with hue <= 0.5, got {jitter}")
    sizes = image_sizes(images_or_sizes, device)
    dev = sizes.device
    if generator is not None and generator.device.type != dev.type:
        raise ValueError(f"the generator is on {generator.device} but the parameters go to {dev}")
    n = sizes.shape[0]
    g = generator

    def rand(*shape, dtype=torch.float32):
        return torch.rand(*shape, generator=g, device=dev, dtype=dtype)

    height, width = sizes[:, 0].double(), sizes[:, 1].double()
    area = (height * width)[:, None]
    target = area * (scale[0] + (scale[1] - scale[0]) * rand(n, 10, dtype=torch.float64))
    lo, hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(lo + (hi - lo) * rand(n, 10, dtype=torch.float64))
    w = torch.round(torch.sqrt(target * aspect))
    h = torch.round(torch.sqrt(target / aspect))
    fits = (w > 0) & (w <= width[:, None]) & (h > 0) & (h <= height[:, None])
    first = fits.to(torch.int8).argmax(dim=1, keepdim=True)
    found = fits.any(dim=1)
    w_try, h_try = w.gather(1, first)[:, 0], h.gather(1, first)[:, 0]
    u = rand(n, 2, dtype=torch.float64)
    top_try = torch.floor(u[:, 0] * (height - h_try + 1)).clamp_max(height - h_try)
    left_try = torch.floor(u[:, 1] * (width - w_try + 1)).clamp_max(width - w_try)
    # Centre-crop fallback, clamped to the ratio range.
    in_ratio = width / height
    narrow, wide = in_ratio < min(ratio), in_ratio > max(ratio)
    w_fb = torch.where(wide, torch.round(height * max(ratio)), width)
    h_fb = torch.where(narrow, torch.round(width / min(ratio)), height)
    top_fb = torch.floor((height - h_fb) / 2)
    left_fb = torch.floor((width - w_fb) / 2)
    boxes = torch.stack(
        [
            torch.where(found, top_try, top_fb),
            torch.where(found, left_try, left_fb),
            torch.where(found, h_try, h_fb),
            torch.where(found, w_try, w_fb),
        ],
        dim=1,
    ).to(torch.int64)

    def factor(x: float) -> torch.Tensor:
        lo = max(0.0, 1.0 - x)
        return lo + (1.0 + x - lo) * rand(n)

    coins = rand(n, 3)
    return AugmentParams(
        boxes=boxes,
        flip=coins[:, 0] < hflip_p,
        jitter=coins[:, 1] < jitter_p,
        brightness=factor(jitter[0]),
        contrast=factor(jitter[1]),
        saturation=factor(jitter[2]),
        hue=jitter[3] * (2.0 * rand(n) - 1.0),
        order=torch.argsort(rand(n, 4), dim=1),
        grayscale=coins[:, 2] < grayscale_p,
    )
