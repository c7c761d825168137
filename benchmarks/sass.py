"""The machine code (SASS) of the CUDA kernels, read without a GPU: instruction counts of their loops.

nvcc compiles csrc/cuda/*.cu for sm_90 / sm_80 here (tests/test_cuda_compile.py); ``cuobjdump -sass``
disassembles the object. The CUDA toolkit's cuobjdump is used where it is installed, else the copy that
Triton's NVIDIA backend ships (triton/backends/nvidia/bin). This module finds each loop (a backward
branch and the instructions from its target to it) and counts its instructions by the SM pipe that
issues them, so that the augmentation cost model (benchmarks/augment_cost_model.py) counts the
resampling loops' real instructions instead of estimates, and tests/test_cuda_compile.py checks the
loops the model assumes.

    python -m benchmarks.sass OBJECT_OR_CUBIN [KERNEL_SUBSTRING] [--arch 90]   # prints each kernel's loops
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import shutil
import subprocess
from dataclasses import dataclass

# The SM pipe of each SASS opcode family (the name before the first '.'), as the Nsight Compute pipe
# names group them on sm_80 / sm_90: lsu (global, shared and local loads and stores), xu (conversions,
# MUFU transcendentals), fp32 (FFMA / FADD / FMUL, two FMA pipes), imad (integer multiply-add: the heavy
# FMA pipe only) and alu (integer add, logic, compares, shifts, selects, moves). Anything else (branches,
# barriers, uniform-datapath ops) is issued but not assigned a pipe.
PIPES = {
    "lsu": {"LDG", "LDS", "LDL", "STG", "STS", "STL", "LD", "ST", "LDSM", "ATOMS", "ATOMG", "RED"},
    "xu": {"I2F", "I2FP", "F2I", "F2F", "MUFU", "FRND"},
    "fp32": {"FFMA", "FADD", "FMUL", "FMNMX"},
    "imad": {"IMAD", "IMUL", "IDP"},
    "alu": {"IADD3", "VIADD", "LOP3", "ISETP", "LEA", "SHF", "SEL", "MOV", "IABS", "FSETP", "FSEL", "FSET",
            "PRMT", "IMNMX", "VIMNMX", "POPC", "FLO", "BMSK", "SGXT", "PLOP3", "CS2R", "HFMA2"},
}  # fmt: skip
_PIPE_OF = {op: pipe for pipe, ops in PIPES.items() for op in ops}

_INSTR = re.compile(r"\s*/\*([0-9a-f]{4,})\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)\s*([^;]*);")


@dataclass
class Loop:
    kernel: str
    start: int  # byte offsets in the kernel
    end: int
    ops: collections.Counter  # opcode family -> count

    @property
    def size(self) -> int:
        return sum(self.ops.values())

    def pipes(self) -> dict[str, int]:
        out = dict.fromkeys(PIPES, 0)
        for op, k in self.ops.items():
            if op in _PIPE_OF:
                out[_PIPE_OF[op]] += k
        out["issue"] = self.size
        return out

    def count(self, *families: str) -> int:
        return sum(self.ops[f] for f in families)


def cuobjdump() -> str | None:
    """Path of a cuobjdump: on PATH / in CUDA_HOME, else the one Triton's NVIDIA backend ships."""
    cands = [shutil.which("cuobjdump")]
    home = os.environ.get("CUDA_HOME")
    if home:
        cands.append(os.path.join(home, "bin", "cuobjdump"))
    try:
        import triton

        cands.append(os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump"))
    except ImportError:
        pass
    return next((c for c in cands if c and os.path.exists(c) and os.access(c, os.X_OK)), None)


def disassemble(path: str, arch: str | None = None) -> str:
    """The SASS of an object or cubin; ``arch`` ("90", "80") picks one architecture of a fat object."""
    tool = cuobjdump()
    if tool is None:
        raise FileNotFoundError("no cuobjdump (CUDA toolkit or triton's NVIDIA backend)")
    cmd = [tool, "-sass", path] + (["-arch", f"sm_{arch}"] if arch else [])
    return subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=300).stdout


def kernels(sass: str) -> dict[str, list[tuple[int, str, str]]]:
    """Kernel (mangled name) -> its instructions (offset, opcode, operands)."""
    out: dict[str, list] = {}
    cur = None
    for line in sass.splitlines():
        m = re.search(r"Function : (\S+)", line)
        if m:
            cur = out.setdefault(m.group(1), [])
            continue
        if cur is None:
            continue
        m = _INSTR.match(line)
        if m:
            cur.append((int(m.group(1), 16), m.group(2), m.group(3)))
    return out


def loops(sass: str, kernel_substring: str = "") -> list[Loop]:
    """Every loop of the kernels whose mangled name contains kernel_substring: a backward branch (BRA to
    an earlier offset) and the instructions from its target to it, innermost loops first in each
    kernel's order (nested loops include their inner ones)."""
    found = []
    for name, ins in kernels(sass).items():
        if kernel_substring not in name:
            continue
        index = {off: i for i, (off, _, _) in enumerate(ins)}
        for i, (off, op, args) in enumerate(ins):
            if not op.startswith("BRA"):
                continue
            m = re.search(r"0x([0-9a-f]+)", args)
            if not m:
                continue
            target = int(m.group(1), 16)
            if target <= off and target in index:
                body = ins[index[target] : i + 1]
                found.append(
                    Loop(name, target, off, collections.Counter(o.split(".")[0] for _, o, _ in body))
                )
    return found


# The augmentation kernel's resampling loops, recognised by their shape (csrc/augment.h: sum_taps unrolled
# by 4 taps, sum_taps_pair by 2 shared positions): kind -> (opcode counts the loop has, its most
# instructions, the taps or positions an iteration covers).
# - "x": sum_taps over the source bytes (12 byte loads, 12 FFMA), in each layout;
# - "pair": sum_taps_pair over the source bytes (6 byte loads, 4 weights, 12 FFMA);
# - "y": sum_taps over the y pass's buffered rows (12 values and 4 weights from shared memory, 12 FFMA);
# - "y pair": sum_taps_pair over the buffered rows (6 values and 4 weights, 12 FFMA).
TAP_LOOPS = {
    "x": ({"LDG": 12, "FFMA": 12}, 100, 4),
    "pair": ({"LDG": 6, "LDS": 4, "FFMA": 12}, 80, 2),
    "y": ({"LDG": 0, "LDS": 16, "FFMA": 12}, 100, 4),
    "y pair": ({"LDG": 0, "LDS": 10, "FFMA": 12}, 80, 2),
}


def tap_loops(all_loops: list[Loop], kind: str) -> list[Loop]:
    """The loops of all_loops that have the shape of TAP_LOOPS[kind]."""
    counts, most, _ = TAP_LOOPS[kind]
    return [lp for lp in all_loops if lp.size < most and all(lp.count(op) == k for op, k in counts.items())]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("path", help="an object file or cubin with device code")
    ap.add_argument("kernel", nargs="?", default="", help="only kernels whose mangled name contains this")
    ap.add_argument("--arch", default=None, help="one architecture of a fat object, e.g. 90")
    args = ap.parse_args(argv)
    for lp in loops(disassemble(args.path, args.arch), args.kernel):
        print(f"{lp.kernel[-40:]} {lp.start:#x}-{lp.end:#x} {lp.size} instructions: {lp.pipes()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
