"""Hostile arguments of fused_augment, AugmentParams and the op itself: every one is refused with a clear
TypeError / ValueError (Python) or RuntimeError naming the argument (the op), never read out of bounds,
never turned into silently wrong output.

The op-level tests call ``torch.ops.vlkernels.fused_augment`` directly, bypassing the Python checks:
the C++ checks (csrc/augment_checks.h, predicate check_sample in csrc/augment.h) are shared by the CPU
and CUDA ops, so the same calls on CUDA get the same messages (tests/test_gpu_augment.py).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tests.test_augment import ONLY, _op_args, images_of, params_with
from vlkernels.augment import AugmentParams, fused_augment, sample_augment_params
from vlkernels.augment._op import has_kernel, op

BIG = 2**63 - 5  # top / left / offset values whose sums with a small size wrap around int64


def call(args, **changes):
    """The op on _op_args with some arguments replaced (by name)."""
    names = ["data", "offsets", "sizes", "hwc", "boxes", "flip", "factors", "order", "gray"]
    names += ["mean", "std", "out_h", "out_w", "out_dtype"]
    a = dict(zip(names, args, strict=True))
    a.update(changes)
    return op()(*[a[k] for k in names])


def with_row(t: torch.Tensor, i: int, row) -> torch.Tensor:
    t = t.clone()
    t[i] = torch.tensor(row, dtype=t.dtype)
    return t


# ---- item 1: crop boxes, sizes, offsets that overflow int64 (the op, called directly) -------------


@pytest.mark.parametrize(
    "box",
    [
        [BIG, 0, 10, 17],  # top + height wraps: read rows far outside the image
        [0, BIG, 12, 10],  # left + width wraps: segfaulted
        [5, 0, 2**63 - 3, 17],  # height itself huge: top + height wraps
        [0, 3, 12, 2**63 - 2],  # width huge
        [2**62, 0, 2**62, 17],  # top + height == 2^63 wraps to INT64_MIN
        [-(2**63), 0, 10, 17],  # INT64_MIN top
        [0, 0, -(2**63), 17],  # INT64_MIN height
        [1, 0, 12, 17],  # one row past the bottom (no overflow: the plain off-by-one)
        [0, 1, 12, 17],  # one column past the right
        [0, 0, 0, 17],  # empty
    ],
)
def test_op_rejects_boxes_outside_the_image_without_overflow(box):
    args = _op_args()
    with pytest.raises(RuntimeError, match=r"boxes: crop box .* of image 0 lies outside the 12x17 image"):
        call(args, boxes=with_row(args[4], 0, box))


def test_op_accepts_boxes_exactly_at_the_edges():
    args = _op_args()
    boxes = args[4].clone()
    boxes[0] = torch.tensor([11, 16, 1, 1])  # the bottom-right pixel
    boxes[1] = torch.tensor([0, 0, 5, 8])  # the whole image
    out = call(args, boxes=boxes)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize(
    "sizes_row, match",
    [
        ([2**32, 2**32], "sizes of image 0"),  # 3 * H * W wraps to 0: the image "fits" any buffer
        ([2**62, 3], "sizes of image 0"),
        ([0, 17], "sizes of image 0"),
        ([12, -17], "sizes of image 0"),
        ([13, 17], "offsets: image 0"),  # one row more than the buffer holds for it (well, for all)
    ],
)
def test_op_rejects_sizes_that_overflow_or_overrun(sizes_row, match):
    args = _op_args()
    sizes = with_row(args[2], 0, sizes_row)
    if sizes_row == [13, 17]:
        # Image 0 grown by one row: it fits only if it overlaps the others; make it overrun the end.
        offsets = args[1].clone()
        offsets[0] = args[0].numel() - 3 * 13 * 17 + 1
        with pytest.raises(RuntimeError, match=match):
            call(args, sizes=sizes, offsets=offsets)
        return
    with pytest.raises(RuntimeError, match=match):
        call(args, sizes=sizes)


@pytest.mark.parametrize("offset", [BIG, 2**63 - 1, -1, -(2**63), "end+1"])
def test_op_rejects_offsets_outside_data(offset):
    args = _op_args()
    n_bytes = args[0].numel()
    if offset == "end+1":
        offset = n_bytes - 3 + 1  # image 2 is 1x1: its 3 bytes run one past the end
    with pytest.raises(RuntimeError, match=r"offsets: image 2 .* lies outside data of 735 bytes"):
        call(args, offsets=with_row(args[1], 2, offset))


def test_op_accepts_an_image_ending_exactly_at_the_end_of_data():
    args = _op_args()
    out = call(args, offsets=with_row(args[1], 2, args[0].numel() - 3))
    assert torch.isfinite(out).all()


@pytest.mark.parametrize(
    "order",
    [[0, 1, 2, 7], [0, 1, 2, -1], [0, 1, 2, 2**62], [0, 0, 1, 2], [3, 2, 1, 64]],
)
def test_op_rejects_bad_order(order):
    args = _op_args()
    with pytest.raises(RuntimeError, match="order of image 1 .* not a permutation of 0..3"):
        call(args, order=with_row(args[7], 1, order))


@pytest.mark.parametrize(
    "row, match",
    [
        ([math.nan, 1.0, 1.0, 0.0], "must be finite and >= 0"),
        ([1.0, math.inf, 1.0, 0.0], "must be finite and >= 0"),
        ([1.0, 1.0, -0.5, 0.0], "must be finite and >= 0"),
        ([1.0, 1.0, -math.inf, 0.0], "must be finite and >= 0"),
        ([1.0, 1.0, 1.0, math.nan], "hue factor"),
        ([1.0, 1.0, 1.0, 0.51], "hue factor"),
        ([1.0, 1.0, 1.0, -math.inf], "hue factor"),
    ],
)
def test_op_rejects_bad_factors(row, match):
    args = _op_args()
    with pytest.raises(RuntimeError, match=f"factors of image 1: .*{match}"):
        call(args, factors=with_row(args[6], 1, row))


@pytest.mark.parametrize(
    "mean, std, match",
    [
        ([math.nan, 0.0, 0.0], [1.0] * 3, "mean must be finite"),
        ([0.0] * 3, [1.0, math.inf, 1.0], "std must be finite and non-zero"),
        ([0.0] * 3, [1.0, 1e-50, 1.0], "std must be finite and non-zero"),  # 0 in float32
        ([0.0] * 3, [1.0, 1.0], "mean and std must have 3 values"),
        ([1e39, 0.0, 0.0], [1.0] * 3, "mean must be finite"),  # inf in float32
    ],
)
def test_op_rejects_bad_mean_std(mean, std, match):
    with pytest.raises(RuntimeError, match=match):
        call(_op_args(), mean=mean, std=std)


def test_op_rejects_bad_shapes_and_sizes():
    args = _op_args()
    with pytest.raises(RuntimeError, match="data must be 1-d"):
        call(args, data=args[0].view(5, -1) if args[0].numel() % 5 == 0 else args[0][None])
    with pytest.raises(RuntimeError, match=r"boxes must have shape \[3, 4\]"):
        call(args, boxes=args[4][:, :3])
    with pytest.raises(RuntimeError, match=r"offsets must be \[N\] with N >= 1"):
        call(args, offsets=args[1][:0])
    with pytest.raises(RuntimeError, match="at most 2\\^31 - 1 pixels"):
        call(args, out_h=2**20, out_w=2**20)
    with pytest.raises(RuntimeError, match="output size must be >= 1"):
        call(args, out_h=0)


def test_op_makes_strided_parameters_contiguous():
    args = _op_args()
    expected = call(args)

    def strided(t):  # the same values, every other element of a twice-as-large tensor
        big = torch.stack([t, torch.zeros_like(t)], -1)
        s = big[..., 0]
        assert not s.is_contiguous() or t.numel() <= 1
        return s

    out = call(
        args,
        offsets=strided(args[1]),
        sizes=strided(args[2]),
        boxes=strided(args[4]),
        flip=strided(args[5]),
        factors=strided(args[6]),
        order=strided(args[7]),
        gray=strided(args[8]),
        data=strided(args[0]),
    )
    torch.testing.assert_close(out, expected, rtol=0, atol=0)


def test_op_reads_flag_bytes_other_than_one_as_true():
    args = _op_args()
    raw = torch.tensor([2, 255, 0], dtype=torch.uint8)
    flags = raw.view(torch.bool)
    expected = call(args, flip=torch.tensor([True, True, False]), gray=torch.tensor([True, True, False]))
    torch.testing.assert_close(call(args, flip=flags, gray=flags), expected, rtol=0, atol=0)


# ---- the same mistakes through the Python API (AugmentParams.validate), on both paths ------------


@pytest.mark.parametrize("impl", ["cpu", "torch"])
@pytest.mark.parametrize(
    "box",
    [[BIG, 0, 10, 12], [0, BIG, 10, 12], [0, 0, 2**63 - 1, 12], [2**62, 0, 2**62, 12], [0, 0, 10, 0]],
)
def test_validate_rejects_overflowing_boxes(impl, box):
    imgs = images_of("nhwc", [(10, 12)] * 2)
    p = AugmentParams.identity([(10, 12)] * 2)
    p.boxes[1] = torch.tensor(box)
    with pytest.raises(ValueError, match=r"AugmentParams.boxes: crop box .* of image 1 lies outside"):
        fused_augment(imgs, 8, params=p, impl=impl)


@pytest.mark.parametrize("impl", ["cpu", "torch"])
@pytest.mark.parametrize(
    "field, value, match",
    [
        ("brightness", math.nan, "finite and >= 0"),
        ("contrast", math.inf, "finite and >= 0"),
        ("saturation", -0.25, "finite and >= 0"),
        ("brightness", 1e39, "finite and >= 0"),  # float64 value that is inf in float32
        ("hue", math.nan, "hue must lie in"),
        ("hue", -0.75, "hue must lie in"),
    ],
)
def test_validate_rejects_nan_inf_negative_factors(impl, field, value, match):
    imgs = images_of("nhwc", [(10, 12)] * 2)
    p = AugmentParams.identity([(10, 12)] * 2)
    p.jitter[:] = True
    t = getattr(p, field).double()
    t[0] = value
    setattr(p, field, t)
    with pytest.raises(ValueError, match=match):
        fused_augment(imgs, 8, params=p, impl=impl)


@pytest.mark.parametrize("impl", ["cpu", "torch"])
@pytest.mark.parametrize(
    "field, make, err, match",
    [
        ("boxes", lambda p: p.boxes.float(), TypeError, "AugmentParams.boxes must have one of the dtypes"),
        ("order", lambda p: p.order.double(), TypeError, "AugmentParams.order must have one of the dtypes"),
        ("flip", lambda p: p.flip.float(), TypeError, "AugmentParams.flip must have one of the dtypes"),
        ("hue", lambda p: p.hue.long(), TypeError, "AugmentParams.hue must have one of the dtypes"),
        (
            "brightness",
            lambda p: p.brightness[:, None].repeat(1, 2),
            ValueError,
            r"brightness must have shape",
        ),
        ("contrast", lambda p: p.contrast[0], ValueError, r"contrast must have shape"),
        ("boxes", lambda p: p.boxes[:, :3], ValueError, r"boxes must have shape \[2, 4\]"),
        ("grayscale", lambda p: p.grayscale.tolist(), TypeError, "grayscale must be a tensor"),
        ("order", lambda p: p.order[:1], ValueError, "order has 1 rows for 2 images"),
    ],
)
def test_validate_names_bad_field_types_and_shapes(impl, field, make, err, match):
    imgs = images_of("nhwc", [(10, 12)] * 2)
    p = AugmentParams.identity([(10, 12)] * 2)
    setattr(p, field, make(p))
    with pytest.raises(err, match=match):
        fused_augment(imgs, 8, params=p, impl=impl)


@pytest.mark.parametrize("impl", ["cpu", "torch"])
def test_strided_params_are_accepted_and_give_the_same_output(impl):
    imgs = images_of("list", [(20, 30), (17, 9), (33, 33)], seed=40)
    p = params_with(imgs, seed=41, **ONLY["all_strong"])
    expected = fused_augment(imgs, 12, params=p, impl=impl)
    strided = AugmentParams(
        **{k: torch.stack([v, torch.zeros_like(v)], -1)[..., 0] for k, v in vars(p).items()}
    )
    assert not strided.boxes.is_contiguous()
    torch.testing.assert_close(fused_augment(imgs, 12, params=strided, impl=impl), expected, rtol=0, atol=0)


def test_narrow_dtypes_are_accepted():
    imgs = images_of("nhwc", [(10, 12)] * 2)
    p = AugmentParams.identity([(10, 12)] * 2)
    expected = fused_augment(imgs, 8, params=p, impl="cpu")
    p.boxes, p.order = p.boxes.int(), p.order.to(torch.uint8)
    p.flip, p.brightness = p.flip.to(torch.uint8), p.brightness.half()
    torch.testing.assert_close(fused_augment(imgs, 8, params=p, impl="cpu"), expected, rtol=0, atol=0)


# ---- item 8: fused_augment's own arguments -------------------------------------------------------


@pytest.mark.parametrize(
    "size, err, match",
    [
        ("16", TypeError, "size must be an integer, got str"),
        (True, TypeError, "size must be an integer, got bool"),
        (16.7, TypeError, "size must be an integer, got float"),
        (16.0, TypeError, "size must be an integer, got float"),
        ((16, "8"), TypeError, r"size\[1\] must be an integer"),
        ((16, False), TypeError, r"size\[1\] must be an integer"),
        ((8.5, 8), TypeError, r"size\[0\] must be an integer"),
        (None, TypeError, "size must be an integer, got NoneType"),
        (0, ValueError, "both >= 1"),
        (-3, ValueError, "both >= 1"),
        ((8, 0), ValueError, "both >= 1"),
        ((16,), ValueError, r"an \(h, w\) pair"),
        ((4, 4, 4), ValueError, r"an \(h, w\) pair"),
        ((2**16, 2**16), ValueError, "2\\^31 - 1 pixels"),
    ],
)
@pytest.mark.parametrize("impl", ["cpu", "torch"])
def test_size_argument(size, err, match, impl):
    with pytest.raises(err, match=match):
        fused_augment(images_of("nhwc", [(10, 12)] * 2), size, impl=impl)


def test_sparse_images_are_named():
    """A sparse batch or image gets an error naming it (torch's own said "unsupported memory format")."""
    batch = images_of("nhwc", [(10, 12)] * 2)
    with pytest.raises(TypeError, match="images must be a dense"):
        fused_augment(batch.to_sparse(), 8)
    with pytest.raises(TypeError, match=r"images\[1\] must be a dense"):
        fused_augment([batch[0], batch[1].to_sparse()], 8)


@pytest.mark.parametrize("size", [np.int64(7), torch.tensor(7), (np.int32(7), 7), torch.Size([7, 7]), [7, 7]])
def test_size_accepts_integer_likes(size):
    out = fused_augment(images_of("nhwc", [(10, 12)] * 2), size, impl="cpu")
    assert out.shape == (2, 3, 7, 7)


@pytest.mark.parametrize(
    "kw, err, match",
    [
        (dict(mean=(math.nan, 0.4, 0.4)), ValueError, r"mean\[0\] must be finite"),
        (dict(std=(0.2, math.inf, 0.2)), ValueError, r"std\[1\] must be finite"),
        (dict(std=(0.2, 0.0, 0.2)), ValueError, "std must be non-zero"),
        (dict(std=(0.2, 1e-50, 0.2)), ValueError, "std must be non-zero"),
        (dict(mean=(1e39, 0.0, 0.0)), ValueError, "finite in float32"),
        (dict(mean="abc"), TypeError, "mean must be a sequence of 3 numbers"),
        (dict(mean=(0.5, 0.5)), ValueError, "mean must have 3 values"),
        (dict(std=("0.2", 0.2, 0.2)), TypeError, r"std\[0\] must be a real number"),
        (dict(out_dtype="float32"), TypeError, "out_dtype must be a torch.dtype"),
        (dict(out_dtype=torch.float64), ValueError, "out_dtype must be one of"),
        (dict(impl=None), TypeError, "impl must be a str"),
        (dict(impl="gpu"), ValueError, "impl must be one of"),
        (dict(generator="seed"), TypeError, "generator must be a torch.Generator"),
        (dict(jitter=(math.nan, 0.4, 0.4, 0.1)), ValueError, r"jitter\[0\] must be finite"),
        (dict(jitter=(0.4, -0.1, 0.4, 0.1)), ValueError, "jitter must be 4 non-negative"),
        (dict(jitter=(0.4, 0.4, 0.4, 0.6)), ValueError, "hue <= 0.5"),
        (dict(jitter=(0.4, 1e300, 0.4, 0.1)), ValueError, "jitter must be"),
        (dict(jitter=0.4), TypeError, "jitter must be a sequence of 4 numbers"),
        (dict(jitter=(0.4, 0.4, 0.4)), ValueError, "jitter must have 4 values"),
        (dict(hflip_p=math.nan), ValueError, "hflip_p must be finite and in"),
        (dict(jitter_p=1.5), ValueError, "jitter_p must be finite and in"),
        (dict(grayscale_p="0.2"), TypeError, "grayscale_p must be a real number"),
        (dict(scale=(math.nan, 1.0)), ValueError, r"scale\[0\] must be finite"),
        (dict(scale=(0.5, 0.1)), ValueError, "scale must satisfy"),
        (dict(ratio=(0.0, 1.0)), ValueError, "ratio must satisfy"),
        (dict(ratio=(1.0, math.inf)), ValueError, r"ratio\[1\] must be finite"),
        (dict(scale=0.5), TypeError, "scale must be a sequence of 2 numbers"),
    ],
)
@pytest.mark.parametrize("impl", ["cpu", "torch"])
def test_keyword_arguments(kw, err, match, impl):
    kw = {"impl": impl, **kw}
    with pytest.raises(err, match=match):
        fused_augment(images_of("nhwc", [(10, 12)] * 2), 8, **kw)


def test_sample_augment_params_rejects_nan_jitter_and_bad_sizes():
    with pytest.raises(ValueError, match=r"jitter\[2\] must be finite"):
        sample_augment_params([(10, 12)], jitter=(0.4, 0.4, math.nan, 0.1))
    with pytest.raises(ValueError, match="image sizes must be >= 1"):
        sample_augment_params([(0, 12)])
    with pytest.raises(ValueError, match="image sizes must be >= 1"):
        sample_augment_params([(10, -12)])
    with pytest.raises(ValueError, match="sizes must all be >= 1"):
        sample_augment_params(torch.tensor([[10, 12], [0, 5]]))
    with pytest.raises(TypeError, match=r"sizes\[0\] must be an integer"):
        sample_augment_params([("10", 12)])
    with pytest.raises(TypeError, match=r"sizes\[0\] must be an integer"):
        sample_augment_params([(10.5, 12)])
    with pytest.raises(ValueError, match=r"sizes\[0\] must be an \(h, w\) pair"):
        sample_augment_params([(10, 12, 3)])
    with pytest.raises(ValueError, match="integer \\[N, 2\\] tensor"):
        sample_augment_params(torch.tensor([[10.0, 12.0]]))
    with pytest.raises(TypeError, match="expected images or sizes"):
        sample_augment_params("10x12")
    with pytest.raises(ValueError, match="empty"):
        sample_augment_params(torch.zeros(0, 2, dtype=torch.int64))
    p = sample_augment_params([(10, 12)] * 64, jitter=(0.4, 0.4, 0.4, 0.1), generator=torch.Generator())
    assert torch.isfinite(p.factors()).all()


@pytest.mark.parametrize("device", ["meta"])
@pytest.mark.parametrize("impl", ["auto", "torch", "cpu"])
@pytest.mark.parametrize("kind", ["nhwc", "list"])
def test_unsupported_device_is_named(device, impl, kind):
    imgs = images_of(kind, [(10, 12)] * 2)
    imgs = [t.to(device) for t in imgs] if kind == "list" else imgs.to(device)
    with pytest.raises(ValueError, match=f"images are on {device}"):
        fused_augment(imgs, 8, impl=impl)
    assert not has_kernel(device)
    assert not has_kernel("mps")
