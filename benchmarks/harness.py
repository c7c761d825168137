"""Shared benchmark harness: timing, peak memory beyond the inputs, JSON rows, plots.

Each configuration runs in a fresh subprocess so that its peak memory is its own:
- CUDA: ``torch.cuda.reset_peak_memory_stats()`` before, ``max_memory_allocated()`` after, minus the
  memory allocated once the inputs exist; time with ``triton.testing.do_bench`` (median, 20/80 %).
- CPU: the peak live bytes of the tensors the call's ops create (``PeakLive``, a dispatch-mode tracker,
  in a call of its own: the timed calls run without it); time with ``time.perf_counter`` over repetitions
  (median, 20/80 %). Before, the peak RSS (VmHWM): the allocator's reuse made it vary from 0 to 80 MiB
  for the same call (the sigmoid loss at B = 4096, D = 256).
Ratios against the naive implementation are computed from rows measured in the same run.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import weakref
from collections.abc import Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def environment(device: str) -> dict:
    try:
        import triton

        triton_version = triton.__version__
    except Exception:
        triton_version = None
    if device.startswith("cuda"):
        name = torch.cuda.get_device_name()
    else:
        name = f"{platform.processor() or platform.machine()} ({os.cpu_count()} cores)"
    return dict(
        device=name,
        torch=torch.__version__,
        triton=triton_version,
        torch_threads=torch.get_num_threads(),
        date=datetime.date.today().isoformat(),
    )


_SET_STORAGE = {torch.ops.aten.set_.source_Storage, torch.ops.aten.set_.source_Storage_storage_offset}


class PeakLive(TorchDispatchMode):
    """Peak bytes of the storages that ops create and that are still referenced (a storage is freed when
    the last tensor produced on it dies); views of tensors made before the mode are not counted."""

    def __init__(self):
        super().__init__()
        self.live, self.peak, self.refs = 0, 0, {}

    def _drop(self, key):
        nbytes, count = self.refs[key]
        if count == 1:
            del self.refs[key]
            self.live -= nbytes
        else:
            self.refs[key] = (nbytes, count - 1)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        # Outputs on an argument's storage are views (or in-place results) of it: not new memory.
        on_args = {
            t.untyped_storage().data_ptr()
            for t in tree_flatten((args, kwargs))[0]
            if isinstance(t, torch.Tensor) and t.device.type != "meta"
        }
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor) or t.device.type == "meta":
                continue
            storage = t.untyped_storage()
            key = storage.data_ptr()
            if key == 0 or (key in on_args and key not in self.refs):
                continue
            if func in _SET_STORAGE and key not in self.refs:
                continue  # a tensor set onto a storage made before the mode (Triton's interpreter does this)
            nbytes, count = self.refs.get(key, (storage.nbytes(), 0))
            if count == 0:
                self.live += nbytes
                self.peak = max(self.peak, self.live)
            self.refs[key] = (nbytes, count + 1)
            weakref.finalize(t, self._drop, key)
        return out


def peak_memory(fn: Callable[[], object], device: str) -> int:
    """Peak bytes allocated by one call of ``fn`` beyond what was allocated before it: on CUDA the caching
    allocator's count, elsewhere the live bytes of the tensors its ops create (``PeakLive``)."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    with PeakLive() as mode:
        fn()
    return mode.peak


def timing(fn: Callable[[], object], device: str, reps: int, warmup: int = 1) -> dict:
    """Median and 20/80 % quantiles in milliseconds."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        if time.perf_counter() - t0 < 0.2:
            import triton.testing

            p50, p20, p80 = triton.testing.do_bench(
                fn, quantiles=[0.5, 0.2, 0.8], warmup=25, rep=max(100, reps)
            )
            return dict(median_ms=p50, p20_ms=p20, p80_ms=p80)
        # Calls of a second or more (B near 1M): a few CUDA-event-timed calls instead of do_bench's many.
        reps, warmup = 3, 0
    times = []
    for _ in range(warmup):
        fn()
    for _ in range(reps):
        if device.startswith("cuda"):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
            continue
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    times.sort()
    q = statistics.quantiles(times, n=5) if len(times) > 1 else [times[0]] * 4
    return dict(median_ms=statistics.median(times), p20_ms=q[0], p80_ms=q[-1])


def run_in_subprocess(module: str, config: dict, timeout: float = 1800) -> dict:
    """Run ``python -m module --worker JSON`` and parse the one JSON row it prints last."""
    cmd = [sys.executable, "-m", module, "--worker", json.dumps(config)]
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return dict(config, error=f"timeout after {timeout:.0f} s")
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return dict(config, error=" | ".join(tail) or f"exit code {proc.returncode}")
    return json.loads(lines[-1])


def add_ratios(rows: list[dict], key: tuple[str, ...] = ("op", "B", "D", "dtype", "mode")) -> None:
    """ratio_time_vs_naive / ratio_mem_vs_naive against the naive row of the same configuration."""
    naive = {tuple(r[k] for k in key): r for r in rows if r.get("impl") == "naive" and "error" not in r}
    for r in rows:
        base = naive.get(tuple(r[k] for k in key))
        if base is None or "error" in r:
            continue
        r["ratio_time_vs_naive"] = r["median_ms"] / base["median_ms"]
        if base.get("peak_mem_bytes", 0) > 0 and r.get("peak_mem_bytes", -1) >= 0:
            r["ratio_mem_vs_naive"] = r["peak_mem_bytes"] / base["peak_mem_bytes"]


def write_json(rows: list[dict], path: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(rows, f, indent=1)
        f.write("\n")


def print_table(rows: list[dict], columns: list[str]) -> None:
    def fmt(v):
        if isinstance(v, float):
            return f"{v:.3g}"
        return str(v)

    cells = [
        [fmt(r.get(c, "")) if "error" not in r or c in ("op", "impl", "B", "D") else "ERR" for c in columns]
        for r in rows
    ]
    widths = [
        max(len(c), *(len(row[i]) for row in cells)) if cells else len(c) for i, c in enumerate(columns)
    ]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)))
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)))
    for r in rows:
        if "error" in r:
            print(f"error: {r.get('impl')} B={r.get('B')} D={r.get('D')}: {r['error'][:300]}")


def plot(rows: list[dict], path: str, title: str) -> None:
    """Time and peak memory against B, one line per (impl, D, dtype, mode); log-log."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot")
        return
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    series: dict[tuple, list] = {}
    for r in rows:
        if "error" in r:
            continue
        series.setdefault((r["impl"], r["D"], r["dtype"], r["mode"]), []).append(r)
    for (impl, dim, dtype, mode), rs in sorted(series.items()):
        rs.sort(key=lambda r: r["B"])
        label = f"{impl} D={dim} {dtype} {mode}"
        axes[0].plot([r["B"] for r in rs], [r["median_ms"] for r in rs], marker="o", label=label)
        mem = [(r["B"], r["peak_mem_bytes"] / 2**20) for r in rs if r.get("peak_mem_bytes", -1) > 0]
        if mem:
            axes[1].plot(*zip(*mem, strict=True), marker="o", label=label)
    for ax, ylabel in zip(axes, ["median time (ms)", "peak memory beyond inputs (MiB)"], strict=True):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("batch size B")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def loss_bench_parser(doc: str, name: str) -> argparse.ArgumentParser:
    """The command line shared by the loss benchmarks (a benchmark adds its own options)."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch-sizes", type=int, nargs="+")
    p.add_argument("--dims", type=int, nargs="+")
    p.add_argument("--dtypes", nargs="+")
    p.add_argument("--impls", nargs="+")
    p.add_argument("--modes", nargs="+", default=["fwd", "fwd+bwd"], choices=["fwd", "fwd+bwd"])
    p.add_argument("--reps", type=int, default=None, help="timed repetitions (CPU); default 3 on CPU")
    p.add_argument("--out", default=None, help=f"JSON path (default benchmarks/results/<device>/{name}.json)")
    p.add_argument("--plot", default=None, help="PNG path (default next to the JSON)")
    p.add_argument("--max-flops", type=float, default=2e16, help="skip configurations costlier than this")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads per worker (default 1 on CPU: on a shared machine several threads stall on each "
        "other's time slices and the timings become meaningless; 0 keeps torch's default)",
    )
    return p


def fill_loss_defaults(args: argparse.Namespace, cpu: dict, cuda: dict, name: str) -> dict:
    """Fill the unset shared options from the device kind's defaults (in place: ``args.kind``,
    ``batch_sizes``, ``dims``, ``dtypes``, ``impls``, ``reps``, ``threads``, ``out``, ``plot``); returns
    those defaults."""
    args.kind = "cuda" if args.device.startswith("cuda") else "cpu"
    defaults = cuda if args.kind == "cuda" else cpu
    for key in ("batch_sizes", "dims", "dtypes", "impls"):
        if not getattr(args, key):
            setattr(args, key, defaults[key])
    args.reps = args.reps or (3 if args.kind == "cpu" else 100)
    if args.threads is None:
        args.threads = 1 if args.kind == "cpu" else 0
    args.out = args.out or os.path.join(ROOT, "benchmarks", "results", args.kind, f"{name}.json")
    args.plot = args.plot or os.path.splitext(args.out)[0] + ".png"
    return defaults


def use_threads(cfg: dict) -> None:
    """A worker's first step: torch's CPU thread count from the run's ``threads`` (0 or absent: torch's
    default)."""
    if cfg.get("threads"):
        torch.set_num_threads(cfg["threads"])


def measure_loss(fn: Callable[[], torch.Tensor], leaves, backward: bool, device: str, reps: int) -> dict:
    """Loss value (after a warm-up call), peak memory and timing of ``fn()`` (+ backward into ``leaves``,
    whose grads are cleared before every call)."""

    def step():
        loss = fn()
        if backward:
            for t in leaves:
                t.grad = None
            loss.backward()
        return loss

    loss = step()  # warm-up (compilation) and a correctness read-out
    for t in leaves:
        t.grad = None
    row = dict(loss=float(loss), peak_mem_bytes=peak_memory(step, device))
    row.update(timing(step, device, reps=reps))
    return row
