"""Soft-target (PSD) loss without the B x B logits: the autograd Function shared by backends.

S = s * I @ T.T is the student's logits; the teacher's S' is S itself (treated as a constant) or
s' * I' @ T'.T from a separate teacher (I', T' may have another width D'). Pair weights ``h`` (hard
target) and ``a`` (soft target) are [B] fp32 vectors; the Function returns two 0-d losses

    hard = k / (2B) * sum_i h_i [(r_i - H_i) + (c_i - H'_i)]
    soft = k / (2B) * sum_i a_i [(r_i - w_i) + (c_i - w'_i)]

with r, c the row/column LSEs of S, w_i = sum_j softmax_j(S'_i.) S_ij (w' the same over columns) and
H_i = (1 - eps) S_ii + eps / B * sum_j S_ij (H' over columns). soft_target_loss uses h = 1 - a
(their sum is the mean soft cross-entropy); DistillClipLoss uses h = a = 1 and returns both.

A backend supplies two O(B)-memory passes over tiles of S and S' (both accept rectangular blocks,
I [M, D], T [N, D], row stats [M], column stats [N]); ``teacher`` is None for the self teacher, else
``(I', T', s')``:

- ``stats(I, T, s, teacher) -> (r, c, r', c', w, w')``, fp32; r' is r (c' is c) for the self teacher;
- ``accumulate(I, T, s, r, c, p_row, p_col, q_row, q_col, teacher, r', c') -> (A_I, A_T)``: with
  W = p_i exp(S - r_i) + p_j exp(S - c_j) - q_i exp(S' - r'_i) - q_j exp(S' - c'_j),
  A_I = W @ T [M, D] and A_T = W.T @ I [N, D] in fp32.

The hard-target part of the gradient is O(B D) algebra done here (with grad outputs g_h, g_s and
coef = k / (2B); p = coef (g_h h + g_s a), q = coef g_s a, e = coef g_h h):

    dL/dS_ij = W_ij - (e_i + e_j) ((1 - eps) delta_ij + eps / B)
    U_I = A_I - 2 (1 - eps) e * T - eps / B (e colsum(T) + sum_j e_j T_j),  U_T likewise,
    dI = s U_I,  dT = s U_T,  ds = sum(I * U_I).

Nothing flows to the teacher, the weights or alpha.
"""

from __future__ import annotations

import torch


def _hard_terms(i32: torch.Tensor, t32: torch.Tensor, scale: torch.Tensor, eps: float):
    """(H, H') [B]: the label-smoothed target logits of each row and each column of S."""
    diag = (i32 * t32).sum(1)
    if not eps:
        h = diag * scale
        return h, h
    batch = i32.shape[0]
    h_row = (1.0 - eps) * diag + (eps / batch) * (i32 @ t32.sum(0))
    h_col = (1.0 - eps) * diag + (eps / batch) * (t32 @ i32.sum(0))
    return h_row * scale, h_col * scale


def _smoothing_terms(u: torch.Tensor, e: torch.Tensor, x: torch.Tensor, eps: float) -> None:
    """u -= eps / B * (e colsum(x) + sum_j e_j x_j): the label-smoothing part of the hard targets."""
    x32 = x.float()
    u.addr_(e, x32.sum(0), alpha=-eps / x.shape[0]).sub_((e @ x32)[None], alpha=eps / x.shape[0])


class SoftTargetFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, image, text, scale, hard_w, soft_w, t_image, t_text, t_scale, eps, factor, backend):
        batch = image.shape[0]
        teacher = None if t_image is None else (t_image, t_text, t_scale)
        r, c, tr, tc, w_row, w_col = backend.stats(image, text, scale, teacher)
        h_row, h_col = _hard_terms(image.float(), text.float(), scale, eps)
        coef = factor / (2.0 * batch)
        hard = (torch.dot(hard_w, r - h_row) + torch.dot(hard_w, c - h_col)) * coef
        soft = (torch.dot(soft_w, r - w_row) + torch.dot(soft_w, c - w_col)) * coef
        if teacher is None:
            tr = tc = None
        ctx.save_for_backward(image, text, scale, r, c, hard_w, soft_w, t_image, t_text, t_scale, tr, tc)
        ctx.eps, ctx.factor, ctx.backend = eps, factor, backend
        return hard, soft

    @staticmethod
    def backward(ctx, g_hard, g_soft):
        image, text, scale, r, c, hard_w, soft_w, t_image, t_text, t_scale, tr, tc = ctx.saved_tensors
        eps, batch = ctx.eps, image.shape[0]
        need_i, need_t, need_s = ctx.needs_input_grad[:3]
        coef = ctx.factor / (2.0 * batch)
        e = hard_w * (g_hard.float() * coef)
        q = soft_w * (g_soft.float() * coef)
        p = e + q
        teacher = None if t_image is None else (t_image, t_text, t_scale)
        a_i, a_t = ctx.backend.accumulate(image, text, scale, r, c, p, p, q, q, teacher, tr, tc)
        # In place on the fp32 accumulators, no [B, D] temporaries (the features in their own dtype).
        e_col = e[:, None]
        u_i = a_i.addcmul_(e_col, text, value=-2.0 * (1.0 - eps))
        u_t = a_t.addcmul_(e_col, image, value=-2.0 * (1.0 - eps))
        if eps:
            _smoothing_terms(u_i, e, text, eps)
            _smoothing_terms(u_t, e, image, eps)
        d_scale = torch.linalg.vecdot(image.float(), u_i).sum() if need_s else None
        d_image = u_i.mul_(scale).to(image.dtype) if need_i else None
        d_text = u_t.mul_(scale).to(text.dtype) if need_t else None
        return d_image, d_text, d_scale, None, None, None, None, None, None, None, None
