"""Chunked PyTorch backend of the sigmoid loss: O(M * chunk) memory, any device.

Rows of the block of logits z = s I T^T + b are processed a chunk at a time (``torch_utils.row_chunks``)
with torch.matmul in fp32: the forward is one pass (2 M N D FLOPs), the backward recomputes each chunk
once and does the two products (6 M N D). The positives (pair (i, i) when ``diag``) are handled on the
chunk's diagonal view in place: softplus(-z_ii) in the forward, G_ii = -sigmoid(-z_ii) in the backward
(not sigmoid(z_ii) - 1, which loses the small values to cancellation).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vlkernels.ops.torch_utils import row_chunks


class TorchSigmoidBackend:
    """``loss_sum`` / ``grads`` of the sigmoid backend protocol (ops/sigmoid.py) in PyTorch."""

    def loss_sum(self, image, text, scale, bias, diag):
        """sum_ij softplus(-y_ij z_ij) over the block image [M, D] x text [N, D], fp32 0-d."""
        t32 = text.float()
        total = torch.zeros((), dtype=torch.float32, device=image.device)
        for sl in row_chunks(image.shape[0], text.shape[0], image.device):
            z = torch.matmul(image[sl].float(), t32.T).mul_(scale).add_(bias)
            if diag:
                z.diagonal(offset=sl.start).neg_()
            total = total + F.softplus(z).sum()
        return total

    def grads(self, image, text, scale, bias, diag, need_t=True):
        """(G @ text [M, D], G.T @ image [N, D] or None, sum G, sum G * (image @ text.T)) in fp32, with
        G = sigmoid(z) - [diag and i == j]."""
        t32 = text.float()
        a_i = torch.empty(image.shape, dtype=torch.float32, device=image.device)
        a_t = torch.zeros(t32.shape, dtype=torch.float32, device=image.device) if need_t else None
        g_sum = torch.zeros((), dtype=torch.float32, device=image.device)
        g_dot = torch.zeros((), dtype=torch.float32, device=image.device)
        for sl in row_chunks(image.shape[0], text.shape[0], image.device):
            i_blk = image[sl].float()
            dots = torch.matmul(i_blk, t32.T)
            g = torch.mul(dots, scale).add_(bias).sigmoid_()
            if diag:
                z_pos = dots.diagonal(offset=sl.start) * scale + bias
                g.diagonal(offset=sl.start).copy_(torch.sigmoid(-z_pos).neg_())
            g_sum = g_sum + g.sum()
            g_dot = g_dot + torch.dot(g.reshape(-1), dots.reshape(-1))
            a_i[sl] = torch.matmul(g, t32)
            if need_t:
                a_t.addmm_(g.T, i_blk)
        return a_i, a_t, g_sum, g_dot
