"""Shared test set-up: Triton's interpreter on machines without a GPU, seeds, tolerances."""

import os
import platform

# The interpreter runs the kernels' dots as numpy matmuls, whose OpenBLAS (DYNAMIC_ARCH) picks its kernels
# by the CPU: their summation orders differ, and with them the last bits of the scores that the forward
# and the backward each recompute. The tests that rely on those being bitwise the same (huge logits: the
# backward's exponents subtract the forward's LSEs) then pass on one CPU and fail on another (Intel with
# AVX-512 and AMD EPYC differed). One kernel family on every x86-64 machine keeps CI deterministic: set
# before numpy (and so OpenBLAS) is loaded; an explicit setting wins.
if platform.machine().lower() in ("x86_64", "amd64"):
    os.environ.setdefault("OPENBLAS_CORETYPE", "Sandybridge")

import torch  # noqa: E402

# Must happen before triton is imported anywhere: on a CPU-only machine the Triton kernels run in
# Triton's interpreter, so that CI exercises them instead of skipping them.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
    # ``@triton.jit`` reads TRITON_INTERPRET when a kernel module is imported: import every kernel module now,
    # so that a test that unsets it for a while (to read the GPU launch configs) cannot be the first to
    # import one and leave its kernels needing a real driver for the rest of the run.
    try:
        import vlkernels.ops.contrastive_triton  # noqa: F401
        import vlkernels.ops.sigmoid_triton  # noqa: F401
        import vlkernels.ops.soft_target_triton  # noqa: F401
    except ImportError:  # no Triton: the Triton tests skip
        pass

import pytest  # noqa: E402
from hypothesis import settings  # noqa: E402

# CI is deterministic: hypothesis draws the same examples on every run ("ci", the default). Set
# HYPOTHESIS_PROFILE=explore locally to draw new random examples, ten times as many (tests/_ref.examples:
# the tests' own max_examples would override a profile's).
settings.register_profile("ci", derandomize=True, print_blob=True)
settings.register_profile("explore", derandomize=False, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

HAS_CUDA = torch.cuda.is_available()

# Parallel workers (pytest-xdist, the README's ``-n 2``) share the cores: each takes its share as torch's
# intra-op threads. With both workers on every core, OpenMP's spinning threads slowed the ops-heavy memory
# tests 2-6x (CI's 2 cores). Tests that need more threads set them and restore them.
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    _cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    torch.set_num_threads(max(1, _cores // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))


def pytest_collection_modifyitems(config, items):
    if HAS_CUDA:
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU (run benchmarks/gpu_suite.sh on one)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture
def matmul_precision():
    """``torch.set_float32_matmul_precision`` for the test (it decides whether fp32 dots are TF32); the
    value before it is restored after."""
    before = torch.get_float32_matmul_precision()
    yield torch.set_float32_matmul_precision
    torch.set_float32_matmul_precision(before)
