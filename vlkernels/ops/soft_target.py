"""Soft-target (PSD) loss without the B x B logits: the autograd Function shared by backends.

S = s * I @ T.T is the student's logits; the teacher's S' is S itself (treated as a constant) or
s' * I' @ T'.T from a separate teacher (I', T' may have another width D'). Pair weights ``h`` (hard
target) and ``a`` (soft target) are [B] fp32 vectors; the Function returns two 0-d losses

    hard = k / (2B) * sum_i h_i [(r_i - H_i) + (c_i - H'_i)]
    soft = k / (2B) * sum_i a_i [(r_i - w_i) + (c_i - w'_i)]

with r, c the row/column LSEs of S, w_i = sum_j softmax_j(S'_i.) S_ij (w' the same over columns) and
H_i = (1 - eps) S_ii + eps / B * sum_j S_ij (H' over columns). soft_target_loss uses h = 1 - a
(their sum is the mean soft cross-entropy); DistillClipLoss uses h = a = 1 and returns both.

A backend supplies O(B)-memory passes over tiles of S and S' (``stats`` and ``accumulate`` accept
rectangular blocks, I [M, D], T [N, D], row stats [M], column stats [N]); ``teacher`` is None for the self
teacher, else ``(I', T', s')``:

- ``stats(I, T, s, teacher, row0=0) -> (r, c, r', c', w / s, w' / s, x, g, g', rest, rest_c, x', rest',
  rest'_c)``: the LSEs in float64 (two-part, as the contrastive loss's: ops/contrastive.py; the
  student's m + log1p(rest), which keeps the rest where 1 + rest rounds in fp32), natural or, where the
  backend's ``lse_base2`` is True, in base 2 (the units of its kernels' exponents, which ``accumulate``
  and ``gradients`` take back); r' is r (c' is c) for the self teacher; the weighted sums in fp32,
  unscaled (sum_j softmax_j(S'_i.) <I_i, T_j>), so that d/ds needs no division by s; x [M] fp32 the
  pass's own scores S[i, row0 + i] in the LSEs' units (the hard part's loss subtracts them from the
  LSEs: ``hard_gaps``; None where ``row0`` is None: not computed); the soft gaps g_i = r_i - s w_i and
  g'_j = c_j - s w'_j in fp32, in the LSEs' units, each formed as two sums of non-negative terms
  (``torch_utils.soft_partials``: near one-hot, r - s w would cancel to the small gap and keep an ulp of
  |S|); the rests of the student's rows and columns below their largest scores (sum_j exp(S_ij - m_i)
  less one largest term, fp32 [M] and [N]: the LSEs are m + log1p(rest)), from which
  ``diagonal_mass`` forms the off-diagonal masses 1 - P_ii and 1 - Q_ii to an ulp of themselves; and a
  separate teacher's own scores S'[i, row0 + i] and rests alike (its masses 1 - P'_ii, 1 - Q'_ii; the
  student's x and rests for the self teacher). The Functions keep a separate teacher's r' and c' packed
  as fp32 hi + bf16 lo (``torch_utils.pack_lse``: 12 bytes per row for both, so that the state fits 32
  bytes per row), and ``accumulate`` and ``gradients`` take them so;
- ``accumulate(I, T, s, r, c, e_row, e_col, q_row, q_col, teacher, r', c', diag) -> (A_I, A_T)``: with
  W = p_i exp(S - r_i) + p_j exp(S - c_j) - q_i exp(S' - r'_i) - q_j exp(S' - c'_j), p = e + q (hard and
  soft weights, given apart: the backends never round p where it would show, see ``gradients``),
  A_I = W @ T [M, D] and A_T = W.T @ I [N, D] in fp32 (the gathered Function's products); with ``diag``
  = (row0, v, u), W where row0 + i == j set to (e_i + e_j) v_i [+ (q_i + q_j) u_i with a separate
  teacher] before the products (v, u [M] fp32: the diagonal factors below, u None for the self teacher);
- ``gradients(I, T, s, r, c, h, a, coefs, eps, (v, u), teacher, r', c', need_t) -> (dI, dT, ds)``: the
  single-process gradients in the features' dtype, without fp32 [B, D] buffers beyond the workspace
  (e = coefs[0] h and q = coefs[1] a formed chunk by chunk, not as [B] vectors; a of any real dtype,
  possibly one weight expanded: the single-process Function's uint8 soft mask; h may be given as
  (x, y): h = x a + y, ``SoftTargetParams.hard_affine``; v and u the diagonal factors below; the
  student's LSEs packed as the teacher's, so that the state fits 32 bytes per row with v and u).

With grad outputs g_h, g_s and coef = k / (2B), p = coef (g_h h + g_s a), q = coef g_s a, e = coef g_h h:

    dL/dS_ij = W_ij - (e_i + e_j) ((1 - eps) delta_ij + eps / B),
    dI = s dL/dS @ T,  dT = s dL/dS.T @ I,  ds = sum_ij dL/dS_ij <I_i, T_j>.

On the diagonal, W's hard part less the hard targets' is e_i (P_ii - (1 - eps)) + e_i (Q_ii - (1 - eps)) =
2 e_i v_i with v_i = eps - (mass_i + mass^c_i) / 2, the mean of the off-diagonal masses 1 - P_ii and
1 - Q_ii (``diagonal_mass``): near one-hot, formed from P_ii it kept an ulp of 1 where the exact term is
the masses (the contrastive loss's "Off-diagonal masses", docs/design.md). A separate teacher's soft
part there, q_i (P_ii - P'_ii) + q_i (Q_ii - Q'_ii), is 2 q_i u_i with u_i the mean of the teacher's
masses less the student's (``soft_factors``; formed from the two softmaxes it kept an ulp of 1 too).
The Function saves v and u (fp32 [B]), and the backends set W's diagonal to (e_i + e_j) v_i
[+ (q_i + q_j) u_i] in place of the tiles' p (P + Q) - q (P' + Q') less the hard targets; the hard
part's loss is -log P_ii from the masses alike (``torch_utils.diagonal_loss_terms``).

``gradients`` forms dL/dS per chunk of rows (the Triton kernel folds the hard targets into its W tiles);
the gathered Function folds the hard targets' diagonal into W (``accumulate``'s ``diag``) and subtracts
their eps part from A_I, A_T as O(B D) algebra: U_I = A_I - eps / B (e colsum(T) + sum_j e_j T_j), U_T
likewise, dI = s U_I.

Nothing flows to the teacher, the weights or alpha.

``GatheredSoftTargetFunction`` is the same loss over a batch split across the ranks of a process group
(the block-row scheme of ops/contrastive.py), for each of open_clip's (local_loss, gather_with_grad)
modes; it also serves the contrastive loss with ``local_loss=True`` (hard weights 1, soft weights 0).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import torch
import torch.distributed as dist

from vlkernels import _dist
from vlkernels.ops.torch_utils import (
    LN2,
    diagonal_loss_terms,
    exact,
    f32_rows,
    first_order_only,
    log1p_units,
    lse_nats,
    pack_lse,
    row_chunks,
    weighted_row_sum,
)

Teacher = tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None


class SoftTargetBackend(Protocol):
    lse_base2: bool

    def stats(
        self,
        image: torch.Tensor,
        text: torch.Tensor,
        scale: torch.Tensor,
        teacher: Teacher = None,
        row0: int | None = 0,
    ):
        """(r, c, r', c', w, w', x, g, g', rest, rest_c, x', rest', rest'_c): the LSEs float64, the
        weighted sums, diagonal scores, soft gaps and rests fp32."""
        ...

    def accumulate(
        self,
        image,
        text,
        scale,
        r,
        c,
        e_row,
        e_col,
        q_row,
        q_col,
        teacher: Teacher = None,
        tr=None,
        tc=None,
        diag: tuple[int, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]: ...

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
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """(dI, dT or None, ds) of the single-process loss in the features' dtype (no fp32 [B, D] buffers
        beyond the workspace): e = coefs[0] h, q = coefs[1] a (the pair weights times their grad outputs and
        k / (2B)), dL/dS = W(p = e + q, q) - (e_i + e_j) ((1 - eps) delta_ij + eps / B), its diagonal's
        hard part 2 e_i v_i from the factors ``diag`` = v [B]; ``hard_w`` is h [B] or (x, y) for
        h = x a + y; the LSEs r, c (and r', c') packed (``torch_utils.pack_lse``)."""
        ...


@dataclass(frozen=True)
class SoftTargetParams:
    """The non-tensor settings of one call: label smoothing ``eps``, reduction ``factor`` (k above), the
    backend, for the gathered Function the process group and open_clip's two flags, and for the
    single-process Function ``hard_affine`` = (x, y) when the hard weights are h = x a + y of the soft
    weights (then ``hard_w`` is None: no [B] vector is saved for the backward, the backends form h chunk
    by chunk or in registers)."""

    eps: float
    factor: float
    backend: SoftTargetBackend
    group: Any = None
    local_loss: bool = False
    with_grad: bool = True
    hard_affine: tuple[float, float] | None = None


def row_terms(image, text, colsum_i=None, colsum_t=None, diag: bool = False):
    """(<I_i, T_i>, <I_i, colsum_t>, <T_i, colsum_i>) for these rows, fp32 [M] each, the features converted
    a chunk of rows at a time (no fp32 copy of them); None where not asked (``diag`` False, no column
    sums: ``colsum_i`` / ``colsum_t`` are those over all B images / texts). The last two are B / s times
    the label smoothing's mean logits of row i and of column i."""
    rows, dev = image.shape[0], image.device
    smooth = colsum_t is not None
    out = [
        torch.empty(rows, dtype=torch.float32, device=dev) if want else None
        for want in (diag, smooth, smooth)
    ]
    for sl in row_chunks(rows, image.shape[1], dev):
        i_blk, t_blk = f32_rows(image, sl), f32_rows(text, sl)
        if diag:
            out[0][sl] = (i_blk * t_blk).sum(1)
        if smooth:
            out[1][sl] = i_blk @ colsum_t
            out[2][sl] = t_blk @ colsum_i
    return tuple(out)


def mean_difference(a, b, gap_a, gap_b, nats: float, scale) -> torch.Tensor:
    """a - b, fp32 [M], for two weighted means a, b [M] of the same rows' dot products (the student's
    softmax-weighted one, the teacher's, or the pair's own <I_i, T_i>), given also as their gaps
    ``gap`` = LSE - s * mean (in the LSE's units, ``nats`` converting: the soft gaps the statistics return,
    or LSE - S_ii): a - b = (gap_b - gap_a) / s. Formed directly, a - b keeps an ulp of |a| + |b|, which
    near one-hot is far more than a - b itself; the gaps there are tiny and keep a few ulps of themselves.
    Each row takes the form whose rounding is the smaller: ulps of (|gap_a| + |gap_b|) / |s| or of
    |a| + |b| (the latter at s = 0)."""
    s = scale.detach().double()
    ga, gb = gap_a.double() * nats, gap_b.double() * nats
    a64, b64 = a.double(), b.double()
    via_gaps = (gb - ga) / s
    by_gaps = ga.abs() + gb.abs() < s.abs() * (a64.abs() + b64.abs())
    return torch.where(by_gaps, via_gaps, a64 - b64).float()


def subtract_hard_targets(u, e_own, eps: float, batch: int, colsum=None, e_dot=None, both=True):
    """In place: u -= the label-smoothing part of the hard targets' U for these rows (weights ``e_own``):
    ``u -= eps / B (e colsum(x) + [both] e_dot)`` (``colsum``: the partners' column sum over all B;
    ``e_dot`` = sum_j e_j x_j over them, when the gradient flows from both directions, ``both``). Their
    diagonal part, w (1 - eps) e_i x_i (w = 2 from both directions, else 1), is folded into W before the
    products (``accumulate``'s ``diag``): after them, on near one-hot rows, it would cancel all but the
    products' rounding."""
    if eps:
        u.addr_(e_own, colsum, alpha=-eps / batch)
        if both:
            u.sub_(e_dot[None], alpha=eps / batch)
    return u


def _mass(lse, x, near, nats: float) -> torch.Tensor:
    """1 - P_ii, fp32: ``near`` (float64, its form from the rests) where P_ii > 1/2 (lse - x below log 2),
    else 1 - exp(x - lse) >= 1/2 (``diagonal_mass``, ``merged_mass``)."""
    gap = (lse - x.double()) * nats
    return torch.where(gap < LN2, near, torch.expm1(-gap).neg_()).float()


def diagonal_mass(lse, x, rest, nats: float) -> torch.Tensor:
    """1 - P_ii, fp32, of rows (or columns) whose LSEs ``lse`` (float64, the backend's units, ``nats``
    converting) are m + log1p(``rest``) from their largest score m and the fp32 rest of their sums below
    it (the statistics'), ``x`` the pass's own diagonal scores. Where P_ii > 1/2 (lse - x below log 2)
    the diagonal score is the largest (a score at least as large would hold as much of the softmax) and
    the mass is rest / (1 + rest), the others' share, to an ulp of itself; elsewhere it is
    1 - exp(x - lse) >= 1/2, to an ulp of itself. Formed from P_ii near 1 it kept an ulp of 1 (and the
    float64 LSEs lose a rest below 2^-53 |m| whole)."""
    r64 = rest.double()
    return _mass(lse, x, r64 / (1.0 + r64), nats)


def merged_mass(lse, x, part, rest, nats: float) -> torch.Tensor:
    """1 - P_jj, fp32, of columns merged across ranks (``_dist.merge_columns``): ``lse`` their merged LSEs,
    ``x`` the diagonal scores, ``part`` the columns' masses over this rank's rows (``diagonal_mass`` of its
    partial LSEs, this rank holding the diagonal) and ``rest`` the merge's rest R (float64: the other
    ranks' partial sums relative to the largest partial sum). Where P_jj > 1/2, this rank's partial sum
    is over half of the column's, so the largest, R is the others' over it and 1 - P_jj =
    (R + part) / (1 + R), sums of non-negative terms; elsewhere 1 - exp(x - lse) >= 1/2."""
    r64 = rest.double()
    return _mass(lse, x, (r64 + part.double()) / (1.0 + r64), nats)


def hard_factors(mass_r, mass_c, eps: float) -> torch.Tensor:
    """The hard targets' diagonal factors v = eps - (mass_r + mass_c) / 2, fp32: dL/dS_ii's hard part is
    2 e_i v_i (module docstring)."""
    return (mass_r + mass_c).mul_(-0.5).add_(eps)


def soft_factors(mass_r, mass_c, t_mass_r, t_mass_c) -> torch.Tensor:
    """A separate teacher's diagonal factors u = ((mass'_r + mass'_c) - (mass_r + mass_c)) / 2, fp32 (each
    formed in float64 and rounded once), from the off-diagonal masses of the student (``mass_*``) and the
    teacher (``t_mass_*``): dL/dS_ii's soft part q_i (P_ii - P'_ii) + q_j (Q_ii - Q'_ii) is (q_i + q_j) u_i
    where q_i = q_j (module docstring). Formed from the two softmaxes near one-hot, P_ii - P'_ii kept an
    ulp of 1 where the exact term is the difference of the masses."""
    teacher = t_mass_r.double() + t_mass_c.double()
    return teacher.sub_(mass_r.double() + mass_c.double()).mul_(0.5).float()


def hard_gaps(nll_r, nll_c, x, nats: float, scale, eps: float, batch: int, smooth) -> torch.Tensor:
    """(r_i - H_i) + (c_i - H'_i) per row, fp32 [M] (each formed in float64 and rounded once): the rows'
    and the columns' -log P_ii ``nll_r``, ``nll_c`` (natural, float64: ``diagonal_loss_terms`` of the
    LSEs, the pass's own diagonal scores ``x`` and the masses; near one-hot each keeps an ulp of
    itself, where r - x keeps an ulp of float64 |S| and a separately computed S_ii an ulp of fp32 |S|),
    with ``eps`` the smoothing part eps (2 S_ii - s / B ``smooth``_i) (``row_terms``; x in the backend's
    units, ``nats`` converting)."""
    gaps = nll_r + nll_c
    if eps:
        gaps += eps * (2.0 * nats * x.double() - scale.double() / batch * smooth.double())
    return gaps.float()


def _teacher(t_image, t_text, t_scale) -> Teacher:
    return None if t_image is None else (t_image, t_text, t_scale)


def _packed(teacher: Teacher, tr, tc) -> tuple:
    """What the Functions save of a separate teacher's float64 LSEs: (r' hi, r' lo, c' hi, c' lo)
    (``pack_lse``), or four Nones for the self teacher."""
    return (None,) * 4 if teacher is None else (*pack_lse(tr), *pack_lse(tc))


def _unpacked(hi_lo) -> tuple:
    """(r', c') as the backends take them from ``_packed``'s four tensors: (hi, lo) pairs, or Nones."""
    return (None, None) if hi_lo[0] is None else (tuple(hi_lo[:2]), tuple(hi_lo[2:]))


def soft_weights(soft_mask, alpha, batch: int, dtype=torch.float32) -> torch.Tensor:
    """The soft weights a = alpha * mask [B] (``soft_mask`` a bool or uint8 [B] 0/1 vector, or None for all
    pairs; ``alpha`` 0-d fp32) in ``dtype``: as the single-process backends take them, uint8 (alpha folded
    into their coefficients; without a mask one 1 expanded, no [B] buffer), else fp32 (alpha expanded
    without a mask: the forward's dot products, the gathered Function's weights)."""
    if dtype == torch.uint8:
        return alpha.new_ones(1, dtype=torch.uint8).expand(batch) if soft_mask is None else soft_mask
    return alpha.expand(batch) if soft_mask is None else soft_mask * alpha


class SoftTargetFunction(torch.autograd.Function):
    """The single-process loss's (hard, soft) pair for soft weights a = alpha * mask (``soft_mask`` uint8
    [B] or None for 1, ``alpha`` a 0-d fp32 tensor: the Function keeps the caller's mask, no [B] weight
    vector) and hard weights h = x a + y (``params.hard_affine``)."""

    @staticmethod
    @exact
    def forward(ctx, image, text, scale, soft_mask, alpha, t_image, t_text, t_scale, params):
        batch = image.shape[0]
        teacher = _teacher(t_image, t_text, t_scale)
        stats = params.backend.stats(image, text, scale, teacher)
        r, c, tr, tc, _, _, x, g_row, g_col, rest_r, rest_c, t_x, t_rest_r, t_rest_c = stats
        del stats
        nats = lse_nats(params.backend)
        mass_r, mass_c = diagonal_mass(r, x, rest_r, nats), diagonal_mass(c, x, rest_c, nats)
        del rest_r, rest_c
        soft_diag = None
        if teacher is not None:
            t_mass = diagonal_mass(tr, t_x, t_rest_r, nats), diagonal_mass(tc, t_x, t_rest_c, nats)
            soft_diag = soft_factors(mass_r, mass_c, *t_mass)
            del t_mass
        del t_x, t_rest_r, t_rest_c
        packed = _packed(teacher, tr, tc)
        del tr, tc
        nll_r, nll_c = diagonal_loss_terms(r, x, mass_r, nats), diagonal_loss_terms(c, x, mass_c, nats)
        diag = hard_factors(mass_r, mass_c, params.eps)
        del mass_r, mass_c
        smooth = None
        if params.eps:
            colsum_i, colsum_t = image.sum(0, dtype=torch.float32), text.sum(0, dtype=torch.float32)
            _, smooth_i, smooth_t = row_terms(image, text, colsum_i, colsum_t)
            smooth = smooth_i.add_(smooth_t)
            del smooth_t
        gaps = hard_gaps(nll_r, nll_c, x, nats, scale, params.eps, batch, smooth)
        del x, smooth, nll_r, nll_c
        coef = params.factor / (2.0 * batch)
        soft_w = soft_weights(soft_mask, alpha, batch)
        xa, ya = params.hard_affine
        hard = torch.dot(soft_w * xa + ya, gaps) * coef
        del gaps
        soft = (torch.dot(soft_w, g_row) + torch.dot(soft_w, g_col)) * (nats * coef)
        del soft_w, g_row, g_col
        # the student's LSEs packed as the teacher's (12 bytes per row for both, with the diagonal factors
        # 16; with a separate teacher its LSEs and diagonal factors 16 more: 32 bytes per row)
        lses = (*pack_lse(r), *pack_lse(c))
        del r, c
        saved = (image, text, scale, diag, soft_diag, soft_mask, alpha, t_image, t_text, t_scale)
        ctx.save_for_backward(*saved, *lses, *packed)
        ctx.params = params
        return hard, soft

    @staticmethod
    @first_order_only
    @exact
    def backward(ctx, g_hard, g_soft):
        image, text, scale, diag, soft_diag, soft_mask, alpha, t_image, t_text, t_scale, *packed = (
            ctx.saved_tensors
        )
        r, c = _unpacked(packed[:4])
        tr, tc = _unpacked(packed[4:])
        prm, batch = ctx.params, image.shape[0]
        need_i, need_t, need_s = ctx.needs_input_grad[:3]
        coef = prm.factor / (2.0 * batch)
        # the backends' soft weights are the mask (uint8), alpha folded into the coefficients: q = cq a,
        # h = (x alpha) mask + y
        coefs = torch.stack([g_hard.float().reshape(()), g_soft.float().reshape(()) * alpha]) * coef
        xa, ya = prm.hard_affine
        soft_w = soft_weights(soft_mask, alpha, batch, torch.uint8)
        teacher = _teacher(t_image, t_text, t_scale)
        d_image, d_text, d_scale = prm.backend.gradients(
            image, text, scale, r, c, (alpha * xa, ya), soft_w, coefs, prm.eps, (diag, soft_diag), teacher,
            tr, tc, need_t,
        )  # fmt: skip
        return (
            d_image if need_i else None,
            d_text if need_t else None,
            d_scale if need_s else None,
            *(None,) * 6,
        )


class GatheredSoftTargetFunction(torch.autograd.Function):
    """The soft-target loss's (hard, soft) pair over the gathered batch, for every (local_loss,
    gather_with_grad) mode of ``params``.

    Also the contrastive loss with ``local_loss=True`` (hard weights 1, soft weights 0): the per-rank
    logit_scale gradient of a local loss needs the softmax-weighted sums that only ``stats`` yields.
    The logit_scale gradient comes from those sums in the forward; near one-hot their differences are
    formed from the soft gaps and the hard gaps LSE - S_ii, over s (``mean_difference``: each keeps an ulp
    of itself, where the sums' differences kept an ulp of |<I_i, T_i>|), and from the sums themselves where
    those are the more precise (s = 0 included). With a separate teacher it costs one more ``stats`` pass
    (2 b B D FLOPs) when s requires grad.
    """

    @staticmethod
    @exact
    def forward(ctx, image, text, scale, hard_w, soft_w, t_image, t_text, t_scale, params: SoftTargetParams):
        group, eps, backend = params.group, params.eps, params.backend
        n, rank = dist.get_world_size(group), dist.get_rank(group)
        b, dim = image.shape
        batch = n * b
        own = slice(rank * b, (rank + 1) * b)
        # One fp32 all-gather for the pair weights (needed for every column) and two D-vectors per rank.
        meta = torch.cat([hard_w, soft_w, image.sum(0, dtype=torch.float32), weighted_row_sum(hard_w, image)])
        meta_all, meta_work = _dist.gather(meta[None], group, async_op=True)
        texts, text_work = _dist.gather(text, group, async_op=True)
        teacher = None
        t_texts = None
        if t_image is not None:
            t_texts, _ = _dist.gather(t_text, group)
            teacher = (t_image, t_texts, t_scale)
        text_work.wait()
        meta_work.wait()
        h_all, a_all = meta_all[:, :b].reshape(batch), meta_all[:, b : 2 * b].reshape(batch)
        colsum_i = meta_all[:, 2 * b : 2 * b + dim].sum(0)
        hsum_i = meta_all[:, 2 * b + dim :]
        need_s = ctx.needs_input_grad[2]

        stats = backend.stats(image, texts, scale, teacher, rank * b)
        r, c_part, tr, tc_part, w, wc_part, x, g, gc_part, rest_r, rest_cp, t_x, t_rest_r, t_rest_cp = stats
        del stats
        nats = lse_nats(backend)
        # the off-diagonal masses: the rows', and the own columns' over this rank's rows (merged below); a
        # separate teacher's alike
        mass_r = diagonal_mass(r, x, rest_r, nats)
        mass_cp = diagonal_mass(c_part[own], x, rest_cp[own], nats)
        t_mass_r = t_mass_cp = None
        if teacher is not None:
            t_mass_r = diagonal_mass(tr, t_x, t_rest_r, nats)
            t_mass_cp = diagonal_mass(tc_part[own], t_x, t_rest_cp[own], nats)
        del rest_r, rest_cp, t_rest_r, t_rest_cp
        lse_parts, weighted, soft_gaps = [c_part], [(0, wc_part)], [(0, gc_part)]
        if teacher is not None:
            lse_parts.append(tc_part)
            weighted, soft_gaps = [(1, wc_part)], [(1, gc_part)]
            if need_s:
                # d r_i / ds needs the student's own softmax-weighted sums (and, to keep them precise
                # near one-hot, its own soft gaps): one more stats pass.
                own_stats = backend.stats(image, texts, scale, None, row0=None)
                ws, gs = own_stats[4], own_stats[7]
                weighted.append((0, own_stats[5]))
                soft_gaps.append((0, own_stats[8]))
                del own_stats
        empty = meta.new_empty(0)
        rests = (0,) if teacher is None else (0, 1)
        lses, sums_w, _, gaps_c = _dist.merge_columns(
            lse_parts, weighted, empty, group, backend.lse_base2, soft_gaps, rests
        )
        (rest_c, *t_rest_c), dists_c = gaps_c
        above_c = log1p_units(rest_c, backend.lse_base2)  # the gaps share the student's rest
        gaps_c = [(above_c + dist_c).float() for dist_c in dists_c]
        c, tc, wc, gc = lses[0], lses[-1], sums_w[0], gaps_c[0]
        if teacher is None:
            ws, wsc, gs, gsc = w, wc, g, gc
        elif need_s:
            wsc, gsc = sums_w[1], gaps_c[1]

        colsum_t = texts.sum(0, dtype=torch.float32)
        smoothing = (colsum_i, colsum_t) if eps else ()
        diag, smooth_i, smooth_t = row_terms(image, text, *smoothing, diag=need_s)
        smooth = smooth_i + smooth_t if eps else None
        c_own, gc_own = c[own], gc[own]
        mass_c = merged_mass(c_own, x, mass_cp, rest_c[own], nats)
        t_mass_c = None
        if teacher is not None:
            t_mass_c = merged_mass(tc[own], t_x, t_mass_cp, t_rest_c[0][own], nats)
        del t_rest_c, t_mass_cp, t_x
        nll_r, nll_c = diagonal_loss_terms(r, x, mass_r, nats), diagonal_loss_terms(c_own, x, mass_c, nats)
        gaps = hard_gaps(nll_r, nll_c, x, nats, scale, eps, batch, smooth)
        parts = [torch.dot(hard_w, gaps), (torch.dot(soft_w, g) + torch.dot(soft_w, gc_own)) * nats]
        if need_s:
            # ds of each part: d r_i / ds = ws_i (the student-softmax-weighted dot products), and the
            # targets (H, the teacher-weighted sums) are s times s-free quantities. Near one-hot the
            # differences are tiny: formed from the gaps (``mean_difference``), each keeps an ulp of itself
            # where ws_i - <I_i, T_i> would keep an ulp of |<I_i, T_i>|. H_i / s - <I_i, T_i> =
            # eps (<I_i, colsum_t> / B - <I_i, T_i>).
            wsc_own, gsc_own = wsc[own], gsc[own]
            hard_r = mean_difference(ws, diag, gs, nll_r / nats, nats, scale)
            hard_c = mean_difference(wsc_own, diag, gsc_own, nll_c / nats, nats, scale)
            if eps:
                hard_r.sub_(smooth_i.div_(batch).sub_(diag), alpha=eps)
                hard_c.sub_(smooth_t.div_(batch).sub_(diag), alpha=eps)
            parts.append(torch.dot(hard_w, hard_r) + torch.dot(hard_w, hard_c))
            soft_r = mean_difference(ws, w, gs, g, nats, scale)
            soft_c = mean_difference(wsc_own, wc[own], gsc_own, gc_own, nats, scale)
            parts.append(torch.dot(soft_w, soft_r) + torch.dot(soft_w, soft_c))
        parts = torch.stack(parts)
        if not params.local_loss:
            dist.all_reduce(parts, group=group)
        parts = parts * (params.factor / (2.0 * (b if params.local_loss else batch)))
        ds_parts = parts[2:] if need_s else parts.new_zeros(2)
        packed = _packed(teacher, tr, tc)
        del tr, tc
        ctx.save_for_backward(
            image,
            text,
            texts,
            scale,
            r,
            c,
            mass_r,
            mass_c,
            t_mass_r,
            t_mass_c,
            h_all,
            a_all,
            colsum_i,
            hsum_i,
            ds_parts,
            t_image,
            t_texts,
            t_scale,
            *packed,
        )
        ctx.params = params
        return parts[0], parts[1]

    @staticmethod
    @first_order_only
    @exact
    def backward(ctx, g_hard, g_soft):
        (image, text, texts, scale, r, c, mass_r, mass_c, t_mass_r, t_mass_c, h_all, a_all, colsum_i, hsum_i,
         ds_parts, t_image, t_texts, t_scale, *packed) = ctx.saved_tensors  # fmt: skip
        tr, tc = _unpacked(packed)
        prm = ctx.params
        eps, group, backend = prm.eps, prm.group, prm.backend
        need_i, need_t, need_s = ctx.needs_input_grad[:3]
        n, rank = dist.get_world_size(group), dist.get_rank(group)
        b = image.shape[0]
        batch = n * b
        own = slice(rank * b, (rank + 1) * b)
        teacher = _teacher(t_image, t_texts, t_scale)
        mine = torch.stack([g_hard.float().reshape(()), g_soft.float().reshape(())])
        grads, _ = _dist.gather(mine[None], group)  # [n, 2]: every rank's upstream grads
        coef = prm.factor / (2.0 * (b if prm.local_loss else batch))
        # Upstream grad that weighs each pair's terms: the owner's (local losses), the sum over ranks
        # (full loss, gradients through the gather), or this rank's own (full loss, no gather grad).
        if prm.local_loss:
            g_pair = grads.repeat_interleave(b, dim=0)
            hsum_weighted = grads[:, 0] @ hsum_i
        else:
            g_pair = (grads.sum(0) if prm.with_grad else grads[rank]).expand(batch, 2)
            hsum_weighted = g_pair[0, 0] * hsum_i.sum(0)
        e = coef * g_pair[:, 0] * h_all
        q = coef * g_pair[:, 1] * a_all
        e_own = e[own]
        colsum_t = texts.sum(0, dtype=torch.float32) if eps else None
        args = (image, texts, scale, r, c)
        # the diagonal, folded into W before the products: (e_i + e_j) v_i (+ (q_i + q_j) u_i with a
        # separate teacher) there, with e_i = e_j and q_i = q_j (both directions: v and u from the means of
        # the rows' and the columns' masses) or one of each pair 0 (v and u of that direction's masses)

        def factors(masses, t_masses):
            """(row0, v, u) of the student's and the teacher's (mass_r, mass_c) pairs."""
            u = None if teacher is None else soft_factors(*masses, *t_masses)
            return rank * b, hard_factors(*masses, eps), u

        diag = factors((mass_r, mass_c), (t_mass_r, t_mass_c))
        if prm.local_loss and not prm.with_grad:
            # The gathered features are constants: row terms reach only the images, column terms only
            # the texts, so the two products need separate passes.
            zero_b, zero_n = e.new_zeros(b), e.new_zeros(batch)
            diag_r = factors((mass_r, mass_r), (t_mass_r, t_mass_r))
            diag_c = factors((mass_c, mass_c), (t_mass_c, t_mass_c))
            a_i, _ = backend.accumulate(*args, e_own, zero_n, q[own], zero_n, teacher, tr, tc, diag_r)
            _, a_t = backend.accumulate(*args, zero_b, e, zero_b, q, teacher, tr, tc, diag_c)
            u_t = torch.empty_like(a_i)
            work = _dist.reduce_scatter(u_t, a_t, group=group, async_op=True)
            u_i = subtract_hard_targets(a_i, e_own, eps, batch, colsum_t, both=False)
            work.wait()
            subtract_hard_targets(u_t, e_own, eps, batch, colsum_i, both=False)
        else:
            if prm.local_loss or prm.with_grad or torch.equal(grads, grads[rank].expand_as(grads)):
                a_i, a_t = backend.accumulate(*args, e_own, e, q[own], q, teacher, tr, tc, diag)
            else:
                # Full loss without gather grads and ranks with different (g_hard, g_soft): column j's
                # product takes its owner's pair of grads, so the hard and soft parts go separately.
                e1, q1 = coef * h_all, coef * a_all
                zero_b, zero_n = e.new_zeros(b), e.new_zeros(batch)
                h_i, h_t = backend.accumulate(*args, e1[own], e1, zero_b, zero_n, teacher, tr, tc, diag)
                s_i, s_t = backend.accumulate(*args, zero_b, zero_n, q1[own], q1, teacher, tr, tc, diag)
                g_col = grads.repeat_interleave(b, dim=0)
                a_i = h_i.mul_(grads[rank, 0]).add_(s_i.mul_(grads[rank, 1]))
                a_t = h_t.mul_(g_col[:, :1]).add_(s_t.mul_(g_col[:, 1:]))
            u_t = torch.empty_like(a_i)
            work = _dist.reduce_scatter(u_t, a_t, group=group, async_op=True)
            e_dot_t = weighted_row_sum(e, texts) if eps else None
            u_i = subtract_hard_targets(a_i, e_own, eps, batch, colsum_t, e_dot_t)
            work.wait()
            subtract_hard_targets(u_t, e_own, eps, batch, colsum_i, coef * hsum_weighted)
        d_image = (u_i * scale).to(image.dtype) if need_i else None
        d_text = (u_t * scale).to(text.dtype) if need_t else None
        d_scale = torch.dot(mine, ds_parts) if need_s else None
        return d_image, d_text, d_scale, None, None, None, None, None, None
