"""Fused augmentation: the compiled C++ CPU op against the PyTorch reference on the same parameters,
reference-free semantics checks, parameter sampling statistics, opcheck / torch.compile, errors.

Tolerances (stated once): outputs are compared on the [0, 1] scale before normalisation
(out * std + mean). fp32: max abs error <= 1e-4. bf16 / fp16: both sides round the same fp32 value
once, so they may differ by one unit in the last place: |a - b| <= ulp(dtype) * |ref| + 1e-4.
"""

from __future__ import annotations

import colorsys
import math

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from vlkernels import _ext
from vlkernels.augment import CLIP_MEAN, CLIP_STD, AugmentParams, fused_augment, sample_augment_params
from vlkernels.augment import reference as ref
from vlkernels.augment._op import has_kernel, op

ULP = {torch.float32: 0.0, torch.bfloat16: 2.0**-7, torch.float16: 2.0**-10}
ATOL01 = 1e-4  # on the [0, 1] scale, before normalisation
MEAN = torch.tensor(CLIP_MEAN)[:, None, None]
STD = torch.tensor(CLIP_STD)[:, None, None]


def assert_close01(out: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype = torch.float32) -> None:
    """|out - expected| <= ATOL01 on the [0, 1] scale (i.e. ATOL01 / std after normalisation), plus one
    unit in the last place of the normalised value for bf16 / fp16 outputs."""
    out, expected = out.float(), expected.float()
    err = (out - expected).abs()
    tol = ULP[dtype] * expected.abs() + ATOL01 / STD
    worst = (err - tol).max().item()
    assert worst <= 0, f"max abs err {err.max().item():.3g} exceeds the tolerance ({dtype})"


def images_of(kind: str, sizes: list[tuple[int, int]], seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    imgs = [torch.randint(0, 256, (h, w, 3), dtype=torch.uint8, generator=g) for h, w in sizes]
    if kind == "list":
        return imgs
    batch = torch.stack(imgs)
    if kind == "nhwc":
        return batch
    if kind == "nchw":
        return batch.permute(0, 3, 1, 2).contiguous()
    if kind == "nchw_channels_last":  # an NCHW view of NHWC memory: no copy on the op's side
        return batch.permute(0, 3, 1, 2)
    if kind == "strided":  # neither layout contiguous: the op gets a copy
        return torch.stack([torch.stack(imgs), torch.stack(imgs)], 1)[:, 0]
    raise ValueError(kind)


def params_with(images, seed: int, **kw) -> AugmentParams:
    return sample_augment_params(images, generator=torch.Generator().manual_seed(seed), **kw)


ALL_OFF = dict(hflip_p=0.0, jitter_p=0.0, grayscale_p=0.0)
ONLY = {
    "crop": dict(ALL_OFF),
    "flip": dict(ALL_OFF, hflip_p=1.0, scale=(1.0, 1.0), ratio=(1e-3, 1e3)),
    "brightness": dict(ALL_OFF, jitter_p=1.0, jitter=(0.4, 0.0, 0.0, 0.0)),
    "contrast": dict(ALL_OFF, jitter_p=1.0, jitter=(0.0, 0.8, 0.0, 0.0)),
    "saturation": dict(ALL_OFF, jitter_p=1.0, jitter=(0.0, 0.0, 0.8, 0.0)),
    "hue": dict(ALL_OFF, jitter_p=1.0, jitter=(0.0, 0.0, 0.0, 0.5)),
    "grayscale": dict(ALL_OFF, grayscale_p=1.0),
    "all": dict(hflip_p=0.5, jitter=(0.4, 0.4, 0.4, 0.1), jitter_p=0.8, grayscale_p=0.2),
    "all_strong": dict(hflip_p=0.5, jitter=(0.9, 0.9, 0.9, 0.5), jitter_p=1.0, grayscale_p=0.5),
}


@pytest.fixture(scope="module", autouse=True)
def _compiled_op_present():
    # No skip: CI builds the extension, and these tests are about the compiled op.
    assert _ext.available(), _ext.load_error()
    assert has_kernel("cpu"), "vlkernels._C has no CPU kernel for vlkernels::fused_augment"


def random_sizes(n: int, seed: int, lo: int = 1, hi: int = 48) -> list[tuple[int, int]]:
    g = torch.Generator().manual_seed(seed)
    sizes = torch.randint(lo, hi + 1, (n, 2), generator=g).tolist()
    return [(1, 1), (2, 37), *[tuple(s) for s in sizes]]


@pytest.mark.parametrize("what", list(ONLY))
@pytest.mark.parametrize("size", [(16, 16), (9, 13)])
def test_cpu_op_matches_reference_each_op(what, size):
    imgs = images_of("list", random_sizes(6, seed=len(what)), seed=1)
    p = params_with(imgs, seed=2, **ONLY[what])
    expected = fused_augment(imgs, size, params=p, impl="torch")
    out = fused_augment(imgs, size, params=p, impl="cpu")
    assert out.shape == (len(imgs), 3, *size) and out.dtype == torch.float32
    assert_close01(out, expected)


@pytest.mark.parametrize("kind", ["nhwc", "nchw", "nchw_channels_last", "strided", "list"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_cpu_op_matches_reference_layouts_dtypes(kind, dtype):
    imgs = images_of(kind, [(23, 31)] * 5, seed=3)
    p = params_with(imgs, seed=4, **ONLY["all_strong"])
    expected = fused_augment(imgs, (12, 20), params=p, impl="torch", out_dtype=torch.float32)
    out = fused_augment(imgs, (12, 20), params=p, impl="cpu", out_dtype=dtype)
    assert out.dtype == dtype and out.shape == (5, 3, 12, 20)
    assert_close01(out, expected, dtype)
    # And against the reference's own conversion: the same rounding of (nearly) the same fp32 value.
    assert_close01(out, fused_augment(imgs, (12, 20), params=p, impl="torch", out_dtype=dtype), dtype)


def test_cpu_op_matches_reference_upscale_and_big_downscale():
    # Images smaller than the output (upsampling), a 1 x 1 image, and a 6x downscale.
    imgs = images_of("list", [(1, 1), (3, 5), (7, 2), (120, 96), (40, 200)], seed=5)
    p = params_with(imgs, seed=6, **ONLY["all"])
    for size in [(20, 20), (1, 1), (17, 3)]:
        assert_close01(
            fused_augment(imgs, size, params=p, impl="cpu"), fused_augment(imgs, size, params=p, impl="torch")
        )


def test_ragged_list_equals_per_image_calls():
    imgs = images_of("list", random_sizes(5, seed=7, lo=5, hi=40), seed=8)
    p = params_with(imgs, seed=9, **ONLY["all_strong"])
    out = fused_augment(imgs, 11, params=p, impl="cpu")
    for i, img in enumerate(imgs):
        one = AugmentParams(**{k: v[i : i + 1] for k, v in vars(p).items()})
        torch.testing.assert_close(
            fused_augment([img], 11, params=one, impl="cpu")[0], out[i], rtol=0, atol=0
        )


def test_row_parallel_path_equals_image_parallel_path():
    # Fewer images than threads splits rows across threads; more images splits images.
    imgs = images_of("nhwc", [(64, 80)] * 4, seed=10)
    p = params_with(imgs, seed=11, **ONLY["all_strong"])
    prev = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        one = [
            fused_augment(
                imgs[i : i + 1],
                24,
                params=AugmentParams(**{k: v[i : i + 1] for k, v in vars(p).items()}),
                impl="cpu",
            )
            for i in range(4)
        ]
        torch.set_num_threads(1)
        batch = fused_augment(imgs, 24, params=p, impl="cpu")
    finally:
        torch.set_num_threads(prev)
    torch.testing.assert_close(torch.cat(one), batch, rtol=0, atol=0)


# ---- semantics without the reference ----------------------------------------------------------


@pytest.mark.parametrize("impl", ["cpu", "torch"])
def test_flip_only_is_a_mirror(impl):
    imgs = images_of("nhwc", [(30, 26)] * 3, seed=12)
    p = params_with(imgs, seed=13, **ONLY["all_strong"])
    p.flip = torch.zeros(3, dtype=torch.bool)
    plain = fused_augment(imgs, (14, 15), params=p, impl=impl)
    p.flip = torch.ones(3, dtype=torch.bool)
    flipped = fused_augment(imgs, (14, 15), params=p, impl=impl)
    torch.testing.assert_close(flipped, plain.flip(-1), rtol=0, atol=1e-6)
    assert not torch.equal(flipped, plain)


@pytest.mark.parametrize("impl", ["cpu", "torch"])
def test_flip_only_of_identity_crop_is_the_mirrored_image(impl):
    imgs = images_of("nhwc", [(9, 14)] * 2, seed=24)
    p = AugmentParams.identity([(9, 14)] * 2)
    p.flip[:] = True
    out = fused_augment(imgs, (9, 14), params=p, impl=impl, mean=(0, 0, 0), std=(1, 1, 1))
    expected = imgs.permute(0, 3, 1, 2).flip(-1).float() / 255.0
    torch.testing.assert_close(out, expected, rtol=0, atol=0)


@pytest.mark.parametrize("impl", ["cpu", "torch"])
@pytest.mark.parametrize("kind", ["nhwc", "nchw", "list"])
def test_identity_crop_is_normalised_image(impl, kind):
    imgs = images_of(kind, [(19, 27)] * 3, seed=14)
    p = AugmentParams.identity([(19, 27)] * 3)
    out = fused_augment(imgs, (19, 27), params=p, impl=impl)
    chw = (
        torch.stack(imgs).permute(0, 3, 1, 2)
        if kind == "list"
        else images_of("nchw", [(19, 27)] * 3, seed=14)
    )
    expected = (chw.float() / 255.0 - MEAN) / STD
    torch.testing.assert_close(out, expected, rtol=0, atol=4e-7 / STD.min().item())


@pytest.mark.parametrize("impl", ["cpu", "torch"])
def test_grayscale_gives_equal_channels(impl):
    imgs = images_of("list", [(33, 21), (8, 40)], seed=15)
    p = params_with(imgs, seed=16, **dict(ONLY["all_strong"], grayscale_p=1.0))
    out = fused_augment(imgs, 10, params=p, impl=impl, mean=(0, 0, 0), std=(1, 1, 1))
    assert torch.equal(out[:, 0], out[:, 1]) and torch.equal(out[:, 1], out[:, 2])
    assert out.std() > 0.01


def test_constant_image_stays_constant_through_resize():
    # Antialiased resampling weights sum to 1: a constant image is constant at any scale.
    img = torch.full((50, 70, 3), 200, dtype=torch.uint8)
    out = fused_augment(
        [img],
        (13, 9),
        params=params_with([img], 17, **ONLY["crop"]),
        impl="cpu",
        mean=(0, 0, 0),
        std=(1, 1, 1),
    )
    torch.testing.assert_close(out, torch.full_like(out, 200 / 255), rtol=0, atol=1e-6)


def test_reference_hue_matches_colorsys():
    # The reference's RGB -> HSV -> RGB against Python's colorsys (an independent implementation).
    g = torch.Generator().manual_seed(18)
    x = torch.rand(3, 7, 9, generator=g)
    x[:, 0, :3] = torch.tensor([0.5, 0.5, 0.5])[:, None]  # gray pixels (s = 0)
    for hue in (0.0, 0.13, -0.37, 0.5):
        out = ref.adjust_hue(x, hue)
        for i in range(7):
            for j in range(9):
                h, s, v = colorsys.rgb_to_hsv(*x[:, i, j].tolist())
                expected = colorsys.hsv_to_rgb((h + hue) % 1.0, s, v)
                assert out[:, i, j].tolist() == pytest.approx(expected, abs=1e-5)


def test_contrast_uses_gray_mean_of_current_image():
    img = images_of("list", [(16, 16)], seed=19)
    p = AugmentParams.identity([(16, 16)])
    p.jitter[:] = True
    p.contrast[:] = 0.0  # contrast 0: every pixel becomes the mean gray of the image
    out = fused_augment(img, 16, params=p, impl="cpu", mean=(0, 0, 0), std=(1, 1, 1))
    x = img[0].permute(2, 0, 1).float() / 255
    gray_mean = (0.2989 * x[0] + 0.587 * x[1] + 0.114 * x[2]).mean()
    torch.testing.assert_close(out, torch.full_like(out, gray_mean.item()), rtol=0, atol=1e-6)


# ---- parameter sampling -------------------------------------------------------------------------


def test_sampling_bounds_and_probabilities():
    n = 20000
    g = torch.Generator().manual_seed(20)
    sizes = torch.stack(
        [torch.randint(50, 400, (n,), generator=g), torch.randint(50, 400, (n,), generator=g)], 1
    )
    p = sample_augment_params(sizes, generator=torch.Generator().manual_seed(21))
    top, left, h, w = p.boxes.unbind(1)
    assert (top >= 0).all() and (left >= 0).all() and (h >= 1).all() and (w >= 1).all()
    assert (top + h <= sizes[:, 0]).all() and (left + w <= sizes[:, 1]).all()
    # Boxes from a successful try obey the bounds up to the rounding of w and h to integers.
    frac = (h * w).double() / (sizes[:, 0] * sizes[:, 1]).double()
    aspect = w.double() / h.double()
    hi = ((w + 0.5) * (h + 0.5)).double() / (sizes[:, 0] * sizes[:, 1])
    lo = ((w - 0.5) * (h - 0.5)).double() / (sizes[:, 0] * sizes[:, 1])
    assert (hi >= 0.08).all() and (lo <= 1.0).all()
    assert ((w + 0.5) / (h - 0.5) >= 3 / 4).all() and ((w - 0.5) / (h + 0.5) <= 4 / 3).all()
    # Square-ish images almost never fall back: area fraction ~ U(0.08, 1) truncated by fitting.
    assert 0.35 < frac.mean().item() < 0.6 and 0.9 < aspect.mean().item() < 1.1

    def rate(flags, expected):
        sigma = math.sqrt(expected * (1 - expected) / n)
        assert abs(flags.float().mean().item() - expected) < 5 * sigma

    rate(p.flip, 0.5)
    rate(p.jitter, 0.8)
    rate(p.grayscale, 0.2)
    for f in (p.brightness, p.contrast, p.saturation):
        assert f.min() >= 0.6 and f.max() <= 1.4 and abs(f.mean().item() - 1.0) < 0.01
    assert p.hue.abs().max() <= 0.1 and abs(p.hue.mean().item()) < 0.002
    assert (torch.sort(p.order, 1).values == torch.arange(4)).all()
    # Every op order equally likely: 24 permutations, chi-square against uniform (23 dof; p ~ 1e-6 at 60).
    codes = (p.order * torch.tensor([64, 16, 4, 1])).sum(1)
    counts = torch.unique(codes, return_counts=True)[1].double()
    assert counts.numel() == 24
    chi2 = ((counts - n / 24) ** 2 / (n / 24)).sum().item()
    assert chi2 < 60


def test_sampling_matches_torchvision_rule_sequentially():
    # A direct transcription of RandomResizedCrop.get_params, fed the same uniforms, gives the same boxes.
    sizes = torch.tensor([[100, 150], [10, 1000], [300, 40], [1, 1], [64, 64], [5, 9]] * 50)
    p = sample_augment_params(sizes, generator=torch.Generator().manual_seed(22))
    g = torch.Generator().manual_seed(22)
    n = sizes.shape[0]
    u_area = torch.rand(n, 10, generator=g, dtype=torch.float64)
    u_ratio = torch.rand(n, 10, generator=g, dtype=torch.float64)
    u_pos = torch.rand(n, 2, generator=g, dtype=torch.float64)
    for i, (height, width) in enumerate(sizes.tolist()):
        area = height * width
        box = None
        for t in range(10):
            target = area * (0.08 + 0.92 * u_area[i, t].item())
            ar = math.exp(math.log(3 / 4) + (math.log(4 / 3) - math.log(3 / 4)) * u_ratio[i, t].item())
            w, h = int(round(math.sqrt(target * ar))), int(round(math.sqrt(target / ar)))
            if 0 < w <= width and 0 < h <= height:
                top = min(int(u_pos[i, 0].item() * (height - h + 1)), height - h)
                left = min(int(u_pos[i, 1].item() * (width - w + 1)), width - w)
                box = [top, left, h, w]
                break
        if box is None:
            in_ratio = width / height
            if in_ratio < 3 / 4:
                w, h = width, int(round(width / (3 / 4)))
            elif in_ratio > 4 / 3:
                h, w = height, int(round(height * 4 / 3))
            else:
                w, h = width, height
            box = [(height - h) // 2, (width - w) // 2, h, w]
        assert p.boxes[i].tolist() == box, (i, height, width)
    # The extreme aspect ratios do take the centre-crop fallback.
    assert p.boxes[1].tolist() == [0, (1000 - 13) // 2, 10, 13]


def test_sampling_accepts_images_lists_and_sizes():
    imgs = images_of("list", [(10, 20), (30, 5)])
    a = sample_augment_params(imgs, generator=torch.Generator().manual_seed(0))
    b = sample_augment_params([(10, 20), (30, 5)], generator=torch.Generator().manual_seed(0))
    c = sample_augment_params(images_of("nchw", [(10, 20)] * 2), generator=torch.Generator().manual_seed(0))
    assert torch.equal(a.boxes, b.boxes) and len(a) == 2 and len(c) == 2
    assert (c.boxes[:, 2] <= 10).all() and (c.boxes[:, 3] <= 20).all()


def test_same_generator_seed_same_output():
    imgs = images_of("nhwc", [(40, 40)] * 4)
    a = fused_augment(imgs, 16, generator=torch.Generator().manual_seed(3))
    b = fused_augment(imgs, 16, generator=torch.Generator().manual_seed(3))
    c = fused_augment(imgs, 16, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)


# ---- the registered op: compiled kernel, opcheck, torch.compile ---------------------------------


class _OpLog(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.calls.append((str(func), [a.device.type for a in args if isinstance(a, torch.Tensor)]))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("impl", ["auto", "cpu"])
def test_compiled_cpu_op_is_what_runs(impl):
    imgs = images_of("list", [(20, 30), (9, 9)])
    with _OpLog() as log:
        fused_augment(imgs, 8, impl=impl)
    ran = [devs for name, devs in log.calls if name == "vlkernels.fused_augment.default"]
    assert ran == [["cpu"] * 9], log.calls  # 8 tensors + solarize
    assert _ext.build_info() in ("cpu", "cpu+cuda")


def test_extension_shares_the_process_libstdcxx():
    # A static libstdc++ inside _C (a second std::locale) crashes the first TORCH_CHECK message that
    # formats a number (seen on a CUDA build). Two checks: the dynamic section names libstdc++.so.6
    # (readelf, where binutils is installed), and a value error raised in C++ reaches Python in a child
    # process (a crash there fails this test instead of killing the run).
    import shutil
    import subprocess
    import sys

    from vlkernels import _C

    if shutil.which("readelf"):
        dyn = subprocess.run(
            ["readelf", "-d", _C.__file__], capture_output=True, text=True, check=True
        ).stdout
        assert "[libstdc++.so.6]" in dyn, f"{_C.__file__} does not link libstdc++ dynamically:\n{dyn}"
    code = (
        "import torch\n"
        "from tests.test_augment import _op_args\n"
        "from vlkernels.augment._op import op\n"
        "a = list(_op_args()); b = a[4].clone(); b[0, 0] = 2**40; a[4] = b\n"
        "try:\n    op()(*a)\nexcept RuntimeError as e:\n    print(e)\n"
    )
    root = __file__.rsplit("/tests/", 1)[0]
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root, timeout=120)
    assert r.returncode == 0, (r.returncode, r.stderr[-2000:])
    assert "crop box (1099511627776, " in r.stdout, r.stdout


def _op_args(dtype=torch.float32, hwc=True):
    imgs = images_of("list", [(12, 17), (5, 8), (1, 1)], seed=23)
    from vlkernels.augment import PackedImages

    b = PackedImages.from_list(imgs)
    p = params_with(imgs, 24, **ONLY["all_strong"])
    return (
        b.data,
        b.offsets,
        b.sizes,
        hwc,
        p.boxes,
        p.flip,
        p.factors(),
        p.order,
        p.grayscale,
        list(CLIP_MEAN),
        list(CLIP_STD),
        6,
        7,
        dtype,
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_opcheck(dtype):
    torch.library.opcheck(op(), _op_args(dtype))


def test_torch_compile_fullgraph_uses_fake_and_matches_eager():
    args = _op_args()
    fused = op()
    f = torch.compile(lambda *a: fused(*a) * 2.0, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(f(*args), fused(*args) * 2.0, rtol=0, atol=0)


# ---- errors -------------------------------------------------------------------------------------


def test_errors():
    good = images_of("nhwc", [(10, 12)] * 2)
    with pytest.raises(TypeError, match="uint8"):
        fused_augment(good.float(), 8)
    with pytest.raises(ValueError, match="3 channels"):
        fused_augment(torch.zeros(2, 10, 12, 4, dtype=torch.uint8), 8)
    with pytest.raises(ValueError, match=r"\[H, W, 3\]"):
        fused_augment([torch.zeros(10, 12, 1, dtype=torch.uint8)], 8)
    with pytest.raises(ValueError, match="empty"):
        fused_augment([], 8)
    with pytest.raises(ValueError, match="size"):
        fused_augment(good, 0)
    with pytest.raises(ValueError, match="size"):
        fused_augment(good, (8, -1))
    with pytest.raises(ValueError, match="one device"):
        fused_augment([good[0], torch.zeros(5, 5, 3, dtype=torch.uint8, device="meta")], 8)
    p = AugmentParams.identity([(10, 12)] * 2)
    p.boxes[1] = torch.tensor([5, 0, 6, 12])
    for impl in ("cpu", "torch"):
        with pytest.raises(ValueError, match="outside the image"):
            fused_augment(good, 8, params=p, impl=impl)
    with pytest.raises(ValueError, match="cuda"):
        fused_augment(good, 8, impl="cuda")
    with pytest.raises(ValueError, match="impl"):
        fused_augment(good, 8, impl="triton")
    with pytest.raises(ValueError, match="out_dtype"):
        fused_augment(good, 8, out_dtype=torch.float64)
    with pytest.raises(ValueError, match="2 rows"):
        fused_augment(images_of("nhwc", [(10, 12)] * 3), 8, params=p)
    with pytest.raises(ValueError, match="is on meta but the images are on cpu"):
        fused_augment(good, 8, params=AugmentParams.identity([(10, 12)] * 2).to("meta"))
    bad_hue = AugmentParams.identity([(10, 12)] * 2)
    bad_hue.hue[0] = 0.7
    with pytest.raises(ValueError, match="hue"):
        fused_augment(good, 8, params=bad_hue)


def test_op_level_errors_name_the_argument():
    args = list(_op_args())
    bad_box = args[4].clone()
    bad_box[0] = torch.tensor([0, 0, 13, 17])
    with pytest.raises(RuntimeError, match="crop box"):
        op()(*args[:4], bad_box, *args[5:])
    with pytest.raises(RuntimeError, match="factors must be Float"):
        op()(*args[:6], args[6].double(), *args[7:])
    with pytest.raises(RuntimeError, match="data must be uint8"):
        op()(args[0].float(), *args[1:])
