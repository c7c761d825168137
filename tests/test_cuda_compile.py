"""Compile-check of the CUDA sources with nvcc (sm_90), on machines without a GPU.

CI's CPU machines have nvcc (CUDA 13) but a CPU build of torch: this compiles every csrc/cuda/*.cu
as setup.py would on a CUDA machine, so that a CUDA compile error is caught before a GPU run.
Without nvcc the test fails under CI=true and is skipped elsewhere.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess

import pytest
from torch.utils import cpp_extension

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
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(msg + "; CI requires it (install the CUDA toolkit, e.g. CUDA 13.0)")
        pytest.skip(msg)
    return nvcc


def test_there_are_cuda_sources():
    assert SOURCES, "no csrc/cuda/*.cu: the CUDA op would silently not be built"


@pytest.mark.slow
@pytest.mark.parametrize("source", SOURCES, ids=os.path.basename)
def test_nvcc_compiles(source, tmp_path):
    nvcc = _require_nvcc()
    includes = list(cpp_extension.include_paths())
    if not any(
        os.path.exists(os.path.join(p, "c10", "cuda", "impl", "cuda_cmake_macros.h")) for p in includes
    ):
        shim = tmp_path / "shim" / "c10" / "cuda" / "impl"
        shim.mkdir(parents=True)
        (shim / "cuda_cmake_macros.h").write_text(CMAKE_MACROS)
        includes.append(str(tmp_path / "shim"))
    obj = tmp_path / (os.path.basename(source) + ".o")
    cmd = [nvcc, "-c", source, "-o", str(obj), "-std=c++17", "-gencode", "arch=compute_90,code=sm_90"]
    cmd += ["-O3", "--use_fast_math", "-DVLKERNELS_WITH_CUDA", "-I", os.path.join(ROOT, "csrc")]
    for inc in includes:
        cmd += ["-I", inc]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    errors = [line for line in proc.stderr.splitlines() if "error" in line]
    assert proc.returncode == 0, f"nvcc failed on {source}:\n" + "\n".join(
        errors[:20] or [proc.stderr[-3000:]]
    )
    assert obj.stat().st_size > 0
