"""Test helper: compile and run a small C++ program against csrc/ (host code of the kernels' headers)."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_cxx(source: str, workdir) -> str:
    """stdout of `source` compiled with the C++ compiler (-I csrc -I tests) and run; skips without a
    compiler."""
    cxx = shutil.which("c++") or shutil.which("g++")
    if cxx is None:
        pytest.skip("no C++ compiler")
    src, exe = os.path.join(str(workdir), "h.cpp"), os.path.join(str(workdir), "h")
    with open(src, "w") as f:
        f.write(source)
    includes = ["-I", os.path.join(ROOT, "csrc"), "-I", os.path.join(ROOT, "tests")]  # tests/: host_block.h
    subprocess.run([cxx, "-std=c++17", "-O1", "-pthread", *includes, src, "-o", exe],
                   check=True, capture_output=True, timeout=120)  # fmt: skip
    return subprocess.run([exe], check=True, capture_output=True, text=True, timeout=60).stdout
