"""Parity with the real torchvision v2: ``torchvision.transforms.v2.functional`` on float images, with the
per-sample parameters taken from our ``AugmentParams``, against the C++ CPU op and the PyTorch reference
(the CUDA op: tests/test_gpu_augment.py).

Every op alone (after the resized crop the op always does): resized crop (bilinear and bicubic,
antialiased), flip, brightness, contrast, saturation, hue, grayscale, Gaussian blur (our kernel-size
rule, 2 * ceil(3 sigma) + 1 clipped to 2 n - 1 per axis, passed to ``F.gaussian_blur`` explicitly),
solarize (128/255), normalise; and the whole chain in our order: crop -> colour jitter in the sample's
op order -> grayscale -> blur -> solarize -> flip -> normalise (the flip commutes with every op after
the crop; the op flips right after the resize). torchvision's float chain starts from
``F.to_dtype(uint8, float32, scale=True)``. Its bicubic resize of a float image is not clamped; the op
clamps it to [0, 1] (as torchvision does for uint8 images), so the torchvision side here is followed by
``clamp(0, 1)`` after a bicubic resize (test_bicubic_differs_from_torchvision_only_by_the_clamp shows
the overshoot this removes).

Images: photographs bundled in scikit-image's wheel (``skimage.data``: astronaut 512x512, coffee
400x600, chelsea 300x451, rocket 427x640; read from the installed package, no download) and generated
ones (uniform noise, a saturated hue wheel with a gray ramp, flat primaries with exact channel ties,
a small image that is upscaled, a wide strip).

Tolerance, on the [0, 1] scale (normalised outputs are multiplied back by std): max abs error
<= 2^-17 = 64 float32 ulps at 1.0 (~0.002 / 255). Both sides compute in float32 with the same formulas
but different evaluation orders (resampling weights and sums, the mean of the contrast op, the HSV
round trip, the blur's separable vs 2-d kernel), so each op's result may differ by a few ulps, and the
contrast / saturation factors (up to 1.9) amplify the differences of the ops before them. Measured on
these images: each op alone at most 3.7e-4 / 255 (hue, blur), the whole chain at most 6.1e-4 / 255
(2.4e-6, ~20 ulps; mean 2.5e-5 / 255), so the bound has a margin of ~3x, and it is ~500x below the
uint8 step (1/255): an output that meets it rounds to the same byte as torchvision's float output
except within 2^-17 of a rounding boundary. Solarize is a step at
128/255: where torchvision's input to it lies within that tolerance of the threshold, either branch is
accepted (the outputs that take the other branch are asserted to be rare: one in 600k on a photo).

torchvision's uint8 chain is not what the op follows (it truncates after every colour op):
test_torchvision_uint8_chain_is_darker_than_the_float_chain measures its distance from the float chain
(64 strong-view samples of the photographs: max |difference| 9.0 / 255, mean -1.22 / 255, -1.49 / 255
over the jittered samples).
"""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
import torch

import tests._torchvision_shim  # noqa: F401  (before torchvision: CPU torch with a CUDA torchvision wheel)
from vlkernels.augment import CLIP_MEAN, CLIP_STD, AugmentParams, fused_augment, sample_augment_params
from vlkernels.augment import reference as ref

import skimage.data  # noqa: E402  isort: skip
from torchvision.transforms import InterpolationMode  # noqa: E402  isort: skip
from torchvision.transforms.v2 import functional as TF  # noqa: E402  isort: skip

TOL01 = 2.0**-17  # max abs error on the [0, 1] scale (see the module docstring)
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")
SIZE = 224
PLAIN = dict(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
CLIP = dict(mean=CLIP_MEAN, std=CLIP_STD)
SOLARIZE_THRESHOLD = 128 / 255
JITTER_OPS = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)
MODES = {"bilinear": InterpolationMode.BILINEAR, "bicubic": InterpolationMode.BICUBIC}


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # Per-sample 224 x 224 tensor ops: with several threads on a shared machine the intra-op thread pool
    # costs tens of times the work (spinning OpenMP workers); one thread keeps the module at seconds.
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(prev)


@functools.cache
def _photos() -> tuple[torch.Tensor, ...]:
    return tuple(torch.from_numpy(np.ascontiguousarray(getattr(skimage.data, n)())) for n in PHOTOS)


@functools.cache
def _generated() -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(0)
    noise = torch.randint(0, 256, (181, 237, 3), dtype=torch.uint8, generator=g)
    # Hue wheel (full saturation and value) over the top half, a gray ramp (chroma 0) below.
    h, w = 160, 300
    hue = torch.linspace(0, 1, w).expand(h // 2, w)
    k = torch.stack([(5 + hue * 6) % 6, (3 + hue * 6) % 6, (1 + hue * 6) % 6])
    wheel = 1 - (torch.minimum(k, 4 - k).clamp(0, 1))
    ramp = torch.linspace(0, 1, w).expand(3, h - h // 2, w)
    wheel = (torch.cat([wheel, ramp], 1) * 255).round().to(torch.uint8).permute(1, 2, 0).contiguous()
    # Flat blocks of primaries, secondaries, black, white: channel ties (max == min, two equal maxima).
    colours = torch.tensor(
        [[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0], [0, 255, 255], [255, 0, 255]]
        + [[0, 0, 0], [255, 255, 255], [128, 128, 128], [200, 200, 40], [40, 200, 200], [127, 128, 129]],
        dtype=torch.uint8,
    )
    blocks = colours.view(3, 4, 1, 1, 3).expand(3, 4, 40, 50, 3).permute(0, 2, 1, 3, 4).reshape(120, 200, 3)
    small = torch.randint(0, 256, (37, 29, 3), dtype=torch.uint8, generator=g)  # upscaled to 224
    strip = torch.randint(0, 256, (23, 611, 3), dtype=torch.uint8, generator=g)
    return noise, wheel, blocks.contiguous(), small, strip


def images(which: str) -> list[torch.Tensor]:
    return list(_photos() if which == "photos" else _generated())


def torchvision_chain(
    img: torch.Tensor,
    p: AugmentParams,
    i: int,
    size: tuple[int, int],
    interpolation: str,
    mean,
    std,
    dtype: torch.dtype = torch.float32,
    clamp_bicubic: bool = True,
    tol: float = TOL01,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Output i of the chain with torchvision v2's functional ops on one [H, W, 3] uint8 image, with
    row i of ``p``: crop -> jitter (the sample's order) -> grayscale -> blur -> solarize -> flip ->
    normalise. dtype float32: the float chain (``to_dtype`` first); uint8: every op on the uint8 image
    (torchvision's uint8 kernels), ``to_dtype`` just before normalising.

    Returns (expected, other): ``other`` differs only where the solarize input lies within ``tol`` of
    the threshold (there it takes the other branch); float chain only."""
    x = img.permute(2, 0, 1)
    if dtype == torch.float32:
        x = TF.to_dtype(x, torch.float32, scale=True)
    top, left, h, w = p.boxes[i].tolist()
    x = TF.resized_crop(x, top, left, h, w, list(size), interpolation=MODES[interpolation], antialias=True)
    if interpolation == "bicubic" and dtype == torch.float32 and clamp_bicubic:
        x = x.clamp(0.0, 1.0)
    if p.jitter[i]:
        factors = [p.brightness[i].item(), p.contrast[i].item(), p.saturation[i].item(), p.hue[i].item()]
        for op in p.order[i].tolist():
            x = JITTER_OPS[op](x, factors[op])
    if p.grayscale[i]:
        x = TF.rgb_to_grayscale(x, num_output_channels=3)
    sigma = p.blur_sigma[i].item()
    if sigma > 0:
        # Our kernel-size rule, given explicitly ((x, y) order, as torchvision takes it).
        kx = 2 * ref.blur_radius(sigma, x.shape[-1]) + 1
        ky = 2 * ref.blur_radius(sigma, x.shape[-2]) + 1
        x = TF.gaussian_blur(x, [kx, ky], [sigma, sigma])
    other = x
    if p.solarize[i]:
        threshold = SOLARIZE_THRESHOLD if dtype == torch.float32 else 128
        near = (
            (x - SOLARIZE_THRESHOLD).abs() <= tol
            if dtype == torch.float32
            else torch.zeros_like(x, dtype=bool)
        )
        solar = TF.solarize(x, threshold)
        other = torch.where(near, torch.where(solar == x, TF.invert(x), x), solar)
        x = solar
    if p.flip[i]:
        x, other = TF.horizontal_flip(x), TF.horizontal_flip(other)
    if dtype != torch.float32:
        x = other = TF.to_dtype(x, torch.float32, scale=True)
    return tuple(TF.normalize(t, list(mean), list(std)) for t in (x, other))


def parity_error(
    imgs,
    p: AugmentParams,
    size,
    interpolation: str,
    impl: str,
    norm: dict,
    tol: float = TOL01,
    max_other_branch: float | None = 1e-5,
) -> torch.Tensor:
    """Per-element |op - torchvision| on the [0, 1] scale (the smaller of the two solarize branches
    where torchvision's solarize input is within ``tol`` of the threshold). The images and ``p`` may be
    on a GPU: torchvision then runs there too. ``max_other_branch``: the largest fraction of outputs
    allowed to take solarize's other branch (None: no limit)."""
    out = fused_augment(imgs, size, params=p, impl=impl, interpolation=interpolation, **norm)
    src = range(len(imgs)) if p.source is None else p.source.tolist()
    pairs = [
        torchvision_chain(imgs[s], p, m, size, interpolation, **norm, tol=tol) for m, s in enumerate(src)
    ]
    expected = torch.stack([e for e, _ in pairs]).to(out.device)
    other = torch.stack([o for _, o in pairs]).to(out.device)
    scale = torch.tensor(norm["std"], device=out.device)[:, None, None]
    err, err_other = (out - expected).abs() * scale, (out - other).abs() * scale
    # The other branch of solarize, taken where its input sits at the threshold: rare (flat regions of
    # byte 128 make many inputs equal to it up to rounding, of which a few per million round across).
    other_branch = ((err > tol) & (err_other <= tol)).sum().item()
    if max_other_branch is not None:
        assert other_branch <= max_other_branch * out.numel(), f"{other_branch} took solarize's other branch"
    return torch.minimum(err, err_other)


def assert_parity(err: torch.Tensor, tol: float = TOL01) -> None:
    worst = err.max().item()
    assert worst <= tol, (
        f"max abs error {worst:.3g} ({worst * 255:.3g} / 255) exceeds {tol:.3g} ({tol * 255:.3g} / 255); "
        f"mean {err.mean().item() * 255:.3g} / 255"
    )


OFF = dict(hflip_p=0.0, jitter_p=0.0, grayscale_p=0.0)
# Each op alone (after the crop, which is always there), its parameters drawn per sample.
EACH_OP = {
    "crop_bilinear": ("bilinear", OFF),
    "crop_bicubic": ("bicubic", OFF),
    "flip": ("bilinear", dict(OFF, hflip_p=1.0)),
    "brightness": ("bilinear", dict(OFF, jitter_p=1.0, jitter=(0.9, 0.0, 0.0, 0.0))),
    "contrast": ("bilinear", dict(OFF, jitter_p=1.0, jitter=(0.0, 0.9, 0.0, 0.0))),
    "saturation": ("bilinear", dict(OFF, jitter_p=1.0, jitter=(0.0, 0.0, 0.9, 0.0))),
    "hue": ("bilinear", dict(OFF, jitter_p=1.0, jitter=(0.0, 0.0, 0.0, 0.5))),
    "grayscale": ("bilinear", dict(OFF, grayscale_p=1.0)),
    "gaussian_blur": ("bilinear", dict(OFF, blur_p=1.0, blur_sigma=(0.1, 5.0))),
    "solarize": ("bilinear", dict(OFF, solarize_p=1.0)),
    "normalize": ("bilinear", OFF),
}
# The whole chain: SimCLR / CLIP strong-view settings, and stronger jitter with every op likely on.
RECIPES = {
    "strong_view": dict(
        jitter=(0.4, 0.4, 0.4, 0.1), jitter_p=0.8, grayscale_p=0.2, blur_p=0.5, solarize_p=0.2
    ),
    "extreme": dict(jitter=(0.9, 0.9, 0.9, 0.5), jitter_p=1.0, grayscale_p=0.3, blur_p=0.7, solarize_p=0.5),
}


@pytest.mark.parametrize("impl", ["cpu", "torch"])
@pytest.mark.parametrize("which", ["photos", "generated"])
@pytest.mark.parametrize("what", list(EACH_OP))
def test_each_op_matches_torchvision(what, which, impl):
    interpolation, settings = EACH_OP[what]
    imgs = images(which)
    p = sample_augment_params(imgs, generator=torch.Generator().manual_seed(len(what)), **settings)
    norm = CLIP if what == "normalize" else PLAIN
    assert_parity(parity_error(imgs, p, (SIZE, SIZE), interpolation, impl, norm))


@pytest.mark.parametrize("impl", ["cpu", "torch"])
@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
@pytest.mark.parametrize("recipe", list(RECIPES))
@pytest.mark.parametrize("which", ["photos", "generated"])
def test_full_chain_matches_torchvision(which, recipe, interpolation, impl):
    imgs = images(which)
    # Two views per image (each with its own crop and draws), read through AugmentParams.source.
    views = [dict(scale=(0.08, 1.0)), dict(scale=(0.4, 1.0))]
    p = sample_augment_params(
        imgs, generator=torch.Generator().manual_seed(7), views=views, **RECIPES[recipe]
    )
    assert p.jitter.any() and p.blur_sigma.gt(0).any() and p.flip.any()
    assert_parity(parity_error(imgs, p, (SIZE, SIZE), interpolation, impl, CLIP))


@pytest.mark.parametrize("impl", ["cpu", "torch"])
@pytest.mark.parametrize("size", [(24, 40), (7, 5)])
def test_blur_kernel_clipped_to_small_outputs_matches_torchvision(impl, size):
    # Large sigmas at small outputs: the kernel is clipped per axis to 2 n - 1 (reflect padding < n), so
    # torchvision gets different kernel sizes for x and y.
    imgs = images("generated")
    p = sample_augment_params(
        imgs, generator=torch.Generator().manual_seed(3), blur_p=1.0, blur_sigma=(8.0, 40.0)
    )
    assert all(2 * ref.blur_radius(s, size[0]) + 1 < 2 * math.ceil(3 * s) + 1 for s in p.blur_sigma.tolist())
    for interpolation in ("bilinear", "bicubic"):
        assert_parity(parity_error(imgs, p, size, interpolation, impl, CLIP))


@pytest.mark.parametrize("impl", ["cpu", "torch"])
def test_bicubic_differs_from_torchvision_only_by_the_clamp(impl):
    # torchvision's float bicubic overshoots [0, 1] next to edges; the op's output is exactly the
    # clamped result, so it differs from the unclamped one only where torchvision leaves [0, 1].
    imgs = images("generated") + images("photos")[:1]
    p = sample_augment_params(imgs, generator=torch.Generator().manual_seed(5), **OFF)
    out = fused_augment(imgs, SIZE, params=p, impl=impl, interpolation="bicubic", **PLAIN)
    tv = torch.stack(
        [
            torchvision_chain(im, p, i, (SIZE, SIZE), "bicubic", **PLAIN, clamp_bicubic=False)[0]
            for i, im in enumerate(imgs)
        ]
    )
    outside = (tv < 0) | (tv > 1)
    assert outside.float().mean() > 1e-3 and (tv.min() < -0.02 or tv.max() > 1.02)
    assert (out - tv).abs()[~outside].max() <= TOL01
    assert_parity((out - tv.clamp(0, 1)).abs())


@pytest.mark.parametrize("impl", ["cpu", "torch"])
def test_unclamped_float_bicubic_then_hue_is_nan_in_torchvision(impl):
    # Why the op clamps: a blue stripe on black, bicubic-downscaled, undershoots below 0 in blue where red
    # and green are exactly 0. torchvision's adjust_hue then divides by max(r, g, b) = 0 (saturation =
    # chroma / max): NaN, which the contrast op's image mean spreads over the whole image (seen on 5 of
    # 64 strong-view samples of the photographs). The op (and torchvision with the clamp) stays finite.
    img = torch.zeros(64, 64, 3, dtype=torch.uint8)
    img[:, 30:34, 2] = 255
    p = AugmentParams.identity([(64, 64)])
    p.jitter[:] = True
    p.hue[:] = 0.05
    p.contrast[:] = 1.2
    p.order[:] = torch.tensor([3, 1, 0, 2])
    unclamped = torchvision_chain(img, p, 0, (24, 24), "bicubic", **PLAIN, clamp_bicubic=False)[0]
    assert unclamped.isnan().all()
    out = fused_augment([img], 24, params=p, impl=impl, interpolation="bicubic", **PLAIN)
    assert out.isfinite().all()
    assert_parity(parity_error([img], p, (24, 24), "bicubic", impl, PLAIN))


def test_torchvision_uint8_chain_is_darker_than_the_float_chain():
    # torchvision's uint8 kernels round the resize, then truncate after every colour op (_blend casts
    # with .to(uint8)) and floor the contrast mean: the uint8 chain comes out darker than the float chain
    # that the op follows. Measured on the strong-view recipe (bicubic, jitter 0.4 / 0.1 p 0.8, gray 0.2,
    # blur p 0.5, flip), three views of each photograph; both chains' outputs on the [0, 1] scale.
    imgs = images("photos")
    views = [dict(scale=(0.08, 1.0))] * 3
    settings = dict(jitter=(0.4, 0.4, 0.4, 0.1), jitter_p=0.8, grayscale_p=0.2, blur_p=0.5)
    p = sample_augment_params(imgs, generator=torch.Generator().manual_seed(11), views=views, **settings)
    src = p.source.tolist()
    as_float = torch.stack(
        [torchvision_chain(imgs[s], p, m, (SIZE, SIZE), "bicubic", **PLAIN)[0] for m, s in enumerate(src)]
    )
    as_uint8 = torch.stack(
        [
            torchvision_chain(imgs[s], p, m, (SIZE, SIZE), "bicubic", **PLAIN, dtype=torch.uint8)[0]
            for m, s in enumerate(src)
        ]
    )
    diff = (as_uint8 - as_float) * 255
    # Max |difference| a few / 255 (the truncations add up over up to four colour ops and grow with the
    # contrast / saturation factors), and darker on average by about half a level per truncating op.
    assert 2.0 < diff.abs().max().item() < 16.0
    assert -3.0 < diff.mean().item() < -0.3
    # The op follows the float chain.
    out = fused_augment(imgs, SIZE, params=p, impl="cpu", interpolation="bicubic", **PLAIN)
    assert_parity((out - as_float).abs())
