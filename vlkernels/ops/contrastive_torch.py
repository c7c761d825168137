"""Chunked PyTorch backend of the contrastive loss: O(B * chunk) memory, any device.

Rows of S are processed ``chunk`` at a time with torch.matmul in fp32; the column log-sum-exps are
merged across chunks with logaddexp, so one pass over S yields both (2 B^2 D FLOPs forward; the
backward recomputes each chunk once and does the two products: 6 B^2 D).
"""

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


class TorchBackend:
    name = "torch"

    def __init__(self, chunk: int | None = None):
        self.chunk = chunk

    def _chunks(self, rows: int, cols: int, device: torch.device):
        step = self.chunk or chunk_rows(rows, cols, device)
        return range(0, rows, step), step

    def lse(self, image, text, scale):
        """Row LSEs [M] and column LSEs [N] of S = scale * image @ text.T (image [M, D], text [N, D])."""
        rows = image.shape[0]
        t32 = text.float()
        r = torch.empty(rows, dtype=torch.float32, device=image.device)
        c = torch.full((text.shape[0],), float("-inf"), dtype=torch.float32, device=image.device)
        starts, step = self._chunks(rows, text.shape[0], image.device)
        for start in starts:
            s_blk = torch.matmul(image[start : start + step].float(), t32.T).mul_(scale)
            r[start : start + step] = torch.logsumexp(s_blk, dim=1)
            c = torch.logaddexp(c, torch.logsumexp(s_blk, dim=0))
        return r, c

    def accumulate(self, image, text, scale, r, c):
        """W @ text [M, D] and W.T @ image [N, D] in fp32, W = exp(S - r[:, None]) + exp(S - c[None, :])."""
        t32 = text.float()
        a_i = torch.empty(image.shape, dtype=torch.float32, device=image.device)
        a_t = torch.zeros(t32.shape, dtype=torch.float32, device=image.device)
        starts, step = self._chunks(image.shape[0], text.shape[0], image.device)
        for start in starts:
            i_blk = image[start : start + step].float()
            s_blk = torch.matmul(i_blk, t32.T).mul_(scale)
            w = torch.exp(s_blk - r[start : start + step, None])
            w.add_(s_blk.sub_(c[None, :]).exp_())
            a_i[start : start + step] = torch.matmul(w, t32)
            a_t.addmm_(w.T, i_blk)
        return a_i, a_t
