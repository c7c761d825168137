"""Solarize in the fused augmentation (threshold 128/255, after the colour ops and grayscale, before
normalisation): the C++ CPU op against the PyTorch reference, and the reference against torchvision
v2's rule (``F.solarize`` on a float image: x >= threshold -> 1 - x) written out from the uint8 input.

torchvision is not installed here (and not pulled by CI), so the rule is transcribed rather than
imported. Tolerances as in test_augment.py.
"""

from __future__ import annotations

import math

import pytest
import torch

from tests.test_augment import ONLY, _op_args, assert_close01, images_of, params_with
from vlkernels.augment import AugmentParams, fused_augment, sample_augment_params
from vlkernels.augment import reference as ref
from vlkernels.augment._op import op

PLAIN = dict(mean=(0, 0, 0), std=(1, 1, 1))


@pytest.mark.parametrize("what", ["crop", "all", "all_strong", "grayscale", "contrast", "hue"])
@pytest.mark.parametrize("p", [1.0, 0.5])
def test_cpu_op_matches_reference_with_solarize(what, p):
    imgs = images_of("list", [(23, 31), (40, 12), (7, 9), (64, 64)], seed=50)
    params = params_with(imgs, seed=51, **ONLY[what], solarize_p=p)
    if p == 1.0:
        assert params.solarize.all()
    out = fused_augment(imgs, (13, 17), params=params, impl="cpu")
    assert_close01(out, fused_augment(imgs, (13, 17), params=params, impl="torch"))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_cpu_op_matches_reference_with_solarize_low_precision(dtype):
    imgs = images_of("nhwc", [(30, 30)] * 4, seed=52)
    params = params_with(imgs, seed=53, **ONLY["all_strong"], solarize_p=0.5)
    out = fused_augment(imgs, 12, params=params, impl="cpu", out_dtype=dtype)
    assert_close01(out, fused_augment(imgs, 12, params=params, impl="torch"), dtype)


@pytest.mark.parametrize("impl", ["cpu", "torch"])
@pytest.mark.parametrize("kind", ["nhwc", "nchw", "list"])
def test_solarize_of_identity_crop_is_torchvision_rule(impl, kind):
    # Every byte value, so both sides of the threshold and the threshold itself (128) are hit.
    img = torch.arange(256 * 3, dtype=torch.int64).remainder(256).to(torch.uint8).view(16, 16, 3)
    imgs = [img, img.flip(0)] if kind == "list" else torch.stack([img, img.flip(0)])
    if kind == "nchw":
        imgs = imgs.permute(0, 3, 1, 2).contiguous()
    p = AugmentParams.identity([(16, 16)] * 2)
    p.solarize[:] = True
    out = fused_augment(imgs, 16, params=p, impl=impl, **PLAIN)
    x = torch.stack([img, img.flip(0)]).permute(0, 3, 1, 2)
    # torchvision v2: F.solarize(F.to_dtype(x, float32, scale=True), 128 / 255).
    xf = x.float() / 255.0
    expected = torch.where(xf >= 128 / 255, 1.0 - xf, xf)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    # The threshold sits exactly at byte 128: 128 flips, 127 does not.
    assert torch.equal(x >= 128, xf >= 128 / 255)


@pytest.mark.parametrize("impl", ["cpu", "torch"])
def test_solarize_runs_after_grayscale_and_jitter(impl):
    imgs = images_of("nhwc", [(10, 10)] * 2, seed=54)
    p = AugmentParams.identity([(10, 10)] * 2)
    p.solarize[:] = True
    p.grayscale[:] = True
    p.jitter[:] = True
    p.brightness[:] = 1.7
    out = fused_augment(imgs, 10, params=p, impl=impl, **PLAIN)
    x = imgs.permute(0, 3, 1, 2).float() / 255.0
    bright = (1.7 * x).clamp(0, 1)
    gray = ref.rgb_to_gray(bright.transpose(0, 1))[:, None].expand(-1, 3, -1, -1)
    expected = ref.solarize(gray)
    torch.testing.assert_close(out, expected, rtol=0, atol=2e-6)
    assert torch.equal(out[:, 0], out[:, 1])
    # Not grayscale of the solarized image.
    assert not torch.allclose(
        out, ref.rgb_to_gray(ref.solarize(bright).transpose(0, 1))[:, None].expand(-1, 3, -1, -1)
    )


@pytest.mark.parametrize("impl", ["cpu", "torch"])
def test_solarize_commutes_with_flip(impl):
    imgs = images_of("nhwc", [(30, 26)] * 3, seed=55)
    p = params_with(imgs, seed=56, **ONLY["all_strong"], solarize_p=1.0)
    p.flip[:] = False
    plain = fused_augment(imgs, (14, 15), params=p, impl=impl)
    p.flip[:] = True
    torch.testing.assert_close(
        fused_augment(imgs, (14, 15), params=p, impl=impl), plain.flip(-1), rtol=0, atol=1e-6
    )


def test_solarize_p_sampling():
    n = 20000
    sizes = [(50, 60)] * n
    p = sample_augment_params(sizes, solarize_p=0.3, generator=torch.Generator().manual_seed(57))
    rate = p.solarize.float().mean().item()
    assert abs(rate - 0.3) < 5 * math.sqrt(0.3 * 0.7 / n)
    q = sample_augment_params(sizes, generator=torch.Generator().manual_seed(57))
    assert not q.solarize.any()  # default 0
    # The solarize coin is drawn last: every other parameter is unchanged by solarize_p.
    for name in (
        "boxes",
        "flip",
        "jitter",
        "brightness",
        "contrast",
        "saturation",
        "hue",
        "order",
        "grayscale",
    ):
        assert torch.equal(getattr(p, name), getattr(q, name)), name


def test_default_solarize_is_off_and_optional():
    p = AugmentParams.identity([(5, 5)])
    fields = {k: v for k, v in vars(p).items() if k != "solarize"}
    q = AugmentParams(**fields)
    assert q.solarize.dtype == torch.bool and q.solarize.shape == (1,) and not q.solarize.any()
    args = _op_args()
    none = op()(*args)
    zeros = op()(*args, True, torch.zeros(3, dtype=torch.bool))
    torch.testing.assert_close(none, zeros, rtol=0, atol=0)
    ones = op()(*args, True, torch.ones(3, dtype=torch.bool))
    assert not torch.equal(none, ones)


def test_solarize_argument_errors():
    imgs = images_of("nhwc", [(10, 12)] * 2)
    p = AugmentParams.identity([(10, 12)] * 2)
    p.solarize = p.solarize.float()
    with pytest.raises(TypeError, match="AugmentParams.solarize must have one of the dtypes"):
        fused_augment(imgs, 8, params=p)
    p.solarize = torch.zeros(2, 2, dtype=torch.bool)
    with pytest.raises(ValueError, match=r"AugmentParams.solarize must have shape \[2\]"):
        fused_augment(imgs, 8, params=p)
    with pytest.raises(ValueError, match="solarize_p must be finite and in"):
        fused_augment(imgs, 8, solarize_p=1.5)
    with pytest.raises(ValueError, match="solarize_p must be finite and in"):
        sample_augment_params([(10, 12)], solarize_p=math.nan)
    with pytest.raises(RuntimeError, match=r"solarize must have shape \[3\]"):
        op()(*_op_args(), True, torch.zeros(2, dtype=torch.bool))
    with pytest.raises(RuntimeError, match="solarize must be Bool"):
        op()(*_op_args(), True, torch.zeros(3))


def test_opcheck_with_solarize():
    args = (*_op_args(), True, torch.tensor([True, False, True]))
    torch.library.opcheck(op(), args)
