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
    cxx_flags = ["-O3", "-std=c++17", "-fopenmp", "-fno-trapping-math", "-DPy_LIMITED_API=0x03090000"]
    # libstdc++ must come from the process's one shared copy (torch's): a second, static copy inside
    # _C (seen on a CUDA 13 image whose link step added libstdc++.a) has its own std::locale ids, and
    # the first message formatted with a number there (any TORCH_CHECK) crashes in a locale facet. The
    # shared library is named before the driver's own libraries, so it resolves every std:: symbol.
    link_flags = ["-fopenmp", "-Wl,--push-state,--no-as-needed", "-lstdc++", "-Wl,--pop-state"]
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
                "nvcc": ["-O3", "-std=c++17", "--use_fast_math", "-DVLKERNELS_WITH_CUDA"],
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
