"""Build of the compiled extension ``vlkernels._C``.

The C++ (CPU) sources in ``csrc/`` are always compiled; the CUDA sources in ``csrc/cuda/`` only when
the installed torch has CUDA and nvcc is found. Switches (environment variables):

- ``VLKERNELS_SKIP_BUILD=1``: build no extension at all (pure-Python install; the C++ ops are then
  unavailable and ``impl="cpu"``/``"cuda"`` raise a clear error).
- ``VLKERNELS_SKIP_CUDA_BUILD=1``: build the CPU extension only, even where CUDA is available.
- ``VLKERNELS_FORCE_CUDA_BUILD=1``: fail instead of silently skipping CUDA when it cannot be built.
- ``VLKERNELS_CUDA_ARCHS="9.0"``: target architectures (defaults to ``TORCH_CUDA_ARCH_LIST`` or 9.0).
- ``MAX_JOBS``: parallel compile jobs (ninja), as for any torch extension.
"""

import glob
import os

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _flag(name: str) -> bool:
    return os.environ.get(name, "0").strip().lower() in ("1", "true", "yes", "on")


def _loaded_libstdcxx():
    """Path of the libstdc++ shared library loaded in this process (by torch), or None."""
    import torch  # noqa: F401  (loads libtorch and with it libstdc++)

    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                path = line.split()[-1] if len(line.split()) >= 6 else ""
                if os.path.basename(path).startswith("libstdc++.so"):
                    return path
    except OSError:
        pass
    return None


def _extensions():
    if _flag("VLKERNELS_SKIP_BUILD"):
        return [], {}
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

    cpp_sources = sorted(glob.glob(os.path.join("csrc", "*.cpp")))
    cuda_sources = sorted(glob.glob(os.path.join("csrc", "cuda", "*.cu")))
    # -fno-trapping-math: lets GCC if-convert (and so vectorise) the branch-free colour maths of the
    # CPU augmentation kernel; it changes no value (no reassociation, no contraction), only the
    # assumption that floating-point exceptions are observed.
    # No -std: torch's BuildExtension adds the C++ standard its headers are written for (C++17 in torch
    # 2.11, C++20 from 2.12; torch 2.15's ATen.h stops with "#error C++20 or later" under C++17) to the
    # C++ and the nvcc commands alike. csrc/ is written in C++17 and compiles as either.
    cxx_flags = ["-O3", "-fopenmp", "-fno-trapping-math", "-DPy_LIMITED_API=0x03090000"]
    # libstdc++ must be the process's one shared copy (the one torch loaded): a second, static copy
    # inside _C has its own std::locale ids, and the first message formatted with a number there (any
    # TORCH_CHECK) crashes in a locale facet. Some toolchains link libstdc++.a by default (seen: a GCC
    # in /opt/gcc on a CUDA 13 image); naming torch's libstdc++.so.6 by its path, before the driver's
    # own libraries, makes every std:: symbol resolve to it.
    link_flags = ["-fopenmp", _loaded_libstdcxx() or "-lstdc++"]
    can_cuda = torch.version.cuda is not None and CUDA_HOME is not None
    want_cuda = bool(cuda_sources) and not _flag("VLKERNELS_SKIP_CUDA_BUILD")
    if want_cuda and not can_cuda and _flag("VLKERNELS_FORCE_CUDA_BUILD"):
        raise RuntimeError(
            "VLKERNELS_FORCE_CUDA_BUILD=1 but the CUDA extension cannot be built: "
            f"torch.version.cuda={torch.version.cuda!r}, CUDA_HOME={CUDA_HOME!r}"
        )
    if want_cuda and can_cuda:
        archs = os.environ.get("VLKERNELS_CUDA_ARCHS") or os.environ.get("TORCH_CUDA_ARCH_LIST") or "9.0"
        os.environ["TORCH_CUDA_ARCH_LIST"] = archs
        ext = CUDAExtension(
            "vlkernels._C",
            cpp_sources + cuda_sources,
            extra_compile_args={
                "cxx": cxx_flags + ["-DVLKERNELS_WITH_CUDA"],
                "nvcc": ["-O3", "--use_fast_math", "-DVLKERNELS_WITH_CUDA"],
            },
            extra_link_args=link_flags,
            include_dirs=[os.path.join(ROOT, "csrc")],
            py_limited_api=True,
        )
    else:
        ext = CppExtension(
            "vlkernels._C",
            cpp_sources,
            extra_compile_args={"cxx": cxx_flags},
            extra_link_args=link_flags,
            include_dirs=[os.path.join(ROOT, "csrc")],
            py_limited_api=True,
        )
    return [ext], {"build_ext": BuildExtension}


ext_modules, cmdclass = _extensions()
setup(
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    options={"bdist_wheel": {"py_limited_api": "cp39"}} if ext_modules else {},
)
