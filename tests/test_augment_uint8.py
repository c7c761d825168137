"""uint8 output (out_dtype=torch.uint8: no normalisation, x * 255 rounded half to even and clamped) and
channels-last output (NHWC memory, NCHW shape) of the fused augmentation: the C++ CPU op against the
PyTorch reference and against its own float output.

uint8 tolerance: the CPU op and the reference agree to 1e-4 on the [0, 1] scale, so after x * 255 and
rounding they may differ by one step where a value lies within 0.03 of a .5 boundary: |a - b| <= 1,
on a small fraction of the values.
"""

from __future__ import annotations

import pytest
import torch

from tests.test_augment import ONLY, _op_args, images_of, params_with
from vlkernels.augment import AugmentParams, fused_augment
from vlkernels.augment._op import op

PLAIN = dict(mean=(0, 0, 0), std=(1, 1, 1))


@pytest.mark.parametrize("impl", ["cpu", "torch"])
@pytest.mark.parametrize("kind", ["nhwc", "nchw", "list"])
@pytest.mark.parametrize("channels_last", [False, True])
def test_identity_crop_in_uint8_is_the_image(impl, kind, channels_last):
    imgs = images_of(kind, [(19, 27)] * 3, seed=60)
    p = AugmentParams.identity([(19, 27)] * 3)
    out = fused_augment(
        imgs, (19, 27), params=p, impl=impl, out_dtype=torch.uint8, channels_last=channels_last
    )
    assert out.dtype == torch.uint8 and out.shape == (3, 3, 19, 27)
    assert out.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    expected = torch.stack(imgs) if kind == "list" else imgs
    if kind != "nchw":
        expected = expected.permute(0, 3, 1, 2)
    assert torch.equal(out, expected)


@pytest.mark.parametrize("what", ["crop", "all", "all_strong", "contrast", "hue", "grayscale"])
@pytest.mark.parametrize("channels_last", [False, True])
def test_uint8_is_the_rounded_float_output(what, channels_last):
    # The same fp32 pipeline then one rounding: the op's uint8 equals its own float output quantised.
    imgs = images_of("list", [(23, 31), (40, 12), (7, 9), (64, 64)], seed=61)
    p = params_with(imgs, seed=62, **ONLY[what], solarize_p=0.5)
    u8 = fused_augment(
        imgs, (13, 17), params=p, impl="cpu", out_dtype=torch.uint8, channels_last=channels_last
    )
    f32 = fused_augment(imgs, (13, 17), params=p, impl="cpu", **PLAIN)
    assert torch.equal(u8, (f32 * 255).round().clamp(0, 255).to(torch.uint8))


@pytest.mark.parametrize("what", ["crop", "all", "all_strong"])
def test_cpu_op_uint8_matches_reference(what):
    imgs = images_of("list", [(23, 31), (40, 12), (7, 9), (64, 64), (120, 96)], seed=63)
    p = params_with(imgs, seed=64, **ONLY[what], solarize_p=0.3)
    out = fused_augment(imgs, (16, 16), params=p, impl="cpu", out_dtype=torch.uint8)
    ref = fused_augment(imgs, (16, 16), params=p, impl="torch", out_dtype=torch.uint8)
    diff = (out.int() - ref.int()).abs()
    assert diff.max() <= 1
    assert (diff > 0).float().mean() < 0.01


def test_uint8_rounds_half_to_even_and_clamps():
    # Brightness 0.5 of bytes 1 and 3 gives x * 255 = 0.5 and 1.5: rounded half to even, 0 and 2;
    # brightness 3 saturates at 255.
    img = torch.tensor([1, 3, 200], dtype=torch.uint8).repeat(4, 4, 1)
    p = AugmentParams.identity([(4, 4)])
    p.jitter[:] = True
    for impl in ("cpu", "torch"):
        p.brightness[:] = 0.5
        out = fused_augment([img], 4, params=p, impl=impl, out_dtype=torch.uint8)
        assert out[0, :, 0, 0].tolist() == [0, 2, 100], impl
        p.brightness[:] = 3.0
        out = fused_augment([img], 4, params=p, impl=impl, out_dtype=torch.uint8)
        assert out[0, :, 0, 0].tolist() == [3, 9, 255], impl


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("impl", ["cpu", "torch"])
def test_channels_last_float_equals_contiguous(dtype, impl):
    imgs = images_of("nhwc", [(30, 26)] * 3, seed=65)
    p = params_with(imgs, seed=66, **ONLY["all_strong"])
    a = fused_augment(imgs, (14, 15), params=p, impl=impl, out_dtype=dtype)
    b = fused_augment(imgs, (14, 15), params=p, impl=impl, out_dtype=dtype, channels_last=True)
    assert b.is_contiguous(memory_format=torch.channels_last) and not b.is_contiguous()
    assert b.stride() == (3 * 14 * 15, 1, 15 * 3, 3)
    torch.testing.assert_close(b, a, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
@pytest.mark.parametrize("channels_last", [False, True])
def test_opcheck_uint8_channels_last(dtype, channels_last):
    args = (*_op_args(dtype), True, None, channels_last)
    torch.library.opcheck(op(), args)


def test_uint8_channels_last_errors():
    imgs = images_of("nhwc", [(10, 12)] * 2)
    with pytest.raises(TypeError, match="channels_last must be a bool"):
        fused_augment(imgs, 8, channels_last="yes")
    with pytest.raises(ValueError, match="out_dtype must be one of"):
        fused_augment(imgs, 8, out_dtype=torch.int8)
    with pytest.raises(RuntimeError, match="float32, bfloat16, float16 or uint8"):
        op()(*_op_args(torch.int32))
