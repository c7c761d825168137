"""DataLoader recipe for the fused augmentation: decode in workers, pack once, augment in one call.

    python examples/augment_dataloader.py                      # CPU, generated images, a few seconds
    python examples/augment_dataloader.py --device cuda --pin-memory --workers 4

- The dataset returns decoded uint8 [H, W, 3] images of any size (here generated; in practice a
  JPEG decode, e.g. ``torchvision.io.decode_jpeg`` or ``np.asarray(PIL.Image.open(p).convert("RGB"))``).
- ``collate`` runs in the worker processes and packs the batch into one flat buffer
  (``PackedImages.from_list``: one allocation, one copy per image), pinned if asked, so the training
  process receives a single tensor (shared memory) and never copies the pixels again.
- Per-worker seeding: ``worker_init_fn`` seeds numpy / random from torch's per-worker seed (the
  DataLoader derives it from the base seed and the worker id), so workers do not repeat each other's
  random choices and a fixed ``--seed`` reproduces the run.
- The augmentation runs in the main process, on the CPU (the C++ op, threads = torch.get_num_threads())
  or on the GPU (``packed.to("cuda", non_blocking=True)``, then the CUDA op), with its own generator:
  its randomness does not depend on which worker produced a batch.
"""

from __future__ import annotations

import argparse
import random
import time

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from vlkernels.augment import PackedImages, fused_augment


class GeneratedImages(Dataset):
    """Stand-in for an image dataset: a deterministic random image of random size per index."""

    def __init__(self, n: int, lo: int = 64, hi: int = 160):
        self.n, self.lo, self.hi = n, lo, hi

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
        rng = np.random.default_rng(i)
        h, w = rng.integers(self.lo, self.hi + 1, size=2)
        return rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8), i % 10


def worker_init_fn(worker_id: int) -> None:
    # torch seeds each worker with base_seed + worker_id; numpy and random are not reseeded by it.
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


class Collate:
    """Packs decoded images into PackedImages (in the worker), labels into a tensor."""

    def __init__(self, pin_memory: bool = False):
        self.pin_memory = pin_memory

    def __call__(self, samples):
        images, labels = zip(*samples, strict=True)
        return PackedImages.from_list(images, pin_memory=self.pin_memory), torch.tensor(labels)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=96)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument(
        "--pin-memory", action="store_true", help="pack into page-locked memory (for --device cuda)"
    )
    ap.add_argument("--views", type=int, default=1, help="augmented views per image (view-major output)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    dev = torch.device(args.device)
    pin = args.pin_memory and torch.cuda.is_available()
    loader = DataLoader(
        GeneratedImages(args.images),
        batch_size=args.batch,
        num_workers=args.workers,
        collate_fn=Collate(pin_memory=pin and args.workers == 0),
        # With workers, the DataLoader's pin thread calls PackedImages.pin_memory() (pinned memory
        # allocated in a worker process cannot be shared with the main one).
        pin_memory=pin and args.workers > 0,
        worker_init_fn=worker_init_fn,
        generator=torch.Generator().manual_seed(args.seed),
        persistent_workers=args.workers > 0,
    )
    gen = torch.Generator(device=dev).manual_seed(args.seed)
    views = None
    if args.views > 1:
        views = [dict(scale=(0.4, 1.0))] + [dict(scale=(0.05, 0.4), blur_p=0.5)] * (args.views - 1)
    seen, t0, shape = 0, time.perf_counter(), None
    # One output buffer reused batch after batch (out=): no page faults of a fresh output per call,
    # which on the CPU is what keeps the op's threads from scaling. Reuse it only once the previous
    # batch's training step is done with it (it is here: the step runs before the next call).
    buf = None
    for packed, _labels in loader:
        packed = packed.to(dev, non_blocking=True)
        m = len(packed) * (len(views) if views else 1)
        reuse = buf if buf is not None and buf.shape[0] == m else None
        out = buf = fused_augment(
            packed, args.size, generator=gen, views=views, out_dtype=torch.float32, out=reuse
        )
        # (training step here: out is [views * batch, 3, size, size], view-major; labels repeat per view)
        assert torch.isfinite(out).all()
        seen += len(packed)
        shape = tuple(out.shape)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    print(f"{seen} images in {dt:.2f} s ({seen / dt:.0f} images/s) on {dev}, last batch {shape}")
    return {"images": seen, "seconds": dt, "last_shape": shape}


if __name__ == "__main__":
    main()
