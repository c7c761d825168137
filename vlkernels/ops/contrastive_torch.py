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


def chunk_rows(batch: int, device: torch.device) -> int:
    env = os.environ.get("VLKERNELS_TORCH_CHUNK_ROWS")
    if env:
        return max(1, int(env))
    elems = _CUDA_CHUNK_ELEMS if device.type == "cuda" else _CPU_CHUNK_ELEMS
    return max(1, min(batch, elems // batch))


class TorchBackend:
    name = "torch"

    def __init__(self, chunk: int | None = None):
        self.chunk = chunk

    def _chunks(self, batch: int, device: torch.device):
        step = self.chunk or chunk_rows(batch, device)
        return range(0, batch, step), step

    def lse(self, image, text, scale):
        batch = image.shape[0]
        t32 = text.float()
        r = torch.empty(batch, dtype=torch.float32, device=image.device)
        c = torch.full((batch,), float("-inf"), dtype=torch.float32, device=image.device)
        starts, step = self._chunks(batch, image.device)
        for start in starts:
            s_blk = torch.matmul(image[start : start + step].float(), t32.T).mul_(scale)
            r[start : start + step] = torch.logsumexp(s_blk, dim=1)
            c = torch.logaddexp(c, torch.logsumexp(s_blk, dim=0))
        return r, c

    def accumulate(self, image, text, scale, r, c):
        batch = image.shape[0]
        t32 = text.float()
        a_i = torch.empty(t32.shape, dtype=torch.float32, device=image.device)
        a_t = torch.zeros(t32.shape, dtype=torch.float32, device=image.device)
        starts, step = self._chunks(batch, image.device)
        for start in starts:
            i_blk = image[start : start + step].float()
            s_blk = torch.matmul(i_blk, t32.T).mul_(scale)
            w = torch.exp(s_blk - r[start : start + step, None])
            w.add_(s_blk.sub_(c[None, :]).exp_())
            a_i[start : start + step] = torch.matmul(w, t32)
            a_t.addmm_(w.T, i_blk)
        return a_i, a_t
