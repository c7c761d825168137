"""Shared test set-up: Triton's interpreter on machines without a GPU, seeds, tolerances."""

import os

import torch

# Must happen before triton is imported anywhere: on a CPU-only machine the Triton kernels run in
# Triton's interpreter, so that CI exercises them instead of skipping them.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

HAS_CUDA = torch.cuda.is_available()


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
