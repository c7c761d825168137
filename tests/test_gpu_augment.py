"""Fused augmentation on a GPU: the CUDA op against the C++ CPU op and the reference, and no host sync
between sampling and output. Skipped (with a reason) on machines without CUDA.

Tolerance: as in test_augment.py, on the [0, 1] scale before normalisation: fp32 1e-4 (the CUDA
kernel is compiled with --use_fast_math: approximate division), plus one ulp of bf16 / fp16.
"""

from __future__ import annotations

import pytest
import torch

from tests.test_augment import ONLY, _op_args, _OpLog, assert_close01, images_of, params_with
from vlkernels.augment import AugmentParams, fused_augment
from vlkernels.augment._op import has_kernel, op

pytestmark = pytest.mark.gpu


@pytest.fixture(autouse=True)
def _cuda_op_built():
    assert has_kernel("cuda"), "vlkernels._C was built without the CUDA kernel (see setup.py switches)"


def to_cuda(images):
    return [t.cuda() for t in images] if isinstance(images, list) else images.cuda()


@pytest.mark.parametrize("what", list(ONLY))
@pytest.mark.parametrize("kind", ["nhwc", "nchw", "list"])
def test_cuda_op_equals_cpu_op(what, kind):
    sizes = [(1, 1), (5, 3), (40, 61), (256, 256), (300, 97)] if kind == "list" else [(57, 44)] * 6
    imgs = images_of(kind, sizes, seed=30)
    p = params_with(imgs, seed=31, **ONLY[what])
    for size in [(224, 224), (17, 9)]:
        cpu = fused_augment(imgs, size, params=p, impl="cpu")
        gpu = fused_augment(to_cuda(imgs), size, params=p.to("cuda"), impl="cuda")
        assert gpu.device.type == "cuda" and gpu.shape == cpu.shape
        assert_close01(gpu.cpu(), cpu)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_cuda_op_matches_reference_on_gpu(dtype):
    imgs = images_of("list", [(31, 47), (64, 64), (12, 200)], seed=32)
    p = params_with(imgs, seed=33, **ONLY["all_strong"]).to("cuda")
    expected = fused_augment(to_cuda(imgs), 32, params=p, impl="torch")
    out = fused_augment(to_cuda(imgs), 32, params=p, impl="cuda", out_dtype=dtype)
    assert out.dtype == dtype
    assert_close01(out.cpu(), expected.cpu(), dtype)


def test_auto_picks_the_cuda_kernel():
    imgs = images_of("nhwc", [(40, 40)] * 3).cuda()
    with _OpLog() as log:
        fused_augment(imgs, 16)
    ran = [devs for name, devs in log.calls if name == "vlkernels.fused_augment.default"]
    assert ran == [["cuda"] * 9]


@pytest.mark.parametrize("kind", ["nhwc", "nchw", "list"])
def test_sampling_to_output_never_syncs(kind):
    imgs = to_cuda(images_of(kind, [(64, 80), (33, 41), (100, 20)] if kind == "list" else [(64, 80)] * 4))
    gen = torch.Generator(device="cuda").manual_seed(0)
    fused_augment(imgs, 32, generator=gen)  # warm-up: loads the extension, allocator pools
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = fused_augment(imgs, 32, generator=gen, out_dtype=torch.bfloat16)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert out.shape[1:] == (3, 32, 32) and torch.isfinite(out.float()).all()


def test_invalid_box_on_cuda_is_an_error_before_launch():
    imgs = images_of("nhwc", [(10, 12)] * 2).cuda()
    p = AugmentParams.identity([(10, 12)] * 2, device="cuda")
    p.boxes[1, 2] = 11
    with pytest.raises(ValueError, match="outside the image"):
        fused_augment(imgs, 8, params=p, impl="cuda")


def test_cuda_generator_is_reproducible():
    imgs = images_of("nhwc", [(48, 48)] * 8).cuda()
    a = fused_augment(imgs, 24, generator=torch.Generator(device="cuda").manual_seed(1))
    b = fused_augment(imgs, 24, generator=torch.Generator(device="cuda").manual_seed(1))
    assert torch.equal(a, b)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_opcheck_cuda(dtype):
    args = [a.cuda() if isinstance(a, torch.Tensor) else a for a in _op_args(dtype)]
    torch.library.opcheck(op(), tuple(args))


# ---- the op called directly with hostile values: the same checks as on the CPU ------------------

HOSTILE = [
    ("boxes", 4, 0, [2**63 - 5, 0, 10, 17], "boxes: crop box"),
    ("boxes", 4, 0, [0, 2**63 - 5, 12, 10], "boxes: crop box"),
    ("sizes", 2, 0, [2**32, 2**32], "sizes of image 0"),
    ("offsets", 1, 2, 2**63 - 5, "offsets: image 2"),
    ("order", 7, 1, [0, 1, 2, 7], "order of image 1"),
    ("factors", 6, 1, [float("nan"), 1.0, 1.0, 0.0], "factors of image 1"),
    ("factors", 6, 1, [1.0, 1.0, 1.0, 0.75], "hue factor"),
]


@pytest.mark.parametrize("name, index, row, value, match", HOSTILE)
def test_cuda_op_direct_call_gets_the_cpu_checks(name, index, row, value, match):
    args = list(_op_args())
    t = args[index].clone()
    t[row] = torch.tensor(value, dtype=t.dtype)
    args[index] = t
    with pytest.raises(RuntimeError, match=match):
        op()(*args)
    cuda_args = [a.cuda() if isinstance(a, torch.Tensor) else a for a in args]
    with pytest.raises(RuntimeError, match=match):
        op()(*cuda_args)


@pytest.mark.parametrize("name, index, row, value, match", HOSTILE)
def test_cuda_op_unchecked_invalid_image_is_nan_never_read(name, index, row, value, match):
    # check=False skips the host copy; the kernel's guard (the same predicate) turns the invalid image
    # into NaN instead of reading outside the buffer; the other images are unaffected.
    args = [a.cuda() if isinstance(a, torch.Tensor) else a for a in _op_args()]
    good = op()(*args)
    t = args[index].clone()
    t[row] = torch.tensor(value, dtype=t.dtype, device="cuda")
    args[index] = t
    out = op()(*args, False)
    torch.cuda.synchronize()
    assert torch.isnan(out[row]).all()
    keep = [i for i in range(out.shape[0]) if i != row]
    torch.testing.assert_close(out[keep], good[keep], rtol=0, atol=0)


@pytest.mark.parametrize("out_dtype", [torch.float32, torch.uint8])
def test_cuda_out_equals_the_functional_result(out_dtype):
    imgs = images_of("list", [(40, 61), (23, 17), (300, 280)], seed=31)
    dev = to_cuda(imgs)
    p = params_with(imgs, seed=32, blur_p=0.5, **ONLY["all_strong"]).to("cuda")
    kw = dict(params=p, impl="cuda", out_dtype=out_dtype, channels_last=True)
    want = fused_augment(dev, (33, 27), **kw)
    buf = torch.full_like(want, 7)  # poisoned, channels-last like want
    got = fused_augment(dev, (33, 27), out=buf, **kw)
    assert got is buf
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    with pytest.raises(ValueError, match="out must be on cuda"):
        fused_augment(dev, (33, 27), out=buf.cpu(), **kw)


@pytest.mark.parametrize("out_dtype", [torch.float32, torch.uint8])
def test_separate_cuda_images_are_read_in_place(out_dtype):
    # A list of separate CUDA tensors goes to the op as its images argument (a device table of their
    # addresses): no buffer of the total size, no copy of a pixel, the same bits as the packed batch;
    # checked and unchecked calls, a source index, and an invalid box caught with the image named.
    from tests.test_augment_packed import SIZES, _CopyTracker
    from vlkernels.augment import PackedImages, sample_augment_params
    from vlkernels.augment.api import as_batch

    imgs = [t.cuda() for t in images_of("list", SIZES, seed=52)]
    b = as_batch(imgs)
    assert b.data.numel() == 0 and b.data.is_cuda
    assert [t.data_ptr() for t in b.images] == [t.data_ptr() for t in imgs]
    host = PackedImages.from_list([t.cpu() for t in imgs])
    gen = torch.Generator().manual_seed(5)
    p = sample_augment_params(host, generator=gen, **ONLY["all_strong"], blur_p=0.5).to("cuda")
    packed = host.to("cuda")
    want = fused_augment(packed, (40, 28), params=p, impl="cuda", out_dtype=out_dtype)
    with _CopyTracker(*imgs) as tr:
        got = fused_augment(imgs, (40, 28), params=p, impl="cuda", out_dtype=out_dtype)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert tr.bytes < sum(t.numel() for t in imgs) // 20, tr.ops  # parameters only
    views = fused_augment(imgs, 24, views=[dict(scale=(0.5, 1.0)), dict(scale=(0.1, 0.5))], impl="cuda")
    assert views.shape == (2 * len(imgs), 3, 24, 24) and torch.isfinite(views).all()
    # The op called directly: checked (one host copy) and unchecked (the kernel's guard) with the table.
    args = [b.data, b.offsets, b.sizes, True, p.boxes, p.flip, p.factors(), p.order, p.grayscale]
    args += [[0.5] * 3, [0.25] * 3, 16, 16, torch.float32]
    ok = op()(*args, True, images=b.images)
    assert torch.isfinite(ok).all()
    bad = p.boxes.clone()
    bad[3, 0] = 10**6
    args[4] = bad
    with pytest.raises(RuntimeError, match="boxes: crop box .* of image 3"):
        op()(*args, True, images=b.images)
    guarded = op()(*args, False, images=b.images)
    assert torch.isnan(guarded[3]).all() and torch.isfinite(guarded[[0, 1, 2, 4]]).all()


def test_cuda_op_checked_call_syncs_once_unchecked_never():
    args = [a.cuda() if isinstance(a, torch.Tensor) else a for a in _op_args()]
    op()(*args)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        op()(*args, False)
        with pytest.raises(RuntimeError):
            op()(*args)  # the packed host copy of the parameters is the one sync
    finally:
        torch.cuda.set_sync_debug_mode("default")


# ---- shared-memory table boundary and streams -----------------------------------------------------


@pytest.mark.parametrize(
    "size",
    # out_h + out_w around the largest that fits 8-tap tables in the 48 KiB default with the 144 B of
    # static shared memory (1225; 1226-1228 used to fail to launch: "too many resources requested"),
    # and beyond.
    [(612, 612), (612, 613), (613, 613), (613, 614), (614, 614), (614, 615), (700, 700), (1, 1228)],
)
def test_cuda_op_output_sizes_around_the_shared_memory_boundary(size):
    imgs = images_of("list", [(700, 650), (300, 1300)], seed=34)
    p = params_with(imgs, seed=35, **dict(ONLY["all_strong"], scale=(0.6, 1.0)))
    cpu = fused_augment(imgs, size, params=p, impl="cpu")
    gpu = fused_augment(to_cuda(imgs), size, params=p.to("cuda"), impl="cuda")
    torch.cuda.synchronize()
    assert_close01(gpu.cpu(), cpu)


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
@pytest.mark.parametrize(
    "size",
    # The tap-table tiers (the most taps whose tables fit 48 KiB): 24 taps up to out_h + out_w = 471,
    # 16 up to 680, 8 up to 1225; each side of the first two boundaries, and a 64 x 64 output of
    # 1900-2400 px crops (30x: taps evaluated on the fly).
    [(235, 236), (236, 236), (340, 340), (340, 341), (64, 64)],
)
def test_cuda_op_large_downscales_every_tap_table_tier(size, interpolation):
    imgs = images_of("list", [(2400, 1900), (1300, 2100), (900, 900)], seed=134)
    p = params_with(imgs, seed=135, **dict(ONLY["all_strong"], scale=(0.5, 1.0)))
    cpu = fused_augment(imgs, size, params=p, impl="cpu", interpolation=interpolation)
    gpu = fused_augment(to_cuda(imgs), size, params=p.to("cuda"), impl="cuda", interpolation=interpolation)
    torch.cuda.synchronize()
    assert_close01(gpu.cpu(), cpu)


@pytest.mark.parametrize("n", [1, 3, 64])
@pytest.mark.parametrize("out_dtype", [torch.float32, torch.uint8])
def test_cuda_op_small_batches_split_into_bands_equal_cpu_op(n, out_dtype):
    # Below the GPU's resident block slots (132 on an H100) each output is split into bands of rows,
    # one block each (csrc/augment.h band_rows_for: 64 images at 224 x 224 -> 3 bands of 75 rows, one
    # image -> 21 of 11); images with contrast or blur are done whole by their band-0 block. A mix of
    # both kinds, every band compared with the CPU op.
    imgs = images_of("list", [(300 + 7 * i, 280 - 3 * i) for i in range(n)], seed=42)
    p = params_with(imgs, seed=43, **ONLY["all"], blur_p=0.3)
    whole = (p.factors()[:, 1] != 1) | (p.blur_sigma > 0)
    if n == 64:
        assert whole.any() and (~whole).any()
    if n == 1:
        p = params_with(imgs, seed=43, **ONLY["crop"])  # open_clip's recipe: a crop only, in bands
    for size in [(224, 224), (97, 300), (4100, 1)]:
        kw = dict(params=p, out_dtype=out_dtype, interpolation="bicubic")
        cpu = fused_augment(imgs, size, impl="cpu", **kw)
        gpu = fused_augment(to_cuda(imgs), size, impl="cuda", **dict(kw, params=p.to("cuda")))
        if out_dtype == torch.uint8:
            assert (gpu.cpu().int() - cpu.int()).abs().max() <= 1
        else:
            assert_close01(gpu.cpu(), cpu)


@pytest.mark.parametrize("kind", ["list", "nchw"])
@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
@pytest.mark.parametrize(
    "size",
    # 224 x 224: 24-tap tables and a 43-row buffer (several chunks per image at these downscales);
    # 600 x 600: 8-tap tables and a 16-row buffer (many chunks, rows restarting at every chunk);
    # 4100 x 1 and 1 x 4100: one column / one row; 37 x 301: an odd width (the x pass's pairs of
    # columns end with a column alone).
    [(224, 224), (600, 600), (4100, 1), (1, 4100), (37, 301)],
)
def test_cuda_op_separable_passes_equal_the_direct_sums_bitwise(size, interpolation, kind, monkeypatch):
    # The separable passes (the default where the tap tables fit) compute the same products in the same
    # order as the direct nx x ny sums (VLKERNELS_AUGMENT_SEPARABLE=0), two neighbouring outputs a thread
    # in each pass (sum_taps_pair): equal bits, every op and a mix of views, bands (3 outputs: a small
    # batch) and flips, channels-last images (a list of HWC tensors) and planar ones (NCHW).
    sizes = [(1300, 900), (500, 375), (240, 260)] if kind == "list" else [(700, 530)] * 3
    imgs = images_of(kind, sizes, seed=44)
    p = params_with(imgs, seed=45, **ONLY["all_strong"], blur_p=0.4, solarize_p=0.3)
    p.contrast[1:] = 1.0  # outputs 1, 2 without a gray mean (the other colour ops kept)
    kw = dict(params=p.to("cuda"), interpolation=interpolation, impl="cuda")
    fast = fused_augment(to_cuda(imgs), size, **kw)
    monkeypatch.setenv("VLKERNELS_AUGMENT_SEPARABLE", "0")
    direct = fused_augment(to_cuda(imgs), size, **kw)
    # Bitwise where no gray mean is taken; with contrast the mean is summed per thread in another order
    # (the threads visit the pixels in other groups), a float rounding apart.
    contrast = p.factors()[:, 1] != 1
    assert 0 < int((~contrast).sum())
    torch.testing.assert_close(fast[~contrast.cuda()], direct[~contrast.cuda()], rtol=0, atol=0)
    torch.testing.assert_close(fast[contrast.cuda()], direct[contrast.cuda()], rtol=1e-5, atol=1e-5)
    cpu = fused_augment(imgs, size, params=p, impl="cpu", interpolation=interpolation)
    assert_close01(fast.cpu(), cpu)


@pytest.mark.parametrize("what", ["contrast", "all_strong"])
@pytest.mark.parametrize(
    "size",
    # 224 x 224: bands of 28 rows, blur in the cluster; 9 x 13: three of the cluster's eight bands are
    # empty (they still take part in its barriers); 8 x 300: one row a band; 7 x 5: too few rows, no
    # cluster launch; 320 x 320: contrast only in the cluster (a 40-row band leaves too little room for
    # the blur's rows); 613 x 613: a band does not fit shared memory, no cluster launch.
    [(224, 224), (9, 13), (8, 300), (7, 5), (320, 320), (613, 613)],
)
def test_cuda_op_contrast_cluster_launch_equals_cpu_op(what, size, monkeypatch):
    # On sm_90+ outputs with contrast or blur run in a cluster launch: one resampling pass, each block's
    # band kept in its shared memory, the gray mean summed across the cluster, the blur's columns read
    # from the other blocks (at 224 x 224; larger bands keep blur in the plain launch). Against the CPU
    # op and against the plain launch (VLKERNELS_AUGMENT_CLUSTERS=0: two passes, a global workspace),
    # with blurred images and views of one image (source index) in the same batch.
    imgs = images_of("list", [(500, 375), (240, 260), (64, 80)], seed=46)
    p = params_with(imgs, seed=47, **ONLY[what], blur_p=0.3)
    p = AugmentParams.cat([p, params_with(imgs, seed=48, **ONLY[what])])
    p.source = torch.arange(3).repeat(2)
    for out_dtype in (torch.float32, torch.uint8):
        kw = dict(params=p, out_dtype=out_dtype, interpolation="bicubic")
        cpu = fused_augment(imgs, size, impl="cpu", **kw)
        cluster = fused_augment(to_cuda(imgs), size, impl="cuda", **dict(kw, params=p.to("cuda")))
        monkeypatch.setenv("VLKERNELS_AUGMENT_CLUSTERS", "0")
        plain = fused_augment(to_cuda(imgs), size, impl="cuda", **dict(kw, params=p.to("cuda")))
        monkeypatch.delenv("VLKERNELS_AUGMENT_CLUSTERS")
        if out_dtype == torch.uint8:
            assert (cluster.cpu().int() - cpu.int()).abs().max() <= 1
            assert (cluster.int() - plain.int()).abs().max() <= 1
        else:
            assert_close01(cluster.cpu(), cpu)
            assert_close01(cluster.cpu(), plain.cpu())


def test_cuda_op_on_a_non_default_stream():
    imgs = images_of("nhwc", [(64, 80)] * 4, seed=36).cuda()
    p = params_with(imgs.cpu(), seed=37, **ONLY["all_strong"]).to("cuda")
    expected = fused_augment(imgs, 32, params=p, impl="cuda")
    torch.cuda.synchronize()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        out = fused_augment(imgs, 32, params=p, impl="cuda")
        out_unchecked = op()(*[a.cuda() if isinstance(a, torch.Tensor) else a for a in _op_args()], False)
    side.synchronize()
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    assert torch.isfinite(out_unchecked).all()


@pytest.mark.parametrize("what", ["all_strong", "grayscale", "crop"])
def test_cuda_op_solarize_equals_cpu_op(what):
    imgs = images_of("list", [(40, 61), (256, 256), (5, 3)], seed=38)
    p = params_with(imgs, seed=39, **ONLY[what], solarize_p=0.7)
    cpu = fused_augment(imgs, (33, 29), params=p, impl="cpu")
    gpu = fused_augment(to_cuda(imgs), (33, 29), params=p.to("cuda"), impl="cuda")
    assert_close01(gpu.cpu(), cpu)


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_cuda_op_uint8_and_channels_last_equal_cpu_op(channels_last, dtype):
    imgs = images_of("list", [(40, 61), (256, 256), (5, 3)], seed=42)
    p = params_with(imgs, seed=43, **ONLY["all_strong"], solarize_p=0.5)
    kw = dict(out_dtype=dtype, channels_last=channels_last)
    cpu = fused_augment(imgs, (33, 29), params=p, impl="cpu", **kw)
    gpu = fused_augment(to_cuda(imgs), (33, 29), params=p.to("cuda"), impl="cuda", **kw)
    assert gpu.dtype == dtype and gpu.stride() == cpu.stride()
    if dtype == torch.uint8:
        assert (gpu.cpu().int() - cpu.int()).abs().max() <= 1  # one rounding step near .5 boundaries
    else:
        assert_close01(gpu.cpu(), cpu)


# ---- bicubic resampling and Gaussian blur ---------------------------------------------------------


@pytest.mark.parametrize("what", ["crop", "flip", "contrast", "all_strong"])
@pytest.mark.parametrize("kind", ["nhwc", "list"])
def test_cuda_op_bicubic_equals_cpu_op(what, kind):
    # Upscales, mild downscales (shared-memory tap tables: bicubic up to 1.5x) and large ones (taps on
    # the fly), 1x1 images and outputs.
    sizes = [(1, 1), (5, 3), (40, 61), (256, 256), (300, 97)] if kind == "list" else [(57, 44)] * 6
    imgs = images_of(kind, sizes, seed=140)
    p = params_with(imgs, seed=141, **ONLY[what])
    for size in [(224, 224), (17, 9), (1, 1), (40, 33)]:
        cpu = fused_augment(imgs, size, params=p, impl="cpu", interpolation="bicubic")
        gpu = fused_augment(to_cuda(imgs), size, params=p.to("cuda"), impl="cuda", interpolation="bicubic")
        assert_close01(gpu.cpu(), cpu)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_cuda_op_bicubic_matches_reference_on_gpu(dtype):
    imgs = images_of("list", [(31, 47), (64, 64), (12, 200)], seed=142)
    p = params_with(imgs, seed=143, **ONLY["all_strong"]).to("cuda")
    kw = dict(params=p, interpolation="bicubic")
    expected = fused_augment(to_cuda(imgs), 32, impl="torch", **kw)
    out = fused_augment(to_cuda(imgs), 32, impl="cuda", out_dtype=dtype, **kw)
    assert_close01(out.cpu(), expected.cpu(), dtype)


@pytest.mark.parametrize("what", ["crop", "contrast", "grayscale", "all_strong"])
@pytest.mark.parametrize(("lo", "hi"), [(0.1, 2.0), (0.01, 0.2), (3.0, 1e4)])
def test_cuda_op_blur_equals_cpu_op(what, lo, hi):
    imgs = images_of("list", [(1, 1), (40, 61), (256, 256), (5, 3), (300, 97)], seed=144)
    p = params_with(imgs, seed=145, **ONLY[what], blur_p=0.8, blur_sigma=(lo, hi))
    for size in [(224, 224), (17, 9), (1, 1), (2, 31)]:
        for interpolation in ("bilinear", "bicubic"):
            kw = dict(params=p, interpolation=interpolation)
            cpu = fused_augment(imgs, size, impl="cpu", **kw)
            gpu = fused_augment(to_cuda(imgs), size, impl="cuda", **dict(kw, params=p.to("cuda")))
            assert_close01(gpu.cpu(), cpu)


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32, torch.bfloat16])
def test_cuda_op_blur_dtypes_and_channels_last_equal_cpu_op(channels_last, dtype):
    imgs = images_of("nhwc", [(64, 48)] * 5, seed=146)
    p = params_with(imgs, seed=147, **ONLY["all_strong"], blur_p=0.6)
    kw = dict(out_dtype=dtype, channels_last=channels_last)
    cpu = fused_augment(imgs, (33, 29), params=p, impl="cpu", **kw)
    gpu = fused_augment(imgs.cuda(), (33, 29), params=p.to("cuda"), impl="cuda", **kw)
    assert gpu.dtype == dtype and gpu.stride() == cpu.stride()
    if dtype == torch.uint8:
        assert (gpu.cpu().int() - cpu.int()).abs().max() <= 1
    else:
        assert_close01(gpu.cpu(), cpu, dtype)


def test_cuda_op_blur_sigma_checks():
    args = [a.cuda() if isinstance(a, torch.Tensor) else a for a in _op_args()]
    good = op()(*args, True, None, False, 0, torch.tensor([0.5, 1.0, 0.0], device="cuda"))
    bad = torch.tensor([0.5, float("nan"), 0.0], device="cuda")
    with pytest.raises(RuntimeError, match="blur_sigma of image 1"):
        op()(*args, True, None, False, 0, bad)
    out = op()(*args, False, None, False, 0, bad)  # unchecked: the guard makes the image NaN
    torch.cuda.synchronize()
    assert torch.isnan(out[1]).all()
    torch.testing.assert_close(out[[0, 2]], good[[0, 2]], rtol=0, atol=0)


def test_blur_sampling_to_output_never_syncs():
    imgs = images_of("nhwc", [(64, 80)] * 4).cuda()
    gen = torch.Generator(device="cuda").manual_seed(0)
    kw = dict(generator=gen, blur_p=0.5, interpolation="bicubic")
    fused_augment(imgs, 32, **kw)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = fused_augment(imgs, 32, **kw)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(out).all()


def test_opcheck_cuda_bicubic_blur():
    args = [a.cuda() if isinstance(a, torch.Tensor) else a for a in _op_args()]
    extra = (True, torch.tensor([True, False, True], device="cuda"), False, 1)
    torch.library.opcheck(op(), (*args, *extra, torch.tensor([0.0, 1.5, 40.0], device="cuda")))


# ---- several views per image (source index) -------------------------------------------------------


@pytest.mark.parametrize("kind", ["nhwc", "list"])
def test_cuda_op_views_equal_cpu_op(kind):
    from tests.test_augment_views import VIEWS

    imgs = images_of(kind, [(64, 80), (33, 41), (100, 20)] if kind == "list" else [(64, 80)] * 3, seed=40)
    from vlkernels.augment import sample_augment_params

    p = sample_augment_params(imgs, views=VIEWS, generator=torch.Generator().manual_seed(41))
    cpu = fused_augment(imgs, 24, params=p, impl="cpu")
    gpu = fused_augment(to_cuda(imgs), 24, params=p.to("cuda"), impl="cuda")
    assert gpu.shape == cpu.shape == (9, 3, 24, 24)
    assert_close01(gpu.cpu(), cpu)


def test_cuda_op_bad_source_checked_and_guarded():
    from tests.test_augment_views import _op_args_with_source

    args, src = _op_args_with_source([0, 3, 1])
    cuda_args = [a.cuda() if isinstance(a, torch.Tensor) else a for a in args]
    with pytest.raises(RuntimeError, match=r"source\[1\] is 3"):
        op()(*cuda_args, True, None, False, 0, None, src.cuda())
    # Unchecked: the kernel's guard (check_output) turns the output with a bad index into NaN.
    good_args, good_src = _op_args_with_source([0, 1, 1])
    good = op()(
        *[a.cuda() if isinstance(a, torch.Tensor) else a for a in good_args],
        False,
        None,
        False,
        0,
        None,
        good_src.cuda(),
    )
    out = op()(*cuda_args, False, None, False, 0, None, src.cuda())
    torch.cuda.synchronize()
    assert torch.isnan(out[1]).all()
    torch.testing.assert_close(out[0], good[0], rtol=0, atol=0)


def test_views_sampling_to_output_never_syncs():
    from tests.test_augment_views import VIEWS

    imgs = images_of("nhwc", [(64, 80)] * 4).cuda()
    gen = torch.Generator(device="cuda").manual_seed(0)
    fused_augment(imgs, 32, generator=gen, views=VIEWS)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = fused_augment(imgs, 32, generator=gen, views=VIEWS)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert out.shape == (12, 3, 32, 32) and torch.isfinite(out).all()


def test_opcheck_cuda_source():
    from tests.test_augment_views import _op_args_with_source

    args, src = _op_args_with_source([2, 0, 0, 1])
    cuda_args = [a.cuda() if isinstance(a, torch.Tensor) else a for a in args]
    torch.library.opcheck(op(), (*cuda_args, True, None, False, 0, None, src.cuda()))


# ---- PackedImages on the GPU ------------------------------------------------------------------------


def test_packed_images_on_cuda_equal_cpu_op_and_never_sync():
    from vlkernels.augment import PackedImages
    from vlkernels.augment.api import as_batch

    imgs = images_of("list", [(64, 80), (33, 41), (100, 20), (1, 1)], seed=50)
    host = PackedImages.from_list(imgs, pin_memory=True)
    assert host.is_pinned()
    p = params_with(imgs, seed=51, **ONLY["all_strong"])
    cpu = fused_augment(host, 24, params=p, impl="cpu")
    dev = host.to("cuda", non_blocking=True)
    assert as_batch(dev).data.data_ptr() == dev.data.data_ptr()
    gpu = fused_augment(dev, 24, params=p.to("cuda"), impl="cuda")
    assert_close01(gpu.cpu(), cpu)
    # Views of the device buffer are read in place too.
    assert as_batch(dev.images()).data.data_ptr() == dev.data.data_ptr()
    gen = torch.Generator(device="cuda").manual_seed(0)
    fused_augment(dev, 24, generator=gen)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = fused_augment(host.to("cuda", non_blocking=True), 24, generator=gen)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert out.shape == (4, 3, 24, 24) and torch.isfinite(out).all()


def test_dataloader_recipe_on_cuda():
    from tests.test_augment_packed import _load_example

    res = _load_example().main(["--images", "40", "--batch", "16", "--device", "cuda", "--pin-memory"])
    assert res["images"] == 40


# ---- parity with the real torchvision v2 on the GPU (float images; tests/test_augment_torchvision.py) ----


def _torchvision_parity():
    """The helpers of tests/test_augment_torchvision.py (torchvision and scikit-image: the dev extra)."""
    return pytest.importorskip(
        "tests.test_augment_torchvision", reason="needs torchvision and scikit-image (pip install -e .[dev])"
    )


def _on_cuda(imgs, p):
    return [t.cuda() for t in imgs], p.to("cuda")


@pytest.mark.parametrize("which", ["photos", "generated"])
@pytest.mark.parametrize(
    "what",
    ["crop_bilinear", "crop_bicubic", "flip", "brightness", "contrast", "saturation", "hue"]
    + ["grayscale", "gaussian_blur", "solarize", "normalize"],
)
def test_cuda_op_each_op_matches_torchvision(what, which):
    tvp = _torchvision_parity()
    interpolation, settings = tvp.EACH_OP[what]
    imgs = tvp.images(which)
    p = tvp.sample_augment_params(imgs, generator=torch.Generator().manual_seed(len(what)), **settings)
    imgs, p = _on_cuda(imgs, p)
    norm = tvp.CLIP if what == "normalize" else tvp.PLAIN
    # torchvision runs on the GPU too; tolerance 1e-4 on the [0, 1] scale (fast-math division).
    err = tvp.parity_error(imgs, p, (224, 224), interpolation, "cuda", norm, tol=1e-4, max_other_branch=None)
    tvp.assert_parity(err, 1e-4)


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
@pytest.mark.parametrize("recipe", ["strong_view", "extreme"])
@pytest.mark.parametrize("which", ["photos", "generated"])
def test_cuda_op_full_chain_matches_torchvision(which, recipe, interpolation):
    tvp = _torchvision_parity()
    imgs = tvp.images(which)
    views = [dict(scale=(0.08, 1.0)), dict(scale=(0.4, 1.0))]
    p = tvp.sample_augment_params(
        imgs, generator=torch.Generator().manual_seed(7), views=views, **tvp.RECIPES[recipe]
    )
    imgs, p = _on_cuda(imgs, p)
    err = tvp.parity_error(
        imgs, p, (224, 224), interpolation, "cuda", tvp.CLIP, tol=1e-4, max_other_branch=None
    )
    tvp.assert_parity(err, 1e-4)


def test_cuda_op_blur_kernel_clipped_matches_torchvision():
    tvp = _torchvision_parity()
    imgs = tvp.images("generated")
    p = tvp.sample_augment_params(
        imgs, generator=torch.Generator().manual_seed(3), blur_p=1.0, blur_sigma=(8.0, 40.0)
    )
    imgs, p = _on_cuda(imgs, p)
    for interpolation in ("bilinear", "bicubic"):
        err = tvp.parity_error(
            imgs, p, (24, 40), interpolation, "cuda", tvp.CLIP, tol=1e-4, max_other_branch=None
        )
        tvp.assert_parity(err, 1e-4)
