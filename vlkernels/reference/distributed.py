"""Naive distributed baselines: open_clip's ``gather_features`` + ``get_logits`` (b x B or B x B logits)."""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F

from vlkernels import _dist
from vlkernels.reference.soft_target import soft_target_loss_naive


def open_clip_gather(image, text, *, local_loss: bool, gather_with_grad: bool, group=None):
    """open_clip's ``gather_features``: ([B, D], [B, D]) with autograd through the gather, or detached
    copies with the local slice put back (``local_loss=False``) so that the local features keep theirs."""
    from torch.distributed.nn.functional import all_gather

    _, rank = _dist.world(group)
    if gather_with_grad:
        with warnings.catch_warnings():
            # torch >= 2.11 deprecates the autograd all_gather that open_clip (and this baseline) uses.
            warnings.simplefilter("ignore", FutureWarning)
            return torch.cat(all_gather(image, group=group)), torch.cat(all_gather(text, group=group))
    all_image, all_text = _dist.gather(image.detach(), group)[0], _dist.gather(text.detach(), group)[0]
    if not local_loss:
        b = image.shape[0]
        head, tail = slice(0, rank * b), slice((rank + 1) * b, None)
        all_image = torch.cat([all_image[head], image, all_image[tail]])
        all_text = torch.cat([all_text[head], text, all_text[tail]])
    return all_image, all_text


def open_clip_logits(image, text, scale, *, local_loss: bool, gather_with_grad: bool, group=None):
    """open_clip's ``gather_features`` + ``get_logits`` (B x B or b x B logits, fp32) and its labels."""
    _, rank = _dist.world(group)
    all_image, all_text = open_clip_gather(
        image, text, local_loss=local_loss, gather_with_grad=gather_with_grad, group=group
    )
    if local_loss:
        per_image = scale * image.float() @ all_text.float().T
        per_text = scale * text.float() @ all_image.float().T
        labels = torch.arange(image.shape[0], device=image.device) + image.shape[0] * rank
    else:
        per_image = scale * all_image.float() @ all_text.float().T
        per_text = per_image.T
        labels = torch.arange(per_image.shape[0], device=image.device)
    return per_image, per_text, labels


def contrastive_loss_open_clip(
    image, text, scale, *, eps: float, factor: float, local_loss: bool, gather_with_grad: bool, group
):
    """open_clip's ``ClipLoss.forward`` over the ranks (label smoothing ``eps``, reduction ``factor``)."""
    flags = dict(local_loss=local_loss, gather_with_grad=gather_with_grad, group=group)
    per_image, per_text, labels = open_clip_logits(image, text, scale, **flags)
    loss_i = F.cross_entropy(per_image, labels, label_smoothing=eps)
    loss_t = F.cross_entropy(per_text, labels, label_smoothing=eps)
    return (loss_i + loss_t) * (factor / 2.0)


def distill_clip_open_clip(
    image, text, scale, teacher, *, eps: float, local_loss: bool, gather_with_grad: bool, group
):
    """open_clip's ``DistillClipLoss.forward`` over the ranks: (contrastive, distill)."""
    flags = dict(local_loss=local_loss, gather_with_grad=gather_with_grad, group=group)
    per_image, per_text, labels = open_clip_logits(image, text, scale, **flags)
    t_per_image, t_per_text, _ = open_clip_logits(*teacher, **flags)
    contrastive = 0.5 * (
        F.cross_entropy(per_image, labels, label_smoothing=eps)
        + F.cross_entropy(per_text, labels, label_smoothing=eps)
    )

    def dist_loss(teacher_logits, student_logits):
        return -(teacher_logits.softmax(dim=1) * student_logits.log_softmax(dim=1)).sum(dim=1).mean(dim=0)

    distill = 0.5 * (dist_loss(t_per_image, per_image) + dist_loss(t_per_text, per_text))
    return contrastive, distill


def soft_target_loss_gathered(
    image,
    text,
    scale,
    alpha,
    teacher,
    soft_mask,
    *,
    eps: float,
    reduction: str,
    gather_with_grad: bool,
    group,
):
    """The B x B soft-target reference on open_clip-style gathered features (``local_loss=False``)."""
    flags = dict(local_loss=False, gather_with_grad=gather_with_grad, group=group)
    all_image, all_text = open_clip_gather(image, text, **flags)
    t_args = (None, None, None)
    if teacher is not None:
        t_args = (*open_clip_gather(teacher[0], teacher[1], **flags), teacher[2])
    mask = None if soft_mask is None else _dist.gather(soft_mask.to(torch.uint8), group)[0].bool()
    return soft_target_loss_naive(all_image, all_text, scale, alpha, *t_args, mask, eps, reduction)
