"""Chunked PyTorch backend of the sigmoid loss: any device, O(B) extra memory plus a bounded workspace.

Rows of the block of logits z = s I T^T + b are processed a chunk at a time (``torch_utils.row_chunks``)
with fp32 matmuls; features in another dtype are converted a chunk at a time (``torch_utils.matmul_f32``),
never as a whole. The forward is one pass (2 M N D FLOPs). The single-process backward (``gradients``)
recomputes each chunk of z and writes the features' gradients in their dtype, as the contrastive torch
backend does:

- one pass (6 B^2 D) when an fp32 [N, D] accumulator for G.T @ I fits half the workspace budget
  (``VLKERNELS_WORKSPACE_MB``, default 256; the chunks of z take the other half);
- otherwise two passes (8 B^2 D): row chunks give the image gradient, column chunks the text gradient (the
  same maths on z.T: the loss is symmetric in images and texts, the positives on the same diagonal).

``grads`` (the ring's blocks) returns its fp32 products instead. The positives (pair (i, i) when ``diag``)
are handled on the chunk's diagonal view in place: softplus(-z_ii) in the forward, G_ii = -sigmoid(-z_ii)
in the backward (not sigmoid(z_ii) - 1, which loses the small values to cancellation).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vlkernels.ops.torch_utils import chunk_rows, f32_rows, matmul_f32, row_chunks, workspace_bytes


def _g_chunk(q32, k, scale, bias, diag: bool, row0: int, cols: int) -> tuple:
    """(G, the dot products) of a chunk of rows ``q32`` (fp32) against all of ``k``: G = sigmoid(z) with
    the positives (i, row0 + i) as -sigmoid(-z) when ``diag``."""
    dots = matmul_f32(q32, k, True, cols)
    g = torch.mul(dots, scale).add_(bias).sigmoid_()
    if diag:
        z_pos = dots.diagonal(offset=row0) * scale + bias
        g.diagonal(offset=row0).copy_(torch.sigmoid(-z_pos).neg_())
    return g, dots


def _dot_sum(g: torch.Tensor, dots: torch.Tensor) -> torch.Tensor:
    """sum_ij G_ij <I_i, T_j> over a chunk, fp32 0-d, in place on ``dots``: torch's sum adds pairwise,
    where a BLAS dot accumulates the rows x N terms in a few running sums whose rounding grows with their
    count (alike terms do not average out: at B = 41, D = 1 it left 12 ulps of d_scale, 680x naive's
    error)."""
    return dots.mul_(g).sum()


class TorchSigmoidBackend:
    """``loss_sum`` / ``grads`` / ``gradients`` of the sigmoid backend protocol (ops/sigmoid.py) in
    PyTorch."""

    def loss_sum(self, image, text, scale, bias, diag):
        """sum_ij softplus(-y_ij z_ij) over the block image [M, D] x text [N, D], fp32 0-d."""
        cols = chunk_rows(text.shape[0], text.shape[1], image.device)
        total = torch.zeros((), dtype=torch.float32, device=image.device)
        for sl in row_chunks(image.shape[0], text.shape[0], image.device):
            z = matmul_f32(f32_rows(image, sl), text, True, cols).mul_(scale).add_(bias)
            if diag:
                z.diagonal(offset=sl.start).neg_()
            total = total + F.softplus(z).sum()
        return total

    def grads(self, image, text, scale, bias, diag, need_t=True):
        """(G @ text [M, D], G.T @ image [N, D] or None, sum G, sum G * (image @ text.T)) in fp32, with
        G = sigmoid(z) - [diag and i == j]."""
        dev = image.device
        cols = chunk_rows(text.shape[0], text.shape[1], dev)
        a_i = torch.empty(image.shape, dtype=torch.float32, device=dev)
        a_t = torch.zeros(text.shape, dtype=torch.float32, device=dev) if need_t else None
        g_sum = torch.zeros((), dtype=torch.float32, device=dev)
        g_dot = torch.zeros((), dtype=torch.float32, device=dev)
        for sl in row_chunks(image.shape[0], text.shape[0], dev):
            i_blk = f32_rows(image, sl)
            g, dots = _g_chunk(i_blk, text, scale, bias, diag, sl.start, cols)
            g_sum = g_sum + g.sum()
            g_dot = g_dot + _dot_sum(g, dots)
            del dots
            a_i[sl] = matmul_f32(g, text, False, cols)
            if need_t:
                a_t.addmm_(g.T, i_blk)
        return a_i, a_t, g_sum, g_dot

    def gradients(self, image, text, scale, bias, alpha, need_t=True):
        """(alpha G @ T, alpha G.T @ I or None) of the single-process block written in the features' dtype,
        then (sum G, sum G_ij <I_i, T_j>); chunk by chunk (module docstring), no fp32 [B, D] buffer beyond
        the workspace."""
        batch, dim = image.shape
        dev = image.device
        cols = chunk_rows(batch, dim, dev)
        one_pass = need_t and 4 * text.numel() <= workspace_bytes() // 2  # the other half: z chunks
        d_image = torch.empty_like(image)
        a_t = torch.zeros(text.shape, dtype=torch.float32, device=dev) if one_pass else None
        g_sum = torch.zeros((), dtype=torch.float32, device=dev)
        g_dot = torch.zeros((), dtype=torch.float32, device=dev)
        for sl in row_chunks(batch, batch, dev):
            i_blk = f32_rows(image, sl)
            g, dots = _g_chunk(i_blk, text, scale, bias, True, sl.start, cols)
            g_sum = g_sum + g.sum()
            g_dot = g_dot + _dot_sum(g, dots)
            del dots
            if one_pass:
                a_t.addmm_(g.T, i_blk)
            d_image[sl] = matmul_f32(g, text, False, cols).mul_(alpha).to(image.dtype)
            del g
        if not need_t:
            return d_image, None, g_sum, g_dot
        d_text = torch.empty_like(text)
        for sl in row_chunks(batch, batch, dev):
            if one_pass:
                d_text[sl] = (a_t[sl] * alpha).to(text.dtype)
            else:
                g = _g_chunk(f32_rows(text, sl), image, scale, bias, True, sl.start, cols)[0]
                d_text[sl] = matmul_f32(g, image, False, cols).mul_(alpha).to(text.dtype)
                del g
        return d_image, d_text, g_sum, g_dot
