"""Pieces shared by the chunked PyTorch backends: the row-chunk size of S."""

from __future__ import annotations

import os

import torch

# Elements of one fp32 chunk of S (the backward holds two such buffers at a time).
_CPU_CHUNK_ELEMS = 1 << 22
_CUDA_CHUNK_ELEMS = 1 << 26


def chunk_rows(rows: int, cols: int, device: torch.device) -> int:
    """Rows of S per chunk: ``VLKERNELS_TORCH_CHUNK_ROWS`` if set, else a fixed element budget."""
    env = os.environ.get("VLKERNELS_TORCH_CHUNK_ROWS")
    if env:
        return max(1, int(env))
    elems = _CUDA_CHUNK_ELEMS if device.type == "cuda" else _CPU_CHUNK_ELEMS
    return max(1, min(rows, elems // cols))


def row_chunks(rows: int, cols: int, device: torch.device):
    """Slices covering ``range(rows)`` in chunks of ``chunk_rows`` rows."""
    step = chunk_rows(rows, cols, device)
    return [slice(start, start + step) for start in range(0, rows, step)]
