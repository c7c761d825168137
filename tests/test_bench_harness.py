"""The benchmark harness's CPU memory measure (benchmarks/harness.py): live tensor bytes, deterministic."""

from __future__ import annotations

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
