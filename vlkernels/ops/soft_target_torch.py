"""Chunked PyTorch backend of the soft-target loss: O(B * chunk) memory, any device.

Rows of S (and of the teacher's S') are processed a chunk at a time with torch.matmul in fp32. Row
statistics are exact per chunk; the column statistics (LSE of S, LSE of S' and the S'-softmax weighted
sum of the dot products I_i . T_j, i.e. of S / s) are merged across chunks online, so one pass yields
all of them: 2 B^2 D FLOPs forward with the self teacher (plus 2 B^2 D' with a separate one); the
backward recomputes each chunk once and does the two products (6 B^2 D, plus 2 B^2 D').
"""

from __future__ import annotations

import torch

from vlkernels.ops.torch_utils import row_chunks


def _softmax_stats(x: torch.Tensor, y: torch.Tensor, dim: int):
    """(logsumexp(x), sum softmax(x) * y) along ``dim``, sharing the one exp of x."""
    m = x.amax(dim=dim, keepdim=True)
    e = torch.exp(x - m)
    den = e.sum(dim)
    return torch.log(den) + m.squeeze(dim), (e.mul_(y)).sum(dim) / den


class TorchSoftTargetBackend:
    """``stats`` / ``accumulate`` of the soft-target backend protocol (ops/soft_target.py) in PyTorch."""

    @staticmethod
    def _teacher_block(teacher, t32, sl, s_blk):
        if teacher is None:
            return s_blk
        t_image, _, t_scale = teacher
        return torch.matmul(t_image[sl].float(), t32.T).mul_(t_scale)

    def stats(self, image, text, scale, teacher=None):
        """(r, c, r', c', w, w') for S = scale * image @ text.T (image [M, D], text [N, D]), fp32."""
        rows, cols, dev = image.shape[0], text.shape[0], image.device
        t32 = text.float()
        tt32 = None if teacher is None else teacher[1].float()
        r = torch.empty(rows, dtype=torch.float32, device=dev)
        tr = r if teacher is None else torch.empty_like(r)
        w_row = torch.empty_like(r)
        c = torch.full((cols,), float("-inf"), dtype=torch.float32, device=dev)
        tc = c if teacher is None else c.clone()
        w_col = torch.zeros_like(c)
        for sl in row_chunks(rows, cols, dev):
            d_blk = torch.matmul(image[sl].float(), t32.T)
            s_blk = d_blk * scale
            t_blk = self._teacher_block(teacher, tt32, sl, s_blk)
            if teacher is None:
                r[sl], w_row[sl] = _softmax_stats(s_blk, d_blk, 1)
                c_blk, wc_blk = _softmax_stats(s_blk, d_blk, 0)
                c_new = torch.logaddexp(c, c_blk)
            else:
                r[sl] = torch.logsumexp(s_blk, dim=1)
                tr[sl], w_row[sl] = _softmax_stats(t_blk, d_blk, 1)
                c = torch.logaddexp(c, torch.logsumexp(s_blk, dim=0))
                c_blk, wc_blk = _softmax_stats(t_blk, d_blk, 0)
                c_new = torch.logaddexp(tc, c_blk)
            # Online merge of the column weighted sums: rescale both parts to the merged teacher LSE.
            w_col = w_col * torch.exp(tc - c_new) + wc_blk * torch.exp(c_blk - c_new)
            if teacher is None:
                c = tc = c_new
            else:
                tc = c_new
        return r, c, tr, tc, w_row, w_col

    def accumulate(
        self, image, text, scale, r, c, p_row, p_col, q_row, q_col, teacher=None, tr=None, tc=None
    ):
        """W @ text [M, D] and W.T @ image [N, D] in fp32 (W: see ops/soft_target.py)."""
        t32 = text.float()
        tt32 = None if teacher is None else teacher[1].float()
        a_i = torch.empty(image.shape, dtype=torch.float32, device=image.device)
        a_t = torch.zeros(t32.shape, dtype=torch.float32, device=image.device)
        if teacher is None:
            # S' = S: the two soft-target terms fold into the softmax terms.
            p_row, p_col = p_row - q_row, p_col - q_col
        for sl in row_chunks(image.shape[0], text.shape[0], image.device):
            i_blk = image[sl].float()
            s_blk = torch.matmul(i_blk, t32.T).mul_(scale)
            w = torch.exp(s_blk - r[sl, None]).mul_(p_row[sl, None])
            if teacher is not None:
                t_blk = self._teacher_block(teacher, tt32, sl, None)
                w.sub_(torch.exp(t_blk - tr[sl, None]).mul_(q_row[sl, None]))
                w.sub_(t_blk.sub_(tc[None, :]).exp_().mul_(q_col[None, :]))
            w.add_(s_blk.sub_(c[None, :]).exp_().mul_(p_col[None, :]))
            a_i[sl] = torch.matmul(w, t32)
            a_t.addmm_(w.T, i_blk)
        return a_i, a_t
