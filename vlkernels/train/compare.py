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


def _worker(cfg_json: str) -> int:
    """One training run; the exit code is non-zero when it did not end as asked (non-finite loss limit,
    nothing trained; an exception exits with its traceback)."""
    from vlkernels.train.loop import train

    d = json.loads(cfg_json)
    d["model"] = ClipConfig(**d["model"])
    return 1 if train(TrainConfig(**d)).get("stopped") else 0


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


def _cell(summary: dict, key: str, fmt: str) -> str:
    if "failed" in summary:
        return "failed"
    value = summary.get(key)
    return "n/a" if value is None else fmt.format(value)


def _ratio(n: dict, v: dict, key: str) -> str:
    a, b = n.get(key), v.get(key)
    return f"{b / a:.2f}x" if a and b is not None and a > 0 and b >= 0 else "n/a"


def table(result: dict) -> str:
    """The --compare table; a failed run (say the naive loss out of memory at a large batch) shows as such."""
    n, v = result["naive"], result["vlkernels"]
    bn, bv = result["memory"]["naive"], result["memory"]["vlkernels"]
    b_ratio = "n/a"
    if bn["max_batch"] and bv["max_batch"]:
        b_ratio = (">= " if bv["capped"] else "") + f"{bv['max_batch'] / bn['max_batch']:.0f}x"
    both = "failed" not in n and "failed" not in v
    loss_diff = f"max |diff| over {result['steps_compared']} steps: {result['max_loss_diff']:.2e}"
    key = next((k for k in ("zeroshot_top1", "retrieval_top1") if k in n or k in v), None)
    rows = [
        ("", "naive", "vlkernels", "vlkernels vs naive"),
        (
            "final training loss",
            _cell(n, "final_loss", "{:.5f}"),
            _cell(v, "final_loss", "{:.5f}"),
            loss_diff if both else "n/a",
        ),
        ("final parameters", "", "", f"max |diff|: {result['max_param_diff']:.2e}" if both else "n/a"),
        (
            "median step time",
            _cell(n, "median_step_ms", "{:.1f} ms"),
            _cell(v, "median_step_ms", "{:.1f} ms"),
            _ratio(n, v, "median_step_ms"),
        ),
        (
            "peak training memory",
            *(_fmt_bytes(x.get("peak_memory_bytes")) for x in (n, v)),
            _ratio(n, v, "peak_memory_bytes"),
        ),
        (f"largest B under {_fmt_bytes(result['memory_budget'])}", _fmt_batch(bn), _fmt_batch(bv), b_ratio),
    ]
    if key:
        chance = f"(chance {result['chance']:.3f})" if key == "zeroshot_top1" else ""
        rows.append((key.replace("_", " "), _cell(n, key, "{:.3f}"), _cell(v, key, "{:.3f}"), chance))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def compare(base: TrainConfig, memory_budget: int, memory_max_batch: int) -> int:
    """Train ``base`` with each loss (in ``base.out``/naive and /vlkernels), search the largest batch each
    loss fits in ``memory_budget`` bytes (B doubling up to ``memory_max_batch``), print the table."""
    from vlkernels.train.data import COLOURS, SHAPES

    t_start = time.perf_counter()
    out = base.out
    os.makedirs(out, exist_ok=True)
    summaries, records = {}, {}
    for loss in IMPLS:
        cfg = dataclasses.replace(base, loss=loss, out=os.path.join(out, loss))
        print(f"== training with the {loss} loss -> {cfg.out}", file=sys.stderr, flush=True)
        code = _run_training(cfg)
        if code != 0:  # e.g. the naive loss out of memory at a large batch: report it, keep going
            print(f"the {loss} run failed (exit code {code})", file=sys.stderr)
            summaries[loss], records[loss] = {"failed": f"exit code {code}"}, []
            continue
        with open(os.path.join(cfg.out, "summary.json")) as f:
            summaries[loss] = json.load(f)
        records[loss] = read_jsonl(os.path.join(cfg.out, "metrics.jsonl"))
    if all("failed" in s for s in summaries.values()):
        return 1

    curves = {k: {r["step"]: r["loss"] for r in recs if r["type"] == "train"} for k, recs in records.items()}
    common = sorted(set(curves["naive"]) & set(curves["vlkernels"]))
    diffs = [abs(curves["naive"][s] - curves["vlkernels"][s]) for s in common]
    max_loss_diff = max(diffs, default=float("nan"))
    failed = [k for k, s in summaries.items() if "failed" in s]
    param_diff = (
        float("nan") if failed else _param_diff(*(os.path.join(out, k, "checkpoint.pt") for k in IMPLS))
    )

    device = base.device
    print(
        f"== memory-budget search: loss step at B = 2048, 4096, ... <= {memory_max_batch}, "
        f"D = {base.model.embed_dim}, budget {_fmt_bytes(memory_budget)} ({device})",
        file=sys.stderr,
        flush=True,
    )
    memory = {
        loss: max_batch(loss, memory_budget, base.model.embed_dim, device, limit=memory_max_batch)
        for loss in IMPLS
    }
    result = {
        **summaries,
        "steps_compared": len(common),
        "max_loss_diff": max_loss_diff,
        "max_param_diff": param_diff,
        "memory_budget": memory_budget,
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
    return 1 if failed else 0


if __name__ == "__main__":
    if sys.argv[1] == "--worker":
        sys.exit(_worker(sys.argv[2]))
    elif sys.argv[1] == "--probe":
        print(json.dumps(_probe(json.loads(sys.argv[2]))))
