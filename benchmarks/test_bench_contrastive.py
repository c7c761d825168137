"""pytest-benchmark entry point: ``pytest benchmarks/ --benchmark-enable`` (not part of the CI tests)."""

import pytest
import torch

from vlkernels import contrastive_loss

IMPLS = ["naive", "torch"] + (["triton"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("batch", [1024, 4096])
def test_contrastive_fwd_bwd(benchmark, impl, batch):
    device = "cuda" if torch.cuda.is_available() else "cpu"
    img = torch.nn.functional.normalize(torch.randn(batch, 256, device=device), dim=1).requires_grad_()
    txt = torch.nn.functional.normalize(torch.randn(batch, 256, device=device), dim=1).requires_grad_()

    def step():
        img.grad = txt.grad = None
        contrastive_loss(img, txt, 14.3, impl=impl).backward()
        if device == "cuda":
            torch.cuda.synchronize()

    benchmark(step)
