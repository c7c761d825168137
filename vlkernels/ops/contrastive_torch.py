"""Chunked PyTorch backend of the contrastive loss: any device, O(B) extra memory plus a bounded workspace.

Rows of S are processed a chunk at a time (``torch_utils.chunk_rows``: a fixed element budget per fp32
chunk of S) with fp32 matmuls; features in another dtype are converted a chunk at a time
(``torch_utils.matmul_f32``), never as a whole. The forward is one pass over S: row LSEs per chunk, column
LSEs merged across chunks (``torch_utils.ColumnLSE``; 2 B^2 D FLOPs). The backward recomputes S:

- one pass (6 B^2 D) when an fp32 [N, D] accumulator for W.T @ I fits half the workspace budget
  (``VLKERNELS_WORKSPACE_MB``, default 256; the chunks of S take the other half): each row chunk's image
  gradient rows are finished at once, the text gradient after the last chunk;
- otherwise two passes (8 B^2 D): row chunks give the image gradient, column chunks (the same maths on
  S.T) the text gradient; the extra memory is then the chunk of S and its D-wide products only.

Gradients are assembled per chunk (``ops.contrastive.finish_rows``) and written in the features' dtype;
the diagonal of each chunk of G is set before its products (``_set_diagonal``: the forward's
2 eps - (1 - P_ii) - (1 - Q_ii)), as the Triton kernels fold it into G.
"""

from __future__ import annotations

import torch

from vlkernels.ops.contrastive import finish_rows
from vlkernels.ops.torch_utils import (
    ColumnLSE,
    chunk_rows,
    diagonal_of,
    f32_rows,
    matmul_f32,
    minus_lse_,
    row_chunks,
    row_lse,
    workspace_bytes,
)


def _weights(q32, k, scale, lse_q, lse_k, cols: int) -> torch.Tensor:
    """W = exp(S - lse_q[:, None]) + exp(S - lse_k[None, :]) for S = scale * q32 @ k.T, in fp32, from the
    float64 LSEs as exp((S - hi) - lo) (``torch_utils.minus_lse_``)."""
    s_blk = matmul_f32(q32, k, True, cols).mul_(scale)
    w = minus_lse_(s_blk.clone(), lse_q, 0).exp_()
    return w.add_(minus_lse_(s_blk, lse_k, 1).exp_())


def _set_diagonal(w: torch.Tensor, col0: int, diag: torch.Tensor) -> torch.Tensor:
    """In place: W[i, col0 + i] = diag[i], G's diagonal W_ii - 2 (1 - eps) = 2 eps - (1 - P_ii) - (1 - Q_ii)
    as the forward formed it from the off-diagonal masses (``ops.contrastive``), before the products:
    near one-hot W_ii - 2 (1 - eps) formed from W_ii keeps an ulp of 2, the whole of the exact value (and
    after a GEMM, 2 T_i plus terms below its ulp rounds to 2 T_i)."""
    own = w.diagonal(offset=col0)
    own.copy_(diag[: own.shape[0]])
    return w


class TorchBackend:
    """The contrastive backend protocol (ops/contrastive.py) in PyTorch."""

    lse_base2 = False  # natural log-sum-exps

    def lse(self, image, text, scale, row0: int = 0):
        """Row LSEs [M] and column LSEs [N] of S = scale * image @ text.T (image [M, D], text [N, D]), in
        float64: max + log(sum exp(S - max)) formed in float64 from the fp32 max and sum (``row_lse``; the
        columns' merged across chunks as (reference, sum) pairs, ``ColumnLSE``), so that the backward's
        weights near 1 keep an ulp of 1 (``_weights``); the pass's own diagonal scores S[i, row0 + i]
        [M] fp32 (``diagonal_of``); and the rows' and columns' off-diagonal masses 1 - P_ii [M] and
        1 - Q_jj [N] in fp32, each to an ulp of itself (``row_lse``)."""
        dev = image.device
        r = torch.empty(image.shape[0], dtype=torch.float64, device=dev)
        x = torch.empty(image.shape[0], dtype=torch.float32, device=dev)
        mass_r = torch.empty_like(x)
        columns = ColumnLSE(text.shape[0], dev)
        cols = chunk_rows(text.shape[0], image.shape[1], dev)
        for sl in row_chunks(image.shape[0], text.shape[0], dev):
            s_blk = matmul_f32(f32_rows(image, sl), text, True, cols).mul_(scale)
            r[sl], mass_r[sl] = row_lse(s_blk, row0 + sl.start)
            x[sl] = diagonal_of(s_blk, row0 + sl.start)
            columns.add(s_blk, row0 + sl.start)
        c, mass_c = columns.lse()
        return r, c, x, mass_r, mass_c

    def accumulate(self, image, text, scale, r, c, targets=None):
        """W @ text [M, D] and W.T @ image [N, D] in fp32, W = exp(S - r[:, None]) + exp(S - c[None, :]),
        with ``targets`` = (row0, eps, diag) minus 2 ((1 - eps) [row0 + i == j] + eps / N) before the
        products, the diagonal's W_ii - 2 (1 - eps) being diag [M] (``_set_diagonal``)."""
        a_i = torch.empty(image.shape, dtype=torch.float32, device=image.device)
        a_t = torch.zeros(text.shape, dtype=torch.float32, device=image.device)
        cols = chunk_rows(text.shape[0], image.shape[1], image.device)
        for sl in row_chunks(image.shape[0], text.shape[0], image.device):
            i_blk = f32_rows(image, sl)
            w = _weights(i_blk, text, scale, r[sl], c, cols)
            if targets is not None:
                row0, eps, diag = targets
                _set_diagonal(w, row0 + sl.start, diag[sl])
                if eps:
                    w.sub_(2.0 * eps / text.shape[0])
            a_i[sl] = matmul_f32(w, text, False, cols)
            a_t.addmm_(w.T, i_blk)
        return a_i, a_t

    def gradients(self, image, text, scale, r, c, coef, eps: float, diag, need_t: bool = True):
        """(dI, dT or None, ds) of the single-process loss, chunk by chunk (see the module docstring);
        ``diag`` [B]: G's diagonal W_ii - 2 (1 - eps) (``_set_diagonal``)."""
        batch, dim = image.shape
        dev = image.device
        colsum_i, colsum_t = image.sum(0, dtype=torch.float32), text.sum(0, dtype=torch.float32)
        one_pass = need_t and 4 * text.numel() <= workspace_bytes() // 2  # the other half: S chunks
        d_image = torch.empty_like(image)
        d_scale = torch.zeros((), dtype=torch.float32, device=dev)
        a_t = torch.zeros(text.shape, dtype=torch.float32, device=dev) if one_pass else None
        cols = chunk_rows(batch, dim, dev)
        for sl in row_chunks(batch, batch, dev):
            i_blk = f32_rows(image, sl)
            w = _set_diagonal(_weights(i_blk, text, scale, r[sl], c, cols), sl.start, diag[sl])
            if one_pass:
                a_t.addmm_(w.T, i_blk)
            acc = matmul_f32(w, text, False, cols)
            del w
            d_image[sl], ds = finish_rows(
                acc, i_blk, None, colsum_t, eps, batch, coef, scale, image.dtype, True
            )
            d_scale += ds
        if not need_t:
            return d_image, None, d_scale
        d_text = torch.empty_like(text)
        for sl in row_chunks(batch, batch, dev):
            if one_pass:
                acc = a_t[sl]
            else:
                w = _weights(f32_rows(text, sl), image, scale, c[sl], r, cols)
                w = _set_diagonal(w, sl.start, diag[sl])
                acc = matmul_f32(w, image, False, cols)
                del w
            d_text[sl], _ = finish_rows(acc, None, None, colsum_i, eps, batch, coef, scale, text.dtype, False)
        return d_image, d_text, d_scale
