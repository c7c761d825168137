"""Chunked PyTorch backend of the soft-target loss: O(B * chunk) memory, any device.

Rows of S (and of the teacher's S') are processed a chunk at a time with fp32 matmuls; features in
another dtype are converted a chunk at a time (``torch_utils.matmul_f32``), never as a whole. Row
statistics are exact per chunk; the column statistics (LSE of S, LSE of S' and the S'-softmax weighted
sum of the dot products I_i . T_j, i.e. of S / s) are merged across chunks online, so one pass yields
all of them: 2 B^2 D FLOPs forward with the self teacher (plus 2 B^2 D' with a separate one). The
single-process backward (``gradients``) recomputes each chunk of dL/dS once and writes the image
gradient rows in the features' dtype; the text gradient comes from an fp32 [N, D] accumulator when it
fits half the workspace budget (6 B^2 D, plus 2 B^2 D'), else from a second pass over column chunks (the
same maths on S.T: 8 B^2 D, plus 4 B^2 D'), as the contrastive torch backend does.
"""

from __future__ import annotations

import torch

from vlkernels.ops.torch_utils import (
    ColumnSoft,
    chunk_rows,
    diagonal_of,
    f32_rows,
    finish_partials,
    lse_at,
    matmul_f32,
    minus_lse_,
    row_chunks,
    soft_rows,
    workspace_bytes,
)


def _diagonal(v, u, weights) -> torch.Tensor:
    """W minus the hard targets' diagonal part on the diagonal (their eps / B part is not in it):
    (e_r + e_c) v [+ (q_r + q_c) u] with ``v`` the hard targets' and ``u`` a separate teacher's soft
    diagonal factors (ops/soft_target.py: eps less the mean of the row's and the column's off-diagonal
    masses, and the mean of the teacher's masses less the student's, each kept to an ulp of itself by the
    statistics; u None for the self teacher, whose soft part is 0), ``weights`` = (e_r, e_c, q_r, q_c).
    Not the tiles' p (E_row + E_col) - q (T_row + T_col) - hard with p = e + q, nor e (E_row + E_col -
    2 (1 - eps)) + q (E_row - T_row + E_col - T_col): near one-hot E = 1 - mass and T = 1 - mass' keep an
    ulp of 1 where the exact dL/dS_ii is the masses."""
    e_r, e_c, q_r, q_c = weights
    d = (e_r + e_c).double().mul_(v)
    if u is not None:
        d.addcmul_((q_r + q_c).double(), u)
    return d.float()  # formed in float64, rounded once


def _hard_weights(h, a, coef) -> torch.Tensor:
    """coef h, fp32, for ``h`` (as ``a``) or the pair (x, y) of h = x a + y, h whole before it is scaled:
    the rows' and the columns' weights alike (bitwise the same at j = i for the same ``coef``)."""
    return (a * h[0]).add_(h[1]).mul_(coef) if isinstance(h, tuple) else h * coef


class TorchSoftTargetBackend:
    """``stats`` / ``accumulate`` of the soft-target backend protocol (ops/soft_target.py) in PyTorch."""

    lse_base2 = False  # natural log-sum-exps

    @staticmethod
    def _teacher_block(teacher, sl, cols: int):
        """S' for the rows ``sl`` of the separate teacher (I', T', s'), fp32 [rows, N]."""
        t_image, t_text, t_scale = teacher
        return matmul_f32(f32_rows(t_image, sl), t_text, True, cols).mul_(t_scale)

    def stats(self, image, text, scale, teacher=None, row0: int | None = 0):
        """(r, c, r', c', w, w', x, g, g', rest, rest_c, x', rest', rest'_c) for S = scale * image @ text.T
        (image [M, D], text [N, D]): the student's LSEs and a separate teacher's in float64 (``soft_rows``:
        the backward's weights near 1 keep an ulp of 1), the weighted sums and the soft gaps in fp32, x the
        pass's own scores S[i, row0 + i] (``diagonal_of``; None for ``row0`` None), the rows' and the
        columns' rests below their largest scores in fp32, and the same three of a separate teacher (the
        student's for the self teacher). The columns' statistics are formed per chunk of rows and
        merged online (``ColumnSoft``)."""
        rows, n, dev = image.shape[0], text.shape[0], image.device
        cols = chunk_rows(n, image.shape[1], dev)
        r = torch.empty(rows, dtype=torch.float64, device=dev)
        tr = r if teacher is None else torch.empty_like(r)
        w_row = torch.empty(rows, dtype=torch.float32, device=dev)
        g_row = torch.empty_like(w_row)
        rest = torch.empty_like(w_row)
        t_rest = None if teacher is None else torch.empty_like(w_row)
        x = None if row0 is None else torch.empty_like(w_row)
        t_x = None if row0 is None or teacher is None else torch.empty_like(w_row)
        columns = ColumnSoft(n, dev, teacher is not None)
        chunks = row_chunks(rows, n, dev)
        size = (chunks[0].stop - chunks[0].start, n) if chunks else (0, n)
        scratch = tuple(torch.empty(size, dtype=torch.float32, device=dev) for _ in range(2))
        for sl in chunks:
            d_blk = matmul_f32(f32_rows(image, sl), text, True, cols)
            s_blk = d_blk * scale
            if x is not None:
                x[sl] = diagonal_of(s_blk, row0 + sl.start)
            t_blk = None if teacher is None else self._teacher_block(teacher, sl, cols)
            if t_x is not None:
                t_x[sl] = diagonal_of(t_blk, row0 + sl.start)
            out = soft_rows(s_blk, d_blk, t_blk, scratch)
            r[sl], tr_blk, w_row[sl], g_row[sl], rest[sl], t_rest_blk = out
            if teacher is not None:
                tr[sl], t_rest[sl] = tr_blk, t_rest_blk
            del out
            columns.add(s_blk, d_blk, t_blk, scratch[0])
            del s_blk, d_blk, t_blk
        c, tc, g_col, w_col = finish_partials(*columns.partials())
        rest_col, t_rest_col = columns.rest, columns.t_rest
        del columns, scratch
        if teacher is None:
            return r, c, r, c, w_row, w_col, x, g_row, g_col, rest, rest_col, x, rest, rest_col
        return r, c, tr, tc, w_row, w_col, x, g_row, g_col, rest, rest_col, t_x, t_rest, t_rest_col

    def _grad_block(
        self, q32, k, scale, sl, lse_q, lse_k, pair, coefs, teacher, t_lse_q, t_lse_k, eps, diag, cols
    ):
        """dL/dS for the rows ``sl`` of q (q32 their fp32 copy) against all of k, fp32 [rows, N]: W minus
        the hard targets (e_i + e_j) ((1 - eps) [i == j] + eps / B), with e = coefs[0] h, q = coefs[1] a
        from ``pair`` = (h, a) and p = e + q (p = e for the self teacher: the soft terms cancel); ``teacher``
        (Q', K', s') in the same orientation or None; the LSEs, the student's ``lse_q``, ``lse_k`` and the
        teacher's ``t_lse_q``, ``t_lse_k``, packed (hi, lo) pairs (``torch_utils.pack_lse``). The column
        weights are applied in place on the exponentials; at most three [rows, N] buffers (or two and a
        [1, N] weight row) at once. The diagonal is set from the diagonal factors ``diag`` =
        (v, u) [B] each (the hard targets', a separate teacher's soft part's or None) without p
        (``_diagonal``), before the smoothing's eps / B part."""
        batch = k.shape[0]
        h, a = pair  # h: [B], or (x, y) for h = x a + y
        ce, cq = coefs[0], coefs[1]
        rows = slice(sl.start, sl.start + q32.shape[0])
        e_rows = _hard_weights(h if isinstance(h, tuple) else h[rows], a[rows], ce)
        p_rows = e_rows if teacher is None else e_rows.addcmul(a[rows], cq)  # as the column weights
        idx = torch.arange(q32.shape[0], device=q32.device)
        at = (idx, idx + rows.start)
        s_blk = matmul_f32(q32, k, True, cols).mul_(scale)
        # the LSEs as exp((S - hi) - lo) (``minus_lse_``, packed)
        g = minus_lse_(s_blk.clone(), lse_at(lse_q, rows), 0).exp_().mul_(p_rows[:, None])
        col = minus_lse_(s_blk, lse_k, 1).exp_()  # exp(S - c_j), in place
        # the column weights e_j = ce h_j and p_j = e_j (+ cq a_j with a teacher), [N] each, formed as the
        # rows' (bitwise the same at j = i: with near one-hot rows the hard targets then cancel exactly)
        e_cols = _hard_weights(h, a, ce)
        g.addcmul_(col, (e_cols if teacher is None else e_cols.addcmul_(a, cq))[None, :])
        del s_blk, col, e_cols
        if teacher is not None:
            t_blk = self._teacher_block(teacher, rows, cols)
            t_row = minus_lse_(t_blk.clone(), lse_at(t_lse_q, rows), 0)
            g.sub_(t_row.exp_().mul_((a[rows] * cq)[:, None]))
            del t_row
            g.sub_(minus_lse_(t_blk, t_lse_k, 1).exp_().mul_(a[None, :]).mul_(cq))
            del t_blk
        q_rows = a[rows] * cq
        v, u = diag
        g[at] = _diagonal(v[rows], None if u is None else u[rows], (e_rows, e_rows, q_rows, q_rows))
        if eps:
            # -(e_i + e_j) eps / B, each weight formed whole (subtracting h = x a + y as two terms, x a_j
            # then y, rounded a tiny dL/dS away where they cancel: h = 0 at alpha 1)
            g.sub_(e_rows[:, None] * (eps / batch)).sub_(_hard_weights(h, a, ce * (eps / batch))[None, :])
        return g

    def gradients(
        self,
        image,
        text,
        scale,
        r,
        c,
        hard_w,
        soft_w,
        coefs,
        eps,
        diag,
        teacher=None,
        tr=None,
        tc=None,
        need_t=True,
    ):
        """(dI, dT or None, ds) of the single-process loss (ops/soft_target.py) in the features' dtype,
        chunk by chunk (module docstring); ``hard_w``: h [B] or (x, y) for h = x a + y; ``soft_w`` a [B]
        of any real dtype (the single-process Function's uint8 mask, possibly one 1 expanded), used as it is
        (no fp32 [B] copy); ``diag`` = (v, u) the diagonal factors; the LSEs packed
        (``torch_utils.pack_lse``)."""
        batch, dim = image.shape
        dev = image.device
        scale = scale.detach().float()
        coefs = coefs.float()
        pair = (hard_w if isinstance(hard_w, tuple) else hard_w.float(), soft_w)
        one_pass = need_t and 4 * text.numel() <= workspace_bytes() // 2  # the other half: chunks of S
        cols = chunk_rows(batch, dim, dev)
        d_image = torch.empty_like(image)
        ds = torch.zeros((), dtype=torch.float32, device=dev)
        a_t = torch.zeros(text.shape, dtype=torch.float32, device=dev) if one_pass else None
        for sl in row_chunks(batch, batch, dev):
            i_blk = f32_rows(image, sl)
            g = self._grad_block(i_blk, text, scale, sl, r, c, pair, coefs, teacher, tr, tc, eps, diag, cols)
            if one_pass:
                a_t.addmm_(g.T, i_blk)
            u = matmul_f32(g, text, False, cols)
            del g
            ds += torch.linalg.vecdot(i_blk, u).sum()
            d_image[sl] = u.mul_(scale).to(image.dtype)
        if not need_t:
            return d_image, None, ds
        d_text = torch.empty_like(text)
        swapped = None if teacher is None else (teacher[1], teacher[0], teacher[2])
        for sl in row_chunks(batch, batch, dev):
            if one_pass:
                u = a_t[sl]
            else:
                t_blk = f32_rows(text, sl)
                args = (scale, sl, c, r, pair, coefs, swapped, tc, tr, eps, diag, cols)
                g = self._grad_block(t_blk, image, *args)
                u = matmul_f32(g, image, False, cols)
                del g
            d_text[sl] = u.mul_(scale).to(text.dtype)
        return d_image, d_text, ds

    def accumulate(
        self, image, text, scale, r, c, e_row, e_col, q_row, q_col, teacher=None, tr=None, tc=None, diag=None
    ):
        """W @ text [M, D] and W.T @ image [N, D] in fp32 (W: see ops/soft_target.py); with ``diag`` =
        (row0, v, u), W's diagonal where row0 + i == j set to (e_i + e_j) v_i [+ (q_i + q_j) u_i with a
        teacher] before the products (``_diagonal``)."""
        dev = image.device
        cols = chunk_rows(text.shape[0], image.shape[1], dev)
        a_i = torch.empty(image.shape, dtype=torch.float32, device=dev)
        a_t = torch.zeros(text.shape, dtype=torch.float32, device=dev)
        # off the diagonal with a teacher: W = p_i E_row + p_j E_col - q_i T_row - q_j T_col, p = e + q
        p_row, p_col = (e_row, e_col) if teacher is None else (e_row + q_row, e_col + q_col)
        for sl in row_chunks(image.shape[0], text.shape[0], dev):
            i_blk = f32_rows(image, sl)
            s_blk = matmul_f32(i_blk, text, True, cols).mul_(scale)
            w = minus_lse_(s_blk.clone(), r[sl], 0).exp_().mul_(p_row[sl, None])
            if teacher is not None:
                t_blk = self._teacher_block(teacher, sl, cols)
                w.sub_(minus_lse_(t_blk.clone(), lse_at(tr, sl), 0).exp_().mul_(q_row[sl, None]))
                w.sub_(minus_lse_(t_blk, tc, 1).exp_().mul_(q_col[None, :]))
            w.add_(minus_lse_(s_blk, c, 1).exp_().mul_(p_col[None, :]))
            if diag is not None:
                row0, v, u = diag
                idx = torch.arange(i_blk.shape[0], device=dev)
                at = (idx, idx + row0 + sl.start)
                j = at[1]
                weights = (e_row[sl], e_col[j], q_row[sl], q_col[j])
                w[at] = _diagonal(v[sl], None if u is None else u[sl], weights)
            a_i[sl] = matmul_f32(w, text, False, cols)
            a_t.addmm_(w.T, i_blk)
        return a_i, a_t
