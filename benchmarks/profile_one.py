"""One contrastive forward + backward on the Triton kernels, for a profiler (the GPU suite's ncu step).

    ncu --profile-from-start off ... python -m benchmarks.profile_one --batch 32768 --dim 1024

Warm-up (compilation, autotuning of nothing: the configs are fixed) runs outside the profiled range; the range
holds exactly one forward and one backward.

    python -m benchmarks.profile_one --sweep --batches 32768 65536 --workspaces-mb 256 1024 4096

times forward + backward (median of triton.testing.do_bench) for each batch and workspace budget
(VLKERNELS_WORKSPACE_MB) instead, with TFLOP/s at the 8 B^2 D floor's FLOP count.

    ncu --profile-from-start off ... python -m benchmarks.profile_one --augment

profiles one fused_augment call on the CUDA kernel instead: the augmentation cost model's open_clip
scenario (256 images of 500x375, RRC (0.9, 1) bicubic to 224, float32; the same sampled parameters), and
prints the model's prediction for it (instructions issued, time range) beside the profile, so that ncu's
executed instructions, issue rate and stall reasons check the model. Without a GPU it prints the
prediction alone.
"""

from __future__ import annotations

import argparse
import os

import torch

from vlkernels import contrastive_loss


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--batch", type=int, default=32768)
    p.add_argument("--dim", type=int, default=1024)
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--sweep", action="store_true")
    p.add_argument("--batches", type=int, nargs="+", default=[32768, 65536])
    p.add_argument("--workspaces-mb", type=int, nargs="+", default=[256, 1024, 4096])
    p.add_argument(
        "--augment", action="store_true", help="one fused_augment call (the cost model's open_clip case)"
    )
    a = p.parse_args()
    if a.augment:
        augment_once()
        return
    dtype = getattr(torch, a.dtype)
    if a.sweep:
        sweep(a.batches, a.dim, dtype, a.workspaces_mb)
        return
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

    loss = profiled(step)
    print(f"B={a.batch} D={a.dim} {a.dtype}: loss {loss.item():.6f}")


def profiled(fn, warmup: int = 1):
    """fn() run ``warmup`` times (compilation, caches), then once inside the profiler's range."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    torch.cuda.cudart().cudaProfilerStart()
    out = fn()
    torch.cuda.synchronize()
    torch.cuda.cudart().cudaProfilerStop()
    return out


def augment_once(label: str = "open_clip: 256 x 500x375, RRC (0.9, 1) bicubic, fp32") -> None:
    from benchmarks import augment_cost_model as acm
    from vlkernels.augment import fused_augment, sample_augment_params

    _, sizes, kw, interp, dtype, _ = next(sc for sc in acm.scenarios() if sc[0] == label)
    gen = torch.Generator().manual_seed(1)  # the model table's parameters
    params = sample_augment_params(torch.tensor(sizes), generator=gen, **kw)
    r = acm.predict(sizes, params, out_dtype=dtype, interpolation=interp)
    warp_instr = r["work"].pipes()["issue"] / 32
    lo, hi = r["time_s"]
    ms = f"{lo * 1e3:.3f}-{hi * 1e3:.3f} ms"
    print(f"model ({label}): {warp_instr / 1e6:.1f} M warp instructions issued, {ms}")
    if not torch.cuda.is_available():
        return
    h, w = sizes[0]
    g = torch.Generator(device="cuda").manual_seed(0)
    images = torch.randint(0, 256, (len(sizes), h, w, 3), dtype=torch.uint8, device="cuda", generator=g)
    p = params.to("cuda")

    def call():
        return fused_augment(images, 224, params=p, interpolation=interp, out_dtype=dtype, impl="cuda")

    out = profiled(call, warmup=2)
    print(f"fused_augment: {tuple(out.shape)} {out.dtype}")


def _step(img, txt, scale) -> None:
    img.grad = txt.grad = scale.grad = None
    contrastive_loss(img, txt, scale, impl="triton").backward()


def sweep(batches, dim, dtype, workspaces_mb) -> None:
    import functools

    import triton.testing

    for batch in batches:
        g = torch.Generator(device="cuda").manual_seed(batch)
        feats = []
        for _ in range(2):
            x = torch.nn.functional.normalize(torch.randn(batch, dim, device="cuda", generator=g), dim=1)
            feats.append(x.to(dtype).requires_grad_())
        scale = torch.tensor(100.0, device="cuda", requires_grad=True)
        step = functools.partial(_step, feats[0], feats[1], scale)
        for mb in workspaces_mb:
            os.environ["VLKERNELS_WORKSPACE_MB"] = str(mb)
            step()
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            rep = max(200, int(batch / 65536 * 2000))
            ms = triton.testing.do_bench(step, warmup=3, rep=rep, return_mode="median")
            peak = torch.cuda.max_memory_allocated() / 2**20
            tflops = 8.0 * batch * batch * dim / (ms * 1e-3) / 1e12
            what = f"sweep B={batch} D={dim} workspace={mb} MiB"
            print(f"{what}: {ms:.2f} ms, {tflops:.0f} TFLOP/s, peak {peak:.0f} MiB")


if __name__ == "__main__":
    main()
