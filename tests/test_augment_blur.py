"""Gaussian blur in the fused augmentation (per-sample ``AugmentParams.blur_sigma``, 0 = off; after
grayscale, before solarize): the C++ CPU op against the PyTorch reference, the reference against
torchvision v2's ``gaussian_blur`` written out (its ``_get_gaussian_kernel1d`` softmax form, reflect
padding, conv2d with the 2-d kernel; torchvision is not installed here), the kernel-size rule
(2 * ceil(3 sigma) + 1, clipped per axis to 2 * size - 1), and the sampling of blur_p / blur_sigma.

Tolerances as in test_augment.py (fp32: 1e-4 on the [0, 1] scale; bf16 / fp16: plus one ulp).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from tests.test_augment import ONLY, _op_args, _OpLog, assert_close01, images_of, params_with, random_sizes
from vlkernels.augment import AugmentParams, fused_augment, sample_augment_params
from vlkernels.augment import reference as ref
from vlkernels.augment._op import op

PLAIN = dict(mean=(0, 0, 0), std=(1, 1, 1))


def blurred(images, seed: int, lo: float = 0.1, hi: float = 2.0, **kw) -> AugmentParams:
    return params_with(images, seed, blur_p=1.0, blur_sigma=(lo, hi), **kw)


@pytest.mark.parametrize("what", ["crop", "contrast", "hue", "grayscale", "all", "all_strong"])
@pytest.mark.parametrize("size", [(16, 16), (9, 13), (1, 1), (2, 7), (40, 33)])
def test_cpu_op_matches_reference_with_blur(what, size):
    imgs = images_of("list", random_sizes(6, seed=90 + len(what)), seed=91)
    p = blurred(imgs, 92, **ONLY[what])
    assert (p.blur_sigma > 0).all()
    expected = fused_augment(imgs, size, params=p, impl="torch")
    out = fused_augment(imgs, size, params=p, impl="cpu")
    assert_close01(out, expected)


@pytest.mark.parametrize(("lo", "hi"), [(0.01, 0.3), (1.0, 3.0), (5.0, 40.0), (1e3, 1e30)])
def test_cpu_op_matches_reference_small_and_huge_sigma(lo, hi):
    # Tiny sigma: a 3-tap kernel of weights ~(0, 1, 0); huge sigma: clipped to the reflect limit.
    imgs = images_of("list", [(1, 1), (31, 17), (64, 64), (5, 90)], seed=93)
    # (No solarize: blurred, heavily downscaled values cluster at 0.5, next to its threshold, where a
    # rounding difference flips the pixel.)
    p = blurred(imgs, 94, lo, hi, **ONLY["all"])
    for size in [(12, 20), (3, 1), (57, 31)]:
        assert_close01(
            fused_augment(imgs, size, params=p, impl="cpu"), fused_augment(imgs, size, params=p, impl="torch")
        )


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_cpu_op_matches_reference_with_blur_dtypes(interpolation, dtype):
    imgs = images_of("nhwc", [(45, 37)] * 5, seed=95)
    p = params_with(imgs, 96, **ONLY["all_strong"], blur_p=0.6)
    kw = dict(params=p, interpolation=interpolation)
    expected = fused_augment(imgs, (24, 19), impl="torch", **kw)
    out = fused_augment(imgs, (24, 19), impl="cpu", out_dtype=dtype, **kw)
    assert_close01(out, expected, dtype)
    cl = fused_augment(imgs, (24, 19), impl="cpu", out_dtype=dtype, channels_last=True, **kw)
    torch.testing.assert_close(cl, out, rtol=0, atol=0)


def test_blur_uint8_output():
    imgs = images_of("nhwc", [(30, 30)] * 3, seed=97)
    p = blurred(imgs, 98, 0.5, 3.0)
    f32 = fused_augment(imgs, 17, params=p, impl="cpu", **PLAIN)
    u8 = fused_augment(imgs, 17, params=p, impl="cpu", out_dtype=torch.uint8)
    torch.testing.assert_close(u8, (f32 * 255).round().clamp(0, 255).to(torch.uint8), rtol=0, atol=0)
    ref_u8 = fused_augment(imgs, 17, params=p, impl="torch", out_dtype=torch.uint8)
    assert (u8.int() - ref_u8.int()).abs().max() <= 1


@pytest.mark.parametrize("impl", ["cpu", "torch"])
def test_sigma_zero_is_identity(impl):
    imgs = images_of("list", [(20, 30), (41, 17), (1, 1)], seed=99)
    p = params_with(imgs, 100, **ONLY["all_strong"], solarize_p=0.5)
    assert not (p.blur_sigma != 0).any()
    plain = fused_augment(imgs, (13, 11), params=p, impl=impl)
    p.blur_sigma = torch.zeros(3)
    torch.testing.assert_close(fused_augment(imgs, (13, 11), params=p, impl=impl), plain, rtol=0, atol=0)
    # Only the images with sigma > 0 change.
    p.blur_sigma = torch.tensor([0.0, 1.5, 0.0])
    out = fused_augment(imgs, (13, 11), params=p, impl=impl)
    torch.testing.assert_close(out[0], plain[0], rtol=0, atol=0)
    torch.testing.assert_close(out[2], plain[2], rtol=0, atol=0)
    assert not torch.allclose(out[1], plain[1])


def test_op_blur_sigma_none_equals_zeros():
    args = _op_args()
    none = op()(*args)
    zeros = op()(*args, True, None, False, 0, torch.zeros(3))
    torch.testing.assert_close(none, zeros, rtol=0, atol=0)
    assert not torch.equal(none, op()(*args, True, None, False, 0, torch.full((3,), 1.0)))


def torchvision_gaussian_blur(x: torch.Tensor, kernel_size: list[int], sigma: list[float]) -> torch.Tensor:
    """torchvision v2 F.gaussian_blur_image on a float [C, H, W] image, transcribed
    (kernel_size and sigma are (x, y))."""

    def kernel1d(k: int, s: float) -> torch.Tensor:
        lim = (k - 1) / (2.0 * math.sqrt(2.0) * s)
        x = torch.linspace(-lim, lim, steps=k, dtype=torch.float32).view(1, -1)
        return torch.softmax(x.pow(2).neg(), dim=1)

    kx, ky = kernel1d(kernel_size[0], sigma[0]), kernel1d(kernel_size[1], sigma[1])
    kernel = torch.mm(ky.T, kx).expand(x.shape[-3], 1, kernel_size[1], kernel_size[0])
    pad = [kernel_size[0] // 2, kernel_size[0] // 2, kernel_size[1] // 2, kernel_size[1] // 2]
    return F.conv2d(F.pad(x[None], pad, mode="reflect"), kernel, groups=x.shape[-3])[0]


@pytest.mark.parametrize(("h", "w", "sigma"), [(30, 40, 1.3), (7, 50, 2.0), (5, 5, 9.0), (1, 12, 0.7)])
def test_reference_blur_is_torchvision_gaussian_blur(h, w, sigma):
    x = torch.rand(3, h, w, generator=torch.Generator().manual_seed(101))
    k = 2 * math.ceil(3 * sigma) + 1
    kx, ky = min(k, 2 * w - 1), min(k, 2 * h - 1)
    torch.testing.assert_close(
        ref.gaussian_blur(x, sigma), torchvision_gaussian_blur(x, [kx, ky], [sigma, sigma]), rtol=0, atol=1e-6
    )


def test_kernel_size_rule():
    assert [2 * ref.blur_radius(s, 1000) + 1 for s in (0.1, 1 / 3, 0.34, 1.0, 2.0, 3.5)] == [
        3,
        3,
        5,
        7,
        13,
        23,
    ]
    assert ref.blur_radius(2.0, 4) == 3 and ref.blur_radius(2.0, 1) == 0  # clipped to n - 1


@pytest.mark.parametrize("impl", ["cpu", "torch"])
@pytest.mark.parametrize("sigma", [0.4, 1.5, 2.0])
def test_blur_support_is_the_kernel_size(impl, sigma):
    # An impulse in the middle of a 41 x 41 image (identity crop): the blurred output is non-zero
    # exactly on the (2r + 1) x (2r + 1) square around it, r = ceil(3 sigma).
    img = torch.zeros(1, 41, 41, 3, dtype=torch.uint8)
    img[0, 20, 20] = 255
    p = AugmentParams.identity([(41, 41)])
    p.blur_sigma = torch.tensor([sigma])
    out = fused_augment(img, 41, params=p, impl=impl, **PLAIN)[0, 0]
    r = math.ceil(3 * sigma)
    rows = (out > 0).any(1).nonzero()[:, 0]
    cols = (out > 0).any(0).nonzero()[:, 0]
    assert rows.tolist() == list(range(20 - r, 21 + r)) and cols.tolist() == list(range(20 - r, 21 + r))
    assert math.isclose(out.sum().item(), 1.0, rel_tol=1e-5)


@pytest.mark.parametrize("impl", ["cpu", "torch"])
def test_blur_keeps_a_constant_image(impl):
    imgs = torch.full((2, 9, 33, 3), 200, dtype=torch.uint8)
    p = AugmentParams.identity([(9, 33)] * 2)
    p.blur_sigma = torch.tensor([1.0, 50.0])
    out = fused_augment(imgs, (9, 33), params=p, impl=impl, **PLAIN)
    torch.testing.assert_close(out, torch.full_like(out, 200 / 255), rtol=0, atol=2e-6)


@pytest.mark.parametrize("impl", ["cpu", "torch"])
def test_blur_runs_after_grayscale_and_jitter_before_solarize(impl):
    imgs = images_of("nhwc", [(16, 14)] * 2, seed=102)
    p = AugmentParams.identity([(16, 14)] * 2)
    p.jitter[:] = True
    p.brightness[:] = 1.6
    p.grayscale[:] = True
    p.solarize[:] = True
    p.blur_sigma = torch.tensor([1.2, 0.8])
    out = fused_augment(imgs, (16, 14), params=p, impl=impl, **PLAIN)
    x = (1.6 * (imgs.permute(0, 3, 1, 2).float() / 255.0)).clamp(0, 1)
    gray = [ref.rgb_to_gray(xi)[None].expand(3, -1, -1) for xi in x]
    pairs = list(zip(gray, [1.2, 0.8], strict=True))
    expected = torch.stack([ref.solarize(ref.gaussian_blur(g, s)) for g, s in pairs])
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-5)
    other = torch.stack([ref.gaussian_blur(ref.solarize(g), s) for g, s in pairs])
    assert (out - other).abs().max() > 1e-2


@pytest.mark.parametrize("impl", ["cpu", "torch"])
def test_blur_commutes_with_flip(impl):
    imgs = images_of("list", [(30, 26), (19, 40)], seed=103)
    p = blurred(imgs, 104, 0.5, 3.0, **ONLY["all_strong"])
    p.flip[:] = False
    plain = fused_augment(imgs, (14, 15), params=p, impl=impl)
    p.flip[:] = True
    torch.testing.assert_close(
        fused_augment(imgs, (14, 15), params=p, impl=impl), plain.flip(-1), rtol=0, atol=1e-5
    )


def test_blur_row_parallel_path_equals_image_parallel_path():
    imgs = images_of("nhwc", [(64, 80)] * 4, seed=105)
    p = blurred(imgs, 106, 0.5, 4.0, **ONLY["all_strong"])
    prev = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        one = [
            fused_augment(
                imgs[i : i + 1],
                33,
                params=AugmentParams(**{k: v[i : i + 1] for k, v in vars(p).items()}),
                impl="cpu",
            )
            for i in range(4)
        ]
        whole = fused_augment(imgs, 33, params=p, impl="cpu")
    finally:
        torch.set_num_threads(prev)
    torch.testing.assert_close(torch.cat(one), whole, rtol=0, atol=0)


def test_blur_p_sampling():
    n = 20000
    sizes = [(50, 60)] * n
    g = torch.Generator().manual_seed(107)
    p = sample_augment_params(sizes, blur_p=0.3, blur_sigma=(0.5, 1.5), solarize_p=0.2, generator=g)
    on = p.blur_sigma > 0
    assert p.blur_sigma.dtype == torch.float32
    assert abs(on.float().mean().item() - 0.3) < 5 * math.sqrt(0.3 * 0.7 / n)
    s = p.blur_sigma[on]
    assert s.min() >= 0.5 and s.max() <= 1.5
    # Uniform on [0.5, 1.5]: mean 1, standard deviation 1 / sqrt(12).
    assert abs(s.mean().item() - 1.0) < 5 / math.sqrt(12 * s.numel())
    q = sample_augment_params(sizes, solarize_p=0.2, generator=torch.Generator().manual_seed(107))
    assert not (q.blur_sigma != 0).any()  # default blur_p = 0
    # The blur draws come after all others: every other parameter is unchanged by blur_p.
    for name in ("boxes", "flip", "jitter", "brightness", "contrast", "saturation", "hue", "order"):
        assert torch.equal(getattr(p, name), getattr(q, name)), name
    assert torch.equal(p.grayscale, q.grayscale) and torch.equal(p.solarize, q.solarize)
    everywhere = sample_augment_params(sizes[:100], blur_p=1.0, blur_sigma=(2.0, 2.0))
    assert (everywhere.blur_sigma == 2.0).all()


def test_default_blur_is_off_and_optional():
    p = AugmentParams.identity([(5, 5)])
    fields = {k: v for k, v in vars(p).items() if k != "blur_sigma"}
    q = AugmentParams(**fields)
    assert q.blur_sigma.dtype == torch.float32 and q.blur_sigma.shape == (1,) and not q.blur_sigma.any()


def test_blur_sigma_is_passed_to_the_op_only_when_needed():
    imgs = images_of("nhwc", [(40, 40)] * 3)

    def tensors_passed(**kw):
        with _OpLog() as log:
            fused_augment(imgs, 16, impl="cpu", **kw)
        return [len(devs) for name, devs in log.calls if name == "vlkernels.fused_augment.default"]

    assert tensors_passed() == [9]  # no blur_sigma: the CUDA op allocates no blur workspace
    assert tensors_passed(blur_p=0.5) == [10]
    p = AugmentParams.identity([(40, 40)] * 3)
    assert tensors_passed(params=p) == [9]
    p.blur_sigma[1] = 0.7
    assert tensors_passed(params=p) == [10]


def test_blur_argument_errors():
    imgs = images_of("nhwc", [(10, 12)] * 2)
    for bad in (-0.5, math.nan, math.inf):
        p = AugmentParams.identity([(10, 12)] * 2)
        p.blur_sigma[1] = bad
        for impl in ("cpu", "torch"):
            with pytest.raises(ValueError, match="AugmentParams.blur_sigma must be finite and >= 0"):
                fused_augment(imgs, 8, params=p, impl=impl)
    p = AugmentParams.identity([(10, 12)] * 2)
    p.blur_sigma = torch.zeros(2, dtype=torch.int64)
    with pytest.raises(TypeError, match="AugmentParams.blur_sigma must have one of the dtypes"):
        fused_augment(imgs, 8, params=p)
    p.blur_sigma = torch.zeros(3)
    with pytest.raises(ValueError, match="AugmentParams.blur_sigma has 3 rows for 2 images"):
        fused_augment(imgs, 8, params=p)
    with pytest.raises(ValueError, match="blur_p must be finite and in"):
        fused_augment(imgs, 8, blur_p=1.5)
    with pytest.raises(ValueError, match="blur_sigma must satisfy"):
        sample_augment_params([(10, 12)], blur_sigma=(2.0, 1.0))
    with pytest.raises(ValueError, match="blur_sigma must satisfy"):
        sample_augment_params([(10, 12)], blur_sigma=(-1.0, 1.0))
    with pytest.raises(ValueError, match="blur_sigma must be at most"):
        sample_augment_params([(10, 12)], blur_sigma=(1.0, 1e39))
    args = _op_args()
    with pytest.raises(RuntimeError, match=r"blur_sigma must have shape \[3\]"):
        op()(*args, True, None, False, 0, torch.zeros(2))
    with pytest.raises(RuntimeError, match="blur_sigma must be Float"):
        op()(*args, True, None, False, 0, torch.zeros(3, dtype=torch.float64))
    for bad in (-1.0, math.nan, math.inf):
        with pytest.raises(RuntimeError, match="blur_sigma of image 1 is .*: must be finite and >= 0"):
            op()(*args, True, None, False, 0, torch.tensor([0.5, bad, 0.0]))


def test_opcheck_with_blur():
    args = (*_op_args(), True, torch.tensor([True, False, True]), False, 1, torch.tensor([0.0, 1.5, 40.0]))
    torch.library.opcheck(op(), args)
