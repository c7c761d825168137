"""Distributed losses on CPU: several processes (torch.multiprocessing, gloo on loopback).

Each spawn runs many checks (process start-up dominates). The references are computed in the workers:
the single-process full-batch loss and gradients (the contract of ``gather=True``), and a plain copy of
open_clip's ClipLoss / DistillClipLoss with its ``gather_features`` (the contract of the open_clip flags).
A hung collective fails the test through the join deadline (and gloo's own timeout).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.distributed.nn  # noqa: F401  (open_clip calls torch.distributed.nn.all_gather)
import torch.nn.functional as F

from tests._ref import (
    MaxNumel,
    assert_relatively_exact,
    assert_within_float64_error,
    centered_scale_grad,
    logit_term_scales,
    paired_features,
    relative_ulps,
    soft_relative_ulps,
    term_scales,
)
from tests._spawn import spawn
from vlkernels import ClipLoss, DistillClipLoss, SoftTargetLoss, contrastive_loss, soft_target_loss
from vlkernels.functional import distill_clip_loss
from vlkernels.reference import contrastive_loss_naive, soft_target_loss_naive

pytestmark = pytest.mark.distributed

ROOT = Path(__file__).resolve().parents[1]
TOL = dict(atol=2e-5, rtol=2e-5)
SIZES = (1, 5, 33)


# --- process plumbing ----------------------------------------------------------------------------


def _spawn(world: int, *calls):
    spawn(__name__, world, *calls)


# --- inputs and references -----------------------------------------------------------------------


def _inputs(batch: int, dim: int, seed: int, dtype=torch.float32, noise: float = 0.8):
    return paired_features(batch, dim, noise, seed, dtype)


def _leaves(*xs):
    return [x.detach().clone().requires_grad_() for x in xs]


def _grads(loss, leaves, grad_out):
    loss.backward(torch.tensor(grad_out, dtype=loss.dtype))
    return [x.grad for x in leaves]


def _float64_rule(what, got, got_g, base, base_g, exact, exact_g, own, world, terms, loss=True):
    """The single-process float64 rule (tests/_ref.py) over (loss, d_image, d_text[, d_scale]) of the
    gathered loss: its loss and its rank's gradients over the world size (the gather contract: n times the
    full-batch gradients) against the full-batch loss in float64 (``exact``), with the naive loss on the
    same inputs (fp32 arithmetic, gradients in their dtype: ``base``) as torch's error. ``got_g[2]``
    None: the scale had no gradient to check; ``loss`` False: the gradients only."""
    count = 3 if got_g[2] is None else 4
    quantities = [
        [got.detach(), got_g[0] / world, got_g[1] / world, got_g[2]],
        [base.detach(), base_g[0][own], base_g[1][own], base_g[2]],
        [exact.detach(), exact_g[0][own], exact_g[1][own], exact_g[2]],
    ]
    names = ("loss", "d_image", "d_text", "d_scale")[:count]
    first = 0 if loss else 1
    try:
        assert_within_float64_error(
            *(q[first:count] for q in quantities), terms[first:count], names=names[first:]
        )
    except AssertionError as error:
        raise AssertionError(f"{what}: {error}") from None


def _close(got, want, what, tol=TOL):
    assert got is not None, f"{what}: no gradient"
    torch.testing.assert_close(got.float(), want.float(), msg=lambda m: f"{what}: {m}", **tol)


def _open_clip_gather(image, text, local_loss, gather_with_grad, rank, world):
    """open_clip.loss.gather_features (torch.distributed branch), copied."""
    if gather_with_grad:
        all_image = torch.cat(torch.distributed.nn.all_gather(image), dim=0)
        all_text = torch.cat(torch.distributed.nn.all_gather(text), dim=0)
    else:
        gathered_image = [torch.zeros_like(image) for _ in range(world)]
        gathered_text = [torch.zeros_like(text) for _ in range(world)]
        dist.all_gather(gathered_image, image)
        dist.all_gather(gathered_text, text)
        if not local_loss:
            gathered_image[rank] = image
            gathered_text[rank] = text
        all_image = torch.cat(gathered_image, dim=0)
        all_text = torch.cat(gathered_text, dim=0)
    return all_image, all_text


def _open_clip_logits(image, text, scale, local_loss, gather_with_grad, rank, world):
    """open_clip.loss.ClipLoss.get_logits + get_ground_truth (world_size > 1), in fp32."""
    image, text = image.float(), text.float()
    all_image, all_text = _open_clip_gather(image, text, local_loss, gather_with_grad, rank, world)
    if local_loss:
        per_image = scale * image @ all_text.T
        per_text = scale * text @ all_image.T
    else:
        per_image = scale * all_image @ all_text.T
        per_text = per_image.T
    labels = torch.arange(per_image.shape[0])
    if local_loss:
        labels = labels + per_image.shape[0] * rank
    return per_image, per_text, labels


def _open_clip_loss(image, text, scale, eps, local_loss, gather_with_grad, rank, world):
    per_image, per_text, labels = _open_clip_logits(
        image, text, scale, local_loss, gather_with_grad, rank, world
    )
    return (
        F.cross_entropy(per_image, labels, label_smoothing=eps)
        + F.cross_entropy(per_text, labels, label_smoothing=eps)
    ) / 2


def _open_clip_distill(
    image, text, scale, t_image, t_text, t_scale, eps, local_loss, gather_with_grad, rank, world
):
    """open_clip.loss.DistillClipLoss.forward (teacher logits from the same get_logits), copied."""
    per_image, per_text, labels = _open_clip_logits(
        image, text, scale, local_loss, gather_with_grad, rank, world
    )
    t_image_l, t_text_l, _ = _open_clip_logits(
        t_image, t_text, t_scale, local_loss, gather_with_grad, rank, world
    )
    contrastive = (
        F.cross_entropy(per_image, labels, label_smoothing=eps)
        + F.cross_entropy(per_text, labels, label_smoothing=eps)
    ) / 2

    def dist_loss(teacher_logits, student_logits):
        return -(teacher_logits.softmax(dim=1) * student_logits.log_softmax(dim=1)).sum(dim=1).mean(dim=0)

    distill = (dist_loss(t_image_l, per_image) + dist_loss(t_text_l, per_text)) / 2
    return contrastive, distill


# --- checks run inside the workers ---------------------------------------------------------------


def _gathered_on_float64_rule(
    what, rank, world, img, txt, scale, eps, impl, grad_out, terms, loss=True, base="naive"
):
    """The contrastive loss with gather=True on this rank's share of the full batch (img, txt) against the
    full-batch loss of impl ``base`` as torch's error (``_float64_rule``; ``loss`` False: the gradients
    only); returns the rank's gradients."""
    b = img.shape[0] // world
    own = slice(rank * b, (rank + 1) * b)
    full = _leaves(img, txt, torch.tensor(scale))
    want = contrastive_loss(*full, label_smoothing=eps, impl=base)
    want_g = _grads(want, full, grad_out)
    full64 = _leaves(*(x.double() for x in full))
    exact = contrastive_loss_naive(*full64, eps)
    exact_g = _grads(exact, full64, grad_out)
    mine = _leaves(img[own], txt[own], torch.tensor(scale))
    got = contrastive_loss(*mine, label_smoothing=eps, impl=impl, gather=True)
    got_g = _grads(got, mine, grad_out)
    _float64_rule(what, got, got_g, want, want_g, exact, exact_g, own, world, terms, loss)
    return got_g


def _check_gather_contract(rank, world, cases, dims):
    """gather=True: per-rank loss = full-batch loss; local grads = n * full grads (so DDP's average is the
    single-process gradient); logit_scale grad = full-batch grad."""
    for impl, b in cases:
        for dim, eps in zip(dims, (0.0, 0.1), strict=False):
            batch = world * b
            img, txt = _inputs(batch, dim, seed=100 * b + dim)
            what = f"contrastive impl={impl} b={b} D={dim} eps={eps} rank={rank}"
            terms = term_scales(batch, 11.0, 1.7)
            _gathered_on_float64_rule(what, rank, world, img, txt, 11.0, eps, impl, 1.7, terms)


def _check_huge_logits(rank, world, impl):
    """gather=True with logits past fp32's integer range (features of norm 1e13, s = 10): the column
    LSEs merged across ranks in the backend's units (base 2 for Triton), on the float64 rule with error
    scales from the actual logits."""
    img, txt = _inputs(world * 4, 5, seed=7)
    img = img * 1e13
    terms = logit_term_scales(img, txt, 10.0, 1.3)
    _gathered_on_float64_rule(
        f"huge logits impl={impl} rank={rank}", rank, world, img, txt, 10.0, 0.1, impl, 1.3, terms
    )


def _check_near_one_hot(rank, world, impl):
    """gather=True on near one-hot rows (two well-matched pairs per rank at s = 100: loss and gradients
    ~1e-20): the loss and each gradient within twice the single-process loss's error (same impl: what the
    block-row scheme may add; tests/test_contrastive.py holds that one to naive's) plus 8 ulps of its own
    largest element. The targets are subtracted from each chunk of W before its products: after them,
    2 T_i plus the tiny rest had rounded to 2 T_i (errors of 100% of the gradients, 1e6 times the
    single-process ones). Each rank's LSE pass returns its own diagonal scores (at column rank b + i).
    Against the float64 reference that keeps the diagonal terms (``assert_relatively_exact``: 16 ulps of
    each quantity's own error scale) too: the columns' off-diagonal masses merge across the ranks, and
    each rank's diagonal of G is the rows' and its columns' masses (formed from W_ii, the loss and
    gradients kept an ulp of 2 per diagonal weight: 6.6e3 ulps of the loss's error scale and more)."""
    img, txt = _inputs(2 * world, 64, seed=9, noise=0.1)
    own = slice(rank * 2, (rank + 1) * 2)
    for eps in (0.0, 0.1):
        what = f"near one-hot impl={impl} eps={eps} rank={rank}"
        args = (what, rank, world, img, txt, 100.0, eps, impl, 1.3, (0.0,) * 4)
        _gathered_on_float64_rule(*args, base=impl)
        mine = _leaves(img[own], txt[own], torch.tensor(100.0))
        got = contrastive_loss(*mine, label_smoothing=eps, impl=impl, gather=True)
        d_image, d_text, d_scale = _grads(got, mine, 1.3)
        try:
            quantities = (got.detach(), d_image / world, d_text / world, d_scale)
            assert_relatively_exact(quantities, img, txt, 100.0, eps, 1.3, rows=own)
        except AssertionError as error:
            raise AssertionError(f"{what}: {error}") from None


def _check_soft_target_near_one_hot(rank, world, impl):
    """The block-row soft-target Function on near one-hot rows (two well-matched pairs per rank at
    s = s' = 100): soft_target_loss(gather=True) with the self and a separate teacher (label smoothing 0
    and 0.1), and ClipLoss with local_loss=True (its Function; with gather_with_grad and equal upstream
    grads every rank's features get n times the full-batch gradient). The feature gradients on
    ``_check_near_one_hot``'s rule (twice the single-process error of the same impl plus 8 ulps of their
    own largest element). The hard targets' diagonal is folded into W before the products; subtracted
    after them it left an ulp of the weights times |T|: 3.6e-7 where the exact gradients are ~5e-21. The
    loss value too (not ClipLoss's local one): the LSEs less each rank's pass's own diagonal scores, and
    the soft gaps, whose column parts merge across the ranks as sums of non-negative terms
    (``_dist.merge_columns``). Alpha 1 with smoothing (hard weights 0): the single-process torch backend
    once rounded the teacher's tiny weights away there; this path folds the smoothing in after the
    products (``subtract_hard_targets``) and kept them.

    The logit_scale gradient against ``centered_scale_grad`` (float64 autograd drops each row's
    -rest <I_i, T_i> here and errs by 100-150%): within twice the single-process error plus 8 ulps, and
    within 1/16 of itself (what the float64 LSEs m + log1p(rest) drop, rests below ~2^-53 |m| whose
    terms lie over 30 nats below the max, is under 1/30 of the rows' weighted distances). The forward
    formed it as ws_i - <I_i, T_i> and ws_i - w_i, which kept an ulp of <I_i, T_i>: 3e-8 to 8e-8 on
    gradients of 1e-28 to 1e-20 (``soft_target.mean_difference``)."""
    b, batch = 2, 2 * world
    own = slice(rank * b, (rank + 1) * b)
    img, txt = _inputs(batch, 64, seed=9, noise=0.1)
    t_img, t_txt = _inputs(batch, 48, seed=10, noise=0.1)
    separate = (t_img, t_txt, torch.tensor(100.0))
    cases = [
        ("self", None, 0.0, 0.3),
        ("self", None, 0.1, 0.3),
        ("teacher", separate, 0.0, 0.3),
        ("teacher", separate, 0.1, 0.3),
        ("teacher", separate, 0.1, 1.0),
        ("hard only", None, 0.0, 0.0),
        ("ClipLoss local", None, 0.0, None),
    ]
    eps32 = torch.finfo(torch.float32).eps
    for name, teacher, eps, alpha in cases:
        scale = torch.tensor(100.0)
        local = name == "ClipLoss local"
        # (ClipLoss's local loss has its rank's own logit_scale gradient: the features only there)
        full, mine = _leaves(img, txt, *(() if local else (scale,))), _leaves(img[own], txt[own], scale)
        full64 = _leaves(img.double(), txt.double())
        if local:
            want = contrastive_loss(*full, scale, impl=impl)
            exact = contrastive_loss_naive(*full64, scale.double())
            mod = ClipLoss(local_loss=True, gather_with_grad=True, rank=rank, world_size=world, impl=impl)
            got = mod(*mine[:2], scale)
        else:
            t_args = (None, None, None) if teacher is None else teacher
            t_own = None if teacher is None else (teacher[0][own], teacher[1][own], teacher[2])
            want = _soft_target_gathered(*full, alpha, teacher, None, eps, impl, gather=False)
            t_args64 = [x if x is None else x.double() for x in t_args]
            exact = soft_target_loss_naive(*full64, scale.double(), alpha, *t_args64, None, eps, "sum")
            got = _soft_target_gathered(*mine, alpha, t_own, None, eps, impl)
        runs = ((want, full), (exact, full64), (got, mine))
        want_g, exact_g, got_g = (_grads(x, leaves, 1.3) + [None] for x, leaves in runs)
        what = f"soft-target near one-hot {name} eps={eps} impl={impl} rank={rank}"
        feats = [g[:2] + [None] for g in (want_g, exact_g, got_g)]
        _float64_rule(what, got, feats[2], want, feats[0], exact, feats[1], own, world, (0.0,) * 4, not local)
        if teacher is None:
            # the self teacher's feature gradients are 1 - alpha times the contrastive loss's (reduction
            # "sum": twice the mean's; ClipLoss's local loss: the full batch's), each within 16 ulps of its
            # own error scale (``assert_relatively_exact``; the diagonal's hard part from the masses)
            k = 1.0 if local else 2.0 * (1.0 - alpha)
            unchecked = torch.zeros((), dtype=torch.float64)  # the loss and d_scale: checked above
            grads = (unchecked, got_g[0] / world, got_g[1] / world, unchecked)
            worst = relative_ulps(grads, img, txt, 100.0, eps, 1.3 * k, rows=own)
            assert max(worst[1:3]) <= 16, (what, worst)
        else:
            # a separate teacher: its soft part's diagonal from the student's and the teacher's masses
            # merged across the ranks too (``soft_relative_ulps``; reduction "sum": twice the mean's)
            grads = (got_g[0] / world, got_g[1] / world)
            worst = soft_relative_ulps(grads, img, txt, 100.0, *teacher, alpha, eps, 2.6, rows=own)
            assert max(worst) <= 16, (what, worst)
        if local:
            continue
        t64 = None if teacher is None else [x.double() for x in teacher]
        exact_s = 1.3 * centered_scale_grad(img, txt, 100.0, alpha, t64, eps).item()
        err, base = abs(got_g[2].item() - exact_s), abs(want_g[2].item() - exact_s)
        floor = 8 * eps32 * abs(exact_s)
        assert err <= min(2 * base, abs(exact_s) / 16) + floor, (what, "d_scale", err, base, exact_s)


def _check_local_no_gather_grad_near_one_hot(rank, world, impl):
    """ClipLoss(local_loss=True, gather_with_grad=False) on near one-hot rows (two well-matched pairs per
    rank at s = 100): the gathered features are constants (open_clip's), so each rank's image gradients
    come from its rows' cross-entropy over all B texts and its text gradients from its columns' over all
    B images, each within 16 ulps of its own error scale against the float64 reference that forms the
    diagonal from the masses (``relative_ulps``' ``split``; the rank's loss is the mean over its b rows:
    world times the full batch's coefficient). Its separate row and column passes take the diagonal
    factors of their own direction (eps - mass_r, eps - mass_c); naive errs 5.2e4-5.6e4 here."""
    b, batch = 2, 2 * world
    own = slice(rank * b, (rank + 1) * b)
    img, txt = _inputs(batch, 64, seed=9, noise=0.1)
    mine = _leaves(img[own], txt[own], torch.tensor(100.0))
    mod = ClipLoss(local_loss=True, gather_with_grad=False, rank=rank, world_size=world, impl=impl)
    d_image, d_text, _ = _grads(mod(*mine), mine, 1.3)
    unchecked = torch.zeros((), dtype=torch.float64)  # the rank's own loss, not the full batch's
    got = (unchecked, d_image, d_text)
    worst = relative_ulps(got, img, txt, 100.0, 0.0, 1.3 * world, rows=own, split=True)
    assert max(worst[1:]) <= 16, (f"local loss without gather grads impl={impl} rank={rank}", worst)


def _check_low_precision(rank, world):
    """bf16 / fp16 features (texts gathered in that dtype, gradients returned in it) on the single-process
    float64 rule (tests/_ref.py): the loss and the rank's gradients (over the world size, the gather
    contract) err from the float64 full-batch loss by at most twice what the naive loss on the same
    rounded inputs errs, plus 8 fp32 ulps of their error scale."""
    b, scale, grad_out = 6, 9.0, 1.3
    for dtype in (torch.bfloat16, torch.float16):
        img, txt = _inputs(world * b, 12, seed=b, dtype=dtype)
        terms = term_scales(world * b, scale, grad_out)
        what = f"contrastive {dtype} rank={rank}"
        got_g = _gathered_on_float64_rule(what, rank, world, img, txt, scale, 0.1, "torch", grad_out, terms)
        assert got_g[0].dtype == dtype and got_g[1].dtype == dtype


def _soft_target_gathered(img, txt, scale, alpha, teacher, mask, eps, impl, gather=True):
    """soft_target_loss(..., gather=True) (reduction "sum"; ``gather`` False: the single-process loss)."""
    t_args = (None, None, None) if teacher is None else teacher
    return soft_target_loss(
        img, txt, scale, alpha, teacher_image_features=t_args[0], teacher_text_features=t_args[1],
        teacher_logit_scale=t_args[2], soft_mask=mask, label_smoothing=eps, reduction="sum", impl=impl,
        gather=gather,
    )  # fmt: skip


def _check_soft_target_contract(rank, world, cases):
    """The soft-target loss over the gathered batch: teacher softmax over all B, self and separate teacher."""
    for impl, b in cases:
        batch = world * b
        for teacher_dim, eps in ((None, 0.0), (None, 0.1), (7, 0.0), (7, 0.1)):
            img, txt = _inputs(batch, 9, seed=b)
            mask = torch.arange(batch) % 3 != 1
            teacher = None
            if teacher_dim is not None:
                t_img, t_txt = _inputs(batch, teacher_dim, seed=b + 1)
                teacher = (t_img, t_txt, torch.tensor(7.0))
            own = slice(rank * b, (rank + 1) * b)
            full = _leaves(img, txt, torch.tensor(9.0))
            t_args = (None, None, None) if teacher is None else teacher
            want = soft_target_loss_naive(*full, 0.6, *t_args, mask, eps, "sum")
            want_g = _grads(want, full, 0.8)
            full64 = _leaves(*(x.double() for x in full))
            t_args64 = [x if x is None else x.double() for x in t_args]
            exact = soft_target_loss_naive(*full64, 0.6, *t_args64, mask, eps, "sum")
            exact_g = _grads(exact, full64, 0.8)
            mine = _leaves(img[own], txt[own], torch.tensor(9.0))
            # A constant logit_scale skips the extra statistics pass of a separate teacher.
            scale_grad = not (teacher_dim and eps)
            mine[2].requires_grad_(scale_grad)
            t_own = None if teacher is None else (teacher[0][own], teacher[1][own], teacher[2])
            got = _soft_target_gathered(*mine, 0.6, t_own, mask[own], eps, impl)
            got_g = _grads(got, mine, 0.8)
            what = f"soft-target {impl} b={b} teacher={teacher_dim} eps={eps} rank={rank}"
            assert (got_g[2] is not None) == scale_grad, what
            terms = term_scales(batch, 9.0, 2 * 0.8)  # "sum": the two directional means summed
            _float64_rule(what, got, got_g, want, want_g, exact, exact_g, own, world, terms)


FLAGS = [(False, False), (False, True), (True, False), (True, True)]


def _check_clip_flags(rank, world, cases):
    """ClipLoss(local_loss, gather_with_grad, rank, world_size) against open_clip's code, per rank; the
    upstream gradient differs between ranks (open_clip sums them through the gather)."""
    grad_out = 1.0 + 0.5 * rank
    for impl, b in cases:
        batch = world * b
        img, txt = _inputs(batch, 6, seed=b)
        own = slice(rank * b, (rank + 1) * b)
        for eps in (0.0, 0.1):
            for local_loss, with_grad in FLAGS:
                ref = _leaves(img[own], txt[own], torch.tensor(10.0))
                want = _open_clip_loss(*ref, eps, local_loss, with_grad, rank, world)
                want_g = _grads(want, ref, grad_out)
                mod = ClipLoss(
                    local_loss=local_loss,
                    gather_with_grad=with_grad,
                    rank=rank,
                    world_size=world,
                    label_smoothing=eps,
                    impl=impl,
                )
                mine = _leaves(img[own], txt[own], torch.tensor(10.0))
                got = mod(*mine)
                got_g = _grads(got, mine, grad_out)
                what = f"ClipLoss {impl} b={b} eps={eps} local={local_loss} grad={with_grad} rank={rank}"
                _close(got, want, what + " loss")
                for name, a, w in zip(("d_image", "d_text", "d_scale"), got_g, want_g, strict=True):
                    _close(a, w, f"{what} {name}")


def _distill(img, txt, scale, teacher, eps, impl, local_loss, with_grad, rank, world):
    """DistillClipLoss(local_loss, gather_with_grad, rank, world_size)."""
    mod = DistillClipLoss(
        local_loss=local_loss, gather_with_grad=with_grad, rank=rank, world_size=world, label_smoothing=eps,
        impl=impl,
    )  # fmt: skip
    out = mod(img, txt, scale, *teacher, output_dict=True)
    return out["contrastive_loss"], out["distill_loss"]


def _check_distill_flags(rank, world, cases):
    """DistillClipLoss against open_clip's DistillClipLoss code, per rank, both outputs with different
    upstream grads on each rank."""
    g_c, g_d = 1.0 + 0.5 * rank, 0.7 - 0.2 * rank
    for impl, b in cases:
        batch = world * b
        img, txt = _inputs(batch, 6, seed=b)
        t_img, t_txt = _inputs(batch, 5, seed=b + 7)
        own = slice(rank * b, (rank + 1) * b)
        teacher = (t_img[own], t_txt[own], torch.tensor(6.0))
        for eps in (0.0, 0.1):
            for local_loss, with_grad in FLAGS:
                ref = _leaves(img[own], txt[own], torch.tensor(10.0))
                want = _open_clip_distill(*ref, *teacher, eps, local_loss, with_grad, rank, world)
                (want[0] * g_c + want[1] * g_d).backward()
                mine = _leaves(img[own], txt[own], torch.tensor(10.0))
                got = _distill(*mine, teacher, eps, impl, local_loss, with_grad, rank, world)
                (got[0] * g_c + got[1] * g_d).backward()
                what = f"distill {impl} b={b} eps={eps} local={local_loss} grad={with_grad} rank={rank}"
                _close(got[0], want[0], what + " contrastive")
                _close(got[1], want[1], what + " distill")
                for name, a, w in zip(("d_image", "d_text", "d_scale"), mine, ref, strict=True):
                    _close(a.grad, w.grad, f"{what} {name}")


def _soft_reference(img, txt, scale, alpha, teacher, mask, eps, local_loss, with_grad, rank, world):
    """open_clip's gather and logits with PSD's soft targets (reduction "mean"); ``mask``: the rows'."""
    per_image, per_text, labels = _open_clip_logits(img, txt, scale, local_loss, with_grad, rank, world)
    if teacher is None:
        t_image, t_text = per_image.detach(), per_text.detach()
    else:
        t_image, t_text, _ = _open_clip_logits(*teacher, local_loss, with_grad, rank, world)
    cols = per_image.shape[1]
    hard = F.one_hot(labels, cols) * (1.0 - eps) + eps / cols
    a = (alpha * mask.float())[:, None]
    q_image = (1.0 - a) * hard + a * t_image.softmax(dim=1)
    q_text = (1.0 - a) * hard + a * t_text.softmax(dim=1)
    return 0.5 * (F.cross_entropy(per_image, q_image) + F.cross_entropy(per_text, q_text))


def _soft_flags_loss(img, txt, scale, alpha, teacher, mask, eps, local_loss, with_grad, rank, world):
    """SoftTargetLoss(local_loss, gather_with_grad, rank, world_size) at a fixed alpha."""
    mod = SoftTargetLoss(
        alpha, 10, schedule=lambda step: alpha, label_smoothing=eps, impl="torch", local_loss=local_loss,
        gather_with_grad=with_grad, rank=rank, world_size=world,
    )  # fmt: skip
    t_args = (None, None, None) if teacher is None else teacher
    return mod(img, txt, scale, *t_args, soft_mask=mask)


def _check_soft_flags(rank, world, sizes):
    """The soft-target loss with open_clip's flags against open_clip's gather + logits with soft targets."""
    grad_out = 1.0 + 0.5 * rank
    for b in sizes:
        batch = world * b
        img, txt = _inputs(batch, 6, seed=b)
        t_img, t_txt = _inputs(batch, 4, seed=b + 3)
        mask = torch.arange(batch) % 3 != 2
        own = slice(rank * b, (rank + 1) * b)
        for teacher in (None, (t_img[own], t_txt[own], torch.tensor(5.0))):
            for local_loss, with_grad in FLAGS:
                eps = 0.1 if with_grad else 0.0
                ref = _leaves(img[own], txt[own], torch.tensor(8.0))
                ref_mask = mask[own] if local_loss else mask
                want = _soft_reference(*ref, 0.4, teacher, ref_mask, eps, local_loss, with_grad, rank, world)
                want_g = _grads(want, ref, grad_out)
                mine = _leaves(img[own], txt[own], torch.tensor(8.0))
                got = _soft_flags_loss(
                    *mine, 0.4, teacher, mask[own], eps, local_loss, with_grad, rank, world
                )
                got_g = _grads(got, mine, grad_out)
                what = f"soft flags b={b} teacher={teacher is not None} local={local_loss} grad={with_grad}"
                _close(got, want, f"{what} rank={rank} loss")
                for name, a, w in zip(("d_image", "d_text", "d_scale"), got_g, want_g, strict=True):
                    _close(a, w, f"{what} rank={rank} {name}")


def _check_no_block_row_tensor(rank, world):
    """Neither loss nor any ClipLoss mode makes a b x B tensor (the backend's 8-row chunks at most)."""
    os.environ["VLKERNELS_TORCH_CHUNK_ROWS"] = "8"
    b, dim = 40, 3
    batch = world * b
    img, txt = _inputs(b, dim, seed=rank)
    t_img, t_txt = _inputs(b, 2, seed=rank + 5)
    runs = {
        "gather": lambda i, t, s: contrastive_loss(i, t, s, impl="torch", gather=True),
        "soft": lambda i, t, s: soft_target_loss(
            i, t, s, 0.5, label_smoothing=0.1, impl="torch", gather=True
        ),
        "naive control": lambda i, t, s: contrastive_loss(i, t, s, impl="naive", gather=True),
    }
    for local_loss, with_grad in FLAGS:
        mod = ClipLoss(
            local_loss=local_loss, gather_with_grad=with_grad, rank=rank, world_size=world, impl="torch"
        )
        runs[f"ClipLoss local={local_loss} grad={with_grad}"] = mod
        runs[f"distill local={local_loss} grad={with_grad}"] = lambda i, t, s, l=local_loss, g=with_grad: sum(
            distill_clip_loss(
                i, t, s, t_img, t_txt, torch.tensor(3.0), label_smoothing=0.1, impl="torch", distributed=True,
                local_loss=l, gather_with_grad=g,
            )
        )  # fmt: skip
    for name, fn in runs.items():
        leaves = _leaves(img, txt, torch.tensor(4.0))
        with MaxNumel() as mode:
            fn(*leaves).backward()
        if name == "naive control":
            assert mode.max_numel >= batch * batch, (name, mode.max_numel)
        else:
            # 8-row chunks of S (8 B), the gathered [B, D] features and products, the column merge's one
            # all-reduce buffer (with a separate teacher ten [B] vectors: the LSEs' sums, the weighted sums
            # and gaps, both rests); never b x B = 40 B.
            assert mode.max_numel <= 10 * batch, (name, mode.max_numel)


def _check_ddp_step(rank, world, b):
    """End to end: a DDP-wrapped linear tower with the gathered loss; after backward the (averaged)
    parameter gradients equal the single-process full-batch gradients."""
    batch, dim_in, dim = world * b, 8, 6
    g = torch.Generator().manual_seed(3)
    x_img, x_txt = torch.randn(batch, dim_in, generator=g), torch.randn(batch, dim_in, generator=g)

    class Tower(torch.nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(1)
            self.img = torch.nn.Linear(dim_in, dim)
            self.txt = torch.nn.Linear(dim_in, dim)
            self.logit_scale = torch.nn.Parameter(torch.tensor(2.0))

        def forward(self, xi, xt):
            return F.normalize(self.img(xi), dim=1), F.normalize(self.txt(xt), dim=1), self.logit_scale.exp()

    single = Tower()
    contrastive_loss_naive(*single(x_img, x_txt), 0.1).backward()
    model = torch.nn.parallel.DistributedDataParallel(Tower())
    own = slice(rank * b, (rank + 1) * b)
    contrastive_loss(
        *model(x_img[own], x_txt[own]), label_smoothing=0.1, impl="torch", gather=True
    ).backward()
    for (name, p), q in zip(model.module.named_parameters(), single.parameters(), strict=True):
        _close(p.grad, q.grad, f"DDP {name} rank={rank}", tol=dict(atol=1e-5, rtol=1e-4))


def _expect_error(fn, exc, match):
    with pytest.raises(exc, match=match):
        fn()


def _check_errors(rank, world):
    """Ranks that disagree get the same clear error on every rank, then the group still works."""
    img, txt = _inputs(8, 4, seed=0)
    b_bad = 3 if rank == 0 else 4
    _expect_error(
        lambda: contrastive_loss(img[:b_bad], txt[:b_bad], 2.0, impl="torch", gather=True),
        ValueError,
        r"local batch size \(rank 0: 3, rank 1: 4",
    )
    dtype = torch.float32 if rank == 0 else torch.float16
    _expect_error(
        lambda: contrastive_loss(img.to(dtype), txt.to(dtype), 2.0, impl="torch", gather=True),
        ValueError,
        r"feature dtype \(rank 0: float32, rank 1: float16",
    )
    dim = 4 if rank == 0 else 3
    _expect_error(
        lambda: contrastive_loss(img[:, :dim], txt[:, :dim], 2.0, impl="torch", gather=True),
        ValueError,
        r"feature width D \(rank 0: 4, rank 1: 3",
    )
    eps = 0.0 if rank == 0 else 0.1
    _expect_error(
        lambda: contrastive_loss(img, txt, 2.0, impl="torch", gather=True, label_smoothing=eps),
        ValueError,
        r"label_smoothing \(rank 0: 0.0, rank 1: 0.1",
    )
    _expect_error(
        lambda: ClipLoss(rank=1 - rank, world_size=world, impl="torch")(img, txt, 2.0),
        ValueError,
        "rank",
    )
    t_dim = 3 if rank == 0 else 2
    _expect_error(
        lambda: soft_target_loss(
            img,
            txt,
            2.0,
            0.5,
            teacher_image_features=img[:, :t_dim],
            teacher_text_features=txt[:, :t_dim],
            teacher_logit_scale=1.0,
            impl="torch",
            gather=True,
        ),  # fmt: skip
        ValueError,
        r"teacher width D \(rank 0: 3, rank 1: 2",
    )
    loss = contrastive_loss(img, txt, 2.0, impl="torch", gather=True)
    full = torch.cat([img, img]), torch.cat([txt, txt])
    torch.testing.assert_close(loss, contrastive_loss_naive(*full, 2.0), **TOL)


def _check_scalar_and_impl_mismatches(rank, world):
    """Ranks passing different logit_scale / alpha / teacher scale values, different impls, or a soft_mask
    on some ranks only get a clear error on every rank (not a wrong loss, not a hang); a rank outside the
    group it passes gets a clear error; then the group still works."""
    img, txt = _inputs(6, 4, seed=rank)
    other = dict(teacher_image_features=img[:, :3], teacher_text_features=txt[:, :3])
    scale_t = torch.tensor(2.0 + rank, requires_grad=True)
    mask = (None, torch.ones(6, dtype=torch.bool))[rank]
    impl = ("torch", "naive")[rank]
    gather = dict(impl="torch", gather=True)
    mod = dict(rank=rank, world_size=world)
    scales = r"logit_scale \(rank 0: 2.0, rank 1: 3.0"
    impls = r"impl \(rank 0: 'torch', rank 1: 'naive'"
    cases = [
        (lambda: contrastive_loss(img, txt, 2.0 + rank, **gather), scales),
        (lambda: contrastive_loss(img, txt, scale_t, **gather), scales),
        (lambda: ClipLoss(impl="torch", local_loss=True, **mod)(img, txt, 2.0 + rank), scales),
        (lambda: contrastive_loss(img, txt, 2.0, impl=impl, gather=True), impls),
        (lambda: soft_target_loss(img, txt, 2.0, 0.5 - 0.25 * rank, **gather),
         r"alpha \(rank 0: 0.5, rank 1: 0.25"),
        (lambda: soft_target_loss(img, txt, 2.0, 0.5, teacher_logit_scale=1.0 + rank, **gather, **other),
         r"teacher_logit_scale \(rank 0: 1.0, rank 1: 2.0"),
        (lambda: soft_target_loss(img, txt, 2.0, 0.5, soft_mask=mask, **gather),
         r"soft_mask given \(rank 0: 0, rank 1: 1"),
        (lambda: DistillClipLoss(impl=impl, **mod)(img, txt, 2.0, img, txt, 1.0), impls),
    ]  # fmt: skip
    for fn, match in cases:
        _expect_error(fn, ValueError, match)
    solo = dist.new_group([0])  # every rank must create it; rank 1 is not a member
    if rank == 1:
        _expect_error(
            lambda: contrastive_loss(img, txt, 2.0, gather=True, group=solo), ValueError, "not a member"
        )
        _expect_error(
            lambda: ClipLoss(rank=0, world_size=2, group=solo)(img, txt, 2.0), ValueError, "not a member"
        )
    else:
        alone = contrastive_loss(img, txt, 2.0, impl="torch", gather=True, group=solo)
        torch.testing.assert_close(alone, contrastive_loss_naive(img, txt, 2.0), **TOL)
    loss = contrastive_loss(img, txt, 2.0, impl="torch", gather=True)
    full = [torch.cat(x) for x in zip(*[_inputs(6, 4, seed=r) for r in range(world)], strict=True)]
    torch.testing.assert_close(loss, contrastive_loss_naive(*full, 2.0), **TOL)


def _check_zero_scale(rank, world):
    """logit_scale == 0 with requires_grad: finite gradients equal to open_clip's (no division by s)."""
    img, txt = _inputs(5, 4, seed=rank)
    t_img, t_txt = _inputs(5, 3, seed=rank + 7)
    runs = {}
    for local_loss, with_grad in FLAGS:
        flags = dict(local_loss=local_loss, gather_with_grad=with_grad, rank=rank, world_size=world)
        runs[f"ClipLoss {flags}"] = lambda i, t, s, impl, f=flags: ClipLoss(impl=impl, **f)(i, t, s)
        runs[f"DistillClipLoss {flags}"] = lambda i, t, s, impl, f=flags: sum(
            DistillClipLoss(impl=impl, **f)(i, t, s, t_img, t_txt, 2.0)
        )
    runs["soft_target_loss self"] = lambda i, t, s, impl: soft_target_loss(
        i, t, s, 0.4, impl=impl, gather=True
    )
    runs["soft_target_loss teacher"] = lambda i, t, s, impl: soft_target_loss(
        i, t, s, 0.4, impl=impl, gather=True, teacher_image_features=t_img, teacher_text_features=t_txt,
        teacher_logit_scale=2.0,
    )  # fmt: skip
    for name, fn in runs.items():
        got, want = [], []
        for impl, out in (("torch", got), ("naive", want)):
            leaves = _leaves(img, txt, torch.tensor(0.0))
            loss = fn(*leaves, impl)
            out.append(loss.detach())
            out.extend(_grads(loss, leaves, 1.3))
        for what, a, w in zip(("loss", "d_image", "d_text", "d_scale"), got, want, strict=True):
            assert torch.isfinite(a).all(), f"{name} {what} rank={rank}: not finite"
            _close(a, w, f"{name} {what} rank={rank}")


# --- tests ---------------------------------------------------------------------------------------


TORCH_CASES = [("torch", b) for b in SIZES] + [("naive", 5)]


@pytest.mark.parametrize("world", [2, 3])
def test_gather_matches_full_batch(world):
    _spawn(
        world,
        ("_check_gather_contract", TORCH_CASES, (9, 16)),
        ("_check_soft_target_contract", TORCH_CASES),
        ("_check_low_precision",),
        ("_check_near_one_hot", "torch"),
        ("_check_soft_target_near_one_hot", "torch"),
        ("_check_local_no_gather_grad_near_one_hot", "torch"),
    )


@pytest.mark.parametrize("world", [2, 3])
def test_open_clip_flag_parity(world):
    _spawn(
        world,
        ("_check_clip_flags", TORCH_CASES),
        ("_check_distill_flags", TORCH_CASES),
        ("_check_soft_flags", SIZES),
    )


def test_world_size_one():
    # gather=True in a group of one process: the distributed path (collectives included) on one device.
    _spawn(
        1,
        ("_check_gather_contract", [("torch", 7)], (9, 16)),
        ("_check_soft_target_contract", [("torch", 4)]),
    )


def test_ddp_gradients_and_no_b_by_B_tensor():
    _spawn(2, ("_check_ddp_step", 5), ("_check_no_block_row_tensor",))


@pytest.mark.interpreter
@pytest.mark.slow
def test_gather_triton_interpreter():
    assert os.environ.get("TRITON_INTERPRET") == "1" or torch.cuda.is_available()
    _spawn(
        2,
        ("_check_gather_contract", [("triton", 5)], (9,)),
        ("_check_clip_flags", [("triton", 3)]),
        ("_check_soft_target_contract", [("triton", 3)]),
        ("_check_huge_logits", "triton"),
        ("_check_huge_logits", "torch"),
        ("_check_near_one_hot", "triton"),
        ("_check_soft_target_near_one_hot", "triton"),
        ("_check_local_no_gather_grad_near_one_hot", "triton"),
    )


def test_rank_mismatch_raises_on_every_rank():
    _spawn(2, ("_check_errors",), ("_check_scalar_and_impl_mismatches",))


def test_zero_logit_scale_gives_finite_gradients():
    _spawn(2, ("_check_zero_scale",))


def test_gather_without_process_group_raises():
    assert not dist.is_initialized()
    img, txt = _inputs(4, 3, seed=0)
    with pytest.raises(RuntimeError, match="initialised torch.distributed process group"):
        contrastive_loss(img, txt, 1.0, gather=True)
    with pytest.raises(RuntimeError, match="initialised torch.distributed process group"):
        ClipLoss(world_size=2, rank=0)(img, txt, 1.0)
    with pytest.raises(RuntimeError, match="initialised torch.distributed process group"):
        soft_target_loss(img, txt, 1.0, 0.5, gather=True)
    with pytest.raises(RuntimeError, match="initialised torch.distributed process group"):
        DistillClipLoss(world_size=2, rank=1)(img, txt, 1.0, img, txt, 1.0)
    with pytest.raises(RuntimeError, match="initialised torch.distributed process group"):
        SoftTargetLoss(0.5, 10, world_size=3, rank=2)(img, txt, 1.0)
    with pytest.raises(ValueError, match="group is used only with gather=True"):
        contrastive_loss(img, txt, 1.0, group=object())
    with pytest.raises(ValueError, match="rank < world_size"):
        ClipLoss(world_size=2, rank=2)


def test_torchrun_example():
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    out = subprocess.run(
        [*cmd, str(ROOT / "examples" / "torchrun_clip.py"), "--steps", "3"],
        capture_output=True,
        text=True,
        timeout=240,
        env=env,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "gradients match the single-process run" in out.stdout, out.stdout + out.stderr
