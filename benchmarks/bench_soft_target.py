"""Soft-target (PSD) loss: speed and peak memory of naive vs torch vs triton, and vs contrastive_loss.

    python -m benchmarks.bench_soft_target                      # CPU defaults (B up to 8192, D=256)
    python -m benchmarks.bench_soft_target --device cuda --out OUT/soft_target.json

Rows: ``op="soft_target"`` (alpha = 0.5, all pairs soft) with the self teacher (``teacher="self"``) or a
separate [B, D_t] teacher (``teacher="D_t=..."``, no gradient), and ``op="contrastive"`` rows of
``contrastive_loss`` at the same shape with the same impl: ``ratio_time_vs_contrastive`` (the self
teacher's target on the GPU: <= 1.15 for fwd+bwd, modelled 1.12 in benchmarks/cost_model.py) and
``ratio_mem_vs_contrastive``. ``ratio_*_vs_naive`` compare with the naive soft-target
loss of the same configuration. Every configuration runs in its own subprocess (clean peak memory); all
ratios come from rows of the same run. FLOPs are counted as bench_contrastive counts them (the floor):
2 B^2 (D + D_t) forward and (8 D + 4 D_t) B^2 forward + backward (D_t = 0 for the self teacher).
"""

from __future__ import annotations

import json
import math
import sys

import torch

from benchmarks import harness
from benchmarks.bench_contrastive import available

CPU_DEFAULTS = dict(
    batch_sizes=[1024, 4096, 8192],
    dims=[256],
    dtypes=["float32"],
    impls=["naive", "torch"],
    teachers=[0, 128],
)
CUDA_DEFAULTS = dict(
    batch_sizes=[8192, 32768, 131072],
    dims=[1024],
    dtypes=["bfloat16"],
    impls=["naive", "torch", "triton"],
    teachers=[0, 768],
)
# Beyond these B the naive loss's B x B buffers (student and teacher logits, targets, softmaxes) do not fit.
NAIVE_MAX_B = {"cuda": 32768, "cpu": 8192}


def _teacher_label(t_dim: int) -> str:
    return "self" if t_dim == 0 else f"D_t={t_dim}"


def _flops(op: str, mode: str, batch: int, dim: int, t_dim: int) -> int:
    if op == "contrastive":
        return (8 if mode == "fwd+bwd" else 2) * batch * batch * dim
    if mode == "fwd+bwd":
        return (8 * dim + 4 * t_dim) * batch * batch
    return 2 * (dim + t_dim) * batch * batch


def worker(cfg: dict) -> dict:
    from vlkernels import contrastive_loss, soft_target_loss

    device, batch, dim, t_dim = cfg["device"], cfg["B"], cfg["D"], cfg["teacher_dim"]
    harness.use_threads(cfg)
    dtype = getattr(torch, cfg["dtype"])
    impl = cfg["impl"]
    torch.manual_seed(0)

    def unit(width):
        return torch.nn.functional.normalize(torch.randn(batch, width, device=device), dim=1).to(dtype)

    img, txt = unit(dim), unit(dim)
    scale = torch.tensor(math.exp(math.log(1 / 0.07)), device=device)
    teacher = {}
    if t_dim:
        teacher = dict(
            teacher_image_features=unit(t_dim),
            teacher_text_features=unit(t_dim),
            teacher_logit_scale=torch.tensor(50.0, device=device),
        )
    alpha = torch.tensor(0.5, device=device)
    backward = cfg["mode"] == "fwd+bwd"
    if backward:
        img.requires_grad_()
        txt.requires_grad_()
        scale.requires_grad_()

    if cfg["op"] == "contrastive":

        def fn():
            return contrastive_loss(img, txt, scale, impl=impl)
    else:

        def fn():
            return soft_target_loss(img, txt, scale, alpha, impl=impl, **teacher)

    row = dict(cfg)
    row.update(harness.measure_loss(fn, (img, txt, scale), backward, device, cfg["reps"]))
    row["grad_bytes"] = 2 * batch * dim * img.element_size() if backward else 0
    row["tflops"] = _flops(cfg["op"], cfg["mode"], batch, dim, t_dim) / (row["median_ms"] * 1e-3) / 1e12
    row.update(harness.environment(device))
    return row


def add_contrastive_ratios(rows: list[dict]) -> None:
    """ratio_time_vs_contrastive / ratio_mem_vs_contrastive: soft-target rows against the contrastive row of
    the same impl and shape."""
    key = ("impl", "B", "D", "dtype", "mode")
    base = {tuple(r[k] for k in key): r for r in rows if r["op"] == "contrastive" and "error" not in r}
    for r in rows:
        b = base.get(tuple(r[k] for k in key))
        if r["op"] != "soft_target" or b is None or "error" in r:
            continue
        r["ratio_time_vs_contrastive"] = r["median_ms"] / b["median_ms"]
        if b.get("peak_mem_bytes", 0) > 0 and r.get("peak_mem_bytes", -1) >= 0:
            r["ratio_mem_vs_contrastive"] = r["peak_mem_bytes"] / b["peak_mem_bytes"]


def main(argv=None) -> list[dict]:
    p = harness.loss_bench_parser(__doc__, "soft_target")
    p.add_argument("--teacher-dims", type=int, nargs="+", help="0: the self teacher; else D_t of a teacher")
    p.add_argument("--no-contrastive", action="store_true", help="skip the contrastive_loss baseline rows")
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return []
    defaults = harness.fill_loss_defaults(args, CPU_DEFAULTS, CUDA_DEFAULTS, "soft_target")
    kind, batch_sizes, dims, dtypes, impls = args.kind, args.batch_sizes, args.dims, args.dtypes, args.impls
    reps, out, plot_path = args.reps, args.out, args.plot
    teachers = args.teacher_dims if args.teacher_dims is not None else defaults["teachers"]

    skipped = {impl: available(impl, args.device) for impl in impls}
    for impl, why in skipped.items():
        if why:
            print(f"skipping {impl}: {why}", file=sys.stderr)
    runs = []
    for dim in dims:
        for dtype in dtypes:
            for batch in batch_sizes:
                for mode in args.modes:
                    variants = [("soft_target", t) for t in teachers]
                    if not args.no_contrastive:
                        variants.append(("contrastive", 0))
                    for op, t_dim in variants:
                        if _flops(op, mode, batch, dim, t_dim) > args.max_flops:
                            continue
                        for impl in impls:
                            if skipped[impl] or (impl == "naive" and batch > NAIVE_MAX_B[kind]):
                                continue
                            if op == "contrastive" and impl == "naive":
                                continue  # bench_contrastive covers the naive contrastive loss
                            runs.append(
                                dict(
                                    op=op,
                                    impl=impl,
                                    B=batch,
                                    D=dim,
                                    dtype=dtype,
                                    mode=mode,
                                    teacher=_teacher_label(t_dim),
                                    teacher_dim=t_dim,
                                    device=args.device,
                                    reps=reps,
                                    threads=args.threads,
                                )
                            )
    rows = []
    for cfg in runs:
        row = harness.run_in_subprocess("benchmarks.bench_soft_target", cfg)
        print(
            f"{cfg['op']:11s} {cfg['impl']:6s} {cfg['teacher']:9s} B={cfg['B']:7d} D={cfg['D']:5d} "
            f"{cfg['dtype']:8s} {cfg['mode']:8s} "
            + (
                f"{row['median_ms']:10.2f} ms  {row['peak_mem_bytes'] / 2**20:9.1f} MiB"
                if "error" not in row
                else "ERROR " + row["error"][:200]
            ),
            flush=True,
        )
        rows.append(row)
        # Ratios and JSON after every row: partial results survive a suite timeout.
        harness.add_ratios(rows, key=("op", "B", "D", "dtype", "mode", "teacher"))
        add_contrastive_ratios(rows)
        harness.write_json(rows, out)
    # One plotted line per (op, teacher, impl): the harness groups series by impl.
    labelled = [dict(r, impl=f"{r['op']} {r['impl']} ({r['teacher']})") for r in rows]
    device_name = rows[0]["device"] if rows and "device" in rows[0] else kind
    harness.plot(labelled, plot_path, f"soft-target (PSD) loss vs contrastive on {device_name}")
    harness.print_table(
        rows,
        [
            "op",
            "impl",
            "teacher",
            "B",
            "D",
            "dtype",
            "mode",
            "median_ms",
            "peak_mem_bytes",
            "ratio_time_vs_naive",
            "ratio_mem_vs_naive",
            "ratio_time_vs_contrastive",
            "ratio_mem_vs_contrastive",
        ],
    )
    print(f"wrote {out} and {plot_path}")
    return rows


if __name__ == "__main__":
    main()
