"""The benchmark harness (benchmarks/harness.py): its CPU memory measure (live tensor bytes,
deterministic) and the loss benchmarks built on it, end to end at a tiny shape."""

from __future__ import annotations

import importlib
import json

import pytest
import torch

from benchmarks import harness


def test_cpu_peak_memory_is_the_live_bytes_of_the_call():
    """The peak of the tensors a call's ops create and still hold, exact to the byte and the same every
    run (the peak RSS it replaces varied from 0 to 80 MiB for one call); inputs made before the call, and
    views and in-place results of them, do not count."""
    x = torch.randn(1024, 64)  # 256 KiB, made before

    def call():
        kept = torch.empty(1 << 18, dtype=torch.uint8)  # 256 KiB, still live at the peak
        tmp = x * 2.0  # 256 KiB, freed before the next allocation
        del tmp
        big = torch.zeros(3 << 18, dtype=torch.uint8)  # 768 KiB: the peak is kept + big
        x.mul_(1.0)
        x[:10].add_(1.0)
        return kept, big

    peaks = {harness.peak_memory(call, "cpu") for _ in range(3)}
    assert peaks == {1 << 20}, peaks


@pytest.mark.parametrize(
    "module, extra",
    [
        ("bench_contrastive", []),
        ("bench_sigmoid", ["--impls", "naive", "torch"]),
        ("bench_soft_target", ["--teacher-dims", "0", "--impls", "naive", "torch"]),
    ],
)
def test_loss_benchmark_runs_each_impl_on_one_cpu_thread(module, extra, tmp_path):
    """A tiny run of each loss benchmark end to end (every row in its own worker process): no row fails,
    each worker ran on the one CPU thread the CPU default asks for (torch's own default would take every
    core: the committed CPU tables are single-thread), the ratios against naive are filled in, and the
    loss each impl's worker read out agrees with naive's on the same inputs."""
    bench = importlib.import_module(f"benchmarks.{module}")
    out = tmp_path / "rows.json"
    argv = ["--device", "cpu", "--batch-sizes", "13", "--dims", "6", "--modes", "fwd+bwd", "--reps", "1"]
    rows = bench.main(argv + ["--out", str(out), "--plot", str(tmp_path / "rows.png")] + extra)
    assert rows and json.loads(out.read_text()) == rows
    assert [r.get("error") for r in rows] == [None] * len(rows)
    assert {(r["threads"], r["torch_threads"]) for r in rows} == {(1, 1)}
    naive = {r.get("teacher") for r in rows if r["impl"] == "naive"}
    losses = {}
    for r in rows:
        if r.get("op", "") == "soft_target" or module != "bench_soft_target":
            losses.setdefault(r.get("teacher"), []).append(r["loss"])
            assert r["ratio_time_vs_naive"] > 0
    assert set(losses) == naive
    for values in losses.values():
        assert max(values) - min(values) <= 1e-5 * max(abs(v) for v in values), values
