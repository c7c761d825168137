"""Symmetric InfoNCE (CLIP) loss without the B x B logits: the autograd Function shared by backends.

A backend supplies two O(B)-memory passes over tiles of S = s * I @ T.T (never storing S); both
accept rectangular blocks (I [M, D], T [N, D]), which the distributed block-row scheme uses:

- ``lse(I, T, s) -> (r, c)``: row [M] and column [N] log-sum-exps of S, fp32;
- ``accumulate(I, T, s, r, c) -> (A_I, A_T)``: with W = exp(S - r[:, None]) + exp(S - c[None, :]),
  ``A_I = W @ T`` [M, D] and ``A_T = W.T @ I`` [N, D] in fp32.

Everything else is O(B D) algebra done here once for all backends (see DESIGN.md section 2):

    loss = k / (2B) * (sum r + sum c - 2 (1 - eps) sum_i S_ii - 2 eps / B * sum_ij S_ij)
    dL/dS = k g / (2B) * (W - 2 ((1 - eps) delta_ij + eps / B))
    dI = s * U_I,  U_I = k g / (2B) * (A_I - 2 (1 - eps) T - 2 eps / B * colsum(T)),  dT likewise,
    ds = sum(I * U_I)

where k is 1 for reduction="mean" and 2 for "sum", and sum_ij S_ij = s * colsum(I) . colsum(T).
"""

from __future__ import annotations

import torch


def _diag_terms(i32: torch.Tensor, t32: torch.Tensor, eps: float) -> torch.Tensor:
    """sum_i <I_i, T_i> * (1 - eps) + eps / B * <colsum I, colsum T>, unscaled by s."""
    total = (1.0 - eps) * (i32 * t32).sum()
    if eps:
        total = total + (eps / i32.shape[0]) * torch.dot(i32.sum(0), t32.sum(0))
    return total


class ContrastiveLossFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, image, text, scale, eps: float, factor: float, backend):
        batch = image.shape[0]
        r, c = backend.lse(image, text, scale)
        i32, t32 = image.float(), text.float()
        loss = (r.sum() + c.sum() - 2.0 * scale * _diag_terms(i32, t32, eps)) * (factor / (2.0 * batch))
        ctx.save_for_backward(image, text, scale, r, c)
        ctx.eps, ctx.factor, ctx.backend = eps, factor, backend
        return loss

    @staticmethod
    def backward(ctx, grad_out):
        image, text, scale, r, c = ctx.saved_tensors
        eps, batch = ctx.eps, image.shape[0]
        need_i, need_t, need_s = ctx.needs_input_grad[:3]
        a_i, a_t = ctx.backend.accumulate(image, text, scale, r, c)
        coef = grad_out.float() * (ctx.factor / (2.0 * batch))
        i32, t32 = image.float(), text.float()
        u_i = a_i.sub_(t32, alpha=2.0 * (1.0 - eps))
        u_t = a_t.sub_(i32, alpha=2.0 * (1.0 - eps))
        if eps:
            u_i.sub_(t32.sum(0, keepdim=True), alpha=2.0 * eps / batch)
            u_t.sub_(i32.sum(0, keepdim=True), alpha=2.0 * eps / batch)
        u_i.mul_(coef)
        u_t.mul_(coef)
        d_scale = (i32 * u_i).sum() if need_s else None
        d_image = (u_i * scale).to(image.dtype) if need_i else None
        d_text = (u_t * scale).to(text.dtype) if need_t else None
        return d_image, d_text, d_scale, None, None, None
