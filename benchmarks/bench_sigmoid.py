"""Sigmoid (SigLIP) loss: speed and peak memory of naive vs chunked-with-saved-logits vs torch vs triton.

    python -m benchmarks.bench_sigmoid                      # CPU defaults (B up to 4096, D=256)
    python -m benchmarks.bench_sigmoid --device cuda --out OUT/sigmoid.json

Implementations:
- ``naive``: open_clip's SigLipLoss._loss (the B x B logits, labels and their autograd graph);
- ``chunked_saved``: the loss over chunks of rows (open_clip-style ``chunk_size``), each chunk's logits
  kept by autograd for the backward: less peak than naive in the forward, still O(B^2) saved;
- ``torch``: vlkernels' chunked backend (recomputes in the backward, O(B * chunk));
- ``triton``: vlkernels' kernels (CUDA only).

Every configuration runs in its own subprocess (clean peak memory); ratios against naive are computed
from rows of the same run. FLOPs are counted as 2 B^2 D (forward) and 8 B^2 D (forward + backward).
"""

from __future__ import annotations

import json
import math
import sys

import torch
import torch.nn.functional as F

from benchmarks import harness

CPU_DEFAULTS = dict(
    batch_sizes=[1024, 2048, 4096], dims=[256], dtypes=["float32"], impls=["naive", "chunked_saved", "torch"]
)
CUDA_DEFAULTS = dict(
    batch_sizes=[4096, 16384, 32768, 131072],
    dims=[512, 1024],
    dtypes=["bfloat16"],
    impls=["naive", "chunked_saved", "torch", "triton"],
)
NAIVE_MAX_B = {"cuda": 65536, "cpu": 16384}
SAVED_CHUNK_ROWS = 512


def chunked_saved_loss(image, text, scale, bias, chunk: int = SAVED_CHUNK_ROWS):
    """The sigmoid loss over chunks of rows with autograd keeping every chunk's logits (open_clip's
    ``chunk_size`` style): O(chunk x B) live in the forward, O(B^2) saved for the backward."""
    total = image.new_zeros((), dtype=torch.float32)
    t32 = text.float()
    for start in range(0, image.shape[0], chunk):
        logits = scale * image[start : start + chunk].float() @ t32.T + bias
        rows = torch.arange(logits.shape[0], device=logits.device)
        labels = -torch.ones_like(logits)
        labels[rows, rows + start] = 1.0
        total = total - F.logsigmoid(labels * logits).sum()
    return total / image.shape[0]


def _loss_fn(impl: str):
    from vlkernels import sigmoid_loss

    if impl in ("naive", "torch", "triton"):
        return lambda i, t, s, b: sigmoid_loss(i, t, s, b, impl=impl)
    if impl == "chunked_saved":
        return chunked_saved_loss
    raise ValueError(f"unknown impl {impl!r}")


def worker(cfg: dict) -> dict:
    harness.use_threads(cfg)
    device, batch, dim = cfg["device"], cfg["B"], cfg["D"]
    dtype = getattr(torch, cfg["dtype"])
    torch.manual_seed(0)
    img = F.normalize(torch.randn(batch, dim, device=device), dim=1).to(dtype)
    txt = F.normalize(torch.randn(batch, dim, device=device), dim=1).to(dtype)
    # SigLIP's initialisation: logit_scale = log 10 (exponentiated), logit_bias = -10.
    scale = torch.tensor(math.exp(math.log(10.0)), device=device)
    bias = torch.tensor(-10.0, device=device)
    backward = cfg["mode"] == "fwd+bwd"
    leaves = (img, txt, scale, bias)
    if backward:
        for t in leaves:
            t.requires_grad_()
    fn = _loss_fn(cfg["impl"])
    row = dict(cfg)
    row.update(harness.measure_loss(lambda: fn(*leaves), leaves, backward, device, cfg["reps"]))
    row["grad_bytes"] = 2 * batch * dim * img.element_size() if backward else 0
    flops = (8 if backward else 2) * batch * batch * dim
    row["tflops"] = flops / (row["median_ms"] * 1e-3) / 1e12
    row.update(harness.environment(device))
    return row


def available(impl: str, device: str) -> str | None:
    if impl == "triton":
        from vlkernels._triton import unavailable_reason

        return unavailable_reason(torch.device(device))
    return None


def main(argv=None) -> list[dict]:
    p = harness.loss_bench_parser(__doc__, "sigmoid")
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return []
    harness.fill_loss_defaults(args, CPU_DEFAULTS, CUDA_DEFAULTS, "sigmoid")
    rows = []
    skipped = {impl: available(impl, args.device) for impl in args.impls}
    for impl, why in skipped.items():
        if why:
            print(f"skipping {impl}: {why}", file=sys.stderr)
    for dim in args.dims:
        for dtype in args.dtypes:
            for batch in args.batch_sizes:
                for mode in args.modes:
                    if (8 if mode == "fwd+bwd" else 2) * batch * batch * dim > args.max_flops:
                        continue
                    for impl in args.impls:
                        if skipped[impl] or (
                            impl in ("naive", "chunked_saved") and batch > NAIVE_MAX_B[args.kind]
                        ):
                            continue
                        cfg = dict(op="sigmoid", impl=impl, B=batch, D=dim, dtype=dtype, mode=mode)
                        cfg.update(device=args.device, reps=args.reps, threads=args.threads)
                        row = harness.run_in_subprocess("benchmarks.bench_sigmoid", cfg)
                        print(
                            f"{impl:13s} B={batch:8d} D={dim:5d} {dtype:8s} {mode:8s} "
                            + (
                                f"{row['median_ms']:10.2f} ms  {row['peak_mem_bytes'] / 2**20:9.1f} MiB"
                                if "error" not in row
                                else "ERROR " + row["error"][:200]
                            ),
                            flush=True,
                        )
                        rows.append(row)
                        harness.write_json(rows, args.out)  # partial results survive a timeout
    harness.add_ratios(rows)
    harness.write_json(rows, args.out)
    device_name = rows[0]["device"] if rows and "device" in rows[0] else args.kind
    harness.plot(rows, args.plot, f"sigmoid (SigLIP) loss on {device_name}")
    harness.print_table(
        rows,
        ["impl", "B", "D", "dtype", "mode", "median_ms", "peak_mem_bytes", "ratio_time_vs_naive",
         "ratio_mem_vs_naive", "tflops"],
    )  # fmt: skip
    print(f"wrote {args.out} and {args.plot}")
    return rows


if __name__ == "__main__":
    main()
