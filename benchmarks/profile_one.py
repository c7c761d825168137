"""One contrastive forward + backward on the Triton kernels, for a profiler (the GPU suite's ncu step).

    ncu --profile-from-start off ... python -m benchmarks.profile_one --batch 32768 --dim 1024

Warm-up (compilation, autotuning of nothing: the configs are fixed) runs outside the profiled range; the range
holds exactly one forward and one backward.
"""

from __future__ import annotations

import argparse

import torch

from vlkernels import contrastive_loss


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--batch", type=int, default=32768)
    p.add_argument("--dim", type=int, default=1024)
    p.add_argument("--dtype", default="bfloat16")
    a = p.parse_args()
    dtype = getattr(torch, a.dtype)
    g = torch.Generator(device="cuda").manual_seed(0)
    img = torch.nn.functional.normalize(torch.randn(a.batch, a.dim, device="cuda", generator=g), dim=1)
    txt = torch.nn.functional.normalize(torch.randn(a.batch, a.dim, device="cuda", generator=g), dim=1)
    img = img.to(dtype).requires_grad_()
    txt = txt.to(dtype).requires_grad_()
    scale = torch.tensor(100.0, device="cuda", requires_grad=True)

    def step():
        loss = contrastive_loss(img, txt, scale, impl="triton")
        loss.backward(torch.tensor(0.7, device="cuda"))
        return loss

    step()
    torch.cuda.synchronize()
    torch.cuda.cudart().cudaProfilerStart()
    loss = step()
    torch.cuda.synchronize()
    torch.cuda.cudart().cudaProfilerStop()
    print(f"B={a.batch} D={a.dim} {a.dtype}: loss {loss.item():.6f}")


if __name__ == "__main__":
    main()
