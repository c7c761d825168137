"""``--compare``: naive vs vlkernels from the same seed and data, and the largest batch each loss fits.

Each training runs in its own subprocess (so that its peak memory is its own); then the table compares
the loss curves step by step, the final parameters, the median step time and the peak memory, and a
memory-budget search finds, for each loss, the largest batch size B (doubling) whose loss step, forward
and backward on [B, embed_dim] embeddings, fits ``--memory-budget``: on CPU the peak RSS of a fresh
subprocess beyond its baseline; on a GPU the step must run under
``torch.cuda.set_per_process_memory_fraction(budget / total)``. With gradient caching the towers' memory
is one chunk's, so this loss memory is what bounds the batch size.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time

import torch

from vlkernels.train.loop import TrainConfig
from vlkernels.train.model import ClipConfig
from vlkernels.train.report import plot_runs, read_jsonl, save_json

IMPLS = ("naive", "vlkernels")


def _worker(cfg_json: str) -> None:
    from vlkernels.train.loop import train

    d = json.loads(cfg_json)
    d["model"] = ClipConfig(**d["model"])
    train(TrainConfig(**d))


def _env() -> dict:
    """The children use this process's thread count (--threads)."""
    return dict(os.environ, OMP_NUM_THREADS=str(torch.get_num_threads()))


def _run_training(cfg: TrainConfig) -> int:
    cmd = [sys.executable, "-m", "vlkernels.train.compare", "--worker", json.dumps(dataclasses.asdict(cfg))]
    return subprocess.run(cmd, env=_env()).returncode


def _probe(spec: dict) -> dict:
    """One loss step (fwd+bwd) at batch size spec['B'] in this (fresh) process; its peak memory."""
    from vlkernels import contrastive_loss
    from vlkernels.train.report import PeakMemory

    device = torch.device(spec["device"])
    mem = PeakMemory(device)
    impl = "naive" if spec["loss"] == "naive" else "auto"
    if device.type == "cuda":
        total = torch.cuda.get_device_properties(device).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, spec["budget"] / total), device)

    def step(b: int) -> None:
        g = torch.Generator(device=device).manual_seed(0)
        img = torch.nn.functional.normalize(torch.randn(b, spec["D"], generator=g, device=device), dim=-1)
        txt = torch.nn.functional.normalize(torch.randn(b, spec["D"], generator=g, device=device), dim=-1)
        scale = torch.tensor(14.3, device=device, requires_grad=True)
        contrastive_loss(img.requires_grad_(), txt.requires_grad_(), scale, impl=impl).backward()

    step(64)  # pages in the kernels' code and the thread pools, which RSS would otherwise count
    mem.start()  # the inputs and their gradients count: they are O(B) in both implementations
    try:
        step(spec["B"])
        peak = mem.peak()
    except torch.OutOfMemoryError:
        return {"B": spec["B"], "fits": False, "peak_bytes": None, "oom": True}
    return {"B": spec["B"], "fits": 0 <= peak <= spec["budget"], "peak_bytes": peak}


def _run_probe(spec: dict) -> dict:
    cmd = [sys.executable, "-m", "vlkernels.train.compare", "--probe", json.dumps(spec)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_env())
    lines = [x for x in proc.stdout.splitlines() if x.startswith("{")]
    if proc.returncode != 0 or not lines:  # killed (OOM) or crashed: does not fit
        return {"B": spec["B"], "fits": False, "peak_bytes": None, "error": proc.stderr.strip()[-300:]}
    return json.loads(lines[-1])


def max_batch(loss: str, budget: int, dim: int, device: str, start: int = 2048, limit: int = 16384) -> dict:
    """Largest B in start * 2^k <= limit whose loss step fits ``budget`` (``capped`` when the limit fits)."""
    best, probes, b = None, [], min(start, limit)
    while b <= limit:
        r = _run_probe({"loss": loss, "B": b, "D": dim, "device": device, "budget": budget})
        probes.append(r)
        if not r["fits"]:
            break
        best, b = b, b * 2
    return {"max_batch": best, "capped": best is not None and best * 2 > limit, "probes": probes}


def _param_diff(path_a: str, path_b: str) -> float:
    a = torch.load(path_a, map_location="cpu", weights_only=True)["model"]
    b = torch.load(path_b, map_location="cpu", weights_only=True)["model"]
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


def _fmt_bytes(n) -> str:
    return "n/a" if n is None or n < 0 else f"{n / 2**20:.1f} MiB"


def _fmt_batch(r: dict) -> str:
    if r["max_batch"] is None:
        return "< first probe"
    return (">= " if r["capped"] else "") + str(r["max_batch"])


def table(result: dict) -> str:
    n, v = result["naive"], result["vlkernels"]
    mem_n, mem_v = n["peak_memory_bytes"], v["peak_memory_bytes"]
    mem_ratio = f"{mem_v / mem_n:.2f}x" if mem_n and mem_n > 0 and mem_v >= 0 else "n/a"
    bn, bv = result["memory"]["naive"], result["memory"]["vlkernels"]
    b_ratio = "n/a"
    if bn["max_batch"] and bv["max_batch"]:
        b_ratio = (">= " if bv["capped"] else "") + f"{bv['max_batch'] / bn['max_batch']:.0f}x"
    key = "zeroshot_top1" if "zeroshot_top1" in n else "retrieval_top1" if "retrieval_top1" in n else None
    rows = [
        ("", "naive", "vlkernels", "vlkernels vs naive"),
        ("final training loss", f"{n['final_loss']:.5f}", f"{v['final_loss']:.5f}",
         f"max |diff| over {result['steps_compared']} steps: {result['max_loss_diff']:.2e}"),
        ("final parameters", "", "", f"max |diff|: {result['max_param_diff']:.2e}"),
        ("median step time", f"{n['median_step_ms']:.1f} ms", f"{v['median_step_ms']:.1f} ms",
         f"{v['median_step_ms'] / n['median_step_ms']:.2f}x"),
        ("peak training memory", _fmt_bytes(mem_n), _fmt_bytes(mem_v), mem_ratio),
        (f"largest B under {_fmt_bytes(result['memory_budget'])}", _fmt_batch(bn), _fmt_batch(bv), b_ratio),
    ]  # fmt: skip
    if key:
        chance = f" (chance {result['chance']:.3f})" if key == "zeroshot_top1" else ""
        rows.append((key.replace("_", " "), f"{n[key]:.3f}", f"{v[key]:.3f}", chance.strip()))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def compare(args, out: str) -> int:
    from vlkernels.train.__main__ import config_from_args
    from vlkernels.train.data import COLOURS, SHAPES

    t_start = time.perf_counter()
    os.makedirs(out, exist_ok=True)
    base = config_from_args(args, out)
    summaries, records = {}, {}
    for loss in IMPLS:
        cfg = dataclasses.replace(base, loss=loss, out=os.path.join(out, loss))
        print(f"== training with the {loss} loss -> {cfg.out}", file=sys.stderr, flush=True)
        if _run_training(cfg) != 0:
            print(f"the {loss} run failed", file=sys.stderr)
            return 1
        with open(os.path.join(cfg.out, "summary.json")) as f:
            summaries[loss] = json.load(f)
        records[loss] = read_jsonl(os.path.join(cfg.out, "metrics.jsonl"))

    curves = {k: {r["step"]: r["loss"] for r in recs if r["type"] == "train"} for k, recs in records.items()}
    common = sorted(set(curves["naive"]) & set(curves["vlkernels"]))
    diffs = [abs(curves["naive"][s] - curves["vlkernels"][s]) for s in common]
    max_loss_diff = max(diffs, default=float("nan"))
    param_diff = _param_diff(*(os.path.join(out, loss, "checkpoint.pt") for loss in IMPLS))

    device = base.device
    print(f"== memory-budget search: loss step at B = 2048, 4096, ... <= {args.memory_max_batch}, "
          f"D = {base.model.embed_dim}, budget {_fmt_bytes(args.memory_budget)} ({device})",
          file=sys.stderr, flush=True)  # fmt: skip
    memory = {
        loss: max_batch(loss, args.memory_budget, base.model.embed_dim, device, limit=args.memory_max_batch)
        for loss in IMPLS
    }
    result = {
        **summaries,
        "steps_compared": len(common),
        "max_loss_diff": max_loss_diff,
        "max_param_diff": param_diff,
        "memory_budget": args.memory_budget,
        "memory": memory,
        "chance": 1.0 / (len(COLOURS) * len(SHAPES)),
        "wall_s": time.perf_counter() - t_start,
        "cpu_count": os.cpu_count(),
    }
    save_json(result, os.path.join(out, "compare.json"))
    title = "tiny CLIP: naive vs vlkernels loss"
    plotted = plot_runs(
        records, os.path.join(out, "compare.png"), title, list(zip(common, diffs, strict=True))
    )
    print()
    print(table(result))
    print()
    print(
        f"device {device}, {torch.get_num_threads()} threads, {base.steps} steps of batch {base.batch_size}; "
        f"wall time {result['wall_s']:.0f} s; outputs in {out}/ (compare.json"
        f"{', compare.png' if plotted else ''}, naive/, vlkernels/)"
    )
    print(
        f"At batch {base.batch_size} the towers dominate the step time and memory (the loss is a small part; "
        "timings on a shared CPU are noisy); the loss's own memory is what the 'largest B' row measures."
    )
    return 0


if __name__ == "__main__":
    if sys.argv[1] == "--worker":
        _worker(sys.argv[2])
    elif sys.argv[1] == "--probe":
        print(json.dumps(_probe(json.loads(sys.argv[2]))))
