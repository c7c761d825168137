"""fused_augment: input checks, layout of the ragged batch, implementation selection."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from vlkernels import _ext
from vlkernels._checks import check_dense
from vlkernels.augment import _op
from vlkernels.augment.packed import PackedImages
from vlkernels.augment.params import (
    AugmentParams,
    check_generator,
    check_int,
    check_reals,
    sample_augment_params,
)
from vlkernels.augment.reference import reference_augment

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
OUT_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.uint8)
IMPLS = ("auto", "cuda", "cpu", "torch")
# The op's interpolation argument is the index in this tuple.
INTERPOLATIONS = ("bilinear", "bicubic")
DEVICES = ("cpu", "cuda")


@dataclass
class Batch:
    """The images as the op sees them (flat buffer + offsets, or, for a list of separate CPU tensors,
    the tensors themselves: ``images``) and as the reference does (CHW views, made on first use: only
    the reference needs them)."""

    data: torch.Tensor
    offsets: torch.Tensor
    sizes: torch.Tensor
    hwc: bool
    make_views: Callable[[], list[torch.Tensor]]
    images: list[torch.Tensor] | None = None

    @property
    def device(self) -> torch.device:
        return self.data.device

    @functools.cached_property
    def views_chw(self) -> list[torch.Tensor]:
        return self.make_views()


def _shared_buffer(images: list[torch.Tensor]) -> tuple[torch.Tensor, list[int]] | None:
    """When every image is a contiguous view into one storage (PackedImages.images(), torch.split or
    unbind of one tensor, images decoded into one buffer): that storage as a flat uint8 tensor and each
    image's offset in it, so that the list is read in place. None otherwise."""
    first = images[0]
    storage = first.untyped_storage()
    ptr = storage.data_ptr()
    if ptr == 0:
        return None
    for t in images:
        if not t.is_contiguous() or t.untyped_storage().data_ptr() != ptr:
            return None
    data = torch.empty(0, dtype=torch.uint8, device=first.device).set_(storage, 0, (storage.nbytes(),), (1,))
    return data, [t.storage_offset() for t in images]


def _check_image(t, what: str) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{what} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype != torch.uint8:
        raise TypeError(f"{what} must be uint8 (decoded images), got {t.dtype}")
    check_dense(t, what)


def as_batch(images) -> Batch:
    """Accept [N, H, W, 3], [N, 3, H, W], PackedImages or a list of [H_i, W_i, 3] uint8 tensors.

    No copy of the pixels for a contiguous NHWC / NCHW batch, a PackedImages, a list of images that all
    lie in one buffer, or a list of contiguous images on one device (the op reads each tensor in place:
    on CUDA through a table of their addresses; a non-contiguous one is copied alone)."""
    if isinstance(images, PackedImages):
        images.check()
        p = images
        return Batch(p.data, p.offsets, p.sizes, True, lambda: [t.permute(2, 0, 1) for t in p.images()])
    if isinstance(images, torch.Tensor):
        _check_image(images, "images")
        if images.dim() != 4:
            raise ValueError(f"images must be [N, H, W, 3] or [N, 3, H, W], got shape {tuple(images.shape)}")
        n = images.shape[0]
        if n == 0:
            raise ValueError("no images: the batch is empty")
        if images.shape[-1] == 3:
            nhwc = images
        elif images.shape[1] == 3:
            nhwc = images.permute(0, 2, 3, 1)
        else:
            raise ValueError(f"images must have 3 channels (RGB), got shape {tuple(images.shape)}")
        h, w = nhwc.shape[1], nhwc.shape[2]
        if h == 0 or w == 0:
            raise ValueError(f"images must be non-empty, got shape {tuple(images.shape)}")
        # Keep the memory layout the tensor already has: NHWC-contiguous or NCHW-contiguous, no copy.
        hwc = nhwc.is_contiguous() or not nhwc.permute(0, 3, 1, 2).is_contiguous()
        flat_src = nhwc.contiguous() if hwc else nhwc.permute(0, 3, 1, 2)
        dev = images.device
        data = flat_src.reshape(-1)
        offsets = torch.arange(n, dtype=torch.int64, device=dev) * (h * w * 3)
        sizes = torch.tensor([h, w], dtype=torch.int64).to(dev, non_blocking=True).repeat(n, 1)
        return Batch(data, offsets, sizes, hwc, lambda: list(nhwc.permute(0, 3, 1, 2).unbind(0)))
    if not isinstance(images, Sequence):
        raise TypeError(f"images must be a tensor or a list of tensors, got {type(images).__name__}")
    images = list(images)
    if not images:
        raise ValueError("no images: the list is empty")
    dev = None
    shapes = []
    for i, t in enumerate(images):
        _check_image(t, f"images[{i}]")
        if t.dim() != 3 or t.shape[-1] != 3:
            raise ValueError(f"images[{i}] must be [H, W, 3] (RGB), got shape {tuple(t.shape)}")
        if t.shape[0] == 0 or t.shape[1] == 0:
            raise ValueError(f"images[{i}] is empty: shape {tuple(t.shape)}")
        if dev is None:
            dev = t.device
        elif t.device != dev:
            raise ValueError(
                f"all images must be on one device: images[0] is on {dev}, images[{i}] on {t.device}"
            )
        shapes.append((t.shape[0], t.shape[1]))
    views = lambda: [t.permute(2, 0, 1) for t in images]  # noqa: E731
    shared = _shared_buffer(images)
    if shared is not None:
        data, offs = shared
        offsets = torch.tensor(offs, dtype=torch.int64).to(dev, non_blocking=True)
        sizes = torch.tensor(shapes, dtype=torch.int64).to(dev, non_blocking=True)
        return Batch(data, offsets, sizes, True, views)
    # Read in place by the op (its images argument): image i from flat[i], at offset 0; a non-contiguous
    # image is copied alone.
    flat = [t.reshape(-1) for t in images]
    sizes = torch.tensor(shapes, dtype=torch.int64).to(dev, non_blocking=True)
    data = torch.empty(0, dtype=torch.uint8, device=dev)
    offsets = torch.zeros(len(images), dtype=torch.int64, device=dev)
    return Batch(data, offsets, sizes, True, views, images=flat)


def _out_size(size) -> tuple[int, int]:
    if isinstance(size, (str, bytes)) or not isinstance(size, (Sequence, torch.Size)):
        size = (check_int("size", size),) * 2
    else:
        if len(size) != 2:
            raise ValueError(f"size must be an int or an (h, w) pair, got {size!r}")
        size = (check_int("size[0]", size[0]), check_int("size[1]", size[1]))
    if min(size) < 1:
        raise ValueError(f"size must be an int or (h, w) with both >= 1, got {size}")
    if size[0] * size[1] >= 2**31:
        raise ValueError(f"size: output images of at most 2^31 - 1 pixels, got {size}")
    return size


def _mean_std(mean, std) -> tuple[list[float], list[float]]:
    mean, std = check_reals("mean", mean, 3), check_reals("std", std, 3)
    # Checked in float32, the precision the op normalises in.
    if any(not math.isfinite(float(torch.tensor(v, dtype=torch.float32))) for v in mean + std):
        raise ValueError(f"mean and std must be finite in float32, got {mean}, {std}")
    if any(float(torch.tensor(s, dtype=torch.float32)) == 0.0 for s in std):
        raise ValueError(f"std must be non-zero (in float32), got {std}")
    return mean, std


def _pick_impl(impl: str, device: torch.device) -> str:
    if not isinstance(impl, str):
        raise TypeError(f"impl must be a str, one of {IMPLS}, got {type(impl).__name__}")
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    if device.type not in DEVICES:
        raise ValueError(
            f"fused_augment runs on images on {' or '.join(DEVICES)}, the images are on {device} "
            f"(device type {device.type!r}): move them with .to('cpu') or .to('cuda')"
        )
    if impl == "auto":
        if _op.has_kernel(device.type):
            return device.type
        return "torch"
    if impl == "torch":
        return impl
    if device.type != impl:
        raise ValueError(f"impl={impl!r} needs the images on {impl}, they are on {device}")
    _ext.require(f"fused_augment(impl={impl!r})")
    if not _op.has_kernel(impl):
        raise RuntimeError(
            f"fused_augment(impl={impl!r}): vlkernels._C was built without the {impl.upper()} kernel "
            f"(build_info={_ext.build_info()!r}); rebuild on a machine with CUDA torch and nvcc"
        )
    return impl


def _check_out(out, shape, dtype, device, channels_last) -> None:
    """``out`` must be exactly the tensor fused_augment would return (the op checks the same)."""
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"out must be a torch.Tensor, got {type(out).__name__}")
    if out.dtype != dtype:
        raise ValueError(f"out must be {dtype} (out_dtype), got {out.dtype}")
    if out.device != device:
        raise ValueError(f"out must be on {device} (where the images are), got {out.device}")
    if tuple(out.shape) != shape:
        raise ValueError(f"out must have shape {list(shape)}, got {list(out.shape)}")
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    if not out.is_contiguous(memory_format=fmt):
        layout = "in channels-last (NHWC) memory (channels_last=True)" if channels_last else "contiguous"
        raise ValueError(f"out must be {layout}")
    if out.requires_grad:
        raise ValueError("out must not require grad (the augmentation has no gradient)")


def fused_augment(
    images,
    size,
    *,
    params: AugmentParams | None = None,
    generator: torch.Generator | None = None,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    hflip_p: float = 0.5,
    jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1),
    jitter_p: float = 0.8,
    grayscale_p: float = 0.2,
    solarize_p: float = 0.0,
    blur_p: float = 0.0,
    blur_sigma: tuple[float, float] = (0.1, 2.0),
    interpolation: str = "bilinear",
    mean: Sequence[float] = CLIP_MEAN,
    std: Sequence[float] = CLIP_STD,
    out_dtype: torch.dtype = torch.float32,
    channels_last: bool = False,
    impl: str = "auto",
    views: Sequence[dict] | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """CLIP's training augmentation chain in one kernel call.

    images: uint8 [N, H, W, 3], [N, 3, H, W], a list of [H_i, W_i, 3], or PackedImages (read in place:
    build it once, e.g. in a DataLoader collate function; see ``vlkernels.augment.packed``). size: int
    or (h, w).
    Returns out_dtype [N, 3, h, w] (in NHWC memory with ``channels_last=True``). ``out_dtype=torch.uint8``:
    no normalisation (mean / std unused), the [0, 1] values times 255 rounded (half to even) and clamped,
    e.g. for a pinned-memory host-to-device transfer of a quarter of the bytes.
    Per sample: RandomResizedCrop (``interpolation`` "bilinear" or "bicubic", antialias; bicubic
    clamped to [0, 1]) -> horizontal flip -> ColorJitter (random op order) applied with probability
    jitter_p -> RandomGrayscale -> GaussianBlur(sigma ~ U(blur_sigma), kernel 2 * ceil(3 sigma) + 1)
    applied with probability blur_p -> RandomSolarize(128/255, solarize_p) -> Normalize(mean, std), all
    computed in fp32 (torchvision's semantics; see reference.py and the package docstring).
    ``params`` (AugmentParams) fixes the randomness; otherwise they are drawn on the images' device
    with ``generator`` and the sampling knobs, without a host sync.
    Several views per image: ``views=[dict(scale=(0.5, 1.0)), dict(scale=(0.08, 1.0), blur_p=0.5)]``
    (each dict overrides the sampling knobs for its view group; see ``sample_augment_params``), or
    ``params`` with a ``source`` index; returns [M, 3, h, w], view-major for ``views`` (output
    ``k * N + i`` is view k of image i), each image read in place (not copied per view).
    impl: "auto" (compiled op for the device, else "torch"), "cuda", "cpu" (C++), "torch" (reference).
    out: write the result into this tensor and return it (out_dtype, on the images' device, shape
    [M, 3, h, w], contiguous, or NHWC memory with ``channels_last``): one buffer reused batch after
    batch spares the page faults of a fresh output on every call (on the CPU those, not the arithmetic,
    kept two threads from scaling).
    """
    batch = as_batch(images)
    out_h, out_w = _out_size(size)
    if not isinstance(out_dtype, torch.dtype):
        raise TypeError(
            f"out_dtype must be a torch.dtype, one of {OUT_DTYPES}, got {type(out_dtype).__name__}"
        )
    if out_dtype not in OUT_DTYPES:
        raise ValueError(f"out_dtype must be one of {OUT_DTYPES}, got {out_dtype}")
    mean, std = _mean_std(mean, std)
    if not isinstance(channels_last, bool):
        raise TypeError(f"channels_last must be a bool, got {type(channels_last).__name__}")
    if not isinstance(interpolation, str):
        raise TypeError(
            f"interpolation must be a str, one of {INTERPOLATIONS}, got {type(interpolation).__name__}"
        )
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {INTERPOLATIONS}, got {interpolation!r}")
    which = _pick_impl(impl, batch.device)
    check_generator(generator)
    if params is None:
        params = sample_augment_params(
            batch.sizes,
            scale=scale,
            ratio=ratio,
            hflip_p=hflip_p,
            jitter=jitter,
            jitter_p=jitter_p,
            grayscale_p=grayscale_p,
            solarize_p=solarize_p,
            blur_p=blur_p,
            blur_sigma=blur_sigma,
            generator=generator,
            views=views,
        )
        groups = views if views is not None else [{}]
        any_blur = any(float(v.get("blur_p", blur_p)) > 0.0 for v in groups)
        any_contrast = any(
            float(v.get("jitter_p", jitter_p)) > 0.0 and float(v.get("jitter", jitter)[1]) > 0.0
            for v in groups
        )
    else:
        if views is not None:
            raise ValueError("fused_augment: give views= (sampled here) or params=, not both")
        if not isinstance(params, AugmentParams):
            raise TypeError(f"params must be AugmentParams, got {type(params).__name__}")
        any_blur, any_contrast = params.validate(batch.sizes, with_contrast=True)
    # The parameters are now known valid (sampled, or validated above with one sync): the CUDA op need
    # not copy them to the host again. The CPU op checks them anyway (host memory, no cost).
    if out is not None:
        _check_out(out, (params.boxes.shape[0], 3, out_h, out_w), out_dtype, batch.device, channels_last)
    if which == "torch":
        res = reference_augment(batch.views_chw, (out_h, out_w), params, mean, std, out_dtype, interpolation)
        if out is not None:
            return out.copy_(res)
        return res.contiguous(memory_format=torch.channels_last) if channels_last else res
    return _op.run(
        batch.data,
        batch.offsets,
        batch.sizes,
        batch.hwc,
        params.boxes.long(),
        params.flip.bool(),
        params.factors(),
        params.order.long(),
        params.grayscale.bool(),
        mean,
        std,
        out_h,
        out_w,
        out_dtype,
        check=which != "cuda",
        solarize=params.solarize.bool(),
        channels_last=channels_last,
        interpolation=INTERPOLATIONS.index(interpolation),
        # Only when some sample may be blurred: the CUDA op then allocates its blur workspace.
        blur_sigma=params.blur_sigma.float() if any_blur else None,
        source=None if params.source is None else params.source.long(),
        images=batch.images,
        out=out,
        # The CUDA op's cluster launch (contrast and blur in one resampling pass) only when some output
        # may need it.
        clusters=any_contrast or any_blur,
    )
