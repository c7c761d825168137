"""Stub libraries that let a CUDA build of torch import on a machine without the CUDA libraries.

torch's CUDA wheels link cuBLAS, cuDNN, NCCL, cuSPARSE and the rest, which pip installs from separate
packages (several GB). A CPU machine that only needs to *import* such a torch (to build the extension
against it and run the CPU test suite with the GPU machines' versions: benchmarks/gpu_versions_check.sh)
can instead give the dynamic loader one small stub per missing library: every symbol torch's libraries
import from it, defined as an empty function (or a zeroed object), under the version names torch's
libraries require. Nothing calls into a stub: without a GPU driver ``torch.cuda.is_available()`` is
False and no CUDA library is used.

Usage: ``python benchmarks/cuda_wheel_stubs.py TORCH_LIB_DIR OUT_DIR`` (TORCH_LIB_DIR: the wheel's
``torch/lib``); then ``LD_LIBRARY_PATH=OUT_DIR:$CUDA_HOME/lib64``. Prints one line per stub.
"""

from __future__ import annotations

import collections
import glob
import os
import re
import subprocess
import sys

# objdump -T: "<addr> <flags> <kind> *UND* <size> [(<version>)|<version>] <symbol>"
_UNDEF = re.compile(r"^[0-9a-f]+\s+\S*\s+(\S+)\s+\*UND\*\s+[0-9a-f]+\s+(?:\(?([^\s)]+)\)?\s+)?(\S+)\s*$")
# objdump -p: "required from libfoo.so.1:" then one line per version name
_REQUIRED = re.compile(r"\s*required from (\S+):")
_VERSION = re.compile(r"\s+0x[0-9a-f]+ 0x[0-9a-f]+ \d+ (\S+)")
# Unversioned imports of the CUDA libraries (NCCL, cuSPARSELt, cuRAND, cuFile, NVSHMEM, the driver):
# nothing says which library they come from, so every stub of a library without version names defines them
# all (an unversioned reference binds to the first definition in load order; which library of torch's
# needs which stub varies: libcuda.so.1, for one, is no dependency of libtorch_cuda.so).
_CUDA_PREFIX = re.compile(r"^(cusparse|nccl|curand|cuFile|cu[A-Z]|nvshmem|cublas|cudnn|cufft|cusolver|nvrtc)")


def _run(*cmd: str) -> str:
    return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout


def missing_libraries(lib_dir: str, search: str) -> list[str]:
    """The sonames torch's libraries need that the loader cannot find (ldd 'not found')."""
    env = dict(os.environ, LD_LIBRARY_PATH=f"{search}:{lib_dir}")
    found = set()
    for so in sorted(glob.glob(os.path.join(lib_dir, "*.so"))):
        out = subprocess.run(["ldd", so], capture_output=True, text=True, env=env).stdout
        found.update(line.split()[0] for line in out.splitlines() if "not found" in line)
    return sorted(found)


def imports(lib_dir: str) -> tuple[dict[str, set[str]], dict[str | None, dict[str, str]]]:
    """(library -> the version names required from it, version -> {symbol: objdump kind})."""
    versions: dict[str, set[str]] = collections.defaultdict(set)
    symbols: dict[str | None, dict[str, str]] = collections.defaultdict(dict)
    for so in sorted(glob.glob(os.path.join(lib_dir, "*.so"))):
        lib = None
        for line in _run("objdump", "-p", so).splitlines():
            m = _REQUIRED.match(line)
            if m:
                lib = m.group(1)
            elif lib and (m := _VERSION.match(line)):
                versions[lib].add(m.group(1))
        for line in _run("objdump", "-T", so).splitlines():
            m = _UNDEF.match(line)
            if m:
                kind, version, name = m.groups()
                symbols[None if version in (None, "Base") else version][name] = kind
    return versions, symbols


def _definitions(symbols: dict[str, str]) -> list[str]:
    return [f"char {s}[256];" if k == "DO" else f"void {s}(void) {{}}" for s, k in sorted(symbols.items())]


def build(lib_dir: str, out_dir: str, search: str) -> list[tuple[str, int]]:
    os.makedirs(out_dir, exist_ok=True)
    versions, symbols = imports(lib_dir)
    unversioned = {s: k for s, k in symbols.get(None, {}).items() if _CUDA_PREFIX.match(s)}
    missing = missing_libraries(lib_dir, search)
    if unversioned and all(versions.get(lib) for lib in missing):
        raise RuntimeError("no missing library without version names to define the unversioned imports in")
    made = []
    for lib in missing:
        names = sorted(versions.get(lib, ()))
        defs, nodes = [], []
        for v in names:
            own = symbols.get(v, {})
            defs += _definitions(own)
            nodes.append(f"{v} {{ global: {' '.join(s + ';' for s in sorted(own)) or '*;'} }};")
        if not names:
            defs += _definitions(unversioned)
        if not nodes:
            nodes = [f"{lib} {{ global: *; }};"]
        src, script = os.path.join(out_dir, lib + ".c"), os.path.join(out_dir, lib + ".map")
        with open(src, "w") as f:
            f.write("\n".join(defs) + "\nint vlkernels_stub;\n")
        with open(script, "w") as f:
            f.write("\n".join(nodes) + "\n")
        subprocess.run(
            ["gcc", "-shared", "-fPIC", "-w", "-o", os.path.join(out_dir, lib), src,
             f"-Wl,--version-script={script}", f"-Wl,-soname,{lib}"],
            check=True,
        )  # fmt: skip
        made.append((lib, len(defs)))
    return made


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    lib_dir, out_dir = argv
    cuda = os.environ.get("CUDA_HOME", "/usr/local/cuda")
    for lib, n in build(lib_dir, out_dir, os.path.join(cuda, "lib64")):
        print(f"{lib}: {n} symbols")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
