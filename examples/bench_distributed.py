"""Time and peak memory of the distributed contrastive loss per rank (forward + backward), one JSON line per
configuration on rank 0. Run under torchrun, e.g.

    torchrun --standalone --nproc_per_node 8 examples/bench_distributed.py --device cuda --dtype bfloat16
    torchrun --standalone --nproc_per_node 1 examples/bench_distributed.py --device cuda   # NCCL, world 1
    torchrun --standalone --nproc_per_node 2 examples/bench_distributed.py --batch-per-rank 512  # CPU, gloo

Modes: ``gather`` is ``contrastive_loss(gather=True)`` (open_clip's local_loss=False,
gather_with_grad=True semantics; block-row scheme), ``local`` is ``ClipLoss(local_loss=True,
gather_with_grad=True)``; ``impl="naive"`` is open_clip's own computation (B x B or b x B logits). With
``--single`` the same global batch also runs without any process group on one device (world 1, no
collectives) for the overhead of the distributed path.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch
import torch.distributed as dist
import torch.nn.functional as F

from vlkernels import ClipLoss, contrastive_loss


def _time(fn, device, reps: int, barrier: bool = True) -> tuple[float, float]:
    """(median ms, peak extra MiB on CUDA or nan) of fn() over ``reps`` runs after two warm-ups; with
    ``barrier`` the ranks start each run together."""
    for _ in range(2):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    times = []
    for _ in range(reps):
        if barrier:
            dist.barrier()
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(1e3 * (time.perf_counter() - start))
    peak = float("nan")
    if device.type == "cuda":
        peak = (torch.cuda.max_memory_allocated() - base) / 2**20
    return statistics.median(times), peak


def _step(mode: str, impl: str, img, txt, scale, rank: int, world: int):
    """One forward + backward of ``mode`` ("gather", "local" or "single": no process group)."""
    if mode == "local":
        loss_fn = ClipLoss(local_loss=True, gather_with_grad=True, rank=rank, world_size=world, impl=impl)
        return lambda: loss_fn(img, txt, scale).backward()
    return lambda: contrastive_loss(img, txt, scale, impl=impl, gather=mode == "gather").backward()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch-per-rank", type=int, nargs="+", default=[256, 1024])
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--impls", nargs="+", default=["auto", "naive"])
    parser.add_argument("--modes", nargs="+", default=["gather", "local"], choices=["gather", "local"])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--single", action="store_true", help="also time the global batch in one process")
    args = parser.parse_args()

    device = torch.device(args.device)
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        device = torch.device("cuda", torch.cuda.current_device())
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    dtype = getattr(torch, args.dtype)
    info = dict(world=world, D=args.dim, dtype=args.dtype, device=str(device), torch=torch.__version__)
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)

    for b in args.batch_per_rank:
        g = torch.Generator().manual_seed(rank)
        img = F.normalize(torch.randn(b, args.dim, generator=g), dim=1).to(device, dtype).requires_grad_()
        txt = F.normalize(torch.randn(b, args.dim, generator=g), dim=1).to(device, dtype).requires_grad_()
        scale = torch.tensor(14.3, device=device, requires_grad=True)
        for impl in args.impls:
            for mode in args.modes:
                step = _step(mode, impl, img, txt, scale, rank, world)
                ms, peak = _time(step, device, args.reps)
                if rank == 0:
                    row = dict(info, b=b, B=world * b, impl=impl, mode=mode, ms=round(ms, 3), peak_mib=peak)
                    print(json.dumps(row), flush=True)
        if args.single and rank == 0:
            big_img = img.detach().repeat(world, 1).requires_grad_()
            big_txt = txt.detach().repeat(world, 1).requires_grad_()
            for impl in args.impls:
                ms, peak = _time(
                    _step("single", impl, big_img, big_txt, scale, 0, 1), device, args.reps, False
                )
                row = dict(info, b=b, B=world * b, impl=impl, mode="single-process", ms=round(ms, 3))
                print(json.dumps(dict(row, peak_mib=peak)), flush=True)
        dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
