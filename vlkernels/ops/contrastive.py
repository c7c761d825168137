"""Symmetric InfoNCE (CLIP) loss without the B x B logits: the autograd Functions shared by backends.

A backend (``ContrastiveBackend``) supplies two O(B)-memory passes over tiles of S = s * I @ T.T (never
storing S); both accept rectangular blocks (I [M, D], T [N, D]), which the distributed block-row scheme
uses:

- ``lse(I, T, s, row0=0) -> (r, c, x, mass_r, mass_c)``: row [M] and column [N] log-sum-exps of S,
  float64 (two-part LSEs: the backends split them into fp32 hi + lo and take exp((S - hi) - lo), so that a
  weight near 1 keeps an ulp of 1; an fp32 LSE would cost it an ulp of |S|), natural or, where the
  backend's ``lse_base2`` is True, in base 2 (of S log2(e)): the units its kernels' exponents use, so that
  the backward subtracts the forward's own values (``lse_nats`` converts for the loss); x [M] fp32, the
  pass's own scores S[i, row0 + i] in the same units; and the off-diagonal masses 1 - P_ii [M] and
  1 - Q_jj [N] in fp32 (of these rows' column sums only: a block-row's partials, which the gathered
  Function merges), each to an ulp of itself: the backends sum the off-diagonal terms apart, so that near
  one-hot the loss's -log P_ii and G's diagonal keep their tiny exact values (``diagonal_loss_terms``,
  ``target_diagonal``; docs/design.md, "Off-diagonal masses");
- ``accumulate(I, T, s, r, c, targets=None) -> (A_I, A_T)``: with W = exp(S - r[:, None]) +
  exp(S - c[None, :]) (r, c as ``lse`` returned them), ``A_I = W @ T`` [M, D] and ``A_T = W.T @ I``
  [N, D] in fp32; with ``targets`` = (row0, eps, diag), W minus 2 ((1 - eps) [row0 + i == j] + eps / N)
  before the products, the diagonal's W_ii - 2 (1 - eps) being diag [M] (the forward's
  ``target_diagonal``) (the gathered Function's U_I and its rank's share of U_T: subtracted after the
  GEMMs, the targets would leave near one-hot rows no gradient);
- ``gradients(I, T, s, r, c, coef, eps, diag, need_t) -> (dI, dT, ds)``: the single-process gradients,
  in the features' dtype, G's diagonal ``diag`` [B], assembled by ``finish_rows`` (the torch backend does
  it chunk by chunk, without fp32 copies of the features).

Everything else is O(B D) algebra, one copy here for the single-process Function and the gathered one
(docs/design.md, "Contrastive loss"):

    loss = k / (2B) * (sum_i -log P_ii + sum_i -log Q_ii + 2 eps (sum_i S_ii - 1 / B * sum_ij S_ij))
    dL/dS = k g / (2B) * (W - 2 ((1 - eps) delta_ij + eps / B)),  its diagonal 2 eps - mass_r - mass_c
    dI = s * U_I,  U_I = k g / (2B) * (A_I - 2 (1 - eps) T - 2 eps / B * colsum(T)),  dT likewise,
    ds = sum(I * U_I)

where k is 1 for reduction="mean" and 2 for "sum", and sum_ij S_ij = s * colsum(I) . colsum(T).

``GatheredContrastiveFunction`` is the same loss over a batch split across the ranks of a process group
(block-row scheme: the texts are all-gathered, each rank scores its block-row, the column LSEs are
merged with ``_dist.merge_columns`` and the text gradients reduce-scattered to their owners).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import torch
import torch.distributed as dist

from vlkernels import _dist
from vlkernels.ops.torch_utils import (
    diagonal_loss_terms,
    exact,
    f32_rows,
    first_order_only,
    lse_nats,
    row_chunks,
)


class ContrastiveBackend(Protocol):
    lse_base2: bool

    def lse(
        self, image: torch.Tensor, text: torch.Tensor, scale: torch.Tensor, row0: int = 0
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]: ...

    def accumulate(
        self,
        image: torch.Tensor,
        text: torch.Tensor,
        scale: torch.Tensor,
        r: torch.Tensor,
        c: torch.Tensor,
        targets: tuple[int, float] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]: ...

    def gradients(self, image, text, scale, r, c, coef, eps: float, need_t: bool = True): ...


@dataclass(frozen=True)
class ContrastiveParams:
    """The non-tensor settings of one call: label smoothing ``eps``, reduction ``factor`` (k above), the
    backend, and for the gathered Function the process group and open_clip's ``gather_with_grad``."""

    eps: float
    factor: float
    backend: ContrastiveBackend
    group: Any = None
    with_grad: bool = True


def target_diagonal(mass_r, mass_c, eps: float) -> torch.Tensor:
    """G's diagonal W_ii - 2 (1 - eps) = 2 eps - (1 - P_ii) - (1 - Q_ii) in fp32 from the rows' and
    columns' off-diagonal masses (``ContrastiveBackend.lse``), which the backward sets before its products:
    formed from W_ii it would keep an ulp of 2, near one-hot the whole of its exact value."""
    return (2.0 * eps - mass_r.double() - mass_c.double()).float()


def loss_sum(terms, x, nats: float, scale, eps: float, batch: int, colsum_i, colsum_t) -> torch.Tensor:
    """sum r + sum c - 2 (1 - eps) sum_i S_ii - 2 eps / B sum_ij S_ij over these rows and columns, float64:
    ``terms``, the rows' and the columns' -log P_ii (``torch_utils.diagonal_loss_terms``, natural logs:
    near one-hot each keeps an ulp of its tiny value), summed; the smoothing part as 2 eps (sum x -
    s / B colsum_i . colsum_t) (x the pass's own diagonal scores in the backend's units, ``nats``
    converting; ``colsum_i``, ``colsum_t``: the column sums of these rows' images and of all B texts;
    unused, may be None, without smoothing)."""
    total = sum(t.sum() for t in terms)
    if eps:
        mean = scale.double() * torch.dot(colsum_i, colsum_t).double() / batch
        total = total + 2.0 * eps * (x.double().sum() * nats - mean)
    return total


def subtract_targets(u: torch.Tensor, partner32, colsum_partner, eps: float, batch: int) -> torch.Tensor:
    """In place: u -= 2 (1 - eps) partner + 2 eps / B colsum_partner (the targets' part of U); ``partner32``
    None: the diagonal part is already in the products (subtracted from W before them)."""
    if partner32 is not None:
        u.sub_(partner32, alpha=2.0 * (1.0 - eps))
    if eps:
        u.sub_(colsum_partner[None], alpha=2.0 * eps / batch)
    return u


def finish_rows(acc, own32, partner32, colsum_partner, eps: float, batch: int, coef, scale, dtype, need_ds):
    """Gradient rows from their accumulated products ``acc`` = (W @ partner)[rows], in place on ``acc``:
    U = coef (acc - targets); returns (s U in ``dtype``, sum(own * U) if ``need_ds`` else None).
    ``partner32`` None: W had the diagonal targets subtracted before the product (``subtract_targets``)."""
    u = subtract_targets(acc, partner32, colsum_partner, eps, batch).mul_(coef)
    ds = torch.linalg.vecdot(own32, u).sum() if need_ds else None
    return u.mul_(scale).to(dtype), ds


class ContrastiveLossFunction(torch.autograd.Function):
    @staticmethod
    @exact
    def forward(ctx, image, text, scale, params: ContrastiveParams):
        batch = image.shape[0]
        r, c, x, mass_r, mass_c = params.backend.lse(image, text, scale)
        nats = lse_nats(params.backend)
        diag = target_diagonal(mass_r, mass_c, params.eps)
        terms = [diagonal_loss_terms(lse, x, mass, nats) for lse, mass in ((r, mass_r), (c, mass_c))]
        colsum_i = colsum_t = None  # only the smoothing part needs them
        if params.eps:
            colsum_i, colsum_t = image.sum(0, dtype=torch.float32), text.sum(0, dtype=torch.float32)
        total = loss_sum(terms, x, nats, scale, params.eps, batch, colsum_i, colsum_t)
        loss = (total * (params.factor / (2.0 * batch))).float()
        ctx.save_for_backward(image, text, scale, r, c, diag)
        ctx.params = params
        return loss

    @staticmethod
    @first_order_only
    @exact
    def backward(ctx, grad_out):
        image, text, scale, r, c, diag = ctx.saved_tensors
        p, batch = ctx.params, image.shape[0]
        need_i, need_t, need_s = ctx.needs_input_grad[:3]
        coef = grad_out.float() * (p.factor / (2.0 * batch))
        d_image, d_text, d_scale = p.backend.gradients(image, text, scale, r, c, coef, p.eps, diag, need_t)
        return (d_image if need_i else None), d_text, (d_scale if need_s else None), None


class GatheredContrastiveFunction(torch.autograd.Function):
    """The contrastive loss over the gathered batch (open_clip's ``local_loss=False``); returns the
    full-batch loss on every rank. Rank r's features get (sum of every rank's upstream grad) x dL/df_r
    with ``with_grad`` (open_clip's gather_with_grad), else its own upstream grad x dL/df_r."""

    @staticmethod
    @exact
    def forward(ctx, image, text, scale, params: ContrastiveParams):
        group = params.group
        batch = dist.get_world_size(group) * image.shape[0]
        texts, _ = _dist.gather(text, group)
        rows = image.shape[0]
        row0 = dist.get_rank(group) * rows
        r, c_part, x, mass_r, mass_part = params.backend.lse(image, texts, scale, row0)
        nats = lse_nats(params.backend)
        colsum_i = colsum_t = None  # only the smoothing part needs them
        if params.eps:
            colsum_i, colsum_t = image.sum(0, dtype=torch.float32), texts.sum(0, dtype=torch.float32)
        # this rank's rows; the columns' terms need the merged column LSEs and every rank's diagonal
        # scores, which ride in the merge's all-reduce (zero but at this rank's columns: exact sums)
        local = loss_sum(
            [diagonal_loss_terms(r, x, mass_r, nats)], x, nats, scale, params.eps, batch, colsum_i, colsum_t
        )
        extra = local.new_zeros(1 + batch)
        extra[0] = local
        extra[1 + row0 : 1 + row0 + rows] = x
        # the columns' masses merge as weighted sums (the ratio of the off-diagonal sums to the sums)
        (c,), (mass_c,), summed, _ = _dist.merge_columns(
            [c_part], [(0, mass_part)], extra, group, params.backend.lse_base2
        )
        total = summed[0] + diagonal_loss_terms(c, summed[1:], mass_c, nats).sum()
        loss = (total * (params.factor / (2.0 * batch))).float()
        diag = target_diagonal(mass_r, mass_c[row0 : row0 + rows], params.eps)
        ctx.save_for_backward(image, text, texts, scale, r, c, diag)
        ctx.params = params
        return loss

    @staticmethod
    @first_order_only
    @exact
    def backward(ctx, grad_out):
        image, text, texts, scale, r, c, diag = ctx.saved_tensors
        p = ctx.params
        batch = texts.shape[0]
        need_i, need_t, need_s = ctx.needs_input_grad[:3]
        # The targets folded into each chunk of W before its products (this block-row's diagonal starts at
        # its own texts' first column, its values the forward's ``diag``): U_I = A_I, and the
        # reduce-scatter sums U_T over the ranks. After the products, near one-hot rows lost their
        # gradient (2 T_i plus the tiny rest rounds to 2 T_i).
        row0 = dist.get_rank(p.group) * image.shape[0]
        u_i, a_t = p.backend.accumulate(image, texts, scale, r, c, (row0, p.eps, diag))
        u_t = torch.empty_like(u_i)
        rs_work = _dist.reduce_scatter(u_t, a_t, group=p.group, async_op=True)
        # Sum over ranks of the block-rows' ds parts, and of the upstream grads (gather_with_grad: every
        # rank's loss reaches these features).
        ds = image.new_zeros((), dtype=torch.float32)
        for sl in row_chunks(image.shape[0], image.shape[1], image.device):
            ds += torch.linalg.vecdot(f32_rows(image, sl), u_i[sl]).sum()
        red = torch.stack([ds, grad_out.float().reshape(())])
        ar_work = dist.all_reduce(red, group=p.group, async_op=True)
        rs_work.wait()
        ar_work.wait()
        coef = p.factor / (2.0 * batch)
        g_feat = (red[1] if p.with_grad else grad_out.float()) * (coef * scale)
        d_image = (u_i * g_feat).to(image.dtype) if need_i else None
        d_text = (u_t * g_feat).to(text.dtype) if need_t else None
        d_scale = red[0] * coef * grad_out.float() if need_s else None
        return d_image, d_text, d_scale, None
