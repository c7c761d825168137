"""CPU threading of the C++ op: results independent of the thread count, of the (largest-first)
scheduling order and of the per-thread scratch kept across images and calls; the parallel packing op
of the list path. (No timings here: the 1 vs 2 thread measurement is
``python -m benchmarks.bench_augment --scaling``.)"""

from __future__ import annotations

import pytest
import torch

from tests.test_augment import ONLY, images_of, params_with, random_sizes
from vlkernels.augment import _op, fused_augment
from vlkernels.augment.api import as_batch


@pytest.fixture
def threads():
    prev = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(prev)


@pytest.mark.parametrize("what", ["all_strong", "contrast", "crop"])
def test_thread_count_and_order_do_not_change_results(threads, what):
    imgs = images_of("list", random_sizes(14, seed=1, lo=3, hi=160), seed=2)
    p = params_with(imgs, seed=3, blur_p=0.5, solarize_p=0.3, **ONLY[what])
    outs = []
    for t in (1, 2, 3, 1):
        threads(t)
        outs.append(fused_augment(imgs, (33, 27), params=p, impl="cpu"))
    for o in outs[1:]:
        torch.testing.assert_close(o, outs[0], rtol=0, atol=0)


def test_scratch_reused_across_sizes_and_paths(threads):
    # Large then small then large images (the per-thread buffers grow, then are reused partly), the
    # image-parallel and the row-parallel paths (fewer images than threads) sharing the buffers, and
    # bicubic / blur / contrast (every scratch slot), against single calls made in a fresh order.
    big = images_of("list", [(300, 280), (280, 310)], seed=4)
    small = images_of("list", [(9, 13), (40, 7), (17, 17)], seed=5)
    kw = dict(blur_p=1.0, **ONLY["all_strong"])
    pb, ps = params_with(big, seed=6, **kw), params_with(small, seed=7, **kw)
    threads(2)
    want_small = [fused_augment([im], 64, params=ps.select(i), impl="cpu") for i, im in enumerate(small)]
    want_big = fused_augment(big, 64, params=pb, impl="cpu", interpolation="bicubic")
    for _ in range(2):
        torch.testing.assert_close(
            fused_augment(big, 64, params=pb, impl="cpu", interpolation="bicubic"), want_big, rtol=0, atol=0
        )
        got = fused_augment(small, 64, params=ps, impl="cpu")
        torch.testing.assert_close(got, torch.cat(want_small), rtol=0, atol=0)
    threads(1)
    torch.testing.assert_close(
        fused_augment(big, 64, params=pb, impl="cpu", interpolation="bicubic"), want_big, rtol=0, atol=0
    )


def test_pack_images_op(threads):
    assert _op.has_pack()
    g = torch.Generator().manual_seed(8)
    # Sizes around the op's 1 MiB chunks: images split across chunks, chunks spanning images.
    imgs = [torch.randint(0, 256, (n,), dtype=torch.uint8, generator=g) for n in (5, 1 << 20, 3, 700_001, 1)]
    for t in (1, 2):
        threads(t)
        torch.testing.assert_close(_op.pack(imgs), torch.cat(imgs), rtol=0, atol=0)
    with pytest.raises(RuntimeError, match=r"images\[1\] must be a contiguous uint8 CPU tensor"):
        _op.pack([imgs[0], imgs[1].float()])
    with pytest.raises(RuntimeError, match="not contiguous"):
        _op.pack([torch.zeros(4, 6, dtype=torch.uint8).t()])
    with pytest.raises(RuntimeError, match="empty list of Tensors"):  # the dispatcher's message
        _op.pack([])


def test_list_path_packs_with_the_parallel_op():
    imgs = images_of("list", [(40, 61), (23, 17), (64, 64)], seed=9)
    b = as_batch(imgs)
    assert torch.equal(b.data, torch.cat([t.reshape(-1) for t in imgs]))
    assert all(b.data.data_ptr() != t.data_ptr() for t in imgs)
    # A non-contiguous image is made contiguous first.
    imgs[1] = imgs[1].transpose(0, 1)
    b = as_batch(imgs)
    assert torch.equal(b.data, torch.cat([t.reshape(-1) for t in imgs]))
