"""Binding of the compiled op ``torch.ops.vlkernels.fused_augment`` (C++ CPU, CUDA) and its fake.

Op layout (one call for the whole batch, ragged or not):
  data     uint8 [total]   the images back to back, each contiguous, HWC (hwc=True) or CHW
  offsets  int64 [N]       where image i starts in data
  sizes    int64 [N, 2]    (H, W) of image i
  boxes    int64 [N, 4]    crop (top, left, height, width)
  flip     bool  [N]
  factors  float32 [N, 4]  (brightness, contrast, saturation, hue); identity values skip the op
  order    int64 [N, 4]    colour-op order, a permutation of 0..3 per sample
  gray     bool  [N]
  check    bool            check the values (sizes, offsets, boxes, order, factors) on the host; the
                           CPU op always does (host memory, free); the CUDA op then makes one packed
                           device-to-host copy (one sync per batch). fused_augment passes False on CUDA
                           (sampled parameters are valid by construction, explicit ones already
                           validated); the CUDA kernel still guards every image with the same predicate
                           (an invalid image comes out NaN, never read out of bounds).
  solarize bool  [N]       optional (None: all False); after grayscale, before normalisation
  channels_last bool       output in NHWC memory (shape still [N, 3, out_h, out_w])
  interpolation int        0 bilinear, 1 bicubic (a = -0.5, clamped to [0, 1]); both antialiased
  blur_sigma float32 [N]   optional (None: no blur); Gaussian blur sigma per image (0: none), after
                           grayscale, before solarize; the CUDA op allocates a workspace of two float
                           images per image when it is given and its cluster launch does not take the
                           blurred images
  source   int64 [M]       optional (None: M = N, output i reads image i): output m reads image
                           source[m], 0 <= source[m] < N (checked with the other values, and by the
                           CUDA kernel's guard); boxes, flip, factors, order, gray, solarize and
                           blur_sigma then have M rows, one per output (several views of one image
                           without copying its bytes)
  images   list of N contiguous uint8 tensors, optional (None: the images are in data): image i is
                           read in place from images[i], starting at byte offsets[i] (data is then
                           unused: an empty uint8 tensor on the images' device), so that a list of
                           separately allocated images needs no copy into one buffer (CUDA: through a
                           device table of their addresses)
  clusters bool            CUDA, sm_90+: whether some output may have contrast or blur, which a second
                           launch with thread-block clusters then does in one resampling pass; False
                           (no output has either) skips that launch. The CPU op ignores it.
returns out_dtype [M, 3, out_h, out_w]; uint8: the [0, 1] values times 255, rounded half to even and
clamped, not normalised (mean / std unused). The overload fused_augment.out(..., *, out) -> () writes into
out, which must be exactly that tensor: dtype, device, shape, contiguous or, with channels_last, NHWC memory.
"""

from __future__ import annotations

import functools

import torch

from vlkernels import _ext

OP_NAME = "vlkernels::fused_augment"


@functools.cache
def _register() -> None:
    _ext.require("fused_augment(impl='cpu'|'cuda')")

    @torch.library.register_fake(OP_NAME)
    def _fake(
        data,
        offsets,
        sizes,
        hwc,
        boxes,
        flip,
        factors,
        order,
        gray,
        mean,
        std,
        out_h,
        out_w,
        dt,
        check=True,
        solarize=None,
        channels_last=False,
        interpolation=0,
        blur_sigma=None,
        source=None,
        images=None,
        clusters=True,
    ):
        torch._check(data.dtype == torch.uint8, lambda: "data must be uint8")
        m = offsets.shape[0] if source is None else source.shape[0]
        out = data.new_empty((m, 3, out_h, out_w), dtype=dt)
        return out.contiguous(memory_format=torch.channels_last) if channels_last else out

    @torch.library.register_fake(OP_NAME + ".out")
    def _fake_out(*args, out, **kwargs):
        return None


def op():
    """The registered op (loads the extension and the fake implementation on first use)."""
    _register()
    return torch.ops.vlkernels.fused_augment.default


def has_kernel(device_type: str) -> bool:
    """Whether the compiled extension has a kernel of the op for 'cpu' or 'cuda'."""
    if not _ext.available():
        return False
    _register()
    key = {"cpu": "CPU", "cuda": "CUDA"}.get(device_type)
    if key is None:
        return False
    return torch._C._dispatch_has_kernel_for_dispatch_key(OP_NAME, key)


def run(
    data: torch.Tensor,
    offsets: torch.Tensor,
    sizes: torch.Tensor,
    hwc: bool,
    boxes: torch.Tensor,
    flip: torch.Tensor,
    factors: torch.Tensor,
    order: torch.Tensor,
    gray: torch.Tensor,
    mean: list[float],
    std: list[float],
    out_h: int,
    out_w: int,
    out_dtype: torch.dtype,
    check: bool = True,
    solarize: torch.Tensor | None = None,
    channels_last: bool = False,
    interpolation: int = 0,
    blur_sigma: torch.Tensor | None = None,
    source: torch.Tensor | None = None,
    images: list[torch.Tensor] | None = None,
    out: torch.Tensor | None = None,
    clusters: bool = True,
) -> torch.Tensor:
    args = (data, offsets, sizes, hwc, boxes, flip, factors, order, gray, mean, std, out_h, out_w, out_dtype)
    args += (check, solarize, channels_last, interpolation, blur_sigma, source, images, clusters)
    if out is None:
        return op()(*args)
    op()  # registers the overload with the extension
    torch.ops.vlkernels.fused_augment.out(*args, out=out)
    return out
