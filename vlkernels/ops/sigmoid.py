"""Sigmoid (SigLIP) loss without the B x B logits: the autograd Functions shared by backends.

With z = s I T^T + b (s = logit_scale, already exponentiated; b = logit_bias) and labels y = 2 eye - 1:

    loss = (1/B) sum_ij softplus(-y_ij z_ij)
    G = sigmoid(z) - eye,  dI = s G T / B,  dT = s G^T I / B,  ds = sum G_ij <I_i, T_j> / B,  db = sum G / B

(times the upstream gradient; docs/design.md, "Sigmoid (SigLIP) loss"). Every tile of S is independent (no
normalisation across a row or a column), so a backend (``SigmoidBackend``) needs two passes over
rectangular blocks I [M, D] x T [N, D], ``diag`` saying whether pair (i, i) of the block is a positive:

- ``loss_sum(I, T, s, b, diag)``: sum_ij softplus(-y_ij z_ij), a 0-d fp32 tensor;
- ``grads(I, T, s, b, diag, need_t)``: (G @ T [M, D], G.T @ I [N, D] or None, sum G, sum G_ij <I_i, T_j>),
  fp32, without the factor s (no division by s anywhere: s = 0 is allowed);
- optionally ``gradients(I, T, s, b, alpha, need_t)``: the single-process block (diag) with the features'
  gradients alpha G @ T and alpha G.T @ I written in their dtype (alpha a device scalar: no fp32 [B, D]
  copies), then (sum G, sum G_ij <I_i, T_j>).

``RingSigmoidFunction`` is the loss of a batch split across the ranks of a process group: the text blocks
travel round a ring (P2P, the next block's transfer overlapping the current block's tiles); the backward
sends them round again, each followed by its accumulated gradient partial, which ends at its owner. No
rank ever holds more than three text blocks: O(b D) per rank whatever the world size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import torch
import torch.distributed as dist

from vlkernels import _dist
from vlkernels.ops.torch_utils import exact, first_order_only


class SigmoidBackend(Protocol):
    def loss_sum(
        self, image: torch.Tensor, text: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor, diag: bool
    ) -> torch.Tensor: ...

    def grads(
        self,
        image: torch.Tensor,
        text: torch.Tensor,
        scale: torch.Tensor,
        bias: torch.Tensor,
        diag: bool,
        need_t: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor]: ...


@dataclass(frozen=True)
class SigmoidParams:
    """The non-tensor settings of one call: the backend and, for the ring Function, the process group
    and whether each rank returns open_clip's per-rank loss (``per_rank``: its b images against all B
    texts, divided by b) or the full-batch loss (``gather=True``)."""

    backend: SigmoidBackend
    group: Any = None
    per_rank: bool = False


def _none_unless(flag: bool, value):
    return value if flag else None


class SigmoidLossFunction(torch.autograd.Function):
    """The single-process sigmoid loss: one pass over S forward, one recomputation backward."""

    @staticmethod
    @exact
    def forward(ctx, image, text, scale, bias, params: SigmoidParams):
        loss = params.backend.loss_sum(image, text, scale, bias, True) / image.shape[0]
        ctx.save_for_backward(image, text, scale, bias)
        ctx.params = params
        return loss

    @staticmethod
    @first_order_only
    @exact
    def backward(ctx, grad_out):
        image, text, scale, bias = ctx.saved_tensors
        need_i, need_t, need_s, need_b = ctx.needs_input_grad[:4]
        backend = ctx.params.backend
        coef = grad_out.float() / image.shape[0]
        feat = coef * scale
        if hasattr(backend, "gradients"):  # the features' gradients written in their dtype, no fp32 [B, D]
            d_image, d_text, g_sum, g_dot = backend.gradients(image, text, scale, bias, feat, need_t)
        else:
            a_i, a_t, g_sum, g_dot = backend.grads(image, text, scale, bias, True, need_t)
            d_image = (a_i * feat).to(image.dtype)
            d_text = None if a_t is None else (a_t * feat).to(text.dtype)
            del a_i, a_t
        d_image = _none_unless(need_i, d_image)
        d_text = _none_unless(need_t, d_text)
        return d_image, d_text, _none_unless(need_s, coef * g_dot), _none_unless(need_b, coef * g_sum), None


def _wait(works) -> None:
    for work in works or ():
        work.wait()


class RingSigmoidFunction(torch.autograd.Function):
    """The sigmoid loss over the ranks of ``params.group``; each rank passes its local [b, D] pairs.

    ``per_rank``: rank r returns L_r = (1/b) sum over its images i and all B texts j (open_clip's
    SigLipLoss with world_size > 1); its images and the scalars get g_r dL_r, its texts sum_r' g_r' dL_r'
    (every rank's loss reaches every text, as open_clip's neighbour exchange with autograd gives them).
    Else every rank returns the full-batch loss L = (1/n) sum_r L_r, its features get (sum_r' g_r') dL/df_r
    and the scalars g_r dL/ds (``contrastive_loss(gather=True)``'s contract: after DDP's gradient averaging
    every parameter gradient is the single-process full-batch gradient).

    Ring: at step k rank r scores its images against the texts of rank r - k while the texts of rank
    r - k - 1 arrive from its left neighbour. Backward: the same walk; the gradient partial of the block of
    rank r - k (already scaled by this rank's coefficient) is added to the accumulator received from the
    left and sent right, so that after n - 1 hops each accumulator reaches its owner complete.
    """

    @staticmethod
    @exact
    def forward(ctx, image, text, scale, bias, params: SigmoidParams):
        group, backend = params.group, params.backend
        size = dist.get_world_size(group)
        cur, nxt, pending = text.contiguous(), None, None
        if size > 1:
            nxt = torch.empty_like(cur)
            pending = _dist.ring_shift(cur, nxt, group, tag=_dist.RING_TAG_BLOCK)
        total = backend.loss_sum(image, cur, scale, bias, True)
        for step in range(1, size):
            _wait(pending)
            cur, pending = nxt, None
            if step + 1 < size:
                # The next hop starts before this block is scored: the transfer overlaps the tiles.
                nxt = torch.empty_like(cur)
                pending = _dist.ring_shift(cur, nxt, group, tag=_dist.RING_TAG_BLOCK)
            total = total + backend.loss_sum(image, cur, scale, bias, False)
        if params.per_rank:
            loss = total / image.shape[0]
        else:
            dist.all_reduce(total, group=group)
            loss = total / (size * image.shape[0])
        ctx.save_for_backward(image, text, scale, bias)
        ctx.params = params
        return loss

    @staticmethod
    @first_order_only
    @exact
    def backward(ctx, grad_out):
        image, text, scale, bias = ctx.saved_tensors
        p = ctx.params
        group, backend = p.group, p.backend
        size = dist.get_world_size(group)
        need_i, need_t, need_s, need_b = ctx.needs_input_grad[:4]
        b = image.shape[0]
        g = grad_out.float().reshape(())
        if p.per_rank:
            coef = g / b
        else:
            g_all = g.clone()
            dist.all_reduce(g_all, group=group)
            coef = g_all / (size * b)
        feat = coef * scale

        cur, nxt, pending_block = text.contiguous(), None, None
        if size > 1:
            nxt = torch.empty_like(cur)
            pending_block = _dist.ring_shift(cur, nxt, group, tag=_dist.RING_TAG_BLOCK)
        a_i, own_t, g_sum, g_dot = backend.grads(image, cur, scale, bias, True)
        pending_acc, acc_in, acc_out = None, None, None
        for step in range(1, size):
            _wait(pending_block)
            cur, pending_block = nxt, None
            if step + 1 < size:
                nxt = torch.empty_like(cur)
                pending_block = _dist.ring_shift(cur, nxt, group, tag=_dist.RING_TAG_BLOCK)
            blk_i, blk_t, blk_sum, blk_dot = backend.grads(image, cur, scale, bias, False)
            a_i.add_(blk_i)
            g_sum, g_dot = g_sum + blk_sum, g_dot + blk_dot
            # This rank's share of the gradient of rank (r - step)'s texts, plus the ranks' before it.
            blk_t.mul_(feat)
            if pending_acc is not None:
                _wait(pending_acc)
                blk_t.add_(acc_in)
            # acc_out stays referenced until its send is waited on.
            acc_out, acc_in = blk_t, torch.empty_like(blk_t)
            pending_acc = _dist.ring_shift(acc_out, acc_in, group, tag=_dist.RING_TAG_GRAD)
        d_text = own_t.mul_(feat)
        if pending_acc is not None:
            _wait(pending_acc)
            d_text.add_(acc_in)  # the gradient partials of every other rank, complete
        if p.per_rank:
            d_scale, d_bias = coef * g_dot, coef * g_sum
        else:
            red = torch.stack([g_dot, g_sum])
            dist.all_reduce(red, group=group)
            scalar = g / (size * b)
            d_scale, d_bias = scalar * red[0], scalar * red[1]
        return (
            _none_unless(need_i, (a_i * feat).to(image.dtype)),
            _none_unless(need_t, d_text.to(text.dtype)),
            _none_unless(need_s, d_scale),
            _none_unless(need_b, d_bias),
            None,
        )
