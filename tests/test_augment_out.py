"""fused_augment(..., out=buf): the result written into the caller's tensor (the op's out overload),
identical to the functional result, and every wrong ``out`` refused with a message naming it."""

from __future__ import annotations

import pytest
import torch

from tests.test_augment import ONLY, images_of, params_with
from vlkernels.augment import PackedImages, _op, fused_augment, sample_augment_params

SIZES = [(40, 61), (23, 17), (64, 64), (1, 1), (100, 33)]


@pytest.mark.parametrize("impl", ["cpu", "torch"])
@pytest.mark.parametrize("out_dtype", [torch.float32, torch.bfloat16, torch.uint8])
@pytest.mark.parametrize("channels_last", [False, True])
def test_out_equals_the_functional_result(impl, out_dtype, channels_last):
    imgs = images_of("list", SIZES, seed=1)
    kw = dict(impl=impl, out_dtype=out_dtype, channels_last=channels_last, interpolation="bicubic")
    p = params_with(imgs, seed=2, blur_p=0.5, solarize_p=0.5, **ONLY["all_strong"])
    want = fused_augment(imgs, (15, 11), params=p, **kw)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    buf = torch.full(want.shape, 7, dtype=out_dtype).contiguous(memory_format=fmt)  # poisoned
    got = fused_augment(imgs, (15, 11), params=p, out=buf, **kw)
    assert got is buf
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    # Reused with other parameters and a packed batch: every element rewritten.
    q = params_with(imgs, seed=3, **ONLY["all_strong"])
    want = fused_augment(imgs, (15, 11), params=q, **kw)
    got = fused_augment(PackedImages.from_list(imgs), (15, 11), params=q, out=buf, **kw)
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_out_with_views():
    imgs = images_of("list", SIZES, seed=4)
    views = [dict(scale=(0.5, 1.0)), dict(scale=(0.08, 1.0), blur_p=1.0)]
    g = lambda: torch.Generator().manual_seed(5)  # noqa: E731
    want = fused_augment(imgs, 9, views=views, generator=g(), impl="cpu")
    assert want.shape[0] == 2 * len(imgs)
    buf = torch.empty_like(want)
    torch.testing.assert_close(
        fused_augment(imgs, 9, views=views, generator=g(), impl="cpu", out=buf), want, rtol=0, atol=0
    )


@pytest.mark.parametrize("impl", ["cpu", "torch"])
def test_wrong_out_is_refused(impl):
    imgs = images_of("list", SIZES[:2], seed=6)
    p = sample_augment_params(imgs, generator=torch.Generator().manual_seed(7))
    good = torch.empty(2, 3, 8, 8)
    cases = [
        ([], TypeError, "out must be a torch.Tensor, got list"),
        (good.half(), ValueError, r"out must be torch.float32 \(out_dtype\), got torch.float16"),
        (good.to("meta"), ValueError, r"out must be on cpu \(where the images are\), got meta"),
        (torch.empty(2, 3, 8, 9), ValueError, r"out must have shape \[2, 3, 8, 8\], got \[2, 3, 8, 9\]"),
        (torch.empty(3, 3, 8, 8)[:2], None, None),  # a contiguous slice is fine
        (torch.empty(2, 3, 8, 16)[..., ::2], ValueError, "out must be contiguous"),
        (good.contiguous(memory_format=torch.channels_last), ValueError, "out must be contiguous"),
        (good.clone().requires_grad_(), ValueError, "out must not require grad"),
    ]
    for out, err, msg in cases:
        if err is None:
            fused_augment(imgs, 8, params=p, impl=impl, out=out)
            continue
        with pytest.raises(err, match=msg):
            fused_augment(imgs, 8, params=p, impl=impl, out=out)
    with pytest.raises(ValueError, match=r"out must be in channels-last \(NHWC\) memory"):
        fused_augment(imgs, 8, params=p, impl=impl, out=good, channels_last=True)


def test_op_out_overload_checks_out():
    # A direct call of the op's out overload gets the same checks in C++, and an out overlapping the
    # images it reads is refused.
    imgs = images_of("list", SIZES[:2], seed=8)
    packed = PackedImages.from_list(imgs)
    p = sample_augment_params(packed, generator=torch.Generator().manual_seed(9))
    args = (
        packed.data,
        packed.offsets,
        packed.sizes,
        True,
        p.boxes,
        p.flip,
        p.factors(),
        p.order,
        p.grayscale,
    )
    args += ([0.5] * 3, [0.25] * 3, 4, 4, torch.uint8)
    out = torch.empty(2, 3, 4, 4, dtype=torch.uint8)
    assert _op.run(*args, out=out) is out
    torch.testing.assert_close(out, _op.run(*args), rtol=0, atol=0)
    cases = [
        (out.float(), r"out must be Byte \(out_dtype\), got Float"),
        (torch.empty(2, 3, 4, 5, dtype=torch.uint8), r"out must have shape \[2, 3, 4, 4\]"),
        (torch.empty(2, 3, 4, 8, dtype=torch.uint8)[..., ::2], r"out must be contiguous"),
        (packed.data[: 2 * 3 * 16].view(2, 3, 4, 4), "refer to a single memory location"),
    ]
    for bad, msg in cases:
        with pytest.raises(RuntimeError, match=msg):
            _op.run(*args, out=bad)
    flat = [t.reshape(-1) for t in imgs]
    with pytest.raises(RuntimeError, match=r"out overlaps images\[0\]"):
        _op.run(torch.empty(0, dtype=torch.uint8), torch.zeros(2, dtype=torch.int64), *args[2:], images=flat,
                out=flat[0][: 2 * 3 * 16].view(2, 3, 4, 4))  # fmt: skip


def test_opcheck_of_the_out_overload_and_the_images_argument():
    # Schema (the out alias, the mutation), fake tensor and dispatch checks of both new call forms.
    from tests.test_augment import _op_args

    args = _op_args()
    _op.op()  # loads the extension: the overload is registered with it
    buf = torch.empty(3, 3, 6, 7)
    torch.library.opcheck(torch.ops.vlkernels.fused_augment.out, args, {"out": buf})
    imgs = images_of("list", [(12, 17), (5, 8), (1, 1)], seed=23)
    flat = [t.reshape(-1) for t in imgs]
    kw = {"images": flat}
    torch.library.opcheck(
        _op.op(), (torch.empty(0, dtype=torch.uint8), torch.zeros(3, dtype=torch.int64), *args[2:]), kw
    )
