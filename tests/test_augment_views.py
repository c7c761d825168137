"""Several views per source image (AugmentParams.source, sample_augment_params(views=...)): every
output equals a separate call on its source image; M != N shapes; bad indices named in Python and at
the op boundary. Tolerances as in test_augment.py (C++ op vs reference on the [0, 1] scale)."""

from __future__ import annotations

import pytest
import torch

from tests.test_augment import CLIP_MEAN, CLIP_STD, ONLY, _op_args, assert_close01, images_of
from vlkernels.augment import AugmentParams, fused_augment, sample_augment_params
from vlkernels.augment._op import op
from vlkernels.augment.api import as_batch

VIEWS = [
    dict(scale=(0.5, 1.0)),
    dict(scale=(0.08, 1.0), jitter_p=0.8, grayscale_p=0.2, blur_p=0.5),
    dict(scale=(0.05, 0.4), solarize_p=0.5, hflip_p=1.0, jitter=(0.9, 0.9, 0.9, 0.5), jitter_p=1.0),
]


def one(params: AugmentParams, m: int) -> AugmentParams:
    """The parameters of output m alone, without a source index."""
    p = params.select(m)
    p.source = None
    return p


@pytest.mark.parametrize("kind", ["list", "nhwc", "nchw"])
@pytest.mark.parametrize("impl", ["cpu", "torch"])
def test_each_view_equals_a_separate_call_on_its_image(kind, impl):
    sizes = [(40, 61), (23, 17), (64, 64)] if kind == "list" else [(37, 45)] * 3
    imgs = images_of(kind, sizes, seed=3)
    p = sample_augment_params(imgs, views=VIEWS, generator=torch.Generator().manual_seed(4))
    n, k = 3, len(VIEWS)
    assert len(p) == n * k and p.source.tolist() == [0, 1, 2] * k  # view-major
    out = fused_augment(imgs, (20, 24), params=p, impl=impl)
    assert out.shape == (n * k, 3, 20, 24)
    singles = [[t] for t in imgs] if kind == "list" else [imgs[i : i + 1] for i in range(n)]
    for m in range(n * k):
        alone = fused_augment(singles[m % n], (20, 24), params=one(p, m), impl=impl)
        torch.testing.assert_close(out[m : m + 1], alone, rtol=0, atol=0)


def test_cpu_op_views_match_reference():
    imgs = images_of("list", [(40, 61), (23, 17), (64, 64), (5, 90)], seed=5)
    p = sample_augment_params(imgs, views=VIEWS, generator=torch.Generator().manual_seed(6))
    for dtype in (torch.float32, torch.bfloat16):
        cpu = fused_augment(imgs, 16, params=p, impl="cpu", out_dtype=dtype)
        ref = fused_augment(imgs, 16, params=p, impl="torch", out_dtype=dtype)
        assert_close01(cpu, ref, dtype)


def test_fused_augment_views_argument_and_grouping():
    imgs = images_of("nhwc", [(30, 30)] * 4, seed=7)
    out = fused_augment(imgs, 12, views=VIEWS, generator=torch.Generator().manual_seed(8), impl="cpu")
    p = sample_augment_params(imgs, views=VIEWS, generator=torch.Generator().manual_seed(8))
    torch.testing.assert_close(out, fused_augment(imgs, 12, params=p, impl="cpu"), rtol=0, atol=0)
    groups = out.view(len(VIEWS), 4, 3, 12, 12)  # view-major: groups[k] is view group k of every image
    assert groups.shape[:2] == (3, 4)
    with pytest.raises(ValueError, match="not both"):
        fused_augment(imgs, 12, views=VIEWS, params=p)


def test_view_groups_are_separate_draws_with_their_own_settings():
    sizes = [(100, 80), (50, 120)]
    g = torch.Generator().manual_seed(9)
    p = sample_augment_params(sizes, views=VIEWS, generator=g, grayscale_p=0.0)
    g = torch.Generator().manual_seed(9)
    parts = [sample_augment_params(sizes, generator=g, **{"grayscale_p": 0.0, **v}) for v in VIEWS]
    expected = AugmentParams.cat(parts)
    for name in (
        "boxes",
        "flip",
        "jitter",
        "brightness",
        "hue",
        "order",
        "grayscale",
        "solarize",
        "blur_sigma",
    ):
        torch.testing.assert_close(getattr(p, name), getattr(expected, name), rtol=0, atol=0)
    # Group settings: view 2 always flips; view 0 has no blur (blur_p 0 by default).
    assert bool(p.flip[4:].all()) and bool((p.blur_sigma[:2] == 0).all())
    area = (p.boxes[:, 2] * p.boxes[:, 3]).double() / torch.tensor([8000.0, 6000.0] * 3, dtype=torch.float64)
    assert bool((area[:2] >= 0.45).all()) and bool((area[4:] <= 0.45).all())


@pytest.mark.parametrize("impl", ["cpu", "torch"])
def test_explicit_source_with_m_other_than_n(impl):
    imgs = images_of("list", [(20, 30), (41, 17), (9, 9)], seed=10)
    base = sample_augment_params(imgs, generator=torch.Generator().manual_seed(11), **ONLY["all_strong"])
    for src in ([1, 0, 1, 1, 0, 2, 2], [2], [0, 0]):  # M > N, M < N, one image twice
        p = AugmentParams.identity([tuple(imgs[s].shape[:2]) for s in src])
        p.flip = base.flip[src]
        p.jitter, p.brightness, p.hue = base.jitter[src], base.brightness[src], base.hue[src]
        p.order = base.order[src]
        p.source = torch.tensor(src)
        out = fused_augment(imgs, (11, 7), params=p, impl=impl)
        assert out.shape == (len(src), 3, 11, 7)
        for m, s in enumerate(src):
            torch.testing.assert_close(
                out[m : m + 1], fused_augment([imgs[s]], (11, 7), params=one(p, m), impl=impl), rtol=0, atol=0
            )


def test_views_do_not_copy_the_images():
    imgs = images_of("nhwc", [(30, 30)] * 2, seed=12)
    b = as_batch(imgs)
    assert b.data.data_ptr() == imgs.data_ptr() and b.data.numel() == imgs.numel()  # N images, not M


def test_bad_source_is_named_in_python():
    imgs = images_of("list", [(20, 30), (10, 10)], seed=13)
    p = AugmentParams.identity([(10, 10)] * 3)
    p.source = torch.tensor([1, 2, 1])
    for impl in ("cpu", "torch"):
        with pytest.raises(ValueError, match=r"source\[1\] is 2: not the index of one of the 2 images"):
            fused_augment(imgs, 8, params=p, impl=impl)
    p.source = torch.tensor([1, -1, 1])
    with pytest.raises(ValueError, match=r"source\[1\] is -1"):
        fused_augment(imgs, 8, params=p)
    # A box valid for image 0 (20x30) but not for the source image 1 (10x10).
    p = AugmentParams.identity([(20, 30), (20, 30)])
    p.source = torch.tensor([0, 1])
    with pytest.raises(ValueError, match=r"output 1 \(image 1\) lies outside the image of size \[10, 10\]"):
        fused_augment(imgs, 8, params=p)
    p.source = torch.tensor([0.0, 1.0])
    with pytest.raises(TypeError, match="source must have one of the dtypes"):
        fused_augment(imgs, 8, params=p)
    p.source = torch.tensor([[0, 1]])
    with pytest.raises(ValueError, match="source must have shape"):
        fused_augment(imgs, 8, params=p)
    p = AugmentParams.identity([(10, 10)] * 2)
    p.source = torch.tensor([1, 1, 1])
    with pytest.raises(ValueError, match="2 rows for 3 outputs"):
        fused_augment(imgs, 8, params=p)


def test_bad_views_argument():
    imgs = images_of("list", [(20, 30)], seed=14)
    with pytest.raises(ValueError, match=r"unknown keys \['scal'\]"):
        sample_augment_params(imgs, views=[dict(scal=(0.5, 1.0))])
    with pytest.raises(ValueError, match=r"views\[1\]: scale"):
        sample_augment_params(imgs, views=[{}, dict(scale=(0.9, 0.1))])
    with pytest.raises(ValueError, match="at least one"):
        sample_augment_params(imgs, views=[])
    with pytest.raises(TypeError, match="list of dicts"):
        sample_augment_params(imgs, views=dict(scale=(0.5, 1.0)))


def _op_args_with_source(src):
    args = list(_op_args())  # 3 images
    m = len(src)
    rows = torch.tensor([i % 3 for i in range(m)])
    g = torch.Generator().manual_seed(15)
    # Identity boxes of the source images (always inside), per-output colour parameters.
    sizes = args[2]
    safe = torch.tensor(src).clamp(0, 2)
    zeros = torch.zeros(m, dtype=torch.int64)
    args[4] = torch.stack([zeros, zeros, sizes[safe, 0], sizes[safe, 1]], 1)
    args[5] = torch.rand(m, generator=g) < 0.5
    args[6] = args[6][rows]
    args[7] = args[7][rows]
    args[8] = args[8][rows]
    return args, torch.tensor(src, dtype=torch.int64)


def test_op_source_matches_per_output_calls_and_opcheck():
    args, src = _op_args_with_source([2, 0, 0, 1, 2])
    out = op()(*args, True, None, False, 0, None, src)
    assert out.shape == (5, 3, 6, 7)
    for m, s in enumerate(src.tolist()):
        single = list(args)
        single[1], single[2] = args[1][s : s + 1], args[2][s : s + 1]
        for k in (4, 5, 6, 7, 8):
            single[k] = args[k][m : m + 1]
        torch.testing.assert_close(out[m : m + 1], op()(*single), rtol=0, atol=0)
    torch.library.opcheck(op(), (*args, True, None, False, 0, None, src))


@pytest.mark.parametrize(
    "src, match",
    [([0, 3], r"source\[1\] is 3: not the index of one of the 3 images"), ([-1], r"source\[0\] is -1")],
)
def test_op_level_bad_source_is_named(src, match):
    args, s = _op_args_with_source(src)
    with pytest.raises(RuntimeError, match=match):
        op()(*args, True, None, False, 0, None, s)


def test_op_level_source_shape_and_dtype():
    args, src = _op_args_with_source([0, 1])
    with pytest.raises(RuntimeError, match="source must be Long"):
        op()(*args, True, None, False, 0, None, src.int())
    with pytest.raises(RuntimeError, match="source must be"):
        op()(*args, True, None, False, 0, None, src[None])
    with pytest.raises(RuntimeError, match="boxes must have shape"):
        op()(*args, True, None, False, 0, None, torch.tensor([0, 1, 2]))
    # Box checked against the source image (image 2 is 1x1).
    bad = torch.tensor([0, 2])
    with pytest.raises(RuntimeError, match=r"crop box .* of output 1 \(image 2\)"):
        op()(*args, True, None, False, 0, None, bad)


def test_views_fake_and_compile():
    args, src = _op_args_with_source([1, 1, 0, 2])
    fused = op()
    f = torch.compile(lambda *a: fused(*a) + 1.0, backend="aot_eager", fullgraph=True)
    full = (*args, True, None, False, 0, None, src)
    torch.testing.assert_close(f(*full), fused(*full) + 1.0, rtol=0, atol=0)
    assert list(CLIP_MEAN) == args[9] and list(CLIP_STD) == args[10]
