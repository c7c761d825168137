"""CPU threading of the C++ op: results independent of the thread count, of the (largest-first)
scheduling order and of the per-thread scratch kept across images and calls; the op's images argument
(separate tensors read in place). (No timings here: the 1 vs 2 thread measurement is
``python -m benchmarks.bench_augment --scaling``.)"""

from __future__ import annotations

import pytest
import torch

from tests.test_augment import ONLY, images_of, params_with, random_sizes
from vlkernels.augment import _op, fused_augment


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


def _op_args(imgs, **kw):
    """Arguments of a direct call of the op on separate images (its images argument)."""
    n = len(imgs)
    args = dict(
        data=torch.empty(0, dtype=torch.uint8),
        offsets=torch.zeros(n, dtype=torch.int64),
        sizes=torch.tensor([t.shape[:2] for t in imgs], dtype=torch.int64),
        hwc=True,
        boxes=torch.tensor([[0, 0, t.shape[0], t.shape[1]] for t in imgs], dtype=torch.int64),
        flip=torch.zeros(n, dtype=torch.bool),
        factors=torch.tensor([[1.2, 0.8, 1.0, 0.1]] * n),
        order=torch.arange(4).repeat(n, 1),
        gray=torch.zeros(n, dtype=torch.bool),
        mean=[0.5] * 3,
        std=[0.25] * 3,
        out_h=9,
        out_w=7,
        out_dtype=torch.float32,
        images=[t.reshape(-1) for t in imgs],
    )
    args.update(kw)
    return args


def test_images_argument_of_the_op(threads):
    imgs = images_of("list", [(40, 61), (23, 17), (64, 64)], seed=9)
    flat = torch.cat([t.reshape(-1) for t in imgs])
    starts = [0, 40 * 61 * 3, 40 * 61 * 3 + 23 * 17 * 3]
    for t in (1, 2):
        threads(t)
        got = _op.run(**_op_args(imgs))
        want = _op.run(**_op_args(imgs, data=flat, offsets=torch.tensor(starts), images=None))
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    # Several outputs of one image (source) and an offset inside an image's own tensor.
    src = torch.tensor([2, 0, 2, 1])
    p = {k: v[src] for k, v in _op_args(imgs).items() if k in ("boxes", "flip", "factors", "order", "gray")}
    got = _op.run(**_op_args(imgs, source=src, **p))
    torch.testing.assert_close(got, torch.stack([want[2], want[0], want[2], want[1]]), rtol=0, atol=0)
    shifted = [
        imgs[0].reshape(-1),
        torch.cat([torch.zeros(5, dtype=torch.uint8), imgs[1].reshape(-1)]),
        flat[starts[2] :],
    ]
    got = _op.run(**_op_args(imgs, images=shifted, offsets=torch.tensor([0, 5, 0])))
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_images_argument_errors():
    imgs = images_of("list", [(40, 61), (23, 17)], seed=10)
    flat = [t.reshape(-1) for t in imgs]
    cases = [
        (dict(images=flat[:1]), r"images must hold one tensor per image \(2, the length of offsets\), got 1"),
        (dict(images=[flat[0], flat[1].float()]), r"images\[1\] must be a contiguous uint8 tensor on cpu"),
        (dict(images=[flat[0], imgs[1].transpose(0, 1)]), r"images\[1\] .*\(not contiguous\)"),
        (
            dict(images=[flat[0], flat[1][:-1]]),
            r"image 1 \(offset 0, 23x17x3 bytes\) lies outside images\[1\] of 1172 bytes",
        ),
        (
            dict(offsets=torch.tensor([0, 1])),
            r"image 1 \(offset 1, 23x17x3 bytes\) lies outside images\[1\] of 1173",
        ),
        (dict(offsets=torch.tensor([-1, 0])), r"image 0 \(offset -1, .*\) lies outside images\[0\]"),
    ]
    for kw, msg in cases:
        with pytest.raises(RuntimeError, match=msg):
            _op.run(**_op_args(imgs, **kw))
