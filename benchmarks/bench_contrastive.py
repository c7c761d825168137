"""Contrastive loss: speed and peak memory of naive vs torch vs triton (vs open_clip, Inf-CL on GPU).

    python -m benchmarks.bench_contrastive                      # CPU defaults (B up to 16384, D=256)
    python -m benchmarks.bench_contrastive --device cuda --out OUT/contrastive.json

Every configuration runs in its own subprocess (clean peak memory); ratios against naive are computed
from rows of the same run. FLOPs are counted as 2 B^2 D (forward) and 8 B^2 D (forward + backward); the
fwd+bwd rows also carry the Triton v2 kernels' FLOPs (in B^2 D) and their MODELLED H100 time
(benchmarks/cost_model.py) for that shape.
"""

from __future__ import annotations

import json
import math
import sys

import torch

from benchmarks import harness

CPU_DEFAULTS = dict(batch_sizes=[1024, 4096, 16384], dims=[256], dtypes=["float32"], impls=["naive", "torch"])
CUDA_DEFAULTS = dict(
    batch_sizes=[4096, 16384, 32768, 131072, 524288, 1048576],
    dims=[512, 1024],
    dtypes=["bfloat16"],
    impls=["naive", "open_clip", "inf_cl", "torch", "triton"],
)
# Beyond these B the naive/open_clip logits (several fp32 B x B buffers) cannot fit in 80 GB.
NAIVE_MAX_B = {"cuda": 65536, "cpu": 16384}


def _loss_fn(impl: str, device: str):
    from vlkernels import contrastive_loss

    if impl in ("naive", "torch", "triton"):
        return lambda i, t, s: contrastive_loss(i, t, s, impl=impl)
    if impl == "open_clip":
        from open_clip.loss import ClipLoss

        mod = ClipLoss(local_loss=True, gather_with_grad=True, rank=0, world_size=1)
        return lambda i, t, s: mod(i, t, s)
    if impl == "inf_cl":
        import torch.distributed as dist
        from inf_cl import cal_inf_loss

        if not dist.is_initialized():
            backend = "nccl" if device.startswith("cuda") else "gloo"
            dist.init_process_group(backend, init_method="tcp://127.0.0.1:29533", rank=0, world_size=1)
        # Both directions, averaged: the symmetric CLIP loss.
        return lambda i, t, s: 0.5 * (cal_inf_loss(i, t, scale=s).mean() + cal_inf_loss(t, i, scale=s).mean())
    raise ValueError(f"unknown impl {impl!r}")


def worker(cfg: dict) -> dict:
    harness.use_threads(cfg)
    device, batch, dim = cfg["device"], cfg["B"], cfg["D"]
    dtype = getattr(torch, cfg["dtype"])
    torch.manual_seed(0)
    img = torch.nn.functional.normalize(torch.randn(batch, dim, device=device), dim=1).to(dtype)
    txt = torch.nn.functional.normalize(torch.randn(batch, dim, device=device), dim=1).to(dtype)
    scale = torch.tensor(math.exp(math.log(1 / 0.07)), device=device)
    backward = cfg["mode"] == "fwd+bwd"
    if backward:
        img.requires_grad_()
        txt.requires_grad_()
        scale.requires_grad_()
    fn = _loss_fn(cfg["impl"], device)
    row = dict(cfg)
    leaves = (img, txt, scale)
    row.update(harness.measure_loss(lambda: fn(*leaves), leaves, backward, device, cfg["reps"]))
    row["grad_bytes"] = 2 * batch * dim * img.element_size() if backward else 0
    flops = (8 if backward else 2) * batch * batch * dim
    row["tflops"] = flops / (row["median_ms"] * 1e-3) / 1e12
    row.update(harness.environment(device))
    return row


def bf16_ceiling_tflops() -> float:
    """Measured bf16 8192^3 matmul throughput: the ceiling the kernels are compared with."""
    import triton.testing

    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    ms = triton.testing.do_bench(lambda: a @ b, warmup=25, rep=200)
    return 2 * 8192**3 / (ms * 1e-3) / 1e12


def available(impl: str, device: str) -> str | None:
    """Why ``impl`` cannot run here, or None."""
    if impl in ("open_clip", "inf_cl"):
        try:
            __import__("open_clip.loss" if impl == "open_clip" else "inf_cl")
        except Exception as exc:
            return f"{impl} is not installed ({type(exc).__name__})"
        if impl == "inf_cl" and not device.startswith("cuda"):
            return "Inf-CL needs CUDA"
    if impl == "triton":
        from vlkernels._triton import unavailable_reason

        return unavailable_reason(torch.device(device))
    return None


def add_model(rows: list) -> None:
    """For every fwd+bwd row: the Triton v2 kernels' FLOPs and their MODELLED H100 time at that (B, D,
    dtype) from benchmarks/cost_model.py at the run's workspace budget (``VLKERNELS_WORKSPACE_MB``), with the
    backward's plan (a prediction next to the measured row, never a measurement)."""
    from benchmarks import cost_model
    from vlkernels.ops.torch_utils import workspace_bytes

    labels = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32", "bf16": "bf16", "fp16": "fp16"}
    for r in rows:
        label = labels.get(str(r.get("dtype")))
        if r.get("mode") != "fwd+bwd" or label is None:
            continue
        p = cost_model.predict("contrastive", r["B"], r["D"], label, workspace=workspace_bytes())
        r["workspace_mb"] = workspace_bytes() / 2**20
        r["v2_plan"] = "chunk {chunk} / slab {slab} / covered {covered}".format(**p["plan"])
        r["v2_flops_per_b2d"] = round(p["flops_total"] / (r["B"] ** 2 * r["D"]), 3)
        r["modelled_h100_ms"] = f"{p['time_s'][0] * 1e3:.3g}-{p['time_s'][1] * 1e3:.3g}"


def main(argv=None) -> list[dict]:
    p = harness.loss_bench_parser(__doc__, "contrastive")
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return []
    harness.fill_loss_defaults(args, CPU_DEFAULTS, CUDA_DEFAULTS, "contrastive")
    kind, batch_sizes, dims, dtypes, impls = args.kind, args.batch_sizes, args.dims, args.dtypes, args.impls
    reps, out, plot_path = args.reps, args.out, args.plot

    rows = []
    skipped = {impl: available(impl, args.device) for impl in impls}
    for impl, why in skipped.items():
        if why:
            print(f"skipping {impl}: {why}", file=sys.stderr)
    for dim in dims:
        for dtype in dtypes:
            for batch in batch_sizes:
                for mode in args.modes:
                    flops = (8 if mode == "fwd+bwd" else 2) * batch * batch * dim
                    if flops > args.max_flops:
                        continue
                    for impl in impls:
                        if skipped[impl]:
                            continue
                        if impl in ("naive", "open_clip") and batch > NAIVE_MAX_B[kind]:
                            continue
                        cfg = dict(
                            op="contrastive",
                            impl=impl,
                            B=batch,
                            D=dim,
                            dtype=dtype,
                            mode=mode,
                            device=args.device,
                            reps=reps,
                            threads=args.threads,
                        )
                        row = harness.run_in_subprocess("benchmarks.bench_contrastive", cfg)
                        print(
                            f"{impl:9s} B={batch:8d} D={dim:5d} {dtype:8s} {mode:8s} "
                            + (
                                f"{row['median_ms']:10.2f} ms  {row['peak_mem_bytes'] / 2**20:9.1f} MiB"
                                if "error" not in row
                                else "ERROR " + row["error"][:200]
                            ),
                            flush=True,
                        )
                        rows.append(row)
                        harness.write_json(rows, out)  # partial results survive a suite timeout
    harness.add_ratios(rows)
    add_model(rows)
    if kind == "cuda":
        ceiling = bf16_ceiling_tflops()
        for r in rows:
            if "tflops" in r:
                r["bf16_ceiling_tflops"] = ceiling
                r["fraction_of_ceiling"] = r["tflops"] / ceiling
        inf = {
            (r["B"], r["D"], r["dtype"], r["mode"]): r
            for r in rows
            if r["impl"] == "inf_cl" and "error" not in r
        }
        for r in rows:
            base = inf.get((r["B"], r["D"], r["dtype"], r["mode"]))
            if base and "error" not in r:
                r["speedup_vs_inf_cl"] = base["median_ms"] / r["median_ms"]
    harness.write_json(rows, out)
    harness.plot(
        rows, plot_path, f"contrastive loss on {rows[0]['device'] if rows and 'device' in rows[0] else kind}"
    )
    harness.print_table(
        rows,
        [
            "impl",
            "B",
            "D",
            "dtype",
            "mode",
            "median_ms",
            "peak_mem_bytes",
            "ratio_time_vs_naive",
            "ratio_mem_vs_naive",
            "tflops",
            "v2_flops_per_b2d",
            "modelled_h100_ms",
            "v2_plan",
        ],
    )
    print(f"wrote {out} and {plot_path}")
    return rows


if __name__ == "__main__":
    main()
