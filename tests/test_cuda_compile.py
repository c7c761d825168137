"""Compile-check of the CUDA sources with nvcc (sm_90 and sm_80), on machines without a GPU.

CI's CPU machines have nvcc (CUDA 13) but a CPU build of torch: this compiles every csrc/cuda/*.cu
as setup.py would on a CUDA machine, so that a CUDA compile error is caught before a GPU run, and
reads ptxas' resource report (-Xptxas -v) of every kernel: no register spills, and the registers per
thread within what the kernel's launch bound allows. Without nvcc the test fails under CI=true and is
skipped elsewhere. The augmentation kernel's resampling loops are then read in the object's machine code
(benchmarks/sass.py: cuobjdump -sass, the CUDA toolkit's or the copy Triton ships): no conversion
instruction per tap, and the instructions per tap the cost model counts (X_TAP, Y_TAP in
benchmarks/augment_cost_model.py) still those of the compiled loops.

    python -m pytest -q tests/test_cuda_compile.py -s     # prints each kernel's registers and spills
"""

from __future__ import annotations

import glob
import inspect
import os
import re
import shutil
import subprocess

import pytest
from torch.utils import cpp_extension

from tests._ci import in_ci, skip_or_fail

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCES = sorted(glob.glob(os.path.join(ROOT, "csrc", "cuda", "*.cu")))
# CPU wheels of torch ship the c10/cuda headers but not this CMake-generated one; CUDA builds define
# exactly this macro in it.
CMAKE_MACROS = "#pragma once\n#define C10_CUDA_BUILD_SHARED_LIBS\n"


def _nvcc() -> str | None:
    candidates = [shutil.which("nvcc"), "/usr/local/bin/nvcc"]
    if cpp_extension.CUDA_HOME:
        candidates.append(os.path.join(cpp_extension.CUDA_HOME, "bin", "nvcc"))
    return next((c for c in candidates if c and os.path.exists(c)), None)


def _require_nvcc() -> str:
    nvcc = _nvcc()
    if nvcc is None:
        msg = "nvcc not found (looked on PATH, /usr/local/bin and CUDA_HOME): cannot compile-check csrc/cuda"
        skip_or_fail(msg + ("; CI requires it (install the CUDA toolkit, e.g. CUDA 13.0)" if in_ci() else ""))
    return nvcc


def test_there_are_cuda_sources():
    assert SOURCES, "no csrc/cuda/*.cu: the CUDA op would silently not be built"


# The architectures compiled for: one nvcc call per source builds both (the host side, much of the time,
# is compiled once: the two tests took 77 s on a 2-core machine, 97 s with a call each), their device
# code in parallel (``--threads 2``: 70 -> 53 s on a 2-core machine).
ARCHS = ("90", "80")


@pytest.fixture(scope="module")
def builds(tmp_path_factory):
    """source -> (object with the SASS of every arch in ARCHS, ptxas' report), built on first use."""
    done: dict[str, tuple[str, str]] = {}

    def build(source: str) -> tuple[str, str]:
        if source not in done:
            done[source] = _build(_require_nvcc(), source, tmp_path_factory.mktemp("nvcc"))
        return done[source]

    return build


def cxx_std() -> str:
    """The C++ standard torch's extension build compiles .cpp and .cu files with (setup.py passes no
    -std: C++17 in torch 2.11, C++20 from 2.12, which torch 2.15's headers require): BuildExtension's
    default, read from its source; where that line moved, the oldest standard torch's headers accept
    (ATen.h's #error) and at least csrc's own C++17."""
    match = re.search(r"cpp_flag_prefix \+ '(c\+\+\d+)'", inspect.getsource(cpp_extension))
    if match:
        return match.group(1)
    for inc in cpp_extension.include_paths():
        aten = os.path.join(inc, "ATen", "ATen.h")
        if os.path.exists(aten):
            with open(aten) as f:
                need = re.search(r"#error C\+\+(\d+) or later", f.read())
            if need and int(need.group(1)) > 17:
                return f"c++{need.group(1)}"
    return "c++17"


def _build(nvcc: str, source: str, tmp_path) -> tuple[str, str]:
    includes = list(cpp_extension.include_paths())
    if not any(
        os.path.exists(os.path.join(p, "c10", "cuda", "impl", "cuda_cmake_macros.h")) for p in includes
    ):
        shim = tmp_path / "shim" / "c10" / "cuda" / "impl"
        shim.mkdir(parents=True)
        (shim / "cuda_cmake_macros.h").write_text(CMAKE_MACROS)
        includes.append(str(tmp_path / "shim"))
    obj = tmp_path / (os.path.basename(source) + ".o")
    cmd = [nvcc, "-c", source, "-o", str(obj), f"-std={cxx_std()}", "--threads", str(len(ARCHS))]
    for arch in ARCHS:
        cmd += ["-gencode", f"arch=compute_{arch},code=sm_{arch}"]
    cmd += ["-O3", "--use_fast_math", "-DVLKERNELS_WITH_CUDA", "-I", os.path.join(ROOT, "csrc")]
    # The flags torch's extension build adds to every .cu (no implicit half / bfloat16 conversions, ...).
    cmd += list(getattr(cpp_extension, "COMMON_NVCC_FLAGS", []))
    cmd += ["-Xptxas", "-v"]
    for inc in includes:
        cmd += ["-I", inc]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    errors = [line for line in proc.stderr.splitlines() if "error" in line]
    assert proc.returncode == 0, f"nvcc failed on {source}:\n" + "\n".join(
        errors[:20] or [proc.stderr[-3000:]]
    )
    assert obj.stat().st_size > 0
    return str(obj), proc.stderr


@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("source", SOURCES, ids=os.path.basename)
def test_nvcc_compiles(source, arch, builds):
    obj, log = builds(source)
    kernels = ptxas_resources(log, arch)
    assert kernels, f"no sm_{arch} kernel in ptxas' report:\n" + log[-3000:]
    for name, r in kernels.items():
        print(f"{name}: {r['registers']} registers, spills {r['spill_stores']} B stored / "
              f"{r['spill_loads']} B loaded, stack {r['stack']} B, static smem {r['smem']} B")  # fmt: skip
        assert r["spill_stores"] == 0 and r["spill_loads"] == 0, (name, r)
        # 512-thread blocks (kThreads): ptxas caps a thread at 65536 / 512 = 128 registers.
        assert r["registers"] <= 128, (name, r)
    if os.path.basename(source) == "augment_cuda.cu":
        check_resampling_loops(obj, arch)


def check_resampling_loops(obj: str, arch: str) -> None:
    from benchmarks import augment_cost_model as acm
    from benchmarks import sass

    if sass.cuobjdump() is None:
        if in_ci():
            pytest.fail(
                "no cuobjdump (CUDA toolkit or triton's NVIDIA backend): cannot read the kernel's SASS"
            )
        return
    loops = sass.loops(sass.disassemble(obj, arch), "fused_augment_kernel")
    # Every instance of the kernel (4 output dtypes x plain / cluster) has sum_taps' loop (unrolled by 4
    # taps) and sum_taps_pair's (by 2 shared positions) over the source bytes in both layouts and over the
    # y pass's buffered rows; the cluster kernel's sm_80 stub has none.
    want = 8 if arch == "90" else 4
    models = {"x": acm.X_TAP, "pair": acm.PAIR_TAP, "y": acm.Y_TAP, "y pair": acm.Y_PAIR_TAP}
    for kind, model in models.items():
        found, unroll = sass.tap_loops(loops, kind), sass.TAP_LOOPS[kind][2]
        assert len({lp.kernel for lp in found}) == want, (kind, len(found))
        counts = [lp.pipes() for lp in found]
        slack = 1.1 if arch == "90" else 1.25  # the model is the H100's (sm_90); sm_80 within reach of it
        for c in counts:
            assert c["xu"] == 0, f"a conversion or MUFU instruction in the {kind} tap loop: {c}"
            per_tap = {"issue": c["issue"], "lsu": c["lsu"], "fp32": c["fp32"], "int32": c["imad"] + c["alu"]}
            for k, v in per_tap.items():
                got = v / unroll
                assert got <= slack * model[k], f"{kind} tap loop: {k} {got} a tap, the model: {model[k]}"
        if arch == "90":  # the model's counts are sm_90's: not stale
            most = max(c["issue"] for c in counts) / unroll
            assert most >= 0.9 * model["issue"], f"{kind} taps: {most} instructions, model {model['issue']}"


def ptxas_resources(log: str, arch: str) -> dict[str, dict[str, int]]:
    """Per kernel compiled for sm_``arch`` (the template argument of the mangled name, e.g.
    'fused_augment_kernel<f>'), from ``-Xptxas -v``: registers, spill stores / loads, stack frame and
    static shared memory in bytes."""
    out, name = {}, None
    for line in log.splitlines():
        m = re.search(r"Compiling entry function '(\w+)' for '(sm_\w+)'", line)
        if m:
            # Each entry's report is whole before the next entry starts (the archs' ptxas run in parallel,
            # ``--threads``: interleaved reports would misattribute registers, so they fail here)
            assert name is None or "registers" in out[name], f"ptxas reports interleaved at: {line}"
            if m.group(2) != f"sm_{arch}":
                name = None
                continue
            mangled = m.group(1)
            k = re.search(r"\d([A-Za-z_]+_kernel)I(\w+?)EEv", mangled)
            name = f"{k.group(1)}<{k.group(2)}>" if k else mangled
            out[name] = {}
            continue
        if name is None:
            continue
        m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m:
            out[name].update(stack=int(m.group(1)), spill_stores=int(m.group(2)), spill_loads=int(m.group(3)))
        m = re.search(r"Used (\d+) registers", line)
        if m:
            assert "registers" not in out[name], f"ptxas reports interleaved at: {line}"
            # (A kernel without static shared memory has no "bytes smem" in its line: 0.)
            s = re.search(r"(\d+) bytes smem", line)
            out[name].update(registers=int(m.group(1)), smem=int(s.group(1)) if s else 0)
    return out
