"""Per-sample augmentation parameters and their sampling on the device (torchvision's rules)."""

from __future__ import annotations

import math
import numbers
import operator
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields

import torch

from vlkernels.augment.packed import PackedImages

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
    - ``solarize``: bool [N], solarize (x >= 128/255 -> 1 - x, torchvision's ``F.solarize`` on a float
      image) after grayscale, before normalisation. Optional: left out (None), it is all False.
    - ``blur_sigma``: float32 [N], Gaussian blur sigma in output pixels (0 = no blur), after grayscale,
      before solarize; kernel size 2 * ceil(3 * sigma) + 1, clipped per axis to 2 * size - 1 (see
      ``vlkernels.augment``). Optional: left out (None), it is all 0.
    - ``source``: int64 [M], optional: output m reads input image ``source[m]`` (0 <= source < number
      of images), so that several views of one image are augmented without copying it; every other
      field then has M rows (one per output) and the crop boxes refer to the source image. Left out
      (None): output i reads image i, M = N. ``sample_augment_params(..., views=[...])`` builds it.

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
    solarize: torch.Tensor | None = None
    blur_sigma: torch.Tensor | None = None
    source: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if isinstance(self.boxes, torch.Tensor) and self.boxes.dim() >= 1:
            n, dev = self.boxes.shape[0], self.boxes.device
            if self.solarize is None:
                self.solarize = torch.zeros(n, dtype=torch.bool, device=dev)
            if self.blur_sigma is None:
                self.blur_sigma = torch.zeros(n, dtype=torch.float32, device=dev)
        if self.source is None:
            # No instance attribute (reads fall back to the class default, None): ``vars(params)`` then
            # holds tensors only, as before this field existed (code that slices every field keeps
            # working; assigning ``params.source = index`` adds it).
            del self.source

    def __len__(self) -> int:
        return self.boxes.shape[0]

    @property
    def device(self) -> torch.device:
        return self.boxes.device

    def to(self, device: torch.device | str) -> AugmentParams:
        return AugmentParams(
            **{f.name: None if (t := getattr(self, f.name)) is None else t.to(device) for f in fields(self)}
        )

    def select(self, index) -> AugmentParams:
        """The rows ``index`` (an int, slice, index tensor or list) of every field, as new AugmentParams
        (e.g. ``params.select(m)`` for the parameters of output m; its ``source`` rows come along)."""
        if isinstance(index, int):
            index = slice(index, index + 1 if index != -1 else None)
        elif not isinstance(index, slice):
            index = torch.as_tensor(index, dtype=torch.int64, device=self.device)
        return AugmentParams(
            **{f.name: None if (t := getattr(self, f.name)) is None else t[index] for f in fields(self)}
        )

    @classmethod
    def cat(cls, parts: Sequence[AugmentParams]) -> AugmentParams:
        """Rows of several AugmentParams one after the other (``source`` kept only if every part has one)."""
        parts = list(parts)
        if not parts:
            raise ValueError("AugmentParams.cat: nothing to concatenate")
        out = {}
        for f in fields(cls):
            ts = [getattr(p, f.name) for p in parts]
            if any(t is None for t in ts):
                if f.name != "source":
                    raise ValueError(f"AugmentParams.cat: field {f.name} is missing in some part")
                out[f.name] = None
            else:
                out[f.name] = torch.cat(ts)
        return cls(**out)

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
            solarize=torch.zeros(n, dtype=torch.bool, device=dev),
            blur_sigma=torch.zeros(n, dtype=torch.float32, device=dev),
        )

    def validate(self, sizes: torch.Tensor, *, with_contrast: bool = False) -> bool | tuple[bool, bool]:
        """Check types, shapes, devices and values (one host sync): every crop box inside its image
        (compared without overflow: ``0 <= top <= H - height``, ``height >= 1``, ...), every order row a
        permutation of 0..3, brightness / contrast / saturation finite and >= 0, hue in [-0.5, 0.5],
        blur_sigma finite and >= 0, ``source`` (when given) an integer [M] index with 0 <= source < N.
        Returns whether any sample is blurred (blur_sigma > 0), learnt in the same sync; with
        ``with_contrast=True`` the pair (any blurred, any with an active contrast).
        sizes: int64 [N, 2] of the input images."""
        n_img = sizes.shape[0]
        src = self.source
        if src is not None:
            if not isinstance(src, torch.Tensor):
                raise TypeError(f"AugmentParams.source must be a tensor or None, got {type(src).__name__}")
            if src.dtype not in _INT_DTYPES:
                raise TypeError(
                    f"AugmentParams.source must have one of the dtypes {_INT_DTYPES}, got {src.dtype}"
                )
            if src.dim() != 1 or src.shape[0] == 0:
                raise ValueError(
                    f"AugmentParams.source must have shape [M] with M >= 1 (the image of each output), got "
                    f"{tuple(src.shape)}"
                )
            if src.device != sizes.device:
                raise ValueError(
                    f"AugmentParams.source is on {src.device} but the images are on {sizes.device}"
                )
            src = src.long()
            src_ok = (src >= 0) & (src < n_img)
            # The boxes are compared with the sizes of the source images (indices clamped for the
            # gather; a bad index is reported first, from the same sync).
            sizes = sizes[src.clamp(0, n_img - 1)]
        else:
            src_ok = torch.ones(1, dtype=torch.bool, device=sizes.device)
        n = sizes.shape[0]
        what = "images" if self.source is None else "outputs (source has that many rows)"
        for f in fields(self):
            name, t = f.name, getattr(self, f.name)
            if name == "source":
                continue
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"AugmentParams.{name} must be a tensor, got {type(t).__name__}")
            if name in _INT_FIELDS:
                kinds, want = _INT_DTYPES, f"[{n}, 4]"
            elif name in _FLAG_FIELDS:
                kinds, want = _INT_DTYPES + (torch.bool,), f"[{n}]"
            else:
                kinds, want = _FLOAT_DTYPES, f"[{n}]"
            if t.dtype not in kinds:
                raise TypeError(f"AugmentParams.{name} must have one of the dtypes {kinds}, got {t.dtype}")
            if t.dim() >= 1 and t.shape[0] != n:
                raise ValueError(f"AugmentParams.{name} has {t.shape[0]} rows for {n} {what}")
            shape = (n, 4) if name in _INT_FIELDS else (n,)
            if tuple(t.shape) != shape:
                raise ValueError(f"AugmentParams.{name} must have shape {want}, got {tuple(t.shape)}")
            if t.device != sizes.device:
                raise ValueError(
                    f"AugmentParams.{name} is on {t.device} but the images are on {sizes.device}"
                )
        top, left, h, w = self.boxes.long().unbind(1)
        height, width = sizes[:, 0], sizes[:, 1]
        # No sums: top + h could wrap around int64 and pass.
        inside = (h >= 1) & (w >= 1) & (h <= height) & (w <= width) & (top >= 0) & (left >= 0)
        inside &= (top <= height - h.clamp_max(height)) & (left <= width - w.clamp_max(width))
        perm = torch.sort(self.order.long(), dim=1).values == torch.arange(4, device=sizes.device)
        # In float32, as the op sees them (a float64 1e39 is inf there).
        bcs = torch.stack([self.brightness, self.contrast, self.saturation], 1).float()
        bcs_ok = torch.isfinite(bcs) & (bcs >= 0)
        hue_ok = self.hue.float().abs() <= 0.5  # NaN fails
        sigma = self.blur_sigma.float()
        sigma_ok = torch.isfinite(sigma) & (sigma >= 0)
        ok = torch.stack(
            [
                inside.all(),
                perm.all(1).all(),
                bcs_ok.all(),
                hue_ok.all(),
                sigma_ok.all(),
                (sigma > 0).any(),
                src_ok.all(),
                # An active contrast as the op sees it: jitter on and a factor other than 1.
                (self.jitter.bool() & (self.contrast.float() != 1)).any(),
            ]
        ).cpu()
        if not bool(ok[6]):
            bad = int((~src_ok).nonzero()[0, 0])
            raise ValueError(
                f"AugmentParams.source[{bad}] is {int(src[bad])}: not the index of one of the {n_img} "
                f"images (must be in [0, {n_img}))"
            )
        if not bool(ok[0]):
            bad = int((~inside).nonzero()[0, 0])
            who = f"image {bad}" if src is None else f"output {bad} (image {int(src[bad])})"
            raise ValueError(
                f"AugmentParams.boxes: crop box {self.boxes[bad].tolist()} (top, left, height, width) of "
                f"{who} lies outside the image of size {sizes[bad].tolist()} (or is empty)"
            )
        if not bool(ok[1]):
            bad = int((~perm.all(1)).nonzero()[0, 0])
            raise ValueError(
                f"AugmentParams.order rows must be permutations of (0, 1, 2, 3), row {bad} is "
                f"{self.order[bad].tolist()}"
            )
        if not bool(ok[2]):
            bad = int((~bcs_ok.all(1)).nonzero()[0, 0])
            raise ValueError(
                "AugmentParams.brightness, .contrast and .saturation must be finite and >= 0, image "
                f"{bad} has {bcs[bad].tolist()}"
            )
        if not bool(ok[3]):
            bad = int((~hue_ok).nonzero()[0, 0])
            raise ValueError(
                f"AugmentParams.hue must lie in [-0.5, 0.5] (turns), image {bad} has {self.hue[bad].item()}"
            )
        if not bool(ok[4]):
            bad = int((~sigma_ok).nonzero()[0, 0])
            raise ValueError(
                f"AugmentParams.blur_sigma must be finite and >= 0 (0: no blur), image {bad} has "
                f"{sigma[bad].item()}"
            )
        return (bool(ok[5]), bool(ok[7])) if with_contrast else bool(ok[5])


_INT_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)
_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_INT_FIELDS = ("boxes", "order")
_FLAG_FIELDS = ("flip", "jitter", "grayscale", "solarize")


def check_int(name: str, v) -> int:
    """An integer argument (Python int, numpy / 0-d torch integer); bool, str and float are refused."""
    if isinstance(v, (bool, str, bytes)) or (isinstance(v, torch.Tensor) and v.dtype == torch.bool):
        raise TypeError(f"{name} must be an integer, got {type(v).__name__} {v!r}")
    try:
        return operator.index(v)
    except TypeError:
        raise TypeError(f"{name} must be an integer, got {type(v).__name__} {v!r}") from None


def check_real(name: str, v, lo: float = -math.inf, hi: float = math.inf) -> float:
    """A finite real argument in [lo, hi]; bool, str and NaN / inf are refused."""
    if isinstance(v, (bool, str, bytes)) or not isinstance(v, (numbers.Real, torch.Tensor)):
        raise TypeError(f"{name} must be a real number, got {type(v).__name__} {v!r}")
    if isinstance(v, torch.Tensor) and (v.numel() != 1 or v.dtype == torch.bool or v.is_complex()):
        raise TypeError(f"{name} must be a real number, got a {v.dtype} tensor of shape {tuple(v.shape)}")
    x = float(v)
    if not math.isfinite(x) or not lo <= x <= hi:
        raise ValueError(f"{name} must be finite and in [{lo}, {hi}], got {x}")
    return x


def check_reals(name: str, v, count: int) -> list[float]:
    """A sequence (or 1-d tensor) of `count` finite reals."""
    if isinstance(v, (str, bytes)) or not isinstance(v, (Sequence, torch.Tensor)):
        raise TypeError(f"{name} must be a sequence of {count} numbers, got {type(v).__name__} {v!r}")
    v = v.reshape(-1).tolist() if isinstance(v, torch.Tensor) else list(v)
    if len(v) != count:
        raise ValueError(f"{name} must have {count} values, got {len(v)}: {v!r}")
    return [check_real(f"{name}[{i}]", x) for i, x in enumerate(v)]


def image_sizes(images_or_sizes, device=None) -> torch.Tensor:
    """int64 [N, 2] (H, W) of a batch tensor [N, H, W, 3] / [N, 3, H, W], a list of [H, W, 3] tensors,
    a PackedImages, or given sizes ([N, 2] tensor or a sequence of (h, w) pairs)."""
    x = images_or_sizes
    if isinstance(x, PackedImages):
        return x.sizes if device is None else x.sizes.to(device, non_blocking=True)
    if isinstance(x, torch.Tensor) and x.dtype == torch.uint8:
        if x.dim() != 4:
            raise ValueError(f"a batch of images must be 4-d, got shape {tuple(x.shape)}")
        h, w = (x.shape[1], x.shape[2]) if x.shape[-1] == 3 else (x.shape[2], x.shape[3])
        dev = x.device if device is None else torch.device(device)
        return torch.tensor([h, w], dtype=torch.int64).to(dev, non_blocking=True).repeat(x.shape[0], 1)
    if isinstance(x, torch.Tensor):
        if x.dim() != 2 or x.shape[1] != 2 or x.dtype not in _INT_DTYPES:
            raise ValueError(f"sizes must be an integer [N, 2] tensor, got {x.dtype} {tuple(x.shape)}")
        if x.shape[0] == 0:
            raise ValueError("no images: the sizes tensor is empty")
        # Checked where that needs no host sync (a CPU tensor); sizes on a GPU are trusted.
        if x.device.type == "cpu" and not bool((x >= 1).all()):
            raise ValueError(f"sizes must all be >= 1, got {x[(x < 1).any(1)][0].tolist()}")
        return x.to(torch.int64 if device is None else torch.device(device)).to(torch.int64)
    if isinstance(x, (str, bytes)) or not isinstance(x, Sequence):
        raise TypeError(
            f"expected images or sizes (a uint8 batch, a list of images, an [N, 2] tensor or a list of "
            f"(h, w)), got {type(x).__name__}"
        )
    x = list(x)
    if not x:
        raise ValueError("no images: the list is empty")
    if isinstance(x[0], torch.Tensor):
        dev = x[0].device if device is None else torch.device(device)
        for i, t in enumerate(x):
            if not isinstance(t, torch.Tensor) or t.dim() != 3:
                raise ValueError(f"images[{i}] must be an [H, W, 3] tensor, got {type(t).__name__}")
        sizes = [tuple(t.shape[:2]) for t in x]
    else:
        dev = torch.device("cpu") if device is None else torch.device(device)
        sizes = []
        for i, s in enumerate(x):
            if isinstance(s, (str, bytes)) or not isinstance(s, Sequence) or len(s) != 2:
                raise ValueError(f"sizes[{i}] must be an (h, w) pair, got {s!r}")
            sizes.append(tuple(check_int(f"sizes[{i}]", v) for v in s))
    bad = [s for s in sizes if min(s) < 1]
    if bad:
        raise ValueError(f"image sizes must be >= 1, got {bad[0]}")
    return torch.tensor(sizes, dtype=torch.int64).to(dev, non_blocking=True)


VIEW_KEYS = (
    "scale",
    "ratio",
    "hflip_p",
    "jitter",
    "jitter_p",
    "grayscale_p",
    "solarize_p",
    "blur_p",
    "blur_sigma",
)


def check_views(views) -> list[dict]:
    """The ``views=`` argument: a non-empty sequence of dicts of sampling keywords (VIEW_KEYS)."""
    if isinstance(views, (str, bytes, Mapping)) or not isinstance(views, Sequence):
        raise TypeError(f"views must be a list of dicts of sampling settings, got {type(views).__name__}")
    if len(views) == 0:
        raise ValueError("views must list at least one view group")
    out = []
    for k, v in enumerate(views):
        if not isinstance(v, Mapping):
            raise TypeError(f"views[{k}] must be a dict of sampling settings, got {type(v).__name__}")
        unknown = sorted(set(v) - set(VIEW_KEYS))
        if unknown:
            raise ValueError(f"views[{k}] has unknown keys {unknown}; allowed: {list(VIEW_KEYS)}")
        out.append(dict(v))
    return out


def check_generator(generator) -> None:
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")


def _check_range(name: str, v, low_bound: float = 0.0) -> tuple[float, float]:
    lo, hi = check_reals(name, v, 2)
    if not (low_bound <= lo <= hi):
        raise ValueError(f"{name} must satisfy {low_bound} <= min <= max, got ({lo}, {hi})")
    return lo, hi


def sample_augment_params(
    images_or_sizes,
    *,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    hflip_p: float = 0.5,
    jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1),
    jitter_p: float = 0.8,
    grayscale_p: float = 0.2,
    solarize_p: float = 0.0,
    blur_p: float = 0.0,
    blur_sigma: tuple[float, float] = (0.1, 2.0),
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    views: Sequence[Mapping] | None = None,
) -> AugmentParams:
    """Draw AugmentParams for every image in one call on the device (no host sync).

    ``views``: several augmented views of every image (multi-crop / SimCLR / DINO recipes), each view
    group with its own sampling settings: a list of K dicts whose keys are this function's sampling
    keywords (``scale``, ``ratio``, ``hflip_p``, ``jitter``, ``jitter_p``, ``grayscale_p``,
    ``solarize_p``, ``blur_p``, ``blur_sigma``); a key left out takes the value given to this call. The
    result has M = N * K rows, **view-major**: output ``k * N + i`` is view k of image i (so
    ``fused_augment(...).view(K, N, 3, h, w)[k]`` is view group k), with ``source`` = (0..N-1) repeated
    K times: the images are read in place, never copied per view. Groups are drawn one after the other
    with the same generator (group k's parameters are those of a plain call with group k's settings
    made right after group k - 1's draws).

    Crop boxes follow torchvision's ``RandomResizedCrop.get_params`` per sample: up to 10 tries of
    (area fraction ~ U(scale), log aspect ~ U(log ratio)), w = round(sqrt(area * aspect)),
    h = round(sqrt(area / aspect)), the first try that fits is placed uniformly; else the centre crop
    clamped to the ratio range. Jitter factors follow ``ColorJitter``: brightness, contrast, saturation
    ~ U(max(0, 1 - x), 1 + x), hue ~ U(-h, h), op order a uniform permutation; solarize with
    probability solarize_p (RandomSolarize(threshold=128/255, p)); Gaussian blur with probability
    blur_p, sigma ~ U(blur_sigma) (torchvision's GaussianBlur sigma rule inside RandomApply(p=blur_p)),
    blur_sigma 0 where not blurred. The solarize and then the blur draws come after all others, so
    the other parameters of a seed are those drawn without them.
    """
    if views is not None:
        base = dict(
            scale=scale,
            ratio=ratio,
            hflip_p=hflip_p,
            jitter=jitter,
            jitter_p=jitter_p,
            grayscale_p=grayscale_p,
            solarize_p=solarize_p,
            blur_p=blur_p,
            blur_sigma=blur_sigma,
        )
        groups = check_views(views)
        sizes = image_sizes(images_or_sizes, device)
        parts = []
        for k, group in enumerate(groups):
            try:
                parts.append(sample_augment_params(sizes, generator=generator, **{**base, **group}))
            except (TypeError, ValueError) as e:
                raise type(e)(f"views[{k}]: {e}") from None
        out = AugmentParams.cat(parts)
        n = sizes.shape[0]
        out.source = torch.arange(n, dtype=torch.int64, device=sizes.device).repeat(len(groups))
        return out
    scale = _check_range("scale", scale)
    ratio = _check_range("ratio", ratio, low_bound=1e-12)
    hflip_p = check_real("hflip_p", hflip_p, 0.0, 1.0)
    jitter_p = check_real("jitter_p", jitter_p, 0.0, 1.0)
    grayscale_p = check_real("grayscale_p", grayscale_p, 0.0, 1.0)
    solarize_p = check_real("solarize_p", solarize_p, 0.0, 1.0)
    blur_p = check_real("blur_p", blur_p, 0.0, 1.0)
    blur_sigma = _check_range("blur_sigma", blur_sigma)
    # (Drawn in float32: the bound must stay finite there.)
    if blur_sigma[1] > 1e38:
        raise ValueError(f"blur_sigma must be at most 1e38, got {blur_sigma}")
    jitter = check_reals("jitter", jitter, 4)
    # (The factors are drawn in float32: 1 + x must stay finite there.)
    if min(jitter) < 0 or jitter[3] > 0.5 or max(jitter) > 1e38:
        raise ValueError(f"jitter must be 4 non-negative values with hue <= 0.5, got {jitter}")
    check_generator(generator)
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
    brightness, contrast, saturation = factor(jitter[0]), factor(jitter[1]), factor(jitter[2])
    hue = jitter[3] * (2.0 * rand(n) - 1.0)
    order = torch.argsort(rand(n, 4), dim=1)
    # Drawn last, so that the other parameters are those of earlier versions for the same seed.
    solarize = rand(n) < solarize_p
    # Then the blur coin and sigma (same reason).
    blurred = rand(n) < blur_p
    sigma = blur_sigma[0] + (blur_sigma[1] - blur_sigma[0]) * rand(n)
    sigma = torch.where(blurred, sigma, torch.zeros_like(sigma))
    return AugmentParams(
        boxes=boxes,
        flip=coins[:, 0] < hflip_p,
        jitter=coins[:, 1] < jitter_p,
        brightness=brightness,
        contrast=contrast,
        saturation=saturation,
        hue=hue,
        order=order,
        grayscale=coins[:, 2] < grayscale_p,
        solarize=solarize,
        blur_sigma=sigma,
    )
