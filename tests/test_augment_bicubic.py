"""Bicubic resampling in the fused augmentation (``interpolation="bicubic"``): the C++ CPU op against
the PyTorch reference (``F.interpolate(mode="bicubic", antialias=True)`` on the crop, clamped to
[0, 1]), and the reference against the filter written out (Keys' cubic, a = -0.5, support 2 scaled by
the downscale factor, taps cut at the borders and renormalised).

Tolerances as in test_augment.py (fp32: 1e-4 on the [0, 1] scale; bf16 / fp16: plus one ulp).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from tests.test_augment import ONLY, _op_args, _OpLog, assert_close01, images_of, params_with, random_sizes
from vlkernels.augment import AugmentParams, fused_augment
from vlkernels.augment._op import op

PLAIN = dict(mean=(0, 0, 0), std=(1, 1, 1))


@pytest.mark.parametrize("what", ["crop", "flip", "contrast", "hue", "all", "all_strong"])
@pytest.mark.parametrize("size", [(16, 16), (9, 13), (1, 1), (61, 47)])
def test_cpu_op_matches_reference_bicubic(what, size):
    # Sizes 1..48: (9, 13) and (16, 16) mostly downscale, (61, 47) mostly upscales, (1, 1) is a 1x1
    # output; the list holds a 1x1 image and odd sizes.
    imgs = images_of("list", random_sizes(6, seed=70 + len(what)), seed=71)
    p = params_with(imgs, seed=72, **ONLY[what])
    expected = fused_augment(imgs, size, params=p, impl="torch", interpolation="bicubic")
    out = fused_augment(imgs, size, params=p, impl="cpu", interpolation="bicubic")
    assert out.shape == (len(imgs), 3, *size)
    assert_close01(out, expected)


@pytest.mark.parametrize("size", [(20, 20), (1, 1), (17, 3), (224, 224)])
def test_cpu_op_matches_reference_bicubic_up_and_big_downscale(size):
    # 1x1, tiny (upscaled) and 6x-downscaled images: a long tap table (support 2 * scale).
    imgs = images_of("list", [(1, 1), (3, 5), (7, 2), (120, 96), (40, 200), (300, 97)], seed=73)
    p = params_with(imgs, seed=74, **ONLY["all"])
    assert_close01(
        fused_augment(imgs, size, params=p, impl="cpu", interpolation="bicubic"),
        fused_augment(imgs, size, params=p, impl="torch", interpolation="bicubic"),
    )


@pytest.mark.parametrize("kind", ["nhwc", "nchw", "list"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_cpu_op_matches_reference_bicubic_layouts_dtypes(kind, dtype):
    imgs = images_of(kind, [(23, 31)] * 4, seed=75)
    p = params_with(imgs, seed=76, **ONLY["all_strong"])
    expected = fused_augment(imgs, (12, 40), params=p, impl="torch", interpolation="bicubic")
    out = fused_augment(imgs, (12, 40), params=p, impl="cpu", out_dtype=dtype, interpolation="bicubic")
    assert out.dtype == dtype
    assert_close01(out, expected, dtype)


def test_bicubic_uint8_and_channels_last():
    imgs = images_of("nhwc", [(30, 22)] * 3, seed=77)
    p = params_with(imgs, seed=78, **ONLY["all_strong"])
    kw = dict(params=p, interpolation="bicubic")
    f32 = fused_augment(imgs, (15, 25), impl="cpu", **kw, **PLAIN)
    u8 = fused_augment(imgs, (15, 25), impl="cpu", out_dtype=torch.uint8, **kw)
    torch.testing.assert_close(u8, (f32 * 255).round().clamp(0, 255).to(torch.uint8), rtol=0, atol=0)
    ref = fused_augment(imgs, (15, 25), impl="torch", out_dtype=torch.uint8, **kw)
    assert (u8.int() - ref.int()).abs().max() <= 1
    cl = fused_augment(imgs, (15, 25), impl="cpu", channels_last=True, **kw)
    assert cl.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(cl, fused_augment(imgs, (15, 25), impl="cpu", **kw), rtol=0, atol=0)


def triangle(x: float) -> float:
    return max(0.0, 1.0 - abs(x))


def keys_cubic(x: float, a: float = -0.5) -> float:
    x = abs(x)
    if x < 1:
        return ((a + 2) * x - (a + 3)) * x * x + 1
    if x < 2:
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    return 0.0


def aa_matrix(n_in: int, n_out: int, mode: str = "bicubic") -> torch.Tensor:
    """[n_out, n_in] antialiased resampling matrix, written out in float64."""
    f, half = (keys_cubic, 2.0) if mode == "bicubic" else (triangle, 1.0)
    scale = n_in / n_out
    support = half * max(scale, 1.0)
    inv = 1.0 / max(scale, 1.0)
    m = torch.zeros(n_out, n_in, dtype=torch.float64)
    for i in range(n_out):
        center = scale * (i + 0.5)
        lo = max(int(center - support + 0.5), 0)
        hi = min(int(center + support + 0.5), n_in)
        w = [f((j - center + 0.5) * inv) for j in range(lo, hi)]
        total = sum(w)
        m[i, lo:hi] = torch.tensor(w, dtype=torch.float64) / total
    return m


@pytest.mark.parametrize("impl", ["cpu", "torch"])
@pytest.mark.parametrize(("w_in", "w_out"), [(8, 3), (37, 10), (5, 13), (4, 4), (1, 6), (9, 1)])
def test_bicubic_weights_are_keys_cubic_a_minus_half(impl, w_in, w_out):
    # One row, so only the horizontal filter acts; values kept away from 0 and 1 so the clamp is idle.
    g = torch.Generator().manual_seed(79)
    row = torch.randint(96, 160, (1, w_in, 3), dtype=torch.uint8, generator=g)
    p = AugmentParams.identity([(1, w_in)])
    out = fused_augment(row[None], (1, w_out), params=p, impl=impl, interpolation="bicubic", **PLAIN)
    expected = aa_matrix(w_in, w_out) @ (row[0].double() / 255.0)  # [w_out, 3]
    torch.testing.assert_close(out[0, :, 0].double(), expected.T, rtol=0, atol=2e-6)
    if w_out > w_in and w_in > 1:
        # Upscaling with antialias=True is the a = -0.5 cubic, not the a = -0.75 of plain bicubic.
        plain = F.interpolate(
            row.permute(0, 2, 1)[:, :, None].float() / 255.0,
            size=(1, w_out),
            mode="bicubic",
            align_corners=False,
        )[0, :, 0]
        assert (out[0, :, 0] - plain).abs().max() > 1e-3


@pytest.mark.parametrize("impl", ["cpu", "torch"])
@pytest.mark.parametrize("mode", ["bilinear", "bicubic"])
@pytest.mark.parametrize("kind", ["nhwc", "nchw"])
def test_resize_is_the_filter_matrices(impl, mode, kind):
    # Both axes, including output widths / heights of 1 (a contiguous NCHW input to torch's antialiased
    # interpolate gets those wrong: the reference feeds it channels-last).
    for (h, w), size in [
        ((5, 4), (3, 1)),
        ((20, 30), (9, 1)),
        ((7, 9), (1, 3)),
        ((6, 1), (2, 5)),
        ((8, 6), (5, 4)),
    ]:
        imgs = images_of(kind, [(h, w)] * 2, seed=h * w)
        p = AugmentParams.identity([(h, w)] * 2)
        out = fused_augment(imgs, size, params=p, impl=impl, interpolation=mode, **PLAIN)
        x = (imgs if kind == "nchw" else imgs.permute(0, 3, 1, 2)).double() / 255.0
        expected = aa_matrix(h, size[0], mode) @ x @ aa_matrix(w, size[1], mode).T
        if mode == "bicubic":
            expected = expected.clamp(0, 1)
        torch.testing.assert_close(out.double(), expected, rtol=0, atol=2e-6)


@pytest.mark.parametrize("impl", ["cpu", "torch"])
def test_bicubic_overshoot_is_clamped(impl):
    # A 0 / 255 checkerboard upscaled: the cubic's negative lobes overshoot [0, 1] before the clamp.
    board = ((torch.arange(8)[:, None] + torch.arange(8)[None, :]) % 2 * 255).to(torch.uint8)
    imgs = board[None, :, :, None].expand(1, 8, 8, 3).contiguous()
    p = AugmentParams.identity([(8, 8)])
    out = fused_augment(imgs, 21, params=p, impl=impl, interpolation="bicubic", **PLAIN)
    raw = F.interpolate(
        imgs.permute(0, 3, 1, 2).float() / 255.0, size=(21, 21), mode="bicubic", antialias=True
    )
    assert raw.min() < -0.01 and raw.max() > 1.01
    torch.testing.assert_close(out, raw.clamp(0, 1), rtol=0, atol=2e-6)


@pytest.mark.parametrize("impl", ["cpu", "torch"])
def test_bicubic_identity_size_is_the_image(impl):
    # in == out: taps at distances -1, 0, 1, 2 with weights 0, 1, 0, 0.
    imgs = images_of("nhwc", [(13, 9)] * 2, seed=80)
    p = AugmentParams.identity([(13, 9)] * 2)
    out = fused_augment(imgs, (13, 9), params=p, impl=impl, interpolation="bicubic", **PLAIN)
    torch.testing.assert_close(out, imgs.permute(0, 3, 1, 2).float() / 255.0, rtol=0, atol=1e-6)


@pytest.mark.parametrize("impl", ["cpu", "torch"])
def test_bicubic_flip_is_a_mirror(impl):
    imgs = images_of("list", [(30, 41), (17, 8)], seed=81)
    p = params_with(imgs, seed=82, **ONLY["all_strong"])
    p.flip[:] = False
    plain = fused_augment(imgs, (11, 19), params=p, impl=impl, interpolation="bicubic")
    p.flip[:] = True
    flipped = fused_augment(imgs, (11, 19), params=p, impl=impl, interpolation="bicubic")
    torch.testing.assert_close(flipped, plain.flip(-1), rtol=0, atol=1e-5)


def test_bilinear_stays_the_default():
    imgs = images_of("nhwc", [(40, 30)] * 2, seed=83)
    p = params_with(imgs, seed=84, **ONLY["all"])
    default = fused_augment(imgs, 16, params=p, impl="cpu")
    torch.testing.assert_close(
        default, fused_augment(imgs, 16, params=p, impl="cpu", interpolation="bilinear"), rtol=0, atol=0
    )
    assert not torch.allclose(default, fused_augment(imgs, 16, params=p, impl="cpu", interpolation="bicubic"))
    # The op's argument: 0 bilinear (default), 1 bicubic.
    args = _op_args()
    torch.testing.assert_close(op()(*args), op()(*args, True, None, False, 0), rtol=0, atol=0)
    assert not torch.equal(op()(*args), op()(*args, True, None, False, 1))


def test_interpolation_errors():
    imgs = images_of("nhwc", [(10, 12)] * 2)
    with pytest.raises(ValueError, match="interpolation must be one of"):
        fused_augment(imgs, 8, interpolation="nearest")
    with pytest.raises(TypeError, match="interpolation must be a str"):
        fused_augment(imgs, 8, interpolation=1)
    with pytest.raises(RuntimeError, match=r"interpolation must be 0 \(bilinear\) or 1 \(bicubic\), got 2"):
        op()(*_op_args(), True, None, False, 2)


def test_auto_runs_the_compiled_op_for_bicubic():
    imgs = images_of("nhwc", [(40, 40)] * 3)
    with _OpLog() as log:
        fused_augment(imgs, 16, interpolation="bicubic")
    ran = [devs for name, devs in log.calls if name == "vlkernels.fused_augment.default"]
    assert ran == [["cpu"] * 9]


@pytest.mark.parametrize("dtype", [torch.float32, torch.uint8])
def test_opcheck_bicubic(dtype):
    torch.library.opcheck(op(), (*_op_args(dtype), True, None, True, 1))


def test_bicubic_big_downscale_sum_of_weights_is_one():
    # A constant image stays constant through any bicubic resize (weights renormalised at the borders).
    imgs = torch.full((2, 97, 211, 3), 77, dtype=torch.uint8)
    p = AugmentParams.identity([(97, 211)] * 2)
    for size in [(5, 3), (97, 211), (300, 13)]:
        out = fused_augment(imgs, size, params=p, impl="cpu", interpolation="bicubic", **PLAIN)
        assert math.isclose(out.min().item(), 77 / 255, abs_tol=2e-6)
        assert math.isclose(out.max().item(), 77 / 255, abs_tol=2e-6)
