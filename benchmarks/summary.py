"""Print a markdown summary of the benchmark JSON files in a results folder.

python -m benchmarks.summary benchmarks/results/<date>-<gpu>
"""

from __future__ import annotations

import glob
import json
import os
import sys

COLUMNS = [
    ("impl", "impl"),
    ("op", "op"),
    ("teacher", "teacher"),
    ("B", "B"),
    ("D", "D"),
    ("dtype", "dtype"),
    ("mode", "mode"),
    ("median_ms", "ms"),
    ("peak_mem_bytes", "peak MiB"),
    ("ratio_time_vs_naive", "time/naive"),
    ("ratio_mem_vs_naive", "mem/naive"),
    ("speedup_vs_inf_cl", "x Inf-CL"),
    ("tflops", "TFLOP/s"),
    ("fraction_of_ceiling", "of bf16 peak"),
    ("modelled_h100_ms", "modelled H100 ms"),
    ("v2_plan", "backward plan"),
    ("images_per_s", "img/s"),
    ("speedup_per_core_vs_pil", "x PIL/core"),
    ("speedup_vs_torchvision_v2", "x tv2"),
    ("fraction_of_bw_floor", "of BW floor"),
]


def _fmt(key: str, value) -> str:
    if value is None or value == "":
        return ""
    if key == "peak_mem_bytes":
        return f"{value / 2**20:.1f}"
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def summarize(folder: str) -> str:
    lines = []
    for path in sorted(glob.glob(os.path.join(folder, "*.json"))):
        table = path[: -len(".json")] + ".md"
        if os.path.basename(path) == "fp32_dots.json" and os.path.exists(table):
            with open(table) as f:  # errors against float64 and times: its own tables
                lines += ["### fp32_dots.json (benchmarks.bench_fp32_dots)", f.read(), ""]
            continue
        with open(path) as f:
            rows = json.load(f)
        if not isinstance(rows, list) or not rows:
            continue
        present = [(k, h) for k, h in COLUMNS if any(k in r for r in rows)]
        first = next((r for r in rows if "device" in r), rows[0])
        lines.append(
            f"### {os.path.basename(path)}: {first.get('device', '?')}, torch {first.get('torch', '?')}, "
            f"triton {first.get('triton', '?')}, {first.get('date', '?')}"
        )
        lines.append("| " + " | ".join(h for _, h in present) + " |")
        lines.append("|" + "---|" * len(present))
        for r in rows:
            if "error" in r:
                lines.append(f"| {r.get('impl', '?')} | error: {str(r['error'])[:120]} |")
                continue
            lines.append("| " + " | ".join(_fmt(k, r.get(k)) for k, _ in present) + " |")
        lines.append("")
    lines += ncu_augment_lines(folder)
    return "\n".join(lines) if lines else f"no benchmark JSON in {folder}"


# The lines of the augmentation kernel's ncu profile (the GPU suite's ncu_augment.txt) that check its cost
# model: the model's prediction (printed first by benchmarks.profile_one --augment) and the profile's
# duration, instructions, issue rate, occupancy, stall cycles and ncu's notes on the stalls.
NCU_KEYS = ("model (", "Duration", "Executed Instructions", "Issued Instructions", "Executed Ipc A",
            "Issue Slots Busy", "Achieved Occupancy", "Registers Per", "Warp Cycles Per",
            "stall")  # fmt: skip


def ncu_augment_lines(folder: str) -> list[str]:
    path = os.path.join(folder, "ncu_augment.txt")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        found = [line.strip() for line in f if any(k in line for k in NCU_KEYS)]
    if not found:
        return []
    return ["### ncu_augment.txt: the augmentation kernel against its cost model", "```", *found, "```", ""]


if __name__ == "__main__":
    print(summarize(sys.argv[1] if len(sys.argv) > 1 else "."))
