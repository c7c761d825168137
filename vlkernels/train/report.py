"""Reporting: a dependency-free progress bar, JSONL metrics, atomic file writes, PNG plots, peak memory."""

from __future__ import annotations

import json
import os
import sys
import time
import warnings

import torch


def atomic_write(path: str, write) -> None:
    """``write(tmp_path)`` then rename over ``path``: a reader (or a crash) never sees a partial file."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def save_json(obj, path: str) -> None:
    def write(tmp):
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=1)
            f.write("\n")

    atomic_write(path, write)


def read_jsonl(path: str) -> list[dict]:
    """The records of a JSONL file ([] when it does not exist).

    A process killed while appending (SIGKILL, power loss) leaves a torn last line: that line is dropped
    with a warning. A bad line followed by others is damage of another kind: ``ValueError`` naming the file
    and the line."""
    if not os.path.exists(path):
        return []
    with open(path, "rb") as f:
        lines = f.read().split(b"\n")
    numbered = [(i, line) for i, line in enumerate(lines, 1) if line.strip(b" \t\r\0")]
    records = []
    for k, (lineno, line) in enumerate(numbered):
        try:
            rec = json.loads(line.decode("utf-8"))
            if not isinstance(rec, dict):
                raise ValueError(f"a JSON {type(rec).__name__}, not an object")
        except ValueError as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            if k == len(numbered) - 1:
                warnings.warn(
                    f"{path}, line {lineno}: dropping a torn last record (an interrupted write): "
                    f"{line[:60]!r}",
                    RuntimeWarning,
                    stacklevel=2,
                )
                break
            raise ValueError(f"{path}, line {lineno}: not a JSON record ({e}): {line[:60]!r}") from e
        records.append(rec)
    return records


def _step(record: dict) -> float:
    step = record.get("step", 0)
    return step if isinstance(step, (int, float)) and not isinstance(step, bool) else float("inf")


class MetricsLog:
    """Append-only JSONL; on resume, records after the checkpoint's step are dropped (they will be redone),
    and so are the "end" records of earlier invocations (the file then reads as one uninterrupted run)."""

    def __init__(self, path: str, resume_step: int | None = None):
        self.path = path
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        if resume_step is None:
            open(path, "w").close()
        else:
            kept = [r for r in read_jsonl(path) if r.get("type") != "end" and _step(r) <= resume_step]

            def write(tmp):
                with open(tmp, "w") as f:
                    f.writelines(json.dumps(r) + "\n" for r in kept)

            atomic_write(path, write)

    def write(self, record: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")


class Progress:
    """``[name] 120/300 |######----| loss 1.234 | 850 img/s | eta 0:21``: redrawn in place on a terminal,
    one line every ``total / 10`` steps otherwise (logs, CI)."""

    def __init__(self, total: int, name: str, start: int = 0, stream=None, enabled: bool = True):
        self.total, self.name, self.stream = total, name, stream or sys.stderr
        self.enabled = enabled
        self.tty = self.stream.isatty()
        self.every = max(1, total // 10)
        self.t0, self.start = time.perf_counter(), start

    def update(self, step: int, loss: float, samples_per_s: float, extra: str = "") -> None:
        if not self.enabled or (not self.tty and step % self.every and step != self.total):
            return
        done = step / max(1, self.total)
        bar = "#" * int(20 * done) + "-" * (20 - int(20 * done))
        elapsed = time.perf_counter() - self.t0
        eta = elapsed / max(1, step - self.start) * (self.total - step)
        line = (
            f"[{self.name}] {step}/{self.total} |{bar}| loss {loss:.4f} | {samples_per_s:,.0f} img/s"
            f" | eta {int(eta) // 60}:{int(eta) % 60:02d}{extra}"
        )
        self.stream.write(("\r" + line + "\033[K") if self.tty else line + "\n")
        if self.tty and step == self.total:
            self.stream.write("\n")
        self.stream.flush()

    def message(self, text: str) -> None:
        if self.enabled:
            self.stream.write(("\r\033[K" if self.tty else "") + text + "\n")
            self.stream.flush()


def _rss(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return -1


def _maxrss() -> int:
    """Peak RSS of this process in bytes (getrusage; -1 where unavailable)."""
    try:
        import resource
    except ImportError:
        return -1
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


class PeakMemory:
    """Peak memory from ``start()`` to ``peak()``, beyond what was in use at ``start()``: CUDA allocator
    stats on a GPU; on CPU the process's peak RSS (VmHWM, reset through /proc/self/clear_refs; where the
    kernel does not allow that, the rise of getrusage's peak RSS, exact only when the measured part sets
    the process's peak, as in the fresh processes of the memory-budget search)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.base = 0

    def start(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            return
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self.base, self.hwm = _rss("VmRSS"), True
        except OSError:  # no resettable peak (macOS, locked-down kernels): the process's peak so far
            self.base, self.hwm = _maxrss(), False

    def peak(self) -> int:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            return torch.cuda.max_memory_allocated(self.device) - self.base
        if self.base < 0:
            return -1
        return max(0, (_rss("VmHWM") if self.hwm else _maxrss()) - self.base)


def plot_runs(
    runs: dict[str, list[dict]], path: str, title: str, diff: list[tuple[int, float]] | None = None
) -> bool:
    """Loss (and zero-shot accuracy, when logged) against step, one line per run; ``diff``: (step, |loss
    difference|) pairs for a third, log-scale panel. False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot (pip install matplotlib)", file=sys.stderr)
        return False
    labels = {
        "zeroshot_top1": "zero-shot top-1 (held-out)",
        "retrieval_top1": "image->text top-1 (--val-data)",
    }
    evals = [r for recs in runs.values() for r in recs if r.get("type") == "eval"]
    metric = next((m for m in labels if any(r.get(m) is not None for r in evals)), None)
    has_eval = metric is not None
    panels = 1 + has_eval + (diff is not None)
    fig, axes = plt.subplots(1, panels, figsize=(5.5 * panels, 4), squeeze=False)
    styles = ["-", "--", ":", "-."]
    for k, (name, recs) in enumerate(runs.items()):
        train = [r for r in recs if r.get("type") == "train"]
        axes[0, 0].plot([r["step"] for r in train], [r["loss"] for r in train], styles[k % 4], label=name)
        if has_eval:
            ev = [r for r in recs if r.get("type") == "eval" and r.get(metric) is not None]
            axes[0, 1].plot(
                [r["step"] for r in ev], [r[metric] for r in ev], styles[k % 4], marker="o", label=name
            )
    axes[0, 0].set_xlabel("step")
    axes[0, 0].set_ylabel("training loss")
    axes[0, 0].legend()
    if has_eval:
        axes[0, 1].set_xlabel("step")
        axes[0, 1].set_ylabel(labels[metric])
        axes[0, 1].legend()
    if diff is not None:
        ax = axes[0, -1]
        ax.semilogy([d[0] for d in diff], [max(d[1], 1e-9) for d in diff], ".", markersize=3)
        ax.set_xlabel("step")
        ax.set_ylabel("|loss difference| (floor 1e-9)")
    for ax in axes.flat:
        ax.grid(True, alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    plt.close(fig)
    return True
