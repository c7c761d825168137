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
    assert ran == [["cuda"] * 8]


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
