"""Chunked PyTorch backend of the contrastive loss: O(B * chunk) memory, any device.

Rows of S are processed a chunk at a time (``torch_utils.chunk_rows``) with torch.matmul in fp32; the
column log-sum-exps are merged across chunks with logaddexp, so one pass over S yields both (2 B^2 D
FLOPs forward; the backward recomputes each chunk once and does the two products: 6 B^2 D).
"""

from __future__ import annotations

import torch

from vlkernels.ops.torch_utils import row_chunks


class TorchBackend:
    """``lse`` / ``accumulate`` of the contrastive backend protocol (ops/contrastive.py) in PyTorch."""

    def lse(self, image, text, scale):
        """Row LSEs [M] and column LSEs [N] of S = scale * image @ text.T (image [M, D], text [N, D])."""
        t32 = text.float()
        r = torch.empty(image.shape[0], dtype=torch.float32, device=image.device)
        c = torch.full((text.shape[0],), float("-inf"), dtype=torch.float32, device=image.device)
        for sl in row_chunks(image.shape[0], text.shape[0], image.device):
            s_blk = torch.matmul(image[sl].float(), t32.T).mul_(scale)
            r[sl] = torch.logsumexp(s_blk, dim=1)
            c = torch.logaddexp(c, torch.logsumexp(s_blk, dim=0))
        return r, c

    def accumulate(self, image, text, scale, r, c):
        """W @ text [M, D] and W.T @ image [N, D] in fp32, W = exp(S - r[:, None]) + exp(S - c[None, :])."""
        t32 = text.float()
        a_i = torch.empty(image.shape, dtype=torch.float32, device=image.device)
        a_t = torch.zeros(t32.shape, dtype=torch.float32, device=image.device)
        for sl in row_chunks(image.shape[0], text.shape[0], image.device):
            i_blk = image[sl].float()
            s_blk = torch.matmul(i_blk, t32.T).mul_(scale)
            w = torch.exp(s_blk - r[sl, None])
            w.add_(s_blk.sub_(c[None, :]).exp_())
            a_i[sl] = torch.matmul(w, t32)
            a_t.addmm_(w.T, i_blk)
        return a_i, a_t
