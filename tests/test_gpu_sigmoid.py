"""GPU checks of the sigmoid (SigLIP) loss (run by benchmarks/gpu_suite.sh; skipped with a reason on CPU).

The same rule as tests/test_sigmoid.py (its ``check``, on "cuda"): each of (loss, dI, dT, ds, db) errs
from a float64 reference by at most twice what torch's naive computation in the same dtype errs, plus 8
fp32 ulps of its error scale, plus, on the Triton path in a 16-bit dtype, what rounding G to it adds.
"""

from __future__ import annotations

import pytest
import torch

from tests._ref import features
from tests.test_sigmoid import NAMES, check, check_features, run
from vlkernels import sigmoid_loss

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize(
    "dtype,workspace_mb",
    [(torch.float32, None), (torch.bfloat16, None), (torch.float16, None), (torch.bfloat16, "0")],
)
@pytest.mark.parametrize("batch,dim", [(1, 1), (257, 129), (4099, 512)])
def test_triton_cuda_vs_float64(monkeypatch, dtype, batch, dim, workspace_mb):
    # workspace 0: G in chunks of one block of rows, every text row from the column pass
    if workspace_mb is not None:
        monkeypatch.setenv("VLKERNELS_WORKSPACE_MB", workspace_mb)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)  # torch's fp32 base: IEEE
    check("triton", batch, dim, dtype, seed=batch + dim, device="cuda")


@pytest.mark.parametrize("impl", ["torch", "triton"])
@pytest.mark.parametrize("scale,bias", [(10.0, -10.0), (100.0, -3.0)])
def test_cuda_fp32_ieee(monkeypatch, impl, scale, bias):
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    check(impl, 1000, 300, torch.float32, scale=scale, bias=bias, grad_out=0.3, seed=1300, device="cuda")


def test_deterministic():
    img, txt = features(8191, 768, torch.bfloat16, device="cuda", seed=3)
    scale = torch.tensor(10.0, device="cuda")
    first = run(lambda *a: sigmoid_loss(*a, impl="triton"), img, txt, scale, -10.0, 1.3)
    again = run(lambda *a: sigmoid_loss(*a, impl="triton"), img, txt, scale, -10.0, 1.3)
    for name, a, b in zip(NAMES, first, again, strict=True):
        assert torch.equal(a, b), name


def test_memory_is_o_b():
    batch, dim = 65536, 512
    img, txt = features(batch, dim, torch.bfloat16, device="cuda")
    img.requires_grad_()
    txt.requires_grad_()
    scale = torch.tensor(10.0, device="cuda", requires_grad=True)
    bias = torch.tensor(-10.0, device="cuda", requires_grad=True)
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    sigmoid_loss(img, txt, scale, bias, impl="triton").backward()
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - base - 2 * batch * dim * 2  # beyond the two gradients
    # 32 bytes per row plus the 256 MiB workspace (16 MiB of allocator slack); one B x B fp32 is 16 GiB
    assert extra < 32 * batch + (256 << 20) + (16 << 20), extra
    assert torch.isfinite(img.grad).all() and torch.isfinite(scale.grad) and torch.isfinite(bias.grad)


def test_wide_tiles_fall_back_for_features_tma_cannot_read():
    """bf16 at D = 512 takes the TMA-read wide tiles on sm_90; column-major features (last stride not 1:
    TMA cannot read them; ``run``'s clone keeps the strides) take the pointer-load 128 x 128 ones, within
    the same bound."""
    batch, dim, dtype = 1029, 512, torch.bfloat16
    img, txt = features(batch, dim, dtype, device="cuda", seed=11)
    img = img.t().contiguous().t()
    assert img.stride(1) != 1
    check_features("triton", img, txt, 10.0, -10.0, 1.7)
