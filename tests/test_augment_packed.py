"""Zero-copy batches: PackedImages (built once, read in place by fused_augment), lists of images that
already lie in one buffer read in place, the bytes copied per call counted, and the DataLoader recipe
(examples/augment_dataloader.py) run end to end on generated images."""

from __future__ import annotations

import contextlib
import importlib
import multiprocessing
import os
import pickle

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from tests.test_augment import ONLY, images_of
from vlkernels.augment import PackedImages, fused_augment, sample_augment_params
from vlkernels.augment.api import as_batch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZES = [(40, 61), (23, 17), (64, 64), (1, 1), (100, 33)]


class _CopyTracker(TorchDispatchMode):
    """Bytes written by aten ops into new memory (outputs whose storage is none of the inputs' and not
    one of ``known``: views and in-place ops are not copies), the fused op's own output excepted."""

    def __init__(self, *known: torch.Tensor):
        super().__init__()
        self.known = {t.untyped_storage().data_ptr() for t in known}
        self.bytes = 0
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if str(func) != "vlkernels.fused_augment.default":
            ins = [a for a in [*args, *(kwargs or {}).values()] if isinstance(a, torch.Tensor)]
            seen = self.known | {t.untyped_storage().data_ptr() for t in ins}
            outs = out if isinstance(out, (tuple, list)) else [out]
            n = sum(
                t.nbytes
                for t in outs
                if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in seen
            )
            self.bytes += n
            self.ops.append((str(func), n))
        return out


def test_from_list_layout_and_sources():
    imgs = images_of("list", SIZES, seed=1)
    strided = torch.randint(0, 256, (30, 20, 3), dtype=torch.uint8).transpose(0, 1)  # [20, 30, 3] view
    arr = np.random.default_rng(2).integers(0, 256, size=(7, 9, 3), dtype=np.uint8)
    p = PackedImages.from_list([*imgs, strided, arr])
    assert len(p) == 7 and p.data.numel() == sum(t.numel() for t in imgs) + strided.numel() + arr.size
    assert p.sizes.tolist() == [list(s) for s in SIZES] + [[20, 30], [7, 9]]
    assert p.offsets.tolist()[:2] == [0, 40 * 61 * 3]
    views = p.images()
    for a, b in zip(views, [*imgs, strided, torch.from_numpy(arr)], strict=True):
        assert torch.equal(a, b)
    assert all(v.untyped_storage().data_ptr() == p.data.untyped_storage().data_ptr() for v in views)
    q = pickle.loads(pickle.dumps(p))  # what a DataLoader worker sends
    assert torch.equal(q.data, p.data) and torch.equal(q.offsets, p.offsets)


@pytest.mark.parametrize("impl", ["cpu", "torch"])
def test_packed_equals_list_and_is_read_in_place(impl):
    imgs = images_of("list", SIZES, seed=3)
    packed = PackedImages.from_list(imgs)
    params = sample_augment_params(packed, generator=torch.Generator().manual_seed(4), **ONLY["all_strong"])
    expected = fused_augment(imgs, (16, 12), params=params, impl=impl)
    b = as_batch(packed)
    assert b.data.data_ptr() == packed.data.data_ptr() and b.offsets is packed.offsets
    with _CopyTracker(packed.data) as tr:
        out = fused_augment(packed, (16, 12), params=params, impl=impl)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    if impl == "cpu":
        # Parameters only (a few hundred bytes), not the images' bytes.
        assert tr.bytes < packed.data.numel() // 20, tr.ops


def test_list_of_views_into_one_buffer_is_not_copied():
    imgs = images_of("list", SIZES, seed=5)
    packed = PackedImages.from_list(imgs)
    views = packed.images()
    b = as_batch(views)
    assert b.data.data_ptr() == packed.data.data_ptr()
    assert b.offsets.tolist() == packed.offsets.tolist()
    params = sample_augment_params(views, generator=torch.Generator().manual_seed(6))
    with _CopyTracker(packed.data) as tr:
        out = fused_augment(views, 20, params=params, impl="cpu")
    assert tr.bytes < packed.data.numel() // 20, tr.ops
    torch.testing.assert_close(out, fused_augment(imgs, 20, params=params, impl="cpu"), rtol=0, atol=0)
    # torch.split of one flat tensor, and unbind of a batch: also in place (offsets may start past 0).
    flat = torch.randint(0, 256, (10 + 2 * 8 * 9 * 3,), dtype=torch.uint8)
    parts = [t.view(8, 9, 3) for t in flat[10:].split(8 * 9 * 3)]
    b = as_batch(parts)
    assert b.data.data_ptr() == flat.data_ptr() and b.offsets.tolist() == [10, 10 + 216]
    torch.testing.assert_close(
        fused_augment(parts, 5, params=sample_augment_params(parts), impl="cpu").shape, (2, 3, 5, 5)
    )
    batch = images_of("nhwc", [(12, 12)] * 3, seed=7)
    assert as_batch(list(batch.unbind(0))).data.data_ptr() == batch.data_ptr()


@pytest.mark.parametrize("out_dtype", [torch.float32, torch.uint8])
def test_separate_images_are_read_in_place(out_dtype):
    imgs = images_of("list", SIZES, seed=8)
    b = as_batch(imgs)
    # The CPU op gets the tensors themselves (its images argument): no buffer of the total size.
    assert b.data.numel() == 0 and b.offsets.tolist() == [0] * len(imgs)
    assert [t.data_ptr() for t in b.images] == [t.data_ptr() for t in imgs]
    packed = PackedImages.from_list(imgs)
    params = sample_augment_params(packed, generator=torch.Generator().manual_seed(4), **ONLY["all_strong"])
    want = fused_augment(packed, (16, 12), params=params, impl="cpu", out_dtype=out_dtype)
    with _CopyTracker(*imgs) as tr:
        got = fused_augment(imgs, (16, 12), params=params, impl="cpu", out_dtype=out_dtype)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    total = sum(t.numel() for t in imgs)
    assert tr.bytes < total // 20, tr.ops  # parameters only
    # A non-contiguous image is copied alone (one image's bytes), the others are still read in place.
    imgs[2] = imgs[2].transpose(0, 1)
    b = as_batch(imgs)
    assert b.images[2].is_contiguous() and torch.equal(b.images[2].view(64, 64, 3), imgs[2])
    assert [t.data_ptr() for t in b.images[:2]] == [t.data_ptr() for t in imgs[:2]]
    with _CopyTracker(*imgs) as tr:
        fused_augment(imgs, (16, 12), params=params, impl="cpu")
    assert 64 * 64 * 3 <= tr.bytes < 64 * 64 * 3 + total // 20, tr.ops
    # Views into one buffer with one of them transposed: not one buffer any more, read in place too.
    views = packed.images()
    views[2] = views[2].transpose(0, 1)
    b = as_batch(views)
    assert b.data.numel() == 0
    assert b.images[0].untyped_storage().data_ptr() == packed.data.untyped_storage().data_ptr()


def test_packed_views_and_dtypes():
    imgs = images_of("list", SIZES, seed=9)
    packed = PackedImages.from_list(imgs)
    views = [dict(scale=(0.5, 1.0)), dict(scale=(0.1, 0.5), blur_p=1.0)]
    g = torch.Generator().manual_seed(10)
    out = fused_augment(packed, 12, views=views, generator=g, out_dtype=torch.uint8, impl="cpu")
    g = torch.Generator().manual_seed(10)
    ref = fused_augment(imgs, 12, views=views, generator=g, out_dtype=torch.uint8, impl="cpu")
    assert out.shape == (10, 3, 12, 12)
    torch.testing.assert_close(out, ref, rtol=0, atol=0)


def test_packed_errors():
    imgs = images_of("list", SIZES[:2], seed=11)
    p = PackedImages.from_list(imgs)
    with pytest.raises(TypeError, match="data must be a 1-d torch.uint8"):
        PackedImages(p.data.float(), p.offsets, p.sizes)
    with pytest.raises(ValueError, match=r"sizes must have shape \[2, 2\]"):
        PackedImages(p.data, p.offsets, p.sizes[:1])
    with pytest.raises(ValueError, match="no images"):
        PackedImages(p.data, p.offsets[:0], p.sizes[:0])
    with pytest.raises(ValueError, match="one device"):
        PackedImages(p.data, p.offsets.to("meta"), p.sizes)
    with pytest.raises(ValueError, match="no images"):
        PackedImages.from_list([])
    with pytest.raises(ValueError, match=r"images\[0\] must be \[H, W, 3\]"):
        PackedImages.from_list([torch.zeros(4, 4, 1, dtype=torch.uint8)])
    with pytest.raises(TypeError, match="uint8"):
        PackedImages.from_list([np.zeros((4, 4, 3), dtype=np.float32)])
    bad = PackedImages(p.data, p.offsets + torch.tensor([0, 5]), p.sizes)
    with pytest.raises(RuntimeError, match="offsets: image 1 .* lies outside data"):
        fused_augment(bad, 8, impl="cpu")
    with pytest.raises(ValueError, match="image 1 .* lies outside data"):
        fused_augment(bad, 8, impl="torch")


def _load_example():
    # By its module name (the repository root is on sys.path: pytest's pythonpath), not from its file:
    # workers started by forkserver or spawn (forkserver is Python 3.14's default on Linux) unpickle the
    # dataset and the collate function by module name, which a module loaded from a file path has not.
    return importlib.import_module("examples.augment_dataloader")


@contextlib.contextmanager
def _start_method(name):
    prev = multiprocessing.get_start_method(allow_none=True)
    multiprocessing.set_start_method(name, force=True)
    try:
        yield
    finally:
        multiprocessing.set_start_method(prev, force=True)


# Workers started by fork (the default before Python 3.14) and by forkserver (3.14's default on Linux),
# whatever this Python's default; and the main-process path with two views.
@pytest.mark.parametrize(
    "extra, start", [([], "fork"), ([], "forkserver"), (["--views", "2", "--workers", "0"], None)]
)
def test_dataloader_recipe_runs(extra, start):
    mod = _load_example()
    with _start_method(start) if start else contextlib.nullcontext():
        res = mod.main(["--images", "40", "--batch", "16", "--workers", "2", "--size", "24", *extra])
    views = 2 if "--views" in extra else 1
    assert res["images"] == 40 and res["last_shape"] == (8 * views, 3, 24, 24)


def test_dataloader_collate_packs_in_place():
    mod = _load_example()
    ds = mod.GeneratedImages(3)
    packed, labels = mod.Collate()([ds[i] for i in range(3)])
    assert isinstance(packed, PackedImages) and labels.tolist() == [0, 1, 2]
    for i, v in enumerate(packed.images()):
        assert torch.equal(v, torch.from_numpy(ds[i][0]))
