"""PackedImages: a ragged batch of uint8 RGB images in one flat buffer, the op's own layout.

    packed = PackedImages.from_list(decoded, pin_memory=True)   # in a DataLoader collate_fn
    out = fused_augment(packed.to("cuda", non_blocking=True), 224)

``fused_augment`` reads a PackedImages as it is (no further copy of the pixels): ``data`` is the
buffer the kernels read, ``offsets`` / ``sizes`` are passed through. ``from_list`` builds the buffer
with one allocation (pinned when asked) and one copy per image, so that a collate function running in
DataLoader workers does the packing off the training process.

A list of [H, W, 3] tensors given to fused_augment is read in place: as one buffer when the images
already lie in one (e.g. ``packed.images()``, ``torch.split`` or ``unbind`` of one tensor), else as
separate tensors (the op's images argument; on CUDA through a device table of their addresses).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class PackedImages:
    """N uint8 RGB images back to back, each [H_i, W_i, 3] contiguous (HWC).

    - ``data``: uint8 [total], the images' bytes.
    - ``offsets``: int64 [N], where image i starts in ``data``.
    - ``sizes``: int64 [N, 2], (H_i, W_i).

    All three on one device. The values are checked by the op (every image's bytes must lie inside
    ``data``); ``check()`` checks types and shapes.
    """

    data: torch.Tensor
    offsets: torch.Tensor
    sizes: torch.Tensor

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        for name, dtype, dims in (
            ("data", torch.uint8, 1),
            ("offsets", torch.int64, 1),
            ("sizes", torch.int64, 2),
        ):
            t = getattr(self, name)
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"PackedImages.{name} must be a tensor, got {type(t).__name__}")
            if t.dtype != dtype or t.dim() != dims:
                raise TypeError(
                    f"PackedImages.{name} must be a {dims}-d {dtype} tensor, got {t.dtype} {tuple(t.shape)}"
                )
        n = self.offsets.shape[0]
        if n == 0:
            raise ValueError("PackedImages: no images (offsets is empty)")
        if tuple(self.sizes.shape) != (n, 2):
            raise ValueError(f"PackedImages.sizes must have shape [{n}, 2], got {tuple(self.sizes.shape)}")
        if not (self.data.device == self.offsets.device == self.sizes.device):
            raise ValueError(
                f"PackedImages: data, offsets and sizes must be on one device, got {self.data.device}, "
                f"{self.offsets.device}, {self.sizes.device}"
            )

    @classmethod
    def from_list(cls, images: Sequence, pin_memory: bool = False) -> PackedImages:
        """Pack [H, W, 3] uint8 images (tensors or numpy arrays, e.g. decoded PIL images) into one
        buffer: one allocation of the total size (page-locked with ``pin_memory=True``, for an
        asynchronous host-to-device copy) and one copy per image. CPU images only."""
        images = list(images)
        if not images:
            raise ValueError("PackedImages.from_list: no images")
        arrays, sizes, offsets, total = [], [], [], 0
        for i, im in enumerate(images):
            if isinstance(im, torch.Tensor):
                if im.device.type != "cpu":
                    raise ValueError(f"PackedImages.from_list: images[{i}] is on {im.device}, expected cpu")
                if im.dtype != torch.uint8:
                    raise TypeError(f"images[{i}] must be uint8 (decoded images), got {im.dtype}")
                a = im.numpy()
            elif isinstance(im, np.ndarray):
                if im.dtype != np.uint8:
                    raise TypeError(f"images[{i}] must be uint8 (decoded images), got {im.dtype}")
                a = im
            else:
                raise TypeError(f"images[{i}] must be a tensor or a numpy array, got {type(im).__name__}")
            if a.ndim != 3 or a.shape[2] != 3 or a.shape[0] == 0 or a.shape[1] == 0:
                raise ValueError(
                    f"images[{i}] must be [H, W, 3] (RGB, non-empty), got shape {tuple(a.shape)}"
                )
            arrays.append(a)
            sizes.append(a.shape[:2])
            offsets.append(total)
            total += a.size
        data = torch.empty(total, dtype=torch.uint8, pin_memory=pin_memory)
        flat = data.numpy()
        for a, off in zip(arrays, offsets, strict=True):
            # One copy per image, straight into its slice (a strided image is gathered by numpy here).
            flat[off : off + a.size].reshape(a.shape)[...] = a
        return cls(data, torch.tensor(offsets, dtype=torch.int64), torch.tensor(sizes, dtype=torch.int64))

    def __len__(self) -> int:
        return self.offsets.shape[0]

    @property
    def device(self) -> torch.device:
        return self.data.device

    def to(self, device, non_blocking: bool = False) -> PackedImages:
        """The batch on ``device`` (three copies; asynchronous from pinned memory with non_blocking)."""
        return PackedImages(
            self.data.to(device, non_blocking=non_blocking),
            self.offsets.to(device, non_blocking=non_blocking),
            self.sizes.to(device, non_blocking=non_blocking),
        )

    def pin_memory(self) -> PackedImages:
        """Page-locked copy (called by ``DataLoader(pin_memory=True)`` on a batch of this type)."""
        return PackedImages(self.data.pin_memory(), self.offsets.pin_memory(), self.sizes.pin_memory())

    def is_pinned(self) -> bool:
        return self.data.is_pinned()

    def images(self) -> list[torch.Tensor]:
        """The images as [H, W, 3] views into ``data`` (one host read of offsets and sizes)."""
        offs, sizes, total = self.offsets.tolist(), self.sizes.tolist(), self.data.numel()
        out = []
        for i, (off, (h, w)) in enumerate(zip(offs, sizes, strict=True)):
            if h < 1 or w < 1 or off < 0 or off + 3 * h * w > total:
                raise ValueError(
                    f"PackedImages: image {i} (offset {off}, {h}x{w}x3 bytes) lies outside data of {total} "
                    "bytes"
                )
            out.append(self.data[off : off + 3 * h * w].view(h, w, 3))
        return out
